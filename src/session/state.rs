//! What a client believes lives in its session, independent of the server
//! connection that serves it: named prepared statements and settings
//! (startup parameters and session SETs). Replayed onto whichever server
//! connection the session uses next.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use postgres_protocol::escape::escape_literal;

use super::commands::{Command, recognise};
use crate::router::Route;

/// A statement the client prepared.
#[derive(Debug)]
pub struct Statement {
    /// SQL text, as the client's bytes (in its `client_encoding`).
    pub sql: Vec<u8>,
    /// Parameter type count and OIDs, as the client sent them.
    pub types: Vec<u8>,
    /// The name it has on server connections: the same text, types and
    /// `search_path` get the same name, so clients share server
    /// statements only where the text means the same.
    pub server_name: Arc<str>,
    /// Its route.
    pub route: Route,
    /// The session command it is (a SET prepared as a statement), tracked
    /// when it is executed.
    pub command: Option<Command>,
}

impl Statement {
    /// The same statement, routed to `route`.
    pub fn rerouted(&self, route: Route) -> Statement {
        Statement {
            sql: self.sql.clone(),
            types: self.types.clone(),
            server_name: self.server_name.clone(),
            route,
            command: self.command.clone(),
        }
    }

    /// A statement with its server name derived from text, types and the
    /// session's name-resolution context (`context`, see
    /// [`Settings::resolution_key`]).
    /// The unnamed statement: sent under no server name, so none is made.
    pub fn unnamed(sql: &[u8], types: &[u8], route: Route) -> Statement {
        static NONE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
        Statement {
            sql: sql.to_vec(),
            types: types.to_vec(),
            server_name: NONE.clone(),
            route,
            command: std::str::from_utf8(sql).ok().and_then(recognise),
        }
    }

    pub fn new(sql: &[u8], types: &[u8], route: Route, context: u64) -> Statement {
        let mut h = DefaultHasher::new();
        sql.hash(&mut h);
        types.hash(&mut h);
        context.hash(&mut h);
        let command = std::str::from_utf8(sql).ok().and_then(recognise);
        Statement {
            sql: sql.to_vec(),
            types: types.to_vec(),
            server_name: format!("pgsplit_{:016x}", h.finish()).into(),
            route,
            command,
        }
    }
}

/// The client's named statements.
#[derive(Debug, Default)]
pub struct Statements {
    /// (foldhash, seeded per process: looked up on every Bind)
    named: foldhash::HashMap<Arc<str>, Arc<Statement>>,
    /// The unnamed statement and the token of its last parse (see
    /// [`crate::pool::ConnState::unnamed`]).
    pub unnamed: Option<(Arc<Statement>, u64)>,
}

impl Statements {
    /// A named statement.
    pub fn get(&self, name: &str) -> Option<&Arc<Statement>> {
        self.named.get(name)
    }

    /// A named statement with the client's name for it (shared, for
    /// replies that must name it).
    pub fn get_named(&self, name: &str) -> Option<(&Arc<str>, &Arc<Statement>)> {
        self.named.get_key_value(name)
    }

    /// Adds a named statement; false when the name is taken.
    pub fn add(&mut self, name: &str, statement: Arc<Statement>) -> bool {
        if self.named.contains_key(name) {
            return false;
        }
        self.named.insert(Arc::from(name), statement);
        true
    }

    /// Replaces a named statement (its route changed).
    pub fn replace(&mut self, name: &str, statement: Arc<Statement>) {
        if let Some(s) = self.named.get_mut(name) {
            *s = statement;
        }
    }

    /// Forgets a named statement.
    pub fn remove(&mut self, name: &str) -> Option<Arc<Statement>> {
        self.named.remove(name)
    }

    /// Forgets every statement.
    pub fn clear(&mut self) {
        self.named.clear();
        self.unnamed = None;
    }
}

/// Startup parameters that are connection facts, not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "replication", "options"];

/// Settings that a session re-reading its state from a node leaves alone:
/// per-transaction values, and roles (which pin instead).
pub const NOT_CAPTURED: &[&str] = &[
    "transaction_isolation",
    "transaction_read_only",
    "transaction_deferrable",
    "role",
    "session_authorization",
    "is_superuser",
];

/// The session's settings: startup values (what RESET returns to), and
/// what the session SET since. Replayed onto each server connection the
/// session uses.
#[derive(Debug, Default)]
pub struct Settings {
    startup: Vec<(String, String)>,
    /// By lowercased name: the SQL that sets it (a tracked SET's text, or
    /// `set_config` of a value read back from a node).
    sets: BTreeMap<String, String>,
    /// Fingerprint and text of the replay SQL, rebuilt when the settings
    /// change rather than on every batch.
    replay: Option<(u64, String)>,
    /// Whether transactions default to SERIALIZABLE (rebuilt with replay).
    serializable: bool,
}

