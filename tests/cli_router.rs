//! `shardline router` through the built binary: refuses a topology without
//! users, then serves psql and pgbench (simple, extended, prepared), also
//! over TLS, and refuses bad TLS files before it listens.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use shardline_testkit::PgServer;

const PASSWORD: &str = "pw-router";

fn topology(dir: &std::path::Path, server: &PgServer, users: bool) -> String {
    let users = if users {
        format!("[[router.users]]\nname = \"app\"\npassword = \"{PASSWORD}\"\n")
    } else {
        String::new()
    };
    let body = format!(
        "[source]\nurl = \"{}\"\n[contexts.transactions]\ntables = [\"payments\"]\nshard_key = \"merchant_id\"\nshards = [\"{}\", \"{}\"]\n{users}",
        server.url("postgres"),
        server.url("tx0"),
        server.url("tx1"),
    );
    let path = dir.join("shardline.toml");
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

fn fleet() -> PgServer {
    let server = PgServer::start().unwrap();
    for db in ["tx0", "tx1"] {
        server.create_database(db).unwrap();
        server
            .psql(db, "CREATE TABLE payments (id bigint, merchant_id bigint, amount int, PRIMARY KEY (merchant_id, id))")
            .unwrap();
    }
    server
}

#[test]
fn router_without_users_refuses_to_start_with_a_hint() {
    let server = fleet();
    let dir = tempfile::tempdir().unwrap();
    let config = topology(dir.path(), &server, false);
    let out: Output = Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(["--config", &config, "router", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("router.users") && err.contains("hint:"),
        "{err}"
    );
}

#[test]
fn psql_and_pgbench_in_every_query_mode_run_through_the_router() {
    let server = fleet();
    let dir = tempfile::tempdir().unwrap();
    let config = topology(dir.path(), &server, true);
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args([
            "--config",
            &config,
            "--format",
            "json",
            "router",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            &metrics_addr,
            // The one-thread runtime: every other test runs the default.
            "--threads",
            "1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _guard = Kill(child);
    let mut lines = BufReader::new(stdout).lines();
    let port = loop {
        let line = lines.next().expect("router printed its address").unwrap();
        if let Some(addr) = line.split('"').nth(3).filter(|_| line.contains("listen")) {
            break addr.rsplit(':').next().unwrap().to_string();
        }
    };
    let client = |program: &str, args: &[&str]| {
        Command::new(server.bindir().program(program))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "app"])
            .args(args)
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap()
    };
    let out = client(
        "psql",
        &[
            "-X",
            "-A",
            "-t",
            "-d",
            "app",
            "-c",
            "INSERT INTO payments (id, merchant_id, amount) VALUES (1, 7, 5), (2, 8, 5), (3, 9, 5)",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = client(
        "psql",
        &[
            "-X",
            "-A",
            "-t",
            "-d",
            "app",
            "-c",
            "SELECT count(*) FROM payments WHERE merchant_id = 7",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    let script = dir.path().join("payment.sql");
    std::fs::write(
        &script,
        "\\set m random(1, 1000)\n\\set id random(1, 1000000000)\nBEGIN;\nINSERT INTO payments (id, merchant_id, amount) VALUES (:id, :m, 1) ON CONFLICT DO NOTHING;\nSELECT amount FROM payments WHERE merchant_id = :m AND id = :id;\nUPDATE payments SET amount = amount + 1 WHERE merchant_id = :m AND id = :id;\nEND;\n",
    )
    .unwrap();
    let script = script.display().to_string();
    for mode in ["simple", "extended", "prepared"] {
        let out = client(
            "pgbench",
            &[
                "-n", "-c", "2", "-t", "25", "-M", mode, "-f", &script, "app",
            ],
        );
        assert!(
            out.status.success(),
            "pgbench -M {mode}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let total: u64 = ["tx0", "tx1"]
        .iter()
        .map(|db| {
            server
                .psql(db, "SELECT count(*) FROM payments")
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(total, 3 + 3 * 50);

    // The router's own SHOW, and the same counters scraped over HTTP.
    let out = client(
        "psql",
        &["-X", "-A", "-t", "-d", "app", "-c", "SHOW shardline.stats"],
    );
    let stats = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stats.lines().count(), 2, "{stats}");
    let queries: u64 = stats
        .lines()
        .map(|l| l.split('|').nth(3).unwrap().parse::<u64>().unwrap())
        .sum();
    // 150 pgbench transactions of 4 statements, at least.
    assert!(queries >= 600, "{stats}");
    let scrape = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&metrics_addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: router\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    };
    assert!(scrape.starts_with("HTTP/1.1 200 OK"), "{scrape}");
    let scraped: u64 = scrape
        .lines()
        .filter(|l| l.starts_with("shardline_router_queries_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(scraped >= queries, "{scraped} < {queries}\n{scrape}");
    assert!(
        scrape.contains("# TYPE shardline_router_query_duration_seconds histogram"),
        "{scrape}"
    );
    assert!(scrape.contains("shardline_router_up{context=\"transactions\",shard=\"1\""));

    // A metrics address already taken stops a second router before it serves.
    let out = Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(["--config", &config, "router", "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", &metrics_addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--metrics-listen") && err.contains(&metrics_addr),
        "{err}"
    );
}

/// Stops the router when the test ends, also when it fails.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `topology` with `[router]` TLS settings.
fn tls_topology(dir: &std::path::Path, server: &PgServer, router: &str) -> String {
    let config = topology(dir, server, true);
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        "[[router.users]]",
        &format!("[router]\n{router}\n[[router.users]]"),
    );
    std::fs::write(&config, text).unwrap();
    config
}

#[test]
fn under_tls_require_psql_and_pgbench_run_encrypted_and_plain_clients_are_refused() {
    let server = fleet();
    let dir = tempfile::tempdir().unwrap();
    let certs = shardline_testkit::TestCerts::generate(dir.path()).unwrap();
    // Relative paths start at the topology file's directory.
    let config = tls_topology(
        dir.path(),
        &server,
        "tls = \"require\"\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"",
    );
    let log = dir.path().join("router.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(["--config", &config, "--format", "json", "router"])
        .args(["--listen", "127.0.0.1:0"])
        .env("SHARDLINE_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut guard = Kill(child);
    let mut lines = BufReader::new(stdout).lines();
    let port = loop {
        let line = lines.next().expect("router printed its address").unwrap();
        if let Some(addr) = line.split('"').nth(3).filter(|_| line.contains("listen")) {
            break addr.rsplit(':').next().unwrap().to_string();
        }
    };
    let ca = certs.ca.display().to_string();
    let psql = |sslmode: &str, sql: &str| {
        Command::new(server.bindir().program("psql"))
            .args(["-X", "-A", "-t", "-c", sql])
            .arg(format!(
                "host=127.0.0.1 port={port} user=app dbname=app sslmode={sslmode} sslrootcert={ca}"
            ))
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap()
    };
    // verify-full: the router presents the CA's certificate for 127.0.0.1.
    let out = psql(
        "verify-full",
        "INSERT INTO payments (id, merchant_id, amount) VALUES (1, 7, 5), (2, 8, 5)",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = psql(
        "require",
        "SELECT count(*) FROM payments WHERE merchant_id = 7",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    let out = psql("disable", "SELECT 1");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FATAL:  the router requires TLS; connect with sslmode=require"),
        "{err}"
    );
    // prefer, libpq's default, negotiates TLS.
    let out = psql(
        "prefer",
        "SELECT count(*) FROM payments WHERE merchant_id = 8",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    let script = dir.path().join("payment.sql");
    std::fs::write(
        &script,
        "\\set m random(1, 1000)\n\\set id random(1, 1000000000)\nINSERT INTO payments (id, merchant_id, amount) VALUES (:id, :m, 1) ON CONFLICT DO NOTHING;\nSELECT amount FROM payments WHERE merchant_id = :m AND id = :id;\n",
    )
    .unwrap();
    let out = Command::new(server.bindir().program("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port, "-U", "app"])
        .args(["-n", "-c", "2", "-T", "3", "-M", "prepared", "-f"])
        .arg(&script)
        .arg("app")
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "require")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done: u64 = report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(done > 10, "{report}");

    // The debug log saw every client and never the password.
    let _ = guard.0.kill();
    let _ = guard.0.wait();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("client connected"), "{logged}");
    assert!(!logged.contains(PASSWORD), "{logged}");
}

#[test]
fn bad_tls_files_stop_the_router_with_a_hint_before_it_listens() {
    let server = fleet();
    let dir = tempfile::tempdir().unwrap();
    let certs = shardline_testkit::TestCerts::generate(dir.path()).unwrap();
    let (cert, key, other) = (
        certs.cert.display().to_string(),
        certs.key.display().to_string(),
        certs.other_key.display().to_string(),
    );
    for (router, expect) in [
        (
            format!("tls_cert = \"{cert}.gone\"\ntls_key = \"{key}\""),
            format!("[router] tls_cert {cert}.gone: No such file"),
        ),
        (
            format!("tls_cert = \"{cert}\"\ntls_key = \"{other}\""),
            format!("[router] tls_key {other} is not the private key of the certificate in tls_cert {cert}"),
        ),
        (
            "tls = \"require\"".to_string(),
            "router.tls: \"require\" needs a certificate".to_string(),
        ),
    ] {
        let config = tls_topology(dir.path(), &server, &router);
        let out = Command::new(env!("CARGO_BIN_EXE_shardline"))
            .args(["--config", &config, "router", "--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{router}: {err}");
        assert!(err.contains(&expect) && err.contains("hint:"), "{err}");
        assert!(!err.contains("listening"), "{router}: it listened: {err}");
    }
}
