//! When a target's group of source transactions commits: on a quiet
//! stream and at the end of a backlog as soon as the server says the
//! stream caught up, within a backlog when it is full, never after
//! `[cdc] group_wait` there. (Groups forming under a slow walsender, and
//! exactly-once through a kill, are in the chaos suite: `tests/chaos/group.rs`.)

use std::time::{Duration, Instant};

use shardline_cdc::run::RunOptions;

use crate::stream::{fleet, scrape, spawn_cdc, wait_caught_up, wait_streaming};

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_steady_low_rate_a_change_commits_when_the_stream_caught_up_not_after_group_wait() {
    let mut f = fleet();
    // Far longer than any lag allowed below: a change held for the group's
    // wait fails the test.
    let wait = Duration::from_secs(4);
    f.topology.cdc.group_wait = wait;
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let options = RunOptions {
        heartbeat: Duration::from_millis(500),
        metrics_listen: Some(addr),
        ..RunOptions::default()
    };
    let (stop_tx, cdc) = spawn_cdc(&f.topology, &options);
    wait_streaming(&f.source).await;
    let probes = 12;
    let mut lags = Vec::new();
    for i in 1..=probes {
        let started = Instant::now();
        f.source
            .psql(
                "postgres",
                &format!("INSERT INTO payments VALUES ({}, {i}, 1)", 1 + i % 7),
            )
            .unwrap();
        loop {
            let seen: u32 = f
                .shards
                .iter()
                .map(|s| {
                    s.psql(
                        "postgres",
                        &format!("SELECT count(*) FROM payments WHERE id = {i}"),
                    )
                    .unwrap()
                    .trim()
                    .parse::<u32>()
                    .unwrap()
                })
                .sum();
            if seen == 1 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "probe {i} never arrived"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        lags.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    wait_caught_up(&f.source, &options.slot).await;
    // Metrics are published once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = scrape(addr).await;
    stop_tx.send(true).unwrap();
    let report = cdc.await.unwrap().unwrap();
    lags.sort();
    let worst = *lags.last().unwrap();
    assert!(
        worst < wait / 2,
        "a change waited for the group to age instead of committing when the stream caught up: lags {lags:?}"
    );
    // Dispatch to durable, per source transaction, as cdc measured it.
    let count = value(&text, "shardline_cdc_apply_latency_seconds_count");
    assert!(count >= probes as f64, "{text}");
    assert_eq!(
        value(
            &text,
            "shardline_cdc_apply_latency_seconds_bucket{le=\"1\"}"
        ),
        count,
        "every transaction durable within 1 s of dispatch: {text}"
    );
    // Each probe is its own group: nothing else was on its way.
    assert_eq!(report.transactions, probes as u64);
    assert_eq!(report.target_commits, probes as u64, "{report:?}");
}

/// Writes `n` source transactions, each inserting a row for merchants 1 to
/// 8 (on both shards), numbered from `from`.
fn backlog(f: &crate::stream::Fleet, from: u32, n: u32) {
    f.source
        .psql(
            "postgres",
            &format!(
                "DO $$ BEGIN
                   FOR t IN {from}..{} LOOP
                     INSERT INTO payments SELECT m, t, 1 FROM generate_series(1, 8) m;
                     COMMIT;
                   END LOOP;
                 END $$",
                from + n - 1
            ),
        )
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_commits_when_the_stream_caught_up_or_its_group_is_full_not_after_group_wait() {
    let mut f = fleet();
    // Never reached here: every commit below is on size or caught up.
    let wait = Duration::from_secs(20);
    f.topology.cdc.group_wait = wait;
    let options = RunOptions {
        heartbeat: Duration::from_millis(500),
        ..RunOptions::default()
    };
    crate::stream::start_and_stop_cdc(&f.topology, &f.source, &options).await;

    // The whole backlog is one group per shard, committed once the
    // walsender has sent it all and says so.
    backlog(&f, 1, 30);
    let started = Instant::now();
    let (stop_tx, cdc) = spawn_cdc(&f.topology, &options);
    wait_caught_up(&f.source, &options.slot).await;
    let took = started.elapsed();
    stop_tx.send(true).unwrap();
    let report = cdc.await.unwrap().unwrap();
    assert!(
        took < wait / 2,
        "the backlog waited for group_wait: {took:?}"
    );
    assert_eq!(report.transactions, 30);
    assert_eq!(report.target_commits, 2, "one group per shard: {report:?}");

    // Each shard takes rows of every source transaction: with
    // group_changes = 1 a group is full after one.
    f.topology.cdc.group_changes = 1;
    backlog(&f, 31, 30);
    let (stop_tx, cdc) = spawn_cdc(&f.topology, &options);
    wait_caught_up(&f.source, &options.slot).await;
    stop_tx.send(true).unwrap();
    let report = cdc.await.unwrap().unwrap();
    assert_eq!(report.transactions, 30);
    assert_eq!(
        report.target_commits, 60,
        "each source transaction its own group on each shard: {report:?}"
    );
    crate::stream::assert_converged(&f);
}
