//! Client messages gathered until a boundary (Query, Sync, Flush,
//! FunctionCall), with what routing needs to know about them.

use bytes::{Bytes, BytesMut};

use crate::protocol::ProtocolError;
use crate::protocol::codec::Frame;
use crate::protocol::frontend as fe;
use crate::router::{Reason, Route, Router};

/// Messages not yet sent anywhere.
#[derive(Debug, Default)]
pub struct Batch {
    bytes: BytesMut,
    /// Messages that each produce a ReadyForQuery (Query, Sync, FunctionCall).
    pub syncs: usize,
    sql: Vec<String>,
    /// Uses prepared statements or portals from an earlier batch, or names
    /// a statement: it has to stay on one server connection.
    needs_connection: bool,
    /// Holds a FunctionCall (fast-path function call): primary.
    function_call: bool,
    parsed: Vec<String>,
    bound: bool,
}

impl Batch {
    /// Bytes gathered.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Adds a message. Returns true when it ends the batch.
    ///
    /// # Errors
    /// A malformed Query/Parse/Bind body.
    pub fn push(&mut self, frame: &Frame) -> Result<bool, ProtocolError> {
        let body = frame.body();
        let boundary = match frame.tag {
            fe::QUERY_TAG => {
                self.sql.push(fe::query_text(body)?.to_owned());
                self.syncs += 1;
                true
            }
            fe::PARSE_TAG => {
                let p = fe::parse(body)?;
                if !p.name.is_empty() {
                    self.needs_connection = true;
                }
                self.sql.push(p.sql.to_owned());
                self.parsed.push(p.name.to_owned());
                false
            }
            fe::BIND_TAG => {
                let stmt = fe::bind_statement(body)?;
                if !self.parsed.iter().any(|n| n == stmt) {
                    self.needs_connection = true;
                }
                self.bound = true;
                false
            }
            fe::DESCRIBE_TAG | fe::EXECUTE_TAG => {
                let describes_statement =
                    frame.tag == fe::DESCRIBE_TAG && body.first() == Some(&b'S');
                let known = if describes_statement {
                    let mut rest = &body[1..];
                    crate::protocol::codec::take_cstr(&mut rest)
                        .is_some_and(|n| self.parsed.iter().any(|p| p == n))
                } else {
                    self.bound
                };
                if !known {
                    self.needs_connection = true;
                }
                false
            }
            fe::CLOSE_TAG => {
                self.needs_connection = true;
                false
            }
            fe::SYNC_TAG => {
                self.syncs += 1;
                true
            }
            fe::FUNCTION_CALL_TAG => {
                self.function_call = true;
                self.syncs += 1;
                true
            }
            fe::FLUSH_TAG => true,
            _ => false,
        };
        self.bytes.extend_from_slice(&frame.bytes);
        Ok(boundary)
    }

    /// Where the batch must run.
    pub fn route(&self, router: &Router) -> Route {
        let mut route = Route::replica(Reason::Read);
        for sql in &self.sql {
            route = route.merge(router.classify(sql));
        }
        if self.function_call {
            route = route.merge(Route::primary(Reason::Function));
        }
        if self.needs_connection {
            route = route.merge(Route::pinned(Reason::Session));
        }
        route
    }

    /// Takes the gathered bytes, leaving the batch empty.
    pub fn take(&mut self) -> (Bytes, usize) {
        let syncs = self.syncs;
        let bytes = std::mem::take(&mut self.bytes).freeze();
        *self = Batch::default();
        (bytes, syncs)
    }
}
