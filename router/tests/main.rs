//! The router against real PostgreSQL: clients (tokio-postgres, psql) log
//! in with SCRAM, statements land on the right shard, refusals carry their
//! SQLSTATE, transactions stay on one shard, broken clients stay alone.

mod backend_tls;
mod merge;
mod settings;

use std::path::Path;
use std::process::Command;

use shardline_router::Proxy;
use shardline_testkit::PgServer;
use shardline_topology::{ShardKey, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::{Client, NoTls};

mod ops;
mod pooling;
mod tls;

const SCHEMA: &str = "
CREATE TABLE payments (id bigint, merchant_id bigint NOT NULL, amount numeric(18,2), status text,
                       PRIMARY KEY (merchant_id, id));
CREATE TABLE currencies (code text PRIMARY KEY);";

const PASSWORD: &str = "router-secret";

struct Fleet {
    server: PgServer,
    topology: Topology,
    port: u16,
    _task: tokio::task::JoinHandle<()>,
}

/// One PostgreSQL server holding two shard databases and a settlements
/// database, and a router in front of them on a free port.
async fn fleet() -> Fleet {
    fleet_collated(None).await
}

/// [`fleet`] with the shard databases created with this collation.
async fn fleet_collated(collation: Option<&str>) -> Fleet {
    let server = PgServer::start().unwrap();
    for db in ["tx0", "tx1", "settlements"] {
        match collation {
            Some(c) if db != "settlements" => {
                server
                    .psql(
                        "postgres",
                        &format!("CREATE DATABASE {db} TEMPLATE template0 LC_COLLATE '{c}' LC_CTYPE '{c}'"),
                    )
                    .unwrap();
            }
            _ => server.create_database(db).unwrap(),
        }
    }
    for db in ["tx0", "tx1"] {
        server.psql(db, SCHEMA).unwrap();
    }
    server
        .psql(
            "settlements",
            "CREATE TABLE settlements (id bigint PRIMARY KEY, total numeric)",
        )
        .unwrap();
    let toml = format!(
        r#"
[source]
url = "{source}"

[contexts.transactions]
tables = ["payments"]
reference_tables = ["currencies"]
shard_key = "merchant_id"
shards = ["{tx0}", "{tx1}"]

[contexts.settlements]
tables = ["settlements"]
url = "{settlements}"

[router]
listen = "127.0.0.1:0"

[[router.users]]
name = "app"
password = "{PASSWORD}"
"#,
        source = server.url("postgres"),
        tx0 = server.url("tx0"),
        tx1 = server.url("tx1"),
        settlements = server.url("settlements"),
    );
    let topology = Topology::parse(&toml, Path::new("test.toml")).unwrap();
    let proxy = Proxy::with_pool_size(&topology, 8).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        proxy.serve(listener).await.unwrap();
    });
    Fleet {
        server,
        topology,
        port,
        _task: task,
    }
}

impl Fleet {
    async fn client(&self) -> Client {
        self.client_with(PASSWORD).await.unwrap()
    }

