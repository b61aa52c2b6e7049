//! Where the follower reads Patroni: the members' REST API, etcd's range
//! read, and etcd's v3 watch (each event wakes the follower), all over
//! [`crate::http`] and etcd's JSON gateway (`/v3/kv/range`, `/v3/watch`),
//! which is the v3 API itself, as Patroni's own etcd3 client uses it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::view::{self, View};
use crate::config::EtcdConfig;

/// How long the watch waits before opening again after it broke.
const WATCH_RETRY: Duration = Duration::from_millis(200);

/// `GET /cluster` from the first member that answers.
pub async fn rest_cluster(urls: &[String], limit: Duration) -> Result<View, String> {
    let mut errors = Vec::new();
    for url in urls {
        let base = url.trim_end_matches('/');
        match crate::http::call(base, "GET", "/cluster", &[], None, limit).await {
            Ok(a) if a.status == 200 => return view::from_rest(&a.body),
            Ok(a) => errors.push(format!("{base}/cluster answered {}", a.status)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(errors.join("; "))
}

/// Every key of the cluster from the first etcd endpoint that answers.
pub async fn etcd_range(etcd: &EtcdConfig, limit: Duration) -> Result<View, String> {
    let prefix = etcd.prefix();
    let body = view::range_request(&prefix);
    let mut errors = Vec::new();
    for endpoint in &etcd.endpoints {
        let base = endpoint.trim_end_matches('/');
        match crate::http::call(
            base,
            "POST",
            "/v3/kv/range",
            &[],
            Some(body.as_bytes()),
            limit,
        )
        .await
        {
            Ok(a) if a.status == 200 => return view::from_etcd(&a.body, &prefix),
            Ok(a) => errors.push(format!(
                "{base}/v3/kv/range answered {}: {}",
                a.status,
                a.text()
            )),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(errors.join("; "))
}

/// Watches the cluster's keys and wakes `changed` on every event (and each
/// time the watch opens again, since events may have been missed), until
/// `shutdown`.
pub async fn watch(etcd: EtcdConfig, changed: Arc<Notify>, shutdown: CancellationToken) {
    let prefix = etcd.prefix();
    let create = format!(r#"{{"create_request":{}}}"#, view::range_request(&prefix));
    let mut at = 0usize;
    loop {
        let endpoint = etcd.endpoints[at % etcd.endpoints.len()].trim_end_matches('/');
        at += 1;
        let watched = async {
            let mut stream = crate::http::open(
                endpoint,
                "POST",
                "/v3/watch",
                Some(create.as_bytes()),
                Duration::from_secs(5),
            )
            .await
            .map_err(|e| e.to_string())?;
            if stream.status != 200 {
                return Err(format!("{endpoint}/v3/watch answered {}", stream.status));
            }
            changed.notify_one();
            while let Some(piece) = stream.next().await.map_err(|e| e.to_string())? {
                // Each piece is one or more JSON lines; the follower reads
                // the keys again whatever they say.
                if !piece.iter().all(u8::is_ascii_whitespace) {
                    tracing::trace!(bytes = piece.len(), "etcd watch event");
                    changed.notify_one();
                }
            }
            Err::<(), String>(format!("{endpoint} ended the watch"))
        };
        let error = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = watched => result.err().unwrap_or_default(),
        };
        tracing::debug!(%error, "etcd watch broke; opening it again");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(WATCH_RETRY) => {}
        }
    }
}
