//! Targets that are not as the source had them: changes of tables without
//! a primary key touch exactly as many rows as on the source, and an update
//! or delete that finds no row stops cdc (or, where the topology says so,
//! is recorded and counted) instead of passing silently.

use std::path::Path;
use std::time::Duration;

use shardline_cdc::apply::ApplyError;
use shardline_cdc::run::{CdcError, RunOptions};
use shardline_testkit::PgServer;
use shardline_topology::{ContextKind, Topology};

use crate::stream::{fleet, rows, spawn_cdc, wait_caught_up, wait_streaming};

pub fn options() -> RunOptions {
    RunOptions {
        heartbeat: Duration::from_millis(200),
        read_model_refresh: Duration::from_millis(300),
        ..RunOptions::default()
    }
}

/// Rows with their multiplicity, so twins count twice.
fn bag(server: &PgServer, table: &str, filter: &str) -> String {
    server
        .psql(
            "postgres",
            &format!("SELECT coalesce(string_agg(r, ' ' ORDER BY r), '') FROM (SELECT t::text || '×' || count(*) AS r FROM {table} t WHERE {filter} GROUP BY t::text) q"),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_a_primary_key_changes_one_of_its_identical_rows() {
    let schema = "CREATE TABLE ledger (merchant_id bigint NOT NULL, amount int, note text);
                  CREATE TABLE logs (msg text, n int);";
    let source = PgServer::start().unwrap();
    let shards = vec![PgServer::start().unwrap(), PgServer::start().unwrap()];
    let single = PgServer::start().unwrap();
    for s in std::iter::once(&source).chain(&shards).chain([&single]) {
        s.psql("postgres", schema).unwrap();
    }
    source
        .psql(
            "postgres",
            "ALTER TABLE ledger REPLICA IDENTITY FULL; ALTER TABLE logs REPLICA IDENTITY FULL",
        )
        .unwrap();
    let text = format!(
        "[source]\nurl = \"{}\"\n[contexts.transactions]\ntables = [\"ledger\"]\nshard_key = \"merchant_id\"\nshards = [\"{}\", \"{}\"]\n[contexts.audit]\ntables = [\"logs\"]\nurl = \"{}\"\n",
        source.url("postgres"),
        shards[0].url("postgres"),
        shards[1].url("postgres"),
        single.url("postgres")
    );
    let topology = Topology::parse(&text, Path::new("t.toml")).unwrap();
    let (stop_tx, cdc) = spawn_cdc(&topology, &options());
    wait_streaming(&source).await;
    source
        .psql(
            "postgres",
            "INSERT INTO ledger SELECT m, a, NULL FROM generate_series(1, 6) m, generate_series(1, 2) a, generate_series(1, 3);
             INSERT INTO logs SELECT 'same', 1 FROM generate_series(1, 3);
             INSERT INTO logs VALUES (NULL, 2), (NULL, 2)",
        )
        .unwrap();
    // One row of each set of twins changes, as the source says.
    source
        .psql(
            "postgres",
            "DELETE FROM ledger WHERE ctid = (SELECT ctid FROM ledger WHERE merchant_id = 1 AND amount = 1 LIMIT 1);
             UPDATE ledger SET note = 'one' WHERE ctid = (SELECT ctid FROM ledger WHERE merchant_id = 2 AND amount = 2 LIMIT 1);
             UPDATE ledger SET merchant_id = 1000 + merchant_id WHERE ctid IN (SELECT ctid FROM ledger WHERE amount = 2 AND note IS NULL AND merchant_id BETWEEN 3 AND 6 LIMIT 2);
             DELETE FROM logs WHERE ctid = (SELECT ctid FROM logs WHERE msg = 'same' LIMIT 1);
             UPDATE logs SET n = 3 WHERE ctid = (SELECT ctid FROM logs WHERE msg IS NULL LIMIT 1)",
        )
        .unwrap();
    wait_caught_up(&source, "shardline").await;
    stop_tx.send(true).unwrap();
    cdc.await.unwrap().unwrap();
    let ContextKind::Sharded { placement, .. } = &topology.context("transactions").unwrap().kind
    else {
        unreachable!()
    };
    for (i, shard) in shards.iter().enumerate() {
        let owned = placement.owned_by_shard_sql("merchant_id", i);
        assert_eq!(
            bag(shard, "ledger", "true"),
            bag(&source, "ledger", &owned),
            "shard {i}"
        );
    }
    assert_eq!(bag(&single, "logs", "true"), bag(&source, "logs", "true"));
    assert!(bag(&single, "logs", "true").contains("(same,1)×2"));
}

fn diverged(result: Result<shardline_cdc::run::RunReport, CdcError>) -> String {
    match result {
        Err(CdcError::Apply(e @ ApplyError::Diverged { .. })) => e.to_string(),
        other => panic!("expected a divergence, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_or_delete_matching_no_row_stops_cdc_naming_table_key_and_target() {
    let f = fleet();
    let (stop_tx, cdc) = spawn_cdc(&f.topology, &options());
    wait_streaming(&f.source).await;
    f.source
        .psql(
            "postgres",
            "INSERT INTO payments SELECT m, i, i, 'n' FROM generate_series(1, 4) m, generate_series(1, 20) i",
        )
        .unwrap();
    wait_caught_up(&f.source, "shardline").await;
    // Someone removes a row on its shard behind cdc's back.
    let ContextKind::Sharded { placement, .. } = &f.topology.context("transactions").unwrap().kind
    else {
        unreachable!()
    };
    let shard = placement.shard(&shardline_topology::ShardKey::Int(3));
    f.shards[shard]
        .psql(
            "postgres",
            "DELETE FROM payments WHERE merchant_id = 3 AND id = 7",
        )
        .unwrap();
    let before = f.shards[shard]
        .psql("postgres", "SELECT commit_lsn FROM shardline.cdc_progress")
        .unwrap();
    // One source transaction: an insert, then the update of the lost row.
    f.source
        .psql(
            "postgres",
            "BEGIN; INSERT INTO payments VALUES (3, 100, 1, 'x');
             UPDATE payments SET amount = 70 WHERE merchant_id = 3 AND id = 7; COMMIT",
        )
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(60), cdc)
        .await
        .expect("cdc stops by itself")
        .unwrap();
    drop(stop_tx);
    let message = diverged(result);
    for part in [
        "the update of \"public\".\"payments\" where merchant_id = '3', id = '7' matched no row",
        &f.topology.context("transactions").unwrap().databases()[shard].to_string(),
    ] {
        assert!(message.contains(part), "{part} missing from: {message}");
    }
    // Nothing of that source transaction committed there.
    assert_eq!(
        f.shards[shard]
            .psql("postgres", "SELECT count(*) FROM payments WHERE id = 100")
            .unwrap()
            .trim(),
        "0"
    );
    assert_eq!(
        f.shards[shard]
            .psql("postgres", "SELECT commit_lsn FROM shardline.cdc_progress")
            .unwrap(),
        before
    );
    // Repaired, a new run applies the transaction and converges.
    f.shards[shard]
        .psql("postgres", "INSERT INTO payments VALUES (3, 7, 7, 'n')")
        .unwrap();
    f.source
        .psql(
            "postgres",
            "DELETE FROM payments WHERE merchant_id = 4 AND id = 1",
        )
        .unwrap();
    let (stop_tx, cdc) = spawn_cdc(&f.topology, &options());
    wait_caught_up(&f.source, "shardline").await;
    stop_tx.send(true).unwrap();
    cdc.await.unwrap().unwrap();
    crate::stream::assert_converged(&f);

    // A delete of a row the target lost stops it too.
    f.shards[shard]
        .psql(
            "postgres",
            "DELETE FROM payments WHERE merchant_id = 3 AND id = 8",
        )
        .unwrap();
    f.source
        .psql(
            "postgres",
            "DELETE FROM payments WHERE merchant_id = 3 AND id = 8",
        )
        .unwrap();
    let (_stop_tx, cdc) = spawn_cdc(&f.topology, &options());
    let result = tokio::time::timeout(Duration::from_secs(60), cdc)
        .await
        .expect("cdc stops by itself")
        .unwrap();
    let message = diverged(result);
    assert!(
        message.contains("the delete of \"public\".\"payments\" where merchant_id = '3', id = '8' matched no row"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_on_divergence_count_a_diverged_change_is_recorded_counted_and_passed() {
    let mut f = fleet();
    // The fleet's topology, with the key.
    let base = format!(
        "[source]\nurl = \"{}\"\n[contexts.transactions]\ntables = [\"payments\"]\nshard_key = \"merchant_id\"\nshards = [\"{}\", \"{}\"]\n[contexts.settlements]\ntables = [\"payouts\"]\nurl = \"{}\"\n[cdc]\non_divergence = \"count\"\n",
        f.source.url("postgres"),
        f.shards[0].url("postgres"),
        f.shards[1].url("postgres"),
        f.settlements.url("postgres")
    );
    f.topology = Topology::parse(&base, Path::new("t.toml")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let opts = RunOptions {
        metrics_listen: Some(addr),
        ..options()
    };
    let (stop_tx, cdc) = spawn_cdc(&f.topology, &opts);
    wait_streaming(&f.source).await;
    f.source
        .psql(
            "postgres",
            "INSERT INTO payouts SELECT i, i % 3, i FROM generate_series(1, 10) i",
        )
        .unwrap();
    wait_caught_up(&f.source, "shardline").await;
    f.settlements
        .psql("postgres", "DELETE FROM payouts WHERE id IN (4, 5)")
        .unwrap();
    f.source
        .psql(
            "postgres",
            "UPDATE payouts SET amount = 40 WHERE id = 4; DELETE FROM payouts WHERE id = 5; UPDATE payouts SET amount = 60 WHERE id = 6",
        )
        .unwrap();
    wait_caught_up(&f.source, "shardline").await;
    // Metrics are published once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let metrics = crate::stream::scrape(addr).await;
    let target = f.topology.context("settlements").unwrap().databases()[0].to_string();
    assert!(
        metrics.contains(&format!(
            "shardline_cdc_divergences_total{{target=\"{target}\"}} 2"
        )),
        "{metrics}"
    );
    let status = shardline_cdc::status::status(&f.topology, "shardline")
        .await
        .unwrap();
    let t = status.targets.iter().find(|t| t.target == target).unwrap();
    assert_eq!(t.divergences, Some(2), "{status:?}");
    stop_tx.send(true).unwrap();
    let report = cdc.await.unwrap().unwrap();
    assert_eq!(report.divergences, 2);
    assert_eq!(
        f.settlements
            .psql(
                "postgres",
                "SELECT string_agg(operation || ' ' || relation || ' ' || key, '; ' ORDER BY key) FROM shardline.cdc_divergence"
            )
            .unwrap()
            .trim(),
        "update \"public\".\"payouts\" id = '4'; delete \"public\".\"payouts\" id = '5'"
    );
    // The change after them in the same transaction was applied.
    assert_eq!(
        rows(&f.settlements, "payouts", "id = 6"),
        rows(&f.source, "payouts", "id = 6")
    );
}

const READ_MODEL_SCHEMA: &str = "
CREATE TABLE payments (merchant_id bigint, id bigint, amount numeric(18,2), status text NOT NULL,
                       currency char(3) NOT NULL, PRIMARY KEY (merchant_id, id));
CREATE TABLE merchants (id bigint PRIMARY KEY);";

fn read_model_fleet(extra: &str) -> (PgServer, PgServer, PgServer, Topology) {
    let source = PgServer::start().unwrap();
    let shard = PgServer::start().unwrap();
    let analytics = PgServer::start().unwrap();
    for s in [&source, &shard] {
        s.psql("postgres", READ_MODEL_SCHEMA).unwrap();
    }
    source
        .psql("postgres", "ALTER TABLE payments REPLICA IDENTITY FULL")
        .unwrap();
    analytics
        .psql(
            "postgres",
            "CREATE TABLE merchants (id bigint PRIMARY KEY);
             CREATE TABLE volume (currency char(3) PRIMARY KEY, payments bigint NOT NULL, total numeric);
             CREATE TABLE top (currency char(3) PRIMARY KEY, biggest numeric(18,2), n bigint);",
        )
        .unwrap();
    let text = format!(
        r#"[source]
url = "{}"
[contexts.transactions]
tables = ["payments"]
shard_key = "merchant_id"
shards = ["{}"]
[contexts.analytics]
url = "{}"
tables = ["merchants"]
[[read_models]]
name = "volume"
from = "payments"
where = "status = 'captured'"
group_by = ["currency"]
aggregates = ["count(*) AS payments", "sum(amount) AS total"]
[[read_models]]
name = "top"
from = "payments"
group_by = ["currency"]
aggregates = ["max(amount) AS biggest", "count(*) AS n"]
{extra}"#,
        source.url("postgres"),
        shard.url("postgres"),
        analytics.url("postgres"),
    );
    let topology = Topology::parse(&text, Path::new("t.toml")).unwrap();
    (source, shard, analytics, topology)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_model_group_that_would_go_below_zero_is_a_divergence() {
    for mode in ["stop", "count"] {
        let (source, _shard, analytics, topology) =
            read_model_fleet(&format!("[cdc]\non_divergence = \"{mode}\"\n"));
        let (stop_tx, cdc) = spawn_cdc(&topology, &options());
        wait_streaming(&source).await;
        source
            .psql(
                "postgres",
                "INSERT INTO payments SELECT 1, i, i, 'captured', (ARRAY['EUR','USD'])[1 + i % 2] FROM generate_series(1, 10) i",
            )
            .unwrap();
        wait_caught_up(&source, "shardline").await;
        analytics
            .psql("postgres", "DELETE FROM volume WHERE currency = 'USD'")
            .unwrap();
        source
            .psql(
                "postgres",
                "UPDATE payments SET status = 'refunded' WHERE id = 1",
            )
            .unwrap();
        if mode == "stop" {
            let result = tokio::time::timeout(Duration::from_secs(60), cdc)
                .await
                .expect("cdc stops by itself")
                .unwrap();
            drop(stop_tx);
            let message = diverged(result);
            assert!(
                message.contains("read model volume: adjusting group (USD) leaves it with -1 rows"),
                "{message}"
            );
        } else {
            wait_caught_up(&source, "shardline").await;
            stop_tx.send(true).unwrap();
            let report = cdc.await.unwrap().unwrap();
            assert_eq!(report.divergences, 1, "{report:?}");
            assert_eq!(
                analytics
                    .psql(
                        "postgres",
                        "SELECT operation || ' ' || relation || ' ' || key FROM shardline.cdc_divergence"
                    )
                    .unwrap()
                    .trim(),
                "adjust volume (USD)"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literals_reach_a_source_with_standard_conforming_strings_off_intact() {
    let (source, _shard, analytics, topology) = read_model_fleet("");
    source
        .psql(
            "postgres",
            "ALTER DATABASE postgres SET standard_conforming_strings = off",
        )
        .unwrap();
    let (stop_tx, cdc) = spawn_cdc(&topology, &options());
    wait_streaming(&source).await;
    // A group value with a backslash: the per-group recompute of `top`
    // names the touched groups in a literal it runs on the source.
    source
        .psql(
            "postgres",
            "INSERT INTO payments SELECT 1, i, i, 'captured', 'A' || chr(92) || 'B' FROM generate_series(1, 3) i;
             INSERT INTO payments VALUES (1, 50, 5, 'captured', 'EUR')",
        )
        .unwrap();
    wait_caught_up(&source, "shardline").await;
    // A second round, so the first per-group refresh has a group to miss.
    source
        .psql("postgres", "UPDATE payments SET amount = 99 WHERE id = 2")
        .unwrap();
    wait_caught_up(&source, "shardline").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop_tx.send(true).unwrap();
    cdc.await.unwrap().unwrap();
    let query = topology.read_models[1].query();
    let sql = |from: &str| {
        format!("SELECT string_agg(replace(t::text, chr(92), '<bs>'), ' ' ORDER BY currency) FROM {from} t")
    };
    let want = source
        .psql("postgres", &sql(&format!("({query})")))
        .unwrap();
    assert!(want.contains("A<bs><bs>B"), "{want}");
    assert_eq!(analytics.psql("postgres", &sql("top")).unwrap(), want);
}
