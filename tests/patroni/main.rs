//! `topology.source: patroni` against a real etcd + Patroni cluster the
//! tests start on loopback: a `patronictl switchover` under load, `POST
//! /failover` delegated to Patroni under load, and the leader's postmaster
//! killed. Two pgsplit instances on the cluster each take load; where a
//! write ran is read back from the nodes (`inet_server_port()` and the
//! rows on the leader).

mod cluster;
#[path = "../it/harness/mod.rs"]
#[allow(dead_code)]
mod harness;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cluster::PatroniCluster;
use harness::load::{Load, Written, assert_no_error_and_nothing_lost};
use harness::{config_text, failover, post_failover, start_proxy};
use pgsplit::admin::client::request;
use pgsplit::app::Proxy;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Writers per proxy instance.
const WRITERS: usize = 3;

async fn new_cluster() -> PatroniCluster {
    tokio::task::spawn_blocking(|| {
        let c = PatroniCluster::start();
        c.psql("pg1", "postgres", "CREATE ROLE app LOGIN PASSWORD 'app'");
        c.psql("pg1", "postgres", "CREATE DATABASE app OWNER app");
        c.psql(
            "pg1",
            "app",
            "CREATE TABLE acked (client int, n int, PRIMARY KEY (client, n)); ALTER TABLE acked OWNER TO app",
        );
        c.wait_healthy(Duration::from_secs(60));
        c.wait_replayed("pg1", Duration::from_secs(60));
        c
    })
    .await
    .unwrap()
}

/// A proxy.yaml over the cluster, watching etcd at `etcd` (a port) when
/// given.
fn proxy_config(c: &PatroniCluster, etcd: Option<u16>) -> String {
    let ports: Vec<u16> = c.members.iter().map(|m| m.pg_port).collect();
    let urls: Vec<String> = c.members.iter().map(|m| m.api()).collect();
    let etcd = etcd
        .map(|port| {
            format!(
                "    etcd: {{ endpoints: [http://127.0.0.1:{port}], scope: {} }}\n",
                c.scope
            )
        })
        .unwrap_or_default();
    config_text(
        &ports,
        &format!(
            "admin:\n  listen: 127.0.0.1:0\ntopology:\n  source: patroni\n  patroni:\n    urls: [{}]\n{etcd}",
            urls.join(", ")
        ),
    )
}

/// Every acknowledged write is on `leader`, with no client error and no
/// writer stalled 5 s.
async fn assert_clean(
    c: &PatroniCluster,
    leader: &str,
    written: &[(i32, Written)],
    read_errors: &[String],
) -> Duration {
    let port = c.member(leader).pg_port;
    let text = tokio::task::block_in_place(|| c.psql(leader, "app", "SELECT client, n FROM acked"));
    let stored = text
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(a, b)| (a.parse::<i32>().unwrap(), b.parse::<i32>().unwrap()))
        .collect::<BTreeSet<_>>();
    assert_no_error_and_nothing_lost(written, read_errors, &stored, port)
}

async fn status(proxy: &Proxy) -> serde_json::Value {
    let url = format!("http://{}", proxy.admin_addr.expect("admin API"));
    let answer = request(&url, "GET", "/status", None, None).await.unwrap();
    serde_json::from_str(&answer.body).unwrap()
}

