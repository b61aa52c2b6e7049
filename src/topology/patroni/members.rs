//! Nodes from Patroni's member list: proxy.yaml may list none, some or all
//! of the members. A listed node is matched to its member by name, or by
//! host and port; one listed by name alone takes the member's host and
//! port; a member proxy.yaml does not list becomes a node with the default
//! weight (a replica, or the primary when it leads and the file names
//! none). The file's weights, zones and tags stay the file's.

use crate::config::{Config, NodeConfig, Role};

use super::view::View;

/// `config` with Patroni's members added as nodes and name-only nodes
/// completed; entries that still have no host (Patroni does not know
/// them, or has not been read) are left out. Returns it with whether
/// anything was added or completed.
pub fn merge(config: &Config, view: Option<&View>) -> (Config, bool) {
    let mut nodes = config.nodes.value.clone();
    let mut changed = false;
    if let Some(view) = view {
        for node in nodes.iter_mut().filter(|n| n.host.is_empty()) {
            if let Some((host, port)) = view
                .member(&node.name.value)
                .and_then(|m| Some((m.host.clone()?, m.port?)))
            {
                node.host = host;
                node.port = port;
                changed = true;
            }
        }
        let has_primary = nodes.iter().any(|n| n.role.value == Role::Primary);
        for m in &view.members {
            let (Some(host), Some(port)) = (&m.host, m.port) else {
                continue;
            };
            let listed = nodes
                .iter()
                .any(|n| n.name.value == m.name || (n.host == *host && n.port == port));
            if listed {
                continue;
            }
            let role = if !has_primary && view.leader.as_ref() == Some(&m.name) {
                Role::Primary
            } else {
                Role::Replica
            };
            tracing::info!(member = %m.name, %host, port, "a Patroni member proxy.yaml does not list is a node now");
            nodes.push(NodeConfig::discovered(&m.name, host, port, role));
            changed = true;
        }
    }
    nodes.retain(|n| !n.host.is_empty());
    let mut merged = config.clone();
    merged.nodes.value = nodes;
    (merged, changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn view() -> View {
        super::super::view::from_rest(
            br#"{"members": [
            {"name": "pg1", "role": "leader", "state": "running", "host": "10.0.0.1", "port": 5432},
            {"name": "pg2", "role": "replica", "state": "running", "host": "10.0.0.2", "port": 5432},
            {"name": "pg3", "role": "replica", "state": "running", "host": "10.0.0.3", "port": 5433}]}"#,
        )
        .unwrap()
    }

    fn config(nodes: &str) -> Config {
        let text = format!(
            "listen: 127.0.0.1:1\nnodes:{nodes}\ntopology:\n  source: patroni\n  patroni:\n    urls: [http://10.0.0.1:8008]\n"
        );
        Config::from_text(Path::new("t.yaml"), &text, |_| None).unwrap()
    }

    #[test]
    fn members_fill_in_the_nodes() {
        // none listed: all three, the leader first guess for primary
        let (merged, changed) = merge(&config(" []"), Some(&view()));
        assert!(changed);
        let names: Vec<(&str, Role, u16)> = merged
            .nodes
            .value
            .iter()
            .map(|n| (n.name.value.as_str(), n.role.value, n.port))
            .collect();
        assert_eq!(
            names,
            [
                ("pg1", Role::Primary, 5432),
                ("pg2", Role::Replica, 5432),
                ("pg3", Role::Replica, 5433)
            ]
        );
        assert_eq!(merged.primary().name.value, "pg1");
        // one listed by name for its weight and zone; one by address
        let (merged, _) = merge(
            &config(
                "\n  - { name: pg3, weight: 50, zone: z1 }\n  - { name: db2, host: 10.0.0.2, port: 5432, tags: [bi] }",
            ),
            Some(&view()),
        );
        let pg3 = merged
            .nodes
            .value
            .iter()
            .find(|n| n.name.value == "pg3")
            .unwrap();
        assert_eq!(
            (pg3.host.as_str(), pg3.port, pg3.weight),
            ("10.0.0.3", 5433, 50)
        );
        assert_eq!(pg3.zone.as_deref(), Some("z1"));
        let db2 = merged
            .nodes
            .value
            .iter()
            .find(|n| n.name.value == "db2")
            .unwrap();
        assert_eq!(db2.tags, ["bi"]);
        assert_eq!(merged.nodes.value.len(), 3, "db2 is pg2: not added twice");
        // nothing changes a second time
        assert!(!merge(&merged, Some(&view())).1);
        // Patroni not read: a name-only node is left out
        let (merged, changed) = merge(
            &config("\n  - { name: pg3 }\n  - { name: x, host: h }"),
            None,
        );
        assert!(!changed);
        assert_eq!(merged.nodes.value.len(), 1);
    }

    #[test]
    fn static_mode_still_needs_host_and_role() {
        let text = "listen: 127.0.0.1:1\nnodes:\n  - { name: a, role: primary }\n";
        let e = Config::from_text(Path::new("t.yaml"), text, |_| None).unwrap_err();
        assert!(e.to_string().contains("nodes[0].host"), "{e}");
        let text = "listen: 127.0.0.1:1\nnodes:\n  - { name: a, host: h }\n";
        let e = Config::from_text(Path::new("t.yaml"), text, |_| None).unwrap_err();
        assert!(e.to_string().contains("nodes[0].role"), "{e}");
    }
}
