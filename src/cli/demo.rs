//! `shardline demo`: the migration end to end on a local fleet.
//!
//! A list of steps, each a short function: later capabilities add theirs.

use std::path::PathBuf;
use std::time::Instant;

use std::time::Duration;

use shardline_backfill::BackfillRequest;
use shardline_cdc::run::RunOptions;
use shardline_gen::GenRequest;
use shardline_topology::{ContextKind, RouterUser, ShardKey, Topology};
use tokio::sync::watch;

mod cutover;

use super::dev::{self, DirArgs, UpArgs};
use super::progress::Progress;
use super::Global;

/// Run the whole migration on a local fleet it starts itself
///
/// Starts a fleet (monolith, shards, settlements, analytics), fills the
/// monolith with generated history and shows where merchants live; ends by
/// exporting a read model and the sharded payments to Parquet (DIR/lake). Safe to
/// run again: it reuses the fleet and regenerates the history.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  shardline demo
  shardline demo --rows 1000000 --shards 8
  shardline dev down --dir .shardline-demo --purge    # clean up afterwards")]
pub struct Args {
    /// Directory of the demo's fleet
    #[arg(long, default_value = ".shardline-demo", value_name = "DIR")]
    dir: PathBuf,
    /// Payments to generate
    #[arg(long, default_value_t = 200_000, value_name = "N")]
    rows: u64,
    /// Transaction shards
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    shards: u16,
    /// Port of the demo's monolith; the other servers take the ports after it
    #[arg(long, default_value_t = 55320, value_name = "PORT")]
    base_port: u16,
}

pub async fn run(args: Args, g: &Global) -> anyhow::Result<u8> {
    let started = Instant::now();
    step(1, "start a local fleet");
    let up = UpArgs {
        shards: args.shards,
        dir: DirArgs {
            dir: args.dir.clone(),
        },
        base_port: args.base_port,
    };
    let (fleet, config) = dev::up(&up)?;
    for m in &fleet.members {
        println!("   {:<12} 127.0.0.1:{}/{}", m.name, m.port, m.database);
    }
    let topology = Topology::load(&config)?;

    step(2, "generate the monolith's history");
    generate(&topology, args.rows, g).await?;

    step(
        3,
        "backfill the history into the shards, settlements and analytics",
    );
    backfill(&topology, g).await?;

    step(
        4,
        "stream live changes with CDC while the monolith takes payments",
    );
    follow_live_load(&topology).await?;

    step(5, "where merchants live");
    placement(&topology)?;

    step(
        6,
        "verify every shard, context and read model against the source",
    );
    let report = shardline_verify::verify(
        &topology,
        &shardline_verify::VerifyRequest::default(),
        |_| {},
    )
    .await?;
    for line in super::verify::text(&report).lines() {
        println!("   {line}");
    }

    step(7, "export a read model and the sharded payments to Parquet");
    export(&topology, &args.dir).await?;

    step(
        8,
        "a staged cutover (5%, 20%, 100%) while payments flow through the router",
    );
    cutover::staged(&topology).await?;

    step(
        9,
        "after the cutover, the router sends each payment to its shard",
    );
    through_router(&topology).await?;

    println!(
        "\ndone in {:.0} s. Try:\n   export SHARDLINE_CONFIG={}\n   shardline route 1001 1002\n   shardline dev status --dir {}\n   shardline dev down --dir {} --purge",
        started.elapsed().as_secs_f64(),
        config.display(),
        args.dir.display(),
        args.dir.display()
    );
    Ok(if report.equal {
        super::exit::OK
    } else {
        super::exit::DIFFERENCES
    })
}

/// A read model and a sharded table (all shards at once, by month), as a
/// data engineer would pull them into a lakehouse.
async fn export(topology: &Topology, dir: &std::path::Path) -> anyhow::Result<()> {
    use shardline_export::{ExportRequest, PartitionBy, Progress, What};
    let lake = dir.join("lake");
    let jobs = [
        ("merchant_daily_volume", None),
        ("payments", Some(PartitionBy::Month("created_at".into()))),
    ];
    for (table, partition_by) in jobs {
        let mut request = ExportRequest::new(What::Table(table.into()), lake.join(table));
        request.partition_by = partition_by;
        request.overwrite = true;
        let summary = shardline_export::export(topology, &request, &Progress::default(), None)
            .await
            .map_err(|e| super::output::Hint::error(e.to_string(), e.hint()))?;
        print!("   {table}: {}", super::export::text(&summary));
    }
    Ok(())
}

