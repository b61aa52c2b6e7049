//! `pgsplit demo`: a local primary and replicas on the ports that
//! proxy.yaml names, the proxy on them, a connection string printed, and
//! everything removed on Ctrl-C or SIGTERM.

use std::path::Path;

use anyhow::{Context, bail};

use crate::app::{Proxy, serve_until_signal};
use crate::cluster::{ClusterOptions, ClusterUser, LocalCluster};
use crate::config::{Config, Role};

/// Runs the demo with the configuration at `path`.
///
/// # Errors
/// The configuration does not describe a local cluster, or PostgreSQL
/// cannot be started.
pub async fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let mut nodes: Vec<_> = config.nodes.value.iter().collect();
    nodes.sort_by_key(|n| n.role.value != Role::Primary);
    for node in &nodes {
        if !matches!(node.host.as_str(), "127.0.0.1" | "localhost") {
            bail!(
                "demo starts local servers only; node {} has host {}",
                node.name.value,
                node.host
            );
        }
    }
    let users: Vec<ClusterUser> = config
        .auth
        .users
        .iter()
        .map(|u| ClusterUser {
            name: u.name.value.clone(),
            password: u.password.clone().unwrap_or_else(|| u.name.value.clone()),
            md5: false,
        })
        .collect();
    let options = ClusterOptions {
        ports: Some(nodes.iter().map(|n| n.port).collect()),
        replicas: nodes.len() - 1,
        users,
        extra_conf: Vec::new(),
    };
    println!(
        "starting a primary and {} streaming replicas...",
        options.replicas
    );
    let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(&options))
        .await?
        .context("starting the local cluster")?;
    let demo_user = config.auth.users.first().map(|u| u.name.value.clone());
    if let Some(user) = &demo_user {
        cluster.psql(
            0,
            user,
            "CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, body text NOT NULL, at timestamptz DEFAULT now())",
        )?;
    }
    let proxy = Proxy::start_from(config.clone(), Some(path.to_owned())).await?;
    print_banner(&config, &proxy, &cluster);
    let result = serve_until_signal(proxy, Some(path.to_owned())).await;
    println!("stopping PostgreSQL and removing {}", cluster.dir.display());
    drop(cluster);
    result
}

fn print_banner(config: &Config, proxy: &Proxy, cluster: &LocalCluster) {
    let (user, password) = config
        .auth
        .users
        .first()
        .map(|u| (u.name.value.clone(), u.password.clone().unwrap_or_default()))
        .unwrap_or_else(|| ("postgres".into(), String::new()));
    let auth = if password.is_empty() {
        user.clone()
    } else {
        format!("{user}:{password}")
    };
    println!();
    for (node, local) in config.nodes.value.iter().zip(&cluster.nodes) {
        println!(
            "  {:<4} {:<8} 127.0.0.1:{}",
            node.name.value,
            format!("{:?}", node.role.value).to_lowercase(),
            local.port
        );
    }
    println!();
    println!("pgsplit is listening on {}. Connect with:", proxy.addr);
    println!();
    println!("  psql 'postgres://{auth}@{}/{user}'", proxy.addr);
    println!();
    println!("Then try (inet_server_port() tells which node answered):");
    println!("  SELECT inet_server_port();                                  -- a replica");
    println!(
        "  INSERT INTO notes (body) VALUES ('hi') RETURNING inet_server_port();  -- the primary"
    );
    println!("  BEGIN; SELECT inet_server_port(); COMMIT;                   -- the primary");
    println!();
    println!("Press Ctrl-C to stop and remove everything.");
}
