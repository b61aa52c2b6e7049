//! What a client believes lives in its session, independent of the server
//! connection that serves it: named prepared statements and settings
//! (startup parameters and session SETs). Replayed onto whichever server
//! connection the session uses next.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use postgres_protocol::escape::escape_literal;

use crate::router::Route;

/// A statement the client prepared.
#[derive(Debug)]
pub struct Statement {
    /// SQL text.
    pub sql: String,
    /// Parameter type count and OIDs, as the client sent them.
    pub types: Vec<u8>,
    /// The name it has on server connections: the same text and types get
    /// the same name, so clients share server statements.
    pub server_name: Arc<str>,
    /// Its route.
    pub route: Route,
}

impl Statement {
    /// A statement with its server name derived from text and types.
    pub fn new(sql: &str, types: &[u8], route: Route) -> Statement {
        let mut h = DefaultHasher::new();
        sql.hash(&mut h);
        types.hash(&mut h);
        Statement {
            sql: sql.to_owned(),
            types: types.to_vec(),
            server_name: format!("pgsplit_{:016x}", h.finish()).into(),
            route,
        }
    }
}

/// The client's named statements.
#[derive(Debug, Default)]
pub struct Statements {
    named: HashMap<String, Arc<Statement>>,
    /// The unnamed statement and the id of the server connection it was
    /// last parsed on.
    pub unnamed: Option<(Arc<Statement>, u64)>,
}

impl Statements {
    /// A named statement.
    pub fn get(&self, name: &str) -> Option<&Arc<Statement>> {
        self.named.get(name)
    }

    /// Adds a named statement; false when the name is taken.
    pub fn add(&mut self, name: &str, statement: Arc<Statement>) -> bool {
        if self.named.contains_key(name) {
            return false;
        }
        self.named.insert(name.to_owned(), statement);
        true
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

/// The session's settings.
#[derive(Debug, Default)]
pub struct Settings {
    startup: Vec<(String, String)>,
    sets: BTreeMap<String, String>,
    /// SETs made inside the open transaction: kept if it commits.
    pending: Vec<(String, Option<String>)>,
    /// Fingerprint and text of the replay SQL, rebuilt when the settings
    /// change rather than on every batch.
    replay: Option<(u64, String)>,
}

impl Settings {
    /// Settings from the startup packet, `options` (`-c name=value`)
    /// included.
    pub fn from_startup(params: &[(String, String)]) -> Settings {
        let mut startup = Vec::new();
        for (name, value) in params {
            if name == "options" {
                startup.extend(parse_options(value));
            } else if !NOT_SETTINGS.contains(&name.as_str()) && !name.starts_with("_pq_.") {
                startup.push((name.clone(), value.clone()));
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

    fn rebuild(&mut self) {
        self.replay = self.build_replay().map(|sql| {
            let mut h = DefaultHasher::new();
            sql.hash(&mut h);
            (h.finish(), sql)
        });
    }

    fn build_replay(&self) -> Option<String> {
        if self.startup.is_empty() && self.sets.is_empty() {
            return None;
        }
        let mut sql = String::new();
        // set_config takes the value as text, as the startup packet does
        // (a SET with a quoted list would make it one identifier).
        if !self.startup.is_empty() {
            let calls: Vec<String> = self
                .startup
                .iter()
                .map(|(name, value)| {
                    format!(
                        "set_config({}, {}, false)",
                        escape_literal(name),
                        escape_literal(value)
                    )
                })
                .collect();
            sql.push_str(&format!("SELECT {};", calls.join(", ")));
        }
        for set in self.sets.values() {
            sql.push_str(set.trim_end().trim_end_matches(';'));
            sql.push(';');
        }
        Some(sql)
    }

    /// Records a SET (`Some(sql)`) or RESET (`None`) of `name`, now or when
    /// the open transaction commits.
    pub fn record(&mut self, name: String, sql: Option<String>, in_transaction: bool) {
        if in_transaction {
            self.pending.push((name, sql));
        } else {
            self.apply(name, sql);
        }
    }

    fn apply(&mut self, name: String, sql: Option<String>) {
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
        self.pending.clear();
        self.rebuild();
    }

    /// The transaction ended: keep its SETs if it committed. Returns
    /// whether the settings changed.
    pub fn end_transaction(&mut self, committed: bool) -> bool {
        let pending = std::mem::take(&mut self.pending);
        let changed = committed && !pending.is_empty();
        for (name, sql) in pending {
            if committed {
                self.apply(name, sql);
            }
        }
        changed
    }
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
    fn sets_commit_or_vanish_with_their_transaction() {
        let mut s = Settings::default();
        s.record("a".into(), Some("SET a = 1".into()), false);
        let f1 = s.fingerprint();
        s.record("b".into(), Some("SET b = 2".into()), true);
        s.end_transaction(false);
        assert_eq!(s.fingerprint(), f1);
        s.record("b".into(), Some("SET b = 2".into()), true);
        s.end_transaction(true);
        assert_eq!(s.replay_sql().unwrap(), "SET a = 1;SET b = 2;");
        s.record("a".into(), None, false);
        assert_eq!(s.replay_sql().unwrap(), "SET b = 2;");
        s.reset_all();
        assert_eq!(s.fingerprint(), None);
    }

    #[test]
    fn same_text_same_server_name() {
        let r = Route {
            target: crate::router::Target::Replica,
            reason: crate::router::Reason::Read,
            pins: false,
        };
        let a = Statement::new("SELECT 1", &[0, 0], r);
        let b = Statement::new("SELECT 1", &[0, 0], r);
        let c = Statement::new("SELECT 2", &[0, 0], r);
        assert_eq!(a.server_name, b.server_name);
        assert_ne!(a.server_name, c.server_name);
    }
}
