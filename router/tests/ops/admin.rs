//! `SHOW shardline.shards` and `SHOW shardline.stats` through the router, in
//! the simple and the extended protocol and from psql, and the Prometheus
//! text counting the same statements.

use std::process::Command;

use tokio_postgres::SimpleQueryMessage;

use super::{code, split, PASSWORD, SHARD_PASSWORD};

fn rows(messages: Vec<SimpleQueryMessage>) -> Vec<Vec<Option<String>>> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_shards_and_stats_answer_in_both_protocols_and_metrics_count_the_same() {
    let mut f = split().await;
    let a = (1..).find(|m| f.shard(*m) == 0).unwrap();
    let b = (1..).find(|m| f.shard(*m) == 1).unwrap();
    let c = f.client().await;
    // One statement kept for the whole test: tokio-postgres closes a
    // dropped one, and the router may send that Close to either shard.
    let count = c
        .prepare("SELECT count(*) FROM payments WHERE merchant_id = $1")
        .await
        .unwrap();
    for m in [a, b, b] {
        c.query(&count, &[&m]).await.unwrap();
    }
    let e = c
        .simple_query(&format!(
            "SELECT nope FROM payments WHERE merchant_id = {b}"
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42703");

    // Simple protocol: text values, one row per shard.
    let shards = rows(c.simple_query("SHOW shardline.shards").await.unwrap());
    assert_eq!(shards.len(), 2, "{shards:?}");
    for (i, row) in shards.iter().enumerate() {
        let row: Vec<&str> = row.iter().map(|v| v.as_deref().unwrap_or("NULL")).collect();
        assert_eq!(row[0], "transactions");
        assert_eq!(row[1], i.to_string());
        assert!(
            row[2].ends_with(&format!(":{}/tx", f.servers[i].port())),
            "{row:?}"
        );
        assert!(!row[2].contains(SHARD_PASSWORD));
        assert_eq!(row[3], ["0-511", "512-1023"][i]);
        assert_eq!(row[4], "up");
        assert_eq!(row[5], "8");
        assert_eq!(row[9], "NULL");
    }

    // Extended protocol (tokio-postgres asks for binary results).
    let stats = c.query("SHOW shardline.stats", &[]).await.unwrap();
    assert_eq!(stats.len(), 2);
    let queries = |s: usize| stats[s].get::<_, i64>("queries");
    let errors = |s: usize| stats[s].get::<_, i64>("errors");
    // Shard 0 also answered the startup of the session and the prepares.
    assert!(
        queries(0) >= 1 && queries(1) >= 3,
        "{} {}",
        queries(0),
        queries(1)
    );
    assert_eq!((errors(0), errors(1)), (0, 1));
    let p99: Option<f64> = stats[1].get("p99_ms");
    let p50: Option<f64> = stats[1].get("p50_ms");
    assert!(p50.unwrap() > 0.0 && p99.unwrap() >= p50.unwrap());
    // A prepared SHOW runs again and sees the queries in between.
    let show = c.prepare("show shardline.stats;").await.unwrap();
    c.query(&count, &[&b]).await.unwrap();
    let again = c.query(&show, &[]).await.unwrap();
    assert_eq!(again[1].get::<_, i64>("queries"), queries(1) + 1);

    let text = f.proxy.metrics();
    let shard1 = format!(
        "context=\"transactions\",shard=\"1\",database=\"postgres@127.0.0.1:{}/tx\"",
        f.servers[1].port()
    );
    for line in [
        format!(
            "shardline_router_queries_total{{{shard1}}} {}",
            queries(1) + 1
        ),
        format!("shardline_router_errors_total{{{shard1}}} 1"),
        format!("shardline_router_up{{{shard1}}} 1"),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }

    // psql shows the same, as a table.
    let out = Command::new(f.servers[0].bindir().program("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-U",
            "app",
            "-d",
            "app",
        ])
        .args(["-p", &f.port.to_string(), "-c", "SHOW shardline.shards"])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().count() == 2 && stdout.contains("|512-1023|up|8|"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A shard that is down says so, with the cause but not the password.
    tokio::task::block_in_place(|| f.servers[1].stop()).unwrap();
    let fresh = f.client().await;
    fresh
        .simple_query(&format!("SELECT 1 FROM payments WHERE merchant_id = {b}"))
        .await
        .unwrap_err();
    let shards = rows(fresh.simple_query("SHOW shardline.shards").await.unwrap());
    assert_eq!(shards[1][4].as_deref(), Some("down"));
    let cause = shards[1][9].clone().unwrap();
    assert!(
        cause.contains("cannot reach") && !cause.contains(SHARD_PASSWORD),
        "{cause}"
    );
    assert!(f
        .proxy
        .metrics()
        .contains(&format!("shardline_router_up{{{shard1}}} 0")));
}
