//! What the catalog says about functions and relations, as routing needs
//! it: which functions a replica may run, and which relations a replica
//! cannot answer for. Built from rows the catalog task read on the primary
//! of every database clients use ([`Catalog`]); pure, no I/O.
//!
//! The rules:
//! - A function is safe on a replica when every function of that name
//!   (in any schema, any loaded database: resolution through a session's
//!   `search_path` can reach any of them) is non-volatile, or volatile and
//!   on the short reviewed list [`VOLATILE_SAFE`] of built-ins a standby
//!   runs fine. A qualified `schema.name` is judged by that schema's
//!   functions alone.
//! - A non-volatile user function whose body calls a primary-only
//!   function or reads a primary-only relation is primary-only too
//!   (transitively): a STABLE function may call a VOLATILE one that writes.
//! - Relations a replica cannot answer for: unlogged tables (and unlogged
//!   sequences), and user views whose definition calls a primary-only
//!   function or reads a primary-only relation (transitively). The system
//!   views of the node's own state are judged by name
//!   ([`super::functions::is_node_view`]).
//! - A name the facts do not hold is unknown, and the router sends it to
//!   the primary. Names of several databases are merged the safe way: one
//!   primary-only definition anywhere makes the name primary-only.
//!
//! Bodies and view definitions are scanned for words, not parsed: a word
//! followed by `(` that names a primary-only function, or any word that
//! names a primary-only relation, marks the function or view. The scan
//! errs towards the primary (a column that shares a primary-only
//! function's name and is followed by `(` marks it too).

use std::collections::{BTreeSet, HashMap, HashSet};

/// Volatile built-ins a standby runs as well as a primary: they write
/// nothing, lock nothing and read no node-local state that differs.
pub const VOLATILE_SAFE: &[&str] = &[
    "random",
    "random_normal",
    "clock_timestamp",
    "timeofday",
    "gen_random_uuid",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "current_query",
];

/// One function row of the catalog (`pg_proc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRow {
    /// `pg_namespace.nspname`.
    pub schema: String,
    /// `pg_proc.proname`.
    pub name: String,
    /// `pg_proc.provolatile`.
    pub volatile: bool,
    /// The body of a user function in SQL or PL/pgSQL, to be scanned.
    pub body: Option<String>,
}

/// One relation row of the catalog (`pg_class`: tables, views,
/// materialized views, sequences, foreign tables), with a user view's
/// definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationRow {
    /// `pg_namespace.nspname`.
    pub schema: String,
    /// `pg_class.relname`.
    pub name: String,
    /// `pg_class.relpersistence = 'u'`.
    pub unlogged: bool,
    /// A view's definition (`pg_get_viewdef`).
    pub definition: Option<String>,
}

/// What the catalog of one database holds, as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Every function.
    pub functions: Vec<FunctionRow>,
    /// Every relation a query can read.
    pub relations: Vec<RelationRow>,
}

/// Why a function or relation must be read on the primary, or that it
/// need not be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fact {
    /// A replica may run it.
    Safe,
    /// Declared VOLATILE (and not on the reviewed list).
    Volatile,
    /// Its body or definition calls a primary-only function or reads a
    /// primary-only relation.
    CallsPrimary,
    /// An unlogged relation: a standby has no rows of it.
    Unlogged,
}

impl Fact {
    /// Label for logs and `explain`.
    pub fn as_str(self) -> &'static str {
        match self {
            Fact::Safe => "safe",
            Fact::Volatile => "volatile",
            Fact::CallsPrimary => "calls_primary_only",
            Fact::Unlogged => "unlogged",
        }
    }
}

/// A function name's fact, and whether any definition of it is a user's
/// (outside `pg_catalog`), which may also change session state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionFact {
    /// The worst of its definitions.
    pub fact: Fact,
    /// Defined outside `pg_catalog` somewhere.
    pub user: bool,
}

/// The merged facts of every loaded database. Keys are catalog names as
/// stored (unquoted identifiers fold to lower case before lookup), both
/// bare (`name`) and qualified (`schema.name`).
#[derive(Debug, Default)]
pub struct Facts {
    databases: BTreeSet<String>,
    functions: HashMap<Box<str>, FunctionFact>,
    relations: HashMap<Box<str>, Fact>,
    known_relations: HashSet<Box<str>>,
}

