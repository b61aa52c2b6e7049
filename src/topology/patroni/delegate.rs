//! `pgsplit failover`, `POST /failover` and the console's SWITCHOVER in
//! Patroni mode: Patroni is asked (`POST /switchover` with leader and
//! candidate, `--force`: `POST /failover`), new writes are held at the
//! proxy for the duration and released to the leader Patroni elects once
//! it accepts writes. `--check` reports what Patroni says of the members
//! and what would be held, and changes nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::view::View;
use crate::failover::{Report, Steps};
use crate::state::{HoldReason, State};

/// How long Patroni may take to finish a switchover once it accepted it.
const PATRONI_LIMIT: Duration = Duration::from_secs(60);
/// How long one REST call to Patroni may take (it answers a switchover
/// when it is done).
const CALL_LIMIT: Duration = Duration::from_secs(60);

/// Members that may take over: running or streaming replicas.
fn candidates(view: &View) -> Vec<&super::view::Member> {
    view.members
        .iter()
        .filter(|m| Some(&m.name) != view.leader.as_ref())
        .filter(|m| matches!(m.role.as_str(), "replica" | "sync_standby" | "standby"))
        .filter(|m| matches!(m.state.as_str(), "running" | "streaming"))
        .collect()
}

/// The REST APIs to ask, the leader's first.
fn apis(state: &State, view: &View) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let leader = view.leader.as_deref().and_then(|l| view.member(l));
    for api in leader
        .and_then(|m| m.api.clone())
        .into_iter()
        .chain(view.members.iter().filter_map(|m| m.api.clone()))
        .chain(
            state
                .config
                .load()
                .topology
                .patroni
                .iter()
                .flat_map(|p| p.urls.clone()),
        )
    {
        let api = api.trim_end_matches('/').to_owned();
        if !out.contains(&api) {
            out.push(api);
        }
    }
    out
}

