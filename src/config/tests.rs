use super::*;

const GOOD: &str = r#"
listen: 127.0.0.1:6432
admin:
  listen: 127.0.0.1:9930
  token: ${TOKEN:-t0k}
auth:
  method: md5
  users:
    - name: app
      password: ${APP_PASSWORD}
nodes:
  - { name: pg1, host: 127.0.0.1, port: 5432, role: primary }
  - { name: pg2, host: 127.0.0.1, port: 5433, role: replica, weight: 100 }
  - { name: pg3, host: 127.0.0.1, port: 5434, role: replica, weight: 50 }
pool:
  mode: transaction
  size: 20
  checkout_timeout: 5s
routing:
  primary_reads: 0
  no_replica: primary
  read_your_writes: session
  write_functions: [audit_log]
monitor:
  user: postgres
lag:
  check_interval: 250ms
  max_lag: 10s
  max_lag_bytes: 64MB
"#;

fn env(name: &str) -> Option<String> {
    (name == "APP_PASSWORD").then(|| "secret".to_owned())
}

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_text(Path::new("proxy.yaml"), text, env)
}

#[test]
fn full_example_parses() {
    let c = load(GOOD).unwrap();
    assert_eq!(c.listen_addr().port(), 6432);
    assert_eq!(c.auth.method.value, AuthMethod::Md5);
    assert_eq!(c.auth.users[0].password.as_deref(), Some("secret"));
    assert_eq!(c.admin.as_ref().unwrap().token.as_deref(), Some("t0k"));
    assert_eq!(c.nodes.value.len(), 3);
    assert_eq!(c.primary().name.value, "pg1");
    assert_eq!(c.nodes.value[2].weight, 50);
    assert_eq!(c.pool.checkout_timeout.0, std::time::Duration::from_secs(5));
    assert_eq!(
        c.lag.check_interval.0,
        std::time::Duration::from_millis(250)
    );
    assert_eq!(c.lag.max_lag_bytes, ByteSize(64 << 20));
    assert_eq!(c.routing.write_functions, vec!["audit_log".to_owned()]);
}

#[test]
fn defaults_apply() {
    let c = load("listen: 127.0.0.1:1\nnodes:\n  - {name: a, host: h, role: primary}\n").unwrap();
    assert_eq!(c.pool.mode, PoolMode::Transaction);
    assert_eq!(c.pool.size, 20);
    assert_eq!(c.routing.no_replica, NoReplica::Primary);
    assert_eq!(c.auth.method.value, AuthMethod::Trust);
    assert_eq!(c.nodes.value[0].port, 5432);
}

fn error_of(text: &str) -> String {
    load(text).unwrap_err().to_string()
}

#[test]
fn unknown_key_names_line_and_key() {
    let bad = GOOD.replace("  size: 20", "  sise: 20");
    let e = error_of(&bad);
    assert!(e.contains("proxy.yaml"), "{e}");
    assert!(e.contains("sise"), "{e}");
    assert!(e.contains("line 17"), "line 17 expected: {e}");
}

#[test]
fn wrong_type_is_refused() {
    let e = error_of(&GOOD.replace("size: 20", "size: lots"));
    assert!(e.contains("proxy.yaml") && e.contains("line 17"), "{e}");
    let e = error_of(&GOOD.replace("max_lag: 10s", "max_lag: ten"));
    assert!(
        e.contains("invalid duration") && e.contains("line 28"),
        "{e}"
    );
    let e = error_of(&GOOD.replace("64MB", "64MiBs"));
    assert!(e.contains("invalid size"), "{e}");
}

#[test]
fn duplicate_names_and_primaries() {
    let e = error_of(&GOOD.replace("name: pg3", "name: pg2"));
    assert!(e.starts_with("proxy.yaml:14:"), "{e}");
    assert!(
        e.contains("nodes[2].name") && e.contains("duplicate"),
        "{e}"
    );
    let e = error_of(&GOOD.replace(
        "weight: 50",
        "weight: 50 }\n  - { name: pg4, host: h, role: primary",
    ));
    assert!(
        e.starts_with("proxy.yaml:15:") && e.contains("nodes[3].role"),
        "{e}"
    );
    let e = error_of(&GOOD.replace("role: primary", "role: replica"));
    assert!(
        e.contains("no node has role: primary") && e.starts_with("proxy.yaml:12:"),
        "{e}"
    );
}

#[test]
fn missing_variable_names_line() {
    let e = Config::from_text(Path::new("p.yaml"), GOOD, |_| None)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("p.yaml:10:") && e.contains("APP_PASSWORD"),
        "{e}"
    );
}

#[test]
fn md5_needs_passwords_and_bad_addresses_are_refused() {
    let e = error_of(&GOOD.replace("      password: ${APP_PASSWORD}\n", ""));
    assert!(e.contains("auth.users[0].password"), "{e}");
    let e = error_of(&GOOD.replace("listen: 127.0.0.1:6432", "listen: nowhere"));
    assert!(
        e.starts_with("proxy.yaml:2:") && e.contains("listen"),
        "{e}"
    );
    let e = error_of(&GOOD.replace("role: primary }", "role: boss }"));
    assert!(e.contains("boss"), "{e}");
}

