//! Security: SCRAM-SHA-256 for clients, limits, hostile input, and no
//! secret in logs or /status.

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

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
