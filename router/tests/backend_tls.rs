//! The router's backends under the shards' connection strings: TLS with
//! verify-full, and a shard asking for a clear-text password over plain
//! TCP refused (the reason in the client's error) unless the
//! string's require_auth allows it; cancels sent the way each backend
//! connected.

use std::path::Path;

use shardline_router::Proxy;
use shardline_testkit::{PgServer, TestCerts};
use shardline_topology::Topology;
use tokio::net::TcpListener;
use tokio_postgres::NoTls;

const HBA: &str = "\
hostssl all pwuser 127.0.0.1/32 password
host all pwuser 127.0.0.1/32 password
host all postgres 127.0.0.1/32 trust
";

/// A router whose shards are `server`'s tx0 and tx1 as pwuser, with
/// `params` on each shard URL; its port.
async fn router(server: &PgServer, params: &str) -> (u16, tokio::task::JoinHandle<()>) {
    router_to(server, |db| {
        format!(
            "postgres://pwuser:pw@127.0.0.1:{}/{db}?{params}",
            server.port()
        )
    })
    .await
}

/// A router whose shards are `server`'s tx0 and tx1 at the URLs `shard`
/// gives for each; its port.
async fn router_to(
    server: &PgServer,
    shard: impl Fn(&str) -> String,
) -> (u16, tokio::task::JoinHandle<()>) {
    let toml = format!(
        "[source]\nurl = \"{}\"\n[contexts.transactions]\ntables = [\"payments\"]\nshard_key = \"merchant_id\"\nshards = [\"{}\", \"{}\"]\n[[router.users]]\nname = \"app\"\npassword = \"pw-app\"\n",
        server.url("postgres"),
        shard("tx0"),
        shard("tx1"),
    );
    let topology = Topology::parse(&toml, Path::new("test.toml")).unwrap();
    let proxy = Proxy::with_pool_size(&topology, 2).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move { proxy.serve(listener).await.unwrap() });
    (port, task)
}

/// The role pwuser, and databases tx0 and tx1 with a payments table it
/// may write.
fn shard_databases(server: &PgServer) {
    server
        .psql("postgres", "CREATE ROLE pwuser LOGIN PASSWORD 'pw'")
        .unwrap();
    for db in ["tx0", "tx1"] {
        server.create_database(db).unwrap();
        server
            .psql(db, "CREATE TABLE payments (merchant_id bigint, id bigint, PRIMARY KEY (merchant_id, id)); GRANT ALL ON payments TO pwuser")
            .unwrap();
    }
}

async fn count(port: u16) -> Result<i64, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=app password=pw-app dbname=shardline"),
        NoTls,
    )
    .await?;
    tokio::spawn(connection);
    let row = client
        .query_one("SELECT count(*) FROM payments WHERE merchant_id = 1", &[])
        .await?;
    Ok(row.get(0))
}

#[tokio::test]
async fn backends_use_tls_and_never_send_a_password_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(dir.path()).unwrap();
    let server = PgServer::builder().tls(&certs).hba(HBA).start().unwrap();
    shard_databases(&server);
    for db in ["tx0", "tx1"] {
        server
            .psql(db, "INSERT INTO payments VALUES (1, 1), (1, 2)")
            .unwrap();
    }
    let verified = format!("sslmode=verify-full&sslrootcert={}", certs.ca.display());
    let (port, _task) = router(&server, &verified).await;
    assert_eq!(count(port).await.unwrap(), 2);
    let ssl = server
        .psql("postgres", "SELECT bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE application_name = 'shardline-router'")
        .unwrap();
    assert_eq!(ssl.trim(), "t");

    let (port, _task) = router(&server, "sslmode=disable").await;
    let e = count(port).await.unwrap_err();
    let db = e.as_db_error().expect("an error the router sends");
    // The router's SQLSTATE for a backend that could not be logged in to,
    // with the refusal's own (28000) and its reason in the message.
    assert_eq!(db.code().code(), "08004", "{db:?}");
    assert!(
        db.message().contains(
            "28000 the server asks for the password in clear text over an unencrypted connection"
        ) && db.message().contains("require_auth=password"),
        "{}",
        db.message()
    );

    let (port, _task) = router(&server, "sslmode=disable&require_auth=password").await;
    assert_eq!(count(port).await.unwrap(), 2);
}

/// A client's cancel reaches its backend the way that backend connected:
/// over TLS to a shard reached with verify-full, over the Unix socket to a
/// shard reached through one (which a TCP connection to the socket's
/// directory name never reaches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_reach_backends_over_tls_and_unix_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(dir.path()).unwrap();
    let sockets = dir.path().join("sockets");
    std::fs::create_dir(&sockets).unwrap();
    // The server may run as another user (tests run as root start it as
    // postgres): it must reach and write the socket directory.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o777)).unwrap();
    let server = PgServer::builder()
        .tls(&certs)
        .hba(&format!("local all all trust\n{HBA}"))
        .setting(
            "unix_socket_directories",
            &format!("'{}'", sockets.display()),
        )
        .start()
        .unwrap();
    shard_databases(&server);
    let verified = format!("sslmode=verify-full&sslrootcert={}", certs.ca.display());
    let (tls_port, _tls) = router(&server, &verified).await;
    let (unix_port, _unix) = router_to(&server, |db| {
        format!(
            "postgres://postgres@/{db}?host={}&port={}",
            sockets.display(),
            server.port()
        )
    })
    .await;

    for (way, port) in [("tls", tls_port), ("unix socket", unix_port)] {
        let (client, connection) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user=app password=pw-app dbname=shardline"),
            NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        let token = client.cancel_token();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            token.cancel_query(NoTls).await.unwrap();
        });
        let started = std::time::Instant::now();
        let e = client
            .simple_query("SELECT pg_sleep(30), count(*) FROM payments WHERE merchant_id = 1")
            .await
            .map(drop)
            .unwrap_err();
        assert_eq!(
            e.as_db_error().map(|d| d.code().code()),
            Some("57014"),
            "{way}: {e}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{way}"
        );
        canceller.await.unwrap();
    }
}
