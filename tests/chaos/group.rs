//! cdc's group commit behind a slow walsender: the source's connections
//! throttled, so the stream trickles in slower than the appliers could
//! commit. A target's group must still gather many source transactions
//! (it commits on size, age or the server's "caught up", never because its
//! queue ran empty), and a SIGKILL in the middle of a group loses and
//! doubles nothing.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::harness::{free_port, seed, tail, Fleet, Rng};

/// Source transactions written while cdc is stopped.
const BACKLOG: u64 = 1_500;

/// The metrics, once cdc serves them.
fn scrape(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The sum of every series of `name` (one per target, or the one).
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn groups_form_behind_a_slow_walsender_and_a_kill_mid_group_loses_and_doubles_nothing() {
    let seed = seed("group");
    let mut rng = Rng::new(seed);
    let f = Fleet::start(2_000);
    let mut config = std::fs::OpenOptions::new()
        .append(true)
        .open(&f.config)
        .unwrap();
    writeln!(config, "[cdc]\ngroup_wait = \"200ms\"").unwrap();
    let out = f.run(&["-q", "backfill", "--chunk-rows", "500"]);
    assert!(out.status.success(), "{}", crate::harness::stderr(&out));
    // Small transactions, each one commit on the source: inserts (a third
    // captured, for the read model), captures, moves of history rows
    // (TOASTed notes among them) and deletes.
    let (a, b) = (rng.range(0, 10), rng.range(0, 60));
    f.source
        .psql(
            "postgres",
            &format!(
                "DO $$ BEGIN
                   FOR t IN 1..{BACKLOG} LOOP
                     INSERT INTO payments VALUES (1 + (t + {b}) % 60, 5000000 + t, t % 97 + 0.{a},
                            CASE WHEN t % 3 = 0 THEN 'captured' ELSE 'authorized' END, 'g' || t);
                     IF t % 10 = {a} THEN
                       UPDATE payments SET status = 'captured' WHERE id = 5000000 + t - 5 AND status = 'authorized';
                     END IF;
                     IF t % 25 = 0 THEN
                       UPDATE payments SET merchant_id = 1 + (merchant_id + 7) % 60 WHERE id = t;
                     END IF;
                     IF t % 30 = 0 THEN DELETE FROM payments WHERE id = 5000000 + t - 20; END IF;
                     COMMIT;
                   END LOOP;
                 END $$"
            ),
        )
        .unwrap();
    // A slow walsender: the stream trickles in at 64 KiB/s, a few source
    // transactions every 10 ms.
    f.source_faults().set_bandwidth(Some(64 << 10));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (cdc, log) = f.spawn_logged(
        &[
            "-v",
            "cdc",
            "run",
            "--heartbeat-secs",
            "1",
            "--metrics-listen",
            &listen,
        ],
        "group",
    );
    let started = Instant::now();
    let (transactions, commits) = loop {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "cdc streams the backlog: {}",
            tail(&log)
        );
        std::thread::sleep(Duration::from_millis(200));
        let Some(text) = scrape(port) else { continue };
        let transactions = total(&text, "shardline_cdc_transactions_total");
        if transactions >= (BACKLOG * 2 / 5) as f64 {
            break (
                transactions,
                total(&text, "shardline_cdc_target_commits_total"),
            );
        }
    };
    eprintln!(
        "{transactions} source transactions, {commits} target commits (2 shards and analytics)"
    );
    assert!(
        transactions < BACKLOG as f64,
        "the stream was throttled: killed mid-stream"
    );
    // One commit per source transaction per target it touched would be
    // well above the count of source transactions.
    assert!(
        commits > 0.0 && commits * 4.0 < transactions,
        "groups collapsed behind a slow walsender: {commits} target commits for {transactions} source transactions"
    );

    // SIGKILL while groups are open, then stream the rest at full speed.
    std::thread::sleep(Duration::from_millis(rng.range(0, 500)));
    cdc.sigkill();
    f.source_faults().clear();
    let (cdc, log) = f.spawn_logged(&["cdc", "run", "--heartbeat-secs", "1"], "group-after-kill");
    assert!(
        f.wait_caught_up("shardline", Duration::from_secs(120)),
        "{}",
        tail(&log)
    );
    let out = cdc.sigterm_and_wait();
    assert!(out.status.success(), "{}", tail(&log));
    f.assert_exact("cdc killed mid-group behind a slow walsender");
}
