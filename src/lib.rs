//! pgsplit: a PostgreSQL wire-protocol proxy that sends writes to the
//! primary and spreads reads over streaming replicas.

pub mod config;
pub mod protocol;
pub mod router;
pub mod auth;
pub mod wire;
pub mod topology;
pub mod pool;
