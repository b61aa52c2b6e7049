//! What Patroni says of its cluster, read from its REST API (`GET
//! /cluster`) or from its etcd keys, and the verdict the follower acts on.
//! Pure: parsing and judging, no I/O.

use base64::Engine;
use serde::{Deserialize, Serialize};

/// One member as Patroni describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Patroni's member name.
    pub name: String,
    /// Where PostgreSQL listens, when Patroni says.
    pub host: Option<String>,
    /// Its port.
    pub port: Option<u16>,
    /// `leader`/`master`/`primary`, `replica`, `sync_standby`, `demoted`...
    pub role: String,
    /// `running`, `stopping`, `stopped`, `starting`, `streaming`...
    pub state: String,
    /// Its REST API (`http://host:8008`), when Patroni says.
    pub api: Option<String>,
    /// Replication lag in bytes Patroni reports (coarse).
    pub lag: Option<u64>,
}

/// The cluster as one read of Patroni saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct View {
    /// The member holding the leader key (etcd) or named leader (REST).
    pub leader: Option<String>,
    /// Every member.
    pub members: Vec<Member>,
    /// A switchover or failover was asked for and has not finished (the
    /// `failover` key, without a schedule).
    pub switching: bool,
    /// `etcd` or `rest`.
    pub source: &'static str,
}

/// What the follower makes of a view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The leader is named, running, and nothing is changing: writes may
    /// go to it once it accepts them.
    Steady(String),
    /// A switchover or failover is under way, or there is no leader:
    /// writes wait.
    Changing(&'static str),
}

impl View {
    /// A member by name.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// The verdict: steady only with a leader that is running and no
    /// switchover asked for.
    pub fn verdict(&self) -> Verdict {
        if self.switching {
            return Verdict::Changing("a switchover was asked for");
        }
        let Some(leader) = &self.leader else {
            return Verdict::Changing("no member holds the leader key");
        };
        match self.member(leader) {
            None => Verdict::Changing("the leader is not among the members"),
            Some(m) if m.state != "running" => Verdict::Changing("the leader is not running"),
            Some(m) if matches!(m.role.as_str(), "demoted" | "uninitialized") => {
                Verdict::Changing("the leader was demoted")
            }
            Some(_) => Verdict::Steady(leader.clone()),
        }
    }
}

/// `GET /cluster`'s body.
#[derive(Deserialize)]
struct ClusterBody {
    #[serde(default)]
    members: Vec<RestMember>,
}

#[derive(Deserialize)]
struct RestMember {
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    api_url: Option<String>,
    #[serde(default)]
    lag: Option<serde_json::Value>,
}

/// `http://host:port` of an `api_url` (`http://host:port/patroni`).
fn api_base(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    (!authority.is_empty()).then(|| format!("http://{authority}"))
}

/// Parses `GET /cluster`.
///
/// # Errors
/// Not Patroni's JSON.
pub fn from_rest(body: &[u8]) -> Result<View, String> {
    let parsed: ClusterBody =
        serde_json::from_slice(body).map_err(|e| format!("not Patroni's /cluster: {e}"))?;
    let members: Vec<Member> = parsed
        .members
        .into_iter()
        .map(|m| Member {
            api: m.api_url.as_deref().and_then(api_base),
            lag: m.lag.as_ref().and_then(serde_json::Value::as_u64),
            name: m.name,
            host: m.host,
            port: m.port,
            role: m.role,
            state: m.state,
        })
        .collect();
    let leader = members
        .iter()
        .find(|m| m.role == "leader" || m.role == "standby_leader")
        .map(|m| m.name.clone());
    Ok(View {
        leader,
        members,
        switching: false,
        source: "rest",
    })
}

/// One key and value of an etcd range or watch answer.
#[derive(Deserialize)]
struct Kv {
    key: String,
    #[serde(default)]
    value: Option<String>,
}

/// A range answer.
#[derive(Deserialize)]
struct RangeBody {
    #[serde(default)]
    kvs: Vec<Kv>,
}

/// `members/<name>`'s value.
#[derive(Deserialize)]
struct EtcdMember {
    #[serde(default)]
    conn_url: Option<String>,
    #[serde(default)]
    api_url: Option<String>,
    #[serde(default)]
    state: String,
    #[serde(default)]
    role: String,
}

/// `failover`'s value.
#[derive(Deserialize)]
struct FailoverKey {
    #[serde(default)]
    scheduled_at: Option<String>,
    /// The leader to switch over from.
    #[serde(default)]
    leader: Option<String>,
    /// The member to switch over to.
    #[serde(default)]
    member: Option<String>,
}

