//! Session state and pooled server connections: what one client does to
//! its session never reaches another client that gets the same server
//! connection, and a client sees its own session as PostgreSQL would show
//! it. Each test runs with `pool.size: 1`, so consecutive clients share
//! one server connection per node, in both pool modes where the mode
//! matters.

use std::time::Duration;

use crate::harness::raw::{self, Raw};
use crate::harness::*;

const MODES: [&str; 2] = ["transaction", "session"];

/// One server connection per node. Read-your-writes is off: these tests
/// look at session state, and a read after a statement that may have
/// written would otherwise go to the primary until the replicas caught up.
fn one_connection(mode: &str) -> String {
    config_text(
        &ports(),
        &format!(
            "pool:\n  size: 1\n  mode: {mode}\n  checkout_timeout: 5s\nrouting:\n  read_your_writes: off\n\
             lag:\n  check_interval: 100ms\n  max_lag: 1h\n  max_lag_bytes: 100GB\n"
        ),
    )
}

fn trust_one_connection(mode: &str) -> String {
    config_text(
        &ports(),
        &format!(
            "auth:\n  method: trust\n  users:\n    - {{ name: app, password: app }}\npool:\n  size: 1\n  mode: {mode}\n"
        ),
    )
}

/// The value of a setting as the primary's server connection shows it.
async fn on_primary(client: &tokio_postgres::Client, setting: &str) -> String {
    let sql = format!("/* pgsplit:primary */ SELECT current_setting('{setting}')");
    match rows(client, &sql).await {
        Ok(rows) => rows[0][0].clone().unwrap(),
        Err(e) => panic!("{sql}: {:?}", e.as_db_error()),
    }
}

/// The value of a setting as a replica's server connection shows it; the
/// read must run on a replica the first time.
async fn on_replica(client: &tokio_postgres::Client, setting: &str) -> String {
    let rows = rows(
        client,
        &format!("SELECT current_setting('{setting}'), inet_server_port()"),
    )
    .await
    .unwrap();
    let port: u16 = rows[0][1].as_deref().unwrap().parse().unwrap();
    // (a read right after a RESET of a startup setting once found the
    // primary connection still restoring it, and ran there)
    assert!(
        replica_ports().contains(&port),
        "a read ran on {port}, not a replica"
    );
    rows[0][0].clone().unwrap()
}

#[tokio::test]
async fn session_characteristics_and_pg_settings_stay_with_their_session() {
    for mode in MODES {
        let proxy = start_proxy(&one_connection(mode)).await;
        let cases = [
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
                "default_transaction_read_only",
                "on",
            ),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                "default_transaction_isolation",
                "serializable",
            ),
            ("SET XML OPTION DOCUMENT", "xmloption", "document"),
            (
                "UPDATE pg_settings SET setting = '7s' WHERE name = 'lock_timeout'",
                "lock_timeout",
                "7s",
            ),
        ];
        for (sql, setting, value) in cases {
            let a = app(&proxy).await;
            let default = on_primary(&a, setting).await;
            assert_ne!(default, value);
            a.batch_execute(sql).await.unwrap();
            // The session that made it sees it, on the primary and on
            // replicas (a session that defaults to SERIALIZABLE reads on
            // the primary: a standby refuses serializable transactions).
            assert_eq!(on_primary(&a, setting).await, value, "{mode}: {sql}");
            if value == "serializable" {
                let port: i32 = scalar(&a, "SELECT inet_server_port()").await;
                assert_eq!(port as u16, primary_port());
            } else {
                assert_eq!(on_replica(&a, setting).await, value, "{mode}: {sql}");
            }
            drop(a);
            // The next client on the same server connections does not.
            let b = app(&proxy).await;
            assert_eq!(on_primary(&b, setting).await, default, "{mode}: {sql}");
            assert_eq!(on_replica(&b, setting).await, default, "{mode}: {sql}");
            b.batch_execute("INSERT INTO items (v) VALUES ('after characteristics')")
                .await
                .unwrap_or_else(|e| panic!("{mode}: {sql}: next client's insert: {e}"));
        }
        proxy.stop().await;
    }
}

