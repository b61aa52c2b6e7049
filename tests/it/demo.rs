//! `pgsplit demo`, the README's first command, run as a user would: it
//! starts PostgreSQL and the proxy, prints a connection string that works,
//! and removes everything on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgsplit::cluster::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_reads_on_replicas_and_cleans_up() {
    let (listen, p1, p2, p3) = (free_port(), free_port(), free_port(), free_port());
    let config = format!(
        "listen: 127.0.0.1:{listen}\nauth:\n  method: md5\n  users:\n    - {{ name: demo, password: demopw }}\n\
         nodes:\n  - {{ name: pg1, host: 127.0.0.1, port: {p1}, role: primary }}\n\
         \x20 - {{ name: pg2, host: 127.0.0.1, port: {p2}, role: replica }}\n\
         \x20 - {{ name: pg3, host: 127.0.0.1, port: {p3}, role: replica }}\n"
    );
    let file = std::env::temp_dir().join(format!("pgsplit-demo-{}.yaml", std::process::id()));
    std::fs::write(&file, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgsplit"))
        .args(["demo", "-c"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (url, dir) = tokio::task::spawn_blocking(move || {
        let mut url = None;
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(120);
        while let Some(Ok(line)) = lines.next() {
            if let Some(at) = line.find("postgres://") {
                url = Some(line[at..].trim_end_matches('\'').to_owned());
            }
            if line.contains("Press Ctrl-C") || Instant::now() > deadline {
                break;
            }
        }
        // keep draining so the demo never blocks on a full pipe
        let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
        (url, rest)
    })
    .await
    .unwrap();
    let url = url.expect("the demo prints a postgres:// URL");
    assert!(url.contains(&format!(":{listen}/")), "{url}");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let read = client
        .simple_query("SELECT inet_server_port()")
        .await
        .unwrap();
    let port = read
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                r.get(0).map(|p| p.parse::<u16>().unwrap())
            }
            _ => None,
        })
        .expect("a row");
    assert!(port == p2 || port == p3, "read served by {port}");
    // The demo's nodes keep the default scheduling policy (sched_batch is
    // the serving proxy's: forked children would inherit it).
    let backend = client
        .simple_query("SELECT pg_backend_pid()")
        .await
        .unwrap()
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row");
    let stat = std::fs::read_to_string(format!("/proc/{backend}/stat")).unwrap();
    let policy = stat[stat.rfind(')').unwrap() + 2..].split(' ').nth(41 - 3);
    assert_eq!(
        policy,
        Some("0"),
        "the node's backend runs under SCHED_OTHER"
    );
    client
        .simple_query("INSERT INTO notes (body) VALUES ('from the test')")
        .await
        .unwrap();
    drop(client);

    // SIGTERM: the demo stops PostgreSQL and removes its directory.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exited.success(), "demo exit status {exited}");
    let lines = dir.join().unwrap();
    let removed = lines
        .iter()
        .find_map(|l| l.strip_prefix("stopping PostgreSQL and removing "))
        .expect("the demo says what it removes")
        .to_owned();
    assert!(
        !std::path::Path::new(&removed).exists(),
        "{removed} still exists"
    );
    for port in [p1, p2, p3] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "PostgreSQL still listening on {port}"
        );
    }
    let _ = std::fs::remove_file(file);
}
