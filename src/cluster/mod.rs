//! Local PostgreSQL clusters for `pgsplit demo`, the integration tests and
//! the benchmarks: a primary from `initdb` and streaming replicas from
//! `pg_basebackup -R`, on loopback ports, in a temporary directory.
//!
//! PostgreSQL refuses to run as root, so when pgsplit runs as root every
//! server command runs as the `postgres` OS user (`runuser -u postgres`)
//! and the directory is handed to it. A watchdog process stops the servers
//! and removes the directory if the owning process dies without cleaning
//! up. Blocking code: call it outside the async hot path.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Runs the shell command `cleanup` once this process has exited, from a
/// watchdog in a session of its own (so it outlives this process, however
/// it dies).
///
/// # Errors
/// The watchdog could not be started.
pub fn on_exit(cleanup: &str) -> anyhow::Result<()> {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {cleanup}",
        pid = std::process::id()
    );
    Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the cleanup watchdog")?;
    Ok(())
}

/// A role the cluster creates.
#[derive(Debug, Clone)]
pub struct ClusterUser {
    /// Role name.
    pub name: String,
    /// Password.
    pub password: String,
    /// Store the password as MD5 and require md5 authentication for it.
    pub md5: bool,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Ports for the primary and each replica; free ports when `None`.
    pub ports: Option<Vec<u16>>,
    /// Number of streaming replicas.
    pub replicas: usize,
    /// Roles to create (each gets a database of its own name).
    pub users: Vec<ClusterUser>,
    /// Extra postgresql.conf lines for every node.
    pub extra_conf: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            ports: None,
            replicas: 2,
            users: vec![ClusterUser {
                name: "app".into(),
                password: "app".into(),
                md5: false,
            }],
            extra_conf: Vec::new(),
        }
    }
}

/// One server of the cluster.
#[derive(Debug, Clone)]
pub struct LocalNode {
    /// `pg1` for the primary, `pg2`, `pg3`... for replicas.
    pub name: String,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Data directory.
    pub data: PathBuf,
}

/// A running local cluster; dropping it stops the servers and removes the
/// directory.
#[derive(Debug)]
pub struct LocalCluster {
    /// The temporary directory holding every data directory.
    pub dir: PathBuf,
    /// Primary first, then replicas.
    pub nodes: Vec<LocalNode>,
    bin: PathBuf,
    as_postgres: bool,
    stopped: bool,
}

/// Where the PostgreSQL server binaries are: `$PGSPLIT_PG_BIN`, else the
/// newest `/usr/lib/postgresql/*/bin`.
///
/// # Errors
/// No installation found; the message says how to install one.
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("PGSPLIT_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).context(
        "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin; \
         install them with `apt-get update && apt-get install -y postgresql` \
         or set PGSPLIT_PG_BIN",
    )
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a loopback port")
}

/// Whether this process runs as root (`/proc/self` belongs to the
/// effective user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

