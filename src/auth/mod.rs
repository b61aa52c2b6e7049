//! Authentication in both directions: checking clients against
//! `auth.users` (`client`), and logging in to nodes (`backend`).

pub mod backend;
pub mod client;
pub mod scram;

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong password or unknown user (the two are not told apart).
    #[error("password authentication failed for user \"{user}\"")]
    BadPassword { user: String },
    /// The node refused us with an ErrorResponse.
    #[error("{message}")]
    Rejected { code: String, message: String },
    /// The node asked for a method pgsplit does not speak, or spoke nonsense.
    #[error("{0}")]
    Unsupported(String),
    /// The node needs a password and none is configured.
    #[error("node asks for a password and none is configured for user \"{user}\"")]
    NoPassword { user: String },
    /// The connection failed during the exchange.
    #[error(transparent)]
    Wire(#[from] crate::wire::WireError),
}
