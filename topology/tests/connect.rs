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
