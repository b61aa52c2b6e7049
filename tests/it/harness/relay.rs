//! A TCP relay between the proxy and a node, which a test can cut (close
//! every connection and refuse new ones) and restore, to play a node that
//! dies and comes back, or stall (keep every connection open, pass no
//! bytes) and resume, to play a node behind a network that hangs, without
//! disturbing the shared cluster.

use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A relay to one node.
pub struct Relay {
    /// The port the proxy should use.
    pub port: u16,
    target: u16,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// True while no bytes pass.
    stalled: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    /// Starts relaying `127.0.0.1:<new port>` to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().unwrap().port();
        let relay = Relay {
            port,
            target,
            tasks: Arc::new(Mutex::new(Vec::new())),
            stalled: tokio::sync::watch::Sender::new(false),
        };
        relay.serve(listener);
        relay
    }

    fn serve(&self, listener: TcpListener) {
        let tasks = self.tasks.clone();
        let target = self.target;
        let stalled = self.stalled.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let stalled = stalled.subscribe();
                let conn = tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::select! {
                        _ = pump(in_read, out_write, stalled.clone()) => {}
                        _ = pump(out_read, in_write, stalled) => {}
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Passes no more bytes either way, keeping every connection open.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Passes bytes again.
    #[allow(dead_code, reason = "not every test binary resumes a stall")]
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }

    /// Accepts connections again on the same port.
    pub async fn restore(&self) {
        // The aborted accept task drops its listener asynchronously.
        for _ in 0..100 {
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", self.port)).await {
                self.serve(listener);
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("could not rebind relay port {}", self.port);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Copies `from` to `to`, holding each chunk while the relay is stalled.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
