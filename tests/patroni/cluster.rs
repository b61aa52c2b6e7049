//! A real Patroni cluster for the tests: one etcd (v3) and three Patroni
//! members on loopback ports in a temporary directory, run as the
//! `postgres` OS user when the tests run as root. Patroni and etcd come
//! from Debian (`apt-get install -y etcd-server patroni`, done here when
//! root and missing). A watchdog stops everything if the test process
//! dies without cleaning up.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgsplit::cluster::{find_bin_dir, free_port};
use serde_json::Value;

/// One member.
pub struct Member {
    pub name: String,
    pub pg_port: u16,
    pub api_port: u16,
    pub config: PathBuf,
    pub data: PathBuf,
    child: Option<Child>,
}

impl Member {
    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }
}

pub struct PatroniCluster {
    pub dir: PathBuf,
    pub etcd_port: u16,
    pub scope: String,
    pub members: Vec<Member>,
    etcd: Option<Child>,
    owner: Option<(u32, u32)>,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Installs etcd and Patroni when missing (as root), or says how.
fn provision() {
    let have = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have("patroni") && have("etcd") && have("patronictl") {
        return;
    }
    assert!(
        is_root(),
        "Patroni and etcd are missing: run 'sudo apt-get update && sudo apt-get install -y etcd-server patroni'"
    );
    let ok = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server patroni",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok && have("patroni") && have("etcd"),
        "installing Patroni and etcd failed: run 'apt-get install -y etcd-server patroni'"
    );
}

/// uid and gid of the postgres OS user.
fn postgres_ids() -> (u32, u32) {
    let out = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .unwrap();
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let out = Command::new("id")
        .args(["-g", "postgres"])
        .output()
        .unwrap();
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (uid, gid)
}

fn http(method: &str, url: &str, body: Option<&str>) -> Option<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (base, path) = url[7..]
        .split_once('/')
        .map(|(a, p)| (format!("http://{a}"), format!("/{p}")))
        .unwrap();
    rt.block_on(pgsplit::http::call(
        &base,
        method,
        &path,
        &[],
        body.map(str::as_bytes),
        Duration::from_secs(5),
    ))
    .ok()
    .map(|a| (a.status, a.text()))
}

fn wait(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {within:?} waiting for {what}");
}

