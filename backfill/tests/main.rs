//! Backfill against real servers: a source, shards and an unsharded target.

use std::path::Path;
use std::time::Duration;

use shardline_backfill::{dry_run, prepare, run, BackfillError, BackfillRequest, Event};
use shardline_testkit::PgServer;
use shardline_topology::{ContextKind, Topology};
use tokio::sync::watch;

/// Every common type, a sharded table and an unsharded one.
const SCHEMA: &str = "
-- Labels that would end a dollar quote or a literal early.
CREATE TYPE mood AS ENUM ('calm', 'ok', 'élan', 'paid$$', 'it''s $shardline$');
CREATE TABLE ledger (
    merchant_id bigint NOT NULL,
    id          bigint NOT NULL,
    amount      numeric(18,2) NOT NULL,
    rate        numeric(12,6),
    big         numeric,
    at          timestamptz,
    day         date,
    meta        jsonb,
    token       uuid,
    raw         bytea,
    tags        text[],
    scores      int[],
    feeling     mood,
    note        text,
    code        char(3),
    flag        boolean,
    ratio       double precision,
    PRIMARY KEY (merchant_id, id)
);
CREATE INDEX ledger_at ON ledger (merchant_id, at);
CREATE TABLE accounts (id bigint PRIMARY KEY, name text NOT NULL);";

fn fill(source: &PgServer, from: i64, to: i64) {
    source
        .psql(
            "postgres",
            &format!(
                "INSERT INTO ledger SELECT i % 97, i, i * 1.01, i / 7.0, CASE WHEN i % 5 = 0 THEN 1e30 + i END,
                        '2024-03-31 23:59:59.123456+02'::timestamptz + i * interval '1 minute', date '1999-12-31' + i::int,
                        CASE WHEN i % 50 = 0 THEN jsonb_build_object('big', repeat(md5(i::text), 100)) WHEN i % 3 = 0 THEN NULL
                             ELSE jsonb_build_object('k', i, 'ü', 'ñ') END,
                        md5(i::text)::uuid, CASE WHEN i % 4 = 0 THEN '\\x00ff00'::bytea END,
                        ARRAY['a', NULL, 'Zürich'], ARRAY[i, -i], (ARRAY['calm', 'ok', 'élan']::mood[])[1 + i % 3],
                        CASE WHEN i % 6 = 0 THEN '' WHEN i % 7 = 0 THEN NULL ELSE '東京 ' || i END, 'EUR', i % 2 = 0, -0.0 + i / 3.0
                   FROM generate_series({from}, {to}) i;
                 INSERT INTO accounts SELECT i, 'acct ' || i FROM generate_series({from}, {to}) i;"
            ),
        )
        .unwrap();
}

struct Fleet {
    source: PgServer,
    shards: Vec<PgServer>,
    single: PgServer,
    topology: Topology,
}

fn fleet(rows: i64) -> Fleet {
    let source = PgServer::start().unwrap();
    source.psql("postgres", SCHEMA).unwrap();
    fill(&source, 1, rows);
    source.psql("postgres", "ANALYZE").unwrap();
    let shards = vec![
        PgServer::start().unwrap(),
        PgServer::start().unwrap(),
        PgServer::start().unwrap(),
    ];
    let single = PgServer::start().unwrap();
    let text = format!(
        "[source]\nurl = \"{}\"\n[contexts.tx]\ntables = [\"ledger\"]\nshard_key = \"merchant_id\"\nshards = [\"{}\", \"{}\", \"{}\"]\n[contexts.other]\ntables = [\"accounts\"]\nurl = \"{}\"\n[[read_models]]\nname = \"daily\"\nfrom = \"ledger\"\nwhere = \"flag\"\ngroup_by = [\"merchant_id\", \"date_trunc('day', at) AS day\", \"code\"]\naggregates = [\"count(*) AS n\", \"sum(amount) AS volume\", \"max(note) AS last_note\"]\ncontext = \"other\"\n",
        source.url("postgres"),
        shards[0].url("postgres"),
        shards[1].url("postgres"),
        shards[2].url("postgres"),
        single.url("postgres")
    );
    let topology = Topology::parse(&text, Path::new("t.toml")).unwrap();
    Fleet {
        source,
        shards,
        single,
        topology,
    }
}

fn rows(server: &PgServer, table: &str, filter: &str) -> String {
    server
        .psql(
            "postgres",
            &format!("SET TimeZone = 'UTC'; SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM {table} t WHERE {filter}"),
        )
        .unwrap()
}

