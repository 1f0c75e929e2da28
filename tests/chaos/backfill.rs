//! backfill through a target cut mid-chunk, latency on a shard, a target
//! restarted and the source restarted: each run ends complete, or stops
//! with the cause and a hint, and running it again ends complete; then
//! cdc carries the write load over and every target is exact.

use std::process::Output;
use std::time::Duration;

use crate::harness::{seed, stderr, tail, Fleet, Load, Rng};

/// The run ended complete, or stopped resumably (exit 2, the cause, a
/// hint to run the same command again); in that case the same command is
/// run again, as the hint says, until complete.
fn complete_or_resumed(f: &Fleet, args: &[&str], out: Output, fault: &str) {
    if out.status.success() {
        return;
    }
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{fault}: {:?} {err}",
        out.status
    );
    assert!(
        err.contains("error: ") && err.contains("hint: "),
        "{fault}: {err}"
    );
    for attempt in 0..3 {
        let again = f.run(&[&["--format", "json"], args].concat());
        if again.status.success() {
            let report: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
            assert_eq!(report["complete"], true, "{fault}: {report}");
            return;
        }
        eprintln!(
            "{fault}: rerun {attempt} failed: {}{}",
            String::from_utf8_lossy(&again.stdout),
            stderr(&again)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("{fault}: backfill did not complete when run again after: {err}");
}

#[test]
fn backfill_through_cuts_latency_and_restarts_ends_exact() {
    let seed = seed("backfill");
    let mut rng = Rng::new(seed);
    let mut f = Fleet::start(4_000);
    let load = Load::start(&f.source, seed);

    // A target cut in the middle of a chunk's COPY, another one slow.
    f.shard_faults(1).seed(seed);
    f.shard_faults(1)
        .set_latency(Duration::from_millis(20), Duration::from_millis(10));
    f.shard_faults(0)
        .cut_after_bytes(rng.range(20_000, 150_000));
    let args = ["-q", "backfill", "--chunk-rows", "400", "--workers", "2"];
    let out = f.run(&args);
    assert!(
        f.shard_faults(0).cuts() >= 1,
        "the cut happened: {}",
        stderr(&out)
    );
    complete_or_resumed(&f, &args, out, "a target cut mid-chunk");
    f.shard_faults(0).clear();
    f.shard_faults(1).clear();

    // A target restarted while the job copies (or while --restart empties
    // the targets: then only --restart again can go on, as its hint says).
    let throttled = [
        "-q",
        "backfill",
        "--restart",
        "--chunk-rows",
        "300",
        "--max-rows-per-sec",
        "6000",
    ];
    let job = f.spawn(&throttled);
    std::thread::sleep(Duration::from_millis(rng.range(300, 900)));
    f.shards[1].stop().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    f.shards[1].restart().unwrap();
    complete_or_resumed(
        &f,
        &throttled,
        job.sigterm_after_exit(),
        "a target restarted",
    );

    // The source restarted: the exported snapshot is gone with it.
    let job = f.spawn(&throttled);
    std::thread::sleep(Duration::from_millis(rng.range(300, 900)));
    f.source.stop().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    f.source.restart().unwrap();
    complete_or_resumed(
        &f,
        &throttled,
        job.sigterm_after_exit(),
        "the source restarted",
    );

    let rounds = load.stop();
    assert!(rounds >= 5, "the load ran ({rounds} rounds)");
    // CDC carries what the load wrote after each table's copy.
    let (mut cdc, log) = f.spawn_logged(&["cdc", "run", "--heartbeat-secs", "1"], "backfill-cdc");
    assert!(
        f.wait_caught_up("shardline", Duration::from_secs(120)),
        "cdc catches up (running: {}): {}",
        cdc.running(),
        tail(&log)
    );
    let out = cdc.sigterm_and_wait();
    assert!(out.status.success(), "{}", tail(&log));
    f.assert_exact("backfill through faults");
}
