//! The client side of the protocol at the byte level: handshakes, bad
//! input, cancel.

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// Reads everything the proxy sends until it closes the socket or goes
/// quiet for a second.
async fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The SQLSTATE of the first ErrorResponse in a byte stream.
fn first_error_code(bytes: &[u8]) -> Option<String> {
    let mut i = 0;
    while i + 5 <= bytes.len() {
        let tag = bytes[i];
        let len = u32::from_be_bytes(bytes[i + 1..i + 5].try_into().ok()?) as usize;
        if tag == b'E' {
            let mut body = &bytes[i + 5..(i + 1 + len).min(bytes.len())];
            while let Some((&field, rest)) = body.split_first() {
                let end = rest.iter().position(|&b| b == 0)?;
                if field == b'C' {
                    return String::from_utf8(rest[..end].to_vec()).ok();
                }
                body = &rest[end + 1..];
            }
            return None;
        }
        i += 1 + len;
    }
    None
}

#[tokio::test]
async fn ssl_and_gssenc_requests_are_answered_n() {
    let proxy = default_proxy().await;
    for code in [80877103i32, 80877104] {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let mut req = BytesMut::new();
        req.put_i32(8);
        req.put_i32(code);
        s.write_all(&req).await.unwrap();
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"N");
        // and the startup may follow on the same socket
        s.write_all(&startup_packet(
            196608,
            &[("user", "app"), ("database", "app")],
        ))
        .await
        .unwrap();
        let mut r = [0u8; 9];
        s.read_exact(&mut r).await.unwrap();
        assert_eq!(r[0], b'R', "authentication request expected");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn bad_startup_and_malformed_messages_end_only_that_client() {
    let proxy = start_proxy(&config_text(
        &ports(),
        "auth:\n  method: trust\n  users:\n    - { name: app, password: app }\n",
    ))
    .await;
    let bystander = app(&proxy).await;

    // protocol 2.0
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&startup_packet(2 << 16, &[("user", "app")]))
        .await
        .unwrap();
    assert_eq!(
        first_error_code(&read_all(&mut s).await).as_deref(),
        Some("0A000")
    );

    // a startup length that lies (huge)
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0])
        .await
        .unwrap();
    assert_eq!(
        first_error_code(&read_all(&mut s).await).as_deref(),
        Some("08P01")
    );

    // no user
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&startup_packet(196608, &[("database", "app")]))
        .await
        .unwrap();
    assert_eq!(
        first_error_code(&read_all(&mut s).await).as_deref(),
        Some("28000")
    );

    let login = startup_packet(196608, &[("user", "app"), ("database", "app")]);
    let bad_messages: Vec<Vec<u8>> = vec![
        vec![b'Q', 0, 0, 0, 2],                         // length below 4
        vec![b'Q', 0x7f, 0xff, 0xff, 0xff, b'x'],       // over 1 GiB
        vec![b'Q', 0, 0, 0, 8, b'a', b'b', b'c', b'd'], // no terminator
        vec![b'P', 0, 0, 0, 6, b'x', 0],                // parse without sql
    ];
    for bad in bad_messages {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(&login).await.unwrap();
        let mut greeting = vec![0u8; 0];
        // read the greeting up to ReadyForQuery
        let mut buf = [0u8; 1024];
        while !greeting.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed during greeting");
            greeting.extend_from_slice(&buf[..n]);
        }
        s.write_all(&bad).await.unwrap();
        if bad[0] == b'P' {
            s.write_all(&[b'S', 0, 0, 0, 4]).await.unwrap();
        }
        let answer = read_all(&mut s).await;
        assert_eq!(
            first_error_code(&answer).as_deref(),
            Some("08P01"),
            "for {bad:?}"
        );
    }
    // random garbage as a startup packet
    for seed in 0u8..20 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let junk: Vec<u8> = (0..64u8)
            .map(|i| i.wrapping_mul(seed).wrapping_add(seed))
            .collect();
        let _ = s.write_all(&junk).await;
        let _ = read_all(&mut s).await;
    }
    // the bystander never noticed
    assert_eq!(scalar::<i32>(&bystander, "SELECT 7").await, 7);
    proxy.stop().await;
}

#[tokio::test]
async fn cancel_request_reaches_the_node_running_the_query() {
    let proxy = default_proxy().await;
    let client = app(&proxy).await;
    let token = client.cancel_token();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let err = client
        .simple_query("SELECT pg_sleep(60)")
        .await
        .unwrap_err();
    canceller.await.unwrap();
    assert_eq!(code(&err).as_deref(), Some("57014"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // and inside a transaction on the primary
    client.simple_query("BEGIN").await.unwrap();
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let err = client
        .simple_query("SELECT pg_sleep(60) FROM items LIMIT 1 FOR UPDATE")
        .await
        .unwrap_err();
    canceller.await.unwrap();
    assert_eq!(code(&err).as_deref(), Some("57014"));
    client.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(scalar::<i32>(&client, "SELECT 1").await, 1);
    proxy.stop().await;
}
