//! Test harness: one real PostgreSQL primary and two streaming replicas per
//! test binary, a proxy per test, tokio-postgres clients, and a TCP relay
//! that can cut a node off.

#[allow(dead_code, reason = "used by the failover and patroni test binaries")]
pub mod load;
pub mod raw;
pub mod relay;

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgsplit::app::{Phase, Proxy};
use pgsplit::cluster::{ClusterOptions, ClusterUser, LocalCluster};
use pgsplit::config::Config;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

static CLUSTER: OnceLock<LocalCluster> = OnceLock::new();

/// The shared cluster, started on first use. Users: `app` (SCRAM on the
/// nodes) and `app_md5` (MD5 on the nodes), each with a database.
pub fn cluster() -> &'static LocalCluster {
    CLUSTER.get_or_init(|| {
        let options = ClusterOptions {
            users: vec![
                ClusterUser {
                    name: "app".into(),
                    password: "app".into(),
                    md5: false,
                },
                ClusterUser {
                    name: "app_md5".into(),
                    password: "md5pw".into(),
                    md5: true,
                },
            ],
            // Every node logs every statement: tests read back where one ran.
            extra_conf: vec![
                "log_statement = 'all'".into(),
                "max_prepared_transactions = 10".into(),
            ],
            ..ClusterOptions::default()
        };
        let cluster = LocalCluster::start(&options).expect("starting the test cluster");
        cluster
            .psql(0, "app", "CREATE TABLE IF NOT EXISTS items (id serial PRIMARY KEY, v text); INSERT INTO items (v) VALUES ('seed'); CREATE SEQUENCE IF NOT EXISTS seq")
            .expect("schema");
        wait_replicated(&cluster);
        cluster
    })
}

/// The ports of the nodes whose own statement log holds `marker`.
#[allow(
    dead_code,
    reason = "used by the lag test binary, which shares this harness"
)]
pub fn logged_on(marker: &str) -> Vec<u16> {
    let cluster = cluster();
    cluster
        .nodes
        .iter()
        .filter(|node| {
            std::fs::read(cluster.dir.join(format!("{}.log", node.name)))
                .is_ok_and(|log| memchr::memmem::find(&log, marker.as_bytes()).is_some())
        })
        .map(|node| node.port)
        .collect()
}

/// Waits until the proxy's catalog facts hold the function `name` (it
/// reads the catalog within a check interval of a change).
#[allow(
    dead_code,
    reason = "used by the lag test binary, which shares this harness"
)]
pub async fn knows_function(proxy: &Proxy, name: &str) {
    wait_for_facts(proxy, |f| f.function(None, name).is_some(), name).await;
}

/// Waits until the proxy's catalog facts hold the relation `name`.
#[allow(
    dead_code,
    reason = "used by the lag test binary, which shares this harness"
)]
pub async fn knows_relation(proxy: &Proxy, name: &str) {
    wait_for_facts(proxy, |f| f.relation_known(None, name), name).await;
}

