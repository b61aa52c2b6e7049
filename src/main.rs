//! The `pgsplit` binary: command line, logging, runtime.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Cmd::Demo) => pgsplit::demo::run(&cli.config).await,
            _ => pgsplit::app::run(cli.config.clone()).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgsplit: {e:#}");
            ExitCode::FAILURE
        }
    }
}
