//! `shardline router`: the PostgreSQL-speaking endpoint that routes each
//! statement to its context and shard.

use std::net::SocketAddr;
use std::sync::Arc;

use shardline_router::Proxy;

use super::output::{print_json, Hint};
use super::{exit, signals, Format, Global};

/// Serve PostgreSQL clients, routing each statement by merchant
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  shardline router                        # where [router] listen says, 127.0.0.1:6432
  shardline router --listen 0.0.0.0:6432 --pool-size 64
  psql -h 127.0.0.1 -p 6432 -U shardline -c 'SELECT * FROM payments WHERE merchant_id = 42'
  psql -h 127.0.0.1 -p 6432 -U shardline -c 'SHOW shardline.shards'    # also: SHOW shardline.stats
  shardline router --metrics-listen 127.0.0.1:9188   # curl http://127.0.0.1:9188/metrics
  psql 'host=127.0.0.1 port=6432 user=shardline sslmode=verify-full sslrootcert=ca.pem'
  shardline router --threads 1            # one thread: least CPU on a small shared machine

Clients log in with SCRAM-SHA-256 as a user of [[router.users]].
Pooling and limits: [router] pool_mode = \"transaction\" (default) or \"session\", pool_size,
max_client_conn, pool_timeout, login_timeout, idle_in_transaction_timeout, idle_client_timeout,
max_message_bytes, max_client_buffer_bytes, backend_read_timeout (see the README's Router section).
  psql -h 127.0.0.1 -p 6432 -U shardline -c 'SHOW shardline.clients'   # who holds what, and why
TLS: [router] tls_cert = \"router.pem\", tls_key = \"router.key\" (PEM) turn it on for
clients that ask (sslmode=prefer/require/verify-full); tls = \"require\" refuses the others.")]
pub struct Args {
    /// Address to listen on [default: the topology's [router] listen]
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<SocketAddr>,
    /// Backend connections per database [default: the topology's [router] pool_size, 32]
    #[arg(long, value_name = "N")]
    pool_size: Option<usize>,
    /// Serve Prometheus metrics (queries, errors, latency histogram, pools, up/down per database) over HTTP on this address
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<SocketAddr>,
    /// Threads that relay client messages [default: one per core]. 1 runs
    /// every session on one thread: about a fifth less CPU per statement
    /// where the router shares a few cores with its databases, at the
    /// price of using one core at most
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

pub async fn run(args: Args, g: &Global) -> anyhow::Result<u8> {
    let topology = g.topology()?;
    if args.pool_size == Some(0) {
        return Err(Hint::error(
            "--pool-size must be at least 1",
            "leave it out for the topology's [router] pool_size (32 unless set)",
        ));
    }
    let pool_size = args.pool_size.unwrap_or(topology.router.pool_size);
    let proxy = Proxy::with_pool_size(&topology, pool_size)
        .map_err(|e| Hint::error(e.to_string(), e.hint()))?;
    let proxy = Arc::new(proxy);
    let listen = args.listen.unwrap_or(topology.router.listen);
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        Hint::error(
            format!("cannot listen on {listen}: {e}"),
            "is another router or PgBouncer on that port? pass --listen HOST:PORT",
        )
    })?;
    let local = listener.local_addr()?;
    let mut stop = signals::stop_on_signal();
    if let Some(addr) = args.metrics_listen {
        let p = proxy.clone();
        shardline_metrics::serve(addr, Arc::new(move || p.metrics()), stop.clone())
            .await
            .map_err(|e| {
                Hint::error(
                    format!("cannot serve metrics on {addr}: {e}"),
                    "choose a free address for --metrics-listen, such as 127.0.0.1:9188",
                )
            })?;
    }
    match g.format {
        Format::Json => print_json(&serde_json::json!({ "listen": local.to_string() }))?,
        _ => eprintln!("shardline router listening on {local}"),
    }
    tokio::select! {
        served = proxy.serve(listener) => {
            served.map_err(|e| Hint::error(format!("router stopped: {e}"), "see the log above"))?;
            Ok(exit::OK)
        }
        // Stopping a server on SIGINT/SIGTERM is its normal end.
        _ = stop.changed() => {
            proxy.leave().await;
            Ok(exit::OK)
        }
    }
}
