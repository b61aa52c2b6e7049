//! proxy.yaml: the schema, defaults, `${VAR}` expansion and validation.
//!
//! Everything is checked up front, at start and at reload, so that a bad
//! file is refused with its path, line and key named and the running proxy
//! keeps its old configuration. Nothing here touches a socket.

mod rules;
mod values;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

pub use rules::{RuleConfig, RuleFallback, RuleMatch, first_match};
pub use values::{ByteSize, Duration, MissingVar, expand_env};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A `${VAR}` without a value in the environment and no default.
    #[error(
        "{path}:{line}: environment variable {name} is not set (write ${{{name}:-default}} for a default)"
    )]
    MissingVar {
        path: PathBuf,
        line: usize,
        name: String,
    },
    /// Not YAML, or YAML that does not fit the schema (unknown key, wrong type).
    #[error("{path}: {message}")]
    Schema { path: PathBuf, message: String },
    /// Valid YAML with a value that makes no sense.
    #[error("{path}:{line}:{column}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        line: u64,
        column: u64,
        key: String,
        message: String,
    },
}

/// The whole of proxy.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where clients connect.
    pub listen: Spanned<String>,
    /// The zone this proxy runs in: replicas of the same zone are preferred.
    #[serde(default)]
    pub zone: Option<String>,
    /// The HTTP admin API.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// How clients authenticate, and the users the proxy knows.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The PostgreSQL nodes.
    pub nodes: Spanned<Vec<NodeConfig>>,
    /// Server connection pools.
    #[serde(default)]
    pub pool: PoolConfig,
    /// Read/write routing policy.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Credentials of the node monitor.
    #[serde(default)]
    pub monitor: Option<MonitorConfig>,
    /// Replication-lag limits.
    #[serde(default)]
    pub lag: LagConfig,
    /// TLS towards clients.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Limits that protect the proxy from clients.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Runtime worker threads (default: one per CPU). Read at start only.
    #[serde(default)]
    pub workers: Option<Spanned<usize>>,
    /// Run the proxy's threads under Linux `SCHED_BATCH` (the default): a
    /// woken proxy thread does not preempt a running PostgreSQL backend or
    /// client, so on shared cores it handles more events per wakeup (15–25 %
    /// less CPU per transaction where the cores are busy, BENCHMARKS.md);
    /// on idle cores it changes nothing. `false` keeps the default policy.
    /// Read at start only.
    #[serde(default = "default_sched_batch")]
    pub sched_batch: bool,
    /// Who decides which node is the primary.
    #[serde(default)]
    pub topology: TopologyConfig,
}

/// `topology:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyConfig {
    /// `static` (the nodes list, roles discovered from the nodes) or
    /// `patroni` (Patroni names the leader).
    #[serde(default)]
    pub source: TopologySource,
    /// Where Patroni is, for `source: patroni`.
    #[serde(default)]
    pub patroni: Option<PatroniConfig>,
}

/// `topology.source`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopologySource {
    /// The nodes list; the writable node on the highest timeline leads.
    #[default]
    Static,
    /// Patroni's leader and members.
    Patroni,
}

/// `topology.patroni`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatroniConfig {
    /// Members' REST APIs (`http://host:8008`), any subset.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Patroni's etcd (v3), watched for immediate reaction.
    #[serde(default)]
    pub etcd: Option<EtcdConfig>,
    /// How often the REST API is asked when etcd is not watched (or as a
    /// fallback while the watch is down).
    #[serde(default = "default_patroni_poll")]
    pub poll_interval: Duration,
}

fn default_sched_batch() -> bool {
    true
}

fn default_patroni_poll() -> Duration {
    Duration(std::time::Duration::from_millis(500))
}

/// `topology.patroni.etcd`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs (`http://host:2379`).
    pub endpoints: Vec<String>,
    /// Patroni's `scope` (the cluster name).
    pub scope: String,
    /// Patroni's `namespace`.
    #[serde(default = "default_etcd_namespace")]
    pub namespace: String,
}