#[tokio::test]
async fn set_config_in_a_do_block_follows_its_session_only() {
    for mode in MODES {
        let proxy = start_proxy(&one_connection(mode)).await;
        let a = app(&proxy).await;
        a.batch_execute(
            "DO $$ BEGIN PERFORM set_config('statement_timeout', '12s', false); END $$",
        )
        .await
        .unwrap();
        assert_eq!(on_replica(&a, "statement_timeout").await, "12s", "{mode}");
        let in_txn = rows(
            &a,
            "BEGIN; SELECT current_setting('statement_timeout'); COMMIT",
        )
        .await
        .unwrap();
        assert_eq!(in_txn[0][0].as_deref(), Some("12s"), "{mode}");
        assert_eq!(on_primary(&a, "statement_timeout").await, "12s", "{mode}");
        // (session pooling: a session keeps its connections until it leaves)
        let a = if mode == "session" {
            drop(a);
            None
        } else {
            Some(a)
        };
        let b = app(&proxy).await;
        drop(a);
        assert_eq!(on_primary(&b, "statement_timeout").await, "0", "{mode}");
        assert_eq!(on_replica(&b, "statement_timeout").await, "0", "{mode}");
        proxy.stop().await;
    }
}

#[tokio::test]
async fn temporary_objects_pin_the_session_and_leave_with_it() {
    for mode in MODES {
        let proxy = start_proxy(&one_connection(mode)).await;
        let a = app(&proxy).await;
        a.batch_execute("CREATE TEMP VIEW tv AS SELECT 1 AS x")
            .await
            .unwrap();
        let x: i32 = scalar(&a, "SELECT x FROM tv").await;
        assert_eq!(x, 1, "{mode}");
        a.batch_execute("CREATE TEMP SEQUENCE ts").await.unwrap();
        let n: i64 = scalar(&a, "SELECT nextval('ts')").await;
        assert_eq!(n, 1);
        a.batch_execute("CREATE TABLE pg_temp.tt (a int); INSERT INTO tt VALUES (5)")
            .await
            .unwrap();
        let v: i32 = scalar(&a, "SELECT a FROM tt").await;
        assert_eq!(v, 5, "{mode}");
        // Made by a DO block, which the proxy cannot read: still found.
        a.batch_execute("DO $$ BEGIN CREATE TEMP TABLE td (a int); END $$")
            .await
            .unwrap();
        let none: i64 = scalar(&a, "SELECT count(*) FROM td").await;
        assert_eq!(none, 0, "{mode}");
        drop(a);
        let b = app(&proxy).await;
        let left: i64 = scalar(
            &b,
            "/* pgsplit:primary */ SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()",
        )
        .await;
        assert_eq!(left, 0, "{mode}: another client's temp objects are gone");
        proxy.stop().await;
    }
}

#[tokio::test]
async fn a_set_rolled_back_to_a_savepoint_is_gone() {
    for mode in MODES {
        a_set_rolled_back_to_a_savepoint_is_gone_in(mode).await;
    }
}

async fn a_set_rolled_back_to_a_savepoint_is_gone_in(mode: &str) {
    let proxy = start_proxy(&one_connection(mode)).await;
    let a = app(&proxy).await;
    let default = on_primary(&a, "search_path").await;
    a.batch_execute("BEGIN; SAVEPOINT a; SET search_path TO s1; ROLLBACK TO a; COMMIT")
        .await
        .unwrap();
    assert_eq!(on_primary(&a, "search_path").await, default);
    assert_eq!(on_replica(&a, "search_path").await, default);
    // A SET that survives its savepoint is kept.
    a.batch_execute("BEGIN; SAVEPOINT a; SET search_path TO s2; RELEASE a; COMMIT")
        .await
        .unwrap();
    assert_eq!(on_replica(&a, "search_path").await, "s2");
    assert_eq!(on_primary(&a, "search_path").await, "s2");
    proxy.stop().await;
}