/// Asks Patroni for a switchover (or, `force`, a failover) to `to`, or
/// drills it (`check`).
pub async fn delegate(state: &Arc<State>, to: Option<&str>, force: bool, check: bool) -> Report {
    let action = match (check, force) {
        (true, _) => "drill",
        (false, true) => "failover",
        (false, false) => "switchover",
    };
    let mut steps = Steps::default();
    let mut report = Report {
        action: action.into(),
        ..Report::default()
    };
    let Some(patroni) = state.config.load().topology.patroni.clone() else {
        return steps.finish(report, Some("topology.patroni is not configured".into()));
    };
    let view = match steps
        .run(
            "ask Patroni for the cluster",
            super::read(&patroni, Duration::from_secs(5)),
        )
        .await
    {
        Ok(v) => v,
        Err(e) => return steps.finish(report, Some(e)),
    };
    report.old_primary = view.leader.clone();
    let members: Vec<String> = view
        .members
        .iter()
        .map(|m| {
            let lag = m
                .lag
                .map(|l| format!(", lag {l} bytes"))
                .unwrap_or_default();
            format!("{} {} {}{lag}", m.name, m.role, m.state)
        })
        .collect();
    steps.record(
        "Patroni's members",
        Duration::ZERO,
        true,
        Some(format!(
            "{} (read from {})",
            members.join("; "),
            view.source
        )),
    );
    let able = candidates(&view);
    let candidate = match to {
        Some(name) => match view.member(name) {
            None => {
                let names: Vec<&str> = view.members.iter().map(|m| m.name.as_str()).collect();
                return steps.finish(
                    report,
                    Some(format!("Patroni has no member {name} (members: {names:?})")),
                );
            }
            Some(m) if Some(&m.name) == view.leader.as_ref() => {
                return steps.finish(report, Some(format!("{name} is already Patroni's leader")));
            }
            Some(m) if !able.iter().any(|c| c.name == m.name) => {
                return steps.finish(
                    report,
                    Some(format!(
                        "{name} cannot take over: Patroni says role {}, state {}",
                        m.role, m.state
                    )),
                );
            }
            Some(m) => Some(m.name.clone()),
        },
        None if force => {
            // Patroni's /failover needs a candidate: the replica the
            // monitor finds most advanced.
            let topology = state.topology.load();
            able.iter()
                .filter_map(|m| {
                    super::node_of(&topology, &view, &m.name).map(|n| (m, n.replayed()))
                })
                .max_by_key(|(_, replayed)| *replayed)
                .map(|(m, _)| m.name.clone())
        }
        None => None,
    };
    if force && candidate.is_none() {
        return steps.finish(
            report,
            Some("no running replica for Patroni to promote".into()),
        );
    }
    if !force && view.leader.is_none() {
        return steps.finish(
            report,
            Some("Patroni has no leader to switch over from (use --force for a failover)".into()),
        );
    }
    report.candidate = candidate.clone();
    let (path, body) = if force {
        ("/failover", serde_json::json!({ "candidate": candidate }))
    } else {
        let mut body = serde_json::json!({ "leader": view.leader });
        if let Some(c) = &candidate {
            body["candidate"] = c.clone().into();
        }
        ("/switchover", body)
    };
    if check {
        if force {
            let topology = state.topology.load();
            let last = topology.primary().stats.load().lsn;
            let survivor = candidate
                .as_deref()
                .and_then(|c| super::node_of(&topology, &view, c))
                .map(|n| n.replayed());
            report.lost_bytes = survivor.map(|s| last.saturating_sub(s));
        }
        let ask = format!("ask Patroni: POST {path} {body}");
        return steps.drilled(
            report,
            &[
                "hold new writes at this proxy (reads go on)",
                &ask,
                "wait for Patroni's leader to accept writes",
                "release writes to it",
            ],
        );
    }
    let held = Instant::now();
    state.hold(HoldReason::Switchover, true);
    steps.record("hold new writes", Duration::ZERO, true, None);
    let body_text = body.to_string();
    let asked = steps
        .run(&format!("ask Patroni: POST {path} {body_text}"), async {
            let mut errors = Vec::new();
            for api in apis(state, &view) {
                match crate::http::call(
                    &api,
                    "POST",
                    path,
                    &[],
                    Some(body_text.as_bytes()),
                    CALL_LIMIT,
                )
                .await
                {
                    Ok(a) if (200..300).contains(&a.status) => return Ok(a.text()),
                    // Patroni refused: the answer says why; asking another
                    // member would get the same.
                    Ok(a) => {
                        return Err(format!(
                            "Patroni ({api}) answered {}: {}",
                            a.status,
                            a.text().trim()
                        ));
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            Err(format!(
                "no Patroni REST API answered: {}",
                errors.join("; ")
            ))
        })
        .await;
    if let Err(e) = asked {
        state.hold(HoldReason::Switchover, false);
        steps.record("release writes", Duration::ZERO, true, None);
        return steps.finish(report, Some(e));
    }
    let old = view.leader.clone();
    let published = steps
        .run("wait for Patroni's leader to accept writes", async {
            let deadline = Instant::now() + PATRONI_LIMIT;
            loop {
                let primary = state.topology.load().primary().name.clone();
                let moved = match &candidate {
                    Some(c) => *primary == **c,
                    None => old.as_deref() != Some(&*primary),
                };
                if moved && !state.held_for(HoldReason::Patroni) {
                    return Ok(primary.to_string());
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "Patroni accepted, but no new leader took writes within {PATRONI_LIMIT:?}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    state.hold(HoldReason::Switchover, false);
    steps.record("release writes", Duration::ZERO, true, None);
    report.writes_held_ms = Some(held.elapsed().as_millis() as u64);
    match published {
        Ok(primary) => {
            report.candidate = Some(primary);
            report.ok = true;
            steps.finish(report, None)
        }
        Err(e) => steps.finish(report, Some(e)),
    }
}