impl LocalCluster {
    /// Starts a primary and `options.replicas` streaming replicas and waits
    /// until every replica streams.
    ///
    /// # Errors
    /// Any server command failing; the message includes its output.
    pub fn start(options: &ClusterOptions) -> anyhow::Result<LocalCluster> {
        let bin = find_bin_dir()?;
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!(
            "pgsplit-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        let ports = options
            .ports
            .clone()
            .unwrap_or_else(|| (0..=options.replicas).map(|_| free_port()).collect());
        if ports.len() != options.replicas + 1 {
            bail!("need {} ports, got {}", options.replicas + 1, ports.len());
        }
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, &port)| LocalNode {
                name: format!("pg{}", i + 1),
                port,
                data: dir.join(format!("pg{}", i + 1)),
            })
            .collect();
        let cluster = LocalCluster {
            dir,
            nodes,
            bin,
            as_postgres,
            stopped: false,
        };
        if as_postgres {
            cluster.run_cmd(
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&cluster.dir),
            )?;
        }
        cluster.spawn_watchdog()?;
        cluster.init_primary(options)?;
        for i in 1..cluster.nodes.len() {
            cluster.init_replica(i, options)?;
        }
        cluster.wait_streaming(options.replicas, Duration::from_secs(60))?;
        Ok(cluster)
    }

    fn server_cmd(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run_cmd(&self, cmd: &mut Command) -> anyhow::Result<String> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn spawn_watchdog(&self) -> anyhow::Result<()> {
        let mut stops = String::new();
        for node in &self.nodes {
            let pg_ctl = self.bin.join("pg_ctl");
            let prefix = if self.as_postgres {
                "runuser -u postgres -- "
            } else {
                ""
            };
            stops.push_str(&format!(
                "{prefix}{} -D '{}' stop -m immediate >/dev/null 2>&1; ",
                pg_ctl.display(),
                node.data.display()
            ));
        }
        on_exit(&format!("{stops} rm -rf '{}'", self.dir.display()))
    }

    fn conf_lines(&self, port: u16, options: &ClusterOptions) -> String {
        let mut conf = format!(
            "\n# pgsplit local cluster\nlisten_addresses = '127.0.0.1'\nport = {port}\n\
             unix_socket_directories = '{dir}'\nwal_level = replica\nmax_wal_senders = 10\n\
             max_replication_slots = 10\nhot_standby = on\nfsync = off\nfull_page_writes = off\n\
             shared_buffers = 32MB\nmax_connections = 1000\nwal_keep_size = 256MB\n\
             wal_receiver_status_interval = 1s\nhot_standby_feedback = on\n\
             logging_collector = off\nlog_min_messages = warning\n",
            dir = self.dir.display()
        );
        for line in &options.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        conf
    }

    fn append(&self, file: &Path, text: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(file)?;
        f.write_all(text.as_bytes())?;
        Ok(())
    }

    fn init_primary(&self, options: &ClusterOptions) -> anyhow::Result<()> {
        let node = &self.nodes[0];
        self.run_cmd(self.server_cmd("initdb").arg("-D").arg(&node.data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
            "--no-instructions",
        ]))?;
        self.append(
            &node.data.join("postgresql.conf"),
            &self.conf_lines(node.port, options),
        )?;
        let mut hba = String::from(
            "local all all trust\nhost replication all 127.0.0.1/32 trust\nhost all postgres 127.0.0.1/32 trust\n",
        );
        for user in options.users.iter().filter(|u| u.md5) {
            hba.push_str(&format!("host all {} 127.0.0.1/32 md5\n", user.name));
        }
        hba.push_str("host all all 127.0.0.1/32 scram-sha-256\n");
        std::fs::write(node.data.join("pg_hba.conf"), hba)?;
        self.pg_ctl(0, "start")?;
        for user in &options.users {
            let encryption = if user.md5 { "md5" } else { "scram-sha-256" };
            let name = user.name.replace('"', "\"\"");
            let password = user.password.replace('\'', "''");
            // An existing role (postgres itself) gets the password; others are created.
            let exists = self.psql(
                0,
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_roles WHERE rolname = '{}'",
                    user.name.replace('\'', "''")
                ),
            )?;
            let verb = if exists.trim() == "1" {
                "ALTER ROLE"
            } else {
                "CREATE ROLE"
            };
            self.psql(
                0,
                "postgres",
                &format!("SET password_encryption = '{encryption}'; {verb} \"{name}\" LOGIN SUPERUSER PASSWORD '{password}'"),
            )?;
            let has_db = self.psql(
                0,
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_database WHERE datname = '{}'",
                    user.name.replace('\'', "''")
                ),
            )?;
            if has_db.trim() == "0" {
                // CREATE DATABASE refuses to run inside psql's implicit transaction.
                self.psql(
                    0,
                    "postgres",
                    &format!("CREATE DATABASE \"{name}\" OWNER \"{name}\""),
                )?;
            }
        }
        Ok(())
    }

    /// Adds a streaming replica of node `from` on a free port, started.
    ///
    /// # Errors
    /// pg_basebackup or pg_ctl failed.
    pub fn add_replica(&mut self, from: usize) -> anyhow::Result<usize> {
        let i = self.nodes.len();
        self.nodes.push(LocalNode {
            name: format!("pg{}", i + 1),
            port: free_port(),
            data: self.dir.join(format!("pg{}", i + 1)),
        });
        self.base_backup(i, from, &ClusterOptions::default())?;
        Ok(i)
    }

    /// Throws node `i`'s data away and makes it a fresh streaming replica
    /// of node `from` (how an old primary rejoins after a failover here).
    ///
    /// # Errors
    /// pg_basebackup or pg_ctl failed.
    pub fn rebuild_as_replica(&self, i: usize, from: usize) -> anyhow::Result<()> {
        let _ = self.pg_ctl(i, "kill");
        let data = &self.nodes[i].data;
        if self.as_postgres {
            self.run_cmd(Command::new("rm").arg("-rf").arg(data))?;
        } else {
            std::fs::remove_dir_all(data)?;
        }
        self.base_backup(i, from, &ClusterOptions::default())
    }

    fn init_replica(&self, i: usize, options: &ClusterOptions) -> anyhow::Result<()> {
        self.base_backup(i, 0, options)
    }

    fn base_backup(&self, i: usize, from: usize, options: &ClusterOptions) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let primary = &self.nodes[from];
        self.run_cmd(
            self.server_cmd("pg_basebackup")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &primary.port.to_string(),
                    "-U",
                    "postgres",
                    "-D",
                ])
                .arg(&node.data)
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]),
        )?;
        self.append(
            &node.data.join("postgresql.conf"),
            &format!("port = {}\n{}", node.port, options.extra_conf.join("\n")),
        )?;
        self.pg_ctl(i, "start")?;
        Ok(())
    }

    fn wait_streaming(&self, replicas: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let n = self
                .psql(
                    0,
                    "postgres",
                    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                )?
                .trim()
                .parse::<usize>()
                .unwrap_or(0);
            if n >= replicas {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {n} of {replicas} replicas streaming after {within:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `pg_ctl start|stop|restart` on node `i` (stop is `-m fast`).
    ///
    /// # Errors
    /// pg_ctl failed.
    pub fn pg_ctl(&self, i: usize, action: &str) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("-D").arg(&node.data).args(["-w", "-t", "60"]);
        match action {
            "start" | "restart" => {
                cmd.arg("-l")
                    .arg(self.dir.join(format!("{}.log", node.name)))
                    .arg(action);
            }
            "stop" => {
                cmd.args(["-m", "fast", "stop"]);
            }
            "kill" => {
                cmd.args(["-m", "immediate", "stop"]);
            }
            other => bail!("unknown pg_ctl action {other}"),
        }
        self.run_cmd(&mut cmd).map(drop)
    }

    /// Runs SQL on node `i` through its Unix socket as `postgres` and
    /// returns psql's unaligned, tuples-only output.
    ///
    /// # Errors
    /// psql failed.
    pub fn psql(&self, i: usize, database: &str, sql: &str) -> anyhow::Result<String> {
        self.run_cmd(
            Command::new(self.bin.join("psql"))
                .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-U", "postgres", "-h"])
                .arg(&self.dir)
                .args([
                    "-p",
                    &self.nodes[i].port.to_string(),
                    "-d",
                    database,
                    "-c",
                    sql,
                ]),
        )
    }

    /// The directory of the server binaries in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// Stops every server and removes the directory.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        for i in (0..self.nodes.len()).rev() {
            let _ = self.pg_ctl(i, "kill");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
