//! A cutover stage whose second router is killed (SIGKILL) during the
//! hold, under load through both routers: the stage switches once the dead
//! router's heartbeat is stale, or aborts within --max-pause; either way
//! no bucket stays held, the surviving router serves every merchant, and
//! every acknowledged payment is on its shard exactly once (none lost,
//! doubled or misplaced) once CDC caught up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardline_topology::{ContextKind, ShardKey};

use crate::harness::{free_port, seed, stderr, tail, Fleet, Rng, ROUTER_PASSWORD};

async fn connect(port: u16) -> tokio_postgres::Client {
    for _ in 0..100 {
        let connected = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(port)
            .user("app")
            .password(ROUTER_PASSWORD)
            .dbname("app")
            .connect(tokio_postgres::NoTls)
            .await;
        if let Ok((client, connection)) = connected {
            tokio::spawn(connection);
            return client;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no router on {port}");
}

#[derive(Default)]
struct Outcome {
    acked: Vec<(i64, i64)>,
    failed: Vec<(i64, i64, String)>,
}

/// Inserts payments through the router on `port` until `stop`.
async fn client(
    port: u16,
    first_id: i64,
    seed: u64,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Outcome>>,
) {
    let db = connect(port).await;
    let mut rng = Rng::new(seed);
    let mut id = first_id;
    while !stop.load(Ordering::SeqCst) {
        id += 1;
        let m = 1 + rng.range(0, 60) as i64;
        let r = db
            .execute(
                "INSERT INTO payments (merchant_id, id, amount, status, note) VALUES ($1, $2, 2.00, 'authorized', 'cutover')",
                &[&m, &id],
            )
            .await;
        let mut o = out.lock().unwrap();
        match r {
            Ok(_) => o.acked.push((m, id)),
            Err(e) => {
                let gone = db.is_closed();
                o.failed
                    .push((m, id, shardline_topology::describe_pg_error(&e)));
                if gone {
                    return;
                }
            }
        }
    }
}

#[test]
fn a_router_killed_during_a_hold_loses_no_payment_and_leaves_no_bucket_held() {
    let seed = seed("cutover");
    let mut rng = Rng::new(seed);
    let f = Fleet::start_with(300, true);
    let out = f.run(&["-q", "backfill"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_cdc, cdc_log) = f.spawn_logged(
        &["cdc", "run", "--heartbeat-secs", "1", "--retry-secs", "60"],
        "cutover-cdc",
    );
    assert!(
        f.wait_caught_up("shardline", Duration::from_secs(60)),
        "{}",
        tail(&cdc_log)
    );
    let (a_port, b_port) = (free_port(), free_port());
    let _a = f.spawn_logged(
        &["router", "--listen", &format!("127.0.0.1:{a_port}")],
        "router-a",
    );
    let (b, _) = f.spawn_logged(
        &["router", "--listen", &format!("127.0.0.1:{b_port}")],
        "router-b",
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (on_a, on_b) = (
        Arc::new(Mutex::new(Outcome::default())),
        Arc::new(Mutex::new(Outcome::default())),
    );
    let tasks = vec![
        rt.spawn(client(a_port, 60_000_000, seed, stop.clone(), on_a.clone())),
        rt.spawn(client(
            b_port,
            70_000_000,
            seed + 1,
            stop.clone(),
            on_b.clone(),
        )),
    ];
    std::thread::sleep(Duration::from_secs(1));
    let stage = f.spawn(&["cutover", "start", "--cohort", "50", "--max-pause", "8"]);
    // Kill router B once the hold is on (or soon after the stage began).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let state = f
            .source
            .psql(
                "postgres",
                "SELECT state FROM shardline.cutover_cohorts ORDER BY 1 DESC LIMIT 1",
            )
            .unwrap_or_default();
        if state.trim() == "holding" {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(rng.range(0, 200)));
    b.sigkill();
    let out = stage.sigterm_after_exit();
    let err = stderr(&out);
    assert!(
        out.status.success() || (out.status.code() == Some(2) && err.contains("aborted")),
        "the stage switches or aborts: {err}"
    );
    eprintln!(
        "cutover: the stage {} ({})",
        if out.status.success() {
            "switched"
        } else {
            "aborted"
        },
        err.lines().next().unwrap_or_default()
    );
    // The surviving router goes on serving every merchant.
    let before = on_a.lock().unwrap().acked.len();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    let a = std::mem::take(&mut *on_a.lock().unwrap());
    let b = std::mem::take(&mut *on_b.lock().unwrap());
    assert!(a.acked.len() > before, "router A served after the stage");
    assert!(
        a.failed.is_empty(),
        "router A: {:?}",
        &a.failed[..a.failed.len().min(3)]
    );
    assert_eq!(
        f.source
            .psql(
                "postgres",
                "SELECT count(*) FROM shardline.cutover_cohorts WHERE state = 'holding'"
            )
            .unwrap()
            .trim(),
        "0",
        "no bucket left held"
    );
    assert!(
        f.wait_caught_up("shardline", Duration::from_secs(60)),
        "{}",
        tail(&cdc_log)
    );

    // Every acknowledged payment once, on its shard; nothing misplaced; no
    // payment nobody tried to write.
    let topology = f.topology();
    let ContextKind::Sharded { placement, .. } = &topology.context("transactions").unwrap().kind
    else {
        unreachable!()
    };
    eprintln!(
        "cutover: router A {} acknowledged, router B {} acknowledged and {} failed",
        a.acked.len(),
        b.acked.len(),
        b.failed.len()
    );
    let mut tried: std::collections::HashSet<(i64, i64)> =
        a.acked.iter().chain(&b.acked).copied().collect();
    tried.extend(b.failed.iter().map(|(m, id, _)| (*m, *id)));
    let mut on_shards = std::collections::HashSet::new();
    for (i, shard) in f.shards.iter().enumerate() {
        let owned = placement.owned_by_shard_sql("merchant_id", i);
        assert_eq!(
            shard
                .psql(
                    "postgres",
                    &format!("SELECT count(*) FROM payments WHERE NOT ({owned})")
                )
                .unwrap()
                .trim(),
            "0",
            "nothing misplaced on shard {i}"
        );
        let rows = shard
            .psql(
                "postgres",
                "COPY (SELECT merchant_id, id FROM payments WHERE note = 'cutover') TO STDOUT",
            )
            .unwrap();
        for l in rows.lines().filter(|l| !l.is_empty()) {
            let mut p = l.split('\t').map(|v| v.parse::<i64>().unwrap());
            let key = (p.next().unwrap(), p.next().unwrap());
            assert_eq!(placement.shard(&ShardKey::Int(key.0)), i);
            assert!(on_shards.insert(key), "{key:?} twice");
            assert!(tried.contains(&key), "{key:?} was never written");
        }
    }
    for key in a.acked.iter().chain(&b.acked) {
        assert!(on_shards.contains(key), "acknowledged payment {key:?} lost");
    }
}
