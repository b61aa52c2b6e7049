//! The workload of `benches/sequence_affinity.sh`: each client, in a
//! loop, INSERTs a row (its sequence's `nextval`), runs another primary
//! statement, then asks `currval`. Counts how often `currval` answered
//! (with the client's own value) and how often it was refused (55000),
//! and loops per second.
//!
//! `cargo bench --bench sequence_affinity -- HOST PORT CLIENTS LOOPS LABEL`

use std::time::Instant;

use tokio_postgres::{NoTls, SimpleQueryMessage};

fn first_value(messages: &[SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

/// (answered with its own value, refused, wrong)
async fn client(conn: String, id: usize, loops: usize) -> (u64, u64, u64) {
    let (client, connection) = tokio_postgres::connect(&conn, NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let (mut answered, mut refused, mut wrong) = (0, 0, 0);
    for _ in 0..loops {
        let mine = first_value(
            &client
                .simple_query("INSERT INTO affinity (v) VALUES (1) RETURNING id")
                .await
                .expect("insert"),
        );
        client
            .simple_query(&format!(
                "UPDATE affinity_other SET n = n + 1 WHERE id = {id}"
            ))
            .await
            .expect("update");
        match client
            .simple_query("SELECT currval('affinity_id_seq')")
            .await
        {
            Ok(m) if first_value(&m) == mine => answered += 1,
            Ok(_) => wrong += 1,
            Err(e) if e.code().is_some_and(|c| c.code() == "55000") => refused += 1,
            Err(e) => panic!("currval: {e}"),
        }
    }
    (answered, refused, wrong)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [host, port, clients, loops, label] = &args[..] else {
        eprintln!("usage: sequence_affinity HOST PORT CLIENTS LOOPS LABEL");
        std::process::exit(2);
    };
    let conn = format!("host={host} port={port} user=app password=app dbname=app");
    let (clients, loops): (usize, usize) = (clients.parse().unwrap(), loops.parse().unwrap());
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|id| tokio::spawn(client(conn.clone(), id, loops)))
        .collect();
    let (mut answered, mut refused, mut wrong) = (0, 0, 0);
    for t in tasks {
        let (a, r, w) = t.await.unwrap();
        answered += a;
        refused += r;
        wrong += w;
    }
    let total = (clients * loops) as f64;
    println!(
        "| {label} | {:.1} % | {:.1} % | {wrong} | {:.0} |",
        100.0 * answered as f64 / total,
        100.0 * refused as f64 / total,
        total / started.elapsed().as_secs_f64(),
    );
}
