//! `auth.query`: the password verifier of a user that proxy.yaml does not
//! list, read on the primary as `auth.user` at every login (so a changed
//! or expired password takes effect at the next one). The last answer per
//! user is kept for `auth.cache_ttl` and used only while the primary
//! cannot be asked.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::Config;
use crate::tls::NodeTls;

/// A user's stored password, as `pg_authid.rolpassword` holds it.
#[derive(Debug, Clone)]
pub enum Verifier {
    /// `SCRAM-SHA-256$...`.
    Scram(super::scram::Secret),
    /// `md5` and 32 hex digits.
    Md5(String),
}

impl Verifier {
    /// Reads a `rolpassword` value; `None` for a plaintext or unknown form
    /// (PostgreSQL itself stores only these two).
    pub fn parse(text: &str) -> Option<Verifier> {
        if let Some(secret) = super::scram::Secret::from_verifier(text) {
            return Some(Verifier::Scram(secret));
        }
        let hex = text.strip_prefix("md5")?;
        (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Verifier::Md5(text.to_owned()))
    }
}

/// The lookups' cache.
#[derive(Debug, Default)]
pub struct Lookup {
    cache: Mutex<HashMap<String, (Instant, Option<Verifier>)>>,
}

impl Lookup {
    /// The verifier of `user` (`None`: no such login role, no password,
    /// or expired), asked of the primary `node` in `database`.
    ///
    /// # Errors
    /// `auth.query` is not configured, or the primary could not be asked
    /// and nothing fresh enough is cached.
    pub async fn verifier(
        &self,
        config: &Config,
        node_tls: &NodeTls,
        node: &crate::config::Endpoint,
        database: &str,
        user: &str,
    ) -> Result<Option<Verifier>, String> {
        let Some(auth_user) = &config.auth.user else {
            return Err("auth.user is not configured".into());
        };
        let password = config.user(auth_user).and_then(|u| u.password.as_deref());
        let asked = async {
            let client = crate::tls::connect_node_as(
                config,
                node_tls,
                node,
                (auth_user, password),
                database,
                "pgsplit-auth-query",
            )
            .await?;
            let rows = client
                .query(config.auth.query.as_str(), &[&user])
                .await
                .map_err(|e| format!("auth.query failed: {e}"))?;
            Ok::<_, String>(rows.first().and_then(|r| {
                let value: Option<String> = r.try_get(1).ok().flatten();
                value.as_deref().and_then(Verifier::parse)
            }))
        };
        match asked.await {
            Ok(found) => {
                self.cache
                    .lock()
                    .expect("poisoned")
                    .insert(user.to_owned(), (Instant::now(), found.clone()));
                Ok(found)
            }
            Err(e) => {
                let ttl = config.auth.cache_ttl.0;
                let cached = self.cache.lock().expect("poisoned").get(user).cloned();
                match cached {
                    Some((at, found)) if at.elapsed() <= ttl => {
                        tracing::warn!(user, error = %e, "auth.query failed; using the answer cached {} s ago", at.elapsed().as_secs());
                        Ok(found)
                    }
                    _ => Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifiers_parse_as_postgresql_stores_them() {
        assert!(matches!(
            Verifier::parse("md5c2acd6a1ee8fd24e6d66d6bd8a2e1ab2"),
            Some(Verifier::Md5(_))
        ));
        assert!(Verifier::parse("md5nothex").is_none());
        assert!(Verifier::parse("plaintext").is_none());
        let scram = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$\
                     AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:\
                     AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        assert!(matches!(Verifier::parse(scram), Some(Verifier::Scram(_))));
    }

    #[test]
    fn an_md5_hash_answers_a_challenge_as_its_password_would() {
        use md5::{Digest, Md5};
        let salt = [1, 2, 3, 4];
        let by_password = postgres_protocol::authentication::md5_hash(b"alice", b"secret", salt);
        // What pg_authid keeps: md5(password + user), unsalted.
        let stored: String = Md5::digest(b"secretalice")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            super::super::md5_answer(stored.as_bytes(), salt),
            by_password
        );
    }
}
