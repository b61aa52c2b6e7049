//! The driver matrix: real client libraries run their check scripts
//! (tests/drivers/) through the proxy, in transaction and session pooling.
//! Each script exits non-zero on any failure. The drivers are installed
//! under target/drivers on first use; when that is impossible the test
//! fails with the command to run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::harness::*;

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn drivers_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest().join("target"));
    target.join("drivers")
}

fn run_or_explain(cmd: &mut Command, fix: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}; to fix: {fix}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}\nto fix: {fix}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// psycopg 3, asyncpg and SQLAlchemy, pinned, in target/drivers/python.
pub fn python_deps() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = drivers_dir().join("python");
        if !dir.join("psycopg").is_dir()
            || !dir.join("asyncpg").is_dir()
            || !dir.join("sqlalchemy").is_dir()
        {
            let packages = [
                "psycopg[binary]==3.3.9",
                "asyncpg==0.32.0",
                "sqlalchemy==2.1.9",
            ];
            let fix = format!(
                "python3 -m pip install --target {} {}",
                dir.display(),
                packages.join(" ")
            );
            run_or_explain(
                Command::new("python3")
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        "--target",
                    ])
                    .arg(&dir)
                    .args(packages),
                &fix,
            );
        }
        dir
    })
}

/// node-postgres, pinned, in target/drivers/node.
fn node_deps() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = drivers_dir().join("node");
        if !dir.join("node_modules/pg").is_dir() {
            let fix = format!("npm install --prefix {} pg@8.23.1", dir.display());
            std::fs::create_dir_all(&dir).unwrap();
            run_or_explain(
                Command::new("npm")
                    .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
                    .arg(&dir)
                    .arg("pg@8.23.1"),
                &fix,
            );
        }
        dir.join("node_modules")
    })
}

/// pgjdbc from Debian's libpostgresql-jdbc-java.
pub fn jdbc_jar() -> &'static Path {
    static JAR: OnceLock<PathBuf> = OnceLock::new();
    JAR.get_or_init(|| {
        let jar = PathBuf::from("/usr/share/java/postgresql.jar");
        if !jar.is_file() {
            let fix = "apt-get update && apt-get install -y libpostgresql-jdbc-java";
            let root = std::fs::metadata("/proc/self")
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
            assert!(
                matches!(root, Ok(true)),
                "pgjdbc is missing and this is not root; run: {fix}"
            );
            let mut apt = Command::new("apt-get");
            apt.args(["install", "-y", "libpostgresql-jdbc-java"])
                .env("DEBIAN_FRONTEND", "noninteractive");
            if !apt.output().is_ok_and(|o| o.status.success()) {
                run_or_explain(Command::new("apt-get").arg("update"), fix);
                run_or_explain(&mut apt, fix);
            }
        }
        jar
    })
}

fn env_for<'c>(cmd: &'c mut Command, proxy: &pgsplit::app::Proxy, mode: &str) -> &'c mut Command {
    let replicas: Vec<String> = replica_ports().iter().map(u16::to_string).collect();
    cmd.env("PGSPLIT_PORT", proxy.addr.port().to_string())
        .env(
            "PGSPLIT_ADMIN",
            proxy.admin_addr.expect("admin API").to_string(),
        )
        .env("PRIMARY_PORT", primary_port().to_string())
        .env("REPLICA_PORTS", replicas.join(","))
        .env("POOL_MODE", mode)
        .current_dir(manifest().join("tests/drivers"))
}

async fn run_driver(mode: &str, build: impl Fn(&mut Command) + Send + 'static, program: &str) {
    let extra = format!("pool:\n  mode: {mode}\nadmin:\n  listen: 127.0.0.1:0\n");
    let proxy = start_proxy(&config_text(&ports(), &extra)).await;
    let program = program.to_owned();
    let mut cmd = Command::new(&program);
    build(&mut cmd);
    env_for(&mut cmd, &proxy, mode);
    let out = tokio::task::spawn_blocking(move || {
        cmd.output().unwrap_or_else(|e| panic!("{program}: {e}"))
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{mode} pooling:\n{text}");
    assert!(text.contains(" ok"), "{text}");
    proxy.stop().await;
}

async fn python(script: &'static str) {
    let deps = tokio::task::spawn_blocking(python_deps)
        .await
        .unwrap()
        .to_owned();
    for mode in ["transaction", "session"] {
        let deps = deps.clone();
        run_driver(
            mode,
            move |cmd| {
                cmd.arg(script)
                    .env("PYTHONPATH", &deps)
                    .env("PYTHONDONTWRITEBYTECODE", "1");
            },
            "python3",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3() {
    python("psycopg_check.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg() {
    python("asyncpg_check.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_on_psycopg() {
    python("sqlalchemy_check.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres() {
    let modules = tokio::task::spawn_blocking(node_deps)
        .await
        .unwrap()
        .to_owned();
    for mode in ["transaction", "session"] {
        let modules = modules.clone();
        run_driver(
            mode,
            move |cmd| {
                cmd.arg("node_pg_check.js").env("NODE_PATH", &modules);
            },
            "node",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc() {
    let jar = tokio::task::spawn_blocking(jdbc_jar)
        .await
        .unwrap()
        .to_owned();
    for mode in ["transaction", "session"] {
        let jar = jar.clone();
        run_driver(
            mode,
            move |cmd| {
                cmd.arg("-cp").arg(&jar).arg("JdbcCheck.java");
            },
            "java",
        )
        .await;
    }
}