fn assert_equal(f: &Fleet) {
    let ContextKind::Sharded { placement, .. } = &f.topology.context("tx").unwrap().kind else {
        unreachable!()
    };
    for (i, shard) in f.shards.iter().enumerate() {
        let owned = placement.owned_by_shard_sql("merchant_id", i);
        assert_eq!(
            rows(shard, "ledger", "true"),
            rows(&f.source, "ledger", &owned),
            "shard {i}"
        );
        let misplaced = shard
            .psql(
                "postgres",
                &format!("SELECT count(*) FROM ledger WHERE NOT {owned}"),
            )
            .unwrap();
        assert_eq!(misplaced.trim(), "0", "rows on the wrong shard {i}");
    }
    assert_eq!(
        rows(&f.single, "accounts", "true"),
        rows(&f.source, "accounts", "true")
    );
    let recomputed = "(SELECT merchant_id, date_trunc('day', at) AS day, code, count(*) AS n, sum(amount) AS volume, max(note) AS last_note
                        FROM ledger WHERE flag GROUP BY 1, 2, 3)";
    assert_eq!(
        rows(&f.single, "daily", "true"),
        rows(&f.source, recomputed, "true"),
        "read model"
    );
}

type Job = tokio::task::JoinHandle<Result<shardline_backfill::BackfillReport, BackfillError>>;

/// Starts a job in the background; the receiver hears of each chunk committed.
async fn start(
    f: &Fleet,
    req: &BackfillRequest,
    stop: watch::Receiver<bool>,
) -> (Job, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let prepared = prepare(&f.topology, req).await.unwrap();
    let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
    let req = req.clone();
    let job = tokio::spawn(async move {
        run(prepared, &req, stop, move |e| {
            if let Event::ChunkDone { .. } = e {
                let _ = done_tx.send(());
            }
        })
        .await
    });
    (job, done_rx)
}

