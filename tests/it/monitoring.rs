//! Monitoring: the docker-compose stack agrees with itself and with the
//! proxy's configuration, and every dashboard query evaluates against a
//! real Prometheus scraping a real proxy.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgsplit::admin::client::request;
use pgsplit::config::Config;
use serde_json::Value;

use crate::harness::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn docker_compose_dockerfile_and_grafana_agree_with_the_proxy_config() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_object().expect("services");
    for name in ["pg1", "pg2", "pg3", "pgsplit", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    // every mounted file exists
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            assert!(
                root().join(source).exists(),
                "{name} mounts {source}, which does not exist"
            );
        }
    }
    // the proxy's config: nodes are the compose services on 5432
    let mounted = services["pgsplit"]["volumes"].as_array().unwrap();
    let config_mount = mounted
        .iter()
        .map(|v| v.as_str().unwrap())
        .find(|v| v.contains("/etc/pgsplit/proxy.yaml"))
        .expect("pgsplit mounts its config at /etc/pgsplit/proxy.yaml");
    let config_file = config_mount.split(':').next().unwrap();
    let config = Config::load(&root().join(config_file)).expect("docker/proxy.yaml validates");
    for node in &config.nodes.value {
        assert!(
            services.contains_key(&node.host),
            "node host {} is not a service",
            node.host
        );
        assert_eq!(node.port, 5432);
    }
    let admin_port = config
        .admin
        .as_ref()
        .unwrap()
        .listen
        .value
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let listen_port = config.listen.value.rsplit(':').next().unwrap().to_owned();
    let ports: Vec<&str> = services["pgsplit"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        ports.contains(&format!("{listen_port}:{listen_port}").as_str()),
        "{ports:?}"
    );
    assert!(
        ports.contains(&format!("{admin_port}:{admin_port}").as_str()),
        "{ports:?}"
    );
    // Prometheus scrapes the proxy's admin port; Grafana reads Prometheus
    let prometheus = yaml("docker/prometheus.yml");
    let target = prometheus["scrape_configs"][0]["static_configs"][0]["targets"][0]
        .as_str()
        .unwrap();
    assert_eq!(target, format!("pgsplit:{admin_port}"));
    let datasource = yaml("grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(
        datasource["datasources"][0]["url"].as_str(),
        Some("http://prometheus:9090")
    );
    let provider = yaml("grafana/provisioning/dashboards/pgsplit.yml");
    let dash_path = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let grafana_mounts: Vec<&str> = services["grafana"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        grafana_mounts
            .iter()
            .any(|m| m.starts_with("./grafana/dashboards:") && m.contains(dash_path))
    );
    // the Dockerfile builds the release binary of this crate and runs it as non-root
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let cargo = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(cargo.contains("name = \"pgsplit\""));
    assert!(dockerfile.contains("cargo build --release --locked --bin pgsplit"));
    assert!(
        dockerfile.contains("COPY --from=build /src/target/release/pgsplit /usr/local/bin/pgsplit")
    );
    assert!(dockerfile.contains("CMD [\"run\", \"-c\", \"/etc/pgsplit/proxy.yaml\"]"));
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert_ne!(user.trim(), "root");
    for copied in dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
    {
        for source in copied.split_whitespace().rev().skip(1) {
            assert!(
                root().join(source).exists(),
                "the Dockerfile copies {source}, which does not exist"
            );
        }
    }
}

