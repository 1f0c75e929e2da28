//! The router through a shard that goes silent and a shard restarted under
//! load, seen from its clients: the other shard's merchants go on, the
//! silent shard's statements complete once it answers again, a restarted
//! shard serves again without a router restart, and every acknowledged
//! payment is on its shard exactly once (none lost, doubled or misplaced).

use std::time::{Duration, Instant};

use shardline_topology::{ContextKind, ShardKey};

use crate::harness::{digest, seed, stderr, Fleet, Rng, ROUTER_PASSWORD};

async fn connect(port: u16) -> tokio_postgres::Client {
    for _ in 0..100 {
        let connected = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(port)
            .user("app")
            .password(ROUTER_PASSWORD)
            .dbname("app")
            .connect_timeout(Duration::from_secs(5))
            .connect(tokio_postgres::NoTls)
            .await;
        if let Ok((client, connection)) = connected {
            tokio::spawn(connection);
            return client;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the router does not accept connections on {port}");
}

async fn insert(client: &tokio_postgres::Client, merchant: i64, id: i64) -> Result<(), String> {
    client
        .execute(
            "INSERT INTO payments (merchant_id, id, amount, status, note) VALUES ($1, $2, 1.00, 'authorized', 'router')",
            &[&merchant, &id],
        )
        .await
        .map(drop)
        .map_err(|e| shardline_topology::describe_pg_error(&e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_serves_other_shards_through_a_silent_shard_and_recovers_a_restarted_one() {
    let seed = seed("router");
    let mut rng = Rng::new(seed);
    let f = Fleet::start(500);
    let out = f.run(&["-q", "backfill"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let _router = f.spawn(&["-q", "router"]);
    let topology = f.topology();
    let ContextKind::Sharded { placement, .. } = &topology.context("transactions").unwrap().kind
    else {
        unreachable!()
    };
    let on = |shard: usize| -> Vec<i64> {
        (1..=60)
            .filter(|m| placement.shard(&ShardKey::Int(*m)) == shard)
            .collect()
    };
    let (zero, one) = (on(0), on(1));
    let a = connect(f.router_port).await;
    let b = connect(f.router_port).await;
    let mut acked: Vec<(i64, i64)> = Vec::new();
    let mut next_id = 50_000_000i64;

    // Shard 1 goes silent: its statement waits; shard 0's go on.
    let faults = f.shard_faults(1);
    faults.go_silent();
    let merchant = one[0];
    next_id += 1;
    let held_id = next_id;
    let held = tokio::spawn(async move { insert(&b, merchant, held_id).await.map(|()| b) });
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(2) {
        next_id += 1;
        let m = zero[rng.range(0, zero.len() as u64) as usize];
        insert(&a, m, next_id)
            .await
            .expect("shard 0 serves while shard 1 is silent");
        acked.push((m, next_id));
        served += 1;
    }
    assert!(served >= 5, "shard 0 served {served} statements");
    assert!(!held.is_finished(), "the silent shard's statement waits");
    faults.resume();
    let b = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("the held statement completes once the shard answers")
        .unwrap()
        .expect("and succeeds");
    acked.push((merchant, held_id));

    eprintln!("router: silent phase done at {:?}", started.elapsed());
    // Shard 1 restarted under load from two clients.
    let mut failed = Vec::new();
    let delay = Duration::from_millis(rng.range(300, 800));
    let mut shard1 =
        shardline_testkit::PgServer::attach(f.shards[1].dir(), f.shards[1].port()).unwrap();
    let restart = std::thread::spawn(move || {
        std::thread::sleep(delay);
        shard1.stop().unwrap();
        std::thread::sleep(Duration::from_millis(800));
        shard1.restart().unwrap();
    });
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        for (client, merchants) in [(&a, &zero), (&b, &one)] {
            next_id += 1;
            let m = merchants[rng.range(0, merchants.len() as u64) as usize];
            let t = Instant::now();
            match insert(client, m, next_id).await {
                Ok(()) => acked.push((m, next_id)),
                Err(e) => failed.push((m, next_id, e)),
            }
            if t.elapsed() > Duration::from_secs(2) {
                eprintln!("router: a statement took {:?}", t.elapsed());
            }
        }
    }
    restart.join().unwrap();
    eprintln!(
        "router: restart phase done at {:?}; {} failed",
        started.elapsed(),
        failed.len()
    );
    // Served again by the same router.
    next_id += 1;
    insert(&b, one[1], next_id)
        .await
        .expect("the restarted shard serves again without a router restart");
    acked.push((one[1], next_id));
    for (_, _, e) in &failed {
        assert!(
            e.contains("SQLSTATE 08") || e.contains("SQLSTATE 57P"),
            "a shard going away fails with a connection SQLSTATE: {e}"
        );
    }

    // Every acknowledged payment exactly once, on its shard; nothing on a
    // shard that does not belong there.
    for (i, shard) in f.shards.iter().enumerate() {
        let owned = placement.owned_by_shard_sql("merchant_id", i);
        assert_eq!(
            digest(shard, "payments", &format!("NOT ({owned})")),
            "0",
            "nothing misplaced on shard {i}"
        );
    }
    for (i, shard) in f.shards.iter().enumerate() {
        let keys: Vec<String> = acked
            .iter()
            .filter(|(m, _)| placement.shard(&ShardKey::Int(*m)) == i)
            .map(|(m, id)| format!("({m}, {id})"))
            .collect();
        if keys.is_empty() {
            continue;
        }
        let found = shard
            .psql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM (VALUES {}) k(m, id) JOIN payments p ON p.merchant_id = k.m AND p.id = k.id",
                    keys.join(", ")
                ),
            )
            .unwrap();
        assert_eq!(
            found.trim(),
            keys.len().to_string(),
            "every acknowledged payment of shard {i} is there once"
        );
    }
    let total: usize = f
        .shards
        .iter()
        .map(|s| {
            s.psql(
                "postgres",
                "SELECT count(*) FROM payments WHERE note = 'router'",
            )
            .unwrap()
            .trim()
            .parse::<usize>()
            .unwrap()
        })
        .sum();
    assert!(
        total >= acked.len() && total <= acked.len() + failed.len(),
        "{total} router payments for {} acknowledged and {} failed",
        acked.len(),
        failed.len()
    );
}
