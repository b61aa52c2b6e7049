//! Integration tests against a real PostgreSQL primary and two streaming
//! replicas (see `harness`).

mod auth_query;
mod cli;
mod console;
mod demo;
mod drivers;
mod extended;
mod faults;
mod harness;
mod monitoring;
mod policies;
mod pooling;
mod protocol;
mod routing;
mod schema;
mod security;
mod session;
mod tls;
mod tools;