#[tokio::test]
async fn the_same_text_under_different_search_paths_is_two_statements() {
    let setup = direct(primary_port()).await;
    setup
        .batch_execute(
            "DROP SCHEMA IF EXISTS sp_a CASCADE; DROP SCHEMA IF EXISTS sp_b CASCADE;
             CREATE SCHEMA sp_a; CREATE SCHEMA sp_b;
             CREATE TABLE sp_a.t (x int); INSERT INTO sp_a.t VALUES (1);
             CREATE TABLE sp_b.t (x text); INSERT INTO sp_b.t VALUES ('b');
             GRANT ALL ON SCHEMA sp_a, sp_b TO app; GRANT ALL ON ALL TABLES IN SCHEMA sp_a, sp_b TO app",
        )
        .await
        .unwrap();
    caught_up().await;
    for mode in MODES {
        let proxy = start_proxy(&one_connection(mode)).await;
        // Transaction pooling: both at once on the one connection. Session
        // pooling: one after the other (a session keeps its connection),
        // the second finding the first's statements on it.
        let a = app(&proxy).await;
        a.batch_execute("SET search_path TO sp_a").await.unwrap();
        let sa = a.prepare("SELECT x FROM t").await.unwrap();
        let x: i32 = a.query_one(&sa, &[]).await.unwrap().get(0);
        assert_eq!(x, 1, "{mode}");
        let a = if mode == "session" {
            drop((a, sa));
            None
        } else {
            Some((a, sa))
        };
        let b = app(&proxy).await;
        b.batch_execute("SET search_path TO sp_b").await.unwrap();
        let sb = b.prepare("SELECT x FROM t").await.unwrap();
        for _ in 0..5 {
            if let Some((a, sa)) = &a {
                let x: i32 = a.query_one(sa, &[]).await.unwrap().get(0);
                assert_eq!(x, 1, "{mode}");
            }
            let y: String = b.query_one(&sb, &[]).await.unwrap().get(0);
            assert_eq!(y, "b", "{mode}");
        }
        proxy.stop().await;
    }
}

#[tokio::test]
async fn a_set_sent_as_a_prepared_statement_is_tracked_not_a_transaction() {
    for mode in MODES {
        let proxy = start_proxy(&one_connection(mode)).await;
        let a = app(&proxy).await;
        // tokio-postgres prepares every statement under a name.
        a.execute("SET statement_timeout = '3s'", &[])
            .await
            .unwrap();
        for _ in 0..5 {
            assert_eq!(on_replica(&a, "statement_timeout").await, "3s", "{mode}");
        }
        // Another client is not starved of the one connection (in session
        // pooling, once the first has left: a session keeps its connections).
        if mode == "session" {
            drop(a);
        }
        let b = app(&proxy).await;
        let port: i32 = b
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(replica_ports().contains(&(port as u16)));
        assert_eq!(on_primary(&b, "statement_timeout").await, "0", "{mode}");
        proxy.stop().await;
    }
}

#[tokio::test]
async fn latin1_clients_are_understood() {
    for mode in MODES {
        latin1_clients_are_understood_in(mode).await;
    }
}

async fn latin1_clients_are_understood_in(mode: &str) {
    let proxy = start_proxy(&trust_one_connection(mode)).await;
    let mut c = Raw::connect(proxy.addr.port(), &[("client_encoding", "LATIN1")]).await;
    let replies = c
        .query(b"SELECT 'caf\xe9' AS s, length('caf\xe9'), inet_server_port()")
        .await;
    let row = replies
        .iter()
        .find(|m| m.tag == b'D')
        .unwrap_or_else(|| panic!("{replies:?}"));
    let cols = row.columns();
    assert_eq!(cols[0].as_deref(), Some(&b"caf\xe9"[..]));
    assert_eq!(cols[1].as_deref(), Some(&b"4"[..]));
    let port: u16 = String::from_utf8(cols[2].clone().unwrap())
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        replica_ports().contains(&port),
        "a read still goes to a replica"
    );
    // Extended protocol, named statement, text in LATIN1.
    let mut batch = raw::parse("l1", b"SELECT length('\xe9t\xe9'::text || $1)", &[25]);
    batch.extend(raw::bind("l1", &[b"\xe0"]));
    batch.extend(raw::execute());
    batch.extend(raw::sync());
    c.send(&batch).await;
    let replies = c.until_ready().await;
    let row = replies
        .iter()
        .find(|m| m.tag == b'D')
        .unwrap_or_else(|| panic!("{replies:?}"));
    assert_eq!(row.columns()[0].as_deref(), Some(&b"4"[..]));
    proxy.stop().await;
}

