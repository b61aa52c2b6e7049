//! A write and read load through one or more proxies, for switchover
//! tests: autocommit writers insert `(writer, n)` and note where each
//! acknowledged insert ran and when; readers count rows. Every loop is
//! bounded by [`LOAD_LIMIT`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use pgsplit::app::Proxy;

use super::{app, rows};

/// How long a load may run at most.
pub const LOAD_LIMIT: Duration = Duration::from_secs(90);

/// What one writer saw.
#[derive(Default)]
pub struct Written {
    /// Acknowledged `n`s.
    pub acked: Vec<i32>,
    /// Each acknowledged write's time and the port of the node it ran on.
    pub at: Vec<(Instant, u16)>,
    /// The errors it got.
    pub errors: Vec<String>,
}

/// Autocommit writers and readers through each proxy until `stop`.
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Per writer, the port its last acknowledged write ran on (0: none).
    last_ports: Arc<Vec<AtomicU16>>,
    writers: Vec<tokio::task::JoinHandle<(i32, Written)>>,
    readers: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    /// `writers` writers and one reader through each proxy; returns once
    /// they have run a moment. Writer ids: proxy index x 100 + writer.
    pub async fn start(proxies: &[&Proxy], writers_each: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let last_ports: Arc<Vec<AtomicU16>> = Arc::new(
            (0..proxies.len() * writers_each)
                .map(|_| AtomicU16::new(0))
                .collect(),
        );
        let mut writers = Vec::new();
        let mut readers = Vec::new();
        for (p, proxy) in proxies.iter().enumerate() {
            for w in 0..writers_each {
                let id = (p * 100 + w) as i32;
                let client = app(proxy).await;
                let stop = stop.clone();
                let last_ports = last_ports.clone();
                let slot = p * writers_each + w;
                writers.push(tokio::spawn(async move {
                    let mut out = Written::default();
                    let deadline = Instant::now() + LOAD_LIMIT;
                    for n in 0..1_000_000 {
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            break;
                        }
                        let sql = format!(
                            "INSERT INTO acked VALUES ({id}, {n}) RETURNING inet_server_port()"
                        );
                        match rows(&client, &sql).await {
                            Ok(r) => {
                                out.acked.push(n);
                                let port = r[0][0].as_deref().unwrap_or("0").parse().unwrap_or(0);
                                out.at.push((Instant::now(), port));
                                last_ports[slot].store(port, Ordering::Relaxed);
                            }
                            Err(e) => {
                                out.errors.push(e.to_string());
                                if client.is_closed() {
                                    break;
                                }
                            }
                        }
                    }
                    (id, out)
                }));
            }
            let client = app(proxy).await;
            let stop = stop.clone();
            readers.push(tokio::spawn(async move {
                let mut errors = Vec::new();
                let deadline = Instant::now() + LOAD_LIMIT;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if let Err(e) = rows(&client, "SELECT count(*) FROM acked").await {
                        errors.push(e.to_string());
                        if client.is_closed() {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                errors
            }));
        }
        let load = Load {
            stop,
            last_ports,
            writers,
            readers,
        };
        // Every writer has written before anything happens.
        load.wait_until("every writer wrote", |p| p != 0).await;
        load
    }

    /// Waits until every writer's last acknowledged write ran on `port`.
    pub async fn wait_all_wrote_to(&self, port: u16) {
        self.wait_until(&format!("every writer wrote to port {port}"), |p| p == port)
            .await;
    }

    async fn wait_until(&self, what: &str, done: impl Fn(u16) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .last_ports
            .iter()
            .all(|p| done(p.load(Ordering::Relaxed)))
        {
            assert!(Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the load; each writer's id and what it saw, and the readers'
    /// errors.
    pub async fn finish(self) -> (Vec<(i32, Written)>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut written = Vec::new();
        for w in self.writers {
            written.push(w.await.unwrap());
        }
        let mut read_errors = Vec::new();
        for r in self.readers {
            read_errors.extend(r.await.unwrap());
        }
        (written, read_errors)
    }
}

/// The longest time between two acknowledged writes of one writer.
pub fn longest_stall(w: &Written) -> Duration {
    w.at.windows(2)
        .map(|p| p[1].0 - p[0].0)
        .max()
        .unwrap_or_default()
}

/// No writer or reader saw an error, every acknowledged write is among
/// `stored` (the rows on the primary), every writer's last write ran on
/// `port`, and no writer waited 5 s between two acknowledged writes.
/// Returns the longest such wait.
pub fn assert_no_error_and_nothing_lost(
    written: &[(i32, Written)],
    read_errors: &[String],
    stored: &std::collections::BTreeSet<(i32, i32)>,
    port: u16,
) -> Duration {
    let errors: Vec<&String> = written.iter().flat_map(|(_, w)| &w.errors).collect();
    assert!(
        errors.is_empty(),
        "client errors: {} {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(read_errors.is_empty(), "read errors: {read_errors:?}");
    let mut acked = 0;
    for (id, w) in written {
        for n in &w.acked {
            assert!(
                stored.contains(&(*id, *n)),
                "acknowledged write ({id}, {n}) is lost"
            );
            acked += 1;
        }
        let last = w.at.last().map(|(_, p)| *p);
        assert_eq!(
            last,
            Some(port),
            "writer {id}'s last write ran on the primary"
        );
    }
    assert!(acked > 0);
    let stall = written
        .iter()
        .map(|(_, w)| longest_stall(w))
        .max()
        .unwrap_or_default();
    assert!(stall < Duration::from_secs(5), "a writer stalled {stall:?}");
    eprintln!("{acked} acknowledged writes, 0 errors, longest write stall {stall:?}");
    stall
}
