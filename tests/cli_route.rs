//! `shardline route` and topology errors, through the built binary.

use std::process::{Command, Output};

use shardline_topology::{Placement, ShardKeyType};

fn shardline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(args)
        .env_remove("SHARDLINE_CONFIG")
        .output()
        .expect("run shardline")
}

fn topology(dir: &std::path::Path, body: &str) -> String {
    let path = dir.join("shardline.toml");
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

const FOUR_SHARDS: &str = r#"
[source]
url = "postgres://postgres:s3cret-pw@127.0.0.1:1/monolith"
[contexts.transactions]
tables = ["payments"]
shard_key = "merchant_id"
shards = ["postgres://postgres@127.0.0.1:2/tx", "postgres://postgres@127.0.0.1:3/tx", "postgres://postgres@127.0.0.1:4/tx", "postgres://postgres@127.0.0.1:5/tx"]
"#;

#[test]
fn route_prints_bucket_and_shard_per_key_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let config = topology(dir.path(), FOUR_SHARDS);
    let keys = [
        "0",
        "-1",
        "42",
        "-9223372036854775808",
        "9223372036854775807",
    ];
    let mut args = vec!["--config", &config, "--format", "json", "route"];
    args.extend(keys);
    let out = shardline(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let routed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let placement = Placement::even(ShardKeyType::Bigint, 1024, 4).unwrap();
    assert_eq!(routed.len(), keys.len());
    for (obj, key) in routed.iter().zip(keys) {
        let parsed = ShardKeyType::Bigint.parse_key(key).unwrap();
        assert_eq!(obj["key"], key);
        assert_eq!(obj["bucket"], placement.bucket(&parsed));
        assert_eq!(obj["shard"], placement.shard(&parsed));
        assert!(!obj["database"].as_str().unwrap().contains("s3cret"));
    }
}

#[test]
fn bad_keys_and_bad_topologies_exit_2_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let config = topology(dir.path(), FOUR_SHARDS);
    let out = shardline(&["--config", &config, "route", "forty-two"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("\"forty-two\" is not a valid bigint shard key"));

    let missing = dir.path().join("nope.toml").display().to_string();
    let out = shardline(&["--config", &missing, "route", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("cannot read topology file") && err.contains("hint: "),
        "{err}"
    );

    let config = topology(
        dir.path(),
        &FOUR_SHARDS.replace("shard_key =", "shard_kee ="),
    );
    let out = shardline(&["--config", &config, "route", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("shardline.toml:6: unknown field `shard_kee`"),
        "{err}"
    );

    let config = topology(
        dir.path(),
        &FOUR_SHARDS.replace("127.0.0.1:5/tx", "127.0.0.1:4/tx"),
    );
    let out = shardline(&["--config", &config, "--format", "json", "route", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("line 7: contexts.transactions.shards[3]"),
        "{error}"
    );
    assert!(!error.contains("s3cret"), "{error}");
}

/// The subcommands a `--help` text lists.
fn commands_of(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn every_subcommand_help_carries_an_example() {
    let top = String::from_utf8_lossy(&shardline(&["--help"]).stdout).to_string();
    let mut todo: Vec<Vec<String>> = commands_of(&top).into_iter().map(|c| vec![c]).collect();
    assert!(todo.len() >= 4, "{top}");
    let mut checked = 0;
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let text = String::from_utf8_lossy(&shardline(&args).stdout).to_string();
        assert!(
            text.contains("Examples:") && text.contains("shardline "),
            "`shardline {}` has no example:\n{text}",
            args.join(" ")
        );
        for sub in commands_of(&text) {
            let mut deeper = path.clone();
            deeper.push(sub);
            todo.push(deeper);
        }
        checked += 1;
    }
    assert!(
        checked >= 7,
        "dev's subcommands are checked too ({checked})"
    );
}
