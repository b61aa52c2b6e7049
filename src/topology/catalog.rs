//! Reads the catalogs routing needs (functions with their volatility and
//! bodies, unlogged relations, user views with their definitions) from
//! the primary, in every database clients use, and publishes the merged
//! [`Facts`] whenever they change.
//!
//! Catalog reads are off the statement path: a task keeps one connection
//! per database to the primary and, every `lag.check_interval`, asks each
//! for a cheap change signal instead of scanning `pg_proc`:
//!
//! - the highest OID in `pg_proc`, `pg_class` and `pg_rewrite`, each one
//!   backward step of the OID index: every CREATE of a function, table or
//!   view takes a new, higher OID (OIDs only wrap after four billion);
//! - the tuples inserted, updated and deleted in those three catalogs by
//!   committed transactions, from the cumulative statistics (a lookup of
//!   three counters, no scan): CREATE OR REPLACE, ALTER FUNCTION ...
//!   VOLATILE, ALTER TABLE ... SET UNLOGGED and DROP update rows without a
//!   new OID. PostgreSQL publishes these counters when a backend's
//!   transaction ends, at most once a second per backend (and when it goes
//!   idle, within 10 s): such changes are seen within a second or two.
//!
//! A changed signal reads that database's catalog again;
//! `routing.functions_refresh` reads all of them regardless (the backstop),
//! and a database clients start to use is read at once. DDL that went
//! through the proxy and a statement that named a function or relation no
//! fact placed make the next round start now (at most one every
//! [`MIN_GAP`]), so a new object is known within milliseconds of its
//! first use. Until a database is read, its sessions send every function
//! call to the primary.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Topology;
use crate::config::{Config, Endpoint};
use crate::router::Facts;
use crate::router::facts::{Catalog, FunctionRow, RelationRow};
use crate::tls::{NodeTls, connect_node};

/// One database's round (signal, and catalog if it moved) takes at most
/// this long; a stuck one is dropped with its connection.
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

/// Rounds a session asks for come at most this often.
pub const MIN_GAP: Duration = Duration::from_millis(50);

const SIGNAL_SQL: &str = "SELECT concat_ws('/', \
    (SELECT max(oid) FROM pg_catalog.pg_proc), \
    (SELECT max(oid) FROM pg_catalog.pg_class), \
    (SELECT max(oid) FROM pg_catalog.pg_rewrite), \
    (SELECT sum(pg_catalog.pg_stat_get_tuples_inserted(t) + pg_catalog.pg_stat_get_tuples_updated(t) \
        + pg_catalog.pg_stat_get_tuples_deleted(t)) \
     FROM unnest(ARRAY['pg_catalog.pg_proc'::regclass, 'pg_catalog.pg_class'::regclass, \
        'pg_catalog.pg_rewrite'::regclass]::oid[]) t))";

const FUNCTIONS_SQL: &str = "SELECT n.nspname::text, p.proname::text, p.provolatile = 'v', \
    CASE WHEN n.nspname NOT IN ('pg_catalog', 'information_schema') \
        AND l.lanname IN ('sql', 'plpgsql') \
        THEN coalesce(pg_catalog.pg_get_function_sqlbody(p.oid), p.prosrc) END \
    FROM pg_catalog.pg_proc p \
    JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
    JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
    WHERE n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'";

const RELATIONS_SQL: &str = "SELECT n.nspname::text, c.relname::text, c.relpersistence = 'u', \
    CASE WHEN c.relkind = 'v' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
        THEN pg_catalog.pg_get_viewdef(c.oid) END \
    FROM pg_catalog.pg_class c \
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') \
    AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'";

/// Reads one database's catalog.
pub async fn read(client: &tokio_postgres::Client) -> Result<Catalog, tokio_postgres::Error> {
    let functions = client
        .query(FUNCTIONS_SQL, &[])
        .await?
        .iter()
        .map(|r| FunctionRow {
            schema: r.get(0),
            name: r.get(1),
            volatile: r.get(2),
            body: r.get(3),
        })
        .collect();
    let relations = client
        .query(RELATIONS_SQL, &[])
        .await?
        .iter()
        .map(|r| RelationRow {
            schema: r.get(0),
            name: r.get(1),
            unlogged: r.get(2),
            definition: r.get(3),
        })
        .collect();
    Ok(Catalog {
        functions,
        relations,
    })
}

/// Connects to the primary's `database` as the monitor user and reads its
/// catalog (for `pgsplit explain` without a running proxy).
///
/// # Errors
/// No connection, or the catalog could not be read.
pub async fn read_once(
    config: &Config,
    node_tls: &NodeTls,
    primary: &Endpoint,
    database: &str,
) -> Result<Catalog, String> {
    let client = connect_node(config, node_tls, primary, Some(database), "pgsplit-explain").await?;
    read(&client).await.map_err(|e| e.to_string())
}

