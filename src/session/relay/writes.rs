//! After a transaction: the read-your-writes floor (the primary's WAL
//! position after a transaction that may have written) and the catalog
//! refresh after function DDL; and prepares answered without a node.

use std::sync::Arc;

use super::super::SessionError;
use super::super::batch::Plan;
use super::Session;
use crate::config::ReadYourWrites;
use crate::protocol::backend::{self as be, TxnStatus};
use crate::protocol::codec::Frame;
use crate::protocol::frontend as fe;
use crate::router::Reason;

impl Session<'_> {
    /// A transaction ended on the held connection: record its WAL position
    /// for read-your-writes if it may have written, and re-read the
    /// catalog after function DDL.
    pub(super) async fn after_transaction(&mut self) -> Result<(), SessionError> {
        if std::mem::take(&mut self.wrote) {
            self.record_write_position().await?;
        }
        if std::mem::take(&mut self.function_ddl) {
            self.flush().await?;
            self.state.refresh_catalog().await;
        }
        Ok(())
    }

    /// Reads the primary's WAL position after a transaction that may have
    /// written and raises the read-your-writes floors to it.
    pub(super) async fn record_write_position(&mut self) -> Result<(), SessionError> {
        let config = self.state.config.load_full();
        match config.routing.read_your_writes {
            ReadYourWrites::Off => return Ok(()),
            // Only this session's next read needs the position, and it comes
            // through this task: the client may have its answer first.
            ReadYourWrites::Session => self.flush().await?,
            // Another session's read may start the moment the client has
            // its answer: the floor must be raised before that.
            ReadYourWrites::Global => {}
        }
        let held = self.held.as_mut().expect("held");
        match held.conn.wal_insert_lsn().await {
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
                tracing::warn!(error = %e, "reading the WAL position after a write failed");
                held.conn.mark_broken();
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
        match self.state.config.load().routing.read_your_writes {
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
    pub(super) fn prepare_lazily(&mut self, frames: &[Frame], plan: &Plan) -> bool {
        let [parse, sync] = frames else { return false };
        if parse.tag != fe::PARSE_TAG
            || sync.tag != fe::SYNC_TAG
            || plan.route.reason == Reason::ParseError
        {
            return false;
        }
        let Ok(p) = fe::parse(parse.body()) else {
            return false;
        };
        if p.name.is_empty() || plan.route.pins || self.statements.get(p.name).is_some() {
            return false;
        }
        let route = self.state.router.load().classify(p.sql);
        let statement = Arc::new(super::super::state::Statement::new(p.sql, p.types, route));
        self.statements.add(p.name, statement);
        be::parse_complete(&mut self.cwbuf);
        be::ready_for_query(&mut self.cwbuf, TxnStatus::Idle);
        true
    }
}
