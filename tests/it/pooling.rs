//! Transaction pooling under contention: far more clients than server
//! connections, every transaction served, connections handed from one
//! client to the next without waiting for a checkout timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_four_clients_share_two_connections_per_node() {
    let extra = "pool:\n  size: 2\n  checkout_timeout: 5s\n";
    let proxy = start_proxy(&config_text(&ports(), extra)).await;
    let setup = app(&proxy).await;
    setup
        .batch_execute("CREATE TABLE IF NOT EXISTS pooled (client int, n int)")
        .await
        .unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..24 {
        let client = app(&proxy).await;
        let done = done.clone();
        clients.push(tokio::spawn(async move {
            for n in 0..30 {
                if n % 5 == 0 {
                    client
                        .simple_query(&format!("INSERT INTO pooled VALUES ({c}, {n})"))
                        .await
                        .unwrap();
                } else {
                    let one: i32 = scalar(&client, "SELECT 1").await;
                    assert_eq!(one, 1);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(done.load(Ordering::Relaxed), 24 * 30);
    // 720 statements through 2 connections per node: a give-back that a
    // waiting checkout missed would show as a 5 s stall.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    let written: i64 = scalar(&setup, "SELECT count(*) FROM pooled").await;
    assert_eq!(written, 24 * 6);
    // All connections are back: none active, at most two per node.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (node, counts) in proxy.state.pools.counts() {
        assert_eq!(counts.active, 0, "{node}: {counts:?}");
        assert!(counts.idle <= 2, "{node}: {counts:?}");
    }
    setup.batch_execute("DROP TABLE pooled").await.unwrap();
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_drops_stacked_connections_the_node_closed() {
    let proxy = start_proxy(&config_text(&ports(), "pool:\n  size: 2\n")).await;
    // The startup application_name is set on every server connection the
    // session uses, so the node shows which of its backends are this proxy's.
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=app password=app dbname=app application_name=sweep-test",
            proxy.addr.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let port = served_by(&client, "/* pgsplit:primary */ SELECT inet_server_port()").await;
    assert_eq!(port, primary_port());
    let pg1 = |proxy: &pgsplit::app::Proxy| pool_counts(proxy, "pg1");
    // (after a hinted statement the session reads the WAL position for
    // read-your-writes once the client has its answer, then gives it back)
    let deadline = Instant::now() + Duration::from_secs(5);
    while pg1(&proxy).idle == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pg1(&proxy).idle >= 1, "{:?}", pg1(&proxy));
    let killer = direct(primary_port()).await;
    let killed: i64 = scalar(
        &killer,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'sweep-test'",
    )
    .await;
    assert!(killed >= 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.state.pools.sweep(Duration::ZERO);
    assert_eq!(
        pg1(&proxy),
        pgsplit::pool::PoolCounts::default(),
        "closed connections are gone from the pool"
    );
    // and the next statement on the primary gets a new connection
    let port = served_by(&client, "/* pgsplit:primary */ SELECT inet_server_port()").await;
    assert_eq!(port, primary_port());
    proxy.stop().await;
}
