//! Replication lag against a real primary and two replicas of this test
//! binary's own: pausing replay, steady apply delay, a dead WAL receiver,
//! a killed replica under load, and read-your-writes. These tests disturb
//! replication, so they run one at a time and away from the main suite.

#[path = "../it/harness/mod.rs"]
#[allow(dead_code)]
mod harness;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use harness::*;
use pgsplit::app::Proxy;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Inserts into the primary directly every 10 ms until stopped (bounded to
/// 60 s), so that a replica that stops replaying falls behind.
struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    async fn start() -> Writer {
        let client = direct(primary_port()).await;
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS ticks (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())")
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let _ = client
                    .batch_execute("INSERT INTO ticks DEFAULT VALUES")
                    .await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Writer { stop, task }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
    }
}

fn node_port(name: &str) -> u16 {
    cluster()
        .nodes
        .iter()
        .find(|n| n.name == name)
        .unwrap()
        .port
}

/// The monitor's latest view of a node.
fn stats(proxy: &Proxy, node: &str) -> std::sync::Arc<pgsplit::topology::NodeStats> {
    proxy
        .state
        .topology
        .load()
        .node(node)
        .unwrap()
        .stats
        .load_full()
}

async fn share(proxy: &Proxy, reads: usize) -> HashMap<u16, usize> {
    let client = app(proxy).await;
    let mut counts = HashMap::new();
    for _ in 0..reads {
        *counts
            .entry(served_by(&client, "SELECT inet_server_port()").await)
            .or_default() += 1;
    }
    counts
}

/// Undoes whatever an earlier (failed) test may have left behind.
fn reset() {
    for node in [1, 2] {
        let _ = cluster().psql(node, "postgres", "SELECT pg_wal_replay_resume()");
    }
    let _ = cluster().psql(1, "postgres", "ALTER SYSTEM RESET recovery_min_apply_delay");
    let _ = cluster().psql(1, "postgres", "SELECT pg_reload_conf()");
}

