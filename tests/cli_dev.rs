//! `shardline dev` and `shardline gen` through the built binary, on real
//! servers it starts in a temporary directory.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

/// A temporary directory the `postgres` OS user can enter (servers run as
/// that user when the tests run as root).
fn tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir
}

fn shardline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(args)
        .env_remove("SHARDLINE_CONFIG")
        .output()
        .expect("run shardline")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A run of `n` free loopback ports, found by binding each. Tests of one
/// process search from different places so they never pick the same run.
fn free_ports(n: u16) -> u16 {
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = (std::process::id() as u16)
        .wrapping_mul(31)
        .wrapping_add(call.wrapping_mul(4099));
    (0..200u16)
        .map(|i| 20_000 + seed.wrapping_add(i.wrapping_mul(97)) % 40_000)
        .find(|&base| (0..n).all(|k| TcpListener::bind(("127.0.0.1", base + k)).is_ok()))
        .expect("a free run of ports")
}

/// Stops and removes the fleet even when the test fails.
struct FleetGuard<'a>(&'a Path);

impl Drop for FleetGuard<'_> {
    fn drop(&mut self) {
        let dir = self.0.display().to_string();
        let _ = shardline(&["dev", "down", "--dir", &dir, "--purge"]);
    }
}

#[test]
fn dev_up_reuses_status_reports_and_down_stops_everything() {
    let tmp = tempdir();
    let dir = tmp.path().join("fleet");
    let dir_s = dir.display().to_string();
    let base = free_ports(5);
    let _guard = FleetGuard(&dir);
    let up = |shards: &str| {
        shardline(&[
            "--format",
            "json",
            "dev",
            "up",
            "--shards",
            shards,
            "--dir",
            &dir_s,
            "--base-port",
            &base.to_string(),
        ])
    };
    let first: Vec<serde_json::Value> = serde_json::from_str(&ok(&up("2"))).unwrap();
    assert_eq!(first.len(), 5);
    assert!(first.iter().all(|s| s["running"] == true), "{first:?}");

    let config = dir.join("shardline.toml");
    let topology_before = std::fs::read_to_string(&config).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600,
        "the topology holds the router password"
    );
    let again: Vec<serde_json::Value> = serde_json::from_str(&ok(&up("2"))).unwrap();
    let ports = |v: &[serde_json::Value]| {
        v.iter()
            .map(|s| s["port"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ports(&first),
        ports(&again),
        "a second up reuses the same servers"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), topology_before);

    let mismatch = up("3");
    assert_eq!(mismatch.status.code(), Some(2));
    let error: serde_json::Value = serde_json::from_slice(&mismatch.stdout).unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("has the servers"),
        "{error}"
    );
    assert!(
        error["hint"].as_str().unwrap().contains("--shards"),
        "{error}"
    );

    // The written topology works: generate, then route.
    let config_s = config.display().to_string();
    let gen = ok(&shardline(&[
        "--config", &config_s, "--format", "json", "gen", "--rows", "3000", "--seed", "5",
    ]));
    let report: serde_json::Value = serde_json::from_str(&gen).unwrap();
    assert!(
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t[0] == "payments" && t[1] == 3000),
        "{report}"
    );
    let refused = shardline(&["--config", &config_s, "gen", "--rows", "10"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--truncate"));
    ok(&shardline(&["--config", &config_s, "route", "1001"]));

    let status: Vec<serde_json::Value> = serde_json::from_str(&ok(&shardline(&[
        "--format", "json", "dev", "status", "--dir", &dir_s,
    ])))
    .unwrap();
    let monolith = status.iter().find(|s| s["name"] == "monolith").unwrap();
    assert!(monolith["size_bytes"].as_u64().unwrap() > 1_000_000);

    ok(&shardline(&["dev", "down", "--dir", &dir_s]));
    let status: Vec<serde_json::Value> = serde_json::from_str(&ok(&shardline(&[
        "--format", "json", "dev", "status", "--dir", &dir_s,
    ])))
    .unwrap();
    assert!(status.iter().all(|s| s["running"] == false), "{status:?}");
    let leftover = Command::new("pgrep").args(["-f", &dir_s]).output().unwrap();
    assert!(
        leftover.stdout.is_empty(),
        "servers still running: {}",
        String::from_utf8_lossy(&leftover.stdout)
    );
}

#[test]
fn a_taken_port_fails_before_anything_is_created() {
    let tmp = tempdir();
    let dir = tmp.path().join("fleet");
    let dir_s = dir.display().to_string();
    let base = free_ports(5);
    let _guard = FleetGuard(&dir);
    let _taken = TcpListener::bind(("127.0.0.1", base + 3)).unwrap();
    let out = shardline(&[
        "dev",
        "up",
        "--shards",
        "2",
        "--dir",
        &dir_s,
        "--base-port",
        &base.to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("port {} on 127.0.0.1 is already in use", base + 3)),
        "{err}"
    );
    assert!(err.contains("--base-port"), "{err}");
    assert!(!dir.exists(), "nothing is half-made");
}

#[test]
fn status_of_a_missing_fleet_says_how_to_start_one() {
    let out = shardline(&["dev", "status", "--dir", "/nonexistent/fleet"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shardline dev up"));
}
