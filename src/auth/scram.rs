//! SCRAM-SHA-256 on the server side (RFC 5802 / RFC 7677), as PostgreSQL
//! does it: the client's first message, our nonce, salt and iteration
//! count, the client's proof checked against the stored key, and our
//! signature. Sans I/O: the caller moves the messages.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Iterations of PBKDF2 for secrets derived from configured passwords.
pub const ITERATIONS: u32 = 4096;

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// What the server keeps for one user: never the password itself.
#[derive(Clone)]
pub struct Secret {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Derives the secret of `password` with a fresh random salt.
    pub fn new(password: &str) -> Secret {
        let salt: [u8; 16] = rand::random();
        Secret::with_salt(password, &salt, ITERATIONS)
    }

    /// Derives with a given salt (for tests against RFC 7677's vector).
    pub fn with_salt(password: &str, salt: &[u8], iterations: u32) -> Secret {
        // PostgreSQL uses the raw password when SASLprep rejects it.
        let prepared =
            stringprep::saslprep(password).map_or_else(|_| password.to_owned(), |p| p.into_owned());
        let salted = hi(prepared.as_bytes(), salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        Secret {
            salt: salt.to_vec(),
            iterations,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// Reads a PostgreSQL SCRAM verifier (`pg_authid.rolpassword`):
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn from_verifier(verifier: &str) -> Option<Secret> {
        let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let key = |k: &str| -> Option<[u8; 32]> { B64.decode(k).ok()?.try_into().ok() };
        Some(Secret {
            salt: B64.decode(salt).ok()?,
            iterations: iterations.parse().ok()?,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }

    /// The server key (a proxy logging in with a client's key checks the
    /// node's signature with it).
    pub fn server_key(&self) -> [u8; 32] {
        self.server_key
    }

    /// A secret nobody knows the password of (unknown users go through the
    /// same exchange and fail at the proof).
    pub fn impossible() -> Secret {
        Secret {
            salt: rand::random::<[u8; 16]>().to_vec(),
            iterations: ITERATIONS,
            stored_key: rand::random(),
            server_key: rand::random(),
        }
    }
}

/// Secrets derived from configured passwords, computed once per user and
/// password, plus stable mock secrets for unknown users (the same salt on
/// every attempt, as PostgreSQL does, so a salt does not tell whether a user
/// exists).
pub struct Secrets {
    known: std::sync::Mutex<std::collections::HashMap<(String, String), Secret>>,
    mock_key: [u8; 32],
}

impl Default for Secrets {
    fn default() -> Self {
        Secrets {
            known: std::sync::Mutex::new(std::collections::HashMap::new()),
            mock_key: rand::random(),
        }
    }
}

impl Secrets {
    /// The secret for `user` with `password`, or a mock one when the user
    /// is unknown (`None`).
    pub fn get(&self, user: &str, password: Option<&str>) -> Secret {
        let Some(password) = password else {
            let salt = hmac(&self.mock_key, user.as_bytes());
            return Secret {
                salt: salt[..16].to_vec(),
                iterations: ITERATIONS,
                stored_key: hmac(&self.mock_key, b"stored"),
                server_key: hmac(&self.mock_key, b"server"),
            };
        };
        let key = (user.to_owned(), password.to_owned());
        if let Some(s) = self.known.lock().expect("poisoned").get(&key) {
            return s.clone();
        }
        let secret = Secret::new(password);
        self.known
            .lock()
            .expect("poisoned")
            .insert(key, secret.clone());
        secret
    }
}

/// PBKDF2-HMAC-SHA256 with one block (Hi() of RFC 5802).
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &block);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    /// The client's message is not SCRAM.
    #[error("malformed SCRAM message")]
    Malformed,
    /// Wrong password (or unknown user).
    #[error("wrong proof")]
    BadProof,
    /// The channel binding the client asked for does not match.
    #[error("channel binding mismatch")]
    Binding,
}

/// Channel binding the server can offer.
#[derive(Debug, Clone)]
pub enum Binding {
    /// Plaintext connection: only SCRAM-SHA-256.
    None,
    /// TLS: the hash of our certificate (`tls-server-end-point`).
    EndPoint(Vec<u8>),
}

/// The server's state between the client's first and final messages.
pub struct Exchange {
    secret: Secret,
    client_first_bare: String,
    server_first: String,
    gs2_header: String,
    nonce: String,
    expected_binding: Option<Vec<u8>>,
}

fn attr(part: &str, name: char) -> Option<&str> {
    part.strip_prefix(name)?.strip_prefix('=')
}

impl Exchange {
    /// Reads client-first (`gs2-header client-first-bare`) and answers
    /// server-first. `mechanism` is what the client chose.
    ///
    /// # Errors
    /// A malformed message or a binding the connection cannot give.
    pub fn start(
        mechanism: &str,
        client_first: &str,
        secret: Secret,
        binding: &Binding,
    ) -> Result<(Exchange, String), ScramError> {
        let mut parts = client_first.splitn(3, ',');
        let flag = parts.next().ok_or(ScramError::Malformed)?;
        let authzid = parts.next().ok_or(ScramError::Malformed)?;
        let bare = parts.next().ok_or(ScramError::Malformed)?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed);
        }
        let plus = mechanism == "SCRAM-SHA-256-PLUS";
        let expected_binding = match (flag, binding, plus) {
            ("n", _, false) => None,
            // "y": the client could bind but thinks we cannot; refuse if we can.
            ("y", Binding::None, false) => None,
            ("y", Binding::EndPoint(_), false) => return Err(ScramError::Binding),
            ("p=tls-server-end-point", Binding::EndPoint(hash), true) => Some(hash.clone()),
            _ => return Err(ScramError::Binding),
        };
        let client_nonce = bare
            .split(',')
            .find_map(|p| attr(p, 'r'))
            .filter(|n| !n.is_empty())
            .ok_or(ScramError::Malformed)?;
        let server_nonce = B64.encode(rand::random::<[u8; 18]>());
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&secret.salt),
            secret.iterations
        );
        let gs2_header = format!("{flag},{authzid},");
        Ok((
            Exchange {
                secret,
                client_first_bare: bare.to_owned(),
                server_first: server_first.clone(),
                gs2_header,
                nonce,
                expected_binding,
            },
            server_first,
        ))
    }

    /// Checks client-final and returns server-final (`v=...`).
    ///
    /// # Errors
    /// A malformed message, a wrong nonce or binding, or a wrong proof.
    pub fn finish(self, client_final: &str) -> Result<String, ScramError> {
        self.finish_with_key(client_final)
            .map(|(server_final, _)| server_final)
    }

    /// As [`Exchange::finish`], also returning the ClientKey the client's
    /// proof revealed: with it (and the same verifier on the node) the
    /// proxy can log in to the node as this user without the password.
    ///
    /// # Errors
    /// As [`Exchange::finish`].
    pub fn finish_with_key(self, client_final: &str) -> Result<(String, [u8; 32]), ScramError> {
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed)?;
        let mut channel = None;
        let mut nonce = None;
        for part in without_proof.split(',') {
            if let Some(c) = attr(part, 'c') {
                channel = Some(c);
            } else if let Some(r) = attr(part, 'r') {
                nonce = Some(r);
            }
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Malformed);
        }
        let channel = B64
            .decode(channel.ok_or(ScramError::Malformed)?)
            .map_err(|_| ScramError::Malformed)?;
        let mut expected = self.gs2_header.as_bytes().to_vec();
        if let Some(hash) = &self.expected_binding {
            expected.extend_from_slice(hash);
        }
        if channel != expected {
            return Err(ScramError::Binding);
        }
        let proof = B64.decode(proof).map_err(|_| ScramError::Malformed)?;
        if proof.len() != 32 {
            return Err(ScramError::Malformed);
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let computed: [u8; 32] = Sha256::digest(&client_key).into();
        if !super::client::constant_time_eq(&computed, &self.secret.stored_key) {
            return Err(ScramError::BadProof);
        }
        let server_signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        let client_key: [u8; 32] = client_key.try_into().map_err(|_| ScramError::Malformed)?;
        Ok((format!("v={}", B64.encode(server_signature)), client_key))
    }
}

