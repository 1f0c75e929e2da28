//! The router for a production fleet (issue #15): transaction pooling
//! with each client's settings and statements following it, what pins a
//! client, the limits and their SQLSTATEs, backends clean before reuse on
//! every path, and a silent shard failing within its bound. Clients are
//! tokio-postgres, pgbench and, where a driver cannot misbehave enough, a
//! raw wire client ([`wire`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use shardline_router::Proxy;
use shardline_testkit::PgServer;
use shardline_topology::{ContextKind, ShardKey, Topology};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

mod clean;
mod health;
mod limits;
mod many;
mod pins;
mod wire;

pub const PASSWORD: &str = "pool-secret";

const SCHEMA: &str = "CREATE TABLE payments (id bigint, merchant_id bigint NOT NULL, amount int,
                      note text, PRIMARY KEY (merchant_id, id))";

pub struct Fleet {
    pub server: PgServer,
    pub topology: Topology,
    pub proxy: Arc<Proxy>,
    pub port: u16,
    _task: JoinHandle<()>,
}

/// One server with two shard databases, and a router whose `[router]`
/// section gets `router` (pooling keys, limits) on top of its users.
/// `shard1` may replace shard 1's URL (a proxy in front of it).
pub async fn fleet_with(router: &str, shard1: impl FnOnce(&PgServer) -> String) -> Fleet {
    let server = PgServer::start().unwrap();
    for db in ["tx0", "tx1"] {
        server.create_database(db).unwrap();
        server.psql(db, SCHEMA).unwrap();
    }
    let tx1 = shard1(&server);
    let toml = format!(
        r#"
[source]
url = "{source}"

[contexts.transactions]
tables = ["payments"]
shard_key = "merchant_id"
shards = ["{tx0}", "{tx1}"]

[router]
listen = "127.0.0.1:0"
{router}

[[router.users]]
name = "app"
password = "{PASSWORD}"
"#,
        source = server.url("postgres"),
        tx0 = server.url("tx0"),
    );
    let topology = Topology::parse(&toml, Path::new("pooling.toml")).unwrap();
    let proxy = Arc::new(Proxy::new(&topology).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let serving = proxy.clone();
    let task = tokio::spawn(async move {
        serving.serve(listener).await.unwrap();
    });
    Fleet {
        server,
        topology,
        proxy,
        port,
        _task: task,
    }
}

pub async fn fleet(router: &str) -> Fleet {
    fleet_with(router, |s| s.url("tx1")).await
}

impl Fleet {
    pub fn conn_string(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=app password={PASSWORD} dbname=shardline",
            self.port
        )
    }

    pub async fn client(&self) -> Client {
        self.connect().await.0
    }

    /// A client and its connection task, whose end says why the router
    /// closed the connection.
    pub async fn connect(&self) -> (Client, JoinHandle<Result<(), tokio_postgres::Error>>) {
        let (client, connection) = tokio_postgres::connect(&self.conn_string(), NoTls)
            .await
            .unwrap();
        (client, tokio::spawn(connection))
    }

    pub fn shard(&self, merchant: i64) -> usize {
        let ctx = self.topology.sharded_context().unwrap();
        match &ctx.kind {
            ContextKind::Sharded { placement, .. } => placement.shard(&ShardKey::Int(merchant)),
            _ => unreachable!(),
        }
    }

    /// The first merchant at or after 1 on shard `n`.
    pub fn merchant_on(&self, n: usize) -> i64 {
        (1..).find(|m| self.shard(*m) == n).unwrap()
    }

    /// Rows of `sql` read directly on shard `n`, one line per row.
    pub fn on_shard(&self, n: usize, sql: &str) -> String {
        self.server
            .psql(&format!("tx{n}"), sql)
            .unwrap()
            .trim_end()
            .to_string()
    }

    /// `SHOW shardline.<what>` as rows of text, from a fresh client.
    pub async fn show(&self, what: &str) -> Vec<Vec<Option<String>>> {
        rows(
            self.client()
                .await
                .simple_query(&format!("SHOW shardline.{what}"))
                .await
                .unwrap(),
        )
    }

    /// Waits until `done` holds, or panics after `within`.
    pub async fn eventually<F: std::future::Future<Output = bool>>(
        within: Duration,
        what: &str,
        mut done: impl FnMut() -> F,
    ) {
        let start = std::time::Instant::now();
        while !done().await {
            assert!(start.elapsed() < within, "not within {within:?}: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn rows(messages: Vec<SimpleQueryMessage>) -> Vec<Vec<Option<String>>> {
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

pub fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

/// The message of a database error.
pub fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// Column `name` of `SHOW shardline.shards` for shard `n`.
pub async fn pool_column(f: &Fleet, n: usize, column: usize) -> i64 {
    f.show("shards").await[n][column]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}
