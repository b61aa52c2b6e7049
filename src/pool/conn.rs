//! One logged-in connection to a node, with its read buffer and the
//! transaction status of its last ReadyForQuery.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::PoolError;
use super::prepared::PreparedSet;
use super::stream::BackendStream;
use crate::auth::backend::{LoginInfo, login};
use crate::config::BackendTls;
use crate::protocol::backend::{self as be, TxnStatus};
use crate::protocol::codec::{self, Frame, MAX_MESSAGE_LEN};
use crate::wire::{self, WireError};
use tokio_rustls::rustls::ClientConfig;

/// Everything needed to open a server connection to one node as one user
/// on one database.
#[derive(Debug)]
pub struct ConnectSpec {
    /// Node name.
    pub node: Arc<str>,
    /// `host:port`.
    pub address: Arc<str>,
    /// Host name, for TLS verification.
    pub host: String,
    /// Role.
    pub user: String,
    /// Database.
    pub database: String,
    /// What answers the node's password request, if it makes one.
    pub credential: Option<crate::auth::Credential>,
    /// Connect and login timeout.
    pub timeout: Duration,
    /// TLS mode towards the node.
    pub tls_mode: BackendTls,
    /// The rustls configuration for that mode.
    pub tls: Option<Arc<ClientConfig>>,
}

/// What the proxy knows of a server connection's protocol and session
/// state, apart from its socket: the part a session's translation and
/// reply accounting read and update, testable without any I/O.
#[derive(Debug)]
pub struct ConnState {
    /// Unique among this proxy's connections.
    pub id: u64,
    /// Transaction status from the last ReadyForQuery.
    pub status: TxnStatus,
    /// Session state that the proxy does not track was (or may have been)
    /// left on it: it is reset before anyone else uses it.
    pub dirty: bool,
    /// Statements prepared on it under pgsplit's names.
    pub prepared: PreparedSet,
    /// Fingerprint of the session settings applied on it (`None`: the
    /// node's defaults).
    pub settings: Option<u64>,
    /// Which parse of the unnamed statement it holds (see
    /// [`ConnState::next_unnamed`]); `None` once anything may have
    /// replaced it (a simple Query does).
    pub unnamed: Option<u64>,
    /// How many times it was checked out: a session that finds the same
    /// count later knows nobody else used it meanwhile.
    pub uses: u64,
    /// The session whose `nextval` state (`currval`, `lastval`) it holds:
    /// discarded before another session's first statement on it.
    pub sequence_owner: Option<i32>,
    /// Its row in SHOW SERVERS (pooled connections only). Here, in the
    /// box, so the connection itself stays small to move.
    pub listed: Option<super::servers::Listed>,
    /// The error the last of the proxy's own queries got, if any.
    pub last_error: Option<(String, String)>,
}

impl ConnState {
    /// A fresh connection's state.
    pub fn new(id: u64) -> ConnState {
        ConnState {
            id,
            status: TxnStatus::Idle,
            dirty: false,
            prepared: PreparedSet::default(),
            settings: None,
            unnamed: None,
            uses: 0,
            sequence_owner: None,
            listed: None,
            last_error: None,
        }
    }

