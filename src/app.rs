//! Builds the shared [`State`], binds the listener, spawns the accept loop
//! and background tasks, and runs shutdown and reload.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::state::State;
use crate::topology::{catalog, monitor};

/// Lifecycle of a proxy, for probes and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Binding and spawning.
    Starting,
    /// Accepting clients.
    Ready,
    /// No longer accepting; open transactions may finish.
    Draining,
    /// Everything stopped.
    Stopped,
}

/// How long open transactions may run on after shutdown begins.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A running proxy.
pub struct Proxy {
    /// Where clients connect (the real port when `listen` said 0).
    pub addr: SocketAddr,
    /// Where the admin API listens, when configured.
    pub admin_addr: Option<SocketAddr>,
    /// The shared state, for inspection.
    pub state: Arc<State>,
    phase: watch::Receiver<Phase>,
    done: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Binds and starts serving `config`.
    ///
    /// # Errors
    /// The listen address cannot be bound.
    pub async fn start(config: Config) -> anyhow::Result<Proxy> {
        Proxy::start_from(config, None).await
    }

    /// Binds and starts serving `config`, read from `path` (which
    /// `POST /reload`, SIGHUP and file changes re-read).
    ///
    /// # Errors
    /// The listen or admin address cannot be bound.
    pub async fn start_from(config: Config, path: Option<PathBuf>) -> anyhow::Result<Proxy> {
        let config = if config.follows_patroni() {
            crate::topology::patroni::starting_config(config).await?
        } else {
            config
        };
        let listen = config.listen_addr();
        let admin_listener = match &config.admin {
            Some(admin) => {
                let addr: SocketAddr = admin.listen.value.parse().context("admin.listen")?;
                Some(
                    TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("cannot listen on {addr} for the admin API"))?,
                )
            }
            None => None,
        };
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let tls = match &config.tls {
            Some(t) if t.cert.is_some() => Some(crate::tls::ServerTls::load(t)?),
            _ => None,
        };
        let shutdown = CancellationToken::new();
        let ca = config
            .tls
            .as_ref()
            .and_then(|t| t.ca.as_ref())
            .map(|c| c.value.clone());
        let node_tls = crate::tls::NodeTls::load(ca.as_deref())?;
        let state = Arc::new(State::new(config, shutdown.clone(), node_tls));
        state.tls.store(Arc::new(tls));
        if let Some(path) = &path {
            let _ = state.config_path.set(path.clone());
        }
        let (phase_tx, phase) = watch::channel(Phase::Starting);
        let tasks = TaskTracker::new();
        tasks.spawn(monitor::run(
            state.topology.clone(),
            state.config.clone(),
            state.node_tls.clone(),
            shutdown.clone(),
            state.topology_poll.clone(),
        ));
        if state.config.load().follows_patroni() {
            tasks.spawn(crate::topology::patroni::run(state.clone()));
        }
        let on_change = {
            let state = state.clone();
            move |facts| {
                state.facts.store(facts);
                state.rebuild_router();
            }
        };
        let databases = {
            let state = state.clone();
            move || {
                state
                    .databases
                    .lock()
                    .expect("poisoned")
                    .iter()
                    .cloned()
                    .collect()
            }
        };
        tasks.spawn(
            catalog::CatalogTask {
                topology: state.topology.clone(),
                config: state.config.clone(),
                node_tls: state.node_tls.clone(),
                refresh_now: state.catalog_refresh.clone(),
                databases,
                on_change,
                loads: state.catalog_loads.clone(),
                tried: state.catalog_tried.clone(),
                shutdown: shutdown.clone(),
            }
            .run(),
        );
        if let Some(listener) = admin_listener {
            let admin = crate::admin::Admin {
                state: state.clone(),
                config_path: path.clone(),
            };
            tasks.spawn(crate::admin::serve(listener, admin));
            tracing::info!(addr = ?admin_addr, "admin API listening");
        }
        if let Some(path) = path {
            tasks.spawn(watch_file(state.clone(), path));
        }
        tasks.spawn(sweep_pools(state.clone()));
        let done = tokio::spawn(accept_loop(listener, state.clone(), tasks, phase_tx));
        tracing::info!(%addr, "pgsplit listening");
        Ok(Proxy {
            addr,
            admin_addr,
            state,
            phase,
            done,
        })
    }

    /// Waits until the proxy reaches `phase` or a later one.
    pub async fn reached(&mut self, phase: Phase) {
        let rank = |p: Phase| p as u8;
        let _ = self.phase.wait_for(|p| rank(*p) >= rank(phase)).await;
    }

    /// Starts a graceful shutdown.
    pub fn shutdown(&self) {
        self.state.shutdown.cancel();
        self.state.clients.stop_all();
    }

    /// Shuts down and waits until every session has ended.
    pub async fn stop(self) {
        self.shutdown();
        let _ = self.done.await;
    }

    /// Waits for the proxy to stop by itself (after [`Proxy::shutdown`]).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    tasks: TaskTracker,
    phase: watch::Sender<Phase>,
) {
    phase.send_replace(Phase::Ready);
    let slots = Arc::new(tokio::sync::Semaphore::new(
        state.config.load().limits.max_clients as usize,
    ));
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let state = state.clone();
                        tasks.spawn(async move {
                            crate::session::serve(state, socket, peer).await;
                            drop(slot);
                        });
                    }
                    // Over limits.max_clients: this client is told, nobody
                    // else is affected.
                    Err(_) => {
                        tasks.spawn(crate::session::refuse_too_many(socket));
                    }
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    drop(listener);
    phase.send_replace(Phase::Draining);
    tasks.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("sessions still open after the drain timeout; closing them");
    }
    phase.send_replace(Phase::Stopped);
}

/// Re-reads the configuration every second when the file changed.
async fn watch_file(state: Arc<State>, path: PathBuf) {
    let fingerprint = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let mut last = fingerprint(&path);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let now = fingerprint(&path);
        if now != last {
            last = now;
            let _ = state.reload(&path);
        }
    }
}

/// Every few seconds, hands connections that sat in a pool's give-back
/// stack too long back to bb8 (which reaps idle and closed ones).
async fn sweep_pools(state: Arc<State>) {
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        state.pools.sweep(crate::pool::STACK_IDLE);
    }
}

/// Serves `path` until SIGINT/SIGTERM (a second one exits at once); SIGHUP
/// reloads the file.
///
/// # Errors
/// The configuration is invalid or the listener cannot be bound.
pub async fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let proxy = Proxy::start_from(config, Some(path.clone())).await?;
    serve_until_signal(proxy, Some(path)).await
}

/// Runs a started proxy until a signal stops it.
///
/// # Errors
/// Signal handlers cannot be installed.
pub async fn serve_until_signal(proxy: Proxy, path: Option<PathBuf>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                if let Some(path) = &path {
                    let _ = proxy.state.reload(path);
                }
            }
        }
    }
    tracing::info!("shutting down; a second signal exits at once");
    proxy.shutdown();
    tokio::select! {
        _ = proxy.wait() => {}
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
