//! Security: SCRAM-SHA-256 for clients, limits, hostile input, and no
//! secret in logs or /status.

use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;
use pgsplit::admin::client::request;

fn scram_config(extra: &str) -> String {
    config_text(
        &ports(),
        &format!(
            "auth:\n  method: scram-sha-256\n  users:\n    - {{ name: app, password: app }}\n    - {{ name: app_md5, password: md5pw }}\n{extra}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_logins_with_tokio_postgres_psql_and_psycopg() {
    let proxy = start_proxy(&scram_config("")).await;
    let client = app(&proxy).await;
    assert!(replica_ports().contains(&served_by(&client, "SELECT inet_server_port()").await));
    let wrong = connect(&proxy, "app", "nope").await.unwrap_err();
    let unknown = connect(&proxy, "ghost", "nope").await.unwrap_err();
    assert_eq!(code(&wrong).as_deref(), Some("28P01"));
    assert_eq!(code(&unknown).as_deref(), Some("28P01"));
    // psql, with a password it must send through SCRAM
    let port = proxy.addr.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(cluster().bin_dir().join("psql"))
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
                "-c",
                "SELECT 'scram ok'",
            ])
            .env("PGPASSWORD", "app")
            .env("PGCHANNELBINDING", "disable")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("scram ok"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // psycopg (installed on first use, as for the driver matrix)
    let deps = tokio::task::spawn_blocking(crate::drivers::python_deps)
        .await
        .unwrap()
        .to_owned();
    {
        let port = proxy.addr.port();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("python3")
                .arg("-c")
                .arg(format!(
                    "import psycopg; c = psycopg.connect('host=127.0.0.1 port={port} user=app password=app dbname=app'); print(c.execute('select 41 + 1').fetchone()[0])"
                ))
                .env("PYTHONPATH", deps)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("42"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    proxy.stop().await;
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Everything the proxy sends until it closes or goes quiet.
async fn answer(stream: &mut TcpStream, quiet: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(quiet, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Err(_) => return (out, false),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// SQLSTATEs of the ErrorResponses in a byte stream, and whether a
/// ReadyForQuery came.
fn codes(bytes: &[u8]) -> (Vec<String>, bool) {
    let (mut codes, mut ready, mut i) = (Vec::new(), false, 0);
    while i + 5 <= bytes.len() {
        let tag = bytes[i];
        let len = u32::from_be_bytes(bytes[i + 1..i + 5].try_into().unwrap()) as usize;
        let body = &bytes[(i + 5).min(bytes.len())..(i + 1 + len).min(bytes.len())];
        if tag == b'E' {
            let mut rest = body;
            while let Some((&f, tail)) = rest.split_first() {
                let Some(end) = tail.iter().position(|&b| b == 0) else {
                    break;
                };
                if f == b'C' {
                    codes.push(String::from_utf8_lossy(&tail[..end]).into_owned());
                }
                rest = &tail[end + 1..];
            }
        }
        ready |= tag == b'Z';
        i += 1 + len;
    }
    (codes, ready)
}

async fn logged_in(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&startup_packet(
        196608,
        &[("user", "app"), ("database", "app")],
    ))
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed during login");
        got.extend_from_slice(&buf[..n]);
    }
    s
}

/// What a hostile case expects back.
enum Expect {
    /// This SQLSTATE, then the connection closes.
    Fatal(&'static str),
    /// This SQLSTATE from the node, and the session goes on.
    Error(&'static str),
    /// The connection closes (with or without a message).
    Closed,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_kinds_of_hostile_input_hurt_only_their_sender() {
    let extra = "auth:\n  method: trust\n  users:\n    - { name: app, password: app }\nlimits:\n  max_message_size: 64kB\n";
    let proxy = start_proxy(&config_text(&ports(), extra)).await;
    let addr = proxy.addr;
    let bystander = app(&proxy).await;
    let parse = |name: &str, sql: &str| {
        msg(
            b'P',
            &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"].concat(),
        )
    };
    let sync = msg(b'S', b"");
    // (name, bytes after login, expectation)
    let after_login: Vec<(&str, Vec<u8>, Expect)> = vec![
        (
            "length below 4",
            vec![b'Q', 0, 0, 0, 2],
            Expect::Fatal("08P01"),
        ),
        (
            "negative length",
            vec![b'Q', 0xff, 0xff, 0xff, 0xf0],
            Expect::Fatal("08P01"),
        ),
        (
            "length over the limit",
            vec![b'Q', 0x00, 0x10, 0x00, 0x00, b'S'],
            Expect::Fatal("08P01"),
        ),
        (
            "query without terminator",
            msg(b'Q', b"SELECT 1"),
            Expect::Fatal("08P01"),
        ),
        (
            // Text is the client's bytes in its client_encoding: the node
            // judges it (22021 for bytes that are not UTF-8), as directly.
            "query not UTF-8",
            msg(b'Q', b"\xff\xfe\0"),
            Expect::Error("22021"),
        ),
        (
            "unknown message type",
            msg(b'y', b"hello"),
            Expect::Fatal("08P01"),
        ),
        ("message type zero", msg(0, b"\0\0"), Expect::Fatal("08P01")),
        (
            "SSLRequest after startup",
            vec![0, 0, 0, 8, 4, 210, 22, 47],
            Expect::Fatal("08P01"),
        ),
        (
            "ReadyForQuery from a client",
            msg(b'Z', b"I"),
            Expect::Fatal("08P01"),
        ),
        (
            "parse without SQL",
            [msg(b'P', b"s\0"), sync.clone()].concat(),
            Expect::Fatal("08P01"),
        ),
        (
            "parse with lying type count",
            [msg(b'P', b"\0SELECT 1\0\0\x09"), sync.clone()].concat(),
            Expect::Fatal("08P01"),
        ),
        (
            "bind truncated",
            [msg(b'B', b"portal"), sync.clone()].concat(),
            Expect::Fatal("08P01"),
        ),
        (
            "describe of an unknown kind",
            [msg(b'D', b"Xname\0"), sync.clone()].concat(),
            Expect::Fatal("08P01"),
        ),
        (
            "close truncated",
            [msg(b'C', b"S"), sync.clone()].concat(),
            Expect::Fatal("08P01"),
        ),
        (
            "password message after login",
            msg(b'p', b"secret\0"),
            Expect::Fatal("08P01"),
        ),
        (
            "bind of a statement that does not exist",
            [
                msg(b'B', b"\0nope\0\0\0\0\0\0\0"),
                msg(b'E', b"\0\0\0\0\0"),
                sync.clone(),
            ]
            .concat(),
            Expect::Error("26000"),
        ),
        (
            "bind with the wrong parameter count",
            [
                parse("", "SELECT 1"),
                msg(b'B', b"\0\0\0\0\0\x01\0\0\0\x011\0\0"),
                sync.clone(),
            ]
            .concat(),
            Expect::Error("08P01"),
        ),
        (
            "execute of a portal that does not exist",
            [msg(b'E', b"ghost\0\0\0\0\0"), sync.clone()].concat(),
            Expect::Error("34000"),
        ),
        (
            "garbage SQL",
            msg(b'Q', b"SELECT FROM WHERE (((\0"),
            Expect::Error("42601"),
        ),
        (
            "copy data outside COPY",
            [msg(b'd', b"junk"), msg(b'Q', b"SELECT 1\0")].concat(),
            Expect::Error("none"),
        ),
    ];
    for (name, bytes, expect) in after_login {
        let mut s = logged_in(addr).await;
        s.write_all(&bytes).await.unwrap();
        let (got, closed) = answer(&mut s, Duration::from_millis(1500)).await;
        let (codes, ready) = codes(&got);
        match expect {
            Expect::Fatal(code) => {
                assert_eq!(
                    codes.first().map(String::as_str),
                    Some(code),
                    "{name}: {codes:?}"
                );
                assert!(closed, "{name}: the connection stays open");
            }
            Expect::Error("none") => {
                assert!(codes.is_empty() && ready && !closed, "{name}: {codes:?}")
            }
            Expect::Error(code) => {
                assert_eq!(
                    codes.first().map(String::as_str),
                    Some(code),
                    "{name}: {codes:?}"
                );
                assert!(ready && !closed, "{name}: the session should go on");
            }
            Expect::Closed => assert!(closed, "{name}"),
        }
        assert_eq!(
            scalar::<i32>(&bystander, "SELECT 1").await,
            1,
            "bystander after {name}"
        );
    }
    // before login
    let mut big = startup_packet(196608, &[("user", "app")]);
    big.extend(std::iter::repeat_n(b'x', 20_000));
    let big_len = big.len() as i32;
    big[..4].copy_from_slice(&big_len.to_be_bytes());
    let mut dup = startup_packet(
        196608,
        &[("user", "app"), ("user", "app"), ("database", "app")],
    );
    let unterminated = {
        // a complete packet whose parameter list lacks its final NUL
        let mut v = startup_packet(196608, &[("user", "app")]);
        v.pop();
        let len = v.len() as i32;
        v[..4].copy_from_slice(&len.to_be_bytes());
        v
    };
    let cancel_random = {
        let mut v = vec![0, 0, 0, 16];
        v.extend_from_slice(&80877102i32.to_be_bytes());
        v.extend_from_slice(&rand::random::<[u8; 8]>());
        v
    };
    let before_login: Vec<(&str, Vec<u8>, Expect)> = vec![
        (
            "protocol 2.0",
            startup_packet(2 << 16, &[("user", "app")]),
            Expect::Fatal("0A000"),
        ),
        (
            "missing user",
            startup_packet(196608, &[("database", "app")]),
            Expect::Fatal("28000"),
        ),
        ("enormous startup packet", big, Expect::Fatal("08P01")),
        (
            "startup length below 8",
            vec![0, 0, 0, 4],
            Expect::Fatal("08P01"),
        ),
        ("cancel with random keys", cancel_random, Expect::Closed),
        (
            "cancel too short",
            vec![0, 0, 0, 12, 4, 210, 22, 46, 0, 0, 0, 1],
            Expect::Fatal("08P01"),
        ),
        (
            "binary garbage",
            (0..200u8).map(|i| i.wrapping_mul(37)).collect(),
            Expect::Closed,
        ),
    ];
    for (name, bytes, expect) in before_login {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        s.shutdown().await.ok();
        let (got, closed) = answer(&mut s, Duration::from_millis(1500)).await;
        let (codes, _) = codes(&got);
        match expect {
            Expect::Fatal(code) => assert_eq!(
                codes.first().map(String::as_str),
                Some(code),
                "{name}: {codes:?}"
            ),
            _ => assert!(closed, "{name}"),
        }
        assert_eq!(
            scalar::<i32>(&bystander, "SELECT 1").await,
            1,
            "bystander after {name}"
        );
    }
    // duplicate and unterminated parameters
    let mut s = TcpStream::connect(addr).await.unwrap();
    dup.extend_from_slice(&msg(b'Q', b"SELECT 1\0"));
    s.write_all(&dup).await.unwrap();
    let (got, _) = answer(&mut s, Duration::from_millis(1500)).await;
    assert!(codes(&got).1, "duplicate parameters: served like any login");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&unterminated).await.unwrap();
    let (got, _) = answer(&mut s, Duration::from_millis(1500)).await;
    assert_eq!(codes(&got).0.first().map(String::as_str), Some("08P01"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_mid_copy_or_mid_batch_leave_clean_connections() {
    let extra =
        "auth:\n  method: trust\n  users:\n    - { name: app, password: app }\npool:\n  size: 1\n";
    let proxy = start_proxy(&config_text(&ports(), extra)).await;
    let setup = app(&proxy).await;
    setup
        .batch_execute("CREATE TABLE IF NOT EXISTS mid_copy (a int)")
        .await
        .unwrap();
    // mid-COPY: CopyInResponse arrives, some data, then the client vanishes
    let mut s = logged_in(proxy.addr).await;
    s.write_all(&msg(b'Q', b"COPY mid_copy FROM STDIN\0"))
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(buf[0], b'G', "CopyInResponse expected, got {:?}", &buf[..n]);
    s.write_all(&msg(b'd', b"1\n2\n")).await.unwrap();
    drop(s);
    // mid-batch: Parse and Bind without Sync
    let mut s = logged_in(proxy.addr).await;
    s.write_all(
        &[
            msg(b'P', b"\0INSERT INTO mid_copy VALUES (9)\0\0\0"),
            msg(b'B', b"\0\0\0\0\0\0\0\0"),
        ]
        .concat(),
    )
    .await
    .unwrap();
    drop(s);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // with one server connection per node, the next client gets a clean one
    let client = app(&proxy).await;
    let n: i64 = scalar(&client, "SELECT count(*) FROM mid_copy").await;
    assert_eq!(n, 0, "nothing of the abandoned COPY or batch was committed");
    client
        .batch_execute("INSERT INTO mid_copy VALUES (1)")
        .await
        .unwrap();
    let active: i64 = scalar(
        &client,
        "/* pgsplit:primary */ SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY mid_copy%' AND state = 'active'",
    )
    .await;
    assert_eq!(active, 0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_max_clients_startup_timeout_and_idle_timeout() {
    let extra = "auth:\n  method: trust\n  users:\n    - { name: app, password: app }\nlimits:\n  max_clients: 3\n  startup_timeout: 1s\n  idle_timeout: 1500ms\n";
    let proxy = start_proxy(&config_text(&ports(), extra)).await;
    let a = app(&proxy).await;
    let b = app(&proxy).await;
    let c = app(&proxy).await;
    let refused = connect(&proxy, "app", "x").await.unwrap_err();
    assert_eq!(code(&refused).as_deref(), Some("53300"));
    assert_eq!(
        scalar::<i32>(&a, "SELECT 1").await,
        1,
        "existing clients are unaffected"
    );
    drop((b, c));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // a client that sends nothing, and one that sends a byte every 300 ms
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    let (_, closed) = answer(&mut silent, Duration::from_secs(5)).await;
    assert!(
        closed && started.elapsed() < Duration::from_secs(4),
        "a silent client is dropped"
    );
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    let packet = startup_packet(196608, &[("user", "app"), ("database", "app")]);
    let mut dropped = false;
    for byte in packet {
        if slow.write_all(&[byte]).await.is_err() {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut probe = [0u8; 64];
        if let Ok(Ok(0)) | Ok(Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await
        {
            dropped = true;
            break;
        }
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await
        {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "a byte-a-second client is dropped");
    // idle timeout: `a` has been idle, it gets 57P05
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let err = a.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        err.is_closed() || code(&err).as_deref() == Some("57P05"),
        "{err}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_connections_at_once() {
    // each connection takes a socket on both ends
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer have no other preconditions.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        if limit.rlim_cur < 12_000 {
            limit.rlim_cur = limit.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    assert!(
        limit.rlim_cur >= 11_000,
        "raise the open file limit: ulimit -n 12000 (now {})",
        limit.rlim_cur
    );
    // The whole suite runs beside this test: give logins time.
    let extra = "auth:\n  method: trust\n  users:\n    - { name: app, password: app }\nlimits:\n  startup_timeout: 120s\n";
    let proxy = start_proxy(&config_text(&ports(), extra)).await;
    let addr = proxy.addr;
    let mut tasks = Vec::new();
    for _ in 0..5000 {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(&startup_packet(
                196608,
                &[("user", "app"), ("database", "app")],
            ))
            .await?;
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
                let n = tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf)).await??;
                if n == 0 {
                    return Err(std::io::Error::other("closed"));
                }
                got.extend_from_slice(&buf[..n]);
            }
            Ok::<_, std::io::Error>(s)
        }));
    }
    let mut open = Vec::new();
    for t in tasks {
        open.push(
            t.await
                .unwrap()
                .unwrap_or_else(|e| panic!("every connection logs in: {e:?}")),
        );
    }
    assert_eq!(open.len(), 5000);
    let client = app(&proxy).await;
    assert_eq!(scalar::<i32>(&client, "SELECT 1").await, 1);
    drop(open);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_or_status() {
    let token = "tok-7f3a-never-logged";
    let admin_port = pgsplit::cluster::free_port();
    let port = pgsplit::cluster::free_port();
    let p = ports();
    let text = format!(
        "listen: 127.0.0.1:{port}\nadmin:\n  listen: 127.0.0.1:{admin_port}\n  token: {token}\nauth:\n  method: scram-sha-256\n  users:\n    - {{ name: app_md5, password: md5pw }}\nnodes:\n  - {{ name: pg1, host: 127.0.0.1, port: {}, role: primary }}\n  - {{ name: pg2, host: 127.0.0.1, port: {}, role: replica }}\n  - {{ name: pg3, host: 127.0.0.1, port: {}, role: replica }}\n",
        p[0], p[1], p[2]
    );
    let file = std::env::temp_dir().join(format!("pgsplit-secrets-{}.yaml", std::process::id()));
    std::fs::write(&file, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgsplit"))
        .arg("-c")
        .arg(&file)
        .env("RUST_LOG", "trace")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Drain both pipes from the start: trace logging fills a pipe quickly,
    // and a proxy blocked on its log would stall.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "the proxy did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let conn = format!("host=127.0.0.1 port={port} user=app_md5 password=md5pw dbname=app_md5");
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await.unwrap();
    client
        .query_one("SELECT $1::text", &[&"hello"])
        .await
        .unwrap();
    let bad =
        format!("host=127.0.0.1 port={port} user=app_md5 password=wrong-md5pw dbname=app_md5");
    assert!(
        tokio_postgres::connect(&bad, tokio_postgres::NoTls)
            .await
            .is_err()
    );
    let url = format!("http://127.0.0.1:{admin_port}");
    let status = request(&url, "GET", "/status", None, None).await.unwrap();
    assert!(
        !status.body.contains("md5pw") && !status.body.contains(token),
        "{}",
        status.body
    );
    let unauthorized = request(&url, "POST", "/reload", None, None).await.unwrap();
    assert_eq!(unauthorized.status, 401);
    let wrong = request(&url, "POST", "/reload", Some("nope"), None)
        .await
        .unwrap();
    assert_eq!(wrong.status, 401);
    let ok = request(&url, "POST", "/reload", Some(token), None)
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
    drop(client);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = tokio::task::spawn_blocking(move || {
        let _ = child.wait();
        let mut text = stdout.join().unwrap();
        text.push_str(&stderr.join().unwrap());
        text
    })
    .await
    .unwrap();
    assert!(
        out.contains("pgsplit listening"),
        "logs were captured: {out}"
    );
    assert!(!out.contains("md5pw"), "a password reached the logs");
    assert!(!out.contains(token), "the admin token reached the logs");
    let _ = std::fs::remove_file(file);
}