#[test]
fn auth_methods_are_spelled_as_in_postgresql() {
    for (text, method) in [
        ("trust", AuthMethod::Trust),
        ("md5", AuthMethod::Md5),
        ("scram-sha-256", AuthMethod::ScramSha256),
    ] {
        let c = load(&GOOD.replace("method: md5", &format!("method: {text}"))).unwrap();
        assert_eq!(c.auth.method.value, method);
    }
}

#[test]
fn workers_sizes_the_runtime_and_zero_is_refused() {
    let c = load(&format!("{GOOD}workers: 1\nsched_batch: false\n")).unwrap();
    assert_eq!(c.workers.map(|w| w.value), Some(1));
    assert!(!c.sched_batch);
    let defaults = load(GOOD).unwrap();
    assert!(
        defaults.workers.is_none() && defaults.sched_batch,
        "one worker per CPU, under SCHED_BATCH, unless told otherwise"
    );
    let e = error_of(&format!("{GOOD}workers: 0\n"));
    assert!(
        e.starts_with("proxy.yaml:30:") && e.contains("workers"),
        "{e}"
    );
}

#[test]
fn durations_take_only_the_documented_forms() {
    use super::values::Duration;
    let secs = |s| Some(Duration(std::time::Duration::from_secs(s)));
    assert_eq!(Duration::parse("10s"), secs(10));
    assert_eq!(Duration::parse("5m"), secs(300));
    assert_eq!(Duration::parse("1h"), secs(3600));
    assert_eq!(Duration::parse("1m30s"), secs(90));
    assert_eq!(
        Duration::parse("250ms"),
        Some(Duration(std::time::Duration::from_millis(250)))
    );
    for bad in ["5 seconds", "1d", "10", "", "s", "1.5s", "-1s", "10sec"] {
        assert_eq!(Duration::parse(bad), None, "{bad:?}");
    }
    let text = "listen: 127.0.0.1:6432\nnodes:\n  - { name: a, host: h, role: primary }\n\
                lag:\n  max_lag: 5 seconds\n";
    let e = Config::from_text(Path::new("p.yaml"), text, |_| None)
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains("250ms, 10s, 5m") && e.contains("5 seconds"),
        "{e}"
    );
}

#[test]
fn every_validation_error_names_a_line() {
    let text = "listen: 127.0.0.1:6432\nnodes:\n  - { name: a, host: h, role: primary }\n\
                pool:\n  size: 0\nrouting:\n  cross_zone_share: 0.5\nlag:\n  down_after: 0\n";
    let e = Config::from_text(Path::new("p.yaml"), text, |_| None)
        .expect_err("refused")
        .to_string();
    assert!(e.starts_with("p.yaml:8:1: lag"), "{e}");
    let text = text.replace("down_after: 0", "down_after: 1");
    let e = Config::from_text(Path::new("p.yaml"), &text, |_| None)
        .expect_err("refused")
        .to_string();
    assert!(e.starts_with("p.yaml:5:3: pool.size"), "{e}");
    assert_eq!(super::locate("a:\n  b:\n    c: 1\n", "a.b.c"), (3, 5));
    assert_eq!(super::locate("x: 1\n", "lag.max_lag"), (1, 1));
}

#[test]
fn topology_patroni() {
    let config = load(GOOD).unwrap();
    assert!(!config.follows_patroni(), "static by default");
    let text = format!(
        "{GOOD}topology:\n  source: patroni\n  patroni:\n    urls: [http://10.0.0.1:8008]\n    etcd: {{ endpoints: [http://10.0.0.9:2379], scope: main }}\n"
    );
    let config = load(&text).unwrap();
    assert!(config.follows_patroni());
    let patroni = config.topology.patroni.as_ref().unwrap();
    assert_eq!(patroni.etcd.as_ref().unwrap().prefix(), "/service/main/");
    assert_eq!(
        patroni.poll_interval.0,
        std::time::Duration::from_millis(500)
    );
    let refused = |extra: &str, key: &str| {
        let text = format!("{GOOD}{extra}");
        match load(&text) {
            Err(ConfigError::Invalid { key: k, line, .. }) => {
                assert_eq!(k, key, "{extra}");
                assert!(line > 1, "points at its line: {extra}");
            }
            other => panic!("{extra}: {other:?}"),
        }
    };
    refused("topology:\n  source: patroni\n", "topology.source");
    refused(
        "topology:\n  source: patroni\n  patroni:\n    urls: [https://x:8008]\n",
        "topology.patroni.urls[0]",
    );
    refused(
        "topology:\n  source: patroni\n  patroni:\n    etcd: { endpoints: [], scope: main }\n",
        "topology.patroni.etcd",
    );
    assert!(matches!(
        load(&format!("{GOOD}topology:\n  source: consul\n")),
        Err(ConfigError::Schema { .. })
    ));
}
