//! Nodes that die: reads route around a dead replica without client
//! errors, an unreachable primary gives 08006 naming it and the session
//! goes on, and a node that comes back takes traffic again.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::relay::Relay;
use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_is_routed_around_without_client_errors() {
    let ports = ports();
    let relay = Relay::start(ports[1]).await;
    let proxy = start_proxy(&config_text(&[ports[0], relay.port, ports[2]], "")).await;
    let replicas: HashSet<u16> = replica_ports().into_iter().collect();
    let errors = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let client = app(&proxy).await;
        let (errors, served, stop, replicas) = (
            errors.clone(),
            served.clone(),
            stop.clone(),
            replicas.clone(),
        );
        clients.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                match rows(&client, "SELECT inet_server_port()").await {
                    Ok(r) => {
                        let port: u16 = r[0][0].as_deref().unwrap().parse().unwrap();
                        assert!(replicas.contains(&port));
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("client error: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.cut();
    let before_cut = served.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // With pg2 cut off, every read lands on pg3.
    let client = app(&proxy).await;
    for _ in 0..20 {
        assert_eq!(
            served_by(&client, "SELECT inet_server_port()").await,
            ports[2]
        );
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert!(
        served.load(Ordering::Relaxed) > before_cut,
        "reads went on after the cut"
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0, "clients saw errors");

    // pg2 comes back: the prober lets it take reads again.
    relay.restore().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = HashSet::new();
    while seen.len() < 2 && Instant::now() < deadline {
        seen.insert(served_by(&client, "SELECT inet_server_port()").await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.len(), 2, "the restored replica takes reads again");
    proxy.stop().await;
}

#[tokio::test]
async fn an_unreachable_primary_fails_writes_with_08006_and_the_session_goes_on() {
    let ports = ports();
    let relay = Relay::start(ports[0]).await;
    let proxy = start_proxy(&config_text(&[relay.port, ports[1], ports[2]], "")).await;
    let client = app(&proxy).await;
    relay.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = client
        .simple_query("INSERT INTO items (v) VALUES ('lost')")
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("08006"), "{err}");
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(message.contains("pg1"), "names the node: {message}");
    // reads still work in the same session
    assert!(replica_ports().contains(&served_by(&client, "SELECT inet_server_port()").await));
    // and writes work again once the primary is back
    relay.restore().await;
    let port = served_by(
        &client,
        "INSERT INTO items (v) VALUES ('back') RETURNING inet_server_port()",
    )
    .await;
    assert_eq!(port, ports[0]);
    proxy.stop().await;
}

#[tokio::test]
async fn a_transaction_whose_node_dies_ends_with_an_error_not_a_hang() {
    let ports = ports();
    let relay = Relay::start(ports[0]).await;
    let proxy = start_proxy(&config_text(&[relay.port, ports[1], ports[2]], "")).await;
    let client = app(&proxy).await;
    client.simple_query("BEGIN").await.unwrap();
    client
        .simple_query("INSERT INTO items (v) VALUES ('doomed')")
        .await
        .unwrap();
    relay.cut();
    let err = tokio::time::timeout(Duration::from_secs(10), client.simple_query("SELECT 1"))
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(
        err.is_closed() || code(&err).as_deref() == Some("08006"),
        "{err}"
    );
    relay.restore().await;
    // a new session works
    let client = app(&proxy).await;
    assert_eq!(scalar::<i32>(&client, "SELECT 1").await, 1);
    proxy.stop().await;
}

#[tokio::test]
async fn no_replica_error_policy() {
    let ports = ports();
    let relay = Relay::start(ports[1]).await;
    let extra = "routing:\n  no_replica: error\n";
    let proxy = start_proxy(&config_text(&[ports[0], relay.port], extra)).await;
    let client = app(&proxy).await;
    assert_eq!(
        served_by(&client, "SELECT inet_server_port()").await,
        ports[1]
    );
    relay.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = client
        .simple_query("SELECT inet_server_port()")
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("08006"), "{err}");
    // writes are unaffected
    assert_eq!(
        served_by(
            &client,
            "INSERT INTO items (v) VALUES ('x') RETURNING inet_server_port()"
        )
        .await,
        ports[0]
    );
    drop(relay);
    proxy.stop().await;

    // with the default policy the read falls back to the primary
    let relay = Relay::start(ports[1]).await;
    let proxy = start_proxy(&config_text(&[ports[0], relay.port], "")).await;
    let client = app(&proxy).await;
    relay.cut();
    assert_eq!(
        served_by(&client, "SELECT inet_server_port()").await,
        ports[0]
    );
    proxy.stop().await;
}

/// A read after the session's own write asks a replica whether it has
/// replayed the write. A replica behind a network that hangs answers
/// nothing: the read goes to the primary once `lag.check_timeout` has
/// passed, not whenever the network comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_a_write_does_not_hang_on_a_stalled_replica() {
    let ports = ports();
    let relay = Relay::start(ports[1]).await;
    // The monitor never marks pg2 down here (down_after): the probe alone
    // must give up on it.
    let extra = "lag:\n  check_interval: 100ms\n  check_timeout: 1s\n  down_after: 100000\n  max_lag: 1h\n  max_lag_bytes: 100GB\n";
    let proxy = start_proxy(&config_text(&[ports[0], relay.port], extra)).await;
    let client = app(&proxy).await;
    // A connection to pg2 waits in the pool.
    assert_eq!(
        served_by(&client, "SELECT inet_server_port()").await,
        ports[1]
    );
    relay.stall();
    let id: i32 = scalar(
        &client,
        "INSERT INTO items (v) VALUES ('stalled') RETURNING id",
    )
    .await;
    let read = tokio::time::timeout(
        Duration::from_secs(20),
        rows(
            &client,
            &format!("SELECT inet_server_port(), count(*) FROM items WHERE id = {id}"),
        ),
    )
    .await
    .expect("the read hung on the stalled replica")
    .unwrap();
    assert_eq!(read[0][0].as_deref(), Some(ports[0].to_string().as_str()));
    assert_eq!(read[0][1].as_deref(), Some("1"));
    relay.resume();
    proxy.stop().await;
}

/// A node that answers the proxy's own position query with an error (a
/// standby asked for a primary's position here; a crashed replica
/// restarting, in life) is reported as the node's refusal, with its
/// SQLSTATE, not as a malformed message.
#[tokio::test]
async fn a_refused_position_query_is_named_as_the_nodes_refusal() {
    let spec = pgsplit::pool::ConnectSpec {
        node: "pg2".into(),
        address: format!("127.0.0.1:{}", replica_ports()[0]).into(),
        host: "127.0.0.1".into(),
        user: "app".into(),
        database: "app".into(),
        credential: Some(pgsplit::auth::Credential::Password("app".into())),
        timeout: std::time::Duration::from_secs(10),
        tls_mode: pgsplit::config::BackendTls::Disable,
        tls: None,
    };
    let mut conn = pgsplit::pool::BackendConn::connect(&spec, 1)
        .await
        .expect("connect to a replica");
    let e = conn
        .wal_insert_lsn(&mut bytes::BytesMut::new())
        .await
        .expect_err("a standby has no insert position");
    match e {
        pgsplit::wire::WireError::Refused { code, .. } => assert_eq!(code, "55000"),
        other => panic!("not named as a refusal: {other}"),
    }
    // The connection is still usable for what a standby can answer.
    let lsn = conn
        .replay_lsn(&mut bytes::BytesMut::new())
        .await
        .expect("replay position");
    assert!(lsn > 0);
}
