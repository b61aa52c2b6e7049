//! Authentication in both directions: checking clients against
//! `auth.users` (`client`), and logging in to nodes (`backend`).

pub mod backend;
pub mod client;
pub mod lookup;
pub mod scram;

/// What the proxy logs in to nodes with, for one user.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A password from proxy.yaml.
    Password(String),
    /// SCRAM pass-through: the ClientKey a client's proof revealed, and
    /// the verifier's ServerKey (to check the node's signature).
    ScramKey {
        /// ClientKey.
        client_key: [u8; 32],
        /// ServerKey.
        server_key: [u8; 32],
    },
    /// MD5 pass-through: the stored `md5...` hash, which answers an MD5
    /// challenge as the password would.
    Md5Hash(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::Password(_) => "Password(..)",
            Credential::ScramKey { .. } => "ScramKey(..)",
            Credential::Md5Hash(_) => "Md5Hash(..)",
        })
    }
}

/// `md5` + hex(md5(`inner` + `salt`)): the answer to an MD5 challenge
/// given the stored hash's hex part as `inner`.
pub fn md5_answer(inner: &[u8], salt: [u8; 4]) -> String {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    h.update(inner);
    h.update(salt);
    let digest = h.finalize();
    let mut out = String::from("md5");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

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
    /// The user's credential cannot answer the node's method (an MD5 hash
    /// against SCRAM, a SCRAM key against MD5 or a cleartext request).
    #[error("node asks user \"{user}\" for {method}, which the user's stored {kind} cannot answer")]
    Mismatch {
        user: String,
        method: &'static str,
        kind: &'static str,
    },
    /// The connection failed during the exchange.
    #[error(transparent)]
    Wire(#[from] crate::wire::WireError),
}
