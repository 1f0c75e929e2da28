//! verify with a target that disappears mid-run: exit 2 naming the
//! target, never exit 0 or a false difference.

use std::time::Duration;

use crate::harness::{seed, stderr, Fleet, Rng};

#[test]
fn verify_with_a_target_gone_mid_run_exits_2_naming_it() {
    let seed = seed("verify");
    let mut rng = Rng::new(seed);
    let f = Fleet::start(6_000);
    let out = f.run(&["-q", "backfill", "--chunk-rows", "1000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = f.run(&["verify", "--recheck-secs", "0.1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // A slow scan; shard 1 goes away in the middle of it.
    let job = f.spawn(&[
        "--format",
        "json",
        "verify",
        "--max-rows-per-sec",
        "3000",
        "--recheck-secs",
        "0.1",
    ]);
    std::thread::sleep(Duration::from_millis(rng.range(300, 900)));
    f.shard_faults(1).refuse(true);
    f.shard_faults(1).cut_all();
    let out = job.sigterm_after_exit();
    let err = String::from_utf8_lossy(&out.stdout).to_string() + &stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&f.shard_name(1)), "names the target: {err}");
    assert!(!err.contains("\"equal\""), "no report: {err}");

    // Down from the start: the same.
    let out = f.run(&["verify"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(&f.shard_name(1)), "{}", stderr(&out));

    // Back: equal again.
    f.shard_faults(1).refuse(false);
    let out = f.run(&["verify", "--recheck-secs", "0.1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