impl FailoverKey {
    /// Whether the change it asks for has not happened yet under `leader`
    /// (Patroni may leave the key behind for a while after it has).
    fn pending(&self, leader: Option<&str>) -> bool {
        if self.scheduled_at.is_some() {
            return false;
        }
        match (&self.leader, &self.member) {
            (Some(from), _) => leader == Some(from.as_str()),
            (None, Some(to)) => leader != Some(to.as_str()),
            // Patroni empties the key (`{}`) once it is done.
            (None, None) => false,
        }
    }
}

fn b64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// Host and port of `postgres://host:port/db`.
fn conn_target(url: &str) -> (Option<String>, Option<u16>) {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .unwrap_or(url);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((host, port)) => (Some(host.to_owned()), port.parse().ok()),
        None => (Some(authority.to_owned()), Some(5432)),
    }
}

/// Parses an etcd range answer over the cluster's `prefix`.
///
/// # Errors
/// Not an etcd range answer.
pub fn from_etcd(body: &[u8], prefix: &str) -> Result<View, String> {
    let parsed: RangeBody =
        serde_json::from_slice(body).map_err(|e| format!("not an etcd range answer: {e}"))?;
    let mut view = View {
        leader: None,
        members: Vec::new(),
        switching: false,
        source: "etcd",
    };
    let mut failover = None;
    for kv in parsed.kvs {
        let Some(key) = b64(&kv.key).and_then(|k| String::from_utf8(k).ok()) else {
            continue;
        };
        let value = kv.value.as_deref().and_then(b64).unwrap_or_default();
        let Some(name) = key.strip_prefix(prefix) else {
            continue;
        };
        if name == "leader" {
            view.leader = Some(String::from_utf8_lossy(&value).trim().to_owned());
        } else if name == "failover" {
            failover = Some(
                serde_json::from_slice::<FailoverKey>(&value).unwrap_or(FailoverKey {
                    scheduled_at: None,
                    leader: None,
                    member: None,
                }),
            );
        } else if let Some(member) = name.strip_prefix("members/") {
            let Ok(m) = serde_json::from_slice::<EtcdMember>(&value) else {
                continue;
            };
            let (host, port) = m.conn_url.as_deref().map(conn_target).unwrap_or_default();
            view.members.push(Member {
                name: member.to_owned(),
                host,
                port,
                role: m.role,
                state: m.state,
                api: m.api_url.as_deref().and_then(api_base),
                lag: None,
            });
        }
    }
    view.members.sort_by(|a, b| a.name.cmp(&b.name));
    view.switching = failover.is_some_and(|f| f.pending(view.leader.as_deref()));
    Ok(view)
}

