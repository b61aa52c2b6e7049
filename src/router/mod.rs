//! Statement routing: SQL text in, [`Route`] out.
//!
//! Pure and socket-free. A cheap scan of the leading comments and first
//! keyword routes obvious writes without parsing, a token scan routes plain
//! SELECTs (`select`); everything else is parsed with sqlparser
//! (PostgreSQL dialect) and walked. Anything that cannot be
//! classified goes to the primary. Results are kept in a bounded cache keyed
//! by the statement text. What depends on the session (an open transaction,
//! a pinned connection) is the session's business, not the router's.

mod classify;
mod explain;
pub mod facts;
mod functions;
pub(crate) mod scan;
mod select;

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use explain::{Explanation, Seen};
pub use facts::Facts;

use quick_cache::Weighter;
use quick_cache::sync::Cache;

/// Where a statement must run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// The primary (writes, and anything unclassifiable).
    Primary,
    /// Any eligible replica.
    Replica,
}

impl Target {
    /// Label value for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Primary => "primary",
            Target::Replica => "replica",
        }
    }
}

/// Why a statement goes where it goes. Bounded set: used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// DML, DDL, COPY FROM or any other statement that changes something.
    Write,
    /// A plain read.
    Read,
    /// An explicit read-write transaction, or transaction control.
    Transaction,
    /// `BEGIN READ ONLY` / `START TRANSACTION READ ONLY`.
    ReadOnlyTransaction,
    /// A `/* pgsplit:... */` hint.
    Hint,
    /// A function with side effects or session state.
    Function,
    /// Row or table locks (`FOR UPDATE`, `LOCK`).
    Lock,
    /// Session state that lives on one server connection (SET, LISTEN,
    /// temporary tables, SQL PREPARE, cursors).
    Session,
    /// sqlparser could not parse it.
    ParseError,
    /// A read that found no eligible replica.
    NoReplica,
    /// A read sent to the primary because no replica has replayed the
    /// session's (or the proxy's) last write yet.
    ReadYourWrites,
    /// A read sent again to another node after its first node failed.
    Retry,
    /// A route rule (or a tag hint) chose tagged replicas.
    Rule,
    /// The zone preference chose a replica of the proxy's zone.
    Zone,
    /// A replica refused it because it is a standby (read-only, in
    /// recovery): run on the primary, and remembered.
    StandbyRefused,
    /// It reads a view of the node's own state and activity
    /// (`pg_stat_activity`, `pg_prepared_xacts`, `pg_stat_replication`...):
    /// the primary's, unless a hint asks for a replica's.
    NodeState,
    /// It calls a function or reads a relation no catalog fact places
    /// (created after the last catalog read, or not read yet): the
    /// primary, and the catalog is read again.
    Unknown,
    /// It reads a relation a replica cannot answer for: an unlogged table,
    /// or a view that calls a primary-only function.
    PrimaryRelation,
}

impl Reason {
    /// Every reason, for pre-creating metric series.
    pub const ALL: [Reason; 18] = [
        Reason::Write,
        Reason::Read,
        Reason::Transaction,
        Reason::ReadOnlyTransaction,
        Reason::Hint,
        Reason::Function,
        Reason::Lock,
        Reason::Session,
        Reason::ParseError,
        Reason::NoReplica,
        Reason::ReadYourWrites,
        Reason::Retry,
        Reason::Rule,
        Reason::Zone,
        Reason::StandbyRefused,
        Reason::NodeState,
        Reason::Unknown,
        Reason::PrimaryRelation,
    ];

    /// Whether a statement routed for this reason may have written (and
    /// so sets a read-your-writes floor). SET, LISTEN and the like do not.
    pub fn may_write(self) -> bool {
        matches!(
            self,
            Reason::Write
                | Reason::Transaction
                | Reason::Hint
                | Reason::Function
                | Reason::Lock
                | Reason::ParseError
                | Reason::StandbyRefused
                | Reason::Unknown
                | Reason::PrimaryRelation
        )
    }