fn step(n: u32, what: &str) {
    println!("\n== {n}. {what}");
}

async fn generate(topology: &Topology, rows: u64, g: &Global) -> anyhow::Result<()> {
    let request = GenRequest {
        payments: rows,
        seed: 1,
        merchants: None,
        truncate: true,
    };
    let progress = std::sync::Arc::new(Progress::new("payments", rows, "payments", g.quiet));
    let reporter = std::sync::Arc::clone(&progress);
    let report = shardline_gen::generate(&topology.source, &request, move |p| {
        reporter.set(p.payments_done)
    })
    .await?;
    progress.finish();
    for (table, n) in &report.tables {
        println!("   {table:<15} {n:>10} rows");
    }
    println!(
        "   {:.1} s, {:.0} rows/s",
        report.seconds, report.rows_per_sec
    );
    Ok(())
}

async fn backfill(topology: &Topology, g: &Global) -> anyhow::Result<()> {
    let request = BackfillRequest {
        restart: true,
        ..BackfillRequest::default()
    };
    let prepared = shardline_backfill::prepare(topology, &request).await?;
    let report =
        super::backfill::copy_with_progress(prepared, &request, watch::channel(false).1, g.quiet)
            .await?;
    for t in &report.tables {
        println!(
            "   {:<30} {:>10} rows -> {} targets",
            t.table, t.rows, t.targets
        );
    }
    println!(
        "   {:.1} s, {:.0} rows/s; CDC slot {} starts at {}",
        report.seconds, report.rows_per_sec, report.slot, report.consistent_lsn
    );
    Ok(())
}

