use shardline_testkit::{PgServer, TestkitError};

#[test]
fn a_server_starts_answers_and_is_removed_on_drop() {
    let server = PgServer::start().unwrap();
    let dir = server.dir().to_path_buf();
    assert_eq!(
        server.psql("postgres", "SHOW wal_level").unwrap().trim(),
        "logical"
    );
    assert_eq!(server.psql("postgres", "SHOW fsync").unwrap().trim(), "off");
    server.create_database("ledger").unwrap();
    server.create_database("ledger").unwrap();
    assert_eq!(
        server
            .psql("ledger", "SELECT current_database()")
            .unwrap()
            .trim(),
        "ledger"
    );
    drop(server);
    assert!(!dir.exists(), "{} still exists", dir.display());
}

#[test]
fn a_server_is_stopped_when_its_test_panics() {
    let dir = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let server = PgServer::start().unwrap();
        *dir.lock().unwrap() = Some(server.dir().to_path_buf());
        panic!("test failure");
    });
    assert!(result.is_err());
    let dir = dir.lock().unwrap().clone().unwrap();
    assert!(!dir.exists(), "{} survived the panic", dir.display());
}

#[test]
fn password_servers_refuse_a_wrong_password() {
    let server = PgServer::builder().password("right-one").start().unwrap();
    assert_eq!(server.psql("postgres", "SELECT 1").unwrap().trim(), "1");
    let status = std::process::Command::new(server.bindir().program("psql"))
        .args(["-X", "-h", "127.0.0.1", "-U", "postgres", "-c", "SELECT 1"])
        .arg("-p")
        .arg(server.port().to_string())
        .env("PGPASSWORD", "wrong-one")
        .output()
        .unwrap();
    assert!(!status.status.success());
    assert!(String::from_utf8_lossy(&status.stderr).contains("password authentication failed"));
}

#[test]
fn a_taken_port_is_reported() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    match PgServer::builder().port(port).start() {
        Err(TestkitError::PortInUse { port: p }) => assert_eq!(p, port),
        other => panic!("expected PortInUse, got {other:?}"),
    }
}
