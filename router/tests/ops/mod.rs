//! Operations: a shard stopped and restarted under load, cancel requests,
//! logins that reveal nothing, `SHOW shardline.*` and Prometheus metrics.
//! Each shard runs in its own PostgreSQL server here, so one can be
//! stopped while the other keeps serving.

use std::path::Path;
use std::sync::Arc;

use shardline_router::Proxy;
use shardline_testkit::PgServer;
use shardline_topology::{ContextKind, ShardKey, Topology};
use tokio::net::TcpListener;
use tokio_postgres::{Client, NoTls};

mod admin;
mod cancel;
mod login;
mod shard_down;

pub const PASSWORD: &str = "ops-secret";

/// The password of shard 1's server: it must never reach a client.
pub const SHARD_PASSWORD: &str = "shard1-pw-9f3a";

const SCHEMA: &str = "CREATE TABLE payments (id bigint, merchant_id bigint NOT NULL, amount int,
                      PRIMARY KEY (merchant_id, id))";

pub struct Split {
    /// One server per shard; shard 1's requires a password.
    pub servers: Vec<PgServer>,
    pub topology: Topology,
    pub proxy: Arc<Proxy>,
    pub port: u16,
    _task: tokio::task::JoinHandle<()>,
}

pub async fn split() -> Split {
    let servers = vec![
        PgServer::start().unwrap(),
        PgServer::builder()
            .password(SHARD_PASSWORD)
            .start()
            .unwrap(),
    ];
    for s in &servers {
        s.create_database("tx").unwrap();
        s.psql("tx", SCHEMA).unwrap();
    }
    let toml = format!(
        r#"
[source]
url = "{source}"

[contexts.transactions]
tables = ["payments"]
shard_key = "merchant_id"
shards = ["{tx0}", "{tx1}"]

[[router.users]]
name = "app"
password = "{PASSWORD}"
"#,
        source = servers[0].url("postgres"),
        tx0 = servers[0].url("tx"),
        tx1 = servers[1].url("tx"),
    );
    let topology = Topology::parse(&toml, Path::new("ops.toml")).unwrap();
    let proxy = Arc::new(Proxy::with_pool_size(&topology, 8).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let serving = proxy.clone();
    let task = tokio::spawn(async move {
        serving.serve(listener).await.unwrap();
    });
    Split {
        servers,
        topology,
        proxy,
        port,
        _task: task,
    }
}

impl Split {
    pub async fn client(&self) -> Client {
        self.client_as("app", PASSWORD).await.unwrap()
    }

    pub async fn client_as(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        let conn = format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname=shardline",
            self.port
        );
        let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    pub fn shard(&self, merchant: i64) -> usize {
        let ctx = self.topology.sharded_context().unwrap();
        match &ctx.kind {
            ContextKind::Sharded { placement, .. } => placement.shard(&ShardKey::Int(merchant)),
            _ => unreachable!(),
        }
    }
}

pub fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}