async fn wait_for_facts(
    proxy: &Proxy,
    known: impl Fn(&pgsplit::router::Facts) -> bool,
    name: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !known(&proxy.state.facts.load()) {
        assert!(
            Instant::now() < deadline,
            "the proxy never read {name} from the catalog"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The primary's port.
pub fn primary_port() -> u16 {
    cluster().nodes[0].port
}

/// The replicas' ports.
pub fn replica_ports() -> Vec<u16> {
    cluster().nodes[1..].iter().map(|n| n.port).collect()
}

/// Waits until every replica has replayed what the primary has written.
pub fn wait_replicated(cluster: &LocalCluster) {
    let target = cluster
        .psql(0, "postgres", "SELECT pg_current_wal_lsn()")
        .expect("primary lsn");
    let target = target.trim();
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 1..cluster.nodes.len() {
        loop {
            let caught_up = cluster
                .psql(
                    i,
                    "postgres",
                    &format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"),
                )
                .expect("replica lsn");
            if caught_up.trim() == "t" {
                break;
            }
            assert!(Instant::now() < deadline, "replica {i} did not catch up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Waits until the replicas have replayed everything the primary has
/// written, so any session's read finds its data on them (a session's own
/// read after its write asks the replica itself: [`PATIENT_READS`]).
pub async fn caught_up() {
    tokio::task::spawn_blocking(|| wait_replicated(cluster()))
        .await
        .unwrap();
}

/// proxy.yaml text for the shared cluster: md5 for clients, the three
/// nodes (ports overridable), plus `extra` top-level YAML.
pub fn config_text(ports: &[u16], extra: &str) -> String {
    let mut nodes = String::new();
    for (i, port) in ports.iter().enumerate() {
        let role = if i == 0 { "primary" } else { "replica" };
        nodes.push_str(&format!(
            "  - {{ name: pg{}, host: 127.0.0.1, port: {port}, role: {role} }}\n",
            i + 1
        ));
    }
    let auth = if extra.contains("auth:") {
        String::new()
    } else {
        "auth:\n  method: md5\n  users:\n    - { name: app, password: app }\n    - { name: app_md5, password: md5pw }\n".to_owned()
    };
    let lag = if extra.contains("lag:") {
        ""
    } else {
        "\nlag:\n  check_interval: 100ms\n"
    };
    let extra = patient_reads(extra);
    format!("listen: 127.0.0.1:0\n{auth}nodes:\n{nodes}{extra}{lag}")
}

/// `routing.read_your_writes_wait` in tests, unless a test sets its own
/// read-your-writes: a read after a write waits this long for a replica to
/// replay it (5 ms by default). On a loaded 2-core machine the replicas may
/// trail by more than 5 ms, and a test that asserts a read ran on a
/// replica would race the replay; this way it waits for it.
const PATIENT_READS: &str = "  read_your_writes_wait: 30s\n";

fn patient_reads(extra: &str) -> String {
    if extra.contains("read_your_writes") {
        extra.to_owned()
    } else if extra.starts_with("routing:\n") || extra.contains("\nrouting:\n") {
        extra.replacen("routing:\n", &format!("routing:\n{PATIENT_READS}"), 1)
    } else {
        let sep = if extra.is_empty() || extra.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        format!("{extra}{sep}routing:\n{PATIENT_READS}")
    }
}

/// The cluster's real ports: primary first.
pub fn ports() -> Vec<u16> {
    cluster().nodes.iter().map(|n| n.port).collect()
}

/// Parses a config text as the proxy would.
pub fn parse_config(text: &str) -> Config {
    Config::from_text(Path::new("test.yaml"), text, |_| None).expect("test config")
}

/// Starts a proxy on port 0 and waits until it accepts clients. Set
/// `RUST_LOG` (e.g. `pgsplit=debug`) to see its logs in test output.
pub async fn start_proxy(text: &str) -> Proxy {
    static LOGS: OnceLock<()> = OnceLock::new();
    LOGS.get_or_init(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
    let mut proxy = Proxy::start(parse_config(text)).await.expect("proxy start");
    proxy.reached(Phase::Ready).await;
    proxy
}

/// A proxy in front of the shared cluster with default settings.
pub async fn default_proxy() -> Proxy {
    start_proxy(&config_text(&ports(), "")).await
}

/// A tokio-postgres client straight to a node (bypassing the proxy).
#[allow(
    dead_code,
    reason = "used by the lag test binary, which shares this harness"
)]
pub async fn direct(port: u16) -> Client {
    let conn_str = format!("host=127.0.0.1 port={port} user=postgres dbname=app");
    let (client, connection) = tokio_postgres::connect(&conn_str, NoTls)
        .await
        .expect("direct connection");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A tokio-postgres client through the proxy.
pub async fn connect(
    proxy: &Proxy,
    user: &str,
    password: &str,
) -> Result<Client, tokio_postgres::Error> {
    let conn_str = format!(
        "host=127.0.0.1 port={} user={user} password={password} dbname={user} connect_timeout=10",
        proxy.addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn_str, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// `app`'s client through the proxy.
pub async fn app(proxy: &Proxy) -> Client {
    connect(proxy, "app", "app").await.expect("connect as app")
}

/// Rows of a simple query as text.
pub async fn rows(
    client: &Client,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect())
}

/// The first column of the first row, parsed.
pub async fn scalar<T: std::str::FromStr>(client: &Client, sql: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    let rows = rows(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows[0][0]
        .as_deref()
        .expect("not null")
        .parse()
        .expect("parse")
}

/// The port of the node that answered `sql` (which must return
/// `inet_server_port()` in the last column of its last row).
pub async fn served_by(client: &Client, sql: &str) -> u16 {
    let rows = rows(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let row = rows.last().expect("a row");
    row.last()
        .expect("a column")
        .as_deref()
        .expect("port")
        .parse()
        .expect("port number")
}

/// A startup packet (untagged: length, version, NUL-terminated pairs).
pub fn startup_packet(version: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = (body.len() as i32 + 4).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// The SQLSTATE of an error, if it came from the server side.
pub fn code(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_owned())
}

/// The pool counts of node `name` in a proxy (zero when it has no pool).
pub fn pool_counts(proxy: &Proxy, name: &str) -> pgsplit::pool::PoolCounts {
    proxy
        .state
        .pools
        .counts()
        .get(name)
        .copied()
        .unwrap_or_default()
}

/// `app`'s client through the proxy, with its asynchronous notifications'
/// payloads on a channel.
pub async fn listener(proxy: &Proxy) -> (Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use futures_util::StreamExt;
    let conn_str = format!(
        "host=127.0.0.1 port={} user=app password=app dbname=app",
        proxy.addr.port()
    );
    let (client, mut connection) = tokio_postgres::connect(&conn_str, NoTls)
        .await
        .expect("connect as app");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(message)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    (client, rx)
}

/// `POST /failover` with `body` to the proxy's admin API: the raw answer.
#[allow(dead_code, reason = "used by the failover and patroni test binaries")]
pub async fn post_failover(proxy: &Proxy, body: &str) -> pgsplit::admin::client::Answer {
    let url = format!("http://{}", proxy.admin_addr.expect("admin API"));
    pgsplit::admin::client::request(&url, "POST", "/failover", None, Some(body))
        .await
        .unwrap()
}

/// `POST /failover` with `body`: the report.
#[allow(dead_code, reason = "used by the failover and patroni test binaries")]
pub async fn failover(proxy: &Proxy, body: &str) -> pgsplit::failover::Report {
    let answer = post_failover(proxy, body).await;
    serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{e}: {}", answer.body))
}
