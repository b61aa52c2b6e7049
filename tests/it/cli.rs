//! The `pgsplit` binary: `check`, `status` and how `run` sets up its threads.

use std::process::Command;

fn check(text: &str) -> (bool, String) {
    let file = std::env::temp_dir().join(format!(
        "pgsplit-check-{}-{}.yaml",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgsplit"))
        .args(["check", "-c"])
        .arg(&file)
        .env_remove("NOPE_UNSET")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success(),
        text.replace(&file.display().to_string(), "FILE"),
    )
}

#[test]
fn check_accepts_the_shipped_proxy_yaml() {
    let out = Command::new(env!("CARGO_BIN_EXE_pgsplit"))
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.yaml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (3 nodes"));
}

#[test]
fn check_refuses_bad_files_with_file_line_and_key() {
    let base = "listen: 127.0.0.1:6432\nnodes:\n  - { name: a, host: h, role: primary }\n  - { name: b, host: h, role: replica }\n";
    let (ok, out) = check(base);
    assert!(ok, "{out}");
    let (ok, out) = check(&base.replace("listen:", "lisen:"));
    assert!(
        !ok && out.contains("FILE") && out.contains("lisen") && out.contains("line 1"),
        "{out}"
    );
    let (ok, out) = check(&base.replace("name: b", "name: a"));
    assert!(
        !ok && out.contains("FILE:4:") && out.contains("nodes[1].name"),
        "{out}"
    );
    let (ok, out) = check(&base.replace("role: replica", "role: primary"));
    assert!(
        !ok && out.contains("FILE:4:") && out.contains("second primary"),
        "{out}"
    );
    let (ok, out) = check(&format!("{base}pool:\n  checkout_timeout: soon\n"));
    assert!(
        !ok && out.contains("invalid duration") && out.contains("line 6"),
        "{out}"
    );
    let (ok, out) = check(&format!(
        "{base}auth:\n  users:\n    - name: x\n      password: ${{NOPE_UNSET}}\n"
    ));
    assert!(
        !ok && out.contains("FILE:8:") && out.contains("NOPE_UNSET"),
        "{out}"
    );
}

/// `pgsplit status` in a directory without proxy.yaml says which admin
/// address it tried and why; no colour codes when stderr is not a terminal.
#[test]
fn status_without_a_config_names_the_address_it_tried_and_why() {
    let dir = std::env::temp_dir().join(format!("pgsplit-status-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A free port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_pgsplit"))
        .arg("status")
        .current_dir(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(
        err.contains("http://127.0.0.1:9930")
            && err.contains("the default")
            && err.contains("proxy.yaml")
            && err.contains("--admin"),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "no ANSI codes: {err:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_pgsplit"))
        .args(["status", "--admin", &format!("http://127.0.0.1:{port}")])
        .current_dir(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains(&port.to_string()) && err.contains("given with --admin"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The scheduling policy of every thread of process `pid` (field 41 of
/// /proc/PID/task/TID/stat: 0 SCHED_OTHER, 3 SCHED_BATCH).
fn thread_policies(pid: u32) -> Vec<u32> {
    let mut policies = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
        // (the command name, in parentheses, may hold spaces)
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let policy = after.split(' ').nth(41 - 3).unwrap();
        policies.push(policy.parse().unwrap());
    }
    policies
}

/// `pgsplit run` puts its threads under SCHED_BATCH by default and leaves
/// them alone with `sched_batch: false`. Observed from /proc, not from the
/// proxy.
#[test]
fn the_proxy_runs_under_sched_batch_unless_told_not_to() {
    for (line, want) in [("", 3), ("sched_batch: false\n", 0)] {
        let port = pgsplit::cluster::free_port();
        let node = pgsplit::cluster::free_port();
        let text = format!(
            "listen: 127.0.0.1:{port}\nauth:\n  method: trust\n  users:\n    - {{ name: app }}\n\
             nodes:\n  - {{ name: pg1, host: 127.0.0.1, port: {node}, role: primary }}\nworkers: 2\n{line}"
        );
        let file =
            std::env::temp_dir().join(format!("pgsplit-sched-{}-{want}.yaml", std::process::id()));
        std::fs::write(&file, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgsplit"))
            .args(["run", "-c"])
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the proxy did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let policies = thread_policies(child.id());
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&file);
        assert!(
            policies.len() >= 3 && policies.iter().all(|&p| p == want),
            "with {line:?}: thread policies {policies:?}, want all {want}"
        );
    }
}
