//! What the applier writes on a target carries a replication origin, so a
//! stream from the target back to the monolith (the cutover's way back)
//! can tell it from the application's own writes.

use std::time::Duration;

use shardline_cdc::apply::forward_origin;
use shardline_cdc::run::{RunOptions, REVERSE_ORIGIN_PREFIX};
use shardline_topology::ConnString;

use crate::stream::{fleet, spawn_cdc, wait_caught_up, wait_streaming};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_transactions_carry_the_forward_origin_and_the_applications_do_not() {
    let f = fleet();
    let shard = &f.shards[0];
    shard
        .psql(
            "postgres",
            "SELECT pg_create_logical_replication_slot('echo', 'test_decoding')",
        )
        .unwrap();
    let options = RunOptions {
        heartbeat: Duration::from_millis(200),
        ..RunOptions::default()
    };
    let (stop, cdc) = spawn_cdc(&f.topology, &options);
    wait_streaming(&f.source).await;
    let source = ConnString::parse(&f.source.url("postgres"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    source
        .batch_execute(
            "INSERT INTO payments (merchant_id, id) SELECT m, 1 FROM generate_series(1, 40) m",
        )
        .await
        .unwrap();
    wait_caught_up(&f.source, &options.slot).await;
    // The application writes on the shard itself (a merchant already moved).
    // Flushed at once, so the slot can decode it (test servers commit
    // asynchronously).
    shard
        .psql(
            "postgres",
            "SET synchronous_commit = on; INSERT INTO payments (merchant_id, id) VALUES (1000001, 1)",
        )
        .unwrap();
    stop.send(true).unwrap();
    cdc.await.unwrap().unwrap();

    let inserts = |only_local: bool| {
        shard
            .psql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_logical_slot_peek_changes('echo', NULL, NULL, 'only-local', '{}')
                     WHERE data LIKE 'table public.payments: INSERT%'",
                    if only_local { 1 } else { 0 }
                ),
            )
            .unwrap()
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    let applied: i64 = shard
        .psql("postgres", "SELECT count(*) FROM payments")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(applied > 1, "cdc applied nothing to shard 0");
    assert_eq!(inserts(false), applied);
    assert_eq!(
        inserts(true),
        1,
        "only the application's own insert is local"
    );
    let origin = forward_origin(
        &options.slot,
        &ConnString::parse(&shard.url("postgres"))
            .unwrap()
            .to_string(),
    );
    assert_eq!(
        shard
            .psql(
                "postgres",
                &format!("SELECT count(*) FROM pg_replication_origin WHERE roname = '{origin}'"),
            )
            .unwrap()
            .trim(),
        "1"
    );
    shard
        .psql("postgres", "SELECT pg_drop_replication_slot('echo')")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monolith_transactions_written_by_the_way_back_are_not_streamed_to_the_shards_again() {
    let f = fleet();
    let options = RunOptions {
        heartbeat: Duration::from_millis(200),
        ..RunOptions::default()
    };
    let (stop, cdc) = spawn_cdc(&f.topology, &options);
    wait_streaming(&f.source).await;
    let source = ConnString::parse(&f.source.url("postgres"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // A session of the way back: its transactions carry a reverse origin.
    let reverse = format!("{REVERSE_ORIGIN_PREFIX}test");
    source
        .execute("SELECT pg_replication_origin_create($1::text)", &[&reverse])
        .await
        .unwrap();
    let back = ConnString::parse(&f.source.url("postgres"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    back.execute(
        "SELECT pg_replication_origin_session_setup($1::text)",
        &[&reverse],
    )
    .await
    .unwrap();
    back.batch_execute(
        "INSERT INTO payments (merchant_id, id) SELECT m, 2 FROM generate_series(1, 40) m;
         UPDATE payments SET amount = 1 WHERE id = 2",
    )
    .await
    .unwrap();
    source
        .batch_execute(
            "INSERT INTO payments (merchant_id, id) SELECT m, 1 FROM generate_series(1, 40) m",
        )
        .await
        .unwrap();
    wait_caught_up(&f.source, &options.slot).await;
    stop.send(true).unwrap();
    cdc.await.unwrap().unwrap();
    let count = |sql: &str| -> i64 {
        f.shards
            .iter()
            .map(|s| {
                s.psql("postgres", sql)
                    .unwrap()
                    .trim()
                    .parse::<i64>()
                    .unwrap()
            })
            .sum()
    };
    assert_eq!(count("SELECT count(*) FROM payments WHERE id = 1"), 40);
    assert_eq!(
        count("SELECT count(*) FROM payments WHERE id = 2"),
        0,
        "echoes were applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_and_reverse_streams_run_together_without_echoes() {
    use shardline_cdc::reverse::{reverse_options, reverse_topology};
    let f = fleet();
    let options = RunOptions {
        heartbeat: Duration::from_millis(200),
        ..RunOptions::default()
    };
    let (stop, cdc) = spawn_cdc(&f.topology, &options);
    wait_streaming(&f.source).await;
    let mut reverse = Vec::new();
    for i in 0..f.shards.len() {
        let t = reverse_topology(&f.topology, i).unwrap();
        let o = reverse_options(&options, i);
        reverse.push((spawn_cdc(&t, &o), o.slot));
        wait_streaming(&f.shards[i]).await;
    }
    let source = ConnString::parse(&f.source.url("postgres"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // The monolith's own merchants, and merchants already on the shards
    // writing there (each on its own shard).
    source
        .batch_execute(
            "INSERT INTO payments (merchant_id, id) SELECT m, 1 FROM generate_series(1, 40) m",
        )
        .await
        .unwrap();
    for (i, shard) in f.shards.iter().enumerate() {
        shard
            .psql(
                "postgres",
                &format!("INSERT INTO payments (merchant_id, id) VALUES ({}, 2); UPDATE payments SET amount = 5 WHERE merchant_id = {} AND id = 2", 1000 + i, 1000 + i),
            )
            .unwrap();
    }
    wait_caught_up(&f.source, &options.slot).await;
    for (i, (_, slot)) in reverse.iter().enumerate() {
        wait_caught_up(&f.shards[i], slot).await;
    }
    // Once more both ways, so an echo would have had time to arrive.
    wait_caught_up(&f.source, &options.slot).await;
    stop.send(true).unwrap();
    cdc.await.unwrap().unwrap();
    for ((stop, task), _) in reverse {
        stop.send(true).unwrap();
        task.await.unwrap().unwrap();
    }
    let count = |server: &shardline_testkit::PgServer, sql: &str| -> i64 {
        server
            .psql("postgres", sql)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(
        count(&f.source, "SELECT count(*) FROM payments WHERE id = 1"),
        40
    );
    assert_eq!(
        count(
            &f.source,
            "SELECT count(*) FROM payments WHERE id = 2 AND amount = 5"
        ),
        2,
        "the shards' own writes reached the monolith"
    );
    let on_shards: i64 = f
        .shards
        .iter()
        .map(|s| count(s, "SELECT count(*) FROM payments"))
        .sum();
    assert_eq!(on_shards, 42, "no row came back as an echo");
}