    /// A token for a new parse of the unnamed statement, unique in the
    /// process: a session compares it with [`ConnState::unnamed`] to know
    /// whether the connection still holds its statement.
    pub fn next_unnamed() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// A server connection (to a "backend" in PostgreSQL's words). Its socket
/// and read buffer are its own; sessions go through its methods.
#[derive(Debug)]
pub struct BackendConn {
    stream: BackendStream,
    rbuf: BytesMut,
    /// Name of the node it talks to.
    pub node: Arc<str>,
    /// `host:port` of the node, for cancel requests.
    pub address: Arc<str>,
    /// What the node said at login.
    pub login: LoginInfo,
    /// Protocol and session state (boxed: connections move between the
    /// pool and sessions several times per transaction).
    pub proto: Box<ConnState>,
    broken: bool,
}

impl BackendConn {
    /// Connects and logs in.
    ///
    /// # Errors
    /// [`PoolError::Connect`] when the node cannot be reached in time,
    /// [`PoolError::Login`] when it refuses the login.
    pub async fn connect(spec: &ConnectSpec, id: u64) -> Result<BackendConn, PoolError> {
        let node = spec.node.clone();
        let timeout = spec.timeout;
        let connect_error = |e: std::io::Error| PoolError::Connect {
            node: node.clone(),
            source: e,
        };
        let stream = tokio::time::timeout(timeout, TcpStream::connect(&*spec.address))
            .await
            .map_err(|_| connect_error(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect_error)?;
        stream.set_nodelay(true).map_err(connect_error)?;
        let (mode, config, host) = (spec.tls_mode, spec.tls.clone(), spec.host.as_str());
        let stream = tokio::time::timeout(
            timeout,
            BackendStream::negotiate(stream, mode, config, host),
        )
        .await
        .map_err(|_| connect_error(std::io::ErrorKind::TimedOut.into()))?
        .map_err(connect_error)?;
        let mut conn = BackendConn {
            stream,
            rbuf: BytesMut::with_capacity(8192),
            node: node.clone(),
            address: spec.address.clone(),
            login: LoginInfo::default(),
            proto: Box::new(ConnState::new(id)),
            broken: false,
        };
        let login = tokio::time::timeout(
            timeout,
            login(
                &mut conn.stream,
                &mut conn.rbuf,
                &spec.user,
                &spec.database,
                spec.credential.as_ref(),
                &[],
            ),
        )
        .await
        .map_err(|_| connect_error(std::io::ErrorKind::TimedOut.into()))?
        .map_err(|source| match source {
            // A connection that dies during login is an unreachable node.
            crate::auth::AuthError::Wire(w) => PoolError::Connect {
                node: node.clone(),
                source: std::io::Error::other(w.to_string()),
            },
            source => PoolError::Login { node, source },
        })?;
        conn.login = login;
        Ok(conn)
    }

    /// Marks it unusable: the pool drops it instead of reusing it.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Whether it was marked unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The size of the first buffered message once all of it is here
    /// (room is made for the rest of one that is not).
    ///
    /// # Errors
    /// Its length is not the protocol's.
    pub fn buffered_frame_len(&mut self) -> Result<Option<usize>, WireError> {
        Ok(codec::complete_frame_len(&mut self.rbuf, MAX_MESSAGE_LEN)?)
    }

    /// Lends out what is buffered, so that a message in it can be looked
    /// at in place ([`codec::FrameRef`]) while the connection is used;
    /// [`BackendConn::restore_read_buffer`] takes it back. The connection
    /// reads nothing meanwhile.
    pub fn lend_read_buffer(&mut self) -> BytesMut {
        std::mem::take(&mut self.rbuf)
    }

    /// Takes back what [`BackendConn::lend_read_buffer`] lent, the
    /// messages used since cut off its front.
    pub fn restore_read_buffer(&mut self, rbuf: BytesMut) {
        crate::wire::put_back_lent(&mut self.rbuf, rbuf);
    }

    /// Moves the complete DataRow and CopyData messages at the front of
    /// what is buffered to `out` as they are, in one copy, without making
    /// a frame of each; returns the bytes moved. Stops at any other
    /// message, an incomplete one or a length that is not the protocol
    /// (which [`BackendConn::buffered_frame_len`] then reports).
    pub fn relay_rows(&mut self, out: &mut BytesMut) -> usize {
        let end = rows_end(&self.rbuf);
        self.move_front(out, end)
    }

    /// The type of the first buffered message, once all of it is here
    /// (and its length is the protocol's).
    pub fn complete_tag(&self) -> Option<u8> {
        complete_len(&self.rbuf).map(|_| self.rbuf[0])
    }

    /// Moves the first buffered message, complete, to `out` as it is;
    /// returns its size (0 when none is complete).
    pub fn relay_frame(&mut self, out: &mut BytesMut) -> usize {
        let len = complete_len(&self.rbuf).unwrap_or(0);
        self.move_front(out, len)
    }

    /// Moves the first `len` buffered bytes to `out`.
    fn move_front(&mut self, out: &mut BytesMut, len: usize) -> usize {
        if len > 0 {
            out.extend_from_slice(&self.rbuf[..len]);
            bytes::Buf::advance(&mut self.rbuf, len);
        }
        len
    }

    /// Reads the next frame, waiting for it.
    ///
    /// # Errors
    /// The connection failed or closed.
    pub async fn read_frame(&mut self) -> Result<Frame, WireError> {
        wire::read_frame(&mut self.stream, &mut self.rbuf, MAX_MESSAGE_LEN).await
    }

    /// Sends bytes as they are.
    ///
    /// # Errors
    /// The connection failed.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all_now(bytes).await
    }