    /// Label value for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Write => "write",
            Reason::Read => "read",
            Reason::Transaction => "transaction",
            Reason::ReadOnlyTransaction => "read_only_transaction",
            Reason::Hint => "hint",
            Reason::Function => "function",
            Reason::Lock => "lock",
            Reason::Session => "session",
            Reason::ParseError => "parse_error",
            Reason::NoReplica => "no_replica",
            Reason::ReadYourWrites => "read_your_writes",
            Reason::Retry => "retry",
            Reason::Rule => "rule",
            Reason::Zone => "zone",
            Reason::StandbyRefused => "standby_refused",
            Reason::NodeState => "node_state",
            Reason::Unknown => "unknown",
            Reason::PrimaryRelation => "primary_relation",
        }
    }
}

/// The router's verdict on one query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Where it runs.
    pub target: Target,
    /// Why.
    pub reason: Reason,
    /// It leaves state on its server connection (SET, LISTEN, temp table,
    /// session advisory lock, SQL PREPARE): the session must keep that
    /// connection from now on.
    pub pins: bool,
    /// It may leave session state behind that the proxy cannot read from
    /// the text (`set_config`, DO, CALL, a user function, `SET SESSION
    /// CHARACTERISTICS`, `pg_settings`, anything unparsed): the session
    /// re-reads its state from the node afterwards.
    pub dirties: bool,
}

impl Route {
    /// The primary, for `reason`.
    pub const fn primary(reason: Reason) -> Route {
        Route {
            target: Target::Primary,
            reason,
            pins: false,
            dirties: false,
        }
    }

    /// Any replica, for `reason`.
    pub const fn replica(reason: Reason) -> Route {
        Route {
            target: Target::Replica,
            reason,
            pins: false,
            dirties: false,
        }
    }

    /// The same route, marked as leaving untracked session state.
    pub const fn dirtying(self) -> Route {
        Route {
            dirties: true,
            ..self
        }
    }

    /// Several statements sent together: the primary wins, and so does a
    /// pin or a dirtying statement.
    pub fn merge(self, other: Route) -> Route {
        let pins = self.pins || other.pins;
        let dirties = self.dirties || other.dirties;
        let pick = match (self.target, other.target) {
            (Target::Replica, Target::Primary) => other,
            (Target::Primary, _) => self,
            (Target::Replica, Target::Replica) if self.reason == Reason::ReadOnlyTransaction => {
                self
            }
            _ => other,
        };
        Route {
            pins,
            dirties,
            ..pick
        }
    }

    /// The primary, keeping its connection for the rest of the session.
    pub const fn pinned(reason: Reason) -> Route {
        Route {
            target: Target::Primary,
            reason,
            pins: true,
            dirties: false,
        }
    }
}

/// Statements longer than this are classified but not cached.
const MAX_CACHED_SQL: usize = 16 * 1024;

#[derive(Clone)]
struct TextWeight;

impl Weighter<Box<str>, Route> for TextWeight {
    fn weight(&self, key: &Box<str>, _: &Route) -> u64 {
        key.len() as u64 + 64
    }
}

/// What routing knows besides the text: the operator's
/// `routing.write_functions` and the catalog's facts.
pub struct Knowledge {
    write_functions: HashSet<String>,
    facts: Arc<Facts>,
}

impl Knowledge {
    /// From the configured write functions (any case) and catalog facts.
    pub fn new(write_functions: &[String], facts: Arc<Facts>) -> Knowledge {
        Knowledge {
            write_functions: write_functions
                .iter()
                .map(|f| f.to_ascii_lowercase())
                .collect(),
            facts,
        }
    }

    /// The catalog facts.
    pub fn facts(&self) -> &Facts {
        &self.facts
    }
}

/// Classifies statements, with a bounded cache. Built from the routing
/// config and the catalog's facts; rebuilt when either changes.
pub struct Router {
    known: Knowledge,
    cache: Cache<Box<str>, Route, TextWeight>,
    /// Unique among the routers of this process: a thread's last answer
    /// (see [`Router::classify_cached`]) is only ever this router's.
    id: u64,
    /// Bumped when an entry of `cache` is overwritten in place, so a
    /// thread's last answer taken before is not used after.
    edits: AtomicU64,
    /// Told when a freshly classified statement calls an unknown function.
    unknown_seen: Option<Arc<tokio::sync::Notify>>,
}

