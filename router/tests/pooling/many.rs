//! A thousand clients at once through pools of ten per database: pgbench
//! in the three query modes beside tokio-postgres clients in the simple,
//! extended and prepared styles, each client with settings and prepared
//! statements of its own, every answer checked.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::Barrier;

use super::{fleet, rows, Fleet, PASSWORD};

/// tokio-postgres clients; pgbench brings the rest of the thousand.
const DRIVERS: usize = 898;
/// pgbench processes (one per query mode) and their clients each.
const PGBENCH_CLIENTS: usize = 34;

/// A pgbench run of `-M mode` for `seconds`, its clients each started
/// with `app.id = 'pgbench'`, which its script checks (a wrong value
/// divides by zero, which pgbench counts as a failure).
fn pgbench(f: &Fleet, dir: &std::path::Path, mode: &str, seconds: u64) -> tokio::process::Child {
    // One file per pgbench: rewriting a shared one could empty it under a
    // pgbench that is reading it.
    let script = dir.join(format!("pay-{mode}.sql"));
    std::fs::write(
        &script,
        "\\set m random(1, 1000)\n\\set id random(1, 1000000000)\n\
         SELECT 1 / (current_setting('app.id') = 'pgbench')::int;\n\
         BEGIN;\n\
         INSERT INTO payments (id, merchant_id, amount) VALUES (:id, :m, 1) ON CONFLICT DO NOTHING;\n\
         SELECT amount FROM payments WHERE merchant_id = :m AND id = :id;\n\
         END;\n",
    )
    .unwrap();
    tokio::process::Command::new(f.server.bindir().program("pgbench"))
        .args([
            "-n",
            "-h",
            "127.0.0.1",
            "-p",
            &f.port.to_string(),
            "-U",
            "app",
        ])
        .args(["-c", &PGBENCH_CLIENTS.to_string(), "-j", "1"])
        .args(["-T", &seconds.to_string(), "-M", mode])
        .arg("-f")
        .arg(&script)
        .arg("app")
        .env("PGPASSWORD", PASSWORD)
        .env("PGOPTIONS", "-c app.id=pgbench")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_through_pools_of_ten_each_get_their_own_answers() {
    shardline_router::raise_fd_limit();
    let f =
        Arc::new(fleet("pool_size = 10\npool_timeout = \"60s\"\nlogin_timeout = \"120s\"").await);

    // Every driver client logs in and sets itself up, then waits until a
    // thousand clients are connected at once before it goes on.
    let all_in = Arc::new(Barrier::new(DRIVERS + 1));
    let go = Arc::new(Barrier::new(DRIVERS + 1));
    let drivers = (0..DRIVERS).map(|i| {
        let f = f.clone();
        let all_in = all_in.clone();
        let go = go.clone();
        tokio::spawn(async move {
            let c = f.client().await;
            let id = i as i64;
            c.batch_execute(&format!(
                "SET app.id = '{i}'; SET statement_timeout = '{}ms'",
                100_001 + i
            ))
            .await
            .unwrap();
            let mine = c
                .prepare("SELECT current_setting('app.id'), current_setting('statement_timeout'), $1::bigint * 2")
                .await
                .unwrap();
            let insert = c
                .prepare("INSERT INTO payments (id, merchant_id, amount) VALUES ($1, $2, $3)")
                .await
                .unwrap();
            all_in.wait().await;
            go.wait().await;
            for round in 0..3i64 {
                let merchant = 1 + (id * 7 + round) % 1000;
                match i % 3 {
                    // Simple protocol.
                    0 => {
                        let got = rows(
                            c.simple_query("SELECT current_setting('app.id'), current_setting('statement_timeout')")
                                .await
                                .unwrap(),
                        );
                        assert_eq!(got[0][0].as_deref(), Some(id.to_string().as_str()));
                        assert_eq!(got[0][1], Some(format!("{}ms", 100_001 + i)));
                        c.batch_execute(&format!(
                            "INSERT INTO payments (id, merchant_id, amount) VALUES ({}, {merchant}, {id})",
                            -(id * 10 + round) - 1
                        ))
                        .await
                        .unwrap();
                    }
                    // Extended, a statement prepared and closed each time.
                    1 => {
                        let row = c
                            .query_one("SELECT current_setting('app.id'), $1::bigint + 1", &[&round])
                            .await
                            .unwrap();
                        assert_eq!(row.get::<_, String>(0), id.to_string());
                        assert_eq!(row.get::<_, i64>(1), round + 1);
                        let n = c
                            .execute(
                                "INSERT INTO payments (id, merchant_id, amount) VALUES ($1, $2, $3)",
                                &[&(-(id * 10 + round) - 1), &merchant, &(id as i32)],
                            )
                            .await
                            .unwrap();
                        assert_eq!(n, 1);
                    }
                    // Prepared once, run many times.
                    _ => {
                        let row = c.query_one(&mine, &[&(id + round)]).await.unwrap();
                        assert_eq!(row.get::<_, String>(0), id.to_string());
                        assert_eq!(row.get::<_, String>(1), format!("{}ms", 100_001 + i));
                        assert_eq!(row.get::<_, i64>(2), (id + round) * 2);
                        let n = c
                            .execute(&insert, &[&(-(id * 10 + round) - 1), &merchant, &(id as i32)])
                            .await
                            .unwrap();
                        assert_eq!(n, 1);
                    }
                }
            }
            // Each row reads back on its merchant's shard, with its amount.
            let back = c
                .query_one(
                    "SELECT amount FROM payments WHERE merchant_id = $1 AND id = $2",
                    &[&(1 + (id * 7 + 2) % 1000), &(-(id * 10 + 2) - 1)],
                )
                .await
                .unwrap();
            assert_eq!(back.get::<_, Option<i32>>(0), Some(id as i32));
        })
    });
    let drivers: Vec<_> = drivers.collect();
    tokio::time::timeout(Duration::from_secs(300), all_in.wait())
        .await
        .expect("every driver client logged in");
    // pgbench's clients log in one after the other, then run for 40 s.
    let dir = tempfile::tempdir().unwrap();
    let mut benches: Vec<_> = ["simple", "extended", "prepared"]
        .into_iter()
        .map(|mode| (mode, pgbench(&f, dir.path(), mode, 40)))
        .collect();
    // A thousand at once: the drivers and pgbench's clients.
    let connected = || {
        f.proxy
            .metrics()
            .lines()
            .find_map(|l| l.strip_prefix("shardline_router_clients "))
            .unwrap()
            .parse::<usize>()
            .unwrap()
    };
    // pgbench logs its clients in one by one (SCRAM on both sides): on a
    // loaded machine that takes a while, so the wait is generous, and a
    // pgbench that gave up says why.
    let start = std::time::Instant::now();
    while connected() < DRIVERS + 3 * PGBENCH_CLIENTS {
        if let Some(i) = benches
            .iter_mut()
            .position(|(_, b)| b.try_wait().unwrap().is_some())
        {
            let (mode, bench) = benches.swap_remove(i);
            let out = bench.wait_with_output().await.unwrap();
            panic!(
                "pgbench -M {mode} ended before a thousand clients were in: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "not within 240 s: {} of a thousand clients connected",
            connected()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    go.wait().await;
    for done in join_all(drivers).await {
        done.unwrap();
    }
    for (mode, bench) in benches {
        let out = bench.wait_with_output().await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("number of failed transactions: 0"),
            "pgbench -M {mode}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mine: usize = (0..2)
        .map(|n| {
            f.on_shard(n, "SELECT count(*) FROM payments WHERE id < 0")
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert_eq!(mine, DRIVERS * 3);
    // Never more than ten backends per database.
    for row in f.show("shards").await {
        let open: usize = row[6].as_deref().unwrap().parse().unwrap();
        assert!(open <= 10, "{row:?}");
    }
}
