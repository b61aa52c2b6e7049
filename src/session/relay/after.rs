//! What happens on a held connection once its transaction is over, before
//! it may be released: the session's state re-read from the node when
//! something changed it behind the proxy's back (and a pin when the node
//! holds what cannot be replayed), the read-your-writes floor (the
//! primary's WAL position after a transaction that may have written), and
//! the catalog read after DDL. Also: prepares answered
//! without a node.

use std::sync::Arc;

use super::super::SessionError;
use super::super::batch::Plan;
use super::super::state::{NOT_CAPTURED, Statement};
use super::{Held, Phase, PinGuard, Session};
use crate::config::ReadYourWrites;
use crate::pins::PinReason;
use crate::protocol::backend::{self as be, TxnStatus};
use crate::protocol::codec::Frames;
use crate::protocol::frontend as fe;
use crate::router::Reason;

/// Reads the session's settings (what it SET, by any means) and whether
/// the connection holds state that only it can have. One round trip, run
/// only after statements the proxy cannot follow.
pub(super) fn capture_sql() -> String {
    let skip: Vec<String> = NOT_CAPTURED.iter().map(|n| format!("'{n}'")).collect();
    format!(
        "SELECT name, encode(convert_to(current_setting(name), 'UTF8'), 'hex') \
         FROM pg_catalog.pg_settings \
         WHERE source = 'session' AND name NOT IN ({}); \
         SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()), \
         EXISTS (SELECT 1 FROM pg_catalog.pg_listening_channels()), \
         EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements WHERE from_sql), \
         EXISTS (SELECT 1 FROM pg_catalog.pg_cursors WHERE is_holdable), \
         EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()), \
         current_user <> session_user",
        skip.join(", ")
    )
}

/// What the capture query found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Captured {
    /// `(name, value)` of every setting the session changed.
    pub settings: Vec<(String, String)>,
    /// State only this connection can hold, if any.
    pub pin: Option<PinReason>,
}

impl Captured {
    /// Reads one DataRow of the capture query.
    pub fn row(&mut self, body: &[u8]) {
        let cols = be::data_row_text(body);
        match cols.as_slice() {
            // Values come as hex of their UTF-8 bytes: exact whatever the
            // connection's client_encoding.
            [Some(name), Some(hex)] => {
                if let Some(value) = unhex(hex) {
                    self.settings.push((name.clone(), value));
                }
            }
            [temp, listen, prepare, cursor, advisory, role] => {
                let reasons = [
                    (temp, PinReason::Temp),
                    (listen, PinReason::Listen),
                    (prepare, PinReason::Prepare),
                    (cursor, PinReason::Cursor),
                    (advisory, PinReason::AdvisoryLock),
                    (role, PinReason::Role),
                ];
                self.pin = reasons
                    .iter()
                    .find(|(flag, _)| flag.as_deref() == Some("t"))
                    .map(|(_, reason)| *reason);
            }
            _ => {}
        }
    }
}

/// The held connection of a phase (a field borrow, not all of the session).
fn held_of(phase: &mut Phase) -> Option<&mut Held> {
    match phase {
        Phase::Held(held) => Some(held),
        _ => None,
    }
}

