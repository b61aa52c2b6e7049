//! Cancel keys: each client gets pgsplit's own process id and secret; a
//! CancelRequest carrying them is forwarded to the server connection that
//! runs that client's query, and only while the client still holds it.

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

/// One session's slot: the server connection it holds, if any.
#[derive(Debug, Default)]
pub struct CancelSlot(Mutex<Option<CancelTarget>>);

impl CancelSlot {
    /// The session now holds this server connection (or none).
    pub fn set(&self, target: Option<CancelTarget>) {
        *self.0.lock().expect("poisoned") = target;
    }

    fn get(&self) -> Option<CancelTarget> {
        self.0.lock().expect("poisoned").clone()
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
                Some((s, slot)) if secret.as_ref() == s.to_be_bytes() => slot.get(),
                _ => None,
            }
        };
        let Some(target) = target else { return };
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
}
