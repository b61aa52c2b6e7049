//! Switchover, failover, topology discovery and reload against real
//! PostgreSQL. Each test builds its own primary and replicas, since it
//! changes who is primary.

#[path = "../it/harness/mod.rs"]
#[allow(dead_code)]
mod harness;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use harness::load::{Load, assert_no_error_and_nothing_lost};
use harness::*;
use pgsplit::admin::client::request;
use pgsplit::app::Proxy;
use pgsplit::cluster::{ClusterOptions, LocalCluster};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn new_cluster() -> LocalCluster {
    tokio::task::spawn_blocking(|| {
        let c = LocalCluster::start(&ClusterOptions::default()).expect("cluster");
        c.psql(
            0,
            "app",
            "CREATE TABLE acked (client int, n int, PRIMARY KEY (client, n))",
        )
        .unwrap();
        c
    })
    .await
    .unwrap()
}

fn node_ports(c: &LocalCluster) -> Vec<u16> {
    c.nodes.iter().map(|n| n.port).collect()
}

const ADMIN: &str = "admin:\n  listen: 127.0.0.1:0\n";

async fn connect_to(proxy: &Proxy) -> tokio_postgres::Client {
    app(proxy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_under_load_loses_no_acknowledged_write_and_shows_no_errors() {
    let _serial = SERIAL.lock().await;
    let c = new_cluster().await;
    let ports = node_ports(&c);
    let proxy = start_proxy(&config_text(&ports, ADMIN)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..16 {
        let client = connect_to(&proxy).await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut errors = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            for n in 0..100_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                match client
                    .simple_query(&format!("INSERT INTO acked VALUES ({w}, {n})"))
                    .await
                {
                    Ok(_) => acked.push(n),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (w, acked, errors)
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..16 {
        let client = connect_to(&proxy).await;
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Err(e) = client.simple_query("SELECT count(*) FROM acked").await {
                    errors.push(e.to_string());
                }
            }
            errors
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let report = failover(&proxy, r#"{"to": "pg2"}"#).await;
    eprintln!("{report:#?}");
    assert!(report.ok, "switchover failed: {report:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let new_primary = direct(ports[1]).await;
    for w in writers {
        let (client, acked, errors) = w.await.unwrap();
        assert!(errors.is_empty(), "writer {client} saw errors: {errors:?}");
        let rows = new_primary
            .query("SELECT n FROM acked WHERE client = $1", &[&client])
            .await
            .unwrap();
        let stored: BTreeSet<i32> = rows.iter().map(|r| r.get(0)).collect();
        for n in &acked {
            assert!(
                stored.contains(n),
                "acknowledged insert ({client}, {n}) is missing on the new primary"
            );
        }
        total += acked.len();
    }
    for r in readers {
        let errors = r.await.unwrap();
        assert!(errors.is_empty(), "a reader saw errors: {errors:?}");
    }
    let held = report.writes_held_ms.unwrap();
    eprintln!("{total} acknowledged inserts, writes held {held} ms");
    assert!(held < 5000, "writes were held {held} ms");
    // the proxy reports the new roles
    let status = pgsplit::admin::Status::collect(&proxy.state);
    let role = |name: &str| {
        status
            .nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap()
            .role
            .clone()
    };
    assert_eq!(
        (
            role("pg1").as_str(),
            role("pg2").as_str(),
            role("pg3").as_str()
        ),
        ("retired", "primary", "replica")
    );
    let client = connect_to(&proxy).await;
    assert_eq!(
        served_by(
            &client,
            "INSERT INTO acked VALUES (99, 1) RETURNING inet_server_port()"
        )
        .await,
        ports[1]
    );

    // Switch back: the old primary is rebuilt as a replica of pg2 first.
    tokio::task::block_in_place(|| c.rebuild_as_replica(0, 1)).unwrap();
    let rejoined = wait_for(Duration::from_secs(20), || {
        let s = pgsplit::admin::Status::collect(&proxy.state);
        s.nodes
            .iter()
            .any(|n| n.name == "pg1" && n.role == "replica" && n.state == "up")
    })
    .await;
    assert!(rejoined, "pg1 did not rejoin as a replica");
    let _ = wait_for(Duration::from_secs(20), || {
        proxy
            .state
            .topology
            .load()
            .node("pg1")
            .unwrap()
            .stats
            .load()
            .eligible
    })
    .await;
    let report = failover(&proxy, r#"{"to": "pg1"}"#).await;
    assert!(report.ok, "switch back failed: {report:?}");
    assert_eq!(
        served_by(
            &client,
            "INSERT INTO acked VALUES (99, 2) RETURNING inet_server_port()"
        )
        .await,
        ports[0]
    );
    proxy.stop().await;
}

async fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_failover_after_the_primary_dies() {
    let _serial = SERIAL.lock().await;
    let c = new_cluster().await;
    let ports = node_ports(&c);
    let proxy = start_proxy(&config_text(&ports, ADMIN)).await;
    let client = connect_to(&proxy).await;
    client
        .simple_query("INSERT INTO acked VALUES (1, 1)")
        .await
        .unwrap();
    tokio::task::block_in_place(|| c.pg_ctl(0, "kill")).unwrap();
    // The drill of this failover: the survivor it would promote and what
    // may be lost, with nothing changed.
    let drill = failover(&proxy, r#"{"force": true, "check": true}"#).await;
    assert!(drill.ok, "{drill:?}");
    assert_eq!(drill.action, "drill");
    assert!(
        drill.candidate.is_some() && drill.lost_bytes.is_some(),
        "{drill:?}"
    );
    assert_eq!(proxy.state.topology.load().primary().name.as_ref(), "pg1");
    let report = failover(&proxy, r#"{"force": true}"#).await;
    let failed_over = Instant::now();
    eprintln!("{report:#?}");
    assert!(report.ok, "{report:?}");
    let promoted = report.candidate.clone().unwrap();
    let promoted_port = c.nodes.iter().find(|n| n.name == promoted).unwrap().port;
    assert!(report.lost_bytes.is_some());
    // writes succeed on the promoted node at once
    let port = served_by(
        &client,
        "INSERT INTO acked VALUES (1, 2) RETURNING inet_server_port()",
    )
    .await;
    assert_eq!(port, promoted_port);
    // the other replica follows it and serves reads of the new data
    let other = c
        .nodes
        .iter()
        .skip(1)
        .find(|n| n.name != promoted)
        .unwrap()
        .port;
    let reader = connect_to(&proxy).await;
    let followed = {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut ok = false;
        while Instant::now() < deadline {
            let r = rows(&reader, "SELECT count(*) FILTER (WHERE n = 2), inet_server_port() FROM acked WHERE client = 1")
                .await
                .unwrap();
            if r[0][0].as_deref() == Some("1")
                && r[0][1].as_deref().unwrap().parse::<u16>().unwrap() == other
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ok
    };
    assert!(
        followed,
        "the other replica never served the new primary's data"
    );
    // Its lag is measured against the new primary, not the dead one's
    // last position: caught up, it reads as caught up.
    let node = proxy
        .state
        .topology
        .load()
        .nodes
        .iter()
        .find(|n| n.port == other)
        .unwrap()
        .clone();
    let caught_up = wait_for(Duration::from_secs(10), || {
        let stats = node.stats.load();
        stats.eligible && stats.lag_seconds < 1.0
    })
    .await;
    assert!(caught_up, "lag after the failover: {:?}", node.stats.load());
    eprintln!(
        "the survivor served reads and read as caught up {:?} after the failover",
        failed_over.elapsed()
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_proxy_follows_a_switchover_made_through_the_first() {
    let _serial = SERIAL.lock().await;
    let c = new_cluster().await;
    let ports = node_ports(&c);
    let a = start_proxy(&config_text(&ports, ADMIN)).await;
    let b = start_proxy(&config_text(&ports, "")).await;
    let through_b = connect_to(&b).await;
    assert_eq!(
        served_by(
            &through_b,
            "INSERT INTO acked VALUES (2, 1) RETURNING inet_server_port()"
        )
        .await,
        ports[0]
    );
    // A typo of `check` is refused, naming the key, and changes nothing.
    let typo = post_failover(&a, r#"{"to": "pg3", "chek": true}"#).await;
    assert_eq!(typo.status, 400, "{}", typo.body);
    assert!(typo.body.contains("chek"), "{}", typo.body);
    assert_eq!(a.state.topology.load().primary().name.as_ref(), "pg1");
    let report = failover(&a, r#"{"to": "pg3"}"#).await;
    assert!(report.ok, "{report:?}");
    let started = Instant::now();
    let mut n = 2;
    let switched = loop {
        n += 1;
        if let Ok(r) = rows(
            &through_b,
            &format!("INSERT INTO acked VALUES (2, {n}) RETURNING inet_server_port()"),
        )
        .await
            && r[0][0].as_deref().unwrap().parse::<u16>().unwrap() == ports[2]
        {
            break true;
        }
        if started.elapsed() > Duration::from_secs(10) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "the second proxy wrote to the new primary after {:?} (check interval 100 ms)",
        started.elapsed()
    );
    assert!(switched, "the second proxy never found the new primary");
    let retired = wait_for(Duration::from_secs(5), || {
        let t = b.state.topology.load();
        t.role_of(t.node("pg1").unwrap()) == "retired"
    })
    .await;
    assert!(retired, "the second proxy did not retire the old primary");
    a.stop().await;
    b.stop().await;
}

/// A switchover through one proxy fences the old primary; a second proxy
/// that has not looked since (its monitor polls once an hour here) sends
/// an autocommit write there and is refused as read-only. The write is
/// held, the second proxy looks at once, and the write runs on the new
/// primary: the client sees no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_by_a_fenced_primary_waits_for_the_new_one() {
    let _serial = SERIAL.lock().await;
    let c = new_cluster().await;
    let ports = node_ports(&c);
    let a = start_proxy(&config_text(&ports, ADMIN)).await;
    let b = start_proxy(&config_text(&ports, "lag:\n  check_interval: 1h\n")).await;
    let through_b = connect_to(&b).await;
    assert_eq!(
        served_by(
            &through_b,
            "INSERT INTO acked VALUES (3, 1) RETURNING inet_server_port()"
        )
        .await,
        ports[0]
    );
    let report = failover(&a, r#"{"to": "pg2"}"#).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(b.state.topology.load().primary().name.as_ref(), "pg1");
    let written = rows(
        &through_b,
        "INSERT INTO acked VALUES (3, 2) RETURNING inet_server_port()",
    )
    .await
    .expect("the write through the second proxy failed");
    assert_eq!(
        written[0][0].as_deref(),
        Some(ports[1].to_string().as_str())
    );
    assert_eq!(b.state.topology.load().primary().name.as_ref(), "pg2");
    let stored: i64 = direct(ports[1])
        .await
        .query_one("SELECT count(*) FROM acked WHERE client = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 2);
    // A session that made its own transactions read-only is not held.
    through_b
        .batch_execute("SET default_transaction_read_only = on")
        .await
        .unwrap();
    let refused = through_b
        .simple_query("INSERT INTO acked VALUES (3, 3)")
        .await
        .unwrap_err();
    assert_eq!(
        refused.as_db_error().map(|e| e.code().code()),
        Some("25006")
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_a_replica_without_dropping_clients_and_refuses_a_broken_file() {
    let _serial = SERIAL.lock().await;
    let mut c = new_cluster().await;
    let ports = node_ports(&c);
    let file = std::env::temp_dir().join(format!("pgsplit-reload-{}.yaml", std::process::id()));
    std::fs::write(&file, config_text(&ports, ADMIN)).unwrap();
    let config = pgsplit::config::Config::load(&file).unwrap();
    let mut proxy = Proxy::start_from(config, Some(file.clone())).await.unwrap();
    proxy.reached(pgsplit::app::Phase::Ready).await;
    let client = connect_to(&proxy).await;
    client.simple_query("BEGIN").await.unwrap();
    let pid: i32 = scalar(&client, "SELECT pg_backend_pid()").await;

    let c = tokio::task::spawn_blocking(move || {
        c.add_replica(0).unwrap();
        c
    })
    .await
    .unwrap();
    let new_port = c.nodes[3].port;
    let mut with_pg4 = ports.clone();
    with_pg4.push(new_port);
    let url = format!("http://{}", proxy.admin_addr.unwrap());
    std::fs::write(&file, config_text(&with_pg4, ADMIN)).unwrap();
    let answer = request(&url, "POST", "/reload", None, None).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let reader = connect_to(&proxy).await;
    let got_reads = {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut ok = false;
        while Instant::now() < deadline && !ok {
            ok = served_by(&reader, "SELECT inet_server_port()").await == new_port;
        }
        ok
    };
    assert!(got_reads, "the added replica never took a read");
    // the client in its transaction kept its connection throughout
    assert_eq!(scalar::<i32>(&client, "SELECT pg_backend_pid()").await, pid);
    client.simple_query("COMMIT").await.unwrap();

    // A broken file is refused; the running configuration keeps serving.
    std::fs::write(&file, "listen: [this is not valid\n").unwrap();
    let answer = request(&url, "POST", "/reload", None, None).await.unwrap();
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(
        answer.body.contains("pgsplit-reload"),
        "names the file: {}",
        answer.body
    );
    assert_eq!(scalar::<i32>(&reader, "SELECT 1").await, 1);
    let metrics = request(&url, "GET", "/metrics", None, None)
        .await
        .unwrap()
        .body;
    assert!(
        metrics.contains("pgsplit_config_reloads_total{result=\"error\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("pgsplit_config_reloads_total{result=\"error\"} 0"),
        "the refusal was counted"
    );
    assert_eq!(proxy.state.topology.load().nodes.len(), 4);
    proxy.stop().await;
    drop(c);
    let _ = std::fs::remove_file(file);
}

/// The operator's day through the SQL console, under a load of writers and
/// readers: PAUSE, a restart of the primary, RECONNECT, RESUME; then a
/// SWITCHOVER. No client sees an error and no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_pause_across_a_primary_restart_and_switchover_under_load() {
    use tokio_postgres::SimpleQueryMessage;
    let _serial = SERIAL.lock().await;
    let c = new_cluster().await;
    let ports = node_ports(&c);
    let extra = "auth:\n  method: md5\n  users:\n    - { name: app, password: app }\n    \
                 - { name: ops, password: ops }\nadmin:\n  listen: 127.0.0.1:0\n  users: [ops]\n";
    let proxy = start_proxy(&config_text(&ports, extra)).await;
    let (ops, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=ops password=ops dbname=pgsplit",
            proxy.addr.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("console");
    tokio::spawn(connection);
    let stop = Arc::new(AtomicBool::new(false));
    let acked_so_far = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..6 {
        let client = connect_to(&proxy).await;
        let (stop, count) = (stop.clone(), acked_so_far.clone());
        writers.push(tokio::spawn(async move {
            let (mut acked, mut errors) = (Vec::new(), Vec::new());
            let deadline = Instant::now() + Duration::from_secs(120);
            for n in 0..1_000_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                match client
                    .simple_query(&format!("INSERT INTO acked VALUES ({w}, {n})"))
                    .await
                {
                    Ok(_) => {
                        acked.push(n);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (w, acked, errors)
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..2 {
        let client = connect_to(&proxy).await;
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Err(e) = client.simple_query("SELECT count(*) FROM acked").await {
                    errors.push(e.to_string());
                }
            }
            errors
        }));
    }
    let progressed = |by: usize| {
        let count = acked_so_far.clone();
        let from = count.load(Ordering::Relaxed);
        async move {
            assert!(
                wait_for(Duration::from_secs(30), || count.load(Ordering::Relaxed)
                    >= from + by)
                .await,
                "the load made no progress"
            )
        }
    };
    progressed(50).await;

    // PAUSE, restart the primary, RECONNECT, wait for the monitor, RESUME.
    ops.simple_query("PAUSE").await.expect("PAUSE");
    let paused_at = acked_so_far.load(Ordering::Relaxed);
    tokio::task::block_in_place(|| c.pg_ctl(0, "restart")).expect("restart the primary");
    ops.simple_query("RECONNECT").await.expect("RECONNECT");
    assert_eq!(
        acked_so_far.load(Ordering::Relaxed),
        paused_at,
        "no write was acknowledged while paused"
    );
    let up = wait_for(Duration::from_secs(30), || {
        proxy.state.topology.load().primary().health.is_up()
    })
    .await;
    assert!(up, "the restarted primary is seen up");
    ops.simple_query("RESUME").await.expect("RESUME");
    progressed(50).await;

    // The replicas reconnect to the restarted primary (walreceiver retries
    // every few seconds): a switchover needs its candidate streaming.
    let primary = direct(ports[0]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let streaming: i64 = primary
            .query_one(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if streaming == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the replicas did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SWITCHOVER through the console, its steps as rows.
    let answer = ops
        .simple_query("SWITCHOVER TO 'pg2'")
        .await
        .expect("SWITCHOVER");
    let steps: Vec<(String, String)> = answer
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((
                r.get("step").unwrap_or_default().to_owned(),
                r.get("ok").unwrap_or_default().to_owned(),
            )),
            _ => None,
        })
        .collect();
    assert!(
        !steps.is_empty() && steps.iter().all(|(_, ok)| ok == "true"),
        "{steps:?}"
    );
    assert_eq!(proxy.state.topology.load().primary().name.as_ref(), "pg2");
    progressed(50).await;
    stop.store(true, Ordering::Relaxed);

    let new_primary = direct(ports[1]).await;
    for w in writers {
        let (client, acked, errors) = w.await.unwrap();
        assert!(errors.is_empty(), "writer {client} saw errors: {errors:?}");
        let stored: BTreeSet<i32> = new_primary
            .query("SELECT n FROM acked WHERE client = $1", &[&client])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        for n in &acked {
            assert!(
                stored.contains(n),
                "acknowledged ({client}, {n}) is missing"
            );
        }
    }
    for r in readers {
        let errors = r.await.unwrap();
        assert!(errors.is_empty(), "a reader saw errors: {errors:?}");
    }
    proxy.stop().await;
}

/// Three proxy instances on one cluster, the same proxy.yaml apart from
/// ports, each with writers and a reader; a switchover through the first.
/// The others learn of it only from the nodes: a fenced primary's 25006
/// or its ended connections (57P01) hold their writes until they find the
/// new primary. No client of any instance sees an error, no acknowledged
/// write is lost, and no writer waits 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_through_a_switchover_see_no_errors_and_lose_nothing() {
    let _serial = SERIAL.lock().await;
    let c = new_cluster().await;
    let ports = node_ports(&c);
    let a = start_proxy(&config_text(&ports, ADMIN)).await;
    let b = start_proxy(&config_text(&ports, "")).await;
    let third = start_proxy(&config_text(&ports, "")).await;
    let load = Load::start(&[&a, &b, &third], 2).await;
    let report = failover(&a, r#"{"to": "pg2"}"#).await;
    assert!(report.ok, "{report:?}");
    let drain = report
        .steps
        .iter()
        .find(|s| s.name.starts_with("drain"))
        .map(|s| s.ms)
        .unwrap();
    load.wait_all_wrote_to(ports[1]).await;
    let (written, read_errors) = load.finish().await;
    let stored: BTreeSet<(i32, i32)> = direct(ports[1])
        .await
        .query("SELECT client, n FROM acked", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let stall = assert_no_error_and_nothing_lost(&written, &read_errors, &stored, ports[1]);
    // The other instances held writes and ran them again; none failed.
    let count = |metrics: &str, cause: &str, result: &str| -> u64 {
        let series = format!("pgsplit_held_writes_total{{cause=\"{cause}\",result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {metrics}"))
    };
    let mut rerun = 0;
    for proxy in [&b, &third] {
        let metrics = proxy.state.metrics.encode();
        for cause in pgsplit::metrics::HOLD_CAUSES {
            assert_eq!(count(&metrics, cause, "failed"), 0, "{metrics}");
            rerun += count(&metrics, cause, "rerun");
        }
        assert!(metrics.contains("pgsplit_writes_held 0"), "{metrics}");
    }
    assert!(
        rerun > 0,
        "the other instances held no write: the test did not test them"
    );
    eprintln!(
        "three instances: writes held {:?} ms at the first, drain {drain:.0} ms, longest stall {stall:?}",
        report.writes_held_ms
    );
    for proxy in [a, b, third] {
        proxy.stop().await;
    }
}
