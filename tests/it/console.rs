//! The SQL console (`admin.database`): PgBouncer's admin commands on the
//! proxy's own port, checked against what the nodes themselves report.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::harness::*;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// The console's proxy.yaml: `ops` may do everything, `watcher` only look.
fn console_config(extra: &str) -> String {
    let auth = "auth:\n  method: md5\n  users:\n    - { name: app, password: app }\n    \
                - { name: ops, password: ops }\n    - { name: watcher, password: watcher }\n\
                admin:\n  listen: 127.0.0.1:0\n  users: [ops]\n  stats_users: [watcher]\n";
    config_text(&ports(), &format!("{auth}{extra}"))
}

async fn console(proxy: &pgsplit::app::Proxy, user: &str) -> Result<Client, tokio_postgres::Error> {
    let conn_str = format!(
        "host=127.0.0.1 port={} user={user} password={user} dbname=pgsplit connect_timeout=10",
        proxy.addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn_str, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A console command's rows, by column name; the column names in order.
async fn table(client: &Client, sql: &str) -> (Vec<String>, Vec<HashMap<String, Option<String>>>) {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", message(&e)));
    let mut names = Vec::new();
    let mut rows = Vec::new();
    for m in messages {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                names = cols.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(r) => {
                let row = r
                    .columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_owned(), r.get(i).map(str::to_owned)))
                    .collect();
                rows.push(row);
            }
            _ => {}
        }
    }
    (names, rows)
}

/// The server's message of an error.
fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_owned())
}

fn int(row: &HashMap<String, Option<String>>, column: &str) -> i64 {
    row[column]
        .as_deref()
        .unwrap_or_else(|| panic!("{column} is NULL"))
        .parse()
        .unwrap_or_else(|e| panic!("{column}: {e}"))
}