/// Waits until the proxy's Patroni view names `name` the leader, its
/// primary is `name` and writes are not held. (The configuration's
/// primary alone is not following: a proxy that has not read Patroni yet
/// shows it too.)
async fn follows(proxy: &Proxy, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(proxy).await;
        let primary = s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["role"] == "primary")
            .map(|n| n["name"].as_str().unwrap().to_owned());
        if primary.as_deref() == Some(name)
            && s["patroni"]["view"]["leader"] == name
            && s["writes_held"] == false
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy does not follow {name}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patronictl_switchover_under_load_is_a_pause_on_two_instances() {
    let _serial = SERIAL.lock().await;
    let c = new_cluster().await;
    let a = start_proxy(&proxy_config(&c, Some(c.etcd_port))).await;
    // b's etcd endpoint refuses connections: it falls back to the REST API.
    let b = start_proxy(&proxy_config(&c, Some(pgsplit::cluster::free_port()))).await;
    follows(&a, "pg1").await;
    follows(&b, "pg1").await;
    let s = status(&a).await;
    assert_eq!(s["topology_source"], "patroni");
    assert_eq!(s["patroni"]["view"]["leader"], "pg1");
    assert_eq!(s["patroni"]["view"]["source"], "etcd");
    let s = status(&b).await;
    assert_eq!(s["patroni"]["view"]["source"], "rest", "{s}");
    assert_eq!(s["patroni"]["view"]["leader"], "pg1", "{s}");
    // Reads go to Patroni's replicas, as the nodes themselves say.
    let replicas = [c.member("pg2").pg_port, c.member("pg3").pg_port];
    for proxy in [&a, &b] {
        let client = harness::app(proxy).await;
        let port = harness::served_by(&client, "SELECT inet_server_port()").await;
        assert!(
            replicas.contains(&port),
            "a read ran on {port} (replicas {replicas:?}): {}",
            status(proxy).await
        );
    }
    let load = Load::start(&[&a, &b], WRITERS).await;
    let said = tokio::task::block_in_place(|| c.patronictl_switchover("pg1", "pg2"));
    // patronictl's exit code does not say whether Patroni did it: the
    // leader does.
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::task::block_in_place(|| c.leader()).as_deref() != Some("pg2") {
        assert!(Instant::now() < deadline, "no switchover: {said}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    follows(&a, "pg2").await;
    follows(&b, "pg2").await;
    load.wait_all_wrote_to(c.member("pg2").pg_port).await;
    let (written, read_errors) = load.finish().await;
    assert_clean(&c, "pg2", &written, &read_errors).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgsplit_failover_is_delegated_to_patroni_under_load() {
    let _serial = SERIAL.lock().await;
    let c = new_cluster().await;
    let a = start_proxy(&proxy_config(&c, Some(c.etcd_port))).await;
    let b = start_proxy(&proxy_config(&c, None)).await;
    follows(&a, "pg1").await;
    follows(&b, "pg1").await;
    // A typo of `check` is refused, not run.
    let typo = post_failover(&a, r#"{"to": "pg3", "chek": true}"#).await;
    assert_eq!(typo.status, 400, "{}", typo.body);
    assert!(typo.body.contains("chek"), "{}", typo.body);
    // The drill says what Patroni would be asked, and changes nothing.
    let drill = failover(&a, r#"{"to": "pg3", "check": true}"#).await;
    assert!(drill.ok, "{drill:?}");
    assert!(
        drill
            .steps
            .iter()
            .any(|s| s.name.contains("POST /switchover") && s.name.contains("pg3")),
        "{drill:?}"
    );
    // A member Patroni does not have is refused with the members named.
    let bad = failover(&a, r#"{"to": "nope"}"#).await;
    assert!(
        !bad.ok && bad.error.as_deref().unwrap().contains("pg2"),
        "{bad:?}"
    );
    assert_eq!(
        tokio::task::block_in_place(|| c.leader()).as_deref(),
        Some("pg1")
    );

    let load = Load::start(&[&a, &b], WRITERS).await;
    let report = failover(&a, r#"{"to": "pg3"}"#).await;
    assert!(report.ok, "{report:?}\n{}", c.log("pg1"));
    assert_eq!(report.candidate.as_deref(), Some("pg3"));
    assert_eq!(
        tokio::task::block_in_place(|| c.leader()).as_deref(),
        Some("pg3")
    );
    follows(&b, "pg3").await;
    load.wait_all_wrote_to(c.member("pg3").pg_port).await;
    let (written, read_errors) = load.finish().await;
    assert_clean(&c, "pg3", &written, &read_errors).await;
    eprintln!(
        "writes held {:?} ms at the delegating proxy",
        report.writes_held_ms
    );
    // pgsplit did not promote anything itself: Patroni's history has the
    // switchover, and every member is healthy under Patroni.
    tokio::task::block_in_place(|| c.wait_healthy(Duration::from_secs(60)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_writes_reach_the_new_one_within_3s() {
    let _serial = SERIAL.lock().await;
    let c = new_cluster().await;
    // proxy.yaml lists one member, by name, for its weight: the nodes are
    // Patroni's members.
    let text = proxy_config(&c, Some(c.etcd_port));
    let listed: String = text
        .lines()
        .filter(|l| l.starts_with("  - { name: pg"))
        .map(|l| format!("{l}\n"))
        .collect();
    let only_pg3 = text.replacen(&listed, "  - { name: pg3, weight: 50 }\n", 1);
    assert_ne!(only_pg3, text);
    let a = start_proxy(&only_pg3).await;
    follows(&a, "pg1").await;
    let s = status(&a).await;
    let nodes: Vec<(String, String, u64)> = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_owned(),
                n["role"].as_str().unwrap().to_owned(),
                n["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut sorted = nodes.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            ("pg1".to_owned(), "primary".to_owned(), 100),
            ("pg2".to_owned(), "replica".to_owned(), 100),
            ("pg3".to_owned(), "replica".to_owned(), 50)
        ],
        "{s}"
    );
    let load = Load::start(&[&a], WRITERS).await;
    tokio::task::block_in_place(|| c.kill_postmaster("pg1"));
    // Patroni's election, as seen from its REST API.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (new_leader, elected) = loop {
        if let Some(l) = tokio::task::block_in_place(|| c.leader()).filter(|l| l != "pg1") {
            break (l, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "Patroni elected no new leader\n{}",
            c.log("pg2")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    follows(&a, &new_leader).await;
    load.wait_all_wrote_to(c.member(&new_leader).pg_port).await;
    let (written, _) = load.finish().await;
    let port = c.member(&new_leader).pg_port;
    let first = written
        .iter()
        .filter_map(|(_, w)| w.at.iter().find(|(_, p)| *p == port).map(|(t, _)| *t))
        .min()
        .expect("writes on the new leader");
    let after = first.saturating_duration_since(elected);
    eprintln!("first write on {new_leader} {after:?} after Patroni elected it");
    assert!(after < Duration::from_secs(3), "{after:?}");
}
