//! A fault-injecting TCP proxy for tests: put it between shardline and a
//! database, then make that database slow, throttled, cut off, silent or
//! unreachable from the test, through a [`Faults`] handle.
//!
//! ```no_run
//! # use shardline_testkit::{FaultProxy, PgServer};
//! # use std::time::Duration;
//! let shard = PgServer::start().unwrap();
//! let proxy = FaultProxy::start(shard.port()).unwrap();
//! let url = proxy.url_of(&shard, "postgres");  // give this to shardline
//! let faults = proxy.faults();
//! faults.set_latency(Duration::from_millis(100), Duration::from_millis(20));
//! faults.cut_after_bytes(64 << 10); // cut every connection 64 KiB from now
//! faults.refuse_for(Duration::from_secs(2));
//! faults.clear();
//! ```
//!
//! Each connection is two directions; each direction is a reader thread
//! that stamps every chunk with the time it may leave and a writer thread
//! that delivers it then, so latency delays data without serialising it
//! (a stream of chunks all arrive `latency` late, not `latency` apart).
//! Plain threads and blocking sockets: tests drive the proxy from any
//! runtime, or none. Faults apply to both directions:
//!
//! - **latency and jitter**: each chunk leaves `latency` ± up to `jitter`
//!   after it arrived (never before an earlier chunk): a round trip costs
//!   twice the latency;
//! - **bandwidth**: each direction writes at most this many bytes a second,
//!   evenly (about every 10 ms), as a slow link or a slow sender would;
//! - **cut**: every open connection is closed now ([`Faults::cut_all`]), or
//!   once `n` more bytes have passed ([`Faults::cut_after_bytes`]; the
//!   chunk that reaches `n` is cut short, mid-message);
//! - **silence**: nothing is forwarded while the sockets stay open, as a
//!   peer that hangs ([`Faults::go_silent`], [`Faults::resume`]); reads
//!   stop too, so the sender's buffers fill up;
//! - **refusal**: new connections are closed at once, as a server that is
//!   restarting ([`Faults::refuse_for`], [`Faults::refuse`]).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How often blocked threads look at the faults and the stop flag.
const POLL: Duration = Duration::from_millis(10);
/// Chunks in flight per direction before the reader stops reading.
const CHUNKS_IN_FLIGHT: usize = 256;
const CHUNK: usize = 16 << 10;

/// A running proxy in front of one upstream address.
pub struct FaultProxy {
    port: u16,
    faults: Faults,
    acceptor: Option<thread::JoinHandle<()>>,
}

/// The test's handle on a proxy's faults. Cheap to clone; every clone
/// controls the same proxy.
#[derive(Clone)]
pub struct Faults {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    latency_ms: AtomicU64,
    jitter_ms: AtomicU64,
    /// Bytes a second per direction; 0: unlimited.
    bandwidth: AtomicU64,
    silent: AtomicBool,
    /// New connections are closed at once until this instant.
    refuse_until: Mutex<Option<Instant>>,
    /// Bytes left before every connection is cut; negative: no such cut.
    cut_budget: AtomicI64,
    /// Open connections, to be cut.
    open: Mutex<Vec<Conn>>,
    /// Connections accepted and forwarded, and refused.
    accepted: AtomicU64,
    refused: AtomicU64,
    /// Bytes delivered, both directions.
    forwarded: AtomicU64,
    /// Times connections were cut.
    cuts: AtomicU64,
    rng: Mutex<u64>,
}

