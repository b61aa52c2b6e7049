//! What calling a function means for routing, from the catalog's facts
//! ([`super::facts`]) and a few rules the catalog cannot state: session
//! advisory locks pin the session, two stable built-ins assign a
//! transaction id, `routing.write_functions` are the operator's word, and
//! some names are SQL syntax rather than catalog functions. A name none of
//! these place is unknown.

use super::Knowledge;
use super::facts::Fact;

/// What calling a function means for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Safe on a replica.
    None,
    /// Must run on the primary; `user` when a user's function may be the
    /// one called (it may change session state too).
    Primary {
        /// A user function may be the one called.
        user: bool,
    },
    /// Must run on the primary and leaves session state behind.
    Pins,
    /// No fact places it: the primary, and the catalog is read again.
    Unknown,
}

/// Built-ins the catalog calls STABLE that still need the primary: they
/// assign a transaction id, or read sequence state of one connection.
const ALWAYS_PRIMARY: &[&str] = &[
    "txid_current",
    "pg_current_xact_id",
    "nextval",
    "setval",
    "currval",
    "lastval",
];

/// Session-level advisory locks: held by the server connection.
const PINNING_PREFIXES: &[&str] = &["pg_advisory_lock", "pg_try_advisory_lock"];

/// Names sqlparser (or the token scan) sees as calls that are SQL syntax,
/// not catalog functions (`COALESCE(...)`, `CURRENT_TIMESTAMP`, `IN (...)`,
/// `x::numeric(10, 2)`). Reserved words: no user function has these names
/// unquoted.
pub const SQL_FORMS: &[&str] = &[
    "all",
    "and",
    "any",
    "array",
    "as",
    "between",
    "by",
    "case",
    "cast",
    "coalesce",
    "collation",
    "cube",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "decimal",
    "distinct",
    "else",
    "except",
    "exists",
    "extract",
    "filter",
    "from",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "intersect",
    "is",
    "join",
    "lateral",
    "least",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "not",
    "nullif",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "over",
    "partition",
    "rollup",
    "row",
    "select",
    "session_user",
    "similar",
    "some",
    "system_user",
    "then",
    "treat",
    "trim",
    "union",
    "user",
    "using",
    "values",
    "when",
    "where",
    "within",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
];

/// Classifies a call of `name` (folded: unquoted identifiers in lower
/// case), qualified by `schema` or not. `set_config` is judged by its
/// caller, which sees the `is_local` argument.
pub fn effect(schema: Option<&str>, name: &str, known: &Knowledge) -> Effect {
    let builtin_scope = schema.is_none_or(|s| s == "pg_catalog");
    if builtin_scope && PINNING_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Effect::Pins;
    }
    if builtin_scope && ALWAYS_PRIMARY.contains(&name) {
        return Effect::Primary { user: false };
    }
    if !known.write_functions.is_empty() && known.write_functions.contains(name) {
        return Effect::Primary { user: true };
    }
    if schema.is_none() && SQL_FORMS.binary_search(&name).is_ok() {
        return Effect::None;
    }
    match known.facts.function(schema, name) {
        Some(f) if f.fact == Fact::Safe => Effect::None,
        Some(f) => Effect::Primary { user: f.user },
        None => Effect::Unknown,
    }
}

/// Whether `name` (unqualified, any case) is a system view of the node's
/// own state and activity, which a replica answers about itself: the
/// statistics views (`pg_stat_*`, `pg_statio_*`; not `pg_stats`, which is
/// replicated), prepared transactions, replication slots, locks.
pub fn is_node_view(name: &str) -> bool {
    let starts = |p: &str| {
        name.as_bytes()
            .get(..p.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(p.as_bytes()))
    };
    if !starts("pg_") {
        return false;
    }
    starts("pg_stat_")
        || starts("pg_statio_")
        || [
            "pg_prepared_xacts",
            "pg_replication_slots",
            "pg_locks",
            "pg_backend_memory_contexts",
            "pg_replication_origin_status",
            "pg_prepared_statements",
            "pg_cursors",
        ]
        .iter()
        .any(|v| name.eq_ignore_ascii_case(v))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sql_forms_are_sorted_for_binary_search() {
        assert!(super::SQL_FORMS.windows(2).all(|w| w[0] < w[1]));
    }
}