/// One database's connection and what it last read.
struct Watched {
    endpoint: Endpoint,
    client: tokio_postgres::Client,
    signal: Option<String>,
    catalog: Option<Catalog>,
}

/// What the catalog task needs.
pub struct CatalogTask<D, C> {
    /// Nodes (the primary is read).
    pub topology: Arc<ArcSwap<Topology>>,
    /// Configuration (login, periods).
    pub config: Arc<ArcSwap<Config>>,
    /// TLS towards nodes.
    pub node_tls: NodeTls,
    /// Wakes the task for a full read now.
    pub refresh_now: Arc<Notify>,
    /// The databases clients use.
    pub databases: D,
    /// Receives the facts each time they change.
    pub on_change: C,
    /// Counts every round, so a session that asked for a read can wait.
    pub loads: watch::Sender<u64>,
    /// The databases tried at least once (read or failed).
    pub tried: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    /// Stops it.
    pub shutdown: CancellationToken,
}

impl<D: Fn() -> Vec<String>, C: Fn(Arc<Facts>)> CatalogTask<D, C> {
    /// Watches the catalogs until shutdown.
    pub async fn run(self) {
        let mut watched: HashMap<String, Watched> = HashMap::new();
        let mut last_full = None::<Instant>;
        let mut forced = true;
        loop {
            let cfg = self.config.load_full();
            let started = Instant::now();
            let full =
                forced || last_full.is_none_or(|t| t.elapsed() >= cfg.routing.functions_refresh.0);
            if full {
                last_full = Some(started);
            }
            let (_, _, monitor_db) = cfg.monitor_login();
            let mut databases = self.databases();
            databases.retain(|d| *d != monitor_db);
            databases.insert(0, monitor_db);
            let before = watched.len();
            watched.retain(|db, _| databases.contains(db));
            let mut changed = watched.len() != before;
            let primary = self.topology.load().primary().endpoint();
            for db in &databases {
                let round = tokio::time::timeout(
                    ROUND_TIMEOUT,
                    self.round(&cfg, &primary, db, &mut watched, full),
                );
                let result = tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    r = round => r.unwrap_or_else(|_| Err("timed out".to_owned())),
                };
                match result {
                    Ok(news) => changed |= news,
                    // What it read last stays in force.
                    Err(e) => {
                        tracing::debug!(database = %db, error = %e, "reading the catalog failed")
                    }
                }
            }
            if changed {
                let facts = Facts::build(
                    watched
                        .iter()
                        .filter_map(|(db, w)| Some((db.as_str(), w.catalog.as_ref()?))),
                );
                let (functions, relations) = facts.counts();
                tracing::info!(
                    functions,
                    primary_only_relations = relations,
                    databases = watched.len(),
                    "catalog facts reloaded"
                );
                (self.on_change)(Arc::new(facts));
            }
            self.tried
                .lock()
                .expect("poisoned")
                .extend(databases.iter().cloned());
            self.loads.send_modify(|n| *n += 1);
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                // Asked (DDL went through, an unknown name was seen): check
                // the signals now; what moved is read.
                _ = self.refresh_now.notified() => {
                    forced = false;
                    tokio::time::sleep_until(started + MIN_GAP).await;
                }
                _ = tokio::time::sleep(cfg.lag.check_interval.0) => forced = false,
            }
        }
    }

    fn databases(&self) -> Vec<String> {
        (self.databases)()
    }

    /// One database's round: (re)connect, read the signal, read the
    /// catalog if the signal moved or `full`. Returns whether its catalog
    /// changed.
    async fn round(
        &self,
        cfg: &Config,
        primary: &Endpoint,
        db: &str,
        watched: &mut HashMap<String, Watched>,
        full: bool,
    ) -> Result<bool, String> {
        let stale = watched
            .get(db)
            .is_none_or(|w| w.endpoint != *primary || w.client.is_closed());
        if stale {
            let client =
                connect_node(cfg, &self.node_tls, primary, Some(db), "pgsplit-catalog").await?;
            let old = watched.remove(db).and_then(|w| w.catalog);
            watched.insert(
                db.to_owned(),
                Watched {
                    endpoint: primary.clone(),
                    client,
                    signal: None,
                    catalog: old,
                },
            );
        }
        let w = watched.get_mut(db).expect("inserted above");
        let signal: String = w
            .client
            .query_one(SIGNAL_SQL, &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if !full && w.signal.as_ref() == Some(&signal) && w.catalog.is_some() {
            return Ok(false);
        }
        let catalog = read(&w.client).await.map_err(|e| e.to_string())?;
        w.signal = Some(signal);
        let changed = w.catalog.as_ref() != Some(&catalog);
        w.catalog = Some(catalog);
        Ok(changed)
    }
}