/// The client side of SCRAM-SHA-256 with a ClientKey instead of a
/// password (SCRAM pass-through): the proof is the key XOR the client
/// signature, so the key is all it takes; the server's signature is
/// checked with the verifier's ServerKey. Sans I/O. No channel binding
/// (`n,,`): the key was recovered from another exchange.
pub struct KeyClient {
    client_key: [u8; 32],
    server_key: [u8; 32],
    client_first_bare: String,
    nonce: String,
    auth_message: Option<String>,
}

impl KeyClient {
    /// Starts: returns the client and client-first-message.
    pub fn start(client_key: [u8; 32], server_key: [u8; 32]) -> (KeyClient, String) {
        let nonce = B64.encode(rand::random::<[u8; 18]>());
        let client_first_bare = format!("n=,r={nonce}");
        let first = format!("n,,{client_first_bare}");
        (
            KeyClient {
                client_key,
                server_key,
                client_first_bare,
                nonce,
                auth_message: None,
            },
            first,
        )
    }

    /// Answers server-first with client-final (carrying the proof).
    ///
    /// # Errors
    /// A malformed server-first or a nonce that does not extend ours.
    pub fn respond(&mut self, server_first: &str) -> Result<String, ScramError> {
        let nonce = server_first
            .split(',')
            .find_map(|p| attr(p, 'r'))
            .ok_or(ScramError::Malformed)?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Malformed);
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let stored_key: [u8; 32] = Sha256::digest(self.client_key).into();
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = self
            .client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        self.auth_message = Some(auth_message);
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks server-final's signature.
    ///
    /// # Errors
    /// The node did not prove it knows the verifier.
    pub fn finish(&self, server_final: &str) -> Result<(), ScramError> {
        let auth_message = self.auth_message.as_ref().ok_or(ScramError::Malformed)?;
        let verifier =
            attr(server_final.trim_end_matches('\0'), 'v').ok_or(ScramError::Malformed)?;
        let expected = hmac(&self.server_key, auth_message.as_bytes());
        let given = B64.decode(verifier).map_err(|_| ScramError::Malformed)?;
        if super::client::constant_time_eq(&given, &expected) {
            Ok(())
        } else {
            Err(ScramError::BadProof)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// The client side of postgres-protocol against our server side.
    fn run(password_client: &str, secret: Secret) -> Result<(), ScramError> {
        let mut client =
            ScramSha256::new(password_client.as_bytes(), ChannelBinding::unsupported());
        let first = String::from_utf8(client.message().to_vec()).unwrap();
        let (exchange, server_first) =
            Exchange::start("SCRAM-SHA-256", &first, secret, &Binding::None)?;
        client.update(server_first.as_bytes()).unwrap();
        let client_final = String::from_utf8(client.message().to_vec()).unwrap();
        let server_final = exchange.finish(&client_final)?;
        client
            .finish(server_final.as_bytes())
            .expect("server signature verifies");
        Ok(())
    }

    #[test]
    fn a_clients_key_logs_in_where_its_verifier_is_kept() {
        // The verifier as PostgreSQL stores it, for "pencil".
        let secret = Secret::new("pencil");
        let verifier = format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            secret.iterations,
            B64.encode(&secret.salt),
            B64.encode(secret.stored_key),
            B64.encode(secret.server_key)
        );
        let read = Secret::from_verifier(&verifier).expect("parses");
        // A client logs in to the proxy with the password ...
        let mut client = ScramSha256::new(b"pencil", ChannelBinding::unsupported());
        let first = String::from_utf8(client.message().to_vec()).unwrap();
        let (exchange, server_first) =
            Exchange::start("SCRAM-SHA-256", &first, read.clone(), &Binding::None).unwrap();
        client.update(server_first.as_bytes()).unwrap();
        let client_final = String::from_utf8(client.message().to_vec()).unwrap();
        let (server_final, key) = exchange.finish_with_key(&client_final).unwrap();
        client.finish(server_final.as_bytes()).unwrap();
        // ... and the proxy, with only the key, logs in to a server that
        // keeps the same verifier.
        let (mut proxy, first) = KeyClient::start(key, read.server_key());
        let first = first.strip_prefix("n,,").unwrap().to_owned();
        let (node, node_first) = Exchange::start(
            "SCRAM-SHA-256",
            &format!("n,,{first}"),
            read.clone(),
            &Binding::None,
        )
        .unwrap();
        let proxy_final = proxy.respond(&node_first).unwrap();
        let node_final = node
            .finish(&proxy_final)
            .expect("the node accepts the key's proof");
        proxy
            .finish(&node_final)
            .expect("the node's signature checks");
        // A wrong key does not get in.
        let (mut wrong, first) = KeyClient::start([7; 32], read.server_key());
        let (node, node_first) =
            Exchange::start("SCRAM-SHA-256", &first, read, &Binding::None).unwrap();
        let wrong_final = wrong.respond(&node_first).unwrap();
        assert_eq!(node.finish(&wrong_final), Err(ScramError::BadProof));
        assert!(Secret::from_verifier("md5abc").is_none());
    }

    #[test]
    fn right_password_passes_and_the_client_verifies_us() {
        assert_eq!(run("pencil", Secret::new("pencil")), Ok(()));
        assert_eq!(run("pÅss wörd", Secret::new("pÅss wörd")), Ok(()));
    }

    #[test]
    fn wrong_password_and_unknown_user_fail_alike() {
        assert_eq!(
            run("pencil", Secret::new("other")),
            Err(ScramError::BadProof)
        );
        assert_eq!(
            run("pencil", Secret::impossible()),
            Err(ScramError::BadProof)
        );
    }

    #[test]
    fn rfc7677_stored_and_server_keys() {
        // RFC 7677 section 3: user "user", password "pencil".
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let s = Secret::with_salt("pencil", &salt, 4096);
        let auth = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let server_signature = hmac(&s.server_key, auth.as_bytes());
        assert_eq!(
            B64.encode(server_signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn malformed_and_binding_mismatches() {
        let s = Secret::new("x");
        assert!(Exchange::start("SCRAM-SHA-256", "garbage", s.clone(), &Binding::None).is_err());
        assert!(Exchange::start("SCRAM-SHA-256", "n,,n=,r=", s.clone(), &Binding::None).is_err());
        assert_eq!(
            Exchange::start(
                "SCRAM-SHA-256-PLUS",
                "p=tls-server-end-point,,n=,r=abc",
                s.clone(),
                &Binding::None
            )
            .err(),
            Some(ScramError::Binding)
        );
        assert_eq!(
            Exchange::start(
                "SCRAM-SHA-256",
                "y,,n=,r=abc",
                s,
                &Binding::EndPoint(vec![1])
            )
            .err(),
            Some(ScramError::Binding)
        );
    }
}