    async fn client_with(&self, password: &str) -> Result<Client, tokio_postgres::Error> {
        let conn = format!(
            "host=127.0.0.1 port={} user=app password={password} dbname=shardline",
            self.port
        );
        let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    fn shard(&self, merchant: i64) -> usize {
        let ctx = self.topology.sharded_context().unwrap();
        match &ctx.kind {
            shardline_topology::ContextKind::Sharded { placement, .. } => {
                placement.shard(&ShardKey::Int(merchant))
            }
            _ => unreachable!(),
        }
    }

    /// Two merchants on different shards.
    fn merchants(&self) -> (i64, i64) {
        let a = 1;
        let b = (2..).find(|m| self.shard(*m) != self.shard(a)).unwrap();
        (a, b)
    }

    /// Rows of `sql` read directly on shard `n`.
    fn on_shard(&self, n: usize, sql: &str) -> String {
        self.server
            .psql(&format!("tx{n}"), sql)
            .unwrap()
            .trim_end()
            .to_string()
    }
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

#[tokio::test]
async fn extended_protocol_with_binary_and_text_parameters_lands_on_the_key_shard() {
    let f = fleet().await;
    let (a, b) = f.merchants();
    let c = f.client().await;
    let insert = c
        .prepare("INSERT INTO payments (id, merchant_id, amount, status) VALUES ($1, $2, 10, $3)")
        .await
        .unwrap();
    for (id, m) in [(1i64, a), (2, b), (3, a)] {
        // tokio-postgres sends bigint parameters in binary.
        let n = c.execute(&insert, &[&id, &m, &"new"]).await.unwrap();
        assert_eq!(n, 1);
    }
    assert_eq!(
        f.on_shard(f.shard(a), "SELECT id FROM payments ORDER BY id"),
        "1\n3"
    );
    assert_eq!(
        f.on_shard(f.shard(b), "SELECT id FROM payments ORDER BY id"),
        "2"
    );

    // Text parameters (the statement's type left to the server) route alike.
    let rows = c
        .query(
            "SELECT id, status FROM payments WHERE merchant_id = $1::text::bigint ORDER BY id",
            &[&a.to_string()],
        )
        .await
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>(),
        vec![1, 3]
    );
    // Results come back as the backend encoded them (binary numeric here).
    let row = c
        .query_one(
            "SELECT amount::float8 FROM payments WHERE merchant_id = $1 AND id = 2",
            &[&b],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, f64>(0), 10.0);
    // The prepared statement keeps working on a second call after others.
    assert_eq!(c.execute(&insert, &[&4i64, &b, &"new"]).await.unwrap(), 1);
}

#[tokio::test]
async fn simple_protocol_routes_scatters_and_splits() {
    let f = fleet().await;
    let (a, b) = f.merchants();
    let c = f.client().await;
    // PgDog #259: a multi-row INSERT is split, each row written once.
    c.batch_execute(&format!(
        "INSERT INTO payments (id, merchant_id, amount) VALUES (1, {a}, 1), (2, {b}, 2), (3, {a}, 3)"
    ))
    .await
    .unwrap();
    assert_eq!(f.on_shard(f.shard(a), "SELECT count(*) FROM payments"), "2");
    assert_eq!(f.on_shard(f.shard(b), "SELECT count(*) FROM payments"), "1");

    // No key: every shard, rows concatenated; LIMIT re-applied.
    let all = c.simple_query("SELECT id FROM payments").await.unwrap();
    let rows: Vec<_> = all
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    let mut sorted = rows.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["1", "2", "3"]);
    let limited = c
        .simple_query("SELECT id FROM payments LIMIT 2")
        .await
        .unwrap();
    assert!(matches!(
        limited.last(),
        Some(tokio_postgres::SimpleQueryMessage::CommandComplete(2))
    ));

    // PgDog #639: IN over two shards is answered from both.
    let both = c
        .simple_query(&format!(
            "SELECT merchant_id, count(*) FROM payments WHERE merchant_id IN ({a}, {b}) GROUP BY merchant_id"
        ))
        .await
        .unwrap();
    let groups = both
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(groups, 2);

    // Keyed writes on several shards sum their counts.
    let n = c
        .execute(
            &format!("UPDATE payments SET status = 'x' WHERE merchant_id IN ({a}, {b})"),
            &[],
        )
        .await;
    // Extended protocol: several shards are refused, not half-done.
    assert_eq!(code(&n.unwrap_err()), "0A000");
    c.batch_execute(&format!(
        "UPDATE payments SET status = 'x' WHERE merchant_id IN ({a}, {b})"
    ))
    .await
    .unwrap();
    assert_eq!(f.on_shard(f.shard(b), "SELECT status FROM payments"), "x");

    // Other contexts go to their database.
    c.batch_execute("INSERT INTO settlements VALUES (1, 10)")
        .await
        .unwrap();
    assert_eq!(
        f.server
            .psql("settlements", "SELECT total FROM settlements")
            .unwrap()
            .trim(),
        "10"
    );
}