impl Router {
    /// A router whose cache holds about `cache_bytes` of statement text;
    /// `unknown_seen` is notified when a statement calls a function the
    /// facts do not place.
    pub fn new(
        known: Knowledge,
        cache_bytes: u64,
        unknown_seen: Option<Arc<tokio::sync::Notify>>,
    ) -> Router {
        Router {
            known,
            cache: Cache::with_weighter(
                (cache_bytes / 256).max(16) as usize,
                cache_bytes.max(4096),
                TextWeight,
            ),
            unknown_seen,
            id: NEXT_ROUTER.fetch_add(1, Ordering::Relaxed),
            edits: AtomicU64::new(0),
        }
    }

    /// What it knows.
    pub fn knowledge(&self) -> &Knowledge {
        &self.known
    }

    /// Routes one query string (which may hold several statements). The
    /// cache key is the text with its number and string literals replaced,
    /// so `WHERE id = 1` and `WHERE id = 2` share one parse.
    pub fn classify(&self, sql: &str) -> Route {
        self.classify_cached(sql).0
    }

    /// [`Router::classify`], and whether the answer came from the cache.
    pub fn classify_cached(&self, sql: &str) -> (Route, bool) {
        if sql.len() > MAX_CACHED_SQL {
            return (self.fresh(sql), false);
        }
        // The key is written into this thread's buffer: a hit (nearly
        // every statement) allocates nothing.
        // The thread also keeps its last answer: a client repeating one
        // statement with other literals (most do) skips the shared cache's
        // hashing and shard lock.
        thread_local! {
            static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
            static LAST: std::cell::RefCell<Last> = const { std::cell::RefCell::new(Last::EMPTY) };
        }
        let edits = self.edits.load(Ordering::Acquire);
        if let Some(route) = LAST.with_borrow(|last| last.same_text(self.id, edits, sql)) {
            return (route, true);
        }
        let hit = KEY.with_borrow_mut(|buf| {
            let key = if write_cache_key(sql, buf) {
                buf.as_str()
            } else {
                sql
            };
            let last = LAST.with_borrow(|last| {
                (last.is_of(self.id, edits) && last.key == key).then_some(last.route)
            });
            let hit = match last {
                Some(route) => Ok(route),
                None => {
                    let hit = self.cache.get(key).ok_or_else(|| Box::<str>::from(key));
                    if let Ok(route) = hit {
                        LAST.with_borrow_mut(|last| last.keep(self.id, edits, key, sql, route));
                    }
                    hit
                }
            };
            if buf.capacity() > MAX_CACHED_SQL {
                *buf = String::new();
            }
            hit
        });
        match hit {
            Ok(route) => (route, true),
            Err(key) => {
                let route = self.fresh(sql);
                self.cache.insert(key, route);
                (route, false)
            }
        }
    }

    fn fresh(&self, sql: &str) -> Route {
        let route = classify_text(sql, &self.known);
        if route.reason == Reason::Unknown
            && let Some(notify) = &self.unknown_seen
        {
            notify.notify_one();
        }
        route
    }

    /// Explains the route of `sql`: the verdict and the facts behind it.
    pub fn explain(&self, sql: &str) -> Explanation {
        let (route, cached) = self.classify_cached(sql);
        explain::explain(sql, route, cached, &self.known)
    }

    /// Remembers that a replica refused `sql` because it is a standby: it
    /// routes to the primary from now on (while the route cache keeps it;
    /// a refusal after eviction or a catalog change teaches it again).
    /// Returns whether this is news.
    pub fn mark_standby_refused(&self, sql: &str) -> bool {
        if sql.len() > MAX_CACHED_SQL {
            return false;
        }
        let key = cache_key(sql);
        let old = self.cache.get(&*key);
        if old.is_some_and(|r| r.reason == Reason::StandbyRefused) {
            return false;
        }
        let dirties = old.is_some_and(|r| r.dirties);
        let route = Route {
            dirties,
            ..Route::primary(Reason::StandbyRefused)
        };
        self.cache.insert(key.into(), route);
        self.edits.fetch_add(1, Ordering::Release);
        true
    }
}

/// The id of the next [`Router`].
static NEXT_ROUTER: AtomicU64 = AtomicU64::new(1);

/// A thread's last cache hit: which router (and which of its edits)
/// answered, for which key, and the text it was asked about.
struct Last {
    router: u64,
    edits: u64,
    key: String,
    /// The statement whose key was `key`: a driver's unnamed Parse sends
    /// the same text again and again, which then needs no key at all.
    text: String,
    route: Route,
}

