//! Who is connected, and the console's hold on them: the registry of
//! client sessions (for SHOW CLIENTS, KILL and PAUSE) and the pause gate
//! every new transaction passes.
//!
//! A session registers once at login and leaves when it ends. On its hot
//! path it touches only its own entry: one flag when it starts a unit of
//! work (a batch between transactions) and one at each loop turn. PAUSE
//! is the Dekker pattern on those flags: the console raises the pause and
//! then reads the sessions' `busy`; a session raises `busy` and then reads
//! the pause; with sequentially consistent order at least one of them
//! sees the other, so no transaction slips past a PAUSE that returned.
//!
//! KILL and shutdown reach a session through its entry's `stopped` flag
//! and waker, which the session polls whenever it waits: an atomic load
//! and a waker compare, where the cancellation token's future takes a
//! lock at every poll (twice a transaction). The token still fires for
//! the rest (the pause gate).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::task::AtomicWaker;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One client session, as the console sees it.
#[derive(Debug)]
pub struct ClientEntry {
    /// The process id the client was told (the session id).
    pub pid: i32,
    /// Role.
    pub user: String,
    /// Database.
    pub database: String,
    /// `application_name` at startup.
    pub application_name: String,
    /// Where it connects from.
    pub peer: SocketAddr,
    /// Over TLS.
    pub tls: bool,
    /// When it logged in.
    pub connected_at: SystemTime,
    /// In a transaction, or owed replies: not between transactions.
    pub busy: AtomicBool,
    /// Held at the pause gate.
    pub paused: AtomicBool,
    /// Fires when the console kills it (KILL) or the proxy shuts down.
    pub stop: CancellationToken,
    /// Set before `stop` fires for a KILL (not a shutdown).
    pub killed: AtomicBool,
    /// KILL or shutdown reached the session (see [`ClientEntry::poll_stopped`]).
    pub stopped: AtomicBool,
    /// The session waiting for `stopped`.
    pub stop_waker: AtomicWaker,
}

/// What is paused: every database, or some.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paused {
    /// PAUSE without a database.
    pub all: bool,
    /// PAUSE of these databases.
    pub databases: BTreeSet<String>,
}

impl Paused {
    /// Whether sessions of `database` are held.
    pub fn holds(&self, database: &str) -> bool {
        self.all || self.databases.contains(database)
    }
}

/// Every client session, and the pause.
#[derive(Debug)]
pub struct Clients {
    entries: Mutex<BTreeMap<i32, Arc<ClientEntry>>>,
    /// Any pause at all (the hot path reads only this).
    any_paused: AtomicBool,
    paused: watch::Sender<Paused>,
}

impl Default for Clients {
    fn default() -> Self {
        Clients {
            entries: Mutex::new(BTreeMap::new()),
            any_paused: AtomicBool::new(false),
            paused: watch::channel(Paused::default()).0,
        }
    }
}

/// Keeps a session listed for as long as it lives.
#[derive(Debug)]
pub struct Registration {
    /// The session's entry.
    pub entry: Arc<ClientEntry>,
    clients: Arc<Clients>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.clients
            .entries
            .lock()
            .expect("poisoned")
            .remove(&self.entry.pid);
    }
}

impl ClientEntry {
    /// The session is starting work (a batch between transactions):
    /// counted busy before it looks at the pause.
    pub fn start_work(&self) {
        self.busy.store(true, Ordering::SeqCst);
    }

    /// The session is between transactions (or not).
    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
    }

    /// Whether it was killed (as opposed to the proxy shutting down).
    pub fn was_killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    /// Whether KILL or shutdown reached the session.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Ready once KILL or shutdown reached the session; pending, the
    /// session is woken when it does.
    pub fn poll_stopped(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_stopped() {
            return Poll::Ready(());
        }
        self.stop_waker.register(cx.waker());
        // (set between the look and the registration: seen here)
        if self.is_stopped() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn signal_stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.stop_waker.wake();
    }
}

impl Clients {
    /// Lists a session until the returned guard drops.
    pub fn register(self: &Arc<Self>, entry: ClientEntry) -> Registration {
        let entry = Arc::new(entry);
        self.entries
            .lock()
            .expect("poisoned")
            .insert(entry.pid, entry.clone());
        if entry.stop.is_cancelled() {
            // The shutdown began before the entry was listed: its
            // [`Clients::stop_all`] may have missed it.
            entry.signal_stop();
        }
        Registration {
            entry,
            clients: self.clone(),
        }
    }