#[tokio::test]
async fn refusals_carry_their_sqlstate_and_the_connection_goes_on() {
    let f = fleet().await;
    let c = f.client().await;
    let e = c.batch_execute("DELETE FROM payments").await.unwrap_err();
    assert_eq!(code(&e), "0A000");
    let db = e.as_db_error().unwrap();
    assert!(
        db.message().contains("payments") && db.message().contains("merchant_id"),
        "{}",
        db.message()
    );
    let e = c.batch_execute("SELECT * FROM invoices").await.unwrap_err();
    assert_eq!(code(&e), "42P01");
    let e = c
        .query(
            "SELECT * FROM payments p JOIN settlements s ON s.id = p.id WHERE p.merchant_id = $1",
            &[&1i64],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000");
    // The backend's own errors come through with their SQLSTATE.
    let e = c
        .batch_execute("SELECT nope FROM payments WHERE merchant_id = 1")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42703");
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn a_transaction_stays_on_one_shard_and_a_failed_one_rolls_back() {
    let f = fleet().await;
    let (a, b) = f.merchants();
    let mut c = f.client().await;
    {
        let t = c.transaction().await.unwrap();
        t.execute(
            "INSERT INTO payments (id, merchant_id) VALUES (1, $1)",
            &[&a],
        )
        .await
        .unwrap();
        let e = t
            .execute(
                "INSERT INTO payments (id, merchant_id) VALUES (2, $1)",
                &[&b],
            )
            .await
            .unwrap_err();
        assert_eq!(code(&e), "0A000");
        let e = t.execute("SELECT 1", &[]).await.unwrap_err();
        assert_eq!(code(&e), "25P02");
        // COMMIT of a failed transaction rolls back, as in PostgreSQL.
        let e = t.commit().await;
        assert!(e.is_err() || e.is_ok());
    }
    assert_eq!(f.on_shard(f.shard(a), "SELECT count(*) FROM payments"), "0");
    assert_eq!(f.on_shard(f.shard(b), "SELECT count(*) FROM payments"), "0");

    // Simple protocol: COMMIT after an error answers ROLLBACK.
    c.batch_execute(&format!(
        "BEGIN; INSERT INTO payments (id, merchant_id) VALUES (5, {a})"
    ))
    .await
    .unwrap();
    let e = c
        .batch_execute(&format!(
            "INSERT INTO payments (id, merchant_id) VALUES (6, {b})"
        ))
        .await
        .unwrap_err();
    assert!(e
        .as_db_error()
        .unwrap()
        .message()
        .contains("transaction runs on"));
    let done = c.simple_query("COMMIT").await.unwrap();
    assert!(matches!(
        done.last(),
        Some(tokio_postgres::SimpleQueryMessage::CommandComplete(_))
    ));
    assert_eq!(f.on_shard(f.shard(a), "SELECT count(*) FROM payments"), "0");

    // PgDog #1085: a replicated table is never written on one shard only.
    c.batch_execute(&format!(
        "BEGIN; INSERT INTO payments (id, merchant_id) VALUES (7, {a})"
    ))
    .await
    .unwrap();
    let e = c
        .batch_execute("INSERT INTO currencies VALUES ('EUR')")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000");
    c.batch_execute("ROLLBACK").await.unwrap();
    c.batch_execute("INSERT INTO currencies VALUES ('EUR')")
        .await
        .unwrap();
    for n in 0..2 {
        assert_eq!(f.on_shard(n, "SELECT code FROM currencies"), "EUR");
    }

    // A committed single-shard transaction lands whole.
    let t = c.transaction().await.unwrap();
    t.execute(
        "INSERT INTO payments (id, merchant_id) VALUES (8, $1)",
        &[&b],
    )
    .await
    .unwrap();
    t.execute(
        "UPDATE payments SET status = 'ok' WHERE merchant_id = $1",
        &[&b],
    )
    .await
    .unwrap();
    t.commit().await.unwrap();
    assert_eq!(
        f.on_shard(f.shard(b), "SELECT id, status FROM payments"),
        "8|ok"
    );
}

#[tokio::test]
async fn session_key_override_routes_statements_without_a_key() {
    let f = fleet().await;
    let (_, b) = f.merchants();
    let c = f.client().await;
    c.batch_execute(&format!("SET shardline.merchant_id = {b}"))
        .await
        .unwrap();
    c.batch_execute(&format!(
        "INSERT INTO payments (id, merchant_id) VALUES (9, {b})"
    ))
    .await
    .unwrap();
    let n = c
        .execute("UPDATE payments SET status = 'seen' WHERE id = 9", &[])
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        f.on_shard(f.shard(b), "SELECT status FROM payments"),
        "seen"
    );
}

#[tokio::test]
async fn a_wrong_password_is_refused() {
    let f = fleet().await;
    let Err(e) = f.client_with("guess").await else {
        panic!("a wrong password logged in");
    };
    assert_eq!(code(&e), "28P01");
}

#[tokio::test]
async fn malformed_messages_close_only_that_connection() {
    let f = fleet().await;
    let good = f.client().await;
    // A startup packet that claims to be 2 bytes long.
    let mut bad = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
    bad.write_all(&[0, 0, 0, 2, 0, 3, 0, 0]).await.unwrap();
    let mut buf = Vec::new();
    let _ = bad.read_to_end(&mut buf).await;
    // Random bytes after a successful login: an ErrorResponse, then close.
    let (client, conn) = {
        let s = format!(
            "host=127.0.0.1 port={} user=app password={PASSWORD}",
            f.port
        );
        tokio_postgres::connect(&s, NoTls).await.unwrap()
    };
    drop(client);
    drop(conn);
    for seed in 0..20u8 {
        let mut s = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
        let garbage: Vec<u8> = (0..64u8)
            .map(|i| i.wrapping_mul(seed).wrapping_add(seed))
            .collect();
        let _ = s.write_all(&garbage).await;
        let mut sink = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(2), s.read_to_end(&mut sink)).await;
    }
    let one: i32 = good.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let fresh = f.client().await;
    let one: i32 = fresh.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn psql_works_through_the_router() {
    let f = fleet().await;
    let (a, _) = f.merchants();
    let psql = f.server.bindir().program("psql");
    let port = f.port.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(psql)
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
                "shardline",
                "-c",
            ])
            .arg(format!(
                "INSERT INTO payments (id, merchant_id) VALUES (11, {a}) RETURNING id"
            ))
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().next(),
        Some("11")
    );
    assert_eq!(f.on_shard(f.shard(a), "SELECT id FROM payments"), "11");
}