impl Facts {
    /// Merges the catalogs of several databases.
    pub fn build<'a>(catalogs: impl IntoIterator<Item = (&'a str, &'a Catalog)>) -> Facts {
        let mut facts = Facts::default();
        for (database, catalog) in catalogs {
            facts.databases.insert(database.to_owned());
            let (functions, relations) = judge(catalog);
            for r in &catalog.relations {
                facts
                    .known_relations
                    .insert(r.name.clone().into_boxed_str());
                facts
                    .known_relations
                    .insert(format!("{}.{}", r.schema, r.name).into_boxed_str());
            }
            for (key, new) in functions {
                facts
                    .functions
                    .entry(key)
                    .and_modify(|old| {
                        old.fact = old.fact.max(new.fact);
                        old.user |= new.user;
                    })
                    .or_insert(new);
            }
            for (key, new) in relations {
                facts
                    .relations
                    .entry(key)
                    .and_modify(|old| *old = (*old).max(new))
                    .or_insert(new);
            }
        }
        facts
    }

    /// Whether the catalog of `database` has been read.
    pub fn has_database(&self, database: &str) -> bool {
        self.databases.contains(database)
    }

    /// The databases read.
    pub fn databases(&self) -> impl Iterator<Item = &str> {
        self.databases.iter().map(String::as_str)
    }

    /// A function by its folded name (`schema` too when qualified), or
    /// `None` when no loaded catalog holds it.
    pub fn function(&self, schema: Option<&str>, name: &str) -> Option<FunctionFact> {
        match schema {
            None => self.functions.get(name).copied(),
            Some(schema) => self.functions.get(&*format!("{schema}.{name}")).copied(),
        }
    }

    /// Whether any relation must be judged: most clusters have none.
    pub fn has_primary_relations(&self) -> bool {
        !self.relations.is_empty()
    }

    /// A relation a replica cannot answer for, by its folded name.
    pub fn primary_relation(&self, schema: Option<&str>, name: &str) -> Option<Fact> {
        if self.relations.is_empty() {
            return None;
        }
        match schema {
            None => self.relations.get(name).copied(),
            Some(schema) => self
                .relations
                .get(&*format!("{schema}.{name}"))
                .copied()
                // `pg_temp.x` and friends: judged by the bare name.
                .or_else(|| self.relations.get(name).copied()),
        }
    }

    /// Whether a relation of that folded name is in a loaded catalog.
    pub fn relation_known(&self, schema: Option<&str>, name: &str) -> bool {
        match schema {
            None => self.known_relations.contains(name),
            Some(schema) => self.known_relations.contains(&*format!("{schema}.{name}")),
        }
    }

    /// How many function names and primary-only relations it holds.
    pub fn counts(&self) -> (usize, usize) {
        (self.functions.len(), self.relations.len())
    }
}

type Judged = (HashMap<Box<str>, FunctionFact>, HashMap<Box<str>, Fact>);