    /// Every session now.
    pub fn list(&self) -> Vec<Arc<ClientEntry>> {
        self.entries
            .lock()
            .expect("poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// Ends every session of `database` (KILL): at once, in a transaction
    /// or not. Returns how many.
    pub fn kill(&self, database: &str) -> usize {
        let victims: Vec<Arc<ClientEntry>> = self
            .list()
            .into_iter()
            .filter(|e| e.database == database)
            .collect();
        for v in &victims {
            v.killed.store(true, Ordering::Relaxed);
            v.stop.cancel();
            v.signal_stop();
        }
        victims.len()
    }

    /// Tells every session the proxy is shutting down (after the shutdown
    /// token was cancelled: a session listed later sees the token).
    pub fn stop_all(&self) {
        for entry in self.entries.lock().expect("poisoned").values() {
            entry.signal_stop();
        }
    }

    /// What is paused now.
    pub fn paused(&self) -> Paused {
        self.paused.borrow().clone()
    }

    /// Holds new transactions of `database` (every database when `None`).
    pub fn pause(&self, database: Option<&str>) {
        self.paused.send_modify(|p| match database {
            None => p.all = true,
            Some(db) => {
                p.databases.insert(db.to_owned());
            }
        });
        self.any_paused.store(true, Ordering::SeqCst);
    }

    /// Releases what PAUSE held: every pause when `database` is `None`.
    /// Returns false when that database was not paused.
    pub fn resume(&self, database: Option<&str>) -> bool {
        let mut found = false;
        self.paused.send_modify(|p| match database {
            None => {
                found = p.all || !p.databases.is_empty();
                *p = Paused::default();
            }
            Some(db) => found = p.databases.remove(db),
        });
        let any = {
            let p = self.paused.borrow();
            p.all || !p.databases.is_empty()
        };
        self.any_paused.store(any, Ordering::SeqCst);
        found
    }

    /// Sessions of `database` (every one when `None`) in the middle of
    /// something: PAUSE waits for this to reach zero.
    pub fn busy(&self, database: Option<&str>) -> usize {
        self.list()
            .iter()
            .filter(|e| database.is_none_or(|db| e.database == db))
            .filter(|e| e.busy.load(Ordering::SeqCst))
            .count()
    }

    /// Whether anything is paused (the gate's fast check, inline in the
    /// session loop: the gate itself is awaited only when this is true).
    pub fn any_paused(&self) -> bool {
        self.any_paused.load(Ordering::SeqCst)
    }

    /// The pause gate, passed by a session about to start a unit of work
    /// (after [`ClientEntry::start_work`]): returns at once unless its
    /// database is paused, else waits for RESUME (or for `stop`).
    pub async fn gate(&self, entry: &ClientEntry) {
        if !self.any_paused.load(Ordering::SeqCst) {
            return;
        }
        let mut rx = self.paused.subscribe();
        if !rx.borrow_and_update().holds(&entry.database) {
            return;
        }
        entry.busy.store(false, Ordering::SeqCst);
        entry.paused.store(true, Ordering::Relaxed);
        tokio::select! {
            _ = rx.wait_for(|p| !p.holds(&entry.database)) => {}
            () = entry.stop.cancelled() => {}
        }
        entry.paused.store(false, Ordering::Relaxed);
        entry.busy.store(true, Ordering::SeqCst);
    }

    /// PAUSE: holds new transactions, then waits until those in flight
    /// are done (polled: this is the operator's path, not the clients').
    /// Returns how long it waited.
    pub async fn pause_and_drain(&self, database: Option<&str>) -> Duration {
        const LOOK: Duration = Duration::from_millis(5);
        let started = std::time::Instant::now();
        self.pause(database);
        while self.busy(database) > 0 {
            tokio::time::sleep(LOOK).await;
        }
        started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pid: i32, db: &str) -> ClientEntry {
        ClientEntry {
            pid,
            user: "u".into(),
            database: db.into(),
            application_name: String::new(),
            peer: "127.0.0.1:1".parse().expect("addr"),
            tls: false,
            connected_at: SystemTime::now(),
            busy: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            stop: CancellationToken::new(),
            killed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            stop_waker: AtomicWaker::new(),
        }
    }

    #[tokio::test]
    async fn the_gate_holds_only_the_paused_database() {
        let clients = Arc::new(Clients::default());
        let a = clients.register(entry(1, "a"));
        let b = clients.register(entry(2, "b"));
        clients.pause(Some("a"));
        b.entry.start_work();
        clients.gate(&b.entry).await; // not held
        a.entry.start_work();
        let held = tokio::time::timeout(Duration::from_millis(50), clients.gate(&a.entry)).await;
        assert!(held.is_err(), "database a is paused");
        assert!(
            !a.entry.busy.load(Ordering::SeqCst),
            "a held session is not busy"
        );
        assert!(clients.resume(Some("a")));
        clients.gate(&a.entry).await;
        assert!(!clients.resume(Some("a")), "nothing left to resume");
    }

    #[tokio::test]
    async fn pause_waits_for_busy_sessions_and_kill_ends_them() {
        let clients = Arc::new(Clients::default());
        let a = clients.register(entry(1, "a"));
        a.entry.start_work();
        let drained =
            tokio::time::timeout(Duration::from_millis(50), clients.pause_and_drain(None)).await;
        assert!(drained.is_err(), "a busy session keeps PAUSE waiting");
        a.entry.set_busy(false);
        clients.pause_and_drain(None).await;
        assert_eq!(clients.kill("a"), 1);
        assert!(a.entry.stop.is_cancelled() && a.entry.was_killed());
        assert!(a.entry.is_stopped());
        drop(a);
        assert!(clients.list().is_empty());
    }
}
