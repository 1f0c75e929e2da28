//! Demo step: a staged cutover while an application keeps paying through
//! the router. Forward CDC feeds the shards, every shard streams back to
//! the monolith (the way back), and merchants move in stages of 5, 20 and
//! 100% of the buckets.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shardline_cdc::reverse::{
    reverse_options, reverse_slot, reverse_topology, REVERSE_PUBLICATION,
};
use shardline_cdc::run::RunOptions;
use shardline_cdc::status::drop_all;
use shardline_cutover::{Selector, StartRequest, DEFAULT_MAX_PAUSE};
use shardline_topology::Topology;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Payment ids of this step, far above the generated history's.
const FIRST_ID: i64 = 8_000_000_000_000;
const CLIENTS: i64 = 4;

#[derive(Default)]
struct Load {
    committed: AtomicU64,
    failed: AtomicU64,
}

pub async fn staged(topology: &Topology) -> anyhow::Result<()> {
    let mut topology = topology.clone();
    topology.cutover.enabled = true;
    let shards = topology
        .sharded_context()
        .map(|c| c.databases())
        .unwrap_or_default();
    let options = RunOptions {
        heartbeat: Duration::from_millis(500),
        ..RunOptions::default()
    };
    forget_earlier_run(&topology).await?;
    let (stop_cdc, stopped) = watch::channel(false);
    let mut streams = JoinSet::new();
    let (t, o, s) = (topology.clone(), options.clone(), stopped.clone());
    streams.spawn(async move { shardline_cdc::run::run(&t, &o, s).await.map(drop) });
    for i in 0..shards.len() {
        let t = reverse_topology(&topology, i).expect("a shard of the sharded context");
        let (o, s) = (reverse_options(&options, i), stopped.clone());
        streams.spawn(async move { shardline_cdc::run::run(&t, &o, s).await.map(drop) });
    }
    // A stage must not switch before every way back is streaming.
    for shard in &shards {
        let client = shard.connect().await?;
        let streaming = "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE active AND slot_name LIKE 'shardline_reverse_%')";
        let mut waited = 0;
        while !client.query_one(streaming, &[]).await?.get::<_, bool>(0) {
            if let Some(ended) = streams.try_join_next() {
                ended??;
                anyhow::bail!("a CDC stream ended before the way back was streaming");
            }
            waited += 1;
            anyhow::ensure!(
                waited < 300,
                "the way back from {shard} did not start streaming within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let (port, router) = super::start_router(&topology).await?;

    let merchants: Vec<i64> = topology
        .source
        .connect()
        .await?
        .query(
            "SELECT merchant_id FROM merchants ORDER BY merchant_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let merchants = Arc::new(merchants);
    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = JoinSet::new();
    for n in 0..CLIENTS {
        let (merchants, load, stop) = (merchants.clone(), load.clone(), stop.clone());
        let user = topology.router.users[0].clone();
        clients.spawn(async move {
            let app = super::connect_app(port, &user).await?;
            pay(&app, n, &merchants, &load, &stop).await
        });
    }
    println!(
        "   router on 127.0.0.1:{port} with cutover on; {CLIENTS} clients pay for {} merchants through it",
        merchants.len()
    );

    for percent in ["5", "20", "100"] {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let request = StartRequest {
            selector: Selector::percent(percent)?,
            max_pause: DEFAULT_MAX_PAUSE,
            slot: options.slot.clone(),
            verify: false,
        };
        let report = shardline_cutover::start(&topology, &request)
            .await
            .map_err(|e| super::super::output::Hint::error(e.to_string(), e.hint()))?;
        println!(
            "   {percent:>3}%: {} buckets moved, paused {:.0} ms (drain {:.0} ms, CDC catch-up {:.0} ms); {} of {} buckets on the shards; {} payments so far, {} failed",
            report.buckets.len(),
            report.pause_ms,
            report.drain_ms,
            report.catchup_ms,
            report.buckets_on_shards,
            report.buckets_total,
            load.committed.load(Ordering::Relaxed),
            load.failed.load(Ordering::Relaxed),
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = clients.join_next().await {
        done??;
    }
    router.abort();

    // Where the payments went: the shards serve everyone now, and the way
    // back has copied every payment made on them to the monolith.
    let count = "SELECT count(*) FROM payments WHERE payment_id >= $1";
    let mut on_shards = 0;
    for (i, shard) in shards.iter().enumerate() {
        let n: i64 = shard
            .connect()
            .await?
            .query_one(count, &[&FIRST_ID])
            .await?
            .get(0);
        println!("   shard {i}: {n} of the clients' payments");
        on_shards += n;
    }
    let monolith = topology.source.connect().await?;
    let mut on_monolith = 0;
    for _ in 0..300 {
        on_monolith = monolith
            .query_one(count, &[&FIRST_ID])
            .await?
            .get::<_, i64>(0);
        if on_monolith == on_shards {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_cdc.send(true);
    while let Some(done) = streams.join_next().await {
        done??;
    }
    for i in 0..shards.len() {
        let t = reverse_topology(&topology, i).expect("a shard of the sharded context");
        drop_all(&t, &reverse_slot(i), REVERSE_PUBLICATION).await?;
    }
    println!(
        "   {} payments committed, {} statements failed; {on_shards} on the shards, {on_monolith} back on the monolith",
        load.committed.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
    );
    Ok(())
}

/// A demo run again starts from a monolith that serves everyone: the
/// cutover state and the ways back of an earlier run are removed (a way
/// back's slot would otherwise replay this run's backfill to the monolith).
async fn forget_earlier_run(topology: &Topology) -> anyhow::Result<()> {
    shardline_cutover::control::forget(&topology.source.connect().await?).await?;
    let shards = topology
        .sharded_context()
        .map_or(0, |c| c.databases().len());
    for i in 0..shards {
        let t = reverse_topology(topology, i).expect("a shard of the sharded context");
        drop_all(&t, &reverse_slot(i), REVERSE_PUBLICATION).await?;
    }
    Ok(())
}

/// One client: a payment of a merchant, then its capture, in one
/// transaction, again and again until told to stop.
async fn pay(
    app: &tokio_postgres::Client,
    n: i64,
    merchants: &[i64],
    load: &Load,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let insert = app
        .prepare(
            "INSERT INTO payments (merchant_id, payment_id, idempotency_key, amount, currency, status, method, created_at, updated_at)
             VALUES ($1, $2, md5($2::bigint::text)::uuid, 19.99, 'EUR', 'authorized', 'card', now(), now())",
        )
        .await?;
    let capture = app
        .prepare(
            "UPDATE payments SET status = 'captured', captured_at = now(), updated_at = now()
             WHERE merchant_id = $1 AND payment_id = $2",
        )
        .await?;
    let mut seq = 0i64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let merchant = merchants[((seq * 7 + n * 13) as usize) % merchants.len()];
        let id = FIRST_ID + n * 1_000_000_000 + seq;
        let paid = async {
            app.execute("BEGIN", &[]).await?;
            app.execute(&insert, &[&merchant, &id]).await?;
            app.execute(&capture, &[&merchant, &id]).await?;
            app.execute("COMMIT", &[]).await
        }
        .await;
        match paid {
            Ok(_) => load.committed.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(merchant, id, "payment failed: {e}");
                let _ = app.execute("ROLLBACK", &[]).await;
                load.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
    Ok(())
}
