//! Brings down nodes back: every `lag.check_interval`, each node marked
//! down gets a TCP connect; after a few successes in a row it takes
//! traffic again.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{Node, Topology};

/// Probes down nodes until `shutdown` fires.
pub async fn run(
    topology: Arc<ArcSwap<Topology>>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snapshot = topology.load_full();
        for node in snapshot.nodes.iter().filter(|n| !n.health.is_up()) {
            probe(node, interval.max(Duration::from_millis(500))).await;
        }
    }
}

async fn probe(node: &Arc<Node>, timeout: Duration) {
    let answered = matches!(
        tokio::time::timeout(timeout, TcpStream::connect(node.address())).await,
        Ok(Ok(_))
    );
    if answered {
        if node.health.probe_succeeded() {
            tracing::info!(node = %node.name, state = "up", "node answers again");
        }
    } else {
        node.health.probe_failed();
    }
}
