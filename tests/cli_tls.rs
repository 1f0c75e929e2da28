//! The whole migration against a TLS-only fleet (`hostssl` lines only in
//! pg_hba.conf) with `sslmode=verify-full`: backfill, cdc, verify, export
//! and the router all connect, so every connection they make is TLS with a
//! checked certificate; and a wrong CA stops a command with a hint.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use shardline_testkit::{PgServer, TestCerts};

const HBA_TLS_ONLY: &str = "\
hostssl all all 127.0.0.1/32 trust
hostssl replication all 127.0.0.1/32 trust
";

const TABLE: &str = "CREATE TABLE payments (merchant_id bigint, id bigint, amount numeric(12,2), PRIMARY KEY (merchant_id, id))";

const PASSWORD: &str = "pw-app";

fn topology(dir: &Path, server: &PgServer, ca: &Path) -> String {
    // The source by its DNS name, the shards by IP: the certificate names both.
    let tls = format!("sslmode=verify-full&sslrootcert={}", ca.display());
    let url =
        |host: &str, db: &str| format!("postgres://postgres@{host}:{}/{db}?{tls}", server.port());
    let body = format!(
        "[source]\nurl = \"{}\"\n[contexts.transactions]\ntables = [\"payments\"]\nshard_key = \"merchant_id\"\nshards = [\"{}\", \"{}\"]\n\
         [[router.users]]\nname = \"app\"\npassword = \"{PASSWORD}\"\n",
        url("localhost", "postgres"),
        url("127.0.0.1", "tx0"),
        url("127.0.0.1", "tx1"),
    );
    let path = dir.join(format!(
        "shardline-{}.toml",
        ca.file_stem().unwrap().to_string_lossy()
    ));
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

fn shardline(config: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardline"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn count(server: &PgServer, db: &str, sql: &str) -> i64 {
    server.psql(db, sql).unwrap().trim().parse().unwrap()
}

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn backfill_cdc_verify_export_and_router_run_against_a_tls_only_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(dir.path()).unwrap();
    let server = PgServer::builder()
        .tls(&certs)
        .hba(HBA_TLS_ONLY)
        .start()
        .unwrap();
    for db in ["tx0", "tx1"] {
        server.create_database(db).unwrap();
        server.psql(db, TABLE).unwrap();
    }
    server.psql("postgres", TABLE).unwrap();
    server
        .psql(
            "postgres",
            "INSERT INTO payments SELECT g % 50, g, g * 1.5 FROM generate_series(1, 2000) g",
        )
        .unwrap();
    let config = topology(dir.path(), &server, &certs.ca);

    ok(&shardline(&config, &["-q", "backfill"]).output().unwrap());
    let shards = |sql: &str| count(&server, "tx0", sql) + count(&server, "tx1", sql);
    assert_eq!(shards("SELECT count(*) FROM payments"), 2000);

    let cdc = shardline(&config, &["-q", "cdc", "run", "--heartbeat-secs", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    server
        .psql("postgres", "INSERT INTO payments SELECT g % 50, g, 1 FROM generate_series(2001, 2500) g; UPDATE payments SET amount = 0 WHERE id <= 10")
        .unwrap();
    let caught_up = (0..900).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        shards("SELECT count(*) FROM payments") == 2500
            && shards("SELECT count(*) FROM payments WHERE amount = 0") == 10
    });
    Command::new("kill")
        .args(["-TERM", &cdc.id().to_string()])
        .status()
        .unwrap();
    let out = cdc.wait_with_output().unwrap();
    assert!(caught_up, "{}", String::from_utf8_lossy(&out.stderr));
    ok(&out);

    ok(&shardline(&config, &["verify"]).output().unwrap());
    let parquet = dir.path().join("parquet");
    let out = shardline(
        &config,
        &[
            "--format",
            "json",
            "export",
            "--table",
            "payments",
            "--out",
            &parquet.display().to_string(),
        ],
    )
    .output()
    .unwrap();
    ok(&out);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["rows"], 2500, "{summary}");
    assert!(parquet.join("_SUCCESS").exists());

    let mut child = shardline(
        &config,
        &["--format", "json", "router", "--listen", "127.0.0.1:0"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _router = Kill(child);
    let mut lines = BufReader::new(stdout).lines();
    let port = loop {
        let line = lines.next().expect("router printed its address").unwrap();
        if let Some(addr) = line.split('"').nth(3).filter(|_| line.contains("listen")) {
            break addr.rsplit(':').next().unwrap().to_string();
        }
    };
    let out = Command::new(server.bindir().program("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "app",
            "-d",
            "app",
        ])
        .args(["-c", "SELECT count(*) FROM payments WHERE merchant_id = 7"])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    ok(&out);
    let expected = count(
        &server,
        "postgres",
        "SELECT count(*) FROM payments WHERE merchant_id = 7",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        expected.to_string()
    );
    // The router's backends are still open (pooled, under the router's or
    // the last client's application_name): every session on the server is TLS.
    let plain = count(
        &server,
        "postgres",
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.backend_type = 'client backend' AND NOT s.ssl",
    );
    assert_eq!(plain, 0);
    let router_sessions = count(
        &server,
        "postgres",
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name IN ('shardline-router', 'psql') AND s.ssl AND a.pid <> pg_backend_pid()",
    );
    assert!(router_sessions > 0);

    // The same fleet checked against a CA that did not sign its certificate.
    let wrong = topology(dir.path(), &server, &certs.other_ca);
    let out = shardline(&wrong, &["verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TLS with") && err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(err.contains("hint: sslrootcert must hold the CA"), "{err}");
}
