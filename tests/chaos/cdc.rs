//! cdc through cut and restarted targets, a restarted source (its
//! walsender goes away), a read-model database slowed to 200 ms a round
//! trip, and a SIGKILL while long runs of inserts are copied: it
//! reconnects by itself after each lost connection (counting it in `cdc
//! status` and the metrics), resumes after the kill, and every target and
//! the read model end exact.

use std::io::{Read, Write};
use std::time::Duration;

use crate::harness::{free_port, seed, stderr, tail, Fleet, Load, Rng};

fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1.0)
}

#[test]
fn cdc_reconnects_through_cuts_and_restarts_and_ends_exact_after_a_kill() {
    let seed = seed("cdc");
    let mut rng = Rng::new(seed);
    let mut f = Fleet::start(2_000);
    let out = f.run(&["-q", "backfill", "--chunk-rows", "500"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let load = Load::start(&f.source, seed);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (mut cdc, log) = f.spawn_logged(
        &[
            "-v",
            "cdc",
            "run",
            "--heartbeat-secs",
            "1",
            "--retry-secs",
            "60",
            "--metrics-listen",
            &listen,
        ],
        "cdc",
    );
    assert!(
        f.wait_caught_up("shardline", Duration::from_secs(60)),
        "{}",
        tail(&log)
    );
    // Each fault is noticed and recovered from
    // (the metrics count the reconnect) before the next one.
    let mut reconnects = 0.0;
    let mut recovered = |f: &Fleet, log: &std::path::Path, what: &str| {
        reconnects += 1.0;
        let start = std::time::Instant::now();
        while counter(&scrape(port), "shardline_cdc_reconnects_total") < reconnects {
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "cdc streams again after {what}: {}",
                tail(log)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            f.wait_caught_up("shardline", Duration::from_secs(90)),
            "cdc catches up after {what}: {}",
            tail(log)
        );
    };
    // The connections to shard 0 cut mid-stream.
    std::thread::sleep(Duration::from_millis(rng.range(100, 1000)));
    f.shard_faults(0).cut_all();
    recovered(&f, &log, "shard 0's connections were cut");
    // Shard 1 restarted.
    std::thread::sleep(Duration::from_millis(rng.range(100, 1000)));
    f.shards[1].stop().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    f.shards[1].restart().unwrap();
    recovered(&f, &log, "shard 1 restarted");
    // The source restarted: the walsender goes away with it.
    std::thread::sleep(Duration::from_millis(rng.range(100, 1000)));
    f.source.stop().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    f.source.restart().unwrap();
    recovered(&f, &log, "the source restarted");
    // The read model's database slowed to 200 ms a round trip.
    f.analytics_proxy
        .faults()
        .set_latency(Duration::from_millis(100), Duration::ZERO);
    std::thread::sleep(Duration::from_secs(3));
    f.analytics_proxy.faults().clear();
    assert!(cdc.running(), "cdc reconnected by itself: {}", tail(&log));
    assert!(
        f.wait_caught_up("shardline", Duration::from_secs(60)),
        "{}",
        tail(&log)
    );
    std::thread::sleep(Duration::from_millis(1200));
    let metrics = scrape(port);
    assert!(
        counter(&metrics, "shardline_cdc_reconnects_total") >= 3.0,
        "{metrics}"
    );
    let status = f.run(&["--format", "json", "cdc", "status"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(
        status["run"]["reconnects"].as_i64().unwrap_or(0) >= 3,
        "{status}"
    );

    // SIGKILL while the load's long runs of inserts are copied.
    std::thread::sleep(Duration::from_millis(rng.range(100, 900)));
    cdc.sigkill();
    let (mut cdc, log) = f.spawn_logged(&["cdc", "run", "--heartbeat-secs", "1"], "cdc-after-kill");
    std::thread::sleep(Duration::from_secs(2));
    let rounds = load.stop();
    assert!(rounds >= 20, "the load ran ({rounds} rounds)");
    assert!(
        f.wait_caught_up("shardline", Duration::from_secs(120)),
        "cdc catches up after a kill (running: {}): {}",
        cdc.running(),
        tail(&log)
    );
    let out = cdc.sigterm_and_wait();
    assert!(out.status.success(), "{}", tail(&log));
    f.assert_exact("cdc through faults");
}