/// The facts of one database's catalog.
fn judge(catalog: &Catalog) -> Judged {
    let base = |f: &FunctionRow| {
        if f.volatile && !(f.schema == "pg_catalog" && VOLATILE_SAFE.contains(&f.name.as_str())) {
            Fact::Volatile
        } else {
            Fact::Safe
        }
    };
    let mut facts: Vec<Fact> = catalog.functions.iter().map(base).collect();
    let mut relation_facts: Vec<Option<Fact>> = catalog
        .relations
        .iter()
        .map(|r| r.unlogged.then_some(Fact::Unlogged))
        .collect();
    // Names (bare, lower case as stored) a body must not reach.
    let mut bad_functions: HashSet<&str> = catalog
        .functions
        .iter()
        .zip(&facts)
        .filter(|(_, fact)| **fact != Fact::Safe)
        .map(|(f, _)| f.name.as_str())
        .collect();
    let mut bad_relations: HashSet<&str> = catalog
        .relations
        .iter()
        .zip(&relation_facts)
        .filter(|(_, fact)| fact.is_some())
        .map(|(r, _)| r.name.as_str())
        .collect();
    // To a fixed point: each round marks what reaches a name marked before.
    loop {
        let mut changed = false;
        for (f, fact) in catalog.functions.iter().zip(facts.iter_mut()) {
            if *fact == Fact::Safe
                && f.body
                    .as_deref()
                    .is_some_and(|b| reaches(b, &bad_functions, &bad_relations))
            {
                *fact = Fact::CallsPrimary;
                bad_functions.insert(&f.name);
                changed = true;
            }
        }
        for (r, fact) in catalog.relations.iter().zip(relation_facts.iter_mut()) {
            if fact.is_none()
                && r.definition
                    .as_deref()
                    .is_some_and(|d| reaches(d, &bad_functions, &bad_relations))
            {
                *fact = Some(Fact::CallsPrimary);
                bad_relations.insert(&r.name);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut functions: HashMap<Box<str>, FunctionFact> = HashMap::new();
    for (f, fact) in catalog.functions.iter().zip(&facts) {
        let new = FunctionFact {
            fact: *fact,
            user: f.schema != "pg_catalog",
        };
        for key in [f.name.clone(), format!("{}.{}", f.schema, f.name)] {
            functions
                .entry(key.into_boxed_str())
                .and_modify(|old| {
                    old.fact = old.fact.max(new.fact);
                    old.user |= new.user;
                })
                .or_insert(new);
        }
    }
    let mut relations: HashMap<Box<str>, Fact> = HashMap::new();
    for (r, fact) in catalog.relations.iter().zip(&relation_facts) {
        if let Some(fact) = fact {
            for key in [r.name.clone(), format!("{}.{}", r.schema, r.name)] {
                relations
                    .entry(key.into_boxed_str())
                    .and_modify(|old| *old = (*old).max(*fact))
                    .or_insert(*fact);
            }
        }
    }
    (functions, relations)
}

/// Whether `text` calls one of `functions` (a word followed by `(`), reads
/// one of `relations` or a view of the node's own state (any word).
fn reaches(text: &str, functions: &HashSet<&str>, relations: &HashSet<&str>) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !is_word_byte(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_word_byte(bytes[i]) {
            i += 1;
        }
        let word = text[start..i].to_ascii_lowercase();
        let called = text[i..].trim_start().starts_with('(');
        if (called && functions.contains(word.as_str()))
            || relations.contains(word.as_str())
            || super::functions::is_node_view(&word)
        {
            return true;
        }
    }
    false
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// PostgreSQL 15's `pg_catalog` functions and whether any overload is
    /// volatile, as read from a real catalog.
    const PG15: &str = include_str!("testdata/pg15_functions.txt");

    /// A catalog of PostgreSQL 15's built-ins and `extra` user functions
    /// `(schema, name, volatile, body)`.
    pub(crate) fn catalog(extra: &[(&str, &str, bool, Option<&str>)]) -> Catalog {
        let mut functions: Vec<FunctionRow> = PG15
            .lines()
            .filter_map(|line| line.split_once(' '))
            .map(|(name, v)| FunctionRow {
                schema: "pg_catalog".into(),
                name: name.into(),
                volatile: v == "v",
                body: None,
            })
            .collect();
        functions.extend(
            extra
                .iter()
                .map(|(schema, name, volatile, body)| FunctionRow {
                    schema: (*schema).into(),
                    name: (*name).into(),
                    volatile: *volatile,
                    body: body.map(Into::into),
                }),
        );
        Catalog {
            functions,
            relations: Vec::new(),
        }
    }

    /// Facts of PostgreSQL 15's built-ins, the volatile user function
    /// `audit_log`, the stable `lookup`, and the tables the routing tests
    /// read (`t`, `users`, `orders`...), `pg_catalog` views among them.
    pub(crate) fn sample() -> Facts {
        let mut catalog = catalog(&[
            ("public", "audit_log", true, None),
            ("public", "lookup", false, Some("SELECT $1")),
        ]);
        let table = |schema: &str, name: &str| RelationRow {
            schema: schema.into(),
            name: name.into(),
            unlogged: false,
            definition: None,
        };
        catalog.relations = [
            "t",
            "u",
            "t1",
            "t2",
            "users",
            "orders",
            "docs",
            "items",
            "accounts",
            "customers",
            "pgbench_accounts",
            "events",
            "a",
            "b",
            "x",
            "logs",
            "big",
            "jobs",
            "new_table",
            "other",
            "weird",
        ]
        .iter()
        .map(|n| table("public", n))
        .chain(
            [
                "pg_class",
                "pg_stats",
                "pg_stat_activity",
                "pg_stat_replication",
                "pg_prepared_xacts",
                "pg_tables",
                "pg_settings",
                "pg_locks",
            ]
            .iter()
            .map(|n| table("pg_catalog", n)),
        )
        .chain([table("public", "Weird"), table("app", "t")])
        .collect();
        catalog.relations.push(RelationRow {
            schema: "public".into(),
            name: "scratch".into(),
            unlogged: true,
            definition: None,
        });
        catalog.relations.push(RelationRow {
            schema: "public".into(),
            name: "v_audit".into(),
            unlogged: false,
            definition: Some(" SELECT audit_log(1) AS a;".into()),
        });
        Facts::build([("app", &catalog)])
    }

    fn fact(facts: &Facts, schema: Option<&str>, name: &str) -> Option<Fact> {
        facts.function(schema, name).map(|f| f.fact)
    }

    #[test]
    fn built_ins_by_their_volatility_with_a_short_safe_list() {
        let facts = sample();
        for name in ["now", "count", "inet_server_port", "abs", "generate_series"] {
            assert_eq!(fact(&facts, None, name), Some(Fact::Safe), "{name}");
        }
        for name in [
            "pg_current_wal_lsn",
            "pg_current_wal_insert_lsn",
            "brin_summarize_new_values",
            "brin_summarize_range",
            "brin_desummarize_range",
            "gin_clean_pending_list",
            "nextval",
            "lo_create",
        ] {
            assert_eq!(fact(&facts, None, name), Some(Fact::Volatile), "{name}");
        }
        for name in VOLATILE_SAFE.iter().filter(|n| **n != "random_normal") {
            assert_eq!(fact(&facts, None, name), Some(Fact::Safe), "{name}");
        }
        assert_eq!(
            fact(&facts, Some("pg_catalog"), "now"),
            Some(Fact::Safe),
            "qualified"
        );
        assert_eq!(fact(&facts, None, "no_such_function"), None);
        assert!(!facts.function(None, "now").unwrap().user);
        assert!(facts.function(None, "audit_log").unwrap().user);
    }

    #[test]
    fn a_name_is_as_bad_as_its_worst_definition_anywhere() {
        // lookup is stable in public and volatile in another schema: an
        // unqualified call might reach either.
        let one = catalog(&[("public", "lookup", false, None)]);
        let two = catalog(&[("ops", "lookup", true, None)]);
        let facts = Facts::build([("app", &one), ("ops", &two)]);
        assert_eq!(fact(&facts, None, "lookup"), Some(Fact::Volatile));
        assert_eq!(fact(&facts, Some("public"), "lookup"), Some(Fact::Safe));
        assert_eq!(fact(&facts, Some("ops"), "lookup"), Some(Fact::Volatile));
        assert!(facts.has_database("ops") && !facts.has_database("other"));
    }

    #[test]
    fn stable_functions_that_reach_primary_only_ones_are_primary_only() {
        let mut catalog = catalog(&[
            (
                "app",
                "bump",
                true,
                Some("INSERT INTO t VALUES (1) RETURNING 1"),
            ),
            ("app", "sneaky", false, Some("SELECT app.bump ()")),
            (
                "app",
                "sneakier",
                false,
                Some("BEGIN PERFORM sneaky(); END"),
            ),
            (
                "app",
                "dynamic",
                false,
                Some("BEGIN EXECUTE 'SELECT bump()'; END"),
            ),
            ("app", "wal", false, Some("SELECT pg_current_wal_lsn()")),
            ("app", "pure", false, Some("SELECT bump + 1 FROM counters")),
            (
                "app",
                "cache_reader",
                false,
                Some("SELECT * FROM app.cache"),
            ),
            (
                "app",
                "activity",
                false,
                Some("SELECT count(*) FROM pg_stat_activity"),
            ),
        ]);
        catalog.relations = vec![
            RelationRow {
                schema: "app".into(),
                name: "cache".into(),
                unlogged: true,
                definition: None,
            },
            RelationRow {
                schema: "app".into(),
                name: "v_bump".into(),
                unlogged: false,
                definition: Some(" SELECT sneakier() AS x;".into()),
            },
            RelationRow {
                schema: "app".into(),
                name: "v_of_v".into(),
                unlogged: false,
                definition: Some(" SELECT v_bump.x FROM app.v_bump;".into()),
            },
            RelationRow {
                schema: "app".into(),
                name: "v_plain".into(),
                unlogged: false,
                definition: Some(" SELECT now() AS t, bump FROM counters;".into()),
            },
        ];
        let facts = Facts::build([("app", &catalog)]);
        for name in [
            "sneaky",
            "sneakier",
            "dynamic",
            "wal",
            "cache_reader",
            "activity",
        ] {
            assert_eq!(fact(&facts, None, name), Some(Fact::CallsPrimary), "{name}");
        }
        assert_eq!(fact(&facts, None, "pure"), Some(Fact::Safe));
        assert_eq!(facts.primary_relation(None, "cache"), Some(Fact::Unlogged));
        assert_eq!(
            facts.primary_relation(Some("app"), "cache"),
            Some(Fact::Unlogged)
        );
        assert_eq!(
            facts.primary_relation(None, "v_bump"),
            Some(Fact::CallsPrimary)
        );
        assert_eq!(
            facts.primary_relation(None, "v_of_v"),
            Some(Fact::CallsPrimary)
        );
        assert_eq!(facts.primary_relation(None, "v_plain"), None);
        assert_eq!(facts.primary_relation(None, "counters"), None);
    }
}