impl Settings {
    /// Settings from the startup packet, `options` (`-c name=value`)
    /// included.
    pub fn from_startup(params: &[(String, String)]) -> Settings {
        let mut startup: Vec<(String, String)> = Vec::new();
        let mut add = |name: String, value: String| {
            // A later value for the same name wins, as on the server.
            startup.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
            startup.push((name, value));
        };
        for (name, value) in params {
            if name == "options" {
                for (n, v) in parse_options(value) {
                    add(n, v);
                }
            } else if !NOT_SETTINGS.contains(&name.as_str()) && !name.starts_with("_pq_.") {
                add(name.clone(), value.clone());
            }
        }
        let mut settings = Settings {
            startup,
            ..Settings::default()
        };
        settings.rebuild();
        settings
    }

    /// The SQL that brings a fresh server connection to these settings,
    /// or `None` when there are none.
    pub fn replay_sql(&self) -> Option<&str> {
        self.replay.as_ref().map(|(_, sql)| sql.as_str())
    }

    /// Fingerprint of [`Settings::replay_sql`].
    pub fn fingerprint(&self) -> Option<u64> {
        self.replay.as_ref().map(|(fingerprint, _)| *fingerprint)
    }

    /// What decides how a statement's names resolve (`search_path`), as a
    /// number: statements prepared under different values are different
    /// server statements.
    pub fn resolution_key(&self) -> u64 {
        let mut h = DefaultHasher::new();
        match self.sets.get("search_path") {
            Some(sql) => sql.hash(&mut h),
            None => self.startup_value("search_path").hash(&mut h),
        }
        h.finish()
    }

    /// Whether the session's transactions default to SERIALIZABLE, which a
    /// hot standby refuses: its reads must run on the primary.
    pub fn serializable(&self) -> bool {
        self.serializable
    }

    /// Whether the session may have made its transactions read-only by
    /// default (a SET of its own, by any means, or a startup option): a
    /// 25006 is then maybe its own doing, not a fence.
    pub fn read_only(&self) -> bool {
        let name = "default_transaction_read_only";
        self.sets.contains_key(name) || self.startup_value(name).is_some()
    }

    fn find_serializable(&self) -> bool {
        let name = "default_transaction_isolation";
        match self.sets.get(name) {
            Some(sql) => crate::router::contains_ignoring_case(sql, "serializable"),
            None => self
                .startup_value(name)
                .is_some_and(|v| v.eq_ignore_ascii_case("serializable")),
        }
    }

