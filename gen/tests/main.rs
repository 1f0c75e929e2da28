//! The bundled schemas and the generator against real PostgreSQL servers.

use shardline_gen::{generate, schemas, GenError, GenRequest};
use shardline_testkit::PgServer;
use shardline_topology::ConnString;

fn monolith() -> PgServer {
    let server = PgServer::start().unwrap();
    server.psql("postgres", schemas::MONOLITH).unwrap();
    server
}

fn conn(server: &PgServer) -> ConnString {
    ConnString::parse(&server.url("postgres")).unwrap()
}

fn request(payments: u64, seed: u64) -> GenRequest {
    GenRequest {
        payments,
        seed,
        merchants: None,
        truncate: false,
    }
}

/// Columns (name, type, nullability, default-less) and primary key of a table.
fn shape(server: &PgServer, table: &str) -> String {
    server
        .psql(
            "postgres",
            &format!(
                "SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull, ', ' ORDER BY a.attnum)
                        || ' pk ' || (SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = '{table}'::regclass AND contype = 'p')
                   FROM pg_attribute a WHERE a.attrelid = '{table}'::regclass AND a.attnum > 0 AND NOT a.attisdropped"
            ),
        )
        .unwrap()
}

fn checksum(server: &PgServer, table: &str) -> String {
    server
        .psql("postgres", &format!("SELECT count(*) || ' ' || md5(string_agg(t::text, E'\\n' ORDER BY t::text)) FROM {table} t"))
        .unwrap()
}

#[test]
fn every_context_defines_its_tables_exactly_as_the_monolith_does() {
    let mono = monolith();
    mono.psql("postgres", schemas::MONOLITH).unwrap();
    let shard = PgServer::start().unwrap();
    shard.psql("postgres", schemas::TRANSACTIONS).unwrap();
    shard.psql("postgres", schemas::TRANSACTIONS).unwrap();
    let settlements = PgServer::start().unwrap();
    settlements.psql("postgres", schemas::SETTLEMENTS).unwrap();
    let analytics = PgServer::start().unwrap();
    analytics.psql("postgres", schemas::ANALYTICS).unwrap();
    for (server, tables) in [
        (&shard, &["payments", "payment_events", "refunds"][..]),
        (&settlements, &["settlements", "payouts"][..]),
        (&analytics, &["merchants"][..]),
    ] {
        for table in tables {
            assert_eq!(shape(server, table), shape(&mono, table), "{table}");
        }
    }
    assert!(shape(&mono, "payments").contains("pk PRIMARY KEY (merchant_id, payment_id)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_loads_the_same_history_and_it_hangs_together() {
    let (a, b, c) = (monolith(), monolith(), monolith());
    let report = generate(&conn(&a), &request(45_000, 1), |_| {})
        .await
        .unwrap();
    generate(&conn(&b), &request(45_000, 1), |_| {})
        .await
        .unwrap();
    generate(&conn(&c), &request(45_000, 2), |_| {})
        .await
        .unwrap();
    let counts: std::collections::HashMap<String, u64> = report.tables.iter().cloned().collect();
    assert_eq!(counts["payments"], 45_000);
    assert_eq!(counts["merchants"], 45);
    for table in shardline_gen::TABLES {
        assert_eq!(
            checksum(&a, table),
            checksum(&b, table),
            "{table} differs for one seed"
        );
    }
    assert_ne!(checksum(&a, "payments"), checksum(&c, "payments"));

    let q = |sql: &str| a.psql("postgres", sql).unwrap().trim().to_string();
    assert!(
        q("SELECT count(*) FROM payment_events")
            .parse::<u64>()
            .unwrap()
            > 3 * 45_000
    );
    assert_eq!(q("SELECT count(*) FROM payments p WHERE NOT EXISTS (SELECT 1 FROM merchants m WHERE m.merchant_id = p.merchant_id)"), "0");
    assert_eq!(
        q("SELECT count(*) FROM refunds r JOIN payments p USING (merchant_id, payment_id) WHERE p.status NOT IN ('refunded', 'partially_refunded')"),
        "0",
        "refunds only for refunded payments"
    );
    assert_eq!(
        q("SELECT count(*) FROM (SELECT p.amount, sum(r.amount) s, p.status FROM refunds r JOIN payments p USING (merchant_id, payment_id)
             GROUP BY p.merchant_id, p.payment_id, p.amount, p.status) x
           WHERE s > amount OR (status = 'refunded' AND s <> amount) OR (status = 'partially_refunded' AND s >= amount)"),
        "0",
        "refund amounts match the payment's status"
    );
    assert_eq!(q("SELECT count(*) FROM payments WHERE status IN ('refunded', 'partially_refunded') AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.merchant_id = payments.merchant_id AND r.payment_id = payments.payment_id)"), "0");
    // Skew: the biggest merchant has far more than an even share.
    let top: u64 = q("SELECT max(n) FROM (SELECT count(*) n FROM payments GROUP BY merchant_id) x")
        .parse()
        .unwrap();
    assert!(
        top > 10 * 45_000 / 45,
        "top merchant has only {top} payments"
    );
    assert_ne!(
        q("SELECT count(*) FROM payments WHERE pg_column_size(metadata) > 2048"),
        "0",
        "some metadata is TOASTed"
    );
    assert_ne!(
        q("SELECT count(*) FROM payments WHERE description ~ '[^[:ascii:]]'"),
        "0"
    );
    assert_ne!(
        q("SELECT count(*) FROM merchants WHERE name ~ '[^[:ascii:]]'"),
        "0"
    );
    for column in [
        "customer_email",
        "description",
        "metadata",
        "captured_at",
        "card_brand",
    ] {
        assert_ne!(
            q(&format!(
                "SELECT count(*) FROM payments WHERE {column} IS NULL"
            )),
            "0",
            "{column} has NULLs"
        );
    }
    assert_eq!(
        q("SELECT max(created_at) - min(created_at) > interval '540 days' FROM payments"),
        "t",
        "18 months of history"
    );
    assert_ne!(q("SELECT count(*) FROM settlements"), "0");
    assert_eq!(
        q("SELECT count(*) FROM payouts"),
        q("SELECT count(*) FROM settlements")
    );
}

#[tokio::test]
async fn non_empty_tables_are_refused_unless_truncated_and_missing_tables_named() {
    let server = monolith();
    generate(&conn(&server), &request(1_000, 3), |_| {})
        .await
        .unwrap();
    let before = checksum(&server, "payments");
    let err = generate(&conn(&server), &request(1_000, 4), |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&err, GenError::NotEmpty(t) if t == "merchants"),
        "{err}"
    );
    assert!(err.hint().unwrap().contains("--truncate"));
    assert_eq!(
        checksum(&server, "payments"),
        before,
        "a refusal changes nothing"
    );

    let truncate = GenRequest {
        truncate: true,
        ..request(1_000, 4)
    };
    generate(&conn(&server), &truncate, |_| {}).await.unwrap();
    assert_ne!(checksum(&server, "payments"), before);

    server.psql("postgres", "DROP TABLE refunds").unwrap();
    let err = generate(&conn(&server), &truncate, |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&err, GenError::MissingTable(t) if t == "refunds"),
        "{err}"
    );
}