impl Last {
    /// Matches no router (their ids start at 1).
    const EMPTY: Last = Last {
        router: 0,
        edits: 0,
        key: String::new(),
        text: String::new(),
        route: Route::primary(Reason::Unknown),
    };

    fn keep(&mut self, router: u64, edits: u64, key: &str, text: &str, route: Route) {
        self.router = router;
        self.edits = edits;
        self.key.clear();
        self.key.push_str(key);
        self.text.clear();
        self.text.push_str(text);
        self.route = route;
    }

    /// Whether it was kept by this router as it is now.
    fn is_of(&self, router: u64, edits: u64) -> bool {
        self.router == router && self.edits == edits
    }

    /// The route kept for exactly `text`, by this router as it is.
    fn same_text(&self, router: u64, edits: u64, text: &str) -> Option<Route> {
        // The last bytes first: a statement sent with other literals
        // mostly differs near its end, and is told apart without a memcmp.
        (self.is_of(router, edits)
            && self.text.len() == text.len()
            && self.text.as_bytes().last_chunk::<8>() == text.as_bytes().last_chunk::<8>()
            && self.text == text)
            .then_some(self.route)
    }
}

/// The statement with number and single-quoted string literals replaced by
/// `?`, so texts that differ only in literal values share one cache entry.
/// Literal values never change a route, with one exception kept whole:
/// `set_config(..., false)`. Texts with comments, dollar quoting or
/// backslashes are used as they are (a quote inside them could otherwise
/// hide a function call from the key); so are unterminated literals.
pub fn cache_key(sql: &str) -> Cow<'_, str> {
    let mut key = String::new();
    if write_cache_key(sql, &mut key) {
        Cow::Owned(key)
    } else {
        Cow::Borrowed(sql)
    }
}

/// Writes [`cache_key`] of `sql` into `out` (cleared first). False when
/// the key is `sql` itself (`out` is then left in any state).
fn write_cache_key(sql: &str, out: &mut String) -> bool {
    out.clear();
    let bytes = sql.as_bytes();
    // One pass: every byte is looked at once, here or in `closing_quote`,
    // and the texts used as they are (dollar quoting, backslashes,
    // comments: see `SPECIAL`) are told apart on the way.
    let mut keep_strings = None;
    // Runs of ordinary bytes are copied whole; every cut falls on an ASCII
    // byte, so the slices of `sql` copied are whole characters.
    out.reserve(bytes.len());
    let (mut i, mut run) = (0, 0);
    let mut last_ident = false;
    while i < bytes.len() {
        // Identifier and other bytes in one tight run; only the class of
        // its last byte matters after it.
        let start = i;
        i = ordinary_run_end(bytes, i);
        if i > start {
            last_ident = KEY_CLASS[usize::from(bytes[i - 1])] == IDENT;
        }
        let Some(&b) = bytes.get(i) else { break };
        match KEY_CLASS[usize::from(b)] {
            SPECIAL if opens_uncached(bytes, i) => return false,
            SPECIAL => {
                i += 1;
                last_ident = false;
            }
            DIGIT if last_ident => i += 1,
            DIGIT => {
                out.push_str(&sql[run..i]);
                while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                    i += 1;
                }
                out.push('?');
                run = i;
                last_ident = false;
            }
            _ => {
                let Some(end) = closing_quote(bytes, i, b) else {
                    return false;
                };
                // Quoted identifiers (and kept or prefixed strings) stay
                // whole, quotes and all; other strings become `?`.
                if !(b == b'"'
                    || last_ident
                    || *keep_strings.get_or_insert_with(|| calls_set_config(bytes)))
                {
                    out.push_str(&sql[run..i]);
                    out.push('?');
                    run = end + 1;
                }
                i = end + 1;
                last_ident = b == b'"';
            }
        }
    }
    out.push_str(&sql[run..]);
    true
}

/// Where the run of identifier and other bytes from `from` ends: eight
/// bytes a step while none of them is a digit, a quote or `SPECIAL` (the
/// OR of their classes is at most `IDENT`), then byte by byte.
fn ordinary_run_end(bytes: &[u8], from: usize) -> usize {
    let mut i = from;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let classes = chunk
            .iter()
            .fold(OTHER, |all, &b| all | KEY_CLASS[usize::from(b)]);
        if classes > IDENT {
            break;
        }
        i += 8;
    }
    i + bytes[i..]
        .iter()
        .position(|&b| KEY_CLASS[usize::from(b)] > IDENT)
        .unwrap_or(bytes.len() - i)
}