/// SHOW STATS summed per node for database `app`: (queries, transactions,
/// received, sent).
async fn stats_by_node(ops: &Client) -> HashMap<String, (i64, i64, i64, i64)> {
    let (_, rows) = table(ops, "SHOW STATS").await;
    let mut out = HashMap::new();
    for r in rows
        .iter()
        .filter(|r| r["database"].as_deref() == Some("app"))
    {
        let e = out
            .entry(r["node"].clone().expect("node"))
            .or_insert((0, 0, 0, 0));
        e.0 += int(r, "total_query_count");
        e.1 += int(r, "total_xact_count");
        e.2 += int(r, "total_received");
        e.3 += int(r, "total_sent");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_show_has_pgbouncers_columns_and_true_numbers() {
    let proxy = start_proxy(&console_config("")).await;
    let ops = console(&proxy, "ops")
        .await
        .expect("ops logs in to the console");
    let client = app(&proxy).await;
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS console_stats (n int)")
        .await
        .unwrap();
    caught_up().await;

    // SHOW NODES: the cluster's real nodes.
    let (names, nodes) = table(&ops, "SHOW NODES").await;
    assert_eq!(
        names,
        [
            "name",
            "host",
            "port",
            "role",
            "state",
            "zone",
            "tags",
            "lag_seconds",
            "lag_bytes",
            "weight",
            "effective_weight",
            "replay_lsn",
            "timeline",
            "in_flight"
        ]
    );
    let node_ports: Vec<i64> = nodes.iter().map(|r| int(r, "port")).collect();
    assert_eq!(
        node_ports,
        ports().iter().map(|p| i64::from(*p)).collect::<Vec<_>>()
    );
    assert_eq!(nodes[0]["role"].as_deref(), Some("primary"));
    assert_eq!(nodes[0]["effective_weight"].as_deref(), Some("0"));
    assert!(
        nodes[1..]
            .iter()
            .all(|r| r["role"].as_deref() == Some("replica"))
    );

    // Known activity: 5 reads (replicas), then 3 autocommit writes.
    let before = stats_by_node(&ops).await;
    for _ in 0..5 {
        let port = served_by(&client, "SELECT inet_server_port()").await;
        assert_ne!(port, primary_port(), "reads go to replicas");
    }
    for n in 0..3 {
        client
            .simple_query(&format!("INSERT INTO console_stats VALUES ({n})"))
            .await
            .unwrap();
    }
    let after = stats_by_node(&ops).await;
    let delta = |node: &str, f: fn(&(i64, i64, i64, i64)) -> i64| {
        after.get(node).map_or(0, f) - before.get(node).map_or(0, f)
    };
    assert_eq!(
        delta("pg1", |s| s.0),
        3,
        "3 writes on the primary: {after:?}"
    );
    assert_eq!(delta("pg1", |s| s.1), 3, "3 transactions on the primary");
    assert_eq!(
        delta("pg2", |s| s.0) + delta("pg3", |s| s.0),
        5,
        "5 reads on the replicas: {after:?}"
    );
    assert!(
        delta("pg1", |s| s.2) > 0 && delta("pg1", |s| s.3) > 0,
        "bytes counted"
    );
    let (names, _) = table(&ops, "SHOW STATS").await;
    for c in [
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_xact_time",
        "total_query_time",
        "total_wait_time",
        "avg_xact_time",
        "avg_query_time",
    ] {
        assert!(
            names.iter().any(|n| n == c),
            "SHOW STATS has {c}: {names:?}"
        );
    }

    // SHOW POOLS: the app pools, in transaction mode, nothing checked out
    // once the last write's session has read the WAL position for
    // read-your-writes (on its connection, after the client had its
    // answer: that connection may still be out for a moment).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (names, pools) = loop {
        let (names, pools) = table(&ops, "SHOW POOLS").await;
        let out = pools
            .iter()
            .find(|r| {
                r["database"].as_deref() == Some("app") && r["node"].as_deref() == Some("pg1")
            })
            .map(|r| int(r, "sv_active"));
        if out == Some(0) {
            break (names, pools);
        }
        assert!(
            Instant::now() < deadline,
            "the primary's connection never came back: {pools:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    for c in [
        "database",
        "user",
        "node",
        "cl_active",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "sv_used",
        "sv_login",
        "maxwait",
        "maxwait_us",
        "pool_mode",
    ] {
        assert!(
            names.iter().any(|n| n == c),
            "SHOW POOLS has {c}: {names:?}"
        );
    }
    let primary_pool = pools
        .iter()
        .find(|r| r["database"].as_deref() == Some("app") && r["node"].as_deref() == Some("pg1"))
        .expect("app's pool on pg1");
    assert_eq!(primary_pool["pool_mode"].as_deref(), Some("transaction"));
    assert_eq!(int(primary_pool, "sv_active"), 0);
    assert!(int(primary_pool, "sv_idle") >= 1);

    // SHOW SERVERS: the proxy's connections are the primary's own backends.
    let (_, servers) = table(&ops, "SHOW SERVERS").await;
    let mut proxy_pids: Vec<i64> = servers
        .iter()
        .filter(|r| r["node"].as_deref() == Some("pg1") && r["user"].as_deref() == Some("app"))
        .map(|r| int(r, "remote_pid"))
        .collect();
    proxy_pids.sort_unstable();
    assert!(!proxy_pids.is_empty());
    let primary = direct(primary_port()).await;
    let backends: Vec<i64> = rows(
        &primary,
        "SELECT pid FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend'",
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r[0].as_deref().unwrap().parse().unwrap())
    .collect();
    for pid in &proxy_pids {
        assert!(
            backends.contains(pid),
            "SHOW SERVERS pid {pid} is on the primary: {backends:?}"
        );
    }

    // SHOW CLIENTS: the app session (the console's own is not a client).
    let (_, clients) = table(&ops, "SHOW CLIENTS").await;
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert_eq!(clients[0]["user"].as_deref(), Some("app"));
    assert_eq!(clients[0]["database"].as_deref(), Some("app"));
    assert_eq!(clients[0]["state"].as_deref(), Some("idle"));

    // SHOW ROUTES: the reads counted as replica decisions.
    let (_, routes) = table(&ops, "SHOW ROUTES").await;
    let replica: i64 = routes
        .iter()
        .filter(|r| r["target"].as_deref() == Some("replica"))
        .map(|r| int(r, "count"))
        .sum();
    assert!(replica >= 5, "{routes:?}");

    // SHOW CONFIG, VERSION, LISTS, HELP.
    let (_, config) = table(&ops, "SHOW CONFIG").await;
    let size = config
        .iter()
        .find(|r| r["key"].as_deref() == Some("pool.size"))
        .expect("pool.size");
    assert_eq!(size["value"].as_deref(), Some("20"));
    let (_, version) = table(&ops, "show version;").await;
    assert!(
        version[0]["version"]
            .as_deref()
            .unwrap()
            .starts_with("pgsplit ")
    );
    let (_, lists) = table(&ops, "SHOW LISTS").await;
    let used = lists
        .iter()
        .find(|r| r["list"].as_deref() == Some("used_clients"))
        .expect("used_clients");
    assert_eq!(int(used, "items"), 1);
    let (_, help) = table(&ops, "SHOW HELP").await;
    assert!(
        help.iter()
            .any(|r| r["command"].as_deref() == Some("PAUSE [db]"))
    );

    // EXPLAIN ROUTE.
    let (_, explain) = table(&ops, "EXPLAIN ROUTE 'SELECT 1'").await;
    assert_eq!(explain[0]["target"].as_deref(), Some("replica"));
    let (_, explain) = table(&ops, "EXPLAIN ROUTE 'INSERT INTO console_stats VALUES (1)'").await;
    assert_eq!(explain[0]["target"].as_deref(), Some("primary"));

    client
        .batch_execute("DROP TABLE console_stats")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_refuses_what_it_should() {
    let proxy = start_proxy(&console_config("")).await;
    // Not a console user: refused at login.
    let Err(e) = console(&proxy, "app").await else {
        panic!("app is refused")
    };
    assert_eq!(code(&e).as_deref(), Some("28000"), "{e}");
    // A stats user may look, not touch.
    let watcher = console(&proxy, "watcher").await.expect("watcher logs in");
    let (_, nodes) = table(&watcher, "SHOW NODES").await;
    assert_eq!(nodes.len(), 3);
    for command in ["PAUSE", "RELOAD", "KILL app", "SWITCHOVER TO 'pg2'"] {
        let Err(e) = watcher.simple_query(command).await else {
            panic!("{}", command)
        };
        assert_eq!(code(&e).as_deref(), Some("42501"), "{command}: {e}");
        assert!(message(&e).contains("admin.stats_users"), "{e}");
    }
    let ops = console(&proxy, "ops").await.expect("ops logs in");
    let Err(e) = ops.simple_query("SELECT 1").await else {
        panic!("not a command")
    };
    assert_eq!(code(&e).as_deref(), Some("42601"), "{e}");
    assert!(message(&e).contains("SHOW HELP"), "{e}");
    // The extended protocol is refused, and the session goes on.
    let Err(e) = ops.query("SHOW NODES", &[]).await else {
        panic!("extended")
    };
    assert_eq!(code(&e).as_deref(), Some("0A000"), "{e}");
    let (_, nodes) = table(&ops, "SHOW NODES").await;
    assert_eq!(nodes.len(), 3);
    // RESUME with nothing paused says so.
    let Err(e) = ops.simple_query("RESUME").await else {
        panic!("nothing paused")
    };
    assert!(message(&e).contains("nothing is paused"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_transactions_without_errors_until_resume() {
    let proxy = start_proxy(&console_config("")).await;
    let setup = app(&proxy).await;
    setup
        .batch_execute("CREATE TABLE IF NOT EXISTS console_pause (client int, n int)")
        .await
        .unwrap();
    let ops = console(&proxy, "ops").await.expect("ops");
    // The load's clients log in first (a PAUSE holds logins too: a
    // session's first server connection is server work).
    let mut loaders = Vec::new();
    for _ in 0..4 {
        loaders.push(app(&proxy).await);
    }
    // A transaction in flight when PAUSE comes: PAUSE waits for it.
    let open = app(&proxy).await;
    open.batch_execute("BEGIN; INSERT INTO console_pause VALUES (-1, -1)")
        .await
        .unwrap();
    let pausing = {
        let ops = console(&proxy, "ops").await.expect("ops");
        tokio::spawn(async move { ops.simple_query("PAUSE").await.map(|_| ()) })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !proxy.state.clients.paused().all {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !pausing.is_finished(),
        "PAUSE waits for the open transaction"
    );
    open.batch_execute("COMMIT")
        .await
        .expect("the open transaction finishes");
    pausing
        .await
        .unwrap()
        .expect("PAUSE returns once it finished");

    // Under PAUSE, a load of writers and readers waits: nothing reaches
    // the primary, no client gets an error.
    let primary = direct(primary_port()).await;
    let rows_paused = count(&primary).await;
    let mut load = Vec::new();
    for (c, client) in loaders.into_iter().enumerate() {
        load.push(tokio::spawn(async move {
            for n in 0..10 {
                if n % 2 == 0 {
                    client
                        .simple_query(&format!("INSERT INTO console_pause VALUES ({c}, {n})"))
                        .await?;
                } else {
                    client
                        .query_one("SELECT count(*) FROM console_pause", &[])
                        .await?;
                }
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    // Wait until every loader is held at the gate.
    while waiting(&ops).await < 4 {
        assert!(Instant::now() < deadline, "clients never held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        count(&primary).await,
        rows_paused,
        "nothing ran while paused"
    );
    ops.simple_query("RESUME").await.expect("RESUME");
    for l in load {
        l.await
            .unwrap()
            .expect("no client error across PAUSE and RESUME");
    }
    assert_eq!(count(&primary).await, rows_paused + 4 * 5);
    setup
        .batch_execute("DROP TABLE console_pause")
        .await
        .unwrap();
}

/// Sessions SHOW CLIENTS shows held by PAUSE.
async fn waiting(ops: &Client) -> usize {
    let (_, clients) = table(ops, "SHOW CLIENTS").await;
    clients
        .iter()
        .filter(|r| r["state"].as_deref() == Some("waiting"))
        .count()
}

async fn count(primary: &Client) -> i64 {
    scalar(primary, "SELECT count(*) FROM console_pause").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_replaces_server_connections_and_kill_ends_sessions() {
    let proxy = start_proxy(&console_config("")).await;
    let ops = console(&proxy, "ops").await.expect("ops");
    let client = app(&proxy).await;
    client
        .simple_query("INSERT INTO items (v) VALUES ('console')")
        .await
        .unwrap();
    let pids = |servers: &[HashMap<String, Option<String>>]| -> Vec<i64> {
        servers
            .iter()
            .filter(|r| r["user"].as_deref() == Some("app"))
            .map(|r| int(r, "remote_pid"))
            .collect()
    };
    let (_, before) = table(&ops, "SHOW SERVERS").await;
    let old = pids(&before);
    assert!(!old.is_empty());
    table(&ops, "RECONNECT").await;
    table(&ops, "WAIT_CLOSE").await;
    let (_, after) = table(&ops, "SHOW SERVERS").await;
    assert!(
        pids(&after).iter().all(|p| !old.contains(p)),
        "RECONNECT closed every old connection: {old:?} then {:?}",
        pids(&after)
    );
    // The primary agrees: none of the old backends is left.
    let primary = direct(primary_port()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let live: Vec<i64> = rows(&primary, "SELECT pid FROM pg_stat_activity")
            .await
            .unwrap()
            .iter()
            .map(|r| r[0].as_deref().unwrap().parse().unwrap())
            .collect();
        if old.iter().all(|p| !live.contains(p)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old backends still on the primary"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The session goes on, on new connections.
    client
        .simple_query("INSERT INTO items (v) VALUES ('console')")
        .await
        .unwrap();

    // KILL ends the app's sessions, in a transaction or not.
    let in_txn = app(&proxy).await;
    in_txn.batch_execute("BEGIN; SELECT 1").await.unwrap();
    table(&ops, "KILL app").await;
    assert!(client.simple_query("SELECT 1").await.is_err(), "killed");
    assert!(
        in_txn.simple_query("SELECT 1").await.is_err(),
        "killed in a transaction"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !proxy.state.clients.list().is_empty() {
        assert!(Instant::now() < deadline, "sessions still listed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // New sessions are welcome.
    let again = app(&proxy).await;
    let one: i32 = scalar(&again, "SELECT 1").await;
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_through_pause_and_resume_sees_no_failure() {
    let proxy = start_proxy(&console_config("")).await;
    let setup = app(&proxy).await;
    setup
        .batch_execute("CREATE TABLE IF NOT EXISTS console_bench (client int)")
        .await
        .unwrap();
    let ops = console(&proxy, "ops").await.expect("ops");
    let script = std::env::temp_dir().join(format!("pgsplit-bench-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        "INSERT INTO console_bench VALUES (:client_id);\nSELECT count(*) FROM console_bench;\n",
    )
    .unwrap();
    let port = proxy.addr.port().to_string();
    let file = script.clone();
    let bench = tokio::task::spawn_blocking(move || {
        crate::tools::tool("pgbench")
            .args([
                "-n",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "app",
                "-c",
                "4",
                "-t",
                "300",
                "-f",
            ])
            .arg(&file)
            .arg("app")
            .output()
            .unwrap()
    });
    // Pause once pgbench is running; hold it until its clients wait.
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.state.clients.list().len() < 5 {
        assert!(Instant::now() < deadline, "pgbench never connected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ops.simple_query("PAUSE").await.expect("PAUSE");
    while waiting(&ops).await < 4 && !bench.is_finished() {
        assert!(Instant::now() < deadline, "pgbench's clients never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!bench.is_finished(), "pgbench was held by PAUSE");
    ops.simple_query("RESUME").await.expect("RESUME");
    let out = bench.await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&script);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("number of failed transactions: 0"), "{text}");
    assert!(text.contains("actually processed: 1200/1200"), "{text}");
    let rows: i64 = scalar(&setup, "SELECT count(*) FROM console_bench").await;
    assert_eq!(rows, 1200);
    setup
        .batch_execute("DROP TABLE console_bench")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_and_the_switchover_drill_through_the_console() {
    let file = std::env::temp_dir().join(format!("pgsplit-console-{}.yaml", std::process::id()));
    std::fs::write(&file, console_config("")).unwrap();
    let loaded = pgsplit::config::Config::load(&file).unwrap();
    let mut proxy = pgsplit::app::Proxy::start_from(loaded, Some(file.clone()))
        .await
        .unwrap();
    proxy.reached(pgsplit::app::Phase::Ready).await;
    let ops = console(&proxy, "ops").await.expect("ops");
    let value = |config: &[HashMap<String, Option<String>>], key: &str| {
        config
            .iter()
            .find(|r| r["key"].as_deref() == Some(key))
            .and_then(|r| r["value"].clone())
    };
    let (_, config) = table(&ops, "SHOW CONFIG").await;
    assert_eq!(
        value(&config, "routing.cross_zone_share").as_deref(),
        Some("0")
    );
    std::fs::write(
        &file,
        console_config("routing:\n  cross_zone_share: 0.25\n"),
    )
    .unwrap();
    table(&ops, "RELOAD").await;
    let (_, config) = table(&ops, "SHOW CONFIG").await;
    assert_eq!(
        value(&config, "routing.cross_zone_share").as_deref(),
        Some("0.25")
    );
    // A broken file is refused with its line; the running one stays.
    std::fs::write(&file, console_config("routing:\n  cross_zone_share: 2\n")).unwrap();
    let Err(e) = ops.simple_query("RELOAD").await else {
        panic!("a broken file reloaded")
    };
    assert!(message(&e).contains("cross_zone_share"), "{e}");
    assert!(message(&e).contains(&file.display().to_string()), "{e}");
    let (_, config) = table(&ops, "SHOW CONFIG").await;
    assert_eq!(
        value(&config, "routing.cross_zone_share").as_deref(),
        Some("0.25")
    );

    // The drill: steps as rows, nothing changed.
    let (names, steps) = table(&ops, "SWITCHOVER TO 'pg2' CHECK").await;
    assert_eq!(names, ["step", "ok", "ms", "detail"]);
    assert!(
        !steps.is_empty() && steps.iter().all(|r| r["ok"].as_deref() == Some("true")),
        "{steps:?}"
    );
    assert_eq!(proxy.state.topology.load().primary().name.as_ref(), "pg1");
    let Err(e) = ops.simple_query("SWITCHOVER TO 'nosuch' CHECK").await else {
        panic!("an unknown node drilled")
    };
    assert!(message(&e).contains("nosuch"), "{e}");
    let _ = std::fs::remove_file(&file);
    proxy.stop().await;
}

/// A shutdown ends idle sessions at once and lets an open transaction
/// finish: the session in it commits, then it ends too, and the proxy
/// stops. (Sessions hear of it through their entry's stop flag, woken
/// while they wait for the client or the server.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_idle_sessions_and_lets_a_transaction_commit() {
    let proxy = default_proxy().await;
    let idle = app(&proxy).await;
    let one: i32 = scalar(&idle, "SELECT 1").await;
    assert_eq!(one, 1);
    let in_txn = app(&proxy).await;
    in_txn
        .batch_execute("BEGIN; INSERT INTO items (v) VALUES ('at-shutdown')")
        .await
        .unwrap();
    proxy.shutdown();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !idle.is_closed() {
        assert!(Instant::now() < deadline, "the idle session was not ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The open transaction goes on and commits.
    in_txn
        .batch_execute("INSERT INTO items (v) VALUES ('at-shutdown'); COMMIT")
        .await
        .expect("the open transaction finishes");
    let primary = direct(primary_port()).await;
    let n: i64 = scalar(
        &primary,
        "SELECT count(*) FROM items WHERE v = 'at-shutdown'",
    )
    .await;
    assert!(n >= 2, "both rows committed on the primary: {n}");
    while !in_txn.is_closed() {
        assert!(
            Instant::now() < deadline,
            "the session was not ended after its commit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::timeout(Duration::from_secs(30), proxy.wait())
        .await
        .expect("the proxy stopped");
}