fn default_etcd_namespace() -> String {
    "/service/".into()
}

impl EtcdConfig {
    /// The key prefix of the cluster: `<namespace>/<scope>/`.
    pub fn prefix(&self) -> String {
        format!(
            "/{}/{}/",
            self.namespace.trim_matches('/'),
            self.scope.trim_matches('/')
        )
        .replace("//", "/")
    }
}

/// How to reach one node: what connections to it (pooled, monitor,
/// catalog, failover) need, without the topology's view of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Node name.
    pub name: std::sync::Arc<str>,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS towards it.
    pub tls: BackendTls,
}

impl Endpoint {
    /// `host:port`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// `limits:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Client connections at once; beyond: 53300.
    pub max_clients: u32,
    /// Time from connect to the end of authentication.
    pub startup_timeout: Duration,
    /// Largest message a client may send (08P01 beyond, before buffering it).
    pub max_message_size: ByteSize,
    /// Close a client idle (outside a transaction) this long; none when absent.
    pub idle_timeout: Option<Duration>,
    /// Sessions that may pin a server connection at once (temp tables,
    /// LISTEN, SQL PREPARE...); a statement that would pin one more gets
    /// 53300. Default: `pool.size - 1`, so unpinned clients keep at least
    /// one connection.
    pub max_pinned_sessions: Option<u32>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_clients: 10_000,
            startup_timeout: Duration(std::time::Duration::from_secs(10)),
            max_message_size: ByteSize(64 << 20),
            idle_timeout: None,
            max_pinned_sessions: None,
        }
    }
}

/// `admin:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// HTTP listen address.
    #[serde(default = "default_admin_listen")]
    pub listen: Spanned<String>,
    /// Bearer token that POST endpoints require when set.
    #[serde(default)]
    pub token: Option<String>,
    /// The SQL console's virtual database on the proxy's own port.
    #[serde(default = "default_admin_database")]
    pub database: String,
    /// Users that may run every console command.
    #[serde(default)]
    pub users: Vec<String>,
    /// Users that may only run the console's SHOW (and EXPLAIN) commands.
    #[serde(default)]
    pub stats_users: Vec<String>,
}

fn default_admin_database() -> String {
    "pgsplit".to_owned()
}

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleRight {
    /// Every command (`admin.users`).
    Admin,
    /// SHOW and EXPLAIN only (`admin.stats_users`).
    Stats,
}

impl AdminConfig {
    /// Whether a session of `user` on `database` is a console session,
    /// and with what right: `Some(None)` for a console database the user
    /// may not use, `None` when `database` is not the console's (or no
    /// console user is configured).
    pub fn console_right(&self, user: &str, database: &str) -> Option<Option<ConsoleRight>> {
        if database != self.database || (self.users.is_empty() && self.stats_users.is_empty()) {
            return None;
        }
        Some(if self.users.iter().any(|u| u == user) {
            Some(ConsoleRight::Admin)
        } else if self.stats_users.iter().any(|u| u == user) {
            Some(ConsoleRight::Stats)
        } else {
            None
        })
    }
}

fn default_admin_listen() -> Spanned<String> {
    unspanned("127.0.0.1:9930".to_owned())
}

fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(
        value,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

fn default_auth_method() -> Spanned<AuthMethod> {
    unspanned(AuthMethod::Trust)
}

/// `auth:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// What clients must do to log in.
    #[serde(default = "default_auth_method")]
    pub method: Spanned<AuthMethod>,
    /// Known users; their passwords also log in to the nodes.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Looks up users not listed in `users` with `query` on the primary,
    /// logged in as this user (listed in `users`, with its password).
    #[serde(default)]
    pub user: Option<String>,
    /// The lookup: `$1` is the user name; the second column is the
    /// stored verifier (NULL refuses the login).
    #[serde(default = "default_auth_query")]
    pub query: String,
    /// How long a lookup's answer may stand in while the primary cannot
    /// be asked.
    #[serde(default = "default_auth_cache_ttl")]
    pub cache_ttl: Duration,
}

