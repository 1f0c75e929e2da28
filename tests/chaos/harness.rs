//! A fleet behind fault proxies, a write load, and the comparison with the
//! source.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shardline_testkit::{FaultProxy, Faults, PgServer};
use shardline_topology::{ContextKind, Topology};

/// The monolith's tables. payments is REPLICA IDENTITY FULL (moves carry
/// the old row, and the read model is kept change by change); its note is
/// stored out of line, so unchanged notes travel as unchanged TOAST.
pub const SCHEMA: &str = "
CREATE TABLE payments (merchant_id bigint NOT NULL, id bigint NOT NULL, amount numeric(12,2) NOT NULL,
                       status text NOT NULL, note text, PRIMARY KEY (merchant_id, id));
ALTER TABLE payments ALTER note SET STORAGE EXTERNAL;
ALTER TABLE payments REPLICA IDENTITY FULL;
CREATE TABLE merchants (id bigint PRIMARY KEY, name text NOT NULL);
INSERT INTO merchants SELECT m, 'merchant ' || m FROM generate_series(1, 60) m;";

/// The read model kept in the analytics database.
pub const READ_MODEL: &str = "SELECT merchant_id, count(*) AS payments, sum(amount) AS volume FROM payments WHERE status = 'captured' GROUP BY 1";

/// The seed of a scenario: `SHARDLINE_CHAOS_SEED`, else the clock's. It is
/// printed, so the output of a failed test names it.
pub fn seed(scenario: &str) -> u64 {
    let seed = std::env::var("SHARDLINE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 % 1_000_000)
                .unwrap_or(1)
        });
    eprintln!("chaos {scenario}: seed {seed} (replay: SHARDLINE_CHAOS_SEED={seed} cargo test --test chaos {scenario})");
    seed
}

/// A small deterministic generator (splitmix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

pub struct Fleet {
    pub source: PgServer,
    /// Keeps the source's proxy (the topology's way to it) alive.
    pub _source_proxy: FaultProxy,
    pub shards: Vec<PgServer>,
    pub shard_proxies: Vec<FaultProxy>,
    pub analytics: PgServer,
    pub analytics_proxy: FaultProxy,
    pub _dir: tempfile::TempDir,
    pub config: PathBuf,
    pub router_port: u16,
}

pub const ROUTER_PASSWORD: &str = "chaos-pw";

impl Fleet {
    /// A monolith with `payments` rows of history, two shards and an
    /// analytics database, each reached through its own proxy.
    pub fn start(payments: u64) -> Fleet {
        Self::start_with(payments, false)
    }