/// Every PromQL expression of the dashboards, with its panel title.
fn dashboard_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("grafana/dashboards")).unwrap() {
        let dash: Value =
            serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()).unwrap();
        for panel in dash["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                out.push((
                    panel["title"].as_str().unwrap().to_owned(),
                    target["expr"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    out
}

/// Prometheus from Debian, installed on first use when running as root.
fn prometheus_binary() -> PathBuf {
    let found = || {
        ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    };
    if let Some(p) = found() {
        return p;
    }
    let fix = "apt-get update && apt-get install -y --no-install-recommends prometheus";
    let root =
        std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    assert!(
        matches!(root, Ok(true)),
        "Prometheus is missing; run: {fix}"
    );
    let install = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install(&["install", "-y", "--no-install-recommends", "prometheus"]) {
        assert!(install(&["update"]), "apt-get update failed; run: {fix}");
        assert!(
            install(&["install", "-y", "--no-install-recommends", "prometheus"]),
            "run: {fix}"
        );
    }
    found().unwrap_or_else(|| panic!("Prometheus still missing; run: {fix}"))
}

struct RunningPrometheus {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Drop for RunningPrometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_prometheus(scrape: &str) -> RunningPrometheus {
    let binary = prometheus_binary();
    let dir = std::env::temp_dir().join(format!(
        "pgsplit-prom-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pgsplit\n    static_configs:\n      - targets: [\"{scrape}\"]\n"),
    )
    .unwrap();
    let port = pgsplit::cluster::free_port();
    let child = Command::new(binary)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting prometheus");
    RunningPrometheus {
        child,
        dir,
        url: format!("http://127.0.0.1:{port}"),
    }
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The answer to `expr`; `Err` while Prometheus does not listen yet.
async fn try_query(prom: &RunningPrometheus, expr: &str) -> anyhow::Result<Value> {
    let path = format!("/api/v1/query?query={}", encode(expr));
    let answer = request(&prom.url, "GET", &path, None, None).await?;
    Ok(serde_json::from_str(&answer.body)
        .unwrap_or_else(|e| panic!("{expr}: {e}: {}", answer.body)))
}

async fn query(prom: &RunningPrometheus, expr: &str) -> Value {
    try_query(prom, expr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_evaluates_against_real_prometheus() {
    let proxy = start_proxy(&config_text(&ports(), "admin:\n  listen: 127.0.0.1:0\n")).await;
    let admin = proxy.admin_addr.unwrap();
    // metric names the dashboards use must all be exported
    let exported = request(&format!("http://{admin}"), "GET", "/metrics", None, None)
        .await
        .unwrap()
        .body;
    for (title, expr) in dashboard_queries() {
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("pgsplit_"))
        {
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                exported.contains(&format!("# TYPE {base} ")),
                "panel {title:?} uses {name}, which the proxy does not export"
            );
        }
    }
    let prom = tokio::task::spawn_blocking(move || start_prometheus(&admin.to_string()))
        .await
        .unwrap();
    // a little load: reads, writes, a transaction
    let client = app(&proxy).await;
    // Load for at least 8 s, and until Prometheus (which may still be
    // starting on a loaded machine) has scraped the proxy, for at most 60 s.
    let load_until = Instant::now() + Duration::from_secs(8);
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut up = false;
    while Instant::now() < load_until || (!up && Instant::now() < give_up) {
        for _ in 0..20 {
            client
                .simple_query("SELECT inet_server_port()")
                .await
                .unwrap();
        }
        client
            .simple_query("INSERT INTO items (v) VALUES ('prom')")
            .await
            .unwrap();
        client
            .simple_query("BEGIN; SELECT 1; COMMIT")
            .await
            .unwrap();
        if !up {
            // (refused while Prometheus is not listening yet)
            if let Ok(v) = try_query(&prom, "up{job=\"pgsplit\"}").await {
                up = v["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty() && r[0]["value"][1] == "1");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "Prometheus never scraped the proxy");
    for (title, expr) in dashboard_queries() {
        let v = query(&prom, &expr).await;
        assert_eq!(v["status"], "success", "panel {title:?}: {expr} -> {v}");
        let lower = title.to_lowercase();
        if ["lag", "routing", "latency"]
            .iter()
            .any(|k| lower.contains(k))
        {
            let results = v["data"]["result"].as_array().unwrap();
            assert!(
                !results.is_empty(),
                "panel {title:?}: {expr} returned no data"
            );
        }
    }
    drop(prom);
    proxy.stop().await;
}