/// PgBouncer's default `auth_query`, which also refuses expired roles.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL \
     ELSE rolpassword END FROM pg_authid WHERE rolname = $1 AND rolcanlogin";

fn default_auth_query() -> String {
    DEFAULT_AUTH_QUERY.to_owned()
}

fn default_auth_cache_ttl() -> Duration {
    Duration(std::time::Duration::from_secs(60))
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            method: default_auth_method(),
            users: Vec::new(),
            user: None,
            query: default_auth_query(),
            cache_ttl: default_auth_cache_ttl(),
        }
    }
}

/// `auth.method`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// No password asked.
    #[default]
    Trust,
    /// MD5 challenge.
    Md5,
    /// SCRAM-SHA-256.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
}

/// One entry of `auth.users`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Role name.
    pub name: Spanned<String>,
    /// Plaintext password.
    #[serde(default)]
    pub password: Option<String>,
    /// Only reads: anything that needs the primary is refused (25006).
    #[serde(default)]
    pub read_only: bool,
}

/// One entry of `nodes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique node name, used in metrics and the admin API.
    pub name: Spanned<String>,
    /// Host name or address (with Patroni deciding, may be left out: then
    /// host and port are the member's of that name).
    #[serde(default)]
    pub host: String,
    /// TCP port.
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Configured role (with Patroni deciding, only a first guess; may be
    /// left out).
    #[serde(default = "unstated_role")]
    pub role: Spanned<Role>,
    /// Share of reads among replicas.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Tags that route rules and `/* pgsplit:tag=... */` hints select.
    #[serde(default)]
    pub tags: Vec<String>,
    /// A tagged replica takes ordinary reads too.
    #[serde(default)]
    pub serve_default: bool,
    /// Availability zone.
    #[serde(default)]
    pub zone: Option<String>,
    /// TLS towards this node (default: `tls.backend`).
    #[serde(default)]
    pub tls: Option<BackendTls>,
}

fn default_pg_port() -> u16 {
    5432
}

/// The default read weight.
pub fn default_weight() -> u32 {
    100
}

/// A role not written in the file (allowed only with Patroni deciding).
fn unstated_role() -> Spanned<Role> {
    Spanned::new(
        Role::Replica,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

impl NodeConfig {
    /// A node the file does not list: a Patroni member.
    pub fn discovered(name: &str, host: &str, port: u16, role: Role) -> NodeConfig {
        NodeConfig {
            name: Spanned::new(
                name.to_owned(),
                serde_saphyr::Location::UNKNOWN,
                serde_saphyr::Location::UNKNOWN,
            ),
            host: host.to_owned(),
            port,
            role: Spanned::new(
                role,
                serde_saphyr::Location::UNKNOWN,
                serde_saphyr::Location::UNKNOWN,
            ),
            weight: default_weight(),
            tags: Vec::new(),
            serve_default: false,
            zone: None,
            tls: None,
        }
    }
}

/// A node's configured role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes writes.
    Primary,
    /// Streams from the primary; takes reads.
    Replica,
}

/// `pool:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// When a server connection goes back to the pool.
    pub mode: PoolMode,
    /// Server connections per node, user and database.
    pub size: u32,
    /// How long a client waits for a server connection.
    pub checkout_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            mode: PoolMode::Transaction,
            size: 20,
            checkout_timeout: Duration(std::time::Duration::from_secs(5)),
        }
    }
}

/// `pool.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// Released at the end of each transaction.
    Transaction,
    /// Held for the whole client session.
    Session,
}

