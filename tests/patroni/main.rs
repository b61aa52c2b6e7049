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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster::PatroniCluster;
use harness::{app, config_text, rows, start_proxy};
use pgsplit::admin::client::request;
use pgsplit::app::Proxy;
use pgsplit::failover::Report;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Writers per proxy instance.
const WRITERS: usize = 3;
/// How long a load may run at most.
const LOAD_LIMIT: Duration = Duration::from_secs(90);

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
        c
    })
    .await
    .unwrap()
}

fn proxy_config(c: &PatroniCluster, etcd: bool) -> String {
    let ports: Vec<u16> = c.members.iter().map(|m| m.pg_port).collect();
    let urls: Vec<String> = c.members.iter().map(|m| m.api()).collect();
    let etcd = if etcd {
        format!(
            "    etcd: {{ endpoints: [http://127.0.0.1:{}], scope: {} }}\n",
            c.etcd_port, c.scope
        )
    } else {
        String::new()
    };
    config_text(
        &ports,
        &format!(
            "admin:\n  listen: 127.0.0.1:0\ntopology:\n  source: patroni\n  patroni:\n    urls: [{}]\n{etcd}",
            urls.join(", ")
        ),
    )
}

/// What one writer saw.
#[derive(Default)]
struct Written {
    /// Acknowledged `n`s.
    acked: Vec<i32>,
    /// Each acknowledged write's time and the port of the node it ran on.
    at: Vec<(Instant, u16)>,
    errors: Vec<String>,
}

/// Autocommit writers and readers through each proxy until `stop`.
struct Load {
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<(i32, Written)>>,
    readers: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    async fn start(proxies: &[&Proxy]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        let mut readers = Vec::new();
        for (p, proxy) in proxies.iter().enumerate() {
            for w in 0..WRITERS {
                let id = (p * 100 + w) as i32;
                let client = app(proxy).await;
                let stop = stop.clone();
                writers.push(tokio::spawn(async move {
                    let mut out = Written::default();
                    let deadline = Instant::now() + LOAD_LIMIT;
                    for n in 0..1_000_000 {
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            break;
                        }
                        let sql = format!(
                            "INSERT INTO acked VALUES ({id}, {n}) RETURNING inet_server_port()"
                        );
                        match rows(&client, &sql).await {
                            Ok(r) => {
                                out.acked.push(n);
                                let port = r[0][0].as_deref().unwrap_or("0").parse().unwrap_or(0);
                                out.at.push((Instant::now(), port));
                            }
                            Err(e) => {
                                out.errors.push(e.to_string());
                                if client.is_closed() {
                                    break;
                                }
                            }
                        }
                    }
                    (id, out)
                }));
            }
            let client = app(proxy).await;
            let stop = stop.clone();
            readers.push(tokio::spawn(async move {
                let mut errors = Vec::new();
                let deadline = Instant::now() + LOAD_LIMIT;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if let Err(e) = rows(&client, "SELECT count(*) FROM acked").await {
                        errors.push(e.to_string());
                        if client.is_closed() {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                errors
            }));
        }
        // Every writer has written before anything happens.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Load {
            stop,
            writers,
            readers,
        }
    }

    async fn finish(self) -> (Vec<(i32, Written)>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut written = Vec::new();
        for w in self.writers {
            written.push(w.await.unwrap());
        }
        let mut read_errors = Vec::new();
        for r in self.readers {
            read_errors.extend(r.await.unwrap());
        }
        (written, read_errors)
    }
}

/// The longest time between two acknowledged writes of one writer.
fn longest_stall(w: &Written) -> Duration {
    w.at.windows(2)
        .map(|p| p[1].0 - p[0].0)
        .max()
        .unwrap_or_default()
}

/// Every acknowledged write is on `leader`; no writer or reader saw an
/// error; no writer stalled 5 s. Returns the longest stall.
async fn assert_clean(
    c: &PatroniCluster,
    leader: &str,
    written: &[(i32, Written)],
    read_errors: &[String],
) -> Duration {
    let errors: Vec<&String> = written.iter().flat_map(|(_, w)| &w.errors).collect();
    assert!(
        errors.is_empty(),
        "client errors: {} {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(read_errors.is_empty(), "read errors: {read_errors:?}");
    let leader_port = c.member(leader).pg_port;
    let leader = leader.to_owned();
    let stored = {
        let c_rows =
            tokio::task::block_in_place(|| c.psql(&leader, "app", "SELECT client, n FROM acked"));
        c_rows
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(a, b)| (a.parse::<i32>().unwrap(), b.parse::<i32>().unwrap()))
            .collect::<BTreeSet<_>>()
    };
    let mut acked = 0;
    for (id, w) in written {
        for n in &w.acked {
            assert!(
                stored.contains(&(*id, *n)),
                "acknowledged write ({id}, {n}) is lost"
            );
            acked += 1;
        }
        let last = w.at.last().map(|(_, p)| *p);
        assert_eq!(
            last,
            Some(leader_port),
            "writer {id}'s last write ran on the leader"
        );
    }
    assert!(acked > 0);
    let stall = written
        .iter()
        .map(|(_, w)| longest_stall(w))
        .max()
        .unwrap_or_default();
    assert!(stall < Duration::from_secs(5), "a writer stalled {stall:?}");
    eprintln!("{acked} acknowledged writes, 0 errors, longest write stall {stall:?}");
    stall
}