/// The key just past every key starting with `prefix` (etcd's range end).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The JSON of a range (or watch creation) over `prefix`.
pub fn range_request(prefix: &str) -> String {
    let engine = base64::engine::general_purpose::STANDARD;
    serde_json::json!({
        "key": engine.encode(prefix),
        "range_end": engine.encode(prefix_end(prefix)),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = r#"{"members": [
        {"name": "pg1", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:18001/patroni", "host": "127.0.0.1", "port": 17001, "timeline": 1},
        {"name": "pg2", "role": "replica", "state": "running", "api_url": "http://127.0.0.1:18002/patroni", "host": "127.0.0.1", "port": 17002, "timeline": 1, "lag": 0},
        {"name": "pg3", "role": "replica", "state": "streaming", "host": "127.0.0.1", "port": 17003, "lag": "unknown"}]}"#;

    #[test]
    fn rest_cluster() {
        let view = from_rest(CLUSTER.as_bytes()).unwrap();
        assert_eq!(view.leader.as_deref(), Some("pg1"));
        assert_eq!(view.verdict(), Verdict::Steady("pg1".into()));
        let pg2 = view.member("pg2").unwrap();
        assert_eq!(pg2.api.as_deref(), Some("http://127.0.0.1:18002"));
        assert_eq!((pg2.port, pg2.lag), (Some(17002), Some(0)));
        assert_eq!(view.member("pg3").unwrap().lag, None, "lag: unknown");
        let stopping = CLUSTER.replacen(r#""state": "running""#, r#""state": "stopping""#, 1);
        assert!(matches!(
            from_rest(stopping.as_bytes()).unwrap().verdict(),
            Verdict::Changing(_)
        ));
        let leaderless = CLUSTER.replacen(r#""role": "leader""#, r#""role": "replica""#, 1);
        assert!(matches!(
            from_rest(leaderless.as_bytes()).unwrap().verdict(),
            Verdict::Changing(_)
        ));
        assert!(from_rest(b"<html>").is_err());
    }

    fn kv(key: &str, value: &str) -> serde_json::Value {
        let e = base64::engine::general_purpose::STANDARD;
        serde_json::json!({"key": e.encode(key), "value": e.encode(value)})
    }

    fn etcd(kvs: &[serde_json::Value]) -> View {
        let body = serde_json::json!({"header": {}, "kvs": kvs}).to_string();
        from_etcd(body.as_bytes(), "/service/demo/").unwrap()
    }

    #[test]
    fn etcd_keys_through_a_switchover() {
        let member = |state: &str, role: &str, port: u16| {
            format!(
                r#"{{"conn_url":"postgres://127.0.0.1:{port}/postgres","api_url":"http://127.0.0.1:1{port}/patroni","state":"{state}","role":"{role}"}}"#
            )
        };
        let steady = [
            kv("/service/demo/leader", "pg1"),
            kv(
                "/service/demo/members/pg1",
                &member("running", "master", 7001),
            ),
            kv(
                "/service/demo/members/pg2",
                &member("running", "replica", 7002),
            ),
            kv("/service/demo/config", "{}"),
        ];
        let view = etcd(&steady);
        assert_eq!(view.verdict(), Verdict::Steady("pg1".into()));
        let pg1 = view.member("pg1").unwrap();
        assert_eq!(
            (pg1.host.as_deref(), pg1.port, pg1.api.as_deref()),
            (
                Some("127.0.0.1"),
                Some(7001),
                Some("http://127.0.0.1:17001")
            )
        );
        // 1. the failover key
        let mut asked = steady.to_vec();
        asked.push(kv(
            "/service/demo/failover",
            r#"{"leader":"pg1","member":"pg2"}"#,
        ));
        assert!(matches!(etcd(&asked).verdict(), Verdict::Changing(_)));
        // a scheduled one changes nothing yet
        let mut scheduled = steady.to_vec();
        scheduled.push(kv(
            "/service/demo/failover",
            r#"{"leader":"pg1","member":"pg2","scheduled_at":"2030-01-01T00:00:00+00:00"}"#,
        ));
        assert_eq!(etcd(&scheduled).verdict(), Verdict::Steady("pg1".into()));
        // 2. the leader stops; 3. the leader key goes
        let stopping = [
            kv("/service/demo/leader", "pg1"),
            kv(
                "/service/demo/members/pg1",
                &member("stopping", "master", 7001),
            ),
        ];
        assert!(matches!(etcd(&stopping).verdict(), Verdict::Changing(_)));
        let no_leader = [kv(
            "/service/demo/members/pg1",
            &member("stopped", "demoted", 7001),
        )];
        assert!(matches!(etcd(&no_leader).verdict(), Verdict::Changing(_)));
        // 5. the new leader key, its member still a replica until promoted:
        // steady, and the follower checks it accepts writes itself
        let new = [
            kv("/service/demo/leader", "pg2"),
            kv(
                "/service/demo/members/pg2",
                &member("running", "replica", 7002),
            ),
        ];
        assert_eq!(etcd(&new).verdict(), Verdict::Steady("pg2".into()));
        // 6. the key Patroni may leave behind for a while: done
        let mut done = new.to_vec();
        done.push(kv(
            "/service/demo/failover",
            r#"{"leader":"pg1","member":"pg2"}"#,
        ));
        assert_eq!(etcd(&done).verdict(), Verdict::Steady("pg2".into()));
        // a failover to a member (no leader named) is pending until it leads
        let to_pg2 = kv("/service/demo/failover", r#"{"member":"pg2"}"#);
        let mut before = steady.to_vec();
        before.push(to_pg2.clone());
        assert!(matches!(etcd(&before).verdict(), Verdict::Changing(_)));
        let mut after = new.to_vec();
        after.push(to_pg2);
        assert_eq!(etcd(&after).verdict(), Verdict::Steady("pg2".into()));
        // emptied when done (Patroni 3.0.2)
        let mut emptied = new.to_vec();
        emptied.push(kv("/service/demo/failover", "{}"));
        assert_eq!(etcd(&emptied).verdict(), Verdict::Steady("pg2".into()));
    }

    #[test]
    fn prefixes_and_conn_urls() {
        assert_eq!(prefix_end("/service/demo/"), b"/service/demo0");
        assert_eq!(
            conn_target("postgres://u:p@db1:5433/postgres?sslmode=x"),
            (Some("db1".into()), Some(5433))
        );
        assert_eq!(
            conn_target("postgres://db1/postgres"),
            (Some("db1".into()), Some(5432))
        );
        let json: serde_json::Value =
            serde_json::from_str(&range_request("/service/demo/")).unwrap();
        assert_eq!(json["key"], "L3NlcnZpY2UvZGVtby8=");
    }
}
