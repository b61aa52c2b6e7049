//! Reads land on replicas, writes and everything that must see the primary
//! land on the primary, checked with `inet_server_port()`.

use std::collections::HashSet;

use crate::harness::*;

#[tokio::test]
async fn reads_land_on_replicas_and_use_both() {
    let proxy = default_proxy().await;
    let client = app(&proxy).await;
    let replicas = replica_ports();
    let mut seen = HashSet::new();
    for _ in 0..60 {
        let port = served_by(&client, "SELECT inet_server_port()").await;
        assert!(
            replicas.contains(&port),
            "read served by {port}, replicas are {replicas:?}"
        );
        seen.insert(port);
    }
    assert_eq!(seen.len(), 2, "both replicas should serve reads: {seen:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn writes_and_primary_only_reads_land_on_the_primary() {
    let proxy = default_proxy().await;
    let client = app(&proxy).await;
    let primary = primary_port();
    let cases = [
        "INSERT INTO items (v) VALUES ('w') RETURNING inet_server_port()",
        "UPDATE items SET v = 'u' WHERE id = (SELECT min(id) FROM items) RETURNING inet_server_port()",
        "SELECT nextval('seq'), inet_server_port()",
        "SELECT inet_server_port() FROM (SELECT 1) s WHERE nextval('seq') > 0",
        "SELECT inet_server_port() FROM items FOR UPDATE",
        "SELECT inet_server_port() FROM items LIMIT 1 FOR SHARE",
        "SELECT inet_server_port() FROM items LIMIT 1 FOR NO KEY UPDATE",
        "WITH x AS (INSERT INTO items (v) VALUES ('cte') RETURNING id) SELECT inet_server_port() FROM x",
        "/* pgsplit:primary */ SELECT inet_server_port()",
        "SELECT txid_current(), inet_server_port()",
        "SELECT 1; INSERT INTO items (v) VALUES ('multi'); SELECT inet_server_port()",
    ];
    for sql in cases {
        assert_eq!(served_by(&client, sql).await, primary, "{sql}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn transactions_go_to_the_primary_unless_read_only() {
    let proxy = default_proxy().await;
    let client = app(&proxy).await;
    let primary = primary_port();
    let replicas = replica_ports();
    // A transaction that starts with a read still runs on the primary, as
    // one unit: the insert is visible to the read that follows it.
    client.simple_query("BEGIN").await.unwrap();
    assert_eq!(
        served_by(&client, "SELECT inet_server_port()").await,
        primary
    );
    client
        .simple_query("INSERT INTO items (v) VALUES ('in-txn')")
        .await
        .unwrap();
    let n: i64 = scalar(&client, "SELECT count(*) FROM items WHERE v = 'in-txn'").await;
    assert!(n >= 1);
    client.simple_query("COMMIT").await.unwrap();
    // Read-your-writes keeps this session's reads on the primary until the
    // replicas have replayed that commit.
    caught_up().await;

    for begin in ["BEGIN READ ONLY", "START TRANSACTION READ ONLY"] {
        client.simple_query(begin).await.unwrap();
        let first = served_by(&client, "SELECT inet_server_port()").await;
        assert!(replicas.contains(&first), "{begin}: {first}");
        for _ in 0..5 {
            assert_eq!(
                served_by(&client, "SELECT inet_server_port()").await,
                first,
                "one node per txn"
            );
        }
        let err = client
            .simple_query("INSERT INTO items (v) VALUES ('ro')")
            .await
            .unwrap_err();
        assert_eq!(code(&err).as_deref(), Some("25006"));
        client.simple_query("ROLLBACK").await.unwrap();
    }
    assert_eq!(
        served_by(&client, "BEGIN; SELECT inet_server_port(); COMMIT").await,
        primary
    );
    caught_up().await;
    // After the transaction, reads spread again.
    let port = served_by(&client, "SELECT inet_server_port()").await;
    assert!(replicas.contains(&port));
    proxy.stop().await;
}

#[tokio::test]
async fn write_functions_and_session_state_pin_to_the_primary() {
    let extra = "routing:\n  write_functions: [audit_fn]\n";
    let proxy = start_proxy(&config_text(&ports(), extra)).await;
    let client = app(&proxy).await;
    client
        .batch_execute(
            "CREATE OR REPLACE FUNCTION audit_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        )
        .await
        .unwrap();
    caught_up().await;
    assert_eq!(
        served_by(&client, "SELECT audit_fn(), inet_server_port()").await,
        primary_port()
    );
    // audit_fn may have written: this session's reads wait for the replicas.
    caught_up().await;
    // A session-level SET is recorded and replayed on whichever server
    // connection serves the session next: reads still use the replicas.
    client
        .simple_query("SET application_name = 'replayed-app'")
        .await
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let rows = rows(
            &client,
            "SELECT current_setting('application_name'), inet_server_port()",
        )
        .await
        .unwrap();
        assert_eq!(rows[0][0].as_deref(), Some("replayed-app"));
        seen.insert(rows[0][1].as_deref().unwrap().parse::<u16>().unwrap());
    }
    assert!(seen.iter().all(|p| replica_ports().contains(p)), "{seen:?}");
    // SET inside a rolled-back transaction does not stick; committed does.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .simple_query("SET application_name = 'rolled-back'")
        .await
        .unwrap();
    client.batch_execute("ROLLBACK").await.unwrap();
    let name: String = scalar(&client, "SELECT current_setting('application_name')").await;
    assert_eq!(name, "replayed-app");
    client.batch_execute("BEGIN").await.unwrap();
    client
        .simple_query("SET application_name = 'committed'")
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    for _ in 0..5 {
        let name: String = scalar(&client, "SELECT current_setting('application_name')").await;
        assert_eq!(name, "committed");
    }
    // A session advisory lock pins the session to its primary connection.
    client
        .simple_query("SELECT pg_advisory_lock(4242)")
        .await
        .unwrap();
    let pid: i32 = scalar(&client, "SELECT pg_backend_pid()").await;
    for _ in 0..5 {
        assert_eq!(scalar::<i32>(&client, "SELECT pg_backend_pid()").await, pid);
    }
    client
        .simple_query("SELECT pg_advisory_unlock(4242)")
        .await
        .unwrap();
    // Another client does not inherit it.
    let other = app(&proxy).await;
    for _ in 0..20 {
        let name: String = scalar(&other, "SELECT current_setting('application_name')").await;
        assert!(name != "replayed-app" && name != "committed", "{name}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn empty_queries_multi_statements_and_backend_errors() {
    let proxy = default_proxy().await;
    let client = app(&proxy).await;
    let messages = client.simple_query("").await.unwrap();
    assert!(
        messages.is_empty()
            || messages
                .iter()
                .all(|m| !matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
    );
    let r = rows(&client, "SELECT 1; SELECT 2, 3").await.unwrap();
    assert_eq!(
        r,
        vec![
            vec![Some("1".into())],
            vec![Some("2".into()), Some("3".into())]
        ]
    );
    let err = client.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("22012"));
    let err = client.simple_query("SELEKT 1").await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("42601"));
    let err = client
        .simple_query("SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("42P01"));
    // the session goes on after errors
    assert_eq!(scalar::<i32>(&client, "SELECT 42").await, 42);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_clients_get_their_own_answers() {
    // 200 logins at once starve this 2-core machine for seconds: the lag
    // monitor must not take a slow answer for a dead node here (that is
    // tested elsewhere), or reads would rightly leave the replicas.
    let lag = "lag:\n  check_interval: 100ms\n  check_timeout: 10s\n  max_lag: 1h\n";
    let proxy = start_proxy(&config_text(&ports(), lag)).await;
    let primary = primary_port();
    let replicas = replica_ports();
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let port = proxy.addr.port();
        let replicas = replicas.clone();
        tasks.push(tokio::spawn(async move {
            let conn = format!("host=127.0.0.1 port={port} user=app password=app dbname=app");
            let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            for j in 0..5u32 {
                let sql = format!("SELECT {i} * 1000 + {j}, inet_server_port()");
                let r = rows(&client, &sql).await.unwrap();
                assert_eq!(
                    r[0][0].as_deref().unwrap().parse::<u32>().unwrap(),
                    i * 1000 + j
                );
                let port: u16 = r[0][1].as_deref().unwrap().parse().unwrap();
                assert!(replicas.contains(&port));
            }
            let sql =
                format!("INSERT INTO items (v) VALUES ('c{i}') RETURNING v, inet_server_port()");
            let r = rows(&client, &sql).await.unwrap();
            assert_eq!(r[0][0].as_deref(), Some(format!("c{i}").as_str()));
            assert_eq!(r[0][1].as_deref().unwrap().parse::<u16>().unwrap(), primary);
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn session_pool_mode_keeps_connections_and_routes_the_same() {
    let proxy = start_proxy(&config_text(
        &ports(),
        "pool:\n  mode: session\n  size: 5\n",
    ))
    .await;
    let client = app(&proxy).await;
    let replicas = replica_ports();
    let first = served_by(&client, "SELECT inet_server_port()").await;
    assert!(replicas.contains(&first));
    let pid: i32 = scalar(&client, "SELECT pg_backend_pid()").await;
    for _ in 0..5 {
        assert_eq!(
            scalar::<i32>(&client, "SELECT pg_backend_pid()").await,
            pid,
            "same server connection"
        );
    }
    assert_eq!(
        served_by(
            &client,
            "INSERT INTO items (v) VALUES ('s') RETURNING inet_server_port()"
        )
        .await,
        primary_port()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn md5_nodes_and_trust_clients() {
    // Clients trusted by the proxy; the proxy logs in to nodes with md5.
    let extra = "auth:\n  method: trust\n  users:\n    - { name: app_md5, password: md5pw }\n";
    let proxy = start_proxy(&config_text(&ports(), extra)).await;
    let client = connect(&proxy, "app_md5", "ignored").await.unwrap();
    assert!(replica_ports().contains(&served_by(&client, "SELECT inet_server_port()").await));
    // a user not in auth.users is refused even under trust
    let err = connect(&proxy, "stranger", "x").await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("28P01"));
    proxy.stop().await;
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_refused_alike() {
    let proxy = default_proxy().await;
    let wrong = connect(&proxy, "app", "nope").await.unwrap_err();
    let unknown = connect(&proxy, "ghost", "nope").await.unwrap_err();
    assert_eq!(code(&wrong).as_deref(), Some("28P01"));
    assert_eq!(code(&unknown).as_deref(), Some("28P01"));
    let msg =
        |e: &tokio_postgres::Error| e.as_db_error().unwrap().message().replace("ghost", "app");
    assert_eq!(msg(&wrong), msg(&unknown));
    // a missing database is the node's own answer
    let conn = format!(
        "host=127.0.0.1 port={} user=app password=app dbname=nodb",
        proxy.addr.port()
    );
    let Err(err) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await else {
        panic!("connected to a missing database");
    };
    assert_eq!(code(&err).as_deref(), Some("3D000"));
    proxy.stop().await;
}

#[tokio::test]
async fn volatile_user_functions_go_to_the_primary_stable_ones_and_builtins_do_not() {
    let proxy = default_proxy().await;
    let client = app(&proxy).await;
    client
        .batch_execute(
            "CREATE OR REPLACE FUNCTION bump_counter() RETURNS int VOLATILE LANGUAGE sql AS 'SELECT 1'; \
             CREATE OR REPLACE FUNCTION lookup_thing(int) RETURNS int STABLE LANGUAGE sql AS 'SELECT $1'",
        )
        .await
        .unwrap();
    // The function DDL went through the proxy: the catalog is re-read
    // before this session's next statement.
    assert_eq!(
        served_by(&client, "SELECT bump_counter(), inet_server_port()").await,
        primary_port()
    );
    caught_up().await;
    let other = app(&proxy).await;
    assert_eq!(
        served_by(&other, "SELECT bump_counter(), inet_server_port()").await,
        primary_port()
    );
    assert_eq!(
        served_by(
            &other,
            "SELECT s.x, p.port FROM (SELECT lookup_thing(abs(bump_counter())) AS x) s, \
             LATERAL (SELECT inet_server_port() AS port) p"
        )
        .await,
        primary_port()
    );
    // bump_counter() may have written: read-your-writes holds this
    // session's reads on the primary until the replicas caught up. A
    // stable function goes to a replica once the proxy has read it.
    caught_up().await;
    knows_function(&proxy, "lookup_thing").await;
    for sql in [
        "SELECT lookup_thing(1), inet_server_port()",
        "SELECT random(), clock_timestamp(), gen_random_uuid(), inet_server_port()",
    ] {
        assert!(
            replica_ports().contains(&served_by(&other, sql).await),
            "{sql}"
        );
    }
    proxy.stop().await;
}