    /// [`Fleet::start`], with `[cutover] enabled` when `cutover`.
    pub fn start_with(payments: u64, cutover: bool) -> Fleet {
        let cutover = if cutover {
            "[cutover]\nenabled = true\n"
        } else {
            ""
        };
        let source = PgServer::start().unwrap();
        source.psql("postgres", SCHEMA).unwrap();
        source
            .psql(
                "postgres",
                &format!(
                    "INSERT INTO payments SELECT 1 + i % 60, i, (i % 997) + 0.5, CASE WHEN i % 3 = 0 THEN 'captured' ELSE 'authorized' END,
                            CASE WHEN i % 10 = 0 THEN repeat(md5(i::text), 100) ELSE 'n' || i END
                       FROM generate_series(1, {payments}) i; ANALYZE"
                ),
            )
            .unwrap();
        let shards: Vec<PgServer> = (0..2).map(|_| PgServer::start().unwrap()).collect();
        let analytics = PgServer::start().unwrap();
        let source_proxy = FaultProxy::start(source.port()).unwrap();
        let shard_proxies: Vec<FaultProxy> = shards
            .iter()
            .map(|s| FaultProxy::start(s.port()).unwrap())
            .collect();
        let analytics_proxy = FaultProxy::start(analytics.port()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("shardline.toml");
        let router_port = free_port();
        std::fs::write(
            &config,
            format!(
                r#"[source]
url = "{}"
[contexts.transactions]
tables = ["payments"]
shard_key = "merchant_id"
shards = ["{}", "{}"]
[contexts.analytics]
url = "{}"
tables = ["merchants"]
[[read_models]]
name = "volume"
from = "payments"
where = "status = 'captured'"
group_by = ["merchant_id"]
aggregates = ["count(*) AS payments", "sum(amount) AS volume"]
context = "analytics"
[router]
listen = "127.0.0.1:{router_port}"
[[router.users]]
name = "app"
password = "{ROUTER_PASSWORD}"
{cutover}"#,
                source_proxy.url_of(&source, "postgres"),
                shard_proxies[0].url_of(&shards[0], "postgres"),
                shard_proxies[1].url_of(&shards[1], "postgres"),
                analytics_proxy.url_of(&analytics, "postgres"),
            ),
        )
        .unwrap();
        Fleet {
            source,
            _source_proxy: source_proxy,
            shards,
            shard_proxies,
            analytics,
            analytics_proxy,
            _dir: dir,
            config,
            router_port,
        }
    }

    pub fn topology(&self) -> Topology {
        Topology::load(&self.config).unwrap()
    }

    /// The faults of every connection to the source (the walsender's too).
    pub fn source_faults(&self) -> Faults {
        self._source_proxy.faults()
    }

    pub fn shard_faults(&self, i: usize) -> Faults {
        self.shard_proxies[i].faults()
    }

    /// How shardline names shard `i` in messages.
    pub fn shard_name(&self, i: usize) -> String {
        format!(
            "postgres@127.0.0.1:{}/postgres",
            self.shard_proxies[i].port()
        )
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardline"));
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn spawn(&self, args: &[&str]) -> Kill {
        Kill(
            self.command(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    /// Spawns with stderr to a log file (read it with [`tail`]): a long
    /// run's messages outlive a failed assertion.
    pub fn spawn_logged(&self, args: &[&str], name: &str) -> (Kill, PathBuf) {
        let log = std::env::temp_dir().join(format!(
            "shardline-chaos-{name}-{}-{}.log",
            std::process::id(),
            self.router_port
        ));
        let file = std::fs::File::create(&log).unwrap();
        let child = self
            .command(args)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        (Kill(child), log)
    }

    /// Waits until the slot confirmed the source's position of now.
    pub fn wait_caught_up(&self, slot: &str, within: Duration) -> bool {
        let target = self
            .source
            .psql("postgres", "SELECT pg_current_wal_insert_lsn()")
            .unwrap();
        let start = Instant::now();
        while start.elapsed() < within {
            let done = self.source.psql("postgres", &format!("SELECT confirmed_flush_lsn >= '{}' FROM pg_replication_slots WHERE slot_name = '{slot}'", target.trim()));
            if done.is_ok_and(|d| d.trim() == "t") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// Every shard holds exactly the source's rows of its buckets (none
    /// lost, doubled or misplaced), the analytics database the replica
    /// and the read model exactly as the source computes them.
    pub fn assert_exact(&self, context: &str) {
        let topology = self.topology();
        let ContextKind::Sharded { placement, .. } =
            &topology.context("transactions").unwrap().kind
        else {
            unreachable!()
        };
        let mut total = 0;
        for (i, shard) in self.shards.iter().enumerate() {
            let owned = placement.owned_by_shard_sql("merchant_id", i);
            let want = digest(&self.source, "payments", &owned);
            let have = digest(shard, "payments", "true");
            assert_eq!(have, want, "{context}: payments on shard {i}");
            total += have.split(' ').next().unwrap().parse::<u64>().unwrap();
        }
        let source_rows = digest(&self.source, "payments", "true");
        assert_eq!(
            source_rows
                .split(' ')
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap(),
            total,
            "{context}: every source row is on exactly one shard"
        );
        assert_eq!(
            digest(&self.analytics, "merchants", "true"),
            digest(&self.source, "merchants", "true"),
            "{context}: merchants"
        );
        assert_eq!(
            digest(&self.analytics, "volume", "true"),
            digest(&self.source, &format!("({READ_MODEL})"), "true"),
            "{context}: read model"
        );
    }
}

pub fn digest(server: &PgServer, table: &str, filter: &str) -> String {
    server
        .psql(
            "postgres",
            &format!("SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM {table} t WHERE {filter}"),
        )
        .unwrap()
        .trim()
        .to_string()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (SIGKILL) when dropped.
pub struct Kill(pub Child);

impl Kill {
    pub fn sigterm_and_wait(mut self) -> Output {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let child = std::mem::replace(&mut self.0, Command::new("true").spawn().unwrap());
        child.wait_with_output().unwrap()
    }

    /// Waits for the process to end by itself (at most two minutes).
    pub fn sigterm_after_exit(self) -> Output {
        let start = Instant::now();
        let mut me = self;
        while me.running() && start.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(100));
        }
        me.sigterm_and_wait()
    }

    pub fn sigkill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    pub fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A write load on the monolith, in rounds of one transaction each:
/// inserts (some with TOASTed notes), captures, TOASTed note updates,
/// merchants moved between shards (the key changes), deletes. A round
/// that fails (the server restarting) changes nothing and is counted.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub rounds: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    pub fn start(source: &PgServer, seed: u64) -> Load {
        let server = PgServer::attach(source.dir(), source.port()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (s, r, f) = (stop.clone(), rounds.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            let mut rng = Rng::new(seed);
            let mut round = 0u64;
            while !s.load(Ordering::SeqCst) {
                round += 1;
                let base = 1_000_000 + round * 1000;
                let m = rng.range(0, 7);
                let mv = rng.range(0, 13);
                let sql = format!(
                    "INSERT INTO payments SELECT 1 + g % 60, {base} + g, g + 0.25, 'authorized',
                            CASE WHEN g % 8 = 0 THEN repeat(md5(g::text || '{round}'), 90) ELSE 'r{round}' END
                       FROM generate_series(1, 300) g;
                     UPDATE payments SET status = 'captured' WHERE id % 7 = {m} AND status = 'authorized' AND id > {base} - 3000;
                     UPDATE payments SET note = 'toast ' || {round} || repeat('x', 3000) WHERE id % 29 = {mv} AND note LIKE 'toast%';
                     UPDATE payments SET amount = amount + 1 WHERE id % 31 = {m} AND length(note) > 2000;
                     UPDATE payments SET merchant_id = 1 + (merchant_id + 7) % 60 WHERE id % 53 = {mv} AND id < {base};
                     DELETE FROM payments WHERE id % 61 = {m} AND id < {base} - 500;
                     UPDATE merchants SET name = 'merchant ' || id || ' r{round}' WHERE id % 13 = {mv};"
                );
                match server.psql("postgres", &sql) {
                    Ok(_) => {
                        r.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => {
                        f.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        Load {
            stop,
            rounds,
            failed,
            thread: Some(thread),
        }
    }

    /// Stops after the round in flight; returns the rounds that committed.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        eprintln!(
            "load: {} rounds committed, {} failed (a server away)",
            self.rounds.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst)
        );
        self.rounds.load(Ordering::SeqCst)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The last lines of a log file.
pub fn tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