/// `routing:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Weight of the primary among readers; 0 = only when no replica is eligible.
    pub primary_reads: u32,
    /// Where reads go when no replica is eligible.
    pub no_replica: NoReplica,
    /// Read-your-writes mode.
    pub read_your_writes: ReadYourWrites,
    /// How long a read may wait for a replica to replay the session's
    /// floor (probing it) before it goes to the primary; 0 = probe once.
    pub read_your_writes_wait: Duration,
    /// Extra function names that force the primary.
    pub write_functions: Vec<String>,
    /// How often the catalog's volatile user functions are re-read.
    pub functions_refresh: Duration,
    /// Session rules for tagged replicas, first match wins.
    pub rules: Vec<RuleConfig>,
    /// Share of reads (0 to 1) sent to other zones even when the proxy's
    /// own zone has an eligible replica.
    pub cross_zone_share: f64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            primary_reads: 0,
            no_replica: NoReplica::Primary,
            read_your_writes: ReadYourWrites::Session,
            read_your_writes_wait: Duration(std::time::Duration::from_millis(5)),
            write_functions: Vec::new(),
            functions_refresh: Duration(std::time::Duration::from_secs(30)),
            rules: Vec::new(),
            cross_zone_share: 0.0,
        }
    }
}

/// `routing.no_replica`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoReplica {
    /// Send the read to the primary.
    Primary,
    /// Fail the read.
    Error,
}

/// `routing.read_your_writes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadYourWrites {
    /// No floor.
    Off,
    /// A session sees its own writes.
    Session,
    /// A read sees every write acknowledged before it began.
    Global,
}

/// `monitor:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    /// Role the monitor logs in as.
    pub user: String,
    /// Its password.
    #[serde(default)]
    pub password: Option<String>,
    /// Database it connects to.
    #[serde(default = "default_monitor_database")]
    pub database: String,
}

fn default_monitor_database() -> String {
    "postgres".into()
}

/// `lag:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LagConfig {
    /// How often nodes are polled.
    pub check_interval: Duration,
    /// A replica at or beyond this gets no reads.
    pub max_lag: Duration,
    /// Same, in bytes of WAL.
    pub max_lag_bytes: ByteSize,
    /// How long one poll may take before it counts as a failure.
    pub check_timeout: Duration,
    /// Consecutive failed polls before a node is marked down.
    pub down_after: u32,
    /// Consecutive good polls before a down node takes traffic again.
    pub up_after: u32,
}

impl Default for LagConfig {
    fn default() -> Self {
        LagConfig {
            check_interval: Duration(std::time::Duration::from_millis(250)),
            max_lag: Duration(std::time::Duration::from_secs(10)),
            max_lag_bytes: ByteSize(64 << 20),
            check_timeout: Duration(std::time::Duration::from_secs(1)),
            down_after: 3,
            up_after: 2,
        }
    }
}

/// `tls:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain served to clients.
    #[serde(default)]
    pub cert: Option<Spanned<PathBuf>>,
    /// Its PEM private key.
    #[serde(default)]
    pub key: Option<Spanned<PathBuf>>,
    /// Refuse clients that do not use TLS.
    #[serde(default)]
    pub require: bool,
    /// TLS towards the nodes (a node's own `tls` wins).
    #[serde(default)]
    pub backend: BackendTls,
    /// PEM CA certificates that node certificates must chain to
    /// (`verify-full`).
    #[serde(default)]
    pub ca: Option<Spanned<PathBuf>>,
}

/// `tls.backend` and `nodes[].tls`: how the proxy talks to a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendTls {
    /// Plaintext.
    #[default]
    Disable,
    /// TLS when the node offers it, unverified.
    Prefer,
    /// TLS or no connection, unverified.
    Require,
    /// TLS, the certificate chained to `tls.ca` and naming the node's host.
    VerifyFull,
}

/// The line and column (1-based) of `key` (`a.b[2].c`) in a YAML text:
/// the deepest of its parts found in order, each below the one before;
/// line 1 when not even the first is there (a key left at its default).
pub fn locate(text: &str, key: &str) -> (u64, u64) {
    let parts: Vec<&str> = key
        .split('.')
        .map(|p| p.split('[').next().unwrap_or(p))
        .filter(|p| !p.is_empty())
        .collect();
    let mut found = (1, 1);
    let mut from = 0;
    let lines: Vec<&str> = text.lines().collect();
    for part in parts {
        let hit = lines.iter().enumerate().skip(from).find_map(|(i, l)| {
            let trimmed = l
                .trim_start()
                .trim_start_matches("- ")
                .trim_start_matches('{')
                .trim_start();
            let at = l.find(part)?;
            (trimmed.starts_with(part) && l[at + part.len()..].trim_start().starts_with(':')
                || l.contains(&format!(" {part}:"))
                || l.contains(&format!("{{{part}:")))
            .then_some((i, at))
        });
        match hit {
            Some((i, at)) => {
                found = (i as u64 + 1, at as u64 + 1);
                from = i + 1;
            }
            None => break,
        }
    }
    found
}