impl PatroniCluster {
    /// Starts etcd and three members; returns once pg1 leads and the other
    /// two stream from it.
    pub fn start() -> PatroniCluster {
        provision();
        let bin = find_bin_dir().expect("PostgreSQL binaries");
        let dir = std::env::temp_dir().join(format!(
            "pgsplit-patroni-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let owner = is_root().then(postgres_ids);
        let scope = "pgsplit".to_owned();
        let etcd_port = free_port();
        let peer_port = free_port();
        let members: Vec<Member> = (1..=3)
            .map(|i| {
                let name = format!("pg{i}");
                Member {
                    config: dir.join(format!("{name}.yml")),
                    data: dir.join(&name),
                    name,
                    pg_port: free_port(),
                    api_port: free_port(),
                    child: None,
                }
            })
            .collect();
        for m in &members {
            std::fs::write(&m.config, member_config(&dir, &bin, &scope, etcd_port, m)).unwrap();
        }
        let mut cluster = PatroniCluster {
            dir,
            etcd_port,
            scope,
            members,
            etcd: None,
            owner,
        };
        cluster.chown();
        cluster.spawn_watchdog();
        let etcd = cluster.spawn(
            "etcd",
            &[
                "--name",
                "e0",
                "--data-dir",
                &cluster.dir.join("etcd").display().to_string(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{etcd_port}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{etcd_port}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
                "--initial-cluster",
                &format!("e0=http://127.0.0.1:{peer_port}"),
            ],
            "etcd.log",
        );
        cluster.etcd = Some(etcd);
        let health = format!("http://127.0.0.1:{etcd_port}/health");
        wait(Duration::from_secs(30), "etcd", || {
            http("GET", &health, None).is_some_and(|(s, _)| s == 200)
        });
        cluster.start_member(0);
        wait(Duration::from_secs(90), "pg1 to lead", || {
            cluster.leader().as_deref() == Some("pg1")
        });
        cluster.start_member(1);
        cluster.start_member(2);
        cluster.wait_healthy(Duration::from_secs(120));
        cluster
    }

    fn chown(&self) {
        if let Some((uid, gid)) = self.owner {
            Command::new("chown")
                .args([
                    "-R",
                    &format!("{uid}:{gid}"),
                    &self.dir.display().to_string(),
                ])
                .status()
                .unwrap();
        }
    }

    fn spawn(&self, program: &str, args: &[&str], log: &str) -> Child {
        let log = std::fs::File::create(self.dir.join(log)).unwrap();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env("HOME", &self.dir);
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd.spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"))
    }

    /// Starts (or starts again) member `i`'s Patroni.
    pub fn start_member(&mut self, i: usize) {
        let config = self.members[i].config.display().to_string();
        let log = format!("{}.log", self.members[i].name);
        let child = self.spawn("patroni", &[&config], &log);
        self.members[i].child = Some(child);
    }

    /// Patroni's `/cluster`, from any member that answers.
    pub fn cluster_view(&self) -> Option<Value> {
        self.members.iter().find_map(|m| {
            let (status, body) = http("GET", &format!("{}/cluster", m.api()), None)?;
            (status == 200)
                .then(|| serde_json::from_str(&body).ok())
                .flatten()
        })
    }

    /// The member Patroni names leader, running.
    pub fn leader(&self) -> Option<String> {
        let view = self.cluster_view()?;
        view["members"].as_array()?.iter().find_map(|m| {
            (m["role"] == "leader" && m["state"] == "running")
                .then(|| m["name"].as_str().unwrap_or_default().to_owned())
        })
    }

    /// Waits until there is a running leader and every other member runs
    /// as a replica with no lag.
    pub fn wait_healthy(&self, within: Duration) {
        wait(within, "a healthy Patroni cluster", || {
            let Some(view) = self.cluster_view() else {
                return false;
            };
            let Some(members) = view["members"].as_array() else {
                return false;
            };
            members.len() == self.members.len()
                && members.iter().any(|m| m["role"] == "leader")
                && members.iter().all(|m| {
                    m["state"] == "running"
                        && (m["role"] == "leader" || m["lag"].as_u64() == Some(0))
                })
        });
    }

    /// Waits until every member but `leader` has replayed all the leader
    /// has written so far (Patroni's `lag` counts WAL received, not
    /// replayed: a replica that has the `CREATE DATABASE` record but not
    /// yet replayed it refuses logins to that database).
    pub fn wait_replayed(&self, leader: &str, within: Duration) {
        let target = self.psql(leader, "postgres", "SELECT pg_current_wal_lsn()");
        let target = target.trim();
        for m in self.members.iter().filter(|m| m.name != leader) {
            wait(within, &format!("{} to replay {target}", m.name), || {
                self.psql(
                    &m.name,
                    "postgres",
                    &format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"),
                )
                .trim()
                    == "t"
            });
        }
    }

    pub fn member(&self, name: &str) -> &Member {
        self.members.iter().find(|m| m.name == name).unwrap()
    }

    /// Runs `sql` on member `name`, database `db`, with psql as postgres.
    pub fn psql(&self, name: &str, db: &str, sql: &str) -> String {
        let bin = find_bin_dir().unwrap();
        let mut cmd = Command::new(bin.join("psql"));
        cmd.args([
            "-X",
            "-qAt",
            "-h",
            "127.0.0.1",
            "-p",
            &self.member(name).pg_port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "psql on {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `patronictl switchover` from `leader` to `candidate`.
    pub fn patronictl_switchover(&self, leader: &str, candidate: &str) -> String {
        let mut cmd = Command::new("patronictl");
        cmd.args([
            "-c",
            &self.members[0].config.display().to_string(),
            "switchover",
            "--leader",
            leader,
            "--candidate",
            candidate,
            "--force",
        ])
        .env("HOME", &self.dir);
        let out = cmd.output().expect("patronictl");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Kills member `name`'s postmaster with SIGKILL (its Patroni lives on).
    pub fn kill_postmaster(&self, name: &str) {
        let pid_file = self.member(name).data.join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file).unwrap();
        let pid: i32 = text.lines().next().unwrap().trim().parse().unwrap();
        // SAFETY: kill has no memory preconditions.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }

    fn spawn_watchdog(&self) {
        pgsplit::cluster::on_exit(&format!(
            "pkill -TERM -f '{dir}/pg[0-9].yml'; sleep 5; pkill -KILL -f '{dir}/pg[0-9].yml'; \
             pkill -KILL -f '{dir}/etcd'; pkill -KILL -f '{dir}/pg[0-9]'; rm -rf '{dir}'",
            dir = self.dir.display()
        ))
        .unwrap();
    }

    /// The log of a member or of etcd, for a failing test's message.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(child) = &m.child {
                // SAFETY: kill has no memory preconditions.
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGTERM);
                }
            }
        }
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // A postmaster Patroni left behind (a killed Patroni).
        let bin = find_bin_dir().unwrap();
        for m in &self.members {
            if m.data.join("postmaster.pid").exists() {
                let mut cmd = Command::new(bin.join("pg_ctl"));
                cmd.args([
                    "-D",
                    &m.data.display().to_string(),
                    "stop",
                    "-m",
                    "immediate",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
                if let Some((uid, gid)) = self.owner {
                    cmd.uid(uid).gid(gid);
                }
                let _ = cmd.status();
            }
        }
        if let Some(mut etcd) = self.etcd.take() {
            let _ = etcd.kill();
            let _ = etcd.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn member_config(dir: &Path, bin: &Path, scope: &str, etcd_port: u16, m: &Member) -> String {
    format!(
        r#"scope: {scope}
name: {name}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:{api}
  connect_address: 127.0.0.1:{api}
etcd3:
  hosts: 127.0.0.1:{etcd_port}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    primary_start_timeout: 0
    maximum_lag_on_failover: 1073741824
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        wal_log_hints: "on"
        max_connections: 200
        fsync: "off"
        wal_receiver_status_interval: 1s
  initdb:
    - encoding: UTF8
    - auth: trust
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {data}
  bin_dir: {bin}
  pgpass: {dir}/pgpass-{name}
  authentication:
    superuser: {{username: postgres, password: pw}}
    replication: {{username: replicator, password: pw}}
    rewind: {{username: postgres, password: pw}}
  parameters:
    unix_socket_directories: {dir}
"#,
        name = m.name,
        api = m.api_port,
        pg = m.pg_port,
        data = m.data.display(),
        bin = bin.display(),
        dir = dir.display(),
    )
}
