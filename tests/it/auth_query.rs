//! `auth.query`: users that exist only in PostgreSQL log in through the
//! proxy with SCRAM, and the proxy logs in to every node as them without
//! knowing their password (SCRAM pass-through).

use std::time::{Duration, Instant};

use crate::harness::*;

const AUTH: &str =
    "auth:\n  method: scram-sha-256\n  user: app\n  users:\n    - { name: app, password: app }\n";

async fn login(
    proxy: &pgsplit::app::Proxy,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let conn_str = format!(
        "host=127.0.0.1 port={} user={user} password={password} dbname=app connect_timeout=10",
        proxy.addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_owned())
}

/// Runs `sql` on the primary as the superuser and waits until the replicas
/// have replayed it (roles must exist there too for reads).
async fn on_primary(sql: &str) {
    let primary = direct(primary_port()).await;
    primary.batch_execute(sql).await.unwrap();
    caught_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_only_in_the_database_logs_in_with_scram_pass_through() {
    let user = format!("dbonly_{}", rand::random::<u32>());
    on_primary(&format!(
        "SET password_encryption = 'scram-sha-256'; \
         CREATE ROLE {user} LOGIN PASSWORD 'first-secret'; \
         GRANT SELECT, INSERT ON items TO {user}; GRANT USAGE ON SEQUENCE items_id_seq TO {user}"
    ))
    .await;
    let proxy = start_proxy(&config_text(&ports(), AUTH)).await;
    assert!(
        !config_text(&ports(), AUTH).contains("first-secret"),
        "proxy.yaml holds no password of the user"
    );

    // tokio-postgres logs in; reads run on a replica and writes on the
    // primary, each node letting the proxy in as the user by its key.
    let client = login(&proxy, &user, "first-secret")
        .await
        .expect("the database's user logs in");
    let who: String = scalar(&client, "SELECT current_user").await;
    assert_eq!(who, user);
    let port = served_by(&client, "SELECT inet_server_port()").await;
    assert!(replica_ports().contains(&port), "read on a replica: {port}");
    let rows = rows(
        &client,
        "INSERT INTO items (v) VALUES ('pass-through') RETURNING current_user, inet_server_port()",
    )
    .await
    .unwrap();
    assert_eq!(rows[0][0].as_deref(), Some(user.as_str()));
    assert_eq!(
        rows[0][1].as_deref(),
        Some(primary_port().to_string().as_str())
    );

    // psql logs in the same way.
    let out = crate::tools::tool("psql")
        .args(["-X", "-At", "-h", "127.0.0.1", "-p"])
        .arg(proxy.addr.port().to_string())
        .args(["-U", &user, "-d", "app", "-c", "SELECT current_user"])
        .env("PGPASSWORD", "first-secret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), user);

    // psycopg (named server-side statements) and pgjdbc log in too.
    let python = tokio::task::spawn_blocking(crate::drivers::python_deps)
        .await
        .unwrap()
        .to_owned();
    let jar = tokio::task::spawn_blocking(crate::drivers::jdbc_jar)
        .await
        .unwrap()
        .to_owned();
    let port = proxy.addr.port().to_string();
    let script = format!(
        "import psycopg\n\
         c = psycopg.connect(host='127.0.0.1', port={port}, user='{user}', \
         password='first-secret', dbname='app', prepare_threshold=0)\n\
         print(c.execute('SELECT current_user, %s::int', (1,), prepare=True).fetchone()[0])\n"
    );
    let (u, p) = (user.clone(), port.clone());
    let (py, java) = tokio::task::spawn_blocking(move || {
        let py = std::process::Command::new("python3")
            .args(["-c", &script])
            .env("PYTHONPATH", &python)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .unwrap();
        let java = std::process::Command::new("java")
            .arg("-cp")
            .arg(&jar)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/drivers/LoginCheck.java"
            ))
            .args([&p, &u, "first-secret"])
            .output()
            .unwrap();
        (py, java)
    })
    .await
    .unwrap();
    for (name, out) in [("psycopg", py), ("pgjdbc", java)] {
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), user, "{name}");
    }

    // A wrong password and an unknown user are refused alike.
    let wrong = login(&proxy, &user, "nope")
        .await
        .err()
        .map(|e| message(&e));
    let unknown = login(&proxy, "nobody_at_all", "nope")
        .await
        .err()
        .map(|e| message(&e));
    assert_eq!(
        wrong.as_deref().map(|m| m.replace(&user, "U")),
        unknown.as_deref().map(|m| m.replace("nobody_at_all", "U")),
    );
    assert!(wrong.unwrap().contains("password authentication failed"));

    // A changed password takes effect at the next login, replicas too.
    on_primary(&format!("ALTER ROLE {user} PASSWORD 'second-secret'")).await;
    assert!(
        login(&proxy, &user, "first-secret").await.is_err(),
        "old password refused"
    );
    let client = login(&proxy, &user, "second-secret")
        .await
        .expect("new password");
    let port = served_by(&client, "SELECT inet_server_port()").await;
    assert!(replica_ports().contains(&port), "read on a replica: {port}");
    client
        .simple_query("INSERT INTO items (v) VALUES ('after the change')")
        .await
        .expect("a write with the new key");

    // An expired role is refused.
    on_primary(&format!("ALTER ROLE {user} VALID UNTIL '2001-01-01'")).await;
    let e = login(&proxy, &user, "second-secret")
        .await
        .err()
        .map(|e| (code(&e), message(&e)));
    assert_eq!(
        e.as_ref().and_then(|e| e.0.as_deref()),
        Some("28P01"),
        "{e:?}"
    );

    on_primary(&format!(
        "REVOKE ALL ON items FROM {user}; REVOKE ALL ON SEQUENCE items_id_seq FROM {user}; \
         DROP OWNED BY {user}"
    ))
    .await;
    // Its sessions are gone; the role can go once the pools let go.
    drop(client);
    proxy.stop().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let primary = direct(primary_port()).await;
    while primary
        .batch_execute(&format!("DROP ROLE {user}"))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "role still in use");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An MD5-stored user that proxy.yaml does not list (`app_md5`, whose
/// nodes ask for md5): its hash answers both the client's check and the
/// nodes' challenges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_md5_user_only_in_the_database_logs_in_with_its_hash() {
    let auth = "auth:\n  method: md5\n  user: app\n  users:\n    - { name: app, password: app }\n";
    let proxy = start_proxy(&config_text(&ports(), auth)).await;
    let client = login(&proxy, "app_md5", "md5pw")
        .await
        .expect("the md5 user logs in");
    let port = served_by(&client, "SELECT inet_server_port()").await;
    assert!(replica_ports().contains(&port), "read on a replica: {port}");
    let written = rows(
        &client,
        "INSERT INTO items (v) VALUES ('md5 pass-through') RETURNING current_user, inet_server_port()",
    )
    .await
    .unwrap();
    assert_eq!(written[0][0].as_deref(), Some("app_md5"));
    assert_eq!(
        written[0][1].as_deref(),
        Some(primary_port().to_string().as_str())
    );
    let Err(e) = login(&proxy, "app_md5", "wrong").await else {
        panic!("a wrong password logged in")
    };
    assert_eq!(code(&e).as_deref(), Some("28P01"), "{e}");
    proxy.stop().await;
}