struct Conn {
    id: u64,
    client: TcpStream,
    server: TcpStream,
    closed: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16) -> std::io::Result<Self> {
        Self::start_to(SocketAddr::from(([127, 0, 0, 1], upstream_port)))
    }

    /// Listens on a free loopback port and forwards to `upstream`.
    pub fn start_to(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            cut_budget: AtomicI64::new(-1),
            rng: Mutex::new(0x9E37_79B9_7F4A_7C15 ^ u64::from(port)),
            ..Shared::default()
        });
        let faults = Faults {
            shared: Arc::clone(&shared),
        };
        let acceptor = thread::Builder::new()
            .name(format!("fault-proxy-{port}"))
            .spawn(move || accept_loop(listener, upstream, shared))?;
        Ok(Self {
            port,
            faults,
            acceptor: Some(acceptor),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `server`'s URL for `dbname`, through this proxy.
    pub fn url_of(&self, server: &crate::PgServer, dbname: &str) -> String {
        server.url(dbname).replacen(
            &format!(":{}/", server.port()),
            &format!(":{}/", self.port),
            1,
        )
    }

    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.faults.shared.stop.store(true, Ordering::SeqCst);
        self.faults.cut_all();
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

impl Faults {
    /// Delays every chunk by `latency` plus up to `jitter` (each direction).
    pub fn set_latency(&self, latency: Duration, jitter: Duration) {
        let s = &self.shared;
        s.latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
        s.jitter_ms
            .store(jitter.as_millis() as u64, Ordering::SeqCst);
    }

    /// At most `bytes_per_sec` each direction (`None`: unlimited).
    pub fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        self.shared
            .bandwidth
            .store(bytes_per_sec.unwrap_or(0), Ordering::SeqCst);
    }

    /// Closes every open connection now.
    pub fn cut_all(&self) {
        let conns: Vec<Conn> = std::mem::take(&mut *lock(&self.shared.open));
        if !conns.is_empty() {
            self.shared.cuts.fetch_add(1, Ordering::SeqCst);
        }
        for c in conns {
            close(&c);
        }
    }

    /// Cuts every open connection once `bytes` more have been delivered
    /// (either direction), in the middle of the chunk that reaches it.
    pub fn cut_after_bytes(&self, bytes: u64) {
        self.shared
            .cut_budget
            .store(bytes.min(i64::MAX as u64) as i64, Ordering::SeqCst);
    }

    /// Stops forwarding (sockets stay open) until [`Faults::resume`].
    pub fn go_silent(&self) {
        self.shared.silent.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.shared.silent.store(false, Ordering::SeqCst);
    }

    /// Closes new connections at once for `duration`.
    pub fn refuse_for(&self, duration: Duration) {
        *lock(&self.shared.refuse_until) = Some(Instant::now() + duration);
    }

    /// Closes new connections at once (`true`) until called with `false`.
    pub fn refuse(&self, on: bool) {
        *lock(&self.shared.refuse_until) = on.then(|| Instant::now() + Duration::from_secs(86_400));
    }

    /// Removes every fault (open connections stay open).
    pub fn clear(&self) {
        let s = &self.shared;
        s.latency_ms.store(0, Ordering::SeqCst);
        s.jitter_ms.store(0, Ordering::SeqCst);
        s.bandwidth.store(0, Ordering::SeqCst);
        s.silent.store(false, Ordering::SeqCst);
        s.cut_budget.store(-1, Ordering::SeqCst);
        *lock(&s.refuse_until) = None;
    }

    /// Seeds the jitter, so a run can be replayed.
    pub fn seed(&self, seed: u64) {
        *lock(&self.shared.rng) = seed | 1;
    }

    /// Connections forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections closed at once while refusing.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Bytes delivered so far, both directions.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// Times open connections were cut.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        lock(&self.shared.open).len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn close(c: &Conn) {
    c.closed.store(true, Ordering::SeqCst);
    let _ = c.client.shutdown(Shutdown::Both);
    let _ = c.server.shutdown(Shutdown::Both);
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut next_id = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(POLL);
                continue;
            }
            Err(_) => {
                thread::sleep(POLL);
                continue;
            }
        };
        let refusing = lock(&shared.refuse_until).is_some_and(|until| Instant::now() < until);
        if refusing {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let _ = client.set_nonblocking(false);
        let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        next_id += 1;
        let closed = Arc::new(AtomicBool::new(false));
        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        lock(&shared.open).push(Conn {
            id: next_id,
            client: c2,
            server: s2,
            closed: Arc::clone(&closed),
        });
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        for (from, to) in [(&client, &server), (&server, &client)] {
            let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                continue;
            };
            pump(from, to, next_id, Arc::clone(&shared), Arc::clone(&closed));
        }
    }
}

/// One direction: a reader stamping chunks, a writer delivering them.
fn pump(from: TcpStream, to: TcpStream, id: u64, shared: Arc<Shared>, closed: Arc<AtomicBool>) {
    let (tx, rx) = sync_channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    let (s, c) = (Arc::clone(&shared), Arc::clone(&closed));
    let _ = thread::Builder::new()
        .name("fault-proxy-read".into())
        .spawn(move || read_side(from, tx, s, c));
    let _ = thread::Builder::new()
        .name("fault-proxy-write".into())
        .spawn(move || write_side(to, rx, id, shared, closed));
}

