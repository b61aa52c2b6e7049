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
             CREATE OR REPLACE FUNCTION bump_stable(k text) RETURNS int STABLE LANGUAGE plpgsql
               AS $$ DECLARE r int; BEGIN EXECUTE 'SELECT bump_' || 'behind($1)' INTO r USING k; RETURN r; END $$;
             CREATE UNLOGGED TABLE scratch_u (a int); INSERT INTO scratch_u VALUES (1);
             GRANT ALL ON bumps, scratch_u TO app",
        )
        .await
        .unwrap();
    // The replicas have the functions. A volatile one is unknown or known
    // volatile: the primary's either way. One declared STABLE that writes
    // through it by a name built at run time is not visible in its body:
    // only the replica's refusal tells.
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
        learned >= 4,
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
    // The session's own primary work in between keeps its sequence state
    // (it runs on that same connection while it is idle).
    let id: i32 = scalar(&a, "INSERT INTO items (v) VALUES ('a') RETURNING id").await;
    a.batch_execute("UPDATE items SET v = v WHERE id = -1")
        .await
        .unwrap();
    let current: i32 = scalar(&a, "SELECT currval('items_id_seq')::int").await;
    assert_eq!(current, id);
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
    // A write that calls no nextval, on the connection where another
    // session's nextval ran: that state is not this session's.
    let _theirs: i32 = scalar(&b, "INSERT INTO items (v) VALUES ('b') RETURNING id").await;
    a.batch_execute("UPDATE items SET v = v WHERE id = -1")
        .await
        .unwrap();
    let e = a
        .simple_query("SELECT currval('items_id_seq')")
        .await
        .expect_err("another session's value after a write of this one");
    assert_eq!(code(&e).as_deref(), Some("55000"), "{e:?}");
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

/// Runs `sql` through `client` behind a unique marker comment and returns
/// the ports of the nodes whose own log shows it.
async fn placed(client: &tokio_postgres::Client, marker: &str, sql: &str) -> Vec<u16> {
    let text = format!("/* {marker} */ {sql}");
    client
        .simple_query(&text)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    logged_on(&format!("/* {marker} */"))
}

