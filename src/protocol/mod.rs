//! The PostgreSQL frontend/backend wire protocol, sans I/O.
//!
//! Owns framing of both directions (`codec`), decoding of what clients send
//! (`frontend`), writing of what servers send (`backend`) and the SQLSTATE
//! codes pgsplit itself raises (`sqlstate`). Nothing here touches a socket:
//! every function works on byte buffers, so it can be fed one byte at a time
//! in tests and fuzzed.

pub mod backend;
pub mod codec;
pub mod frontend;
pub mod sqlstate;

pub use codec::{Frame, ProtocolError};
