//! The write-then-read workload of `benches/ryw_share.sh`: each client, in
//! a loop, INSERTs a row, then runs `READS` reads of which `OWN` read the
//! row it just wrote. Counts where each read ran (`inet_server_port()`,
//! from the node), reads of the client's own row that missed it (stale),
//! read latency p50/p99 and transactions per second.
//!
//! `cargo bench --bench ryw_share -- HOST PORT PRIMARY_PORT CLIENTS LOOPS READS OWN LABEL`

use std::time::{Duration, Instant};

use tokio_postgres::{NoTls, SimpleQueryMessage};

/// What one client saw.
#[derive(Default)]
struct Seen {
    reads: u64,
    on_replicas: u64,
    stale: u64,
    latencies: Vec<Duration>,
    writes: u64,
}

fn first_row(messages: &[SimpleQueryMessage]) -> Vec<String> {
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

#[allow(clippy::too_many_arguments, reason = "the workload's parameters")]
async fn client(
    conn: String,
    id: usize,
    primary: u16,
    loops: usize,
    reads: usize,
    own: usize,
) -> Seen {
    let (client, connection) = tokio_postgres::connect(&conn, NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let mut seen = Seen::default();
    for i in 0..loops {
        client
            .simple_query(&format!(
                "INSERT INTO ryw_share (client, seq) VALUES ({id}, {i})"
            ))
            .await
            .expect("insert");
        seen.writes += 1;
        for r in 0..reads {
            let sql = if r < own {
                format!(
                    "SELECT count(*), inet_server_port() FROM ryw_share WHERE client = {id} AND seq = {i}"
                )
            } else {
                format!("SELECT {r}, inet_server_port() FROM ryw_share_other WHERE id = {r}")
            };
            let started = Instant::now();
            let messages = client.simple_query(&sql).await.expect("read");
            seen.latencies.push(started.elapsed());
            let row = first_row(&messages);
            seen.reads += 1;
            if row.get(1).and_then(|p| p.parse::<u16>().ok()) != Some(primary) {
                seen.on_replicas += 1;
            }
            if r < own && row.first().map(String::as_str) != Some("1") {
                seen.stale += 1;
            }
        }
    }
    seen
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [host, port, primary, clients, loops, reads, own, label] = &args[..] else {
        eprintln!("usage: ryw_share HOST PORT PRIMARY_PORT CLIENTS LOOPS READS OWN LABEL");
        std::process::exit(2);
    };
    let conn = format!("host={host} port={port} user=app password=app dbname=app");
    let primary: u16 = primary.parse().unwrap();
    let (clients, loops, reads, own): (usize, usize, usize, usize) = (
        clients.parse().unwrap(),
        loops.parse().unwrap(),
        reads.parse().unwrap(),
        own.parse().unwrap(),
    );
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|id| tokio::spawn(client(conn.clone(), id, primary, loops, reads, own)))
        .collect();
    let mut all = Seen::default();
    for t in tasks {
        let s = t.await.unwrap();
        all.reads += s.reads;
        all.on_replicas += s.on_replicas;
        all.stale += s.stale;
        all.writes += s.writes;
        all.latencies.extend(s.latencies);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.latencies.sort();
    let at = |q: f64| {
        let i = ((all.latencies.len() as f64 - 1.0) * q).round() as usize;
        all.latencies[i].as_secs_f64() * 1000.0
    };
    println!(
        "| {label} | {:.1} % | {} of {} | {:.2} | {:.2} | {:.0} |",
        100.0 * all.on_replicas as f64 / all.reads.max(1) as f64,
        all.stale,
        all.reads / reads.max(1) as u64 * own as u64,
        at(0.5),
        at(0.99),
        all.writes as f64 / elapsed,
    );
}
