//! A sharded table is every shard's rows; reference tables come once;
//! read models are exported from their context or computed on the source.

use shardline_export::{ExportError, ExportRequest, From, What};
use shardline_testkit::PgServer;

use crate::{assert_same_rows, listing, pg_rows, read_parquet, rows_of, run, topology};

const LEDGER: &str = "CREATE TABLE ledger (merchant_id bigint, id bigint, amount numeric(18,2), note text, PRIMARY KEY (merchant_id, id));
                      CREATE TABLE currencies (code text PRIMARY KEY, name text);
                      INSERT INTO currencies VALUES ('EUR', 'Euro'), ('CHF', 'Franken');";

#[tokio::test]
async fn a_sharded_table_is_read_from_every_shard_and_a_read_model_from_its_context() {
    let source = PgServer::start().unwrap();
    let shards = [PgServer::start().unwrap(), PgServer::start().unwrap()];
    let analytics = PgServer::start().unwrap();
    source.psql("postgres", LEDGER).unwrap();
    for (n, s) in shards.iter().enumerate() {
        s.psql("postgres", LEDGER).unwrap();
        s.psql(
            "postgres",
            &format!(
                "INSERT INTO ledger SELECT {n} + 2 * (i % 50), i, i * 0.5, 'shard {n} ü' FROM generate_series(1, 20000) i"
            ),
        )
        .unwrap();
    }
    analytics
        .psql(
            "postgres",
            "CREATE TABLE volume (merchant_id bigint PRIMARY KEY, n bigint, total numeric);
             INSERT INTO volume SELECT i, i * 2, i * 1.5 FROM generate_series(1, 10) i;",
        )
        .unwrap();
    source
        .psql(
            "postgres",
            "INSERT INTO ledger SELECT i % 7, i, i * 0.25, NULL FROM generate_series(1, 500) i",
        )
        .unwrap();
    let t = topology(
        &source,
        &format!(
            "[contexts.tx]\ntables = [\"ledger\"]\nshard_key = \"merchant_id\"\nshards = [\"{}\", \"{}\"]\nreference_tables = [\"currencies\"]\n[contexts.analytics]\ntables = [\"accounts\"]\nurl = \"{}\"\n[[read_models]]\nname = \"volume\"\nfrom = \"ledger\"\ngroup_by = [\"merchant_id\"]\naggregates = [\"count(*) AS n\", \"sum(amount) AS total\"]\n",
            shards[0].url("postgres"),
            shards[1].url("postgres"),
            analytics.url("postgres")
        ),
    );
    let dir = tempfile::tempdir().unwrap();

    // The table's context by default: both shards, in parallel, one file each.
    let out = dir.path().join("ledger");
    let summary = run(&t, &ExportRequest::new(What::Table("ledger".into()), &out))
        .await
        .unwrap();
    assert_eq!(summary.rows, 40_000);
    assert_eq!(summary.sources.len(), 2);
    assert!(summary.sources.iter().all(|s| s.rows == 20_000));
    assert_eq!(
        listing(&out),
        [
            "_MANIFEST",
            "_SUCCESS",
            "part-000-00000.parquet",
            "part-001-00000.parquet"
        ]
    );
    let cols = ["id", "merchant_id", "amount", "note"];
    let sql = "SELECT (merchant_id * 1000000 + id)::text, merchant_id::text, amount::text, note FROM ledger";
    let mut want = pg_rows(&shards[0].url("postgres"), sql).await;
    want.extend(pg_rows(&shards[1].url("postgres"), sql).await);
    let got: Vec<Vec<Option<String>>> = rows_of(&read_parquet(&out, false))
        .into_iter()
        .map(|r| {
            let key = r[0].as_ref().unwrap().parse::<i64>().unwrap() * 1_000_000
                + r[1].as_ref().unwrap().parse::<i64>().unwrap();
            vec![
                Some(key.to_string()),
                r[0].clone(),
                r[2].clone(),
                r[3].clone(),
            ]
        })
        .collect();
    assert_same_rows(&cols, got, want);

    // --from source reads the monolith instead.
    let out = dir.path().join("ledger-source");
    let mut req = ExportRequest::new(What::Table("ledger".into()), &out);
    req.from = From::Source;
    assert_eq!(run(&t, &req).await.unwrap().rows, 500);

    // A reference table is whole on every shard: read once.
    let out = dir.path().join("currencies");
    let summary = run(
        &t,
        &ExportRequest::new(What::Table("currencies".into()), &out),
    )
    .await
    .unwrap();
    assert_eq!(summary.rows, 2);

    // A query over a sharded context runs on every shard.
    let out = dir.path().join("per-shard");
    let mut req = ExportRequest::new(
        What::Query("SELECT merchant_id, count(*) AS n FROM ledger GROUP BY 1".into()),
        &out,
    );
    req.from = From::Context("tx".into());
    assert_eq!(run(&t, &req).await.unwrap().rows, 100);

    // The read model from its context, its unconstrained sum as exact text.
    let out = dir.path().join("volume");
    run(&t, &ExportRequest::new(What::Table("volume".into()), &out))
        .await
        .unwrap();
    let read = read_parquet(&out, false);
    let want = pg_rows(
        &analytics.url("postgres"),
        "SELECT merchant_id::text, n::text, total::text FROM volume",
    )
    .await;
    assert_same_rows(&["merchant_id", "n", "total"], rows_of(&read), want);

    // ... or computed on the source with its query.
    let out = dir.path().join("volume-source");
    let mut req = ExportRequest::new(What::Table("volume".into()), &out);
    req.from = From::Source;
    run(&t, &req).await.unwrap();
    let want = pg_rows(
        &source.url("postgres"),
        "SELECT merchant_id::text, count(*)::text, sum(amount)::text FROM ledger GROUP BY 1",
    )
    .await;
    assert_same_rows(
        &["merchant_id", "n", "total"],
        rows_of(&read_parquet(&out, false)),
        want,
    );

    // A table missing on one shard is named with that shard.
    shards[1].psql("postgres", "DROP TABLE ledger").unwrap();
    let out = dir.path().join("broken");
    let err = run(&t, &ExportRequest::new(What::Table("ledger".into()), &out))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ExportError::MissingTable { database, .. } if database.contains(&shards[1].port().to_string())),
        "{err}"
    );
    assert!(!out.exists());
}
