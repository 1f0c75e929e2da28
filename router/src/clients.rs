//! Every client socket the router holds, from accept to close: counted
//! against `max_client_conn`, and listed by `SHOW shardline.clients`
//! (who, from where, doing what, holding how many backends, pinned to
//! them or not, and since when).
//!
//! A session updates its own entry with plain atomic stores; readers take
//! a snapshot. Nothing here is on a statement's path but those stores.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What a client is doing, as `SHOW shardline.clients` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Connected, not logged in yet.
    Login = 0,
    Idle = 1,
    /// A statement of the client is being routed or run.
    Active = 2,
    IdleInTransaction = 3,
    /// Waiting for a backend of a pool.
    Waiting = 4,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Idle => "idle",
            Self::Active => "active",
            Self::IdleInTransaction => "idle in transaction",
            Self::Waiting => "waiting",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Idle,
            2 => Self::Active,
            3 => Self::IdleInTransaction,
            4 => Self::Waiting,
            _ => Self::Login,
        }
    }
}

/// One client's entry.
#[derive(Debug)]
pub struct Client {
    pub addr: SocketAddr,
    pub since: SystemTime,
    /// User and application_name, known after login.
    login: Mutex<Option<(String, String)>>,
    state: AtomicU8,
    backends: AtomicUsize,
    /// Why the client keeps its backends, under transaction pooling.
    pinned: Mutex<Option<&'static str>>,
}

impl Client {
    pub fn logged_in(&self, user: &str, application_name: &str) {
        *self.login.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((user.to_string(), application_name.to_string()));
    }

    pub fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    pub fn set_backends(&self, n: usize) {
        self.backends.store(n, Ordering::Relaxed);
    }

    pub fn pinned(&self, why: &'static str) {
        *self.pinned.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }
}

/// A snapshot of one client, for `SHOW shardline.clients`.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub user: Option<String>,
    pub application_name: Option<String>,
    pub addr: SocketAddr,
    pub state: State,
    pub backends: usize,
    pub pinned: Option<&'static str>,
    pub since: SystemTime,
}

/// Every connected client.
#[derive(Debug, Default)]
pub struct Clients {
    next: AtomicU64,
    connected: AtomicUsize,
    entries: Mutex<BTreeMap<u64, Arc<Client>>>,
}

/// A client's place in [`Clients`], given back when dropped.
#[derive(Debug)]
pub struct Seat {
    clients: Arc<Clients>,
    id: u64,
    pub client: Arc<Client>,
}

impl Clients {
    /// Seats a new client unless `max` are connected already.
    pub fn admit(self: &Arc<Self>, addr: SocketAddr, max: usize) -> Option<Seat> {
        let admitted = self
            .connected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        admitted.ok()?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let client = Arc::new(Client {
            addr,
            since: SystemTime::now(),
            login: Mutex::new(None),
            state: AtomicU8::new(State::Login as u8),
            backends: AtomicUsize::new(0),
            pinned: Mutex::new(None),
        });
        self.lock().insert(id, client.clone());
        Some(Seat {
            clients: self.clone(),
            id,
            client,
        })
    }

    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// Every client, oldest first.
    pub fn rows(&self) -> Vec<Row> {
        let entries: Vec<Arc<Client>> = self.lock().values().cloned().collect();
        entries
            .iter()
            .map(|c| {
                let login = c.login.lock().unwrap_or_else(|e| e.into_inner()).clone();
                Row {
                    user: login.as_ref().map(|l| l.0.clone()),
                    application_name: login.map(|l| l.1),
                    addr: c.addr,
                    state: State::from_u8(c.state.load(Ordering::Relaxed)),
                    backends: c.backends.load(Ordering::Relaxed),
                    pinned: *c.pinned.lock().unwrap_or_else(|e| e.into_inner()),
                    since: c.since,
                }
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Client>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.clients.lock().remove(&self.id);
        self.clients.connected.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seats_are_counted_capped_and_given_back() {
        let clients = Arc::new(Clients::default());
        let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let a = clients.admit(addr, 2).unwrap();
        let b = clients.admit(addr, 2).unwrap();
        assert!(
            clients.admit(addr, 2).is_none(),
            "a third client past max 2"
        );
        assert_eq!(clients.connected(), 2);
        a.client.logged_in("app", "pgbench");
        a.client.set_state(State::IdleInTransaction);
        a.client.set_backends(1);
        a.client.pinned("LISTEN");
        let rows = clients.rows();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].user.as_deref(), Some("app"));
        assert_eq!(rows[0].state, State::IdleInTransaction);
        assert_eq!((rows[0].backends, rows[0].pinned), (1, Some("LISTEN")));
        assert_eq!((rows[1].user.clone(), rows[1].state), (None, State::Login));
        drop(b);
        assert_eq!(clients.connected(), 1);
        assert!(clients.admit(addr, 2).is_some());
        drop(a);
        assert_eq!(clients.rows().len(), 0);
    }
}