async fn status(proxy: &Proxy) -> serde_json::Value {
    let url = format!("http://{}", proxy.admin_addr.expect("admin API"));
    let answer = request(&url, "GET", "/status", None, None).await.unwrap();
    serde_json::from_str(&answer.body).unwrap()
}

/// Waits until the proxy's primary is `name` and writes are not held.
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
        if primary.as_deref() == Some(name) && s["writes_held"] == false {
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
    let a = start_proxy(&proxy_config(&c, true)).await;
    let b = start_proxy(&proxy_config(&c, false)).await;
    follows(&a, "pg1").await;
    follows(&b, "pg1").await;
    let s = status(&a).await;
    assert_eq!(s["topology_source"], "patroni");
    assert_eq!(s["patroni"]["view"]["leader"], "pg1");
    assert_eq!(s["patroni"]["view"]["source"], "etcd");
    assert_eq!(status(&b).await["patroni"]["view"]["source"], "rest");
    let load = Load::start(&[&a, &b]).await;
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
    // Writes go on at the new leader for a while.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (written, read_errors) = load.finish().await;
    assert_clean(&c, "pg2", &written, &read_errors).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgsplit_failover_is_delegated_to_patroni_under_load() {
    let _serial = SERIAL.lock().await;
    let c = new_cluster().await;
    let a = start_proxy(&proxy_config(&c, true)).await;
    let b = start_proxy(&proxy_config(&c, true)).await;
    follows(&a, "pg1").await;
    follows(&b, "pg1").await;
    let url = format!("http://{}", a.admin_addr.unwrap());
    // A typo of `check` is refused, not run.
    let typo = request(
        &url,
        "POST",
        "/failover",
        None,
        Some(r#"{"to": "pg3", "chek": true}"#),
    )
    .await
    .unwrap();
    assert_eq!(typo.status, 400, "{}", typo.body);
    assert!(typo.body.contains("chek"), "{}", typo.body);
    // The drill says what Patroni would be asked, and changes nothing.
    let drill = request(
        &url,
        "POST",
        "/failover",
        None,
        Some(r#"{"to": "pg3", "check": true}"#),
    )
    .await
    .unwrap();
    let drill: Report = serde_json::from_str(&drill.body).unwrap();
    assert!(drill.ok, "{drill:?}");
    assert!(
        drill
            .steps
            .iter()
            .any(|s| s.name.contains("POST /switchover") && s.name.contains("pg3")),
        "{drill:?}"
    );
    // A member Patroni does not have is refused with the members named.
    let bad = request(&url, "POST", "/failover", None, Some(r#"{"to": "nope"}"#))
        .await
        .unwrap();
    let bad: Report = serde_json::from_str(&bad.body).unwrap();
    assert!(
        !bad.ok && bad.error.as_deref().unwrap().contains("pg2"),
        "{bad:?}"
    );
    assert_eq!(
        tokio::task::block_in_place(|| c.leader()).as_deref(),
        Some("pg1")
    );

    let load = Load::start(&[&a, &b]).await;
    let answer = request(&url, "POST", "/failover", None, Some(r#"{"to": "pg3"}"#))
        .await
        .unwrap();
    let report: Report = serde_json::from_str(&answer.body).unwrap();
    assert!(report.ok, "{report:?}\n{}", c.log("pg1"));
    assert_eq!(report.candidate.as_deref(), Some("pg3"));
    assert_eq!(
        tokio::task::block_in_place(|| c.leader()).as_deref(),
        Some("pg3")
    );
    follows(&b, "pg3").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
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
    let a = start_proxy(&proxy_config(&c, true)).await;
    follows(&a, "pg1").await;
    let load = Load::start(&[&a]).await;
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
    tokio::time::sleep(Duration::from_millis(500)).await;
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