#[tokio::test]
async fn more_than_32767_parameters_are_accepted() {
    for mode in MODES {
        more_than_32767_parameters_are_accepted_in(mode).await;
    }
}

async fn more_than_32767_parameters_are_accepted_in(mode: &str) {
    let proxy = start_proxy(&trust_one_connection(mode)).await;
    let mut c = Raw::connect(proxy.addr.port(), &[]).await;
    let n = 40_000;
    let types = vec![23u32; n];
    let values: Vec<Vec<u8>> = (0..n).map(|i| i.to_string().into_bytes()).collect();
    let params: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    let mut batch = raw::parse("", format!("SELECT ${n}::int + $1").as_bytes(), &types);
    batch.extend(raw::bind("", &params));
    batch.extend(raw::execute());
    batch.extend(raw::sync());
    c.send(&batch).await;
    let replies = c.until_ready().await;
    assert!(
        replies.iter().all(|m| m.tag != b'E'),
        "{:?}",
        replies.iter().find_map(raw::Msg::error)
    );
    let row = replies.iter().find(|m| m.tag == b'D').unwrap();
    assert_eq!(
        row.columns()[0].as_deref(),
        Some(format!("{}", n - 1).as_bytes())
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_read_only_transaction_runs_where_its_first_statement_works() {
    for mode in MODES {
        a_read_only_transaction_runs_where_its_first_statement_works_in(mode).await;
    }
}

async fn a_read_only_transaction_runs_where_its_first_statement_works_in(mode: &str) {
    let proxy = start_proxy(&config_text(&ports(), &format!("pool:\n  mode: {mode}\n"))).await;
    let a = app(&proxy).await;
    let other = direct(primary_port()).await;
    // The lock is taken on the primary, where it excludes others.
    a.batch_execute("BEGIN READ ONLY").await.unwrap();
    a.batch_execute("SELECT pg_advisory_xact_lock(77)")
        .await
        .unwrap();
    let free: bool = other
        .query_one("SELECT pg_try_advisory_lock(77)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        !free,
        "the advisory lock was taken where it excludes nobody"
    );
    a.batch_execute("COMMIT").await.unwrap();
    let free: bool = other
        .query_one("SELECT pg_try_advisory_lock(77)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(free);
    other
        .execute("SELECT pg_advisory_unlock(77)", &[])
        .await
        .unwrap();
    for first in [
        "SELECT txid_current()",
        "SELECT pg_notify('ro_chan', 'x')",
        "LOCK items IN EXCLUSIVE MODE",
        "SET TRANSACTION READ WRITE",
    ] {
        a.batch_execute("BEGIN READ ONLY").await.unwrap();
        a.batch_execute(first)
            .await
            .unwrap_or_else(|e| panic!("{first}: {e}"));
        let port: i32 = scalar(&a, "SELECT inet_server_port()").await;
        assert_eq!(port as u16, primary_port(), "{first}");
        a.batch_execute("COMMIT").await.unwrap();
    }
    // A read first places it on a replica; a later statement that needs
    // the primary is refused with the reason, and runs nowhere.
    caught_up().await;
    a.batch_execute("BEGIN READ ONLY").await.unwrap();
    let port: i32 = scalar(&a, "SELECT inet_server_port()").await;
    assert!(replica_ports().contains(&(port as u16)));
    let e = a
        .batch_execute("SELECT pg_advisory_xact_lock(78)")
        .await
        .unwrap_err();
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "25006");
    assert!(db.message().contains("replica"), "{}", db.message());
    a.batch_execute("ROLLBACK").await.unwrap();
    let free: bool = other
        .query_one("SELECT pg_try_advisory_lock(78)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(free);
    other
        .execute("SELECT pg_advisory_unlock(78)", &[])
        .await
        .unwrap();
    // A plain read-only transaction still reads on a replica.
    let rows = rows(&a, "BEGIN READ ONLY; SELECT inet_server_port(); COMMIT")
        .await
        .unwrap();
    let port: u16 = rows[0][0].as_deref().unwrap().parse().unwrap();
    assert!(replica_ports().contains(&port));
    proxy.stop().await;
}

#[tokio::test]
async fn drop_database_closes_the_proxys_idle_connections_first() {
    let setup = direct(primary_port()).await;
    setup
        .batch_execute("DROP DATABASE IF EXISTS dropme")
        .await
        .unwrap();
    setup
        .batch_execute("CREATE DATABASE dropme OWNER app")
        .await
        .unwrap();
    caught_up().await;
    for mode in MODES {
        let proxy = start_proxy(&one_connection(mode)).await;
        let conn_str = format!(
            "host=127.0.0.1 port={} user=app password=app dbname=dropme",
            proxy.addr.port()
        );
        let (c, connection) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(connection);
        c.batch_execute("CREATE TABLE x (a int); INSERT INTO x VALUES (1)")
            .await
            .unwrap();
        let _: i64 = scalar(&c, "SELECT count(*) FROM pg_class").await;
        drop(c);
        let _ = task.await;
        let admin = app(&proxy).await;
        admin
            .batch_execute("DROP DATABASE dropme")
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        admin
            .batch_execute("CREATE DATABASE dropme OWNER app")
            .await
            .unwrap();
        proxy.stop().await;
    }
    setup.batch_execute("DROP DATABASE dropme").await.unwrap();
}

#[tokio::test]
async fn reset_returns_to_the_value_given_at_connect() {
    for mode in MODES {
        let proxy = start_proxy(&one_connection(mode)).await;
        let conn_str = format!(
            "host=127.0.0.1 port={} user=app password=app dbname=app options='-c TimeZone=America/Los_Angeles -c DateStyle=SQL,DMY'",
            proxy.addr.port()
        );
        let (c, connection) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        for reset in [
            "RESET TimeZone",
            "SET TimeZone TO DEFAULT",
            "SET TIME ZONE DEFAULT",
            "RESET ALL",
        ] {
            c.batch_execute("SET TimeZone TO 'Asia/Tokyo'")
                .await
                .unwrap();
            assert_eq!(on_replica(&c, "TimeZone").await, "Asia/Tokyo");
            c.batch_execute(reset).await.unwrap();
            for _ in 0..2 {
                assert_eq!(
                    on_replica(&c, "TimeZone").await,
                    "America/Los_Angeles",
                    "{mode}: {reset}"
                );
                assert_eq!(
                    on_primary(&c, "TimeZone").await,
                    "America/Los_Angeles",
                    "{mode}: {reset}"
                );
            }
            assert_eq!(on_primary(&c, "DateStyle").await, "SQL, DMY", "{mode}");
        }
        proxy.stop().await;
    }
}

#[tokio::test]
async fn the_unnamed_statement_can_be_described_after_its_parse() {
    for mode in MODES {
        the_unnamed_statement_can_be_described_after_its_parse_in(mode).await;
    }
}

async fn the_unnamed_statement_can_be_described_after_its_parse_in(mode: &str) {
    let proxy = start_proxy(&trust_one_connection(mode)).await;
    let mut c = Raw::connect(proxy.addr.port(), &[]).await;
    for sql in [
        &b"INSERT INTO items (v) VALUES ($1) RETURNING id"[..],
        b"SELECT id FROM items WHERE id = $1::int FOR UPDATE",
        b"SELECT nextval('seq')",
        b"SELECT v FROM items WHERE id = $1::int",
    ] {
        let mut batch = raw::parse("", sql, &[]);
        batch.extend(raw::sync());
        c.send(&batch).await;
        let replies = c.until_ready().await;
        assert_eq!(replies[0].tag, b'1', "{replies:?}");
        let mut batch = raw::describe_statement("");
        batch.extend(raw::sync());
        c.send(&batch).await;
        let replies = c.until_ready().await;
        assert!(
            replies.iter().all(|m| m.tag != b'E'),
            "{}: {:?}",
            String::from_utf8_lossy(sql),
            replies.iter().find_map(raw::Msg::error)
        );
        assert_eq!(replies[0].tag, b't');
        assert_eq!(replies[1].tag, b'T');
    }
    proxy.stop().await;
}

#[tokio::test]
async fn pinned_sessions_are_counted_and_capped() {
    let extra = "pool:\n  size: 3\n  checkout_timeout: 2s\nlimits:\n  max_pinned_sessions: 2\n";
    let proxy = start_proxy(&config_text(&ports(), extra)).await;
    let a = app(&proxy).await;
    let b = app(&proxy).await;
    let c = app(&proxy).await;
    a.batch_execute("CREATE TEMP TABLE pin_a (x int)")
        .await
        .unwrap();
    b.batch_execute("LISTEN pin_channel").await.unwrap();
    let status = pgsplit::admin::Status::collect(&proxy.state);
    assert_eq!(status.pinned.get("temp"), Some(&1), "{:?}", status.pinned);
    assert_eq!(status.pinned.get("listen"), Some(&1), "{:?}", status.pinned);
    let metrics = proxy.state.metrics.encode();
    assert!(
        metrics.contains("pgsplit_pinned_sessions{reason=\"temp\"} 1"),
        "{metrics}"
    );
    let e = c
        .batch_execute("CREATE TEMP TABLE pin_c (x int)")
        .await
        .unwrap_err();
    assert_eq!(code(&e).as_deref(), Some("53300"), "{e}");
    let message = e.as_db_error().unwrap().message().to_owned();
    assert!(message.contains("pinned"), "{message}");
    // The refused client goes on, unpinned, and writes still get through.
    c.batch_execute("INSERT INTO items (v) VALUES ('unpinned')")
        .await
        .unwrap();
    drop(a);
    drop(b);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !pgsplit::admin::Status::collect(&proxy.state)
        .pinned
        .values()
        .all(|n| *n == 0)
    {
        assert!(std::time::Instant::now() < deadline, "pins not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.batch_execute("CREATE TEMP TABLE pin_c (x int)")
        .await
        .unwrap();
    proxy.stop().await;
}

#[tokio::test]
async fn session_pooling_takes_the_primary_only_when_needed() {
    let proxy = start_proxy(&one_connection("session").replace("size: 1", "size: 3")).await;
    let readers: Vec<_> = futures_util::future::join_all((0..3).map(|_| app(&proxy))).await;
    for r in &readers {
        let port: i32 = scalar(r, "SELECT inet_server_port()").await;
        assert!(replica_ports().contains(&(port as u16)));
    }
    // Three reading sessions hold no primary connection (they would take
    // all three), so a writer gets one.
    let primary_active = |proxy: &pgsplit::app::Proxy| pool_counts(proxy, "pg1").active;
    assert_eq!(primary_active(&proxy), 0);
    let writer = app(&proxy).await;
    writer
        .batch_execute("INSERT INTO items (v) VALUES ('session mode')")
        .await
        .unwrap();
    assert_eq!(primary_active(&proxy), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn notifications_arriving_while_the_proxy_asks_for_the_wal_position_are_delivered() {
    for mode in MODES {
        notifications_are_delivered_in(mode).await;
    }
}

async fn notifications_are_delivered_in(mode: &str) {
    let proxy = start_proxy(&config_text(&ports(), &format!("pool:\n  mode: {mode}\n"))).await;
    let (listener, mut rx) = listener(&proxy).await;
    listener.batch_execute("LISTEN ryw_events").await.unwrap();
    let sender = direct(primary_port()).await;
    for i in 0..5 {
        // Sent while the listener's write transaction is open: the node
        // delivers it right after that transaction's ReadyForQuery, when
        // the proxy asks the same connection for its WAL position.
        listener.batch_execute("BEGIN").await.unwrap();
        listener
            .batch_execute("INSERT INTO items (v) VALUES ('listener')")
            .await
            .unwrap();
        sender
            .batch_execute(&format!("NOTIFY ryw_events, 'n{i}'"))
            .await
            .unwrap();
        listener.batch_execute("COMMIT").await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("notification n{i} lost"))
            .unwrap();
        assert_eq!(got, format!("n{i}"));
    }
    proxy.stop().await;
}

#[tokio::test]
async fn a_connection_never_given_back_clean_is_not_reused() {
    let proxy = start_proxy(&one_connection("transaction")).await;
    let topology = proxy.state.topology.load_full();
    let node = topology.primary().clone();
    let password = pgsplit::auth::Credential::Password("app".into());
    let pool = proxy
        .state
        .pools
        .pool_for(&node.endpoint(), "app", "app", Some(&password));
    let mut conn = pool.checkout().await.unwrap();
    let first = conn.id();
    conn.simple_command("BEGIN").await.unwrap();
    assert_ne!(conn.status(), pgsplit::protocol::backend::TxnStatus::Idle);
    // Dropped in a transaction, without being released: it must not serve anyone.
    drop(conn);
    let mut conn = pool.checkout().await.unwrap();
    assert_ne!(conn.id(), first);
    assert_eq!(conn.status(), pgsplit::protocol::backend::TxnStatus::Idle);
    let second = conn.id();
    conn.release();
    // Released clean: it is the next one handed out.
    let again = pool.checkout().await.unwrap();
    assert_eq!(again.id(), second);
    proxy.stop().await;
}

/// Read-your-writes in `mode`: each read of a row the session just wrote
/// sees it, and replicas serve such reads once they have replayed (asked
/// at routing time, not at the monitor's next poll).
async fn reads_see_own_writes_and_replicas_serve_them_in(mode: &str) {
    let proxy = start_proxy(&config_text(&ports(), &format!("pool:\n  mode: {mode}\n"))).await;
    let client = app(&proxy).await;
    // Session pooling: the session now keeps a replica connection.
    let first = served_by(&client, "SELECT inet_server_port()").await;
    assert!(replica_ports().contains(&first));
    let mut on_replicas = 0;
    for i in 0..60 {
        let id: i32 = scalar(
            &client,
            &format!("INSERT INTO items (v) VALUES ('ryw-{mode}-{i}') RETURNING id"),
        )
        .await;
        let r = rows(
            &client,
            &format!("SELECT count(*), inet_server_port() FROM items WHERE id = {id}"),
        )
        .await
        .unwrap();
        assert_eq!(
            r[0][0].as_deref(),
            Some("1"),
            "{mode}: read {i} missed its write"
        );
        let port: u16 = r[0][1].as_deref().unwrap().parse().unwrap();
        if replica_ports().contains(&port) {
            on_replicas += 1;
        }
    }
    assert!(
        on_replicas > 0,
        "{mode}: every read after a write went to the primary"
    );
    eprintln!("{mode}: {on_replicas} of 60 reads after a write ran on a replica");
    proxy.stop().await;
}

#[tokio::test]
async fn reads_see_own_writes_and_replicas_serve_them_in_transaction_pooling() {
    reads_see_own_writes_and_replicas_serve_them_in("transaction").await;
}

#[tokio::test]
async fn reads_see_own_writes_and_replicas_serve_them_in_session_pooling() {
    reads_see_own_writes_and_replicas_serve_them_in("session").await;
}
