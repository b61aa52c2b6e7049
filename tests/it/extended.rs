//! The extended protocol through the proxy with tokio-postgres: prepared
//! statements that move between pooled connections and still run on
//! replicas, pipelining, COPY, notifications, errors that name the
//! client's statement.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::{SinkExt, TryStreamExt};

use crate::harness::*;

#[tokio::test]
async fn prepared_reads_run_on_replicas_and_writes_on_the_primary() {
    let proxy = default_proxy().await;
    let client = app(&proxy).await;
    let read = client
        .prepare("SELECT inet_server_port()::int, $1::int + 1")
        .await
        .unwrap();
    let mut seen = HashSet::new();
    for i in 0..40 {
        let row = client.query_one(&read, &[&i]).await.unwrap();
        let port: i32 = row.get(0);
        assert_eq!(row.get::<_, i32>(1), i + 1);
        assert!(replica_ports().contains(&(port as u16)), "{port}");
        seen.insert(port);
    }
    assert_eq!(
        seen.len(),
        2,
        "the prepared read moved between replicas: {seen:?}"
    );
    let write = client
        .prepare("INSERT INTO items (v) VALUES ($1) RETURNING inet_server_port()::int")
        .await
        .unwrap();
    for i in 0..5 {
        let port: i32 = client
            .query_one(&write, &[&format!("p{i}")])
            .await
            .unwrap()
            .get(0);
        assert_eq!(port as u16, primary_port());
    }
    let next: i64 = client
        .query_one("SELECT nextval('seq')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(next > 0);
    proxy.stop().await;
}

#[tokio::test]
async fn parameters_nulls_and_types_round_trip() {
    let proxy = default_proxy().await;
    let client = app(&proxy).await;
    let row = client
        .query_one(
            "SELECT $1::int4, $2::text, $3::float8, $4::bool, $5::bytea, $6::int8[], $7::text IS NULL",
            &[&7i32, &"tëxt", &1.5f64, &true, &vec![0u8, 255], &vec![1i64, 2], &None::<String>],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
    assert_eq!(row.get::<_, &str>(1), "tëxt");
    assert_eq!(row.get::<_, f64>(2), 1.5);
    assert!(row.get::<_, bool>(3));
    assert_eq!(row.get::<_, Vec<u8>>(4), vec![0, 255]);
    assert_eq!(row.get::<_, Vec<i64>>(5), vec![1, 2]);
    assert!(row.get::<_, bool>(6));
    proxy.stop().await;
}

#[tokio::test]
async fn transactions_with_prepared_statements_stay_on_one_primary_connection() {
    let proxy = default_proxy().await;
    let mut client = app(&proxy).await;
    let tx = client.transaction().await.unwrap();
    let pid: i32 = tx
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let port: i32 = tx
        .query_one("SELECT inet_server_port()::int", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(port as u16, primary_port());
    tx.execute("INSERT INTO items (v) VALUES ('tx')", &[])
        .await
        .unwrap();
    for _ in 0..3 {
        let again: i32 = tx
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(again, pid);
    }
    tx.rollback().await.unwrap();
    proxy.stop().await;
}

#[tokio::test]
async fn pipelined_queries_get_their_own_answers() {
    let proxy = default_proxy().await;
    let client = app(&proxy).await;
    let stmt = client.prepare("SELECT $1::int * 10").await.unwrap();
    let futures = (0..50i32).map(|i| {
        let client = &client;
        let stmt = &stmt;
        async move { (i, client.query_one(stmt, &[&i]).await) }
    });
    let results = futures_util::future::join_all(futures).await;
    for (i, r) in results {
        assert_eq!(r.unwrap().get::<_, i32>(0), i * 10);
    }
    // a pipeline mixing reads and a write
    let (a, b, c) = tokio::join!(
        client.query_one("SELECT inet_server_port()::int", &[]),
        client.query_one(
            "INSERT INTO items (v) VALUES ('pipe') RETURNING inet_server_port()::int",
            &[]
        ),
        client.query_one("SELECT 3", &[]),
    );
    a.unwrap();
    assert_eq!(b.unwrap().get::<_, i32>(0) as u16, primary_port());
    assert_eq!(c.unwrap().get::<_, i32>(0), 3);
    proxy.stop().await;
}

#[tokio::test]
async fn errors_name_the_clients_statement_and_the_session_goes_on() {
    let proxy = default_proxy().await;
    let client = app(&proxy).await;
    let err = client.prepare("SELEC 1").await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("42601"));
    let stmt = client.prepare("SELECT $1::int").await.unwrap();
    let err = client.query_one(&stmt, &[&"not an int"]).await;
    assert!(err.is_err());
    // division by zero at execute: the message is PostgreSQL's own
    let stmt = client.prepare("SELECT 1 / $1::int").await.unwrap();
    let err = client.query_one(&stmt, &[&0i32]).await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("22012"));
    assert!(!err.to_string().contains("pgsplit_"), "{err}");
    assert_eq!(
        client
            .query_one(&stmt, &[&1i32])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_prepare_the_same_names_with_different_sql() {
    let proxy = start_proxy(&config_text(&ports(), "pool:\n  size: 8\n")).await;
    let port = proxy.addr.port();
    let mut tasks = Vec::new();
    for i in 0..100i32 {
        tasks.push(tokio::spawn(async move {
            let conn = format!("host=127.0.0.1 port={port} user=app password=app dbname=app");
            let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            // tokio-postgres names its statements s0, s1, ... in every
            // client: the same names with different SQL.
            let a = client
                .prepare(&format!("SELECT {i}::int + $1::int"))
                .await
                .unwrap();
            let b = client
                .prepare(&format!("SELECT '{i}'::text || $1::text"))
                .await
                .unwrap();
            for j in 0..10i32 {
                let x: i32 = client.query_one(&a, &[&j]).await.unwrap().get(0);
                assert_eq!(x, i + j);
                let s: String = client.query_one(&b, &[&"!"]).await.unwrap().get(0);
                assert_eq!(s, format!("{i}!"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    proxy.stop().await;
}

#[tokio::test]
async fn copy_in_and_out_stream_through_the_proxy() {
    let proxy = default_proxy().await;
    let client = app(&proxy).await;
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS copy_t (id int, v text)")
        .await
        .unwrap();
    client.batch_execute("TRUNCATE copy_t").await.unwrap();
    let sink = client
        .copy_in("COPY copy_t FROM STDIN (FORMAT csv)")
        .await
        .unwrap();
    let mut sink = std::pin::pin!(sink);
    let mut chunk = String::new();
    for i in 0..20_000 {
        chunk.push_str(&format!("{i},row {i}\n"));
        if chunk.len() > 32 * 1024 {
            sink.send(bytes::Bytes::from(std::mem::take(&mut chunk)))
                .await
                .unwrap();
        }
    }
    sink.send(bytes::Bytes::from(chunk)).await.unwrap();
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 20_000);
    // The session goes on after COPY, on a released connection.
    let count: i64 = client
        .query_one("SELECT count(*) FROM copy_t", &[])
        .await
        .unwrap()
        .get(0);
    assert!(count >= 0);
    wait_replicated(cluster());
    let stream = client.copy_out("COPY copy_t TO STDOUT").await.unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let text: String = chunks
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    assert_eq!(text.lines().count(), 20_000);
    // a failed COPY FROM leaves the session usable
    let sink = client
        .copy_in::<_, bytes::Bytes>("COPY copy_t FROM STDIN")
        .await
        .unwrap();
    drop(sink);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        client
            .query_one("SELECT 5", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        5
    );
    proxy.stop().await;
}

#[tokio::test]
async fn listen_receives_notifications_sent_through_the_proxy() {
    let proxy = default_proxy().await;
    let (listener, mut rx) = listener(&proxy).await;
    listener.batch_execute("LISTEN events").await.unwrap();
    // Reads in between do not lose the pinned listening connection.
    listener.simple_query("SELECT 1").await.unwrap();
    let sender = app(&proxy).await;
    sender
        .batch_execute("NOTIFY events, 'hello'")
        .await
        .unwrap();
    sender
        .query("SELECT pg_notify('events', 'world')", &[])
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.as_str(), second.as_str()), ("hello", "world"));
    proxy.stop().await;
}

#[tokio::test]
async fn sql_prepare_execute_deallocate_and_discard() {
    let proxy = default_proxy().await;
    let client = app(&proxy).await;
    client
        .batch_execute("PREPARE q(int) AS SELECT $1 * 3")
        .await
        .unwrap();
    let v: i32 = scalar(&client, "EXECUTE q(5)").await;
    assert_eq!(v, 15);
    client.batch_execute("DEALLOCATE q").await.unwrap();
    let err = client.simple_query("EXECUTE q(5)").await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("26000"));
    // protocol-level statements and DEALLOCATE ALL / DISCARD ALL
    let stmt = client.prepare("SELECT 1").await.unwrap();
    client.query_one(&stmt, &[]).await.unwrap();
    client.batch_execute("DEALLOCATE ALL").await.unwrap();
    let err = client.query_one(&stmt, &[]).await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("26000"), "{err}");
    let stmt = client.prepare("SELECT 2").await.unwrap();
    client
        .batch_execute("SET search_path = public")
        .await
        .unwrap();
    client.batch_execute("DISCARD ALL").await.unwrap();
    assert!(client.query_one(&stmt, &[]).await.is_err());
    assert_eq!(scalar::<i32>(&client, "SELECT 9").await, 9);
    proxy.stop().await;
}

#[tokio::test]
async fn startup_parameters_apply_on_every_server_connection() {
    let proxy = default_proxy().await;
    let conn_str = format!(
        "host=127.0.0.1 port={} user=app password=app dbname=app application_name=startup-app options='-c search_path=pg_catalog,public -c statement_timeout=12345'",
        proxy.addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut nodes = HashSet::new();
    for _ in 0..20 {
        let r = rows(
            &client,
            "SELECT current_setting('application_name'), current_setting('search_path'), current_setting('statement_timeout'), inet_server_port()",
        )
        .await
        .unwrap();
        assert_eq!(r[0][0].as_deref(), Some("startup-app"));
        assert_eq!(r[0][1].as_deref(), Some("pg_catalog,public"));
        assert_eq!(r[0][2].as_deref(), Some("12345ms"));
        nodes.insert(r[0][3].clone());
    }
    assert_eq!(nodes.len(), 2, "both replicas used");
    proxy.stop().await;
}

#[tokio::test]
async fn portals_with_row_limits_suspend_and_resume() {
    let proxy = default_proxy().await;
    let mut client = app(&proxy).await;
    let tx = client.transaction().await.unwrap();
    let stmt = tx
        .prepare("SELECT g FROM generate_series(1, 25) g")
        .await
        .unwrap();
    let portal = tx.bind(&stmt, &[]).await.unwrap();
    let mut got = Vec::new();
    loop {
        let rows = tx.query_portal(&portal, 10).await.unwrap();
        if rows.is_empty() {
            break;
        }
        got.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
    }
    assert_eq!(got, (1..=25).collect::<Vec<_>>());
    tx.commit().await.unwrap();
    proxy.stop().await;
}

#[tokio::test]
async fn more_statements_than_a_connection_keeps_are_evicted_and_reprepared() {
    let proxy = start_proxy(&config_text(&ports(), "pool:\n  size: 2\n")).await;
    let client = app(&proxy).await;
    let n = pgsplit::pool::prepared::MAX_PREPARED_PER_CONNECTION as i32 + 60;
    let mut statements = Vec::new();
    for i in 0..n {
        statements.push(
            client
                .prepare(&format!("SELECT {i}::int + $1::int"))
                .await
                .unwrap(),
        );
    }
    // every statement still answers, in two passes over all of them
    for _ in 0..2 {
        for (i, s) in statements.iter().enumerate() {
            let v: i32 = client.query_one(s, &[&1i32]).await.unwrap().get(0);
            assert_eq!(v, i as i32 + 1);
        }
    }
    // and a replica connection holds at most the bound
    client.batch_execute("BEGIN READ ONLY").await.unwrap();
    let held: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'pgsplit_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    client.batch_execute("COMMIT").await.unwrap();
    let max = pgsplit::pool::prepared::MAX_PREPARED_PER_CONNECTION as i64;
    assert!(
        held > 0 && held <= max,
        "{held} statements on one connection"
    );
    proxy.stop().await;
}

/// Rows are relayed as byte ranges from the server's read buffer: a result
/// far larger than one read and than the client buffer's flush mark, with
/// rows of every width (a message cut across reads included), arrives
/// whole and in order in both protocols, and the session goes on.
#[tokio::test]
async fn large_results_arrive_whole_and_in_order_in_both_protocols() {
    let proxy = default_proxy().await;
    let client = app(&proxy).await;
    let sql = "SELECT g, repeat(chr(97 + g % 26), g % 300), inet_server_port()::int \
               FROM generate_series(1, 20000) g";
    let check = |g: i32, text: &str| {
        let c = char::from(b'a' + u8::try_from(g % 26).unwrap());
        assert_eq!(text.len(), usize::try_from(g % 300).unwrap(), "row {g}");
        assert!(text.chars().all(|x| x == c), "row {g}");
    };
    // extended protocol
    let rows = client.query(sql, &[]).await.unwrap();
    assert_eq!(rows.len(), 20_000);
    for (i, row) in rows.iter().enumerate() {
        let g: i32 = row.get(0);
        assert_eq!(g, i32::try_from(i).unwrap() + 1);
        check(g, row.get(1));
        assert!(replica_ports().contains(&u16::try_from(row.get::<_, i32>(2)).unwrap()));
    }
    // simple protocol
    let messages = client.simple_query(sql).await.unwrap();
    let mut next = 1;
    for message in &messages {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            let g: i32 = row.get(0).unwrap().parse().unwrap();
            assert_eq!(g, next);
            check(g, row.get(1).unwrap());
            next += 1;
        }
    }
    assert_eq!(next, 20_001);
    assert!(matches!(
        messages.last(),
        Some(tokio_postgres::SimpleQueryMessage::CommandComplete(20_000))
    ));
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    proxy.stop().await;
}

/// Client messages far larger than one read: a simple Query that starts
/// its batch (taken off the read buffer without a copy), a large Parse
/// followed by its Bind, and a small Parse with a large parameter (copied
/// into the batch) reach the node whole, run where they should, and the
/// session goes on.
#[tokio::test]
async fn large_client_messages_arrive_whole_in_both_protocols() {
    let proxy = default_proxy().await;
    let client = app(&proxy).await;
    let big = "x".repeat(300_000);
    // simple Query of ~300 kB: a read, on a replica
    let sql = format!("SELECT length('{big}'), inet_server_port()::int");
    let messages = client.simple_query(&sql).await.unwrap();
    let row = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("a row");
    assert_eq!(row.get(0), Some("300000"));
    let port: u16 = row.get(1).unwrap().parse().unwrap();
    assert!(replica_ports().contains(&port), "a read: {port}");
    // a large Parse, then its Bind/Execute/Sync in the same batch
    let row = client
        .query_one(
            &format!("SELECT length('{big}') + $1::int, inet_server_port()::int"),
            &[&1i32],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 300_001);
    assert!(replica_ports().contains(&u16::try_from(row.get::<_, i32>(1)).unwrap()));
    // a small Parse with a ~300 kB parameter: a write, on the primary
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS large_messages (t text)")
        .await
        .unwrap();
    let row = client
        .query_one(
            "INSERT INTO large_messages VALUES ($1) RETURNING length(t), inet_server_port()::int",
            &[&big],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 300_000);
    assert_eq!(u16::try_from(row.get::<_, i32>(1)).unwrap(), primary_port());
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    proxy.stop().await;
}

/// A migration changes a table under a prepared `SELECT *`: PostgreSQL
/// fails the next Bind of the old statement with 0A000 ("cached plan must
/// not change result type"), and a driver prepares the text again (pgjdbc
/// does). Statements are shared on server connections under a name made
/// from their text, so the proxy must drop the stale one there, or the new
/// prepare would find it and fail the same way for as long as that
/// connection lives. One node and `pool.size: 1`: every statement meets the
/// stale one.
#[tokio::test]
async fn a_statement_stale_after_a_migration_is_prepared_afresh() {
    let primary = direct(primary_port()).await;
    primary
        .batch_execute(
            "DROP TABLE IF EXISTS plan_shape; CREATE TABLE plan_shape (a int); \
             INSERT INTO plan_shape VALUES (1); GRANT ALL ON plan_shape TO app",
        )
        .await
        .unwrap();
    let proxy = start_proxy(&config_text(&[primary_port()], "pool:\n  size: 1\n")).await;
    let client = app(&proxy).await;
    let old = client.prepare("SELECT * FROM plan_shape").await.unwrap();
    assert_eq!(client.query_one(&old, &[]).await.unwrap().len(), 1);
    primary
        .batch_execute("ALTER TABLE plan_shape ADD COLUMN b int DEFAULT 7")
        .await
        .unwrap();
    // as PostgreSQL answers a direct client
    let e = client.query_one(&old, &[]).await.unwrap_err();
    assert_eq!(code(&e).as_deref(), Some("0A000"), "{e}");
    for _ in 0..3 {
        let new = client.prepare("SELECT * FROM plan_shape").await.unwrap();
        let row = client.query_one(&new, &[]).await.unwrap();
        assert_eq!((row.get::<_, i32>(0), row.get::<_, i32>(1)), (1, 7));
    }
    // another session on the same server connection too
    let other = app(&proxy).await;
    let row = other
        .query_one("SELECT * FROM plan_shape", &[])
        .await
        .unwrap();
    assert_eq!(row.len(), 2);
    proxy.stop().await;
    primary
        .batch_execute("DROP TABLE plan_shape")
        .await
        .unwrap();
}