    /// The startup parameter `name` (any case), as it was given.
    fn startup_entry(&self, name: &str) -> Option<&(String, String)> {
        self.startup
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// The value given at connect time for `name`, if any.
    pub fn startup_value(&self, name: &str) -> Option<&str> {
        self.startup_entry(name).map(|(_, v)| v.as_str())
    }

    /// SQL that sets `name` back to its startup value, when it has one
    /// (what PostgreSQL's RESET does on a direct connection).
    pub fn restore_sql(&self, name: &str) -> Option<String> {
        self.startup_entry(name)
            .map(|(name, value)| format!("SELECT {}", set_config(name, value)))
    }

    /// SQL that sets every startup value again (after RESET ALL).
    pub fn restore_all_sql(&self) -> Option<String> {
        if self.startup.is_empty() {
            return None;
        }
        let calls: Vec<String> = self.startup.iter().map(|(n, v)| set_config(n, v)).collect();
        Some(format!("SELECT {}", calls.join(", ")))
    }

    fn rebuild(&mut self) {
        self.serializable = self.find_serializable();
        self.replay = self.build_replay().map(|sql| {
            let mut h = DefaultHasher::new();
            sql.hash(&mut h);
            (h.finish(), sql)
        });
    }

    fn build_replay(&self) -> Option<String> {
        let mut sql = self.restore_all_sql().map(|s| s + ";").unwrap_or_default();
        for set in self.sets.values() {
            sql.push_str(set.trim_end().trim_end_matches(';'));
            sql.push(';');
        }
        (!sql.is_empty()).then_some(sql)
    }

    /// Records a SET (`Some(sql)`) or RESET (`None`) of `name` that took
    /// effect outside a transaction.
    pub fn record(&mut self, name: String, sql: Option<String>) {
        match sql {
            Some(sql) => {
                self.sets.insert(name, sql);
            }
            None => {
                self.sets.remove(&name);
            }
        }
        self.rebuild();
    }

    /// RESET ALL or DISCARD ALL: back to the startup settings.
    pub fn reset_all(&mut self) {
        self.sets.clear();
        self.rebuild();
    }

    /// Takes the session's settings as a node reports them (`name`,
    /// `current_setting(name)` of every setting whose source is the
    /// session), after something the proxy could not follow changed them.
    /// Values equal to the startup ones are the startup ones.
    pub fn adopt(&mut self, read: &[(String, String)]) {
        self.sets.clear();
        for (name, value) in read {
            let lower = name.to_ascii_lowercase();
            if NOT_CAPTURED.contains(&lower.as_str()) || self.startup_value(&lower) == Some(value) {
                continue;
            }
            self.sets
                .insert(lower, format!("SELECT {}", set_config(name, value)));
        }
        self.rebuild();
    }
}

fn set_config(name: &str, value: &str) -> String {
    // set_config takes the value as text, as the startup packet does (a SET
    // with a quoted list would make it one identifier). A value that is not
    // ASCII is spelled in ASCII, so the replay means the same under any
    // client_encoding the connection has.
    let value = if value.is_ascii() {
        escape_literal(value)
    } else {
        let hex: String = value.bytes().map(|b| format!("{b:02x}")).collect();
        format!("convert_from(decode('{hex}', 'hex'), 'UTF8')")
    };
    format!("set_config({}, {value}, false)", escape_literal(name))
}

/// Reads `-c name=value` and `--name=value` pairs from `options`.
fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut words = options.split_whitespace();
    while let Some(word) = words.next() {
        let pair = if word == "-c" {
            words.next()
        } else if let Some(rest) = word.strip_prefix("-c") {
            Some(rest)
        } else {
            word.strip_prefix("--")
        };
        if let Some((name, value)) = pair.and_then(|p| p.split_once('=')) {
            out.push((name.replace('-', "_"), value.to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_settings_and_options() {
        let params = vec![
            ("user".into(), "app".into()),
            ("database".into(), "db".into()),
            ("application_name".into(), "web".into()),
            (
                "options".into(),
                "-c search_path=a,b --statement-timeout=5s".into(),
            ),
        ];
        let s = Settings::from_startup(&params);
        assert_eq!(
            s.replay_sql().unwrap(),
            "SELECT set_config('application_name', 'web', false), set_config('search_path', 'a,b', false), \
             set_config('statement_timeout', '5s', false);"
        );
        assert!(Settings::from_startup(&params[..2]).replay_sql().is_none());
    }

    #[test]
    fn sets_resets_and_adopted_values() {
        let params = vec![("TimeZone".into(), "America/Los_Angeles".into())];
        let mut s = Settings::from_startup(&params);
        let f0 = s.fingerprint();
        s.record("a".into(), Some("SET a = 1".into()));
        assert_ne!(s.fingerprint(), f0);
        s.record("b".into(), Some("SET b = 2".into()));
        assert_eq!(
            s.replay_sql().unwrap(),
            "SELECT set_config('TimeZone', 'America/Los_Angeles', false);SET a = 1;SET b = 2;"
        );
        s.record("a".into(), None);
        assert!(!s.replay_sql().unwrap().contains("SET a"));
        s.reset_all();
        assert_eq!(s.fingerprint(), f0);
        assert_eq!(
            s.restore_sql("timezone").unwrap(),
            "SELECT set_config('TimeZone', 'America/Los_Angeles', false)"
        );
        assert_eq!(s.restore_sql("search_path"), None);
        let k0 = s.resolution_key();
        s.adopt(&[
            ("TimeZone".into(), "America/Los_Angeles".into()),
            ("search_path".into(), "s1".into()),
            ("transaction_isolation".into(), "serializable".into()),
        ]);
        assert_eq!(
            s.replay_sql().unwrap(),
            "SELECT set_config('TimeZone', 'America/Los_Angeles', false);\
             SELECT set_config('search_path', 's1', false);"
        );
        assert_ne!(s.resolution_key(), k0);
        s.adopt(&[("application_name".into(), "café".into())]);
        assert!(
            s.replay_sql()
                .unwrap()
                .contains("convert_from(decode('636166c3a9', 'hex'), 'UTF8')"),
            "{:?}",
            s.replay_sql()
        );
    }

    #[test]
    fn same_text_same_server_name() {
        let r = Route::replica(crate::router::Reason::Read);
        let a = Statement::new(b"SELECT 1", &[0, 0], r, 1);
        let b = Statement::new(b"SELECT 1", &[0, 0], r, 1);
        let c = Statement::new(b"SELECT 2", &[0, 0], r, 1);
        let d = Statement::new(b"SELECT 1", &[0, 0], r, 2);
        assert_eq!(a.server_name, b.server_name);
        assert_ne!(a.server_name, c.server_name);
        assert_ne!(a.server_name, d.server_name, "another search_path");
        let set = Statement::new(b"SET x = 1", &[0, 0], r, 1);
        assert_eq!(set.command, Some(Command::Set { name: "x".into() }));
    }
}