/// Whether the `SPECIAL` byte at `at` makes the text one used as it is: a
/// dollar sign, a backslash, or the start of a comment.
fn opens_uncached(bytes: &[u8], at: usize) -> bool {
    matches!(
        &bytes[at..],
        [b'$' | b'\\', ..] | [b'-', b'-', ..] | [b'/', b'*', ..]
    )
}

/// Whether the text names `set_config` (whose string arguments stay in
/// the key: its third decides whether a setting outlives the transaction).
fn calls_set_config(bytes: &[u8]) -> bool {
    memchr::memchr_iter(b'_', bytes).any(|at| {
        at >= 3
            && bytes
                .get(at - 3..at + 7)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"set_config"))
    })
}

/// Byte classes for [`cache_key`]: identifier bytes (letters, `_`, digits
/// and every byte of a multi-byte character), digits, quotes, the rest.
const OTHER: u8 = 0;
const IDENT: u8 = 1;
const DIGIT: u8 = 2;
const QUOTE: u8 = 3;
/// `$`, `\\`, `-` and `/`: what may make the text one used as it is.
const SPECIAL: u8 = 4;
const KEY_CLASS: [u8; 256] = {
    let mut table = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            b'0'..=b'9' => DIGIT,
            b'a'..=b'z' | b'A'..=b'Z' | b'_' | 0x80..=0xff => IDENT,
            b'"' | b'\'' => QUOTE,
            b'$' | b'\\' | b'-' | b'/' => SPECIAL,
            _ => OTHER,
        };
        b += 1;
    }
    table
};

/// The index of the quote that closes the one at `start` (doubled quotes
/// are escapes), if any.
fn closing_quote(bytes: &[u8], start: usize, quote: u8) -> Option<usize> {
    let mut i = start + 1;
    while i < bytes.len() {
        if KEY_CLASS[usize::from(bytes[i])] == SPECIAL && opens_uncached(bytes, i) {
            // (inside a literal too: the text is used as it is)
            return None;
        }
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return Some(i);
        }
        i += 1;
    }
    None
}

/// `name` in lower case, in `buf` when it fits (catalog names have at most
/// 63 bytes); `None` for a longer one.
pub(crate) fn fold<'b>(name: &str, buf: &'b mut [u8; 64]) -> Option<&'b str> {
    let out = buf.get_mut(..name.len())?;
    out.copy_from_slice(name.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// Whether `haystack` contains the ASCII `needle`, in any case.
pub(crate) fn contains_ignoring_case(haystack: &str, needle: &str) -> bool {
    let (first, rest) = match needle.as_bytes() {
        [first, rest @ ..] => (*first, rest),
        [] => return true,
    };
    memchr::memchr2_iter(
        first.to_ascii_lowercase(),
        first.to_ascii_uppercase(),
        haystack.as_bytes(),
    )
    .any(|at| {
        haystack.as_bytes()[at + 1..]
            .get(..rest.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(rest))
    })
}

/// Routes a query string without a cache.
pub fn classify_text(sql: &str, known: &Knowledge) -> Route {
    let hint = scan::leading_hint(sql);
    let mut route = match scan::fast_path(sql).or_else(|| select::plain_select(sql, known)) {
        Some(route) => route,
        None => classify::parsed(sql, known),
    };
    if route.target == Target::Primary
        && !route.dirties
        && (contains_ignoring_case(sql, "pg_settings") || contains_ignoring_case(sql, "set_config"))
    {
        route = route.dirtying();
    }
    match hint {
        Some(Target::Primary) => Route {
            reason: Reason::Hint,
            target: Target::Primary,
            ..route
        },
        // A replica hint moves what the router was merely unsure of; it
        // never sends a write, a lock or session state to a replica.
        Some(Target::Replica)
            if matches!(
                route.reason,
                Reason::Read
                    | Reason::ParseError
                    | Reason::Function
                    | Reason::NodeState
                    | Reason::Unknown
            ) && !route.pins =>
        {
            Route::replica(Reason::Hint)
        }
        _ => route,
    }
}

#[cfg(test)]
mod tests;