/// Runs CDC while a payment load writes to the monolith, then waits until
/// every change has been applied.
async fn follow_live_load(topology: &Topology) -> anyhow::Result<()> {
    let options = RunOptions {
        heartbeat: Duration::from_millis(500),
        ..RunOptions::default()
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let cdc_topology = topology.clone();
    let cdc_options = options.clone();
    let cdc =
        tokio::spawn(
            async move { shardline_cdc::run::run(&cdc_topology, &cdc_options, stop_rx).await },
        );
    let source = topology.source.connect().await?;
    let started = std::time::Instant::now();
    let mut statements = 0u64;
    let first_new: i64 = source
        .query_one("SELECT coalesce(max(payment_id), 0) + 1 FROM payments", &[])
        .await?
        .get(0);
    let mut next = first_new;
    while started.elapsed() < Duration::from_secs(5) {
        if cdc.is_finished() {
            break;
        }
        // New payments for the biggest merchants, captures, a refund, and
        // a merchant correction that moves a payment between shards.
        source
            .batch_execute(&format!(
                "INSERT INTO payments (merchant_id, payment_id, idempotency_key, amount, currency, status, method, created_at, updated_at)
                 SELECT 1000 + (g % 20) + 1, {next} + g, md5(({next} + g)::text)::uuid, 10 + g, 'EUR', 'authorized', 'card', now(), now()
                   FROM generate_series(0, 49) g;
                 UPDATE payments SET status = 'captured', captured_at = now(), updated_at = now()
                  WHERE payment_id BETWEEN {next} AND {next} + 39 AND merchant_id = merchant_id;
                 UPDATE payments SET merchant_id = 1001 WHERE payment_id = {next} + 49;"
            ))
            .await?;
        next += 50;
        statements += 3;
    }
    let target: String = source
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    for _ in 0..600 {
        let caught_up: bool = source
            .query_one(
                "SELECT coalesce((SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2), false)",
                &[&target, &options.slot],
            )
            .await?
            .get(0);
        if caught_up || cdc.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    let report = cdc.await??;
    println!(
        "   wrote {} payments in {statements} statements over {:.1} s; CDC applied {} transactions ({} changes), slot confirmed at {}",
        next - first_new,
        started.elapsed().as_secs_f64(),
        report.transactions,
        report.changes,
        report.confirmed_lsn
    );
    Ok(())
}

/// Payments an application sends through the router, and where they
/// landed: merchant → bucket → shard, read back through the router and
/// on the shard itself.
async fn through_router(topology: &Topology) -> anyhow::Result<()> {
    // Far above the generated history's payment ids.
    const FIRST_ID: i64 = 9_000_000_000_000;
    let (Some(context), Some(user)) = (topology.sharded_context(), topology.router.users.first())
    else {
        return Ok(());
    };
    let ContextKind::Sharded {
        placement, shards, ..
    } = &context.kind
    else {
        return Ok(());
    };
    let (port, server) = start_router(topology).await?;
    let app = connect_app(port, user).await?;
    println!("   router on 127.0.0.1:{port}, user {}", user.name);
    let insert = app
        .prepare(
            "INSERT INTO payments (merchant_id, payment_id, idempotency_key, amount, currency, status, method, created_at, updated_at)
             VALUES ($1, $2, md5($2::bigint::text)::uuid, 19.99, 'EUR', 'authorized', 'card', now(), now())
             ON CONFLICT DO NOTHING",
        )
        .await?;
    let count = "SELECT count(*) FROM payments WHERE merchant_id = $1 AND payment_id >= $2";
    let mut per_shard = vec![(0i64, 0i64); shards.len()];
    let mut id = FIRST_ID;
    for rank in 1..=8 {
        let merchant = shardline_gen::history::History::merchant_id(rank);
        for _ in 0..rank {
            app.execute(&insert, &[&merchant, &id]).await?;
            id += 1;
        }
        let key = ShardKey::Int(merchant);
        let shard = placement.shard(&key);
        let routed: i64 = app.query_one(count, &[&merchant, &FIRST_ID]).await?.get(0);
        let direct = shards[shard].connect().await?;
        let there: i64 = direct
            .query_one(count, &[&merchant, &FIRST_ID])
            .await?
            .get(0);
        per_shard[shard].0 += routed;
        per_shard[shard].1 += there;
        println!(
            "   merchant {merchant} -> bucket {:>4} -> shard {shard}: {routed} payments read through the router, {there} on shard {shard} itself",
            placement.bucket(&key)
        );
    }
    for (shard, (routed, there)) in per_shard.iter().enumerate() {
        println!("   shard {shard}: {routed} through the router, {there} directly");
    }
    println!("   SHOW shardline.stats through the router:");
    for m in app.simple_query("SHOW shardline.stats").await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            let cell = |i: usize| r.get(i).unwrap_or("-").to_string();
            let database = match r.get(1) {
                Some(shard) => format!("{} shard {shard}", cell(0)),
                None => cell(0),
            };
            println!(
                "     {database:<22} {:>6} queries, {} errors, p99 {} ms",
                cell(3),
                cell(4),
                cell(6)
            );
        }
    }
    server.abort();
    Ok(())
}

/// A router on a free loopback port: its port, and the task serving it.
async fn start_router(
    topology: &Topology,
) -> anyhow::Result<(u16, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let proxy = shardline_router::Proxy::new(topology)
        .map_err(|e| super::output::Hint::error(e.to_string(), e.hint()))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    Ok((
        port,
        tokio::spawn(async move { proxy.serve(listener).await }),
    ))
}

/// An application's connection to the demo's router.
async fn connect_app(port: u16, user: &RouterUser) -> anyhow::Result<tokio_postgres::Client> {
    let (app, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(&user.name)
        .password(user.password.expose())
        .dbname("shardline")
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(connection);
    Ok(app)
}

/// How the biggest merchants spread over the shards.
fn placement(topology: &Topology) -> anyhow::Result<()> {
    let Some(context) = topology.sharded_context() else {
        return Ok(());
    };
    let ContextKind::Sharded { placement, .. } = &context.kind else {
        return Ok(());
    };
    for rank in 1..=5 {
        let merchant = shardline_gen::history::History::merchant_id(rank);
        let key = ShardKey::Int(merchant);
        println!(
            "   merchant {merchant} (#{rank} by size) -> bucket {:>4} -> shard {}",
            placement.bucket(&key),
            placement.shard(&key)
        );
    }
    println!("   in SQL: {}", placement.bucket_sql("merchant_id"));
    Ok(())
}
