//! pgsplit: a PostgreSQL wire-protocol proxy that sends writes to the
//! primary and spreads reads over streaming replicas.

pub mod admin;
pub mod app;
pub mod auth;
pub mod cancel;
pub mod clients;
pub mod cluster;
pub mod config;
pub mod console;
pub mod demo;
pub mod failover;
pub mod http;
pub mod metrics;
pub mod pins;
pub mod pool;
pub mod protocol;
pub mod router;
pub mod sched;
pub mod session;
pub mod state;
pub mod tls;
pub mod topology;
pub mod wire;
