//! Routing when the schema changes behind the proxy: objects created
//! directly on the primary after the proxy started (as migrations do),
//! used through the proxy at once. Where each statement ran is read from
//! the nodes themselves (`inet_server_port()` written by the statement, on
//! the primary).

use crate::harness::*;

/// `pgsplit_routing_decisions_total{target, reason}` now.
fn decisions(proxy: &pgsplit::app::Proxy, target: &str, reason: &str) -> u64 {
    let want =
        format!("pgsplit_routing_decisions_total{{reason=\"{reason}\",target=\"{target}\"}} ");
    proxy
        .state
        .metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&want).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0)
}

#[tokio::test]
async fn a_replicas_refusal_as_a_standby_is_retried_on_the_primary_and_remembered() {
    // Read-your-writes off: every read here is meant to reach a replica
    // first, whatever this session wrote before.
    let proxy = start_proxy(&config_text(
        &ports(),
        "routing:\n  read_your_writes: off\n",
    ))
    .await;
    let client = app(&proxy).await;
    let primary = direct(primary_port()).await;
    primary
        .batch_execute(
            "DROP TABLE IF EXISTS bumps; DROP TABLE IF EXISTS scratch_u;
             CREATE TABLE bumps (k text, port int);
             CREATE OR REPLACE FUNCTION bump_behind(k text) RETURNS int LANGUAGE plpgsql
               AS $$ BEGIN INSERT INTO bumps VALUES (k, inet_server_port()); RETURN inet_server_port(); END $$;
             CREATE OR REPLACE FUNCTION bump_stable(k text) RETURNS int STABLE LANGUAGE sql
               AS $$ SELECT bump_behind(k) $$;
             CREATE UNLOGGED TABLE scratch_u (a int); INSERT INTO scratch_u VALUES (1);
             GRANT ALL ON bumps, scratch_u TO app",
        )
        .await
        .unwrap();
    // The replicas have the functions. A volatile one may or may not be
    // in the proxy's catalog yet; one declared STABLE that writes through
    // it never is: only the replica's refusal tells.
    caught_up().await;
    for i in 0..3 {
        let port: i32 = scalar(&client, &format!("SELECT bump_behind('simple{i}')")).await;
        assert_eq!(port as u16, primary_port());
        let port: i32 = scalar(&client, &format!("SELECT bump_stable('stable{i}')")).await;
        assert_eq!(port as u16, primary_port());
    }
    let statement = client.prepare("SELECT bump_stable($1)").await.unwrap();
    for i in 0..3 {
        let port: i32 = client
            .query_one(&statement, &[&format!("prepared{i}")])
            .await
            .unwrap()
            .get(0);
        assert_eq!(port as u16, primary_port());
    }
    // Built-ins only a primary can answer, and an unlogged table.
    for _ in 0..2 {
        let lsn: String = scalar(&client, "SELECT pg_current_wal_lsn()::text").await;
        assert!(lsn.contains('/'), "{lsn}");
        let n: i64 = scalar(&client, "SELECT count(*) FROM scratch_u").await;
        assert_eq!(n, 1);
    }
    // Every call ran once, on the primary, as the node itself recorded.
    let rows = primary
        .query("SELECT k, port FROM bumps ORDER BY k", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 9, "each call ran exactly once");
    for row in &rows {
        assert_eq!(row.get::<_, i32>(1) as u16, primary_port());
    }
    // Learned: later calls went to the primary directly.
    let learned = decisions(&proxy, "primary", "standby_refused");
    assert!(
        learned >= 6,
        "{learned}: {}",
        proxy
            .state
            .metrics
            .encode()
            .lines()
            .filter(|l| l.contains("decisions") && !l.ends_with(" 0"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    primary
        .batch_execute(
            "DROP TABLE bumps; DROP TABLE scratch_u; DROP FUNCTION bump_stable(text); \
             DROP FUNCTION bump_behind(text)",
        )
        .await
        .unwrap();
    proxy.stop().await;
}

#[tokio::test]
async fn currval_and_lastval_are_this_sessions_or_an_error_never_anothers() {
    let extra = "pool:\n  size: 1\n  checkout_timeout: 5s\n";
    let proxy = start_proxy(&config_text(&ports(), extra)).await;
    let a = app(&proxy).await;
    let b = app(&proxy).await;
    // Right after its own nextval, on the connection it ran on.
    for _ in 0..3 {
        let id: i32 = scalar(&a, "INSERT INTO items (v) VALUES ('a') RETURNING id").await;
        let current: i32 = scalar(&a, "SELECT currval('items_id_seq')::int").await;
        assert_eq!(current, id);
        let last: i32 = scalar(&a, "SELECT lastval()::int").await;
        assert_eq!(last, id);
    }
    // Another session used that connection since: an error, not its value.
    let _: i32 = scalar(&a, "INSERT INTO items (v) VALUES ('a') RETURNING id").await;
    let theirs: i32 = scalar(&b, "INSERT INTO items (v) VALUES ('b') RETURNING id").await;
    let e = a
        .simple_query("SELECT currval('items_id_seq')")
        .await
        .expect_err("another session's value");
    assert_eq!(code(&e).as_deref(), Some("55000"), "{e:?}");
    let e = a
        .simple_query("SELECT lastval()")
        .await
        .expect_err("lastval");
    assert_eq!(code(&e).as_deref(), Some("55000"));
    // A session that never called nextval, on a connection another used.
    let c = app(&proxy).await;
    let e = c
        .simple_query("SELECT currval('items_id_seq')")
        .await
        .expect_err("never called nextval");
    assert_eq!(code(&e).as_deref(), Some("55000"));
    // In one batch, or in a transaction, it is the session's own.
    let rows = rows(
        &b,
        "INSERT INTO items (v) VALUES ('b2'); SELECT currval('items_id_seq')::int",
    )
    .await
    .unwrap();
    assert!(rows[0][0].as_deref().unwrap().parse::<i32>().unwrap() > theirs);
    proxy.stop().await;
}

#[tokio::test]
async fn views_of_the_nodes_own_state_are_the_primarys() {
    let proxy = default_proxy().await;
    let client = app(&proxy).await;
    // A replica would answer 0: it streams to nobody.
    let streaming: i64 = scalar(&client, "SELECT count(*) FROM pg_stat_replication").await;
    assert_eq!(streaming, 2);
    let port: i32 = scalar(
        &client,
        "SELECT inet_server_port() FROM pg_stat_activity WHERE pid = pg_backend_pid()",
    )
    .await;
    assert_eq!(port as u16, primary_port());
    // A hint asks for a replica's own view.
    let there: i64 = scalar(
        &client,
        "/* pgsplit:replica */ SELECT count(*) FROM pg_stat_replication",
    )
    .await;
    assert_eq!(there, 0);
    proxy.stop().await;
}