fn read_side(
    mut from: TcpStream,
    tx: SyncSender<(Instant, Vec<u8>)>,
    shared: Arc<Shared>,
    closed: Arc<AtomicBool>,
) {
    let _ = from.set_read_timeout(Some(POLL * 5));
    let mut last = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    loop {
        if closed.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst) {
            return;
        }
        // A silent peer reads nothing either: the sender's buffers fill.
        if shared.silent.load(Ordering::SeqCst) {
            thread::sleep(POLL);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                // End of stream: an empty chunk tells the writer.
                let _ = tx.send((last, Vec::new()));
                return;
            }
            Ok(n) => {
                let delay = delay(&shared);
                // Never before an earlier chunk: order is kept.
                last = last.max(Instant::now() + delay);
                if tx.send((last, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                let _ = tx.send((last, Vec::new()));
                return;
            }
        }
    }
}

fn delay(shared: &Shared) -> Duration {
    let latency = shared.latency_ms.load(Ordering::SeqCst);
    let jitter = shared.jitter_ms.load(Ordering::SeqCst);
    let extra = if jitter > 0 {
        let mut r = lock(&shared.rng);
        // xorshift64: enough for jitter, and replayable from a seed.
        *r ^= *r << 13;
        *r ^= *r >> 7;
        *r ^= *r << 17;
        *r % (jitter + 1)
    } else {
        0
    };
    Duration::from_millis(latency + extra)
}

