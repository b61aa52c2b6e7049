//! The routing table: statement in, route and reason out.

use super::*;

use Reason::*;

const P: Target = Target::Primary;
const R: Target = Target::Replica;

/// (sql, target, reason, pins)
const TABLE: &[(&str, Target, Reason, bool)] = &[
    // plain reads
    ("SELECT 1", R, Read, false),
    ("select * from users", R, Read, false),
    ("SeLeCt id FROM users WHERE id = $1", R, Read, false),
    ("SELECT inet_server_port()", R, Read, false),
    (
        "SELECT count(*) FROM orders o JOIN users u ON u.id = o.user_id GROUP BY u.id",
        R,
        Read,
        false,
    ),
    (
        "SELECT * FROM t WHERE a IN (SELECT b FROM u WHERE c > 3)",
        R,
        Read,
        false,
    ),
    (
        "SELECT * FROM t ORDER BY a DESC LIMIT 10 OFFSET 20",
        R,
        Read,
        false,
    ),
    (
        "SELECT DISTINCT ON (a) a, b FROM t ORDER BY a, b",
        R,
        Read,
        false,
    ),
    ("SELECT a::text, b::int[] FROM t", R, Read, false),
    (
        "SELECT data->>'name', data#>>'{a,b}' FROM docs WHERE data @> '{\"x\":1}'",
        R,
        Read,
        false,
    ),
    (
        "SELECT data ? 'k', data ?| array['a'], data ?& array['b'] FROM docs",
        R,
        Read,
        false,
    ),
    ("SELECT arr[1:2], arr[:2] FROM t", R, Read, false),
    (
        "SELECT E'a\\nb', U&'d\\0061t\\+000061', $$dollar 'quoted'$$",
        R,
        Read,
        false,
    ),
    (
        "SELECT now(), random(), clock_timestamp(), gen_random_uuid()",
        R,
        Read,
        false,
    ),
    ("SELECT pg_sleep(0.1)", R, Read, false),
    // Volatile built-ins go to the primary: these answer about the node.
    (
        "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()",
        P,
        Function,
        false,
    ),
    ("WITH x AS (SELECT 1 AS a) SELECT * FROM x", R, Read, false),
    (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM r WHERE n < 5) SELECT * FROM r",
        R,
        Read,
        false,
    ),
    ("SELECT 1 UNION SELECT 2 EXCEPT SELECT 3", R, Read, false),
    ("VALUES (1, 'a'), (2, 'b')", R, Read, false),
    ("(SELECT 1)", R, Read, false),
    ("SELECT * FROM generate_series(1, 10)", R, Read, false),
    (
        "SELECT * FROM t1, LATERAL (SELECT * FROM t2 WHERE t2.a = t1.a) s",
        R,
        Read,
        false,
    ),
    (
        "SELECT a, rank() OVER (PARTITION BY b ORDER BY c) FROM t",
        R,
        Read,
        false,
    ),
    (
        "SELECT CASE WHEN a > 1 THEN 'x' ELSE 'y' END FROM t",
        R,
        Read,
        false,
    ),
    (
        "SELECT coalesce(a, b), nullif(c, 0), greatest(1, 2) FROM t",
        R,
        Read,
        false,
    ),
    (
        "SELECT * FROM t WHERE ts > now() - interval '1 day'",
        R,
        Read,
        false,
    ),
    ("SELECT 1; SELECT 2", R, Read, false),
    ("SELECT 1;", R, Read, false),
    ("", R, Read, false),
    (";", R, Read, false),
    ("  \n\t SELECT 1", R, Read, false),
    ("/* app=web */ SELECT 1", R, Read, false),
    ("-- a comment\nSELECT 1", R, Read, false),
    ("/* a /* nested */ comment */ SELECT 1", R, Read, false),
    ("SELECT 1 /* trailing pgsplit:primary */", R, Read, false),
    ("SELECT '/* pgsplit:primary */'", R, Read, false),
    ("SELECT 'insert into t values (1)'", R, Read, false),
    ("SELECT 'a;b'", R, Read, false),
    ("SELECT upper(lower(trim(name))) FROM users", R, Read, false),
    ("SELECT exists(SELECT 1 FROM t WHERE a = 1)", R, Read, false),
    ("SELECT * FROM t TABLESAMPLE SYSTEM (10)", R, Read, false),
    ("SELECT row_to_json(t) FROM t", R, Read, false),
    ("SELECT string_agg(a, ',') FROM t", R, Read, false),
    ("SELECT * FROM pg_stat_activity", P, NodeState, false),
    ("SELECT version()", R, Read, false),
    ("SELECT current_setting('search_path')", R, Read, false),
    // Unknown functions: the primary, whatever their name looks like.
    ("SELECT set_config_x(1)", P, Unknown, false),
    ("SELECT my_func(1)", P, Unknown, false),
    ("SELECT schema1.nextval_like('x')", P, Unknown, false),
    ("SELECT App.Next_Ticket()", P, Unknown, false),
    ("SELECT * FROM app.bump('x')", P, Unknown, false),
    ("SELECT a FROM t WHERE b = app.bump(a)", P, Unknown, false),
    (
        "SELECT * FROM t, LATERAL (SELECT app.bump(t.a)) x",
        P,
        Unknown,
        false,
    ),
    (
        "SELECT CASE WHEN a > 0 THEN bump(a) ELSE 0 END FROM t",
        P,
        Unknown,
        false,
    ),
    ("SELECT \"Lookup\"(1)", P, Unknown, false),
    // Known user functions: by their volatility.
    ("SELECT lookup(1)", R, Read, false),
    ("SELECT public.lookup(1)", R, Read, false),
    ("SELECT LOOKUP(a) FROM t", R, Read, false),
    ("SELECT public.audit_log(1)", P, Function, false),
    ("SELECT other_schema.lookup(1)", P, Unknown, false),
    // Built-ins by their catalog volatility.
    ("SELECT pg_current_wal_lsn()", P, Function, false),
    ("SELECT pg_current_wal_insert_lsn()", P, Function, false),
    (
        "SELECT brin_summarize_new_values('i'::regclass)",
        P,
        Function,
        false,
    ),
    (
        "SELECT brin_summarize_range('i'::regclass, 0)",
        P,
        Function,
        false,
    ),
    (
        "SELECT brin_desummarize_range('i'::regclass, 0)",
        P,
        Function,
        false,
    ),
    (
        "SELECT gin_clean_pending_list('i'::regclass)",
        P,
        Function,
        false,
    ),
    ("SELECT pg_catalog.pg_current_wal_lsn()", P, Function, false),
    ("SELECT lo_get(1234)", P, Function, false),
    (
        "SELECT random(), clock_timestamp(), gen_random_uuid()",
        R,
        Read,
        false,
    ),
    ("SELECT pg_sleep(0.1), timeofday()", R, Read, false),
    (
        "SELECT pg_catalog.now(), CURRENT_TIMESTAMP, current_user",
        R,
        Read,
        false,
    ),
    (
        "SELECT COALESCE(a, 1), NULLIF(b, 2), GREATEST(1, 2), LEAST(3, 4) FROM t",
        R,
        Read,
        false,
    ),
    (
        "SELECT CAST(a AS numeric(10, 2)), b::varchar(3) FROM t WHERE c IN (1, 2)",
        R,
        Read,
        false,
    ),
    ("SELECT * FROM (VALUES (1, 2)) AS v(a, b)", R, Read, false),
    // Relations by their catalog facts; one no catalog holds is unknown.
    ("SELECT * FROM scratch", P, PrimaryRelation, false),
    (
        "SELECT count(*) FROM public.scratch s WHERE s.a > 1",
        P,
        PrimaryRelation,
        false,
    ),
    (
        "SELECT a FROM t JOIN scratch ON true",
        P,
        PrimaryRelation,
        false,
    ),
    ("SELECT * FROM v_audit", P, PrimaryRelation, false),
    ("SELECT * FROM brand_new_table", P, Unknown, false),
    ("SELECT * FROM t, brand_new_table", P, Unknown, false),
    ("SELECT * FROM app.brand_new_table", P, Unknown, false),
    (
        "SELECT * FROM t WHERE a IN (SELECT b FROM brand_new)",
        P,
        Unknown,
        false,
    ),
    ("SELECT * FROM app.t", R, Read, false),
    (
        "WITH fresh AS (SELECT 1 AS a) SELECT a FROM fresh",
        R,
        Read,
        false,
    ),
    (
        "SELECT * FROM generate_series(1, 3) AS g(n)",
        R,
        Read,
        false,
    ),
    ("SELECT extract(year FROM now()), a FROM t", R, Read, false),
    ("SELECT a FROM t FETCH FIRST 5 ROWS ONLY", R, Read, false),
    // SHOW and EXPLAIN
    ("SHOW search_path", R, Read, false),
    ("SHOW ALL", R, Read, false),
    ("show transaction_isolation", R, Read, false),
    ("EXPLAIN SELECT * FROM t", R, Read, false),
    ("EXPLAIN UPDATE t SET a = 1", R, Read, false),
    ("EXPLAIN (FORMAT JSON) SELECT 1", R, Read, false),
    ("EXPLAIN ANALYZE SELECT * FROM t", R, Read, false),
    ("EXPLAIN ANALYZE UPDATE t SET a = 1", P, Write, false),
    (
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) DELETE FROM t",
        P,
        Write,
        false,
    ),
    ("EXPLAIN (ANALYZE) SELECT nextval('s')", P, Function, false),
    (
        "EXPLAIN (ANALYZE false) INSERT INTO t VALUES (1)",
        R,
        Read,
        false,
    ),
    // COPY
    ("COPY t TO STDOUT", R, Read, false),
    (
        "COPY t (a, b) TO STDOUT WITH (FORMAT csv, HEADER)",
        R,
        Read,
        false,
    ),
    (
        "COPY (SELECT * FROM t WHERE a > 1) TO STDOUT",
        R,
        Read,
        false,
    ),
    ("COPY (SELECT nextval('s')) TO STDOUT", P, Function, false),
    ("COPY t FROM STDIN", P, Write, false),
    ("COPY t FROM STDIN WITH (FORMAT binary)", P, Write, false),
    ("COPY t TO '/tmp/t.csv'", P, Write, false),
    // writes, fast path
    ("INSERT INTO t VALUES (1)", P, Write, false),
    ("insert into t (a) select a from u", P, Write, false),
    (
        "  -- leading\n  UPDATE t SET a = a + 1 WHERE id = 3",
        P,
        Write,
        false,
    ),
    ("/* pgsplit:replica */ DELETE FROM t", P, Write, false),
    ("DELETE FROM t USING u WHERE t.a = u.a", P, Write, false),
    (
        "UPDATE t SET a = u.a FROM u WHERE t.id = u.id",
        P,
        Write,
        false,
    ),
    (
        "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = excluded.a",
        P,
        Write,
        false,
    ),
    ("INSERT INTO t VALUES (1) RETURNING id", P, Write, false),
    (
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a",
        P,
        Write,
        false,
    ),
    ("TRUNCATE t", P, Write, false),
    ("CREATE TABLE t (id int primary key)", P, Write, false),
    ("CREATE INDEX CONCURRENTLY i ON t (a)", P, Write, false),
    ("CREATE VIEW v AS SELECT 1", P, Write, false),
    ("CREATE MATERIALIZED VIEW mv AS SELECT 1", P, Write, false),
    (
        "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql",
        P,
        Write,
        false,
    ),
    ("CREATE EXTENSION pgcrypto", P, Write, false),
    ("CREATE SEQUENCE s", P, Write, false),
    ("CREATE SCHEMA s", P, Write, false),
    ("CREATE ROLE r LOGIN", P, Write, false),
    ("CREATE UNLOGGED TABLE u (a int)", P, Write, false),
    ("ALTER TABLE t ADD COLUMN b int", P, Write, false),
    ("DROP TABLE IF EXISTS t CASCADE", P, Write, false),
    ("COMMENT ON TABLE t IS 'x'", P, Write, false),
    ("GRANT SELECT ON t TO r", P, Write, false),
    ("REVOKE SELECT ON t FROM r", P, Write, false),
    ("REFRESH MATERIALIZED VIEW mv", P, Write, false),
    ("VACUUM FULL t", P, Write, false),
    ("VACUUM (VERBOSE, ANALYZE) t", P, Write, false),
    ("ANALYZE t", P, Write, false),
    ("REINDEX TABLE t", P, Write, false),
    ("CLUSTER t USING i", P, Write, false),
    ("CHECKPOINT", P, Write, false),
    ("DO $$ BEGIN PERFORM 1; END $$", P, Write, false),
    (
        "DO LANGUAGE plpgsql $b$ BEGIN NULL; END $b$",
        P,
        Write,
        false,
    ),
    ("CALL proc(1)", P, Write, false),
    ("SECURITY LABEL ON TABLE t IS 'x'", P, Write, false),
    ("INSERT INTO t VALUES (1); SELECT 1", P, Write, false),
    ("SELECT 1; INSERT INTO t VALUES (1)", P, Write, false),
    ("SELECT 1; UPDATE t SET a = 1; SELECT 2", P, Write, false),
    // writing CTEs and SELECT INTO
    (
        "WITH x AS (INSERT INTO t VALUES (1) RETURNING id) SELECT * FROM x",
        P,
        Write,
        false,
    ),
    (
        "WITH x AS (UPDATE t SET a = 1 RETURNING id) SELECT count(*) FROM x",
        P,
        Write,
        false,
    ),
    (
        "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
        P,
        Write,
        false,
    ),
    (
        "WITH a AS (SELECT 1), b AS (INSERT INTO t SELECT * FROM a RETURNING 1) SELECT * FROM b",
        P,
        Write,
        false,
    ),
    (
        "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
        P,
        Write,
        false,
    ),
    ("SELECT * INTO newtable FROM t", P, Write, false),
    ("SELECT * INTO TEMP tmp FROM t", P, Session, true),
    // locks
    ("SELECT * FROM t FOR UPDATE", P, Lock, false),
    ("SELECT * FROM t WHERE id = 1 FOR SHARE", P, Lock, false),
    ("SELECT * FROM t FOR UPDATE OF t NOWAIT", P, Lock, false),
    ("SELECT * FROM t FOR UPDATE SKIP LOCKED", P, Lock, false),
    ("SELECT * FROM t FOR NO KEY UPDATE", P, ParseError, false),
    ("SELECT * FROM t FOR KEY SHARE", P, ParseError, false),
    (
        "select * from t for no key update skip locked",
        P,
        ParseError,
        false,
    ),
    (
        "SELECT * FROM (SELECT * FROM t FOR UPDATE) s",
        P,
        Lock,
        false,
    ),
    (
        "LOCK TABLE t IN ACCESS EXCLUSIVE MODE NOWAIT",
        P,
        Lock,
        false,
    ),
    ("lock t", P, Lock, false),
    // functions with side effects anywhere in the tree
    ("SELECT nextval('s')", P, Function, false),
    ("SELECT NEXTVAL('s')", P, Function, false),
    ("SELECT pg_catalog.nextval('s')", P, Function, false),
    ("SELECT setval('s', 10)", P, Function, false),
    ("SELECT currval('s')", P, Function, false),
    ("SELECT lastval()", P, Function, false),
    ("SELECT id, nextval('s') FROM t", P, Function, false),
    (
        "SELECT * FROM t WHERE id = coalesce(nextval('s'), 1)",
        P,
        Function,
        false,
    ),
    (
        "SELECT * FROM t WHERE id IN (SELECT a FROM u WHERE b = abs(nextval('s')))",
        P,
        Function,
        false,
    ),
    (
        "SELECT CASE WHEN x THEN upper(lower(setval('s', 1)::text)) END FROM t",
        P,
        Function,
        false,
    ),
    ("SELECT * FROM t ORDER BY nextval('s')", P, Function, false),
    (
        "SELECT array_agg(x) FILTER (WHERE nextval('s') > 0) FROM t",
        P,
        Function,
        false,
    ),
    (
        "WITH x AS (SELECT nextval('s')) SELECT * FROM x",
        P,
        Function,
        false,
    ),
    ("SELECT 1 UNION SELECT nextval('s')", P, Function, false),
    ("SELECT * FROM nextval('s')", P, Function, false),
    ("SELECT pg_notify('ch', 'msg')", P, Function, false),
    ("SELECT txid_current()", P, Function, false),
    ("SELECT pg_current_xact_id()", P, Function, false),
    ("SELECT lo_create(0)", P, Function, false),
    ("SELECT lo_import('/tmp/x')", P, Function, false),
    ("SELECT lo_unlink(1234)", P, Function, false),
    ("SELECT pg_advisory_xact_lock(1)", P, Function, false),
    ("SELECT pg_try_advisory_xact_lock(1)", P, Function, false),
    ("SELECT pg_advisory_unlock(1)", P, Function, false),
    ("SELECT pg_advisory_lock(1)", P, Function, true),
    ("SELECT pg_try_advisory_lock(1, 2)", P, Function, true),
    ("SELECT pg_terminate_backend(123)", P, Function, false),
    (
        "SELECT pg_create_logical_replication_slot('s', 'pgoutput')",
        P,
        Function,
        false,
    ),
    (
        "SELECT set_config('search_path', 'a', true)",
        P,
        Function,
        false,
    ),
    (
        "SELECT set_config('search_path', 'a', false)",
        P,
        Function,
        false,
    ),
    ("SELECT audit_log('x')", P, Function, false),
    ("SELECT public.Audit_Log('x')", P, Function, false),
    // transactions
    ("BEGIN", P, Transaction, false),
    ("begin;", P, Transaction, false),
    ("BEGIN TRANSACTION", P, Transaction, false),
    ("START TRANSACTION", P, Transaction, false),
    ("BEGIN READ WRITE", P, Transaction, false),
    ("BEGIN READ ONLY", R, ReadOnlyTransaction, false),
    ("begin transaction read only", R, ReadOnlyTransaction, false),
    ("START TRANSACTION READ ONLY", R, ReadOnlyTransaction, false),
    (
        "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        R,
        ReadOnlyTransaction,
        false,
    ),
    (
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
        P,
        Transaction,
        false,
    ),
    (
        "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
        P,
        ParseError,
        false,
    ),
    (
        "BEGIN READ ONLY; SELECT 1; COMMIT",
        R,
        ReadOnlyTransaction,
        false,
    ),
    ("BEGIN; SELECT 1; COMMIT", P, Transaction, false),
    (
        "BEGIN READ ONLY; INSERT INTO t VALUES (1); COMMIT",
        P,
        Write,
        false,
    ),
    ("COMMIT", P, Transaction, false),
    ("END", P, Transaction, false),
    ("ROLLBACK", P, Transaction, false),
    ("ABORT", P, Transaction, false),
    ("SAVEPOINT sp1", P, Transaction, false),
    ("RELEASE sp1", P, Transaction, false),
    ("ROLLBACK TO SAVEPOINT sp1", P, Transaction, false),
    (
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        P,
        Transaction,
        false,
    ),
    ("PREPARE TRANSACTION 'gid'", P, ParseError, false),
    ("COMMIT PREPARED 'gid'", P, Transaction, false),
    // session state
    ("SET search_path TO app, public", P, Session, false),
    ("set statement_timeout = 1000", P, Session, false),
    ("SET SESSION timezone = 'UTC'", P, Session, false),
    ("SET LOCAL statement_timeout = 5", P, Session, false),
    ("SET ROLE admin", P, Session, false),
    ("SET SESSION AUTHORIZATION 'bob'", P, Session, false),
    ("SET TIME ZONE 'UTC'", P, Session, false),
    ("RESET search_path", P, Session, false),
    ("RESET ALL", P, Session, false),
    ("DISCARD ALL", P, Session, false),
    ("LISTEN ch", P, Session, true),
    ("UNLISTEN *", P, Session, false),
    ("NOTIFY ch, 'x'", P, Session, false),
    ("CREATE TEMP TABLE tmp (a int)", P, Session, true),
    ("CREATE TEMPORARY TABLE tmp AS SELECT 1", P, Session, true),
    ("PREPARE q (int) AS SELECT $1", P, Session, true),
    ("EXECUTE q (1)", P, Write, false),
    ("DEALLOCATE q", P, Session, false),
    ("DEALLOCATE ALL", P, Session, false),
    ("DECLARE c CURSOR FOR SELECT 1", P, Session, false),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", P, Session, true),
    ("FETCH 10 FROM c", P, Session, false),
    ("CLOSE c", P, Session, false),
    ("SELECT 1; LISTEN ch", P, Session, true),
    // unparsable or unknown
    ("TABLE users", P, ParseError, false),
    ("SELEC 1", P, ParseError, false),
    ("garbage ~~~ )))", P, ParseError, false),
    ("SELECT (((", P, ParseError, false),
    ("SELECT 'unterminated", P, ParseError, false),
    ("/* unterminated comment SELECT 1", P, ParseError, false),
    // hints
    ("/* pgsplit:primary */ SELECT 1", P, Hint, false),
    ("-- pgsplit:primary\nSELECT * FROM t", P, Hint, false),
    ("/* pgsplit:replica */ TABLE users", R, Hint, false),
    (
        "/* pgsplit:replica */ SELECT my_volatile(1), nextval('s')",
        R,
        Hint,
        false,
    ),
    (
        "/* pgsplit:replica */ SELECT * FROM t FOR UPDATE",
        P,
        Lock,
        false,
    ),
    (
        "/* pgsplit:replica */ SET search_path = a",
        P,
        Session,
        false,
    ),
    ("/* pgsplit:replica */ BEGIN", P, Transaction, false),
    (
        "/* controller:users,action:index */ /* pgsplit:replica */ SELECT 1",
        R,
        Hint,
        false,
    ),
];

