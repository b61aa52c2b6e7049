//! The catalog's volatile user functions (`pg_proc.provolatile = 'v'`
//! outside `pg_catalog`/`information_schema`), read from the primary every
//! `routing.functions_refresh` and whenever a session saw function DDL go
//! through, and published for the router.

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use super::Topology;
use crate::config::Config;

const VOLATILE_SQL: &str = "SELECT DISTINCT lower(p.proname) FROM pg_proc p \
    JOIN pg_namespace n ON n.oid = p.pronamespace \
    WHERE p.provolatile = 'v' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
    AND n.nspname NOT LIKE 'pg_toast%'";

async fn load(
    config: &Config,
    topology: &Topology,
) -> Result<HashSet<String>, tokio_postgres::Error> {
    let (user, password, database) = config.monitor_login();
    let primary = topology.primary();
    let mut pg = tokio_postgres::Config::new();
    pg.host(&primary.host)
        .port(primary.port)
        .user(&user)
        .dbname(&database)
        .application_name("pgsplit-catalog")
        .connect_timeout(config.lag.check_timeout.0);
    if let Some(pw) = &password {
        pg.password(pw);
    }
    let (client, connection) = pg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let rows = client.query(VOLATILE_SQL, &[]).await?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// Refreshes the set until `shutdown`. `on_change` gets each new set;
/// `loads` counts every attempt, so a session that asked for a refresh can
/// wait for it.
pub async fn run(
    topology: Arc<ArcSwap<Topology>>,
    config: Arc<ArcSwap<Config>>,
    refresh_now: Arc<Notify>,
    on_change: impl Fn(Arc<HashSet<String>>),
    loads: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    let mut current: Option<HashSet<String>> = None;
    loop {
        let cfg = config.load_full();
        match load(&cfg, &topology.load()).await {
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
