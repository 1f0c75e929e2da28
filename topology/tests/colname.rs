//! Read-model column names agree with the names PostgreSQL gives the same
//! select-list entries.

use shardline_testkit::PgServer;
use shardline_topology::{output_name, ConnString};

#[tokio::test]
async fn output_names_match_the_server_s() {
    let server = PgServer::start().unwrap();
    let client = ConnString::parse(&server.url("postgres"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    client
        .batch_execute(
            "CREATE TABLE p (created_at timestamptz, amount numeric, \"Merchant\" int, merchant_id bigint, a boolean)",
        )
        .await
        .unwrap();
    for expr in [
        "CAST(created_at AS date)",
        "CAST(created_at AS date) AS day",
        "cast('2024-01-01' as date)",
        "created_at::date",
        "(amount * 2)::numeric(10,2)",
        "CAST(amount + 1 AS double precision)",
        "CAST(created_at + interval '1 day' AS timestamp with time zone)",
        "date_trunc('day', created_at)",
        "date_trunc('day', created_at) AS Day",
        "merchant_id AS \"Day\"",
        "Merchant_Id",
        "p.\"Merchant\"",
        "'a as b'",
        "CASE WHEN a THEN 1 END",
        "CAST(CASE WHEN a THEN 1 END AS integer)",
        "amount + 1",
        "sum(amount) as volume",
        "count(*)",
    ] {
        let statement = client
            .prepare(&format!("SELECT {expr} FROM p GROUP BY 1 LIMIT 0"))
            .await;
        let statement = match statement {
            Ok(s) => s,
            // Aggregates cannot be grouped by: select them alone.
            Err(_) => client
                .prepare(&format!("SELECT {expr} FROM p LIMIT 0"))
                .await
                .unwrap(),
        };
        assert_eq!(output_name(expr), statement.columns()[0].name(), "{expr}");
    }
}
