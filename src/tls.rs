//! TLS with rustls (ring provider): towards clients, the acceptor built
//! from `tls.cert`/`tls.key` and the `tls-server-end-point` channel-binding
//! hash of our certificate for SCRAM-SHA-256-PLUS; towards nodes, the
//! client configurations of `tls.backend` / `nodes[].tls`.

use std::sync::Arc;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{verify_tls12_signature, verify_tls13_signature};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{BackendTls, TlsConfig};

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
        // (`tls.cert`/`tls.key` present: checked by the caller)
        let (Some(cert), Some(key)) = (&config.cert, &config.key) else {
            anyhow::bail!("tls.cert and tls.key are needed to serve TLS");
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert.value)
            .with_context(|| format!("reading {}", cert.value.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing {}", cert.value.display()))?;
        let leaf = certs.first().context("tls.cert holds no certificate")?;
        let end_point = Sha256::digest(leaf.as_ref()).to_vec();
        let key = PrivateKeyDer::from_pem_file(&key.value)
            .with_context(|| format!("reading {}", key.value.display()))?;
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

/// TLS settings towards the nodes: one rustls client configuration that
/// verifies (`verify-full`, roots from `tls.ca`) and one that does not
/// (`prefer`/`require`, which like libpq's modes encrypt without checking
/// who answers).
#[derive(Clone)]
pub struct NodeTls {
    /// Verifies the chain and the host name.
    pub verified: Option<Arc<ClientConfig>>,
    /// Encrypts only.
    pub unverified: Arc<ClientConfig>,
}

impl NodeTls {
    /// Builds both configurations; `ca` is required for `verified`.
    ///
    /// # Errors
    /// An unreadable or invalid CA file.
    pub fn load(ca: Option<&std::path::Path>) -> anyhow::Result<NodeTls> {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let verified = match ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("reading {}", path.display()))?
                {
                    roots.add(cert.with_context(|| format!("parsing {}", path.display()))?)?;
                }
                Some(Arc::new(
                    ClientConfig::builder_with_provider(provider.clone())
                        .with_safe_default_protocol_versions()?
                        .with_root_certificates(roots)
                        .with_no_client_auth(),
                ))
            }
            None => None,
        };
        let unverified = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        Ok(NodeTls {
            verified,
            unverified: Arc::new(unverified),
        })
    }

    /// The client configuration for `mode`, `None` for `disable`.
    pub fn for_mode(&self, mode: BackendTls) -> Option<Arc<ClientConfig>> {
        match mode {
            BackendTls::Disable => None,
            BackendTls::Prefer | BackendTls::Require => Some(self.unverified.clone()),
            BackendTls::VerifyFull => self.verified.clone(),
        }
    }
}

/// `prefer`/`require`: encryption without authentication of the node, as
/// libpq's `sslmode=require` (signatures are still checked).
#[derive(Debug)]
struct AnyCertificate(Arc<tokio_rustls::rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Opens a tokio-postgres connection to a node as the monitor's login (used
/// by the monitor, the catalog reader and failovers), with the node's TLS
/// mode. The connection task is spawned.
///
/// # Errors
/// The node refused or could not be reached; the message says why.
pub async fn connect_node(
    config: &crate::config::Config,
    node_tls: &NodeTls,
    node: &crate::config::Endpoint,
    database: Option<&str>,
    application_name: &str,
) -> Result<tokio_postgres::Client, String> {
    let (user, password, monitor_db) = config.monitor_login();
    let login = (user.as_str(), password.as_deref());
    connect_node_as(
        config,
        node_tls,
        node,
        login,
        database.unwrap_or(&monitor_db),
        application_name,
    )
    .await
}

/// As [`connect_node`], as `login` (user, password) on `database`.
///
/// # Errors
/// The node's refusal or the connection's failure, as text.
pub async fn connect_node_as(
    config: &crate::config::Config,
    node_tls: &NodeTls,
    node: &crate::config::Endpoint,
    login: (&str, Option<&str>),
    database: &str,
    application_name: &str,
) -> Result<tokio_postgres::Client, String> {
    let (user, password) = login;
    let mut pg = tokio_postgres::Config::new();
    pg.host(&node.host)
        .port(node.port)
        .user(user)
        .dbname(database)
        .application_name(application_name)
        .connect_timeout(
            config
                .lag
                .check_timeout
                .0
                .max(std::time::Duration::from_secs(1)),
        );
    if let Some(pw) = password {
        pg.password(pw);
    }
    let describe = |e: tokio_postgres::Error| match e.as_db_error() {
        Some(d) => format!("{}: {}", node.name, d.message()),
        None => format!("{}: {e}", node.name),
    };
    match node_tls.for_mode(node.tls) {
        None => {
            let (client, connection) = pg.connect(tokio_postgres::NoTls).await.map_err(describe)?;
            tokio::spawn(connection);
            Ok(client)
        }
        Some(tls) => {
            let mode = if node.tls == BackendTls::Prefer {
                tokio_postgres::config::SslMode::Prefer
            } else {
                tokio_postgres::config::SslMode::Require
            };
            pg.ssl_mode(mode);
            let connector = tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone());
            let (client, connection) = pg.connect(connector).await.map_err(describe)?;
            tokio::spawn(connection);
            Ok(client)
        }
    }
}