/// Text from the hex of its UTF-8 bytes.
fn unhex(hex: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

impl Session<'_> {
    /// A transaction ended on the held connection: re-read the session's
    /// state if something changed it untracked, record the WAL position for
    /// read-your-writes if it may have written, and re-read the catalog
    /// after DDL.
    pub(super) async fn after_transaction(&mut self) -> Result<(), SessionError> {
        let Some(held) = held_of(&mut self.phase) else {
            return Ok(());
        };
        let capture = std::mem::take(&mut held.dirtied);
        let wrote = std::mem::take(&mut held.wrote);
        let catalog_ddl = std::mem::take(&mut held.catalog_ddl);
        if std::mem::take(&mut self.replies.settings_unknown) || capture {
            self.capture().await;
        }
        if wrote {
            self.record_write_position().await?;
        }
        if catalog_ddl {
            // No wait: what the catalog does not place yet is unknown and
            // goes to the primary meanwhile.
            self.state.catalog_refresh.notify_one();
        }
        Ok(())
    }

    /// Re-reads the session's state from the held connection: its settings
    /// become the session's (replayed wherever it goes next); state that
    /// cannot be replayed pins the session to this connection.
    async fn capture(&mut self) {
        let Some(held) = held_of(&mut self.phase) else {
            return;
        };
        if held.pin.is_some() {
            return; // a pinned session stays on this connection anyway
        }
        let mut found = Captured::default();
        let mut notifications = bytes::BytesMut::new();
        let ok = held
            .conn
            .run_own_query(&capture_sql(), &mut notifications, |row| found.row(row))
            .await;
        self.cwbuf.extend_from_slice(&notifications);
        let held = held_of(&mut self.phase).expect("held");
        match ok {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                // The connection's state is unknown: it must not serve
                // anyone else, and the session keeps the settings it knew.
                held.conn.mark_broken();
                tracing::warn!(parent: &self.span, "re-reading the session's state failed; closing the connection");
                return;
            }
        }
        if let Some(reason) = found.pin {
            // The state exists already: the session is pinned whatever
            // the cap (which is checked before statements known to pin).
            tracing::debug!(
                reason = reason.as_str(),
                "session pinned by what it left on its connection"
            );
            held.pin = PinGuard::take(&self.state, reason, usize::MAX, held.conn.pool());
            held.conn.proto.dirty = true;
            return;
        }
        self.settings.adopt(&found.settings);
        let fingerprint = self.settings.fingerprint();
        let held = held_of(&mut self.phase).expect("held");
        held.conn.proto.settings = fingerprint;
    }

    /// Reads the primary's WAL position after a transaction that may have
    /// written and raises the read-your-writes floors to it.
    pub(super) async fn record_write_position(&mut self) -> Result<(), SessionError> {
        let config = self.config.load().clone();
        match config.routing.read_your_writes {
            ReadYourWrites::Off => return Ok(()),
            // Only this session's next read needs the position, and it comes
            // through this task: the client may have its answer first.
            ReadYourWrites::Session => self.flush().await?,
            // Another session's read may start the moment the client has
            // its answer: the floor must be raised before that.
            ReadYourWrites::Global => {}
        }
        let mut notifications = bytes::BytesMut::new();
        let Some(held) = held_of(&mut self.phase) else {
            return Ok(());
        };
        let result = held.conn.wal_insert_lsn(&mut notifications).await;
        if result.is_err() {
            held.conn.mark_broken();
        }
        self.cwbuf.extend_from_slice(&notifications);
        match result {
            Ok(lsn) => {
                self.floor = self.floor.max(lsn);
                self.floor_expires = None;
                self.state.raise_global_floor(lsn);
            }
            Err(e) => {
                // Position unknown: this session reads from the primary
                // until any replica within max_lag must have replayed the
                // write. (The global floor cannot expire per session, so it
                // is left as it was.)
                tracing::warn!(parent: &self.span, error = %e, "reading the WAL position after a write failed");
                self.floor = u64::MAX;
                self.floor_expires = Some(std::time::Instant::now() + config.lag.max_lag.0);
            }
        }
        Ok(())
    }

    /// The position replicas must have replayed for this session's reads.
    pub(super) fn read_floor(&mut self) -> u64 {
        if self
            .floor_expires
            .is_some_and(|t| std::time::Instant::now() >= t)
        {
            self.floor = 0;
            self.floor_expires = None;
        }
        match self.config.load().routing.read_your_writes {
            ReadYourWrites::Off => 0,
            ReadYourWrites::Session => self.floor,
            ReadYourWrites::Global => self
                .state
                .global_floor
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// A lone `Parse` + `Sync` of a named statement outside a transaction
    /// (libpq's PQprepare, pgbench -M prepared) is answered here: the
    /// statement is recorded and parsed on a server connection with its first
    /// Bind, in the same batch. Taking a pooled connection for it would make
    /// a client that prepares synchronously wait for the pool while its other
    /// connections hold theirs. The cost: an error in the statement (a
    /// missing table) is reported at its first execution, not at prepare.
    /// Statements sqlparser cannot parse still go to a node at once.
    pub(super) fn prepare_lazily(&mut self, frames: &Frames, plan: &Plan) -> bool {
        if frames.len() != 2 {
            return false;
        }
        let mut two = frames.iter();
        let (Some(parse), Some(sync)) = (two.next(), two.next()) else {
            return false;
        };
        if parse.tag != fe::PARSE_TAG
            || sync.tag != fe::SYNC_TAG
            || plan.route.reason == Reason::ParseError
        {
            return false;
        }
        let Ok(p) = fe::parse(parse.body()) else {
            return false;
        };
        if p.name.is_empty() || plan.route.pins || self.statements.get(&p.name).is_some() {
            return false;
        }
        let route = self.state.router.load().classify(&fe::sql_text(p.sql));
        let statement = Arc::new(Statement::new(
            p.sql,
            p.types,
            route,
            self.settings.resolution_key(),
        ));
        self.statements.add(&p.name, statement);
        be::parse_complete(&mut self.cwbuf);
        be::ready_for_query(&mut self.cwbuf, TxnStatus::Idle);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cols: &[Option<&str>]) -> Vec<u8> {
        let mut body = (cols.len() as u16).to_be_bytes().to_vec();
        for c in cols {
            match c {
                Some(v) => {
                    body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    body.extend_from_slice(v.as_bytes());
                }
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        body
    }

    #[test]
    fn captured_settings_and_pins() {
        let mut c = Captured::default();
        c.row(&row(&[Some("statement_timeout"), Some("313273")]));
        c.row(&row(&[
            Some("f"),
            Some("f"),
            Some("f"),
            Some("f"),
            Some("f"),
            Some("f"),
        ]));
        assert_eq!(
            c,
            Captured {
                settings: vec![("statement_timeout".into(), "12s".into())],
                pin: None
            }
        );
        c.row(&row(&[
            Some("t"),
            Some("f"),
            Some("f"),
            Some("f"),
            Some("t"),
            Some("f"),
        ]));
        assert_eq!(c.pin, Some(PinReason::Temp));
        assert!(capture_sql().contains("'transaction_isolation'"));
        assert_eq!(unhex("636166c3a9").as_deref(), Some("café"));
        assert_eq!(unhex("zz"), None);
    }
}
