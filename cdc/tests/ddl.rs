//! Schema changes in the stream, at the library's level: the JSON-lines
//! sink emits them, and a change that a read model cannot follow stops
//! cdc before any target changes.

use std::path::Path;
use std::time::Duration;

use shardline_cdc::run::{CdcError, RunOptions};
use shardline_topology::Topology;

use crate::stream::{fleet, spawn_cdc, wait_caught_up, wait_streaming, Shared};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jsonl_sink_writes_a_schema_change_where_it_happened() {
    let f = fleet();
    let buffer = Shared::default();
    let out: Box<dyn std::io::Write + Send> = Box::new(buffer.clone());
    let options = RunOptions {
        heartbeat: Duration::from_millis(200),
        jsonl: Some(std::sync::Arc::new(std::sync::Mutex::new(out))),
        ..RunOptions::default()
    };
    let (stop_tx, cdc) = spawn_cdc(&f.topology, &options);
    wait_streaming(&f.source).await;
    f.source
        .psql(
            "postgres",
            "BEGIN; INSERT INTO payments VALUES (7, 1, 2.50, NULL, NULL);
             ALTER TABLE payments ADD COLUMN risk int DEFAULT 7;
             INSERT INTO payments VALUES (7, 2, 1, NULL, NULL, 3); COMMIT;",
        )
        .unwrap();
    wait_caught_up(&f.source, &options.slot).await;
    stop_tx.send(true).unwrap();
    cdc.await.unwrap().unwrap();
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ops: Vec<&str> = lines.iter().map(|l| l["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["insert", "ddl", "insert"], "{text}");
    let ddl = &lines[1]["ddl"];
    assert_eq!(
        ddl["statement"],
        "ALTER TABLE payments ADD COLUMN risk int DEFAULT 7"
    );
    assert_eq!(ddl["tag"], "ALTER TABLE");
    assert_eq!(lines[1]["table"], "public.payments");
    assert_eq!(lines[1]["lsn"], lines[0]["lsn"]);
    assert!(ddl["id"].as_i64().unwrap() > 0);
    assert_eq!(lines[2]["new"]["risk"], "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_column_a_read_model_names_stops_cdc_with_the_reason() {
    let f = fleet();
    f.settlements
        .psql(
            "postgres",
            "CREATE TABLE volume (merchant_id bigint PRIMARY KEY, n bigint, total numeric)",
        )
        .unwrap();
    let text = format!(
        "[source]\nurl = \"{}\"\n[contexts.transactions]\ntables = [\"payments\"]\nshard_key = \"merchant_id\"\nshards = [\"{}\", \"{}\"]\n[contexts.settlements]\ntables = [\"payouts\"]\nurl = \"{}\"\n[[read_models]]\nname = \"volume\"\nfrom = \"payments\"\ngroup_by = [\"merchant_id\"]\naggregates = [\"count(*) AS n\", \"sum(amount) AS total\"]\ncontext = \"settlements\"\n",
        f.source.url("postgres"),
        f.shards[0].url("postgres"),
        f.shards[1].url("postgres"),
        f.settlements.url("postgres")
    );
    let topology = Topology::parse(&text, Path::new("t.toml")).unwrap();
    let options = RunOptions {
        heartbeat: Duration::from_millis(200),
        ..RunOptions::default()
    };
    let (_stop_tx, cdc) = spawn_cdc(&topology, &options);
    wait_streaming(&f.source).await;
    for sql in [
        "INSERT INTO payments VALUES (7, 1, 2.50, NULL, NULL)",
        "ALTER TABLE payments ADD COLUMN memo text",
        "ALTER TABLE payments RENAME COLUMN amount TO amount_eur",
    ] {
        f.source.psql("postgres", sql).unwrap();
    }
    let result = tokio::time::timeout(Duration::from_secs(120), cdc)
        .await
        .expect("cdc stops by itself")
        .unwrap();
    let Err(CdcError::Ddl {
        statement,
        why,
        fix,
        ..
    }) = result
    else {
        panic!("expected a refused schema change, got {result:?}");
    };
    assert_eq!(
        statement,
        "ALTER TABLE payments RENAME COLUMN amount TO amount_eur"
    );
    assert!(
        why.contains("read model volume names column amount of public.payments"),
        "{why}"
    );
    assert!(
        fix.contains("edit read model volume in the topology so it names amount_eur"),
        "{fix}"
    );
    // What came before it was applied; the rename was not.
    for shard in &f.shards {
        let columns = shard
            .psql(
                "postgres",
                "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 'payments'",
            )
            .unwrap();
        assert_eq!(columns.trim(), "merchant_id,id,amount,note,meta,memo");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capture_needs_a_superuser_and_stop_mode_runs_without_it() {
    let f = fleet();
    f.source
        .psql(
            "postgres",
            "CREATE ROLE app LOGIN REPLICATION; GRANT CREATE ON DATABASE postgres TO app;
             ALTER TABLE payments OWNER TO app; ALTER TABLE payouts OWNER TO app;",
        )
        .unwrap();
    let topology = |source_extra: &str| {
        let text = format!(
            "[source]\nurl = \"postgres://app@127.0.0.1:{}/postgres\"\n{source_extra}\n[contexts.transactions]\ntables = [\"payments\"]\nshard_key = \"merchant_id\"\nshards = [\"{}\", \"{}\"]\n[contexts.settlements]\ntables = [\"payouts\"]\nurl = \"{}\"\n",
            f.source.port(),
            f.shards[0].url("postgres"),
            f.shards[1].url("postgres"),
            f.settlements.url("postgres")
        );
        Topology::parse(&text, Path::new("t.toml")).unwrap()
    };
    let options = RunOptions {
        heartbeat: Duration::from_millis(200),
        ..RunOptions::default()
    };
    let (_stop, cdc) = spawn_cdc(&topology(""), &options);
    let result = cdc.await.unwrap();
    let message = result
        .expect_err("a role that cannot install the capture is refused")
        .to_string();
    assert!(
        message.contains("role app cannot install the DDL capture on the source: event triggers need a superuser"),
        "{message}"
    );
    assert!(message.contains("ddl = \"stop\""), "{message}");

    // Without the capture: nothing installed, and a column change stops
    // cdc naming the columns.
    let (_stop, mut cdc) = spawn_cdc(&topology("ddl = \"stop\""), &options);
    tokio::select! {
        _ = wait_streaming(&f.source) => {}
        r = &mut cdc => panic!("cdc stopped before streaming: {:?}", r.unwrap().map_err(|e| e.to_string())),
    }
    assert_eq!(
        f.source
            .psql("postgres", "SELECT count(*) FROM pg_event_trigger")
            .unwrap()
            .trim(),
        "0"
    );
    for sql in [
        "INSERT INTO payments VALUES (7, 1, 2.50, NULL, NULL)",
        "ALTER TABLE payments ADD COLUMN risk int",
        "INSERT INTO payments VALUES (7, 2, 1, NULL, NULL, 3)",
    ] {
        f.source.psql("postgres", sql).unwrap();
    }
    let result = tokio::time::timeout(Duration::from_secs(120), cdc)
        .await
        .expect("cdc stops by itself")
        .unwrap();
    let message = result
        .expect_err("an uncaptured column change stops cdc")
        .to_string();
    assert!(
        message.contains("table public.payments: the source's columns changed (added [\"risk\"]"),
        "{message}"
    );
}