fn write_side(
    mut to: TcpStream,
    rx: Receiver<(Instant, Vec<u8>)>,
    id: u64,
    shared: Arc<Shared>,
    closed: Arc<AtomicBool>,
) {
    let gone =
        |closed: &AtomicBool| closed.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst);
    loop {
        let (at, mut chunk) = match rx.recv_timeout(POLL * 5) {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout) => {
                if gone(&closed) {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        while Instant::now() < at || shared.silent.load(Ordering::SeqCst) {
            if gone(&closed) {
                return;
            }
            thread::sleep(
                POLL.min(at.saturating_duration_since(Instant::now()))
                    .max(Duration::from_millis(1)),
            );
        }
        if chunk.is_empty() {
            // The other side ended its stream: pass the end on.
            let _ = to.shutdown(Shutdown::Write);
            return;
        }
        let mut cut = false;
        let budget = shared.cut_budget.load(Ordering::SeqCst);
        if budget >= 0 {
            let left = shared
                .cut_budget
                .fetch_sub(chunk.len() as i64, Ordering::SeqCst);
            if left <= chunk.len() as i64 {
                chunk.truncate(left.max(0) as usize);
                cut = true;
            }
        }
        let bandwidth = shared.bandwidth.load(Ordering::SeqCst);
        // A throttled link delivers evenly, in pieces of about 10 ms, not
        // a whole chunk at once and then nothing: a slow peer trickles.
        let piece = match bandwidth {
            0 => chunk.len().max(1),
            b => (b as usize / 100).clamp(64, CHUNK),
        };
        for part in chunk.chunks(piece) {
            let started = Instant::now();
            if to.write_all(part).is_err() {
                return;
            }
            shared
                .forwarded
                .fetch_add(part.len() as u64, Ordering::SeqCst);
            if bandwidth > 0 {
                let should = Duration::from_secs_f64(part.len() as f64 / bandwidth as f64);
                if let Some(wait) = should.checked_sub(started.elapsed()) {
                    thread::sleep(wait);
                }
            }
        }
        if cut {
            // The budget is spent: every connection goes, this one first.
            shared.cut_budget.store(-1, Ordering::SeqCst);
            let mut open = lock(&shared.open);
            if let Some(at) = open.iter().position(|c| c.id == id) {
                close(&open.remove(at));
            }
            let rest: Vec<Conn> = std::mem::take(&mut *open);
            drop(open);
            shared.cuts.fetch_add(1, Ordering::SeqCst);
            for c in rest {
                close(&c);
            }
            return;
        }
        if gone(&closed) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes what it reads.
    fn echo() -> u16 {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        port
    }

    fn client(proxy: &FaultProxy) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    fn round_trip(s: &mut TcpStream, bytes: &[u8]) -> Vec<u8> {
        s.write_all(bytes).unwrap();
        let mut got = vec![0u8; bytes.len()];
        s.read_exact(&mut got).unwrap();
        got
    }

    /// Reads until the connection ends: the bytes, and whether it ended
    /// (rather than timing out).
    fn read_to_end(s: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
        s.set_read_timeout(Some(timeout)).unwrap();
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (all, true),
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return (all, false)
                }
                Err(_) => return (all, true),
            }
        }
    }

    #[test]
    fn forwards_both_ways_and_adds_latency_per_direction() {
        let proxy = FaultProxy::start(echo()).unwrap();
        let mut s = client(&proxy);
        assert_eq!(round_trip(&mut s, b"hello"), b"hello");
        proxy
            .faults()
            .set_latency(Duration::from_millis(100), Duration::from_millis(20));
        let t = Instant::now();
        assert_eq!(round_trip(&mut s, b"slow"), b"slow");
        let rtt = t.elapsed();
        assert!(
            rtt >= Duration::from_millis(200) && rtt < Duration::from_secs(3),
            "{rtt:?}"
        );
        // Pipelined chunks share the delay rather than add it up.
        proxy.faults().clear();
        proxy
            .faults()
            .set_latency(Duration::from_millis(100), Duration::ZERO);
        let t = Instant::now();
        for _ in 0..10 {
            s.write_all(b"x").unwrap();
            thread::sleep(Duration::from_millis(5));
        }
        let mut got = [0u8; 10];
        s.read_exact(&mut got).unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(proxy.faults().accepted(), 1);
        // Counted just after each write: the reader may be quicker.
        let counted = Instant::now();
        while proxy.faults().forwarded() < 2 * (5 + 4 + 10) {
            assert!(counted.elapsed() < Duration::from_secs(5));
            thread::sleep(POLL);
        }
    }

    #[test]
    fn throttles_bandwidth() {
        let proxy = FaultProxy::start(echo()).unwrap();
        proxy.faults().set_bandwidth(Some(100_000));
        let mut s = client(&proxy);
        let data = vec![7u8; 100_000];
        let t = Instant::now();
        let writer = {
            let mut w = s.try_clone().unwrap();
            let data = data.clone();
            thread::spawn(move || w.write_all(&data).unwrap())
        };
        let mut got = vec![0u8; data.len()];
        s.read_exact(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(got, data);
        assert!(
            t.elapsed() >= Duration::from_millis(800),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn cuts_now_or_after_a_number_of_bytes_mid_chunk() {
        let proxy = FaultProxy::start(echo()).unwrap();
        let mut a = client(&proxy);
        let mut b = client(&proxy);
        assert_eq!(round_trip(&mut a, b"a"), b"a");
        assert_eq!(round_trip(&mut b, b"b"), b"b");
        proxy.faults().cut_all();
        assert_eq!(
            read_to_end(&mut a, Duration::from_secs(5)),
            (Vec::new(), true)
        );
        assert_eq!(
            read_to_end(&mut b, Duration::from_secs(5)),
            (Vec::new(), true)
        );
        assert_eq!(proxy.faults().cuts(), 1);
        assert_eq!(proxy.faults().open(), 0);

        // 100 bytes from now: 60 reach the echo, 60 come back, cut at 100
        // in all: the client sees 40 of them, then the end.
        let mut c = client(&proxy);
        proxy.faults().cut_after_bytes(100);
        c.write_all(&[1u8; 60]).unwrap();
        let (got, ended) = read_to_end(&mut c, Duration::from_secs(5));
        assert!(ended);
        assert_eq!(got.len(), 40);
        // Later connections pass again.
        let mut d = client(&proxy);
        assert_eq!(round_trip(&mut d, b"again"), b"again");
    }

    #[test]
    fn a_silent_peer_keeps_the_socket_open_and_forwards_nothing() {
        let proxy = FaultProxy::start(echo()).unwrap();
        let mut s = client(&proxy);
        proxy.faults().go_silent();
        s.write_all(b"held").unwrap();
        let (got, ended) = read_to_end(&mut s, Duration::from_millis(400));
        assert!(got.is_empty() && !ended, "{got:?} {ended}");
        proxy.faults().resume();
        let mut got = [0u8; 4];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"held");
    }

    #[test]
    fn refuses_new_connections_for_a_while() {
        let proxy = FaultProxy::start(echo()).unwrap();
        proxy.faults().refuse_for(Duration::from_millis(500));
        let mut s = client(&proxy);
        let _ = s.write_all(b"x");
        assert!(read_to_end(&mut s, Duration::from_secs(5)).1);
        assert_eq!(proxy.faults().refused(), 1);
        thread::sleep(Duration::from_millis(600));
        let mut s = client(&proxy);
        assert_eq!(round_trip(&mut s, b"ok"), b"ok");
        proxy.faults().refuse(true);
        let mut s = client(&proxy);
        assert!(read_to_end(&mut s, Duration::from_secs(5)).1);
        proxy.faults().refuse(false);
        let mut s = client(&proxy);
        assert_eq!(round_trip(&mut s, b"ok"), b"ok");
    }
}
