//! TLS towards clients: sslmode=require and verify-full from tokio-postgres
//! (rustls) and psql with a CA the test makes, SCRAM-SHA-256-PLUS channel
//! binding, and `tls.require` refusing plaintext.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio_postgres::config::{ChannelBinding, SslMode};

use crate::harness::*;

struct TestPki {
    dir: PathBuf,
    ca_pem: String,
}

impl TestPki {
    fn new() -> TestPki {
        let dir = std::env::temp_dir().join(format!(
            "pgsplit-pki-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pgsplit test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        server_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let server = server_params.signed_by(&server_key, &ca).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
        TestPki {
            dir,
            ca_pem: ca.pem(),
        }
    }

    fn yaml(&self, require: bool) -> String {
        format!(
            "tls:\n  cert: {}\n  key: {}\n  require: {require}\n",
            self.dir.join("server.pem").display(),
            self.dir.join("server.key").display()
        )
    }

    fn connector(&self) -> tokio_postgres_rustls::MakeRustlsConnect {
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        let ca = rustls_pki_types::CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap();
        roots.add(ca).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_postgres_rustls::MakeRustlsConnect::new(config)
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

use rustls_pki_types::pem::PemObject;

fn pg_config(port: u16, method_user: (&str, &str)) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host("localhost")
        .port(port)
        .user(method_user.0)
        .password(method_user.1)
        .dbname("app");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_verify_the_proxy_and_scram_binds_to_the_channel() {
    let pki = TestPki::new();
    let auth = "auth:\n  method: scram-sha-256\n  users:\n    - { name: app, password: app }\n";
    let proxy = start_proxy(&config_text(
        &ports(),
        &format!("{auth}{}", pki.yaml(false)),
    ))
    .await;
    let port = proxy.addr.port();
    // verify-full: the certificate chains to our CA and names "localhost"
    let mut config = pg_config(port, ("app", "app"));
    config
        .ssl_mode(SslMode::Require)
        .channel_binding(ChannelBinding::Require);
    let (client, connection) = config
        .connect(pki.connector())
        .await
        .expect("TLS + SCRAM-SHA-256-PLUS");
    tokio::spawn(connection);
    assert!(replica_ports().contains(&served_by(&client, "SELECT inet_server_port()").await));
    // plaintext still allowed when tls.require is off
    let mut plain = pg_config(port, ("app", "app"));
    plain.ssl_mode(SslMode::Disable);
    assert!(plain.connect(tokio_postgres::NoTls).await.is_ok());
    // psql with sslmode=verify-full
    let ca = pki.dir.join("ca.pem");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(cluster().bin_dir().join("psql"))
            .arg(format!(
                "host=localhost port={port} user=app dbname=app sslmode=verify-full sslrootcert={}",
                ca.display()
            ))
            .args(["-X", "-At", "-c", "SELECT 'tls ok'"])
            .env("PGPASSWORD", "app")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("tls ok"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_require_refuses_plaintext_and_no_tls_refuses_sslmode_require() {
    let pki = TestPki::new();
    let proxy = start_proxy(&config_text(&ports(), &pki.yaml(true))).await;
    let mut plain = pg_config(proxy.addr.port(), ("app", "app"));
    plain.ssl_mode(SslMode::Disable);
    let err = plain
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("plaintext refused");
    assert_eq!(code(&err).as_deref(), Some("28000"), "{err}");
    let mut tls = pg_config(proxy.addr.port(), ("app", "app"));
    tls.ssl_mode(SslMode::Require);
    assert!(tls.connect(pki.connector()).await.is_ok());
    proxy.stop().await;
    // a proxy without TLS: a client that insists gets a clear refusal
    let proxy = default_proxy().await;
    let mut insisting = pg_config(proxy.addr.port(), ("app", "app"));
    insisting.ssl_mode(SslMode::Require);
    let err = insisting
        .connect(pki.connector())
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().to_lowercase().contains("tls") || err.to_string().contains("SSL"),
        "{err}"
    );
    proxy.stop().await;
}

/// Hands a file to the `postgres` OS user when running as root, with
/// PostgreSQL's permission demands for keys.
fn give_to_postgres(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    let root =
        std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    if matches!(root, Ok(true)) {
        let status = Command::new("chown")
            .arg("postgres:postgres")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_nodes_prefer_require_and_verify_full() {
    let pki = TestPki::new();
    give_to_postgres(&pki.dir, 0o755);
    give_to_postgres(&pki.dir.join("server.pem"), 0o644);
    give_to_postgres(&pki.dir.join("server.key"), 0o600);
    let options = pgsplit::cluster::ClusterOptions {
        replicas: 1,
        extra_conf: vec![
            "ssl = on".into(),
            format!("ssl_cert_file = '{}'", pki.dir.join("server.pem").display()),
            format!("ssl_key_file = '{}'", pki.dir.join("server.key").display()),
        ],
        ..pgsplit::cluster::ClusterOptions::default()
    };
    let cluster = tokio::task::spawn_blocking(move || {
        pgsplit::cluster::LocalCluster::start(&options).unwrap()
    })
    .await
    .unwrap();
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let ca = pki.dir.join("ca.pem");
    for mode in ["prefer", "require", "verify-full"] {
        let extra = format!("tls:\n  backend: {mode}\n  ca: {}\n", ca.display());
        // nodes addressed as "localhost" so that verify-full can check the name
        let text = config_text(&ports, &extra).replace("host: 127.0.0.1", "host: localhost");
        let proxy = start_proxy(&text).await;
        let client = app(&proxy).await;
        for sql in [
            "SELECT ssl::text, inet_server_port() FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            "/* pgsplit:primary */ SELECT ssl::text, inet_server_port() FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ] {
            let r = rows(&client, sql).await.unwrap();
            assert_eq!(r[0][0].as_deref(), Some("true"), "{mode}: {sql}");
        }
        // the monitor reaches the nodes over TLS too
        let up = proxy
            .state
            .topology
            .load()
            .nodes
            .iter()
            .all(|n| n.stats.load().sampled);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut sampled = up;
        while !sampled && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            sampled = proxy
                .state
                .topology
                .load()
                .nodes
                .iter()
                .all(|n| n.stats.load().sampled);
        }
        assert!(sampled, "{mode}: the monitor could not poll the nodes");
        proxy.stop().await;
    }
    // verify-full with a CA that did not sign the nodes' certificate fails
    let stranger = TestPki::new();
    let extra = format!(
        "tls:\n  backend: verify-full\n  ca: {}\n",
        stranger.dir.join("ca.pem").display()
    );
    let text = config_text(&ports, &extra).replace("host: 127.0.0.1", "host: localhost");
    let proxy = start_proxy(&text).await;
    let Err(err) = connect(&proxy, "app", "app").await else {
        panic!("an unknown CA is refused");
    };
    assert_eq!(code(&err).as_deref(), Some("08006"), "{err}");
    let message = err.as_db_error().unwrap().message().to_lowercase();
    assert!(
        message.contains("certificate") || message.contains("issuer"),
        "{message}"
    );
    proxy.stop().await;
    drop(cluster);
}
