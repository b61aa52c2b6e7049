//! Built-in functions that force the primary: they write, take locks,
//! assign transaction ids, or act on the one server they run on.

/// What calling a function means for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Safe on a replica.
    None,
    /// Must run on the primary.
    Primary,
    /// Must run on the primary and leaves session state behind.
    Pins,
}

const PRIMARY_EXACT: &[&str] = &[
    "nextval",
    "setval",
    // They read sequence state of this session's server connection.
    "currval",
    "lastval",
    "pg_notify",
    // Marked stable, yet they assign a transaction id.
    "txid_current",
    "pg_current_xact_id",
    "lo_create",
    "lo_creat",
    "lo_import",
    "lo_export",
    "lo_unlink",
    "lo_from_bytea",
    "lo_put",
    "lo_open",
    "lo_write",
    "lowrite",
    "lo_truncate",
    "lo_truncate64",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_promote",
    "pg_drop_replication_slot",
    "pg_replication_origin_create",
    "pg_replication_origin_drop",
    "pg_logical_emit_message",
    "pg_import_system_collations",
    "dblink_exec",
    "dblink",
    "dblink_connect",
    "pg_stat_reset",
];

const PRIMARY_PREFIXES: &[&str] = &[
    "pg_create_",
    "pg_stat_reset_",
    "pg_advisory_xact_",
    "pg_try_advisory_xact_",
    "pg_advisory_unlock",
];

const PINNING_PREFIXES: &[&str] = &["pg_advisory_lock", "pg_try_advisory_lock"];

/// Whether `name` (unqualified, any case) is a system view of the node's
/// own state and activity, which a replica answers about itself: the
/// statistics views (`pg_stat_*`, `pg_statio_*`; not `pg_stats`, which is
/// replicated), prepared transactions, replication slots, locks.
pub fn is_node_view(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("pg_stat_")
        || lower.starts_with("pg_statio_")
        || matches!(
            lower.as_str(),
            "pg_prepared_xacts"
                | "pg_replication_slots"
                | "pg_locks"
                | "pg_backend_memory_contexts"
                | "pg_replication_origin_status"
                | "pg_prepared_statements"
                | "pg_cursors"
        )
}

/// Whether `name` is one of the built-ins listed here (not a user function).
pub fn is_builtin(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    PRIMARY_EXACT.contains(&lower.as_str())
        || PRIMARY_PREFIXES.iter().any(|p| lower.starts_with(p))
        || PINNING_PREFIXES.iter().any(|p| lower.starts_with(p))
}

/// Classifies a function by its (unqualified, any case) name. `set_config`
/// is judged by its caller, which sees the `is_local` argument.
pub fn effect(name: &str, write_functions: &std::collections::HashSet<String>) -> Effect {
    let lower = name.to_ascii_lowercase();
    if PINNING_PREFIXES.iter().any(|p| lower.starts_with(p)) {
        Effect::Pins
    } else if PRIMARY_EXACT.contains(&lower.as_str())
        || PRIMARY_PREFIXES.iter().any(|p| lower.starts_with(p))
        || write_functions.contains(&lower)
    {
        Effect::Primary
    } else {
        Effect::None
    }
}
