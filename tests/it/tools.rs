//! psql and pgbench, the real command-line clients, through the proxy.

use std::process::Command;

use crate::harness::*;

/// A PostgreSQL client program of the cluster's, with `app`'s password and
/// a connect timeout (override `PGPASSWORD` for another user).
pub fn tool(name: &str) -> Command {
    let mut cmd = Command::new(cluster().bin_dir().join(name));
    cmd.env("PGPASSWORD", "app").env("PGCONNECT_TIMEOUT", "10");
    cmd
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_scripts_through_the_proxy() {
    let proxy = default_proxy().await;
    let port = proxy.addr.port().to_string();
    let script = "\\set ON_ERROR_STOP on\n\
        CREATE TABLE IF NOT EXISTS psql_t (id int PRIMARY KEY, v text);\n\
        INSERT INTO psql_t VALUES (1, 'one') ON CONFLICT (id) DO UPDATE SET v = excluded.v;\n\
        BEGIN;\nSELECT 'txn', inet_server_port();\nCOMMIT;\n\
        SELECT 'primary', inet_server_port() FROM psql_t FOR UPDATE;\n";
    let out = tokio::task::spawn_blocking(move || {
        let file = std::env::temp_dir().join(format!("pgsplit-psql-{}.sql", std::process::id()));
        std::fs::write(&file, script).unwrap();
        let out = run(tool("psql")
            .args([
                "-X",
                "-At",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "app",
                "-d",
                "app",
                "-f",
            ])
            .arg(&file));
        let _ = std::fs::remove_file(file);
        out
    })
    .await
    .unwrap();
    let primary = primary_port().to_string();
    assert!(out.contains(&format!("txn|{primary}")), "{out}");
    assert!(out.contains(&format!("primary|{primary}")), "{out}");
    wait_replicated(cluster());
    knows_relation(&proxy, "psql_t").await;
    let port = proxy.addr.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        run(tool("psql").args([
            "-X",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "app",
            "-d",
            "app",
            "-c",
            "SELECT v, inet_server_port() FROM psql_t WHERE id = 1",
        ]))
    })
    .await
    .unwrap();
    let (v, served) = out.trim().split_once('|').expect("one row");
    assert_eq!(v, "one");
    assert!(replica_ports().contains(&served.parse().unwrap()), "{out}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_simple_extended_and_prepared_select_only_and_tpcb() {
    let proxy = default_proxy().await;
    let port = proxy.addr.port().to_string();
    tokio::task::spawn_blocking(move || {
        let base = ["-h", "127.0.0.1", "-p", port.as_str(), "-U", "app"];
        run(tool("pgbench")
            .args(base)
            .args(["-i", "-q", "-s", "1", "app"]));
        wait_replicated(cluster());
        for workload in [&["-S"][..], &[][..]] {
            let out = run(tool("pgbench")
                .args(base)
                .args(["-M", "simple", "-c", "8", "-j", "2", "-t", "100", "-n"])
                .args(workload)
                .arg("app"));
            assert!(out.contains("number of failed transactions: 0"), "{out}");
            assert!(
                out.contains("number of transactions actually processed: 800/800"),
                "{out}"
            );
        }
    })
    .await
    .unwrap();
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_copy_in_and_out() {
    let proxy = default_proxy().await;
    let port = proxy.addr.port().to_string();
    tokio::task::spawn_blocking(move || {
        let dir = std::env::temp_dir().join(format!("pgsplit-copy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("in.csv");
        let output = dir.join("out.csv");
        let rows: String = (0..5000)
            .map(|i| format!("{i},\"line {i}, quoted\"\n"))
            .collect();
        std::fs::write(&input, &rows).unwrap();
        let psql = |sql: &str| {
            run(tool("psql")
                .args([
                    "-X",
                    "-At",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    "app",
                    "-d",
                    "app",
                    "-c",
                ])
                .arg(sql))
        };
        psql("CREATE TABLE IF NOT EXISTS psql_copy (id int, v text)");
        psql("TRUNCATE psql_copy");
        let out = psql(&format!(
            "\\copy psql_copy FROM '{}' WITH (FORMAT csv)",
            input.display()
        ));
        assert!(out.contains("COPY 5000"), "{out}");
        wait_replicated(cluster());
        let out = psql(&format!(
            "\\copy psql_copy TO '{}' WITH (FORMAT csv)",
            output.display()
        ));
        assert!(out.contains("COPY 5000"), "{out}");
        let mut got: Vec<String> = std::fs::read_to_string(&output)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let mut want: Vec<String> = rows.lines().map(str::to_owned).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
    .unwrap();
    proxy.stop().await;
}
