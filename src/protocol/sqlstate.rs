//! SQLSTATE codes that pgsplit raises itself (backend errors pass through
//! untouched).

/// 08P01 protocol_violation: malformed or oversized client message.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// 08006 connection_failure: a node cannot be reached or died mid-query.
pub const CONNECTION_FAILURE: &str = "08006";
/// 08004 sqlserver_rejected_establishment_of_sqlconnection.
pub const REJECTED_CONNECTION: &str = "08004";
/// 0A000 feature_not_supported: unsupported protocol version or message.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// 28P01 invalid_password: wrong password or unknown user.
pub const INVALID_PASSWORD: &str = "28P01";
/// 28000 invalid_authorization_specification.
pub const INVALID_AUTHORIZATION: &str = "28000";
/// 53300 too_many_connections.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// 57P01 admin_shutdown: the proxy is shutting down.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// 53400 configuration_limit_exceeded: pool checkout timed out.
pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
/// 25006 read_only_sql_transaction.
pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
/// XX000 internal_error.
pub const INTERNAL_ERROR: &str = "XX000";
/// 42P05 duplicate_prepared_statement.
pub const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
/// 57P05 idle_session_timeout.
pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
