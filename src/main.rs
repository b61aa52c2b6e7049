//! The `pgsplit` binary: command line, logging, runtime.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: its thread-local free lists make
/// the few allocations a transaction still does (the held connection's
/// box, a statement's Arc) a few instructions each (issue 17).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pgsplit",
    version,
    about = "PostgreSQL proxy: writes to the primary, reads to replicas"
)]
struct Cli {
    /// Configuration file (for `pgsplit -c FILE` without a subcommand).
    #[arg(short, long, global = true, default_value = "proxy.yaml")]
    config: PathBuf,
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve (the default).
    Run,
    /// Validate the configuration and exit.
    Check,
    /// Start a local primary and two replicas plus the proxy on them.
    Demo,
    /// Show nodes, roles, lag, weights and pools of a running proxy.
    Status {
        /// Admin API URL (default: admin.listen of the config file).
        #[arg(long)]
        admin: Option<String>,
        /// Print the JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Switch writes to another node: a planned switchover, a failover
    /// with --force, or a drill with --check.
    Failover {
        /// The node to promote (with --force, the most advanced replica
        /// when omitted).
        #[arg(long)]
        to: Option<String>,
        /// The old primary is gone: promote without waiting for it.
        #[arg(long)]
        force: bool,
        /// Check and describe, change nothing.
        #[arg(long)]
        check: bool,
        /// Admin API URL (default: admin.listen of the config file).
        #[arg(long)]
        admin: Option<String>,
    },
    /// Show where a statement would go and why: the route, the reason and
    /// the catalog facts used. Asks a running proxy with --admin; else
    /// reads the primary's catalog itself with the config file's login.
    Explain {
        /// The statement.
        sql: String,
        /// Ask the running proxy at this admin API URL.
        #[arg(long)]
        admin: Option<String>,
        /// The session's user (for route rules).
        #[arg(long)]
        user: Option<String>,
        /// The database whose catalog is read (default: the monitor's).
        #[arg(long)]
        database: Option<String>,
        /// Print the JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `pgsplit explain`: from a running proxy, or from the catalog directly.
async fn explain_command(cmd: Cmd, config_path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let Cmd::Explain {
        sql,
        admin,
        user,
        database,
        json,
    } = cmd
    else {
        unreachable!("explain only");
    };
    let request = pgsplit::admin::ExplainRequest {
        sql,
        user,
        database,
    };
    let explanation: pgsplit::router::Explanation = if admin.is_some() {
        let (url, token) = admin_target(config_path, admin);
        let body = serde_json::json!({
            "sql": request.sql, "user": request.user, "database": request.database,
        })
        .to_string();
        let answer = pgsplit::admin::client::request(
            &url,
            "POST",
            "/explain",
            token.as_deref(),
            Some(&body),
        )
        .await?;
        if answer.status != 200 {
            anyhow::bail!("{url}/explain answered {}: {}", answer.status, answer.body);
        }
        serde_json::from_str(&answer.body)?
    } else {
        let config = pgsplit::config::Config::load(config_path)?;
        let metrics = pgsplit::metrics::Metrics::new();
        let topology = pgsplit::topology::Topology::from_config(&config, None, &metrics);
        let (_, _, monitor_db) = config.monitor_login();
        let database = request.database.clone().unwrap_or(monitor_db);
        let node_tls = pgsplit::tls::NodeTls::load(
            config
                .tls
                .as_ref()
                .and_then(|t| t.ca.as_ref())
                .map(|c| c.value.as_path()),
        )?;
        let catalog = pgsplit::topology::catalog::read_once(
            &config,
            &node_tls,
            &topology.primary().endpoint(),
            &database,
        )
        .await
        .map_err(|e| anyhow::anyhow!("reading the catalog of {database}: {e}"))?;
        let facts = pgsplit::router::Facts::build([(database.as_str(), &catalog)]);
        let router = pgsplit::router::Router::new(
            pgsplit::router::Knowledge::new(&config.routing.write_functions, facts.into()),
            1 << 20,
            None,
        );
        let mut explanation = router.explain(&request.sql);
        explanation.rule = pgsplit::admin::explain_rule(&config, &request);
        explanation
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
    } else {
        println!("{explanation}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The admin URL and token for the CLI: flags, then the config file, then
/// the defaults; the token from `PGSPLIT_ADMIN_TOKEN` or the file.
fn admin_target(config: &std::path::Path, flag: Option<String>) -> (String, Option<String>) {
    let (url, token, _) = admin_target_why(config, flag);
    (url, token)
}

/// The admin API to ask, its token, and where the address came from (for
/// the error when it cannot be reached).
fn admin_target_why(
    config: &std::path::Path,
    flag: Option<String>,
) -> (String, Option<String>, String) {
    let file = pgsplit::config::Config::load(config);
    let why_default = match &file {
        Ok(_) => format!("{} has no admin section", config.display()),
        Err(e) => format!("{e}"),
    };
    let admin = file.as_ref().ok().and_then(|c| c.admin.clone());
    let (url, why) = match (flag, &admin) {
        (Some(url), _) => (url, "given with --admin".to_owned()),
        (None, Some(a)) => (
            format!("http://{}", a.listen.value),
            format!("admin.listen of {}", config.display()),
        ),
        (None, None) => (
            "http://127.0.0.1:9930".to_owned(),
            format!("the default, because {why_default}; pass --admin http://HOST:PORT or -c FILE"),
        ),
    };
    let token = std::env::var("PGSPLIT_ADMIN_TOKEN")
        .ok()
        .or_else(|| admin.and_then(|a| a.token));
    (url, token, why)
}

async fn admin_command(cmd: Cmd, config: &std::path::Path) -> anyhow::Result<ExitCode> {
    use pgsplit::admin::client::request;
    match cmd {
        Cmd::Status { admin, json } => {
            let (url, token, why) = admin_target_why(config, admin);
            let answer = request(&url, "GET", "/status", token.as_deref(), None)
                .await
                .map_err(|e| anyhow::anyhow!("{e:#} (that address is {why})"))?;
            if answer.status != 200 {
                anyhow::bail!("{url}/status answered {}: {}", answer.status, answer.body);
            }
            if json {
                println!("{}", answer.body);
            } else {
                let status: pgsplit::admin::Status = serde_json::from_str(&answer.body)?;
                print!("{}", status.table());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Failover {
            to,
            force,
            check,
            admin,
        } => {
            let (url, token) = admin_target(config, admin);
            let body = serde_json::json!({ "to": to, "force": force, "check": check }).to_string();
            let answer = request(&url, "POST", "/failover", token.as_deref(), Some(&body)).await?;
            let report: pgsplit::failover::Report = match serde_json::from_str(&answer.body) {
                Ok(r) => r,
                Err(_) => {
                    anyhow::bail!("{url}/failover answered {}: {}", answer.status, answer.body)
                }
            };
            println!(
                "{} to {}: {}",
                report.action,
                report.candidate.as_deref().unwrap_or("?"),
                if report.ok { "ok" } else { "NOT DONE" }
            );
            for step in &report.steps {
                println!(
                    "  {} {:<52} {:>9.1} ms  {}",
                    if step.ok { "ok " } else { "ERR" },
                    step.name,
                    step.ms,
                    step.detail.as_deref().unwrap_or("")
                );
            }
            if let Some(ms) = report.writes_held_ms {
                println!("writes held for {ms} ms");
            }
            if let Some(lost) = report.lost_bytes {
                println!("WAL bytes that may be lost: {lost}");
            }
            if let Some(e) = &report.error {
                println!("error: {e}");
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        _ => unreachable!("handled in main"),
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a terminal: a log file or journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Cmd::Check) = cli.command {
        return match pgsplit::config::Config::load(&cli.config) {
            Ok(config) => {
                println!(
                    "{}: ok ({} nodes, listen {})",
                    cli.config.display(),
                    config.nodes.value.len(),
                    config.listen.value
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging(&cli.log_format);
    // `workers:` and `sched_batch:` shape the runtime; a file that does not
    // load is reported by the command itself.
    let config = pgsplit::config::Config::load(&cli.config).ok();
    // One worker is a current-thread runtime: no work-stealing queues,
    // no cross-thread wake-ups, the I/O driver polled by the thread that
    // runs the sessions.
    let workers = config
        .as_ref()
        .and_then(|c| c.workers.as_ref())
        .map(|w| w.value);
    let mut builder = if workers == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all();
    if let Some(workers) = workers.filter(|&w| w > 1) {
        builder.worker_threads(workers);
    }
    // The proxy's threads only: the demo's PostgreSQL nodes, forked from
    // them, would inherit the policy (SCHED_RESET_ON_FORK resets only
    // real-time ones).
    let serving = matches!(cli.command, None | Some(Cmd::Run));
    if serving && config.as_ref().is_some_and(|c| c.sched_batch) {
        builder.on_thread_start(pgsplit::sched::batch_this_thread);
        pgsplit::sched::batch_this_thread();
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Cmd::Demo) => pgsplit::demo::run(&cli.config)
                .await
                .map(|()| ExitCode::SUCCESS),
            Some(cmd @ (Cmd::Status { .. } | Cmd::Failover { .. })) => {
                admin_command(cmd, &cli.config).await
            }
            Some(cmd @ Cmd::Explain { .. }) => explain_command(cmd, &cli.config).await,
            _ => pgsplit::app::run(cli.config.clone())
                .await
                .map(|()| ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgsplit: {e:#}");
            ExitCode::FAILURE
        }
    }
}