impl Config {
    fn validate_topology(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            line: 0,
            column: 0,
            key: key.to_owned(),
            message,
        };
        let Some(patroni) = &self.topology.patroni else {
            if self.topology.source == TopologySource::Patroni {
                return Err(invalid(
                    "topology.source",
                    "source: patroni needs topology.patroni.urls (members' REST APIs) and/or topology.patroni.etcd".into(),
                ));
            }
            return Ok(());
        };
        if patroni.urls.is_empty() && patroni.etcd.is_none() {
            return Err(invalid(
                "topology.patroni",
                "needs urls (members' REST APIs) and/or etcd".into(),
            ));
        }
        let endpoints = patroni.etcd.iter().flat_map(|e| &e.endpoints);
        for (i, url) in patroni.urls.iter().enumerate() {
            if !url.starts_with("http://") {
                return Err(invalid(
                    &format!("topology.patroni.urls[{i}]"),
                    format!("{url:?}: only http://host:port is supported"),
                ));
            }
        }
        for url in endpoints {
            if !url.starts_with("http://") {
                return Err(invalid(
                    "topology.patroni.etcd.endpoints",
                    format!("{url:?}: only http://host:port is supported"),
                ));
            }
        }
        if let Some(etcd) = &patroni.etcd
            && (etcd.endpoints.is_empty() || etcd.scope.trim_matches('/').is_empty())
        {
            return Err(invalid(
                "topology.patroni.etcd",
                "needs endpoints and the cluster's scope".into(),
            ));
        }
        Ok(())
    }

    /// Whether Patroni decides the primary.
    pub fn follows_patroni(&self) -> bool {
        self.topology.source == TopologySource::Patroni
    }

    /// `limits.max_pinned_sessions`, or its default (`pool.size - 1`, at
    /// least 1).
    pub fn max_pinned_sessions(&self) -> usize {
        let cap = self
            .limits
            .max_pinned_sessions
            .unwrap_or_else(|| self.pool.size.saturating_sub(1).max(1));
        usize::try_from(cap).unwrap_or(usize::MAX)
    }

    /// Reads, expands, parses and validates a file.
    ///
    /// # Errors
    /// Any [`ConfigError`], naming the file, line and key.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Config::from_text(path, &text, |name| std::env::var(name).ok())
    }

    /// Expands, parses and validates `text` as if read from `path`.
    ///
    /// # Errors
    /// Any [`ConfigError`].
    pub fn from_text(
        path: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let expanded = expand_env(text, env).map_err(|m| ConfigError::MissingVar {
            path: path.to_owned(),
            line: m.line,
            name: m.name,
        })?;
        let config: Config =
            serde_saphyr::from_str(&expanded).map_err(|e| ConfigError::Schema {
                path: path.to_owned(),
                message: e
                    .to_string()
                    .replace("<input>", &path.display().to_string()),
            })?;
        config.validate(path).map_err(|e| match e {
            // A check that has no position of its own (a whole section,
            // a value that came from a default) points at the key's line.
            ConfigError::Invalid {
                path,
                line: 0,
                key,
                message,
                ..
            } => {
                let (line, column) = locate(&expanded, &key);
                ConfigError::Invalid {
                    path,
                    line,
                    column,
                    key,
                    message,
                }
            }
            other => other,
        })?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid =
            |loc: &serde_saphyr::Location, key: &str, message: String| ConfigError::Invalid {
                path: path.to_owned(),
                line: loc.line(),
                column: loc.column(),
                key: key.to_owned(),
                message,
            };
        if self.listen.value.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                &self.listen.referenced,
                "listen",
                format!("{:?} is not an address:port", self.listen.value),
            ));
        }
        if let Some(admin) = &self.admin
            && admin.listen.value.parse::<SocketAddr>().is_err()
        {
            return Err(invalid(
                &admin.listen.referenced,
                "admin.listen",
                format!("{:?} is not an address:port", admin.listen.value),
            ));
        }
        if let Some(workers) = &self.workers
            && workers.value == 0
        {
            return Err(invalid(
                &workers.referenced,
                "workers",
                "needs at least one worker thread".to_owned(),
            ));
        }
        let mut users = HashSet::new();
        for (i, user) in self.auth.users.iter().enumerate() {
            if !users.insert(user.name.value.as_str()) {
                return Err(invalid(
                    &user.name.referenced,
                    &format!("auth.users[{i}].name"),
                    format!("duplicate user {:?}", user.name.value),
                ));
            }
            if self.auth.method.value != AuthMethod::Trust && user.password.is_none() {
                return Err(invalid(
                    &user.name.referenced,
                    &format!("auth.users[{i}].password"),
                    format!(
                        "user {:?} needs a password with auth.method md5",
                        user.name.value
                    ),
                ));
            }
        }
        if let Some(auth_user) = &self.auth.user
            && self.user(auth_user).is_none()
        {
            return Err(invalid(
                &serde_saphyr::Location::UNKNOWN,
                "auth.user",
                format!(
                    "{auth_user:?} must be listed in auth.users (with the password it logs in to the primary with)"
                ),
            ));
        }
        self.validate_nodes(path)?;
        self.validate_topology(path)?;
        if let Err((key, message)) = rules::validate(&self.routing.rules) {
            return Err(invalid(&serde_saphyr::Location::UNKNOWN, &key, message));
        }
        if !(0.0..=1.0).contains(&self.routing.cross_zone_share) {
            return Err(invalid(
                &serde_saphyr::Location::UNKNOWN,
                "routing.cross_zone_share",
                "must be between 0 and 1".into(),
            ));
        }
        let durations = [
            ("pool.checkout_timeout", self.pool.checkout_timeout),
            ("lag.check_interval", self.lag.check_interval),
            ("lag.max_lag", self.lag.max_lag),
            ("lag.check_timeout", self.lag.check_timeout),
            ("routing.functions_refresh", self.routing.functions_refresh),
        ];
        if self.lag.down_after == 0 || self.lag.up_after == 0 || self.lag.max_lag_bytes.0 == 0 {
            return Err(invalid(
                &serde_saphyr::Location::UNKNOWN,
                "lag",
                "down_after, up_after and max_lag_bytes must be at least 1".into(),
            ));
        }
        for (key, d) in durations {
            if d.0.is_zero() {
                return Err(invalid(
                    &serde_saphyr::Location::UNKNOWN,
                    key,
                    "must be greater than 0".into(),
                ));
            }
        }
        if self.limits.max_clients == 0
            || self.limits.max_message_size.0 < 1024
            || self.limits.startup_timeout.0.is_zero()
        {
            return Err(invalid(
                &serde_saphyr::Location::UNKNOWN,
                "limits",
                "max_clients and startup_timeout must be above 0, max_message_size at least 1kB"
                    .into(),
            ));
        }
        if self.pool.size == 0 {
            return Err(invalid(
                &serde_saphyr::Location::UNKNOWN,
                "pool.size",
                "must be at least 1".into(),
            ));
        }
        if let Some(tls) = &self.tls {
            for (key, file) in [
                ("tls.cert", &tls.cert),
                ("tls.key", &tls.key),
                ("tls.ca", &tls.ca),
            ] {
                if let Some(file) = file
                    && !file.value.is_file()
                {
                    return Err(invalid(
                        &file.referenced,
                        key,
                        format!("{} is not a readable file", file.value.display()),
                    ));
                }
            }
            if tls.cert.is_some() != tls.key.is_some() || (tls.require && tls.cert.is_none()) {
                return Err(invalid(
                    &serde_saphyr::Location::UNKNOWN,
                    "tls",
                    "cert and key go together, and require needs them".into(),
                ));
            }
        }
        let verify_full = self
            .nodes
            .value
            .iter()
            .any(|n| self.backend_tls(n) == BackendTls::VerifyFull);
        if verify_full && self.tls.as_ref().and_then(|t| t.ca.as_ref()).is_none() {
            return Err(invalid(
                &serde_saphyr::Location::UNKNOWN,
                "tls.ca",
                "verify-full needs a CA file".into(),
            ));
        }
        Ok(())
    }

    fn validate_nodes(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid =
            |loc: &serde_saphyr::Location, key: String, message: String| ConfigError::Invalid {
                path: path.to_owned(),
                line: loc.line(),
                column: loc.column(),
                key,
                message,
            };
        let nodes = &self.nodes.value;
        let mut names = HashSet::new();
        let mut primaries = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            if node.name.value.is_empty() || !names.insert(node.name.value.as_str()) {
                return Err(invalid(
                    &node.name.referenced,
                    format!("nodes[{i}].name"),
                    format!("duplicate or empty node name {:?}", node.name.value),
                ));
            }
            if node.role.value == Role::Primary {
                primaries.push((i, node));
            }
            if !self.follows_patroni() {
                if node.host.is_empty() {
                    return Err(invalid(
                        &node.name.referenced,
                        format!("nodes[{i}].host"),
                        format!(
                            "node {:?} needs a host (only Patroni can supply one)",
                            node.name.value
                        ),
                    ));
                }
                if node.role.referenced == serde_saphyr::Location::UNKNOWN {
                    return Err(invalid(
                        &node.name.referenced,
                        format!("nodes[{i}].role"),
                        format!("node {:?} needs role: primary or replica", node.name.value),
                    ));
                }
            }
        }
        match primaries.as_slice() {
            [_] => Ok(()),
            // Patroni names the leader (and may supply every node).
            [] if self.follows_patroni() => Ok(()),
            [] => Err(invalid(
                &self.nodes.referenced,
                "nodes".into(),
                "no node has role: primary (exactly one is needed)".into(),
            )),
            [_, (i, second), ..] => Err(invalid(
                &second.role.referenced,
                format!("nodes[{i}].role"),
                format!(
                    "node {:?} is a second primary (exactly one is allowed)",
                    second.name.value
                ),
            )),
        }
    }

    /// The primary's configuration: the node with `role: primary` (with
    /// Patroni deciding, there may be none: then the first node, a first
    /// guess until Patroni has been read).
    ///
    /// # Panics
    /// With no node at all (Patroni mode before its members were added).
    pub fn primary(&self) -> &NodeConfig {
        self.nodes
            .value
            .iter()
            .find(|n| n.role.value == Role::Primary)
            .or_else(|| self.nodes.value.first())
            .expect("at least one node")
    }

    /// The configured user of that name.
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.auth.users.iter().find(|u| u.name.value == name)
    }

    /// How the proxy talks to `node`: its own `tls`, else `tls.backend`.
    pub fn backend_tls(&self, node: &NodeConfig) -> BackendTls {
        node.tls
            .or_else(|| self.tls.as_ref().map(|t| t.backend))
            .unwrap_or_default()
    }

    /// Who the monitor logs in as: `monitor`, else the first user.
    pub fn monitor_login(&self) -> (String, Option<String>, String) {
        match &self.monitor {
            Some(m) => (m.user.clone(), m.password.clone(), m.database.clone()),
            None => {
                let user = self.auth.users.first();
                (
                    user.map_or_else(|| "postgres".to_owned(), |u| u.name.value.clone()),
                    user.and_then(|u| u.password.clone()),
                    default_monitor_database(),
                )
            }
        }
    }

    /// Listen address (validated).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.value.parse().expect("validated listen address")
    }
}

#[cfg(test)]
mod tests;
