//! The catalog's volatile user functions (`pg_proc.provolatile = 'v'`
//! outside `pg_catalog`/`information_schema`), read from the primary in
//! every database clients use, every `routing.functions_refresh` and
//! whenever a session saw function DDL go through, and published for the
//! router (one set for all databases: a name volatile in any of them goes
//! to the primary everywhere, which errs on the safe side).

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::Topology;
use crate::config::Config;
use crate::tls::{NodeTls, connect_node};

const VOLATILE_SQL: &str = "SELECT DISTINCT lower(p.proname) FROM pg_proc p \
    JOIN pg_namespace n ON n.oid = p.pronamespace \
    WHERE p.provolatile = 'v' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
    AND n.nspname NOT LIKE 'pg_toast%'";

async fn load_all(
    config: &Config,
    node_tls: &NodeTls,
    topology: &Topology,
    databases: &[String],
) -> Result<HashSet<String>, String> {
    let mut all = HashSet::new();
    let (_, _, monitor_db) = config.monitor_login();
    let mut any = false;
    let mut last_error = None;
    for db in std::iter::once(&monitor_db).chain(databases.iter().filter(|d| **d != monitor_db)) {
        match load(config, node_tls, topology, db).await {
            Ok(set) => {
                any = true;
                all.extend(set);
            }
            Err(e) => last_error = Some(format!("database {db}: {e}")),
        }
    }
    if any {
        Ok(all)
    } else {
        Err(last_error.unwrap_or_default())
    }
}

async fn load(
    config: &Config,
    node_tls: &NodeTls,
    topology: &Topology,
    database: &str,
) -> Result<HashSet<String>, String> {
    let client = connect_node(
        config,
        node_tls,
        &topology.primary().endpoint(),
        Some(database),
        "pgsplit-catalog",
    )
    .await?;
    let rows = client
        .query(VOLATILE_SQL, &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// What the catalog task needs.
pub struct CatalogTask<D, C> {
    /// Nodes (the primary is read).
    pub topology: Arc<ArcSwap<Topology>>,
    /// Configuration (login, refresh period).
    pub config: Arc<ArcSwap<Config>>,
    /// TLS towards nodes.
    pub node_tls: NodeTls,
    /// Wakes the task for a refresh now.
    pub refresh_now: Arc<Notify>,
    /// The databases clients use.
    pub databases: D,
    /// Receives each new set.
    pub on_change: C,
    /// Counts every attempt, so a session that asked for a refresh can wait.
    pub loads: watch::Sender<u64>,
    /// Stops it.
    pub shutdown: CancellationToken,
}

impl<D: Fn() -> Vec<String>, C: Fn(Arc<HashSet<String>>)> CatalogTask<D, C> {
    /// Refreshes the set until shutdown.
    pub async fn run(self) {
        let CatalogTask {
            topology,
            config,
            node_tls,
            refresh_now,
            databases,
            on_change,
            loads,
            shutdown,
        } = self;
        let mut current: Option<HashSet<String>> = None;
        loop {
            let cfg = config.load_full();
            match load_all(&cfg, &node_tls, &topology.load(), &databases()).await {
                Ok(set) => {
                    if current.as_ref() != Some(&set) {
                        tracing::info!(count = set.len(), "volatile user functions reloaded");
                        on_change(Arc::new(set.clone()));
                        current = Some(set);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "reading volatile functions failed"),
            }
            loads.send_modify(|n| *n += 1);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = refresh_now.notified() => {}
                _ = tokio::time::sleep(cfg.routing.functions_refresh.0) => {}
            }
        }
    }
}