#[tokio::test]
async fn objects_created_behind_the_proxys_back_are_the_primarys_from_their_first_use() {
    let proxy = start_proxy(&config_text(
        &ports(),
        "routing:\n  read_your_writes: off\n",
    ))
    .await;
    let client = app(&proxy).await;
    // The proxy has read the catalog before any of this exists.
    let _: i32 = scalar(&client, "SELECT 1").await;
    let primary = direct(primary_port()).await;
    // A migration, run directly on the primary.
    primary
        .batch_execute(
            "DROP SCHEMA IF EXISTS mig CASCADE; CREATE SCHEMA mig AUTHORIZATION app;
             SET ROLE app;
             CREATE TABLE mig.calls (k text, port int);
             CREATE FUNCTION mig.bump(k text) RETURNS int LANGUAGE plpgsql
               AS $$ BEGIN INSERT INTO mig.calls VALUES (k, inet_server_port()); RETURN inet_server_port(); END $$;
             CREATE FUNCTION mig.next_ticket() RETURNS int LANGUAGE sql AS $$ SELECT mig.bump('ticket') $$;
             CREATE FUNCTION mig.lock_it(k bigint) RETURNS bool LANGUAGE sql
               AS $$ SELECT pg_try_advisory_xact_lock(k) $$;
             CREATE FUNCTION mig.sneaky(k text) RETURNS int STABLE LANGUAGE sql AS $$ SELECT mig.bump(k) $$;
             CREATE VIEW mig.v_bump AS SELECT mig.bump('view') AS port;
             CREATE UNLOGGED TABLE mig.scratch (a int); INSERT INTO mig.scratch VALUES (1);
             CREATE TABLE mig.b (a int, t tsvector);
             CREATE INDEX mig_b_brin ON mig.b USING brin (a);
             CREATE INDEX mig_b_gin ON mig.b USING gin (t) WITH (fastupdate = on);
             RESET ROLE",
        )
        .await
        .unwrap();
    primary.batch_execute("BEGIN").await.unwrap();
    primary
        .batch_execute(
            "INSERT INTO mig.calls VALUES ('prepared', 0); PREPARE TRANSACTION 'pgsplit-in-doubt'",
        )
        .await
        .unwrap();
    let statements = [
        "SELECT mig.bump('plain')",
        "SELECT * FROM mig.bump('from')",
        "SELECT 1 WHERE mig.bump('where') > 0",
        "SELECT l.p FROM (VALUES (1)) v(a), LATERAL (SELECT mig.bump('lateral') AS p) l",
        "SELECT CASE WHEN true THEN mig.bump('case') END",
        "SELECT Mig.Next_Ticket()",
        "SELECT mig.sneaky('stable')",
        "SELECT * FROM mig.v_bump",
        "SELECT count(*) FROM mig.scratch",
        "SELECT pg_current_wal_lsn()",
        "SELECT pg_current_wal_insert_lsn()",
        "SELECT brin_summarize_new_values('mig.mig_b_brin'::regclass)",
        "SELECT brin_summarize_range('mig.mig_b_brin'::regclass, 0)",
        "SELECT brin_desummarize_range('mig.mig_b_brin'::regclass, 0)",
        "SELECT gin_clean_pending_list('mig.mig_b_gin'::regclass)",
        "SELECT gid FROM pg_prepared_xacts",
        "SELECT count(*) FROM pg_stat_replication",
    ];
    // At once, then again once the proxy has surely read the new catalog
    // (routed by fact then, not as unknown).
    for round in ["first", "known"] {
        if round == "known" {
            caught_up().await;
            knows_function(&proxy, "bump").await;
        }
        for (i, sql) in statements.iter().enumerate() {
            let marker = format!("placement-{round}-{i}");
            assert_eq!(
                placed(&client, &marker, sql).await,
                vec![primary_port()],
                "{round}: {sql}\n{}",
                proxy.state.router.load().explain(sql)
            );
        }
        // Through search_path, unqualified.
        client
            .batch_execute("SET search_path = mig, public")
            .await
            .unwrap();
        let marker = format!("placement-{round}-path");
        assert_eq!(
            placed(&client, &marker, "SELECT bump('path')").await,
            vec![primary_port()]
        );
        client.batch_execute("RESET search_path").await.unwrap();
        // An advisory lock a user function takes is held on the primary.
        client.batch_execute("BEGIN").await.unwrap();
        let locked: String = scalar(&client, "SELECT mig.lock_it(4242)").await;
        assert_eq!(locked, "t");
        let held: i64 = primary
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND granted",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(held, 1, "{round}: the lock is the primary's");
        client.batch_execute("COMMIT").await.unwrap();
    }
    // The answers are the primary's: in-doubt transactions, standbys.
    let gids = rows(&client, "SELECT gid FROM pg_prepared_xacts")
        .await
        .unwrap();
    assert!(
        gids.iter()
            .any(|r| r[0].as_deref() == Some("pgsplit-in-doubt"))
    );
    let streaming: i64 = scalar(&client, "SELECT count(*) FROM pg_stat_replication").await;
    assert_eq!(streaming, 2);
    // Every call of bump ran on the primary, once per statement.
    let ports: Vec<i32> = primary
        .query("SELECT port FROM mig.calls WHERE k <> 'prepared'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ports.len(), 2 * 9, "{ports:?}");
    assert!(ports.iter().all(|p| *p as u16 == primary_port()));
    // Plain reads still go to replicas.
    for i in 0..4 {
        let marker = format!("placement-read-{i}");
        let on = placed(&client, &marker, "SELECT v FROM items WHERE id = 1").await;
        assert_eq!(on.len(), 1);
        assert!(
            replica_ports().contains(&on[0]),
            "{on:?} {}\n{:?}",
            proxy
                .state
                .router
                .load()
                .explain("SELECT v FROM items WHERE id = 1"),
            proxy.state.pins
        );
    }
    primary
        .batch_execute("ROLLBACK PREPARED 'pgsplit-in-doubt'")
        .await
        .unwrap();
    primary
        .batch_execute("DROP SCHEMA mig CASCADE")
        .await
        .unwrap();
    proxy.stop().await;
}

/// Runs `pgsplit` with `args` and returns its standard output (without
/// blocking the runtime the proxy under test runs on).
async fn pgsplit_cli(args: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsplit"))
        .args(args)
        .output()
        .await
        .expect("running pgsplit");
    assert!(
        out.status.success(),
        "pgsplit {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn explain_shows_the_route_the_reason_and_the_facts() {
    let proxy = start_proxy(&config_text(&ports(), "admin:\n  listen: 127.0.0.1:0\n")).await;
    let client = app(&proxy).await;
    let _: i32 = scalar(&client, "SELECT 1").await;
    let primary = direct(primary_port()).await;
    primary
        .batch_execute(
            "DROP SCHEMA IF EXISTS expl CASCADE; CREATE SCHEMA expl;
             CREATE FUNCTION expl.pure(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1';
             CREATE UNLOGGED TABLE expl.cache (a int)",
        )
        .await
        .unwrap();
    let url = format!("http://{}", proxy.admin_addr.unwrap());
    // The running proxy: a function it has not read yet is unknown...
    let fresh = "SELECT expl.brand_new_fn(1)";
    let out = pgsplit_cli(&["explain", "--admin", &url, fresh]).await;
    assert!(out.contains("route:   primary"), "{out}");
    assert!(out.contains("reason:  unknown"), "{out}");
    assert!(
        out.contains("function expl.brand_new_fn -> unknown"),
        "{out}"
    );
    // ...and what it has read is judged by fact.
    knows_function(&proxy, "pure").await;
    let out = pgsplit_cli(&[
        "explain",
        "--admin",
        &url,
        "SELECT expl.pure(a), now() FROM items",
    ])
    .await;
    assert!(out.contains("route:   replica"), "{out}");
    assert!(out.contains("function expl.pure -> safe"), "{out}");
    assert!(out.contains("function now -> safe"), "{out}");
    assert!(out.contains("relation items -> safe"), "{out}");
    // Without a proxy: the catalog read from the primary with the file's
    // login.
    let file = std::env::temp_dir().join(format!("pgsplit-explain-{}.yaml", std::process::id()));
    std::fs::write(&file, config_text(&ports(), "")).unwrap();
    let out = pgsplit_cli(&[
        "-c",
        file.to_str().unwrap(),
        "explain",
        "--database",
        "app",
        "SELECT count(*) FROM expl.cache",
    ])
    .await;
    assert!(out.contains("route:   primary"), "{out}");
    assert!(out.contains("reason:  primary_relation"), "{out}");
    assert!(out.contains("relation expl.cache -> unlogged"), "{out}");
    let json = pgsplit_cli(&[
        "-c",
        file.to_str().unwrap(),
        "explain",
        "--database",
        "app",
        "--json",
        "SELECT pg_current_wal_lsn()",
    ])
    .await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["target"], "primary");
    assert_eq!(v["reason"], "function");
    assert_eq!(v["seen"][0]["fact"], "primary_only");
    std::fs::remove_file(&file).unwrap();
    primary
        .batch_execute("DROP SCHEMA expl CASCADE")
        .await
        .unwrap();
    proxy.stop().await;
}
