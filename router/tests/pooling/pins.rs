//! Transaction pooling: a few backends serve many clients, each client's
//! settings and prepared statements follow it, and what cannot follow
//! pins the client, visibly in `SHOW shardline.clients`.

use std::time::Duration;

use futures_util::future::join_all;
use tokio_postgres::{AsyncMessage, NoTls};

use super::{fleet, rows, Fleet};

/// The `SHOW shardline.clients` row of the client with this
/// application_name: user, application_name, address, state, backends,
/// pinned, connected_since.
async fn client_row(f: &Fleet, app: &str) -> Vec<Option<String>> {
    let all = f.show("clients").await;
    all.into_iter()
        .find(|r| r[1].as_deref() == Some(app))
        .unwrap_or_else(|| panic!("no client {app}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backends_serve_twelve_clients_each_with_its_own_settings_and_statements() {
    let f = fleet("pool_size = 2").await;
    let mut clients = Vec::new();
    for i in 0..12i64 {
        // application_name from the startup packet, the rest by SET.
        let conn = format!("{} application_name=c{i}", f.conn_string());
        let (c, connection) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
        tokio::spawn(connection);
        c.batch_execute(&format!(
            "SET app.client = '{i}'; SET statement_timeout = '{}ms'",
            1001 + i
        ))
        .await
        .unwrap();
        let mine = c
            .prepare("SELECT current_setting('app.client'), current_setting('statement_timeout'), $1::bigint + 0")
            .await
            .unwrap();
        let insert = c
            .prepare("INSERT INTO payments (id, merchant_id, note) VALUES ($1, $2, current_setting('app.client'))")
            .await
            .unwrap();
        clients.push((i, c, mine, insert));
    }
    for round in 0..4i64 {
        let answers = clients.iter().map(|(i, c, mine, insert)| async move {
            let row = c.query_one(mine, &[&(round * 100 + i)]).await.unwrap();
            assert_eq!(row.get::<_, String>(0), i.to_string());
            assert_eq!(row.get::<_, String>(1), format!("{}ms", 1001 + i));
            assert_eq!(row.get::<_, i64>(2), round * 100 + i);
            let shown = c.simple_query("SHOW application_name").await.unwrap();
            assert_eq!(rows(shown)[0][0].as_deref(), Some(format!("c{i}").as_str()));
            // On the merchant's shard, whichever backend serves it.
            c.execute(insert, &[&round, &(i + 1)]).await.unwrap();
        });
        join_all(answers).await;
    }
    for n in 0..2 {
        for row in f
            .on_shard(n, "SELECT merchant_id, note FROM payments")
            .lines()
        {
            let (m, note) = row.split_once('|').unwrap();
            assert_eq!(note, (m.parse::<i64>().unwrap() - 1).to_string(), "{row}");
        }
    }
    let total: usize = (0..2)
        .map(|n| {
            f.on_shard(n, "SELECT count(*) FROM payments")
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert_eq!(total, 48);
    // Never more than the pool's two connections per shard.
    for row in f.show("shards").await {
        let open: usize = row[6].as_deref().unwrap().parse().unwrap();
        assert!(open <= 2, "{row:?}");
    }
    // Idle clients hold nothing.
    let c3 = client_row(&f, "c3").await;
    assert_eq!(c3[0].as_deref(), Some("app"));
    assert_eq!(c3[3].as_deref(), Some("idle"));
    assert_eq!(c3[4].as_deref(), Some("0"));
    assert_eq!(c3[5], None);
    assert!(c3[6].is_some());
    // A client that set nothing sees the server's defaults.
    let fresh = f.client().await;
    let shown = rows(fresh.simple_query("SHOW statement_timeout").await.unwrap());
    assert_eq!(shown[0][0].as_deref(), Some("0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_and_session_locks_pin_their_client_and_leave_with_it() {
    let f = fleet("pool_size = 3").await;
    let conn = |app: &str| format!("{} application_name={app}", f.conn_string());

    // LISTEN: the client keeps its backend, and its notifications come.
    let (listener, mut connection) = tokio_postgres::connect(&conn("listener"), NoTls)
        .await
        .unwrap();
    let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = futures_util::StreamExt::next(&mut messages).await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    listener
        .batch_execute("LISTEN payments_changed")
        .await
        .unwrap();
    let row = client_row(&f, "listener").await;
    assert_eq!(row[5].as_deref(), Some("LISTEN"), "{row:?}");
    assert_eq!(
        (row[3].as_deref(), row[4].as_deref()),
        (Some("idle"), Some("1"))
    );
    let other = f.client().await;
    other
        .batch_execute("NOTIFY payments_changed, 'paid'")
        .await
        .unwrap();
    listener.batch_execute("SELECT 1").await.unwrap();
    let note = tokio::time::timeout(Duration::from_secs(5), notes.recv()).await;
    assert_eq!(note.unwrap().as_deref(), Some("paid"));

    // A session advisory lock stays with its client until it leaves.
    let (locker, locker_conn) = tokio_postgres::connect(&conn("locker"), NoTls)
        .await
        .unwrap();
    let locker_task = tokio::spawn(locker_conn);
    locker
        .batch_execute("SELECT pg_advisory_lock(42)")
        .await
        .unwrap();
    let row = client_row(&f, "locker").await;
    assert_eq!(row[5].as_deref(), Some("session advisory lock"), "{row:?}");
    let taken = |c: tokio_postgres::Client| async move {
        c.query_one("SELECT pg_try_advisory_lock(42)", &[])
            .await
            .unwrap()
            .get::<_, bool>(0)
    };
    assert!(!taken(f.client().await).await, "the lock is held");
    drop(locker);
    locker_task.await.unwrap().unwrap();
    // Its backend was reset (DISCARD ALL) before anyone else got it.
    Fleet::eventually(Duration::from_secs(10), "the lock is released", || async {
        taken(f.client().await).await
    })
    .await;

    // A transaction-scoped lock pins nothing.
    let (xact, xact_conn) = tokio_postgres::connect(&conn("xact"), NoTls).await.unwrap();
    tokio::spawn(xact_conn);
    xact.batch_execute("BEGIN; SELECT pg_advisory_xact_lock(43); COMMIT")
        .await
        .unwrap();
    let row = client_row(&f, "xact").await;
    assert_eq!((row[4].as_deref(), row[5].as_deref()), (Some("0"), None));
}

/// Settings scripts the shard's server has run (`log_statement = all`).
fn settings_runs(f: &Fleet) -> usize {
    let log = std::fs::read_to_string(f.server.dir().join("server.log")).unwrap();
    log.lines()
        .filter(|l| l.contains("statement: RESET ALL"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_with_the_same_settings_share_a_backend_without_setting_it_again() {
    let f = fleet("pool_size = 1").await;
    for sql in [
        "ALTER SYSTEM SET log_statement = 'all'",
        "SELECT pg_reload_conf()",
    ] {
        f.server.psql("postgres", sql).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let login = |app: &str| format!("{} application_name={app}", f.conn_string());
    let mut fleet_pods = Vec::new();
    for _ in 0..3 {
        let (c, connection) = tokio_postgres::connect(&login("pod"), NoTls).await.unwrap();
        tokio::spawn(connection);
        fleet_pods.push(c);
    }
    let m = f.merchant_on(0);
    let sql = format!(
        "SELECT current_setting('application_name'), count(*) FROM payments WHERE merchant_id = {m}"
    );
    for round in 0..5 {
        for c in &fleet_pods {
            let row = c.query_one(&sql, &[]).await.unwrap();
            assert_eq!(row.get::<_, String>(0), "pod", "round {round}");
        }
    }
    // One backend served fifteen transactions of three clients alike: it
    // was given their settings once.
    assert_eq!(settings_runs(&f), 1);
    // A client with other settings takes the backend, and the next pod
    // gets its own back: two more runs, and each sees its own.
    let (other, connection) = tokio_postgres::connect(&login("other"), NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = other.query_one(&sql, &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "other");
    let row = fleet_pods[0].query_one(&sql, &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "pod");
    assert_eq!(settings_runs(&f), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pooling_keeps_backends_for_the_session() {
    let f = fleet("pool_mode = \"session\"").await;
    let conn = format!("{} application_name=keeper", f.conn_string());
    let (c, connection) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
    tokio::spawn(connection);
    let m = f.merchant_on(1);
    c.batch_execute(&format!(
        "SET app.x = 'kept'; INSERT INTO payments (id, merchant_id) VALUES (1, {m})"
    ))
    .await
    .unwrap();
    let row = client_row(&f, "keeper").await;
    assert_eq!(row[5].as_deref(), Some("pool_mode session"), "{row:?}");
    let held: usize = row[4].as_deref().unwrap().parse().unwrap();
    assert!(held >= 1, "{row:?}");
    let kept = c
        .query_one("SELECT current_setting('app.x')", &[])
        .await
        .unwrap();
    assert_eq!(kept.get::<_, String>(0), "kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_by_name_forgets_the_client_s_statement() {
    use super::wire::{frame, pipeline, sqlstate, Wire};
    let f = fleet("pool_size = 2").await;
    let mut w = Wire::login(f.port).await;
    w.send(&pipeline("s1", "SELECT 1", b'S')).await;
    let answer = w.until(b'Z').await;
    assert!(answer.iter().any(|m| m.0 == b'D'), "{answer:?}");
    w.send(&frame(b'Q', b"DEALLOCATE s1\0")).await;
    let answer = w.until(b'Z').await;
    assert_eq!(answer[0].0, b'C', "{answer:?}");
    // Bound again: PostgreSQL's answer for a statement that is gone.
    let mut bind = vec![0u8];
    bind.extend_from_slice(b"s1\0");
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    w.send(&frame(b'B', &bind)).await;
    w.send(&frame(b'S', &[])).await;
    let answer = w.until(b'Z').await;
    assert_eq!(sqlstate(&answer[0].1), "26000", "{answer:?}");
    w.send(&frame(b'Q', b"DEALLOCATE never_prepared\0")).await;
    let answer = w.until(b'Z').await;
    assert_eq!(sqlstate(&answer[0].1), "26000", "{answer:?}");
    // Another client's statement of the same text is untouched.
    let other = f.client().await;
    let again = other.prepare("SELECT 1").await.unwrap();
    assert_eq!(
        other.query_one(&again, &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}
