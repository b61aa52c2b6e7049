//! TLS towards clients (rustls, ring provider): the acceptor built from
//! `tls.cert`/`tls.key`, and the `tls-server-end-point` channel-binding
//! hash of our certificate for SCRAM-SHA-256-PLUS.

use std::sync::Arc;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use crate::config::TlsConfig;

/// What the proxy needs to serve TLS.
#[derive(Clone)]
pub struct ServerTls {
    /// The acceptor.
    pub acceptor: TlsAcceptor,
    /// SHA-256 of our leaf certificate (RFC 5929 `tls-server-end-point`
    /// for certificates signed with SHA-256 or weaker).
    pub end_point: Vec<u8>,
    /// Plaintext clients are refused.
    pub require: bool,
}

impl ServerTls {
    /// Loads the certificate chain and key.
    ///
    /// # Errors
    /// Unreadable or invalid PEM, or a key that does not fit the certificate.
    pub fn load(config: &TlsConfig) -> anyhow::Result<ServerTls> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert.value)
            .with_context(|| format!("reading {}", config.cert.value.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing {}", config.cert.value.display()))?;
        let leaf = certs.first().context("tls.cert holds no certificate")?;
        let end_point = Sha256::digest(leaf.as_ref()).to_vec();
        let key = PrivateKeyDer::from_pem_file(&config.key.value)
            .with_context(|| format!("reading {}", config.key.value.display()))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("tls.cert and tls.key do not match")?;
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            end_point,
            require: config.require,
        })
    }
}