    /// Its id (unique in the proxy).
    pub fn id(&self) -> u64 {
        self.proto.id
    }

    /// Transaction status from the last ReadyForQuery.
    pub fn status(&self) -> TxnStatus {
        self.proto.status
    }

    /// Whether bytes are buffered that nobody has read yet.
    pub fn has_buffered(&self) -> bool {
        !self.rbuf.is_empty()
    }

    /// Polls for more bytes from the node (bytes read are kept in the
    /// buffer); ready with an error when the connection failed or closed.
    pub fn poll_fill(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), WireError>> {
        self.stream.poll_fill(cx, &mut self.rbuf)
    }

    /// Runs a simple query of the proxy's own and waits for its
    /// ReadyForQuery, handing every DataRow to `on_row`. Asynchronous
    /// notifications that arrive meanwhile belong to the client: they are
    /// appended to `client` as they came.
    ///
    /// # Errors
    /// The connection failed; an ErrorResponse is `Ok(false)`.
    pub async fn run_own_query(
        &mut self,
        sql: &str,
        client: &mut BytesMut,
        mut on_row: impl FnMut(&[u8]),
    ) -> Result<bool, WireError> {
        let mut out = BytesMut::new();
        be::query(&mut out, sql);
        self.send(&out).await?;
        // A simple query replaces the unnamed statement.
        self.proto.unnamed = None;
        let mut failed = false;
        self.proto.last_error = None;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                be::ERROR_RESPONSE_TAG => {
                    failed = true;
                    self.proto.last_error = be::error_code_and_message(frame.body());
                }
                be::DATA_ROW_TAG => on_row(frame.body()),
                be::NOTIFICATION_TAG => client.extend_from_slice(&frame.bytes),
                be::READY_FOR_QUERY_TAG => {
                    self.proto.status =
                        TxnStatus::from_body(frame.body()).unwrap_or(TxnStatus::Failed);
                    return Ok(!failed);
                }
                _ => {}
            }
        }
    }

    /// Runs a utility command and waits for ReadyForQuery; an
    /// ErrorResponse marks the connection broken. (For connections no
    /// client will see again: notifications are dropped.)
    ///
    /// # Errors
    /// The connection failed.
    pub async fn simple_command(&mut self, sql: &str) -> Result<(), WireError> {
        if !self
            .run_own_query(sql, &mut BytesMut::new(), |_| {})
            .await?
        {
            self.mark_broken();
        }
        Ok(())
    }

    /// The primary's WAL insert position, read on this connection (at or
    /// after the commit of anything it ran). Used for read-your-writes.
    /// Notifications that arrive meanwhile go to `client`.
    ///
    /// # Errors
    /// The connection failed or the answer was not a number.
    pub async fn wal_insert_lsn(&mut self, client: &mut BytesMut) -> Result<u64, WireError> {
        let mut value = None;
        self.run_own_query(
            "SELECT (pg_catalog.pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint, \
             pg_catalog.current_setting('wal_block_size')::bigint, \
             pg_catalog.pg_size_bytes(pg_catalog.current_setting('wal_segment_size'))",
            client,
            |row| {
                let cols: Vec<Option<u64>> = be::data_row_text(row)
                    .into_iter()
                    .map(|c| c.and_then(|v| v.parse().ok()))
                    .collect();
                if let [Some(insert), Some(block), Some(segment)] = cols[..] {
                    value = Some(last_record_end(insert, block, segment));
                }
            },
        )
        .await?;
        self.refused()?;
        value.ok_or(WireError::Protocol(codec::ProtocolError::Malformed {
            what: "LSN reply",
        }))
    }

    /// The error the last own query got, as a [`WireError::Refused`].
    fn refused(&mut self) -> Result<(), WireError> {
        match self.proto.last_error.take() {
            Some((code, message)) => Err(WireError::Refused { code, message }),
            None => Ok(()),
        }
    }

    /// `pg_last_wal_replay_lsn()` of a standby, as a number (0 when it
    /// has replayed nothing, or is not a standby).
    ///
    /// # Errors
    /// The connection failed or the answer was not a number.
    pub async fn replay_lsn(&mut self, client: &mut BytesMut) -> Result<u64, WireError> {
        self.own_lsn(
            "SELECT coalesce((pg_catalog.pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, 0)",
            client,
        )
        .await
    }

    async fn own_lsn(&mut self, sql: &str, client: &mut BytesMut) -> Result<u64, WireError> {
        let mut value = None;
        self.run_own_query(sql, client, |row| {
            value = be::data_row_text(row).into_iter().next().flatten();
        })
        .await?;
        self.refused()?;
        value
            .and_then(|v| v.parse().ok())
            .ok_or(WireError::Protocol(codec::ProtocolError::Malformed {
                what: "LSN reply",
            }))
    }

    /// Makes it fit for another client when its session has ended:
    /// ROLLBACK an open transaction, DISCARD ALL changed session state.
    /// Anything odd marks it broken.
    pub async fn reset(&mut self) {
        if self.proto.status != TxnStatus::Idle && self.simple_command("ROLLBACK").await.is_err() {
            self.mark_broken();
        }
        if self.proto.dirty && !self.broken {
            match self.simple_command("DISCARD ALL").await {
                Ok(()) => {
                    self.proto.dirty = false;
                    self.proto.prepared.clear();
                    self.proto.settings = None;
                    self.proto.sequence_owner = None;
                }
                Err(_) => self.mark_broken(),
            }
        }
        if !self.is_clean() {
            self.mark_broken();
        }
    }

    /// Fit for another client as it is: idle, nothing unread, no state
    /// left that the proxy does not track, not broken.
    pub fn is_clean(&self) -> bool {
        self.proto.status == TxnStatus::Idle
            && self.rbuf.is_empty()
            && !self.proto.dirty
            && !self.broken
    }

    /// Whether an idle connection is still open: any byte or EOF waiting
    /// on an idle connection means the node closed or is closing it.
    ///
    /// Asked of the socket only when the runtime saw it readable since the
    /// last read found it empty (`try_io`: no waker registered, no lock,
    /// no syscall for the usual quiet connection).
    pub fn idle_and_open(&self) -> bool {
        let Some(tcp) = self.stream.tcp() else {
            return false;
        };
        let peeked = tcp.try_io(tokio::io::Interest::READABLE, || {
            let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
            socket2::SockRef::from(tcp).peek(&mut probe)
        });
        // Nothing to read (WouldBlock) is what an idle, open connection
        // looks like.
        matches!(peeked, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// Where the last WAL record before `insert` ended, given the position
/// `pg_current_wal_insert_lsn()` reports (where the next record will
/// start). When the next record is a page's first, that position lies past
/// the page's header (24 bytes; 40 on a segment's first page), while a
/// standby that has replayed everything reports the page boundary: the
/// read-your-writes floor must be the boundary, or a session's reads wait
/// for WAL that nobody may write. (No record starts within a header, so
/// nothing before `insert` ends past the boundary.)
fn last_record_end(insert: u64, block: u64, segment: u64) -> u64 {
    const SHORT_HEADER: u64 = 24;
    const LONG_HEADER: u64 = 40;
    if segment > 0 && insert % segment == LONG_HEADER {
        insert - LONG_HEADER
    } else if block > 0 && insert % block == SHORT_HEADER {
        insert - SHORT_HEADER
    } else {
        insert
    }
}

/// The size of the message at the front of `buf`, once all of it is
/// there and its length is the protocol's.
fn complete_len(buf: &[u8]) -> Option<usize> {
    match codec::peek_frame_len(buf, MAX_MESSAGE_LEN) {
        Ok(Some(len)) if buf.len() >= len => Some(len),
        _ => None,
    }
}

/// Where the run of complete DataRow and CopyData messages at the start of
/// `buf` ends.
fn rows_end(buf: &[u8]) -> usize {
    let mut at = 0;
    while let Some(&tag) = buf.get(at) {
        if tag != be::DATA_ROW_TAG && tag != be::COPY_DATA_TAG {
            break;
        }
        let Some(len) = complete_len(&buf[at..]) else {
            break;
        };
        at += len;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::{last_record_end, rows_end};

    #[test]
    fn rows_are_relayed_up_to_the_first_other_or_incomplete_message() {
        let row = |body: &[u8]| {
            let mut f = vec![b'D'];
            f.extend_from_slice(&i32::try_from(body.len() + 4).unwrap().to_be_bytes());
            f.extend_from_slice(body);
            f
        };
        let two = [row(b"ab"), row(b"")].concat();
        assert_eq!(rows_end(&two), two.len());
        let then_complete = [two.clone(), b"C\0\0\0\x0dSELECT 2\0".to_vec()].concat();
        assert_eq!(rows_end(&then_complete), two.len());
        let cut = row(b"abcdef");
        assert_eq!(
            rows_end(&[two.clone(), cut[..6].to_vec()].concat()),
            two.len()
        );
        assert_eq!(
            rows_end(b"D\0\0\0\x02"),
            0,
            "a length below 4 is left to the decoder"
        );
        assert_eq!(rows_end(b"D\0\0"), 0);
        let copy = [b"d\0\0\0\x05x".to_vec(), row(b"y")].concat();
        assert_eq!(rows_end(&copy), copy.len());
    }

    const BLOCK: u64 = 8192;
    const SEGMENT: u64 = 16 << 20;

    #[test]
    fn a_position_past_a_page_header_is_the_page_boundary() {
        assert_eq!(last_record_end(3 * BLOCK + 24, BLOCK, SEGMENT), 3 * BLOCK);
        assert_eq!(
            last_record_end(5 * SEGMENT + 40, BLOCK, SEGMENT),
            5 * SEGMENT
        );
    }

    #[test]
    fn a_position_within_a_page_is_kept() {
        for insert in [
            3 * BLOCK + 48,
            3 * BLOCK + 40,
            5 * SEGMENT + 48,
            7 * BLOCK + 8000,
        ] {
            assert_eq!(last_record_end(insert, BLOCK, SEGMENT), insert);
        }
        // Other block sizes: 24 past an 8 kB multiple is inside a 32 kB page.
        assert_eq!(last_record_end(BLOCK + 24, 4 * BLOCK, SEGMENT), BLOCK + 24);
        assert_eq!(
            last_record_end(4 * BLOCK + 24, 4 * BLOCK, SEGMENT),
            4 * BLOCK
        );
    }
}