fn request(chunk_rows: u64) -> BackfillRequest {
    BackfillRequest {
        chunk_rows,
        ..BackfillRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_arrives_exactly_on_the_right_shard_and_tables_are_created() {
    let f = fleet(5_000);
    let req = request(800);
    let prepared = prepare(&f.topology, &req).await.unwrap();
    let plan = dry_run(&prepared, &req).await.unwrap();
    let ledger = plan.iter().find(|p| p.table == "public.ledger").unwrap();
    assert!(ledger.chunks >= 4, "{plan:?}");
    assert_eq!(ledger.create, 3);
    assert_eq!(
        f.shards[0]
            .psql("postgres", "SELECT to_regclass('ledger') IS NULL")
            .unwrap()
            .trim(),
        "t",
        "a dry run writes nothing"
    );

    let (_stop, stop_rx) = watch::channel(false);
    let report = run(prepared, &req, stop_rx, |_| {}).await.unwrap();
    assert!(report.complete);
    assert_eq!(
        report
            .tables
            .iter()
            .find(|t| t.table == "public.ledger")
            .unwrap()
            .rows,
        5_000
    );
    assert_equal(&f);
    // Created from the source's definition: enum type, primary key, index.
    let shape = f.shards[1].psql("postgres", "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'ledger'::regclass AND attname = 'feeling'").unwrap();
    assert_eq!(shape.trim(), "mood");
    assert_eq!(
        f.shards[1]
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_indexes WHERE tablename = 'ledger'"
            )
            .unwrap()
            .trim(),
        "2"
    );
    // The slot CDC will stream from exists, at the recorded point.
    let slot = f.source.psql("postgres", "SELECT count(*) FROM pg_replication_slots s JOIN shardline.backfill_job j ON j.slot_name = s.slot_name AND j.consistent_lsn = s.confirmed_flush_lsn").unwrap();
    assert_eq!(slot.trim(), "1");

    // Running again does nothing more.
    let prepared = prepare(&f.topology, &req).await.unwrap();
    let (_stop, stop_rx) = watch::channel(false);
    let again = run(prepared, &req, stop_rx, |_| {}).await.unwrap();
    assert!(again.complete);
    assert_eq!(again.tables.iter().map(|t| t.rows).sum::<u64>(), 0);
    assert_equal(&f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_target_table_stops_everything_before_copying() {
    let f = fleet(100);
    f.shards[2].psql("postgres", "CREATE TABLE ledger (merchant_id bigint NOT NULL, id bigint NOT NULL, amount numeric(12,2) NOT NULL, PRIMARY KEY (id))").unwrap();
    let err = prepare(&f.topology, &request(1000))
        .await
        .err()
        .expect("differences are an error");
    let BackfillError::Differences(list) = &err else {
        panic!("{err}")
    };
    let text = list.join("\n");
    assert!(
        text.contains("column amount: numeric(18,2) NOT NULL on the source, numeric(12,2) NOT NULL on the target"),
        "{text}"
    );
    assert!(
        text.contains("column rate is missing on the target"),
        "{text}"
    );
    assert!(
        text.contains("primary key ledger_pkey: PRIMARY KEY (merchant_id, id) on the source, PRIMARY KEY (id) on the target"),
        "{text}"
    );
    assert_eq!(
        f.source
            .psql("postgres", "SELECT count(*) FROM pg_replication_slots")
            .unwrap()
            .trim(),
        "0"
    );
    assert_eq!(
        f.shards[0]
            .psql("postgres", "SELECT to_regclass('ledger') IS NULL")
            .unwrap()
            .trim(),
        "t"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_mid_copy_resumes_to_exactly_the_source() {
    let f = fleet(6_000);
    let req = BackfillRequest {
        workers: 2,
        ..request(300)
    };
    for kill_after in [2u64, 5, 9] {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (job, mut done_rx) = start(&f, &req, stop_rx).await;
        for _ in 0..kill_after {
            if done_rx.recv().await.is_none() {
                break;
            }
        }
        // Dropping the job mid-copy: connections close without a word, the
        // snapshot's holder dies, chunks in flight never commit.
        job.abort();
        let _ = job.await;
        drop(stop_tx);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let prepared = prepare(&f.topology, &req).await.unwrap();
    let (_stop, stop_rx) = watch::channel(false);
    let report = run(prepared, &req, stop_rx, |_| {}).await.unwrap();
    assert!(report.complete);
    assert!(
        report.generation > 1,
        "the snapshot died, so a new generation copied the rest"
    );
    assert_equal(&f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_job() {
    let f = fleet(4_000);
    // Slow enough that the second process joins while the first copies.
    let req = BackfillRequest {
        workers: 1,
        max_rows_per_sec: Some(2_000),
        ..request(250)
    };
    let (_stop, stop_rx) = watch::channel(false);
    let (planned_tx, mut planned_rx) = tokio::sync::mpsc::unbounded_channel();
    let prepared = prepare(&f.topology, &req).await.unwrap();
    let (r1, s1) = (req.clone(), stop_rx.clone());
    let leader = tokio::spawn(async move {
        run(prepared, &r1, s1, move |e| {
            if let Event::Planned { .. } = e {
                let _ = planned_tx.send(());
            }
        })
        .await
    });
    planned_rx.recv().await.unwrap();
    let prepared = prepare(&f.topology, &req).await.unwrap();
    let joiner = run(prepared, &req, stop_rx, |_| {}).await.unwrap();
    let leader = leader.await.unwrap().unwrap();
    assert!(leader.complete);
    assert!(
        !joiner.complete,
        "only the snapshot's holder closes the job"
    );
    let chunks =
        |r: &shardline_backfill::BackfillReport| r.tables.iter().map(|t| t.chunks).sum::<u32>();
    assert!(chunks(&joiner) > 0, "the second process copied some chunks");
    assert!(chunks(&leader) > 0);
    assert_equal(&f);
}

/// Streams changes with CDC from the backfill's slot until the targets have
/// everything the source has.
async fn follow_with_cdc(f: &Fleet) {
    let options = shardline_cdc::run::RunOptions {
        heartbeat: Duration::from_millis(200),
        ..Default::default()
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (topology, opts) = (f.topology.clone(), options.clone());
    let cdc = tokio::spawn(async move { shardline_cdc::run::run(&topology, &opts, stop_rx).await });
    let target = f
        .source
        .psql("postgres", "SELECT pg_current_wal_insert_lsn()")
        .unwrap();
    for _ in 0..600 {
        let done = f
            .source
            .psql("postgres", &format!("SELECT confirmed_flush_lsn >= '{}' FROM pg_replication_slots WHERE slot_name = 'shardline'", target.trim()))
            .unwrap();
        if done.trim() == "t" || cdc.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    cdc.await.unwrap().unwrap();
}

fn churn(source: &PgServer, round: i64) {
    source
        .psql(
            "postgres",
            &format!(
                "UPDATE ledger SET amount = amount + {round}, note = 'round {round}' WHERE id % 11 = {r};
                 DELETE FROM ledger WHERE id % 13 = {r};
                 INSERT INTO ledger (merchant_id, id, amount) SELECT i % 97, 100000 * {round} + i, i FROM generate_series(1, 50) i;
                 UPDATE ledger SET merchant_id = merchant_id + 1000 WHERE id % 17 = {r};
                 UPDATE accounts SET name = name || '!' WHERE id % 5 = {r};",
                r = round % 11
            ),
        )
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_during_and_after_a_resumed_backfill_arrive_once_through_cdc() {
    let f = fleet(6_000);
    let slow = BackfillRequest {
        workers: 1,
        max_rows_per_sec: Some(6_000),
        ..request(500)
    };
    // First attempt: copy part, change the source, die.
    let (_stop, stop_rx) = watch::channel(false);
    let (job, mut done_rx) = start(&f, &slow, stop_rx).await;
    done_rx.recv().await.unwrap();
    churn(&f.source, 1);
    done_rx.recv().await.unwrap();
    job.abort();
    let _ = job.await;
    churn(&f.source, 2);

    // The resumed run copies from a new snapshot while the source changes.
    let prepared = prepare(&f.topology, &slow).await.unwrap();
    let (_stop, stop_rx) = watch::channel(false);
    let r = slow.clone();
    let job = tokio::spawn(async move { run(prepared, &r, stop_rx, |_| {}).await });
    churn(&f.source, 3);
    let report = job.await.unwrap().unwrap();
    assert!(report.complete && report.generation == 2, "{report:?}");
    churn(&f.source, 4);

    follow_with_cdc(&f).await;
    assert_equal(&f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_shard_keys_stop_the_job_with_the_table_and_count() {
    let f = fleet(50);
    f.source
        .psql("postgres", "ALTER TABLE ledger DROP CONSTRAINT ledger_pkey; ALTER TABLE ledger ALTER merchant_id DROP NOT NULL; ALTER TABLE ledger REPLICA IDENTITY FULL; UPDATE ledger SET merchant_id = NULL WHERE id <= 3")
        .unwrap();
    let err = prepare(&f.topology, &request(1000))
        .await
        .err()
        .expect("NULL keys are refused");
    assert!(
        matches!(&err, BackfillError::NullShardKey { count: 3, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("public.ledger") && err.to_string().contains("merchant_id"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_request_rolls_back_in_flight_chunks_and_the_next_run_finishes() {
    let f = fleet(4_000);
    let slow = BackfillRequest {
        max_rows_per_sec: Some(4_000),
        ..request(400)
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (job, mut done_rx) = start(&f, &slow, stop_rx).await;
    done_rx.recv().await.unwrap();
    stop_tx.send(true).unwrap();
    let err = job
        .await
        .unwrap()
        .expect_err("a stopped job is not a success");
    assert!(matches!(err, BackfillError::Interrupted), "{err}");
    let prepared = prepare(&f.topology, &request(400)).await.unwrap();
    let (_stop, stop_rx) = watch::channel(false);
    assert!(
        run(prepared, &request(400), stop_rx, |_| {})
            .await
            .unwrap()
            .complete
    );
    assert_equal(&f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_lost_mid_run_is_named_and_the_job_resumes_after_it_returns() {
    let mut f = fleet(6_000);
    let slow = BackfillRequest {
        workers: 1,
        max_rows_per_sec: Some(6_000),
        ..request(300)
    };
    let (_stop, stop_rx) = watch::channel(false);
    let (job, mut done_rx) = start(&f, &slow, stop_rx).await;
    done_rx.recv().await.unwrap();
    f.shards[1].stop().unwrap();
    let err = job.await.unwrap().expect_err("a lost shard stops the job");
    let port = f.shards[1].port().to_string();
    assert!(
        err.to_string().contains(&port),
        "the error names the shard: {err}"
    );
    assert!(err.hint().unwrap().contains("again"), "{err}");

    f.shards[1].restart().unwrap();
    let prepared = prepare(&f.topology, &request(300)).await.unwrap();
    let (_stop, stop_rx) = watch::channel(false);
    assert!(
        run(prepared, &request(300), stop_rx, |_| {})
            .await
            .unwrap()
            .complete
    );
    assert_equal(&f);
}