fn sql(node: usize, sql: &str) {
    cluster()
        .psql(node, "postgres", sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Waits until `cond` holds, checking every 100 ms, for at most `within`.
async fn eventually<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_replay_stops_reads_within_about_a_second_and_resume_brings_them_back() {
    let _serial = SERIAL.lock().await;
    tokio::task::spawn_blocking(reset).await.unwrap();
    let proxy = start_proxy(&config_text(
        &ports(),
        "lag:\n  check_interval: 100ms\n  max_lag: 1s\n",
    ))
    .await;
    let writer = Writer::start().await;
    let pg2 = node_port("pg2");
    sql(1, "SELECT pg_wal_replay_pause()");
    let paused_at = Instant::now();
    let pg2_stats = || stats(&proxy, "pg2");
    // A replica near max_lag has a tiny weight and may miss a sample of reads
    // by chance: wait for the monitor to exclude it, then check the reads.
    let excluded = eventually(Duration::from_secs(10), || async { !pg2_stats().eligible }).await;
    let took = paused_at.elapsed();
    assert!(excluded, "pg2 still eligible after its replay was paused");
    eprintln!("paused replica excluded after {took:?} (max_lag 1s)");
    let stats = pg2_stats();
    assert!(stats.replay_paused && stats.lag_bytes > 0, "{stats:?}");
    assert!(
        !share(&proxy, 60).await.contains_key(&pg2),
        "pg2 still takes reads after it was excluded"
    );
    sql(1, "SELECT pg_wal_replay_resume()");
    let back = eventually(Duration::from_secs(15), || async {
        share(&proxy, 30).await.contains_key(&pg2)
    })
    .await;
    assert!(back, "pg2 did not take reads again after resume");
    writer.stop().await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steadily_lagging_replica_gets_a_smaller_share() {
    let _serial = SERIAL.lock().await;
    tokio::task::spawn_blocking(reset).await.unwrap();
    let proxy = start_proxy(&config_text(
        &ports(),
        "lag:\n  check_interval: 100ms\n  max_lag: 5s\n  max_lag_bytes: 1GB\n",
    ))
    .await;
    sql(1, "ALTER SYSTEM SET recovery_min_apply_delay = '2s'");
    sql(1, "SELECT pg_reload_conf()");
    let writer = Writer::start().await;
    let (pg2, pg3) = (node_port("pg2"), node_port("pg3"));
    // let the delay show in the lag
    let lagging = eventually(Duration::from_secs(10), || async {
        stats(&proxy, "pg2").lag_seconds > 1.5
    })
    .await;
    assert!(lagging, "the apply delay never showed as lag");
    let counts = share(&proxy, 400).await;
    let (a, b) = (
        counts.get(&pg2).copied().unwrap_or(0),
        counts.get(&pg3).copied().unwrap_or(0),
    );
    eprintln!("reads: delayed pg2 {a}, fresh pg3 {b}");
    assert!(
        a < b,
        "the delayed replica got {a} reads, the fresh one {b}"
    );
    assert!(a > 0, "a replica within max_lag still gets some reads");
    // lag ~2 s of 5 s: weight 100 x ~0.6 against 100 x 1; expect roughly 35-40%
    assert!((a as f64) < 0.48 * (a + b) as f64, "share {a}/{}", a + b);
    writer.stop().await;
    sql(1, "ALTER SYSTEM RESET recovery_min_apply_delay");
    sql(1, "SELECT pg_reload_conf()");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_wal_receiver_is_cut_is_seen_as_lagging() {
    let _serial = SERIAL.lock().await;
    tokio::task::spawn_blocking(reset).await.unwrap();
    let proxy = start_proxy(&config_text(
        &ports(),
        "lag:\n  check_interval: 100ms\n  max_lag: 2s\n",
    ))
    .await;
    let writer = Writer::start().await;
    let original = cluster()
        .psql(1, "postgres", "SHOW primary_conninfo")
        .unwrap();
    sql(
        1,
        "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1 user=postgres'",
    );
    sql(1, "SELECT pg_reload_conf()");
    let excluded = eventually(Duration::from_secs(15), || async {
        let seen = stats(&proxy, "pg2");
        !seen.eligible && seen.lag_seconds >= 2.0
    })
    .await;
    let seen = stats(&proxy, "pg2");
    assert!(
        excluded,
        "a replica with no WAL receiver still looks fresh: {seen:?}"
    );
    assert!(!seen.receiving);
    assert!(!share(&proxy, 30).await.contains_key(&node_port("pg2")));
    // pg_basebackup -R wrote the real value into postgresql.auto.conf: put it back.
    sql(
        1,
        &format!(
            "ALTER SYSTEM SET primary_conninfo = '{}'",
            original.trim().replace('\'', "''")
        ),
    );
    sql(1, "SELECT pg_reload_conf()");
    writer.stop().await;
    let back = eventually(Duration::from_secs(20), || async {
        stats(&proxy, "pg2").eligible
    })
    .await;
    assert!(back, "pg2 never came back after its receiver was restored");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_under_32_clients_of_reads_gives_no_client_errors() {
    let _serial = SERIAL.lock().await;
    tokio::task::spawn_blocking(reset).await.unwrap();
    let proxy = start_proxy(&config_text(&ports(), "")).await;
    let errors = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..32 {
        let client = app(&proxy).await;
        let (errors, served, stop) = (errors.clone(), served.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            for _ in 0..5000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                match client.simple_query("SELECT inet_server_port()").await {
                    Ok(_) => served.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("client error: {e:?}");
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::spawn_blocking(|| cluster().pg_ctl(1, "kill").unwrap())
        .await
        .unwrap();
    let at_kill = served.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let total = served.load(Ordering::Relaxed);
    tokio::task::spawn_blocking(|| cluster().pg_ctl(1, "start").unwrap())
        .await
        .unwrap();
    assert!(
        total > at_kill,
        "reads went on after the kill ({at_kill} -> {total})"
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0, "clients saw errors");
    // the restarted replica takes reads again
    let pg2 = node_port("pg2");
    let back = eventually(Duration::from_secs(20), || async {
        share(&proxy, 20).await.contains_key(&pg2)
    })
    .await;
    assert!(back, "the restarted replica never took reads again");
    proxy.stop().await;
}

async fn ryw_proxy(mode: &str) -> Proxy {
    let extra = format!(
        "routing:\n  read_your_writes: {mode}\n  primary_reads: 0\nlag:\n  check_interval: 100ms\n  max_lag: 60s\n  max_lag_bytes: 1GB\n"
    );
    start_proxy(&config_text(&ports(), &extra)).await
}

async fn setup_ryw_table() {
    let client = direct(primary_port()).await;
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS ryw (id int PRIMARY KEY, mode text)")
        .await
        .unwrap();
    tokio::task::spawn_blocking(|| wait_replicated(cluster()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_session_global_and_off() {
    let _serial = SERIAL.lock().await;
    tokio::task::spawn_blocking(reset).await.unwrap();
    setup_ryw_table().await;
    let (pg2, pg3) = (node_port("pg2"), node_port("pg3"));

    // session: one replica's replay is paused (still within max_lag).
    sql(1, "SELECT pg_wal_replay_pause()");
    let proxy = ryw_proxy("session").await;
    let client = app(&proxy).await;
    let mut served: HashMap<u16, usize> = HashMap::new();
    for i in 0..1000 {
        client
            .simple_query(&format!("INSERT INTO ryw VALUES ({i}, 'session')"))
            .await
            .unwrap();
        let r = rows(
            &client,
            &format!("SELECT count(*), inet_server_port() FROM ryw WHERE id = {i}"),
        )
        .await
        .unwrap();
        assert_eq!(
            r[0][0].as_deref(),
            Some("1"),
            "read {i} did not see its own write"
        );
        *served
            .entry(r[0][1].as_deref().unwrap().parse().unwrap())
            .or_default() += 1;
    }
    assert!(
        !served.contains_key(&pg2),
        "the paused replica served a read: {served:?}"
    );
    // The replica that replays asked at once (read_your_writes_wait), not
    // at the monitor's next poll: it served reads of fresh writes.
    assert!(served.get(&pg3).copied().unwrap_or(0) > 0, "{served:?}");
    eprintln!("session, one replica paused: {served:?}");
    // Reads that come a little later use the replica that has caught up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut later: HashMap<u16, usize> = HashMap::new();
    for _ in 0..20 {
        *later
            .entry(served_by(&client, "SELECT inet_server_port()").await)
            .or_default() += 1;
    }
    assert_eq!(later.get(&pg3).copied(), Some(20), "{later:?}");
    proxy.stop().await;

    // global: another session's read sees the write.
    let proxy = ryw_proxy("global").await;
    let writer = app(&proxy).await;
    let reader = app(&proxy).await;
    for i in 1000..1200 {
        writer
            .simple_query(&format!("INSERT INTO ryw VALUES ({i}, 'global')"))
            .await
            .unwrap();
        let n: i64 = scalar(&reader, &format!("SELECT count(*) FROM ryw WHERE id = {i}")).await;
        assert_eq!(
            n, 1,
            "global: read {i} from another session missed the write"
        );
    }
    proxy.stop().await;

    // off: with both replicas paused, the stale read shows (so this test can fail).
    sql(2, "SELECT pg_wal_replay_pause()");
    let proxy = ryw_proxy("off").await;
    let client = app(&proxy).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut stale = 0;
    for i in 2000..2050 {
        client
            .simple_query(&format!("INSERT INTO ryw VALUES ({i}, 'off')"))
            .await
            .unwrap();
        let n: i64 = scalar(&client, &format!("SELECT count(*) FROM ryw WHERE id = {i}")).await;
        if n == 0 {
            stale += 1;
        }
    }
    assert!(
        stale > 0,
        "with read_your_writes off and replay paused no stale read was seen"
    );
    eprintln!("off: {stale} of 50 reads were stale");
    sql(1, "SELECT pg_wal_replay_resume()");
    sql(2, "SELECT pg_wal_replay_resume()");
    proxy.stop().await;
}
