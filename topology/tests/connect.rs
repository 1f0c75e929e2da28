//! Connection failures are classified so the CLI can give the right hint.

use shardline_testkit::PgServer;
use shardline_topology::{ConnString, ConnectError};

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conn = ConnString::parse(&format!("postgres://postgres:pw@127.0.0.1:{port}/x")).unwrap();
    let err = conn.connect().await.unwrap_err();
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(!err.to_string().contains("pw@"), "{err}");
}

#[tokio::test]
async fn a_wrong_password_and_a_missing_database_are_named() {
    let server = PgServer::builder().password("right").start().unwrap();
    let wrong = ConnString::parse(&format!(
        "postgres://postgres:wrong@127.0.0.1:{}/postgres",
        server.port()
    ))
    .unwrap();
    let err = wrong.connect().await.unwrap_err();
    assert!(matches!(err, ConnectError::Authentication { .. }), "{err}");
    assert!(!err.to_string().contains("wrong"), "{err}");
    assert!(err.hint().contains("PGPASSWORD"));

    let missing = ConnString::parse(&server.url("no_such_db")).unwrap();
    let err = missing.connect().await.unwrap_err();
    assert!(
        matches!(&err, ConnectError::MissingDatabase { dbname, .. } if dbname == "no_such_db"),
        "{err}"
    );

    let right = ConnString::parse(&server.url("postgres")).unwrap();
    let client = right.connect().await.unwrap();
    let row = client
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "shardline");
}

#[tokio::test]
async fn server_errors_keep_their_message_sqlstate_detail_and_hint() {
    let server = PgServer::start().unwrap();
    let client = ConnString::parse(&server.url("postgres"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    client
        .batch_execute("CREATE TABLE t (a int PRIMARY KEY); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let e = client
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "db error", "tokio-postgres alone says this");
    let text = shardline_topology::describe_pg_error(&e);
    assert_eq!(
        text,
        "duplicate key value violates unique constraint \"t_pkey\" (SQLSTATE 23505); detail: Key (a)=(1) already exists."
    );
    let e = client.query("SELECT 1 + 'x'::text", &[]).await.unwrap_err();
    let text = shardline_topology::describe_pg_error(&e);
    assert!(
        text.starts_with("operator does not exist: integer + text (SQLSTATE 42883); server hint: No operator matches"),
        "{text}"
    );
    assert_eq!(shardline_topology::pgerror::sqlstate(&e), Some("42883"));
    assert!(!shardline_topology::pgerror::is_connection_lost(&e));

    // A connection the server ended says so, with the cause.
    let killer = ConnString::parse(&server.url("postgres"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    killer
        .batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
        .await
        .unwrap();
    let e = client.query("SELECT 1", &[]).await.unwrap_err();
    assert!(shardline_topology::pgerror::is_connection_lost(&e), "{e}");
    let text = shardline_topology::describe_pg_error(&e);
    assert!(
        text.contains("SQLSTATE 57P01") || text.contains("closed"),
        "{text}"
    );
}
