//! `shardline export` through the built binary: the JSON summary, bounded
//! memory on a table much larger than a row group, and failures that exit
//! 2 with one line and a hint and leave no file that looks complete.

use std::path::Path;
use std::process::{Command, Output};

use shardline_testkit::PgServer;

fn shardline(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardline"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("SHARDLINE_CONFIG")
        .output()
        .expect("run shardline")
}

fn config(dir: &Path, pg: &PgServer) -> std::path::PathBuf {
    pg.create_database("other").unwrap();
    let path = dir.join("shardline.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = \"{}\"\n[contexts.other]\ntables = [\"elsewhere\"]\nurl = \"{}\"\n",
            pg.url("postgres"),
            pg.url("other")
        ),
    )
    .unwrap();
    path
}

/// Files under `dir` whose name says "complete": `_SUCCESS` or `*.parquet`
/// outside the staging directory.
fn complete_looking(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    fn walk(dir: &Path, found: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() {
                if name != "_temporary" {
                    walk(&e.path(), found);
                }
            } else if name == "_SUCCESS" || name.ends_with(".parquet") {
                found.push(e.path().display().to_string());
            }
        }
    }
    walk(dir, &mut found);
    found
}

fn assert_fails(out: &Output, cause: &str, hint: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(cause),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with("hint: ") && lines[1].contains(hint),
        "{stderr}"
    );
}

#[test]
fn export_failures_exit_2_with_a_hint_and_leave_nothing_complete() {
    let mut pg = PgServer::start().unwrap();
    pg.psql(
        "postgres",
        "CREATE TABLE t (id int, note text); INSERT INTO t SELECT i, 'x' FROM generate_series(1, 10) i;",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &pg);
    let out = dir.path().join("out");
    let out_s = out.display().to_string();

    let r = shardline(&cfg, &["export", "--table", "missing", "--out", &out_s]);
    assert_fails(&r, "table missing does not exist", "--from");
    assert!(!out.exists());

    let r = shardline(
        &cfg,
        &[
            "export",
            "--table",
            "t",
            "--out",
            &out_s,
            "--partition-by",
            "colour",
        ],
    );
    assert_fails(
        &r,
        "--partition-by colour: no such column",
        "listed columns",
    );
    assert!(complete_looking(dir.path()).is_empty());

    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let under = blocker.join("out").display().to_string();
    let r = shardline(&cfg, &["export", "--table", "t", "--out", &under]);
    assert_fails(&r, "cannot write to output directory", "permissions");

    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("old.parquet"), b"not ours").unwrap();
    let r = shardline(&cfg, &["export", "--table", "t", "--out", &out_s]);
    assert_fails(&r, "is not empty", "--overwrite");
    let overwrite = [
        "export",
        "--table",
        "t",
        "--out",
        &out_s,
        "--overwrite",
        "--format",
        "json",
    ];
    // --overwrite replaces an earlier export, never someone's files.
    let r = shardline(&cfg, &overwrite[..6]);
    assert_fails(
        &r,
        "which no earlier export wrote there",
        "move that entry away",
    );
    assert!(out.join("old.parquet").exists());
    std::fs::remove_file(out.join("old.parquet")).unwrap();
    let r = shardline(&cfg, &overwrite[..5]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = shardline(&cfg, &overwrite);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(summary["rows"], 10);
    assert_eq!(summary["files"], 1);
    assert!(summary["rows_per_sec"].as_f64().unwrap() > 0.0);
    assert!(!out.join("old.parquet").exists());
    assert!(out.join("_SUCCESS").exists());

    pg.stop().unwrap();
    let fresh = dir.path().join("fresh").display().to_string();
    let r = shardline(&cfg, &["export", "--table", "t", "--out", &fresh]);
    assert_fails(&r, "cannot reach", "server running");
    assert!(!dir.path().join("fresh").exists());
}

/// 300,000 rows of ~520 bytes (about 150 MiB of values) in what would be
/// one row group by rows: row groups must end on bytes, and the process
/// must stay far below the table's size.
#[test]
fn memory_stays_bounded_on_a_table_much_larger_than_a_row_group() {
    let time = Path::new("/usr/bin/time");
    assert!(
        time.exists(),
        "/usr/bin/time is needed (apt-get install time; scripts/setup installs it)"
    );
    let pg = PgServer::start().unwrap();
    let hashes: Vec<String> = (0..16)
        .map(|j| format!("md5((i * 16 + {j})::text)"))
        .collect();
    pg.psql(
        "postgres",
        &format!(
            "CREATE TABLE wide (id bigint, payload text);
             INSERT INTO wide SELECT i, {} FROM generate_series(1, 300000) i;",
            hashes.join(" || ")
        ),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &pg);
    let out = dir.path().join("wide");
    let r = Command::new(time)
        .args(["-f", "peak_kib=%M"])
        .arg(env!("CARGO_BIN_EXE_shardline"))
        .arg("--config")
        .arg(&cfg)
        .args([
            "--format", "json", "export", "--table", "wide", "--from", "source",
        ])
        .args(["--compression", "none", "--buffer-mib", "24", "--out"])
        .arg(&out)
        .env_remove("SHARDLINE_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    let peak_kib: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak_kib="))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(summary["rows"], 300_000);
    let bytes = summary["bytes"].as_u64().unwrap();
    assert!(bytes > 140 << 20, "file of {bytes} bytes");
    assert!(
        peak_kib < 120 * 1024,
        "peak RSS {} MiB for a {} MiB file",
        peak_kib / 1024,
        bytes >> 20
    );
    // The reader sees every row, in several row groups cut on bytes.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("export/tests/read_parquet.py");
    let check = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import pyarrow.parquet as pq, sys; sys.path.insert(0, '{}'); m = pq.ParquetFile('{}').metadata; print(m.num_rows, m.num_row_groups)",
            script.parent().unwrap().display(),
            out.join("part-000-00000.parquet").display()
        ))
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&check.stdout);
    let mut it = printed
        .split_whitespace()
        .map(|x| x.parse::<u64>().unwrap());
    assert_eq!(
        it.next(),
        Some(300_000),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(it.next().unwrap() >= 6, "row groups must end on bytes");
}