/// What the tests' router knows: PostgreSQL 15's built-ins, the volatile
/// user function `audit_log` and the stable `lookup`.
fn known() -> Knowledge {
    Knowledge::new(&["audit_log".to_owned()], Arc::new(facts::tests::sample()))
}

fn router() -> Router {
    Router::new(known(), 1 << 20, None)
}

#[test]
fn routing_table() {
    let router = router();
    let mut failures = Vec::new();
    for &(sql, target, reason, pins) in TABLE {
        // twice: the second answer comes from the cache
        for _ in 0..2 {
            let got = router.classify(sql);
            let want = Route {
                target,
                reason,
                pins,
                dirties: got.dirties,
            };
            if got != want {
                failures.push(format!("{sql:?}: got {got:?}, want {want:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} misroutes:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(TABLE.len() >= 150, "the table has {} rows", TABLE.len());
}

#[test]
fn the_select_scan_agrees_with_the_parser_wherever_it_answers() {
    let known = known();
    let mut answered = 0;
    for &(sql, ..) in TABLE {
        if let Some(fast) = select::plain_select(sql, &known) {
            answered += 1;
            assert_eq!(
                fast,
                classify::parsed(sql, &known),
                "the scan and the parser disagree on {sql:?}"
            );
        }
    }
    assert!(answered >= 20, "only {answered} table rows took the scan");
}

#[test]
fn deep_nesting_parses_or_goes_to_the_primary() {
    let router = router();
    let deep = format!("SELECT {}1{}", "(".repeat(200), ")".repeat(200));
    assert_eq!(router.classify(&deep), Route::replica(Read));
    let deeper = format!(
        "SELECT {}nextval('s'){}",
        "abs(".repeat(150),
        ")".repeat(150)
    );
    assert_eq!(router.classify(&deeper).target, Target::Primary);
    // Too deep for the parser: a plain read is still a read (the token
    // scan needs no recursion); one that calls nextval goes to the primary.
    let absurd = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
    assert_eq!(router.classify(&absurd), Route::replica(Read));
    let absurd_write = format!(
        "SELECT {}nextval('s'){}",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    assert_eq!(router.classify(&absurd_write).target, Target::Primary);
}

#[test]
fn a_write_never_goes_to_a_replica_whatever_the_comments() {
    let router = router();
    for prefix in [
        "",
        "/* pgsplit:replica */ ",
        "-- pgsplit:replica\n",
        "/* x */ -- y\n",
    ] {
        for write in [
            "INSERT INTO t VALUES (1)",
            "WITH x AS (DELETE FROM t RETURNING 1) SELECT 1",
            "SELECT 1; UPDATE t SET a = 1",
            "CREATE TABLE z (a int)",
        ] {
            let sql = format!("{prefix}{write}");
            assert_eq!(router.classify(&sql).target, Target::Primary, "{sql}");
        }
    }
}

#[test]
fn a_threads_last_answer_is_its_routers_and_follows_a_learned_refusal() {
    let a = router();
    let b = router();
    let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 1";
    // Cached, then the thread's last answer, for other literals too.
    for aid in 1..4 {
        let text = sql.replace("= 1", &format!("= {aid}"));
        let (route, cached) = a.classify_cached(&text);
        assert_eq!(route.target, Target::Replica, "{text}");
        assert_eq!(cached, aid > 1, "{text}");
    }
    // Another router (rebuilt from new facts) does not take a's answer.
    assert!(!b.classify_cached(sql).1);
    // A refusal learned in place is seen at once by the thread that had
    // the old answer as its last.
    assert!(a.classify_cached(sql).1);
    assert!(a.mark_standby_refused(sql));
    let (route, cached) = a.classify_cached(sql);
    assert_eq!(
        (route.target, route.reason, cached),
        (Target::Primary, StandbyRefused, true)
    );
    let (route, _) = a.classify_cached(&sql.replace("= 1", "= 9"));
    assert_eq!(route.reason, StandbyRefused);
    // The same text again (a driver's unnamed Parse) is answered by its
    // text alone, and still follows what the router learns.
    let c = router();
    let repeated = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
    let first = c.classify_cached(repeated);
    assert_eq!((first.0.target, first.1), (Target::Replica, false));
    assert_eq!(c.classify_cached(repeated), (first.0, true));
    assert!(c.mark_standby_refused(repeated));
    assert_eq!(c.classify_cached(repeated).0.reason, StandbyRefused);
    assert!(!b.classify_cached(repeated).1, "another router's answer");
}

#[test]
fn cache_keys_drop_literals_but_keep_what_routes() {
    assert_eq!(
        cache_key("SELECT a FROM t WHERE id = 42"),
        cache_key("SELECT a FROM t WHERE id = 7")
    );
    assert_eq!(
        cache_key("SELECT * FROM t1 WHERE v = 'x''y'"),
        "SELECT * FROM t1 WHERE v = ?"
    );
    assert_ne!(cache_key("SELECT * FROM t1"), cache_key("SELECT * FROM t2"));
    assert_ne!(
        cache_key("SELECT set_config('a', 'b', false)"),
        cache_key("SELECT set_config('a', 'b', true)")
    );
    assert_ne!(
        cache_key("SELECT set_config('a', 'b', 'f')"),
        cache_key("SELECT set_config('a', 'b', 't')")
    );
    assert_eq!(
        cache_key("SELECT 'é', 1.5, x2 FROM ü"),
        "SELECT ?, ?, x2 FROM ü"
    );
    // routes through the cache stay right for the literal-free twins
    let router = router();
    assert_eq!(router.classify("SELECT 1").target, Target::Replica);
    // set_config leaves settings the session re-reads afterwards
    assert!(
        router
            .classify("SELECT set_config('a', 'b', false)")
            .dirties
    );
    assert!(router.classify("SELECT set_config('a', 'b', true)").dirties);
    assert!(!router.classify("SELECT 1").dirties);
    assert!(!router.classify("INSERT INTO t VALUES (1)").dirties);
    assert!(router.classify("DO $$ BEGIN END $$").dirties);
    assert!(router.classify("CALL p()").dirties);
    assert!(
        router
            .classify("UPDATE pg_settings SET setting = '1' WHERE name = 'x'")
            .dirties
    );
    assert!(
        router
            .classify("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            .dirties
    );
    assert!(router.classify("CREATE TEMP VIEW v AS SELECT 1").pins);
    assert!(
        router
            .classify("CREATE OR REPLACE TEMP VIEW v AS SELECT 1")
            .pins
    );
    assert!(router.classify("CREATE TEMP SEQUENCE s").pins);
    assert!(router.classify("CREATE TABLE pg_temp.t (a int)").pins);
    assert!(!router.classify("CREATE TABLE temperature (a int)").pins);
    // Views of the node's own state: the primary's, unless hinted.
    for sql in [
        "SELECT gid FROM pg_prepared_xacts",
        "SELECT count(*) FROM pg_stat_replication",
        "SELECT * FROM pg_catalog.pg_stat_activity WHERE pid <> pg_backend_pid()",
        "SELECT slot_name FROM pg_replication_slots",
        "SELECT * FROM pg_locks l JOIN pg_class c ON c.oid = l.relation",
        "SELECT * FROM pg_statio_user_tables",
    ] {
        let r = router.classify(sql);
        assert_eq!(
            (r.target, r.reason),
            (Target::Primary, Reason::NodeState),
            "{sql}"
        );
    }
    assert_eq!(
        router
            .classify("/* pgsplit:replica */ SELECT * FROM pg_stat_replication")
            .target,
        Target::Replica
    );
    assert_eq!(
        router.classify("SELECT * FROM pg_stats").target,
        Target::Replica
    );
    // a quote inside a quoted identifier or dollar string never hides a call
    assert_ne!(
        cache_key("SELECT \"it's\", nextval('s')"),
        cache_key("SELECT \"it's\", lower('s')")
    );
    assert_ne!(
        cache_key("SELECT $$it's$$, nextval('s')"),
        cache_key("SELECT $$it's$$, lower('s')")
    );
    assert_eq!(
        router
            .classify("SELECT \"it's\", nextval('s') FROM t")
            .target,
        Target::Primary
    );
    assert_eq!(
        router.classify("SELECT \"it's\", lower('s') FROM t").target,
        Target::Replica
    );
    assert_eq!(cache_key("SELECT 'unterminated"), "SELECT 'unterminated");
}

/// The cache key as it was written before issue 17 folded its four scans
/// into one: kept as the oracle the one-pass version must agree with.
fn reference_cache_key(sql: &str) -> Option<String> {
    let bytes = sql.as_bytes();
    let comment = |at: usize| matches!(&bytes[at..], [b'-', b'-', ..] | [b'/', b'*', ..]);
    if bytes.iter().any(|&b| b == b'$' || b == b'\\')
        || (0..bytes.len())
            .filter(|&at| bytes[at] == b'-' || bytes[at] == b'/')
            .any(comment)
    {
        return None;
    }
    let keep_strings = (3..bytes.len()).any(|at| {
        bytes[at] == b'_'
            && bytes
                .get(at - 3..at + 7)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"set_config"))
    });
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80;
    let mut out = String::new();
    let (mut i, mut run) = (0, 0);
    let mut last_ident = false;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_digit() && !last_ident {
            out.push_str(&sql[run..i]);
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                i += 1;
            }
            out.push('?');
            run = i;
            last_ident = false;
        } else if b == b'\'' || b == b'"' {
            let mut end = i + 1;
            loop {
                if end >= bytes.len() {
                    return None;
                }
                if bytes[end] == b && bytes.get(end + 1) == Some(&b) {
                    end += 2;
                } else if bytes[end] == b {
                    break;
                } else {
                    end += 1;
                }
            }
            if !(b == b'"' || keep_strings || last_ident) {
                out.push_str(&sql[run..i]);
                out.push('?');
                run = end + 1;
            }
            i = end + 1;
            last_ident = b == b'"';
        } else {
            last_ident = ident(b);
            i += 1;
        }
    }
    out.push_str(&sql[run..]);
    Some(out)
}

#[rustfmt::skip]
const KEY_PIECES: &[&str] = &[
    "SELECT", " ", "a1", "42", "3.5", "'x'", "'it''s'", "\"Q\"", "\"a\"\"b\"", "$1", "$$",
    "\\", "-", "--", "/", "/*", "*/", "*", "'", "\"", "_", "set_config", "SET_CONFIG(", ",",
    "false", "E", "date", "é", "ü1", "(", ")", "=", "-1", "a-b", "'-'", "'/'",
];

proptest::proptest! {
    #[test]
    fn the_one_pass_cache_key_agrees_with_the_four_pass_one(
        picks in proptest::collection::vec(0..KEY_PIECES.len(), 0..20)
    ) {
        let sql: String = picks.iter().map(|&i| KEY_PIECES[i]).collect();
        let key = cache_key(&sql);
        let expected = reference_cache_key(&sql);
        match expected {
            Some(k) => proptest::prop_assert_eq!(&*key, k.as_str(), "{:?}", sql),
            None => proptest::prop_assert!(
                matches!(key, Cow::Borrowed(_)),
                "{:?} keyed as {:?}", sql, key
            ),
        }
    }
}
