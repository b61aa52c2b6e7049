//! Cancel keys: each client gets pgsplit's own process id and secret; a
//! CancelRequest carrying them is forwarded to the server connection that
//! runs that client's query, and only while the client still holds it. A
//! cancel that arrives while the query is still being routed (waiting for
//! a pooled connection) is sent as soon as the query is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Where a client's query runs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    /// `host:port` of the node.
    pub address: Arc<str>,
    /// The server process id.
    pub pid: i32,
    /// The server's cancel secret.
    pub secret: i32,
}

/// Where one session's query stands, for a cancel request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
enum Running {
    /// Nothing runs: a cancel is ignored, as PostgreSQL does.
    #[default]
    Nothing,
    /// A batch is being routed and has no server connection yet; `true`
    /// once a cancel came meanwhile (it is sent when the batch is).
    Routing(bool),
    /// It runs there.
    On(CancelTarget),
}

/// One session's slot: the server connection it holds, if any.
#[derive(Debug, Default)]
pub struct CancelSlot(Mutex<Running>);

impl CancelSlot {
    /// The session now holds this server connection (or none).
    pub fn set(&self, target: Option<CancelTarget>) {
        *self.0.lock().expect("poisoned") = target.map_or(Running::Nothing, Running::On);
    }

    /// A batch is being routed: a cancel that comes before it has a server
    /// connection is kept for it.
    pub fn routing(&self) {
        let mut running = self.0.lock().expect("poisoned");
        if *running == Running::Nothing {
            *running = Running::Routing(false);
        }
    }

    /// The routed batch was sent to `target`. Returns it again when a cancel
    /// came while the batch was being routed (the caller sends it now).
    pub fn sent_to(&self, target: CancelTarget) -> Option<CancelTarget> {
        let mut running = self.0.lock().expect("poisoned");
        let cancelled = (*running == Running::Routing(true)).then(|| target.clone());
        *running = Running::On(target);
        cancelled
    }

    /// Where a cancel goes now, or `None` (noting it while routing).
    fn take_for_cancel(&self) -> Option<CancelTarget> {
        let mut running = self.0.lock().expect("poisoned");
        match &*running {
            Running::On(target) => Some(target.clone()),
            Running::Routing(_) => {
                *running = Running::Routing(true);
                None
            }
            Running::Nothing => None,
        }
    }
}

/// Sends a CancelRequest for `target` to its node.
pub async fn send_cancel(target: &CancelTarget) {
    let mut out = BytesMut::new();
    crate::auth::backend::cancel_request(&mut out, target.pid, target.secret);
    match TcpStream::connect(&*target.address).await {
        Ok(mut s) => {
            if let Err(e) = s.write_all(&out).await {
                tracing::warn!(error = %e, "forwarding cancel request failed");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, address = %target.address, "cannot reach node to cancel")
        }
    }
}

/// All sessions' cancel keys.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    sessions: Mutex<HashMap<i32, (i32, Arc<CancelSlot>)>>,
}

impl CancelRegistry {
    /// Registers a session's key.
    pub fn register(&self, pid: i32, secret: i32, slot: Arc<CancelSlot>) {
        self.sessions
            .lock()
            .expect("poisoned")
            .insert(pid, (secret, slot));
    }

    /// Forgets a session's key when the session ends.
    pub fn unregister(&self, pid: i32) {
        self.sessions.lock().expect("poisoned").remove(&pid);
    }

    /// Forwards a client's CancelRequest. Unknown keys are ignored, as
    /// PostgreSQL does, without telling the sender anything.
    pub async fn cancel(&self, pid: i32, secret: &Bytes) {
        let target = {
            let sessions = self.sessions.lock().expect("poisoned");
            match sessions.get(&pid) {
                Some((s, slot)) if secret.as_ref() == s.to_be_bytes() => slot.take_for_cancel(),
                _ => None,
            }
        };
        if let Some(target) = target {
            send_cancel(&target).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> CancelTarget {
        CancelTarget {
            address: "127.0.0.1:1".into(),
            pid: 7,
            secret: 9,
        }
    }

    #[test]
    fn a_cancel_during_routing_waits_for_the_send() {
        let slot = CancelSlot::default();
        assert_eq!(slot.take_for_cancel(), None, "nothing runs: ignored");
        slot.routing();
        assert_eq!(slot.take_for_cancel(), None);
        assert!(slot.sent_to(target()).is_some(), "kept for the batch");
        assert_eq!(slot.take_for_cancel(), Some(target()));
        slot.set(None);
        slot.routing();
        assert!(slot.sent_to(target()).is_none());
    }
}
