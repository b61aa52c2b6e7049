//! Routing policies: tagged analytics replicas and route rules, tag
//! hints, zones, read-only users, their visibility in /status and metrics,
//! and rules changed by reload while clients stay connected.

use std::collections::BTreeSet;

use crate::harness::relay::Relay;
use crate::harness::*;

fn nodes_yaml(pg3_extra: &str, pg2_extra: &str) -> String {
    let p = ports();
    format!(
        "  - {{ name: pg1, host: 127.0.0.1, port: {}, role: primary }}\n  - {{ name: pg2, host: 127.0.0.1, port: {}, role: replica{pg2_extra} }}\n  - {{ name: pg3, host: 127.0.0.1, port: {}, role: replica{pg3_extra} }}\n",
        p[0], p[1], p[2]
    )
}

fn config(top: &str, pg3: &str, pg2: &str, routing: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\n{top}admin:\n  listen: 127.0.0.1:0\nauth:\n  method: md5\n  users:\n    - {{ name: app, password: app }}\n    - {{ name: app_md5, password: md5pw, read_only: true }}\nnodes:\n{}routing:\n{routing}lag:\n  check_interval: 100ms\n",
        nodes_yaml(pg3, pg2)
    )
}

async fn client_as(proxy: &pgsplit::app::Proxy, app_name: &str) -> tokio_postgres::Client {
    let conn = format!(
        "host=127.0.0.1 port={} user=app password=app dbname=app application_name={app_name}",
        proxy.addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

async fn reads(client: &tokio_postgres::Client, sql: &str, n: usize) -> BTreeSet<u16> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        seen.insert(served_by(client, sql).await);
    }
    seen
}

const RULES: &str = "  rules:\n    - name: bi\n      match: { application_name: metabase }\n      tags: [analytics]\n    - name: gpu-primary\n      match: { application_name: gpu-primary }\n      tags: [gpu]\n      fallback: primary\n    - name: gpu-error\n      match: { application_name: gpu-error }\n      tags: [gpu]\n      fallback: error\n    - name: gpu-replica\n      match: { application_name: gpu-replica }\n      tags: [gpu]\n";

#[tokio::test]
async fn rules_send_matching_sessions_to_tagged_replicas_and_keep_others_off_them() {
    let proxy = start_proxy(&config("", ", tags: [analytics]", "", RULES)).await;
    let (pg2, pg3) = (replica_ports()[0], replica_ports()[1]);
    let bi = client_as(&proxy, "metabase").await;
    let web = client_as(&proxy, "web").await;
    assert_eq!(
        reads(&bi, "SELECT inet_server_port()", 20).await,
        BTreeSet::from([pg3])
    );
    assert_eq!(
        reads(&web, "SELECT inet_server_port()", 20).await,
        BTreeSet::from([pg2])
    );
    // a tag hint does the same per statement
    assert_eq!(
        reads(
            &web,
            "/* pgsplit:tag=analytics */ SELECT inet_server_port()",
            10
        )
        .await,
        BTreeSet::from([pg3])
    );
    // writes still go to the primary
    assert_eq!(
        served_by(
            &bi,
            "INSERT INTO items (v) VALUES ('bi') RETURNING inet_server_port()"
        )
        .await,
        primary_port()
    );
    // fallbacks when no replica carries the tags
    let to_primary = client_as(&proxy, "gpu-primary").await;
    assert_eq!(
        reads(&to_primary, "SELECT inet_server_port()", 5).await,
        BTreeSet::from([primary_port()])
    );
    let to_replica = client_as(&proxy, "gpu-replica").await;
    assert_eq!(
        reads(&to_replica, "SELECT inet_server_port()", 10).await,
        BTreeSet::from([pg2])
    );
    let to_error = client_as(&proxy, "gpu-error").await;
    let err = to_error.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("08006"), "{err}");
    // visible in /status and the metrics
    let status = pgsplit::admin::Status::collect(&proxy.state);
    let pg3_status = status.nodes.iter().find(|n| n.name == "pg3").unwrap();
    assert_eq!(pg3_status.tags, vec!["analytics".to_owned()]);
    let bi_rule = status.rules.iter().find(|r| r.name == "bi").unwrap();
    assert_eq!(bi_rule.sessions, 1);
    let metrics = proxy.state.metrics.encode();
    assert!(
        metrics.contains("pgsplit_routing_decisions_total{reason=\"rule\",target=\"replica\"} 20"),
        "{metrics}"
    );
    proxy.stop().await;

    // serve_default lets the tagged replica take ordinary reads too
    let proxy = start_proxy(&config(
        "",
        ", tags: [analytics], serve_default: true",
        "",
        RULES,
    ))
    .await;
    let web = client_as(&proxy, "web").await;
    assert_eq!(
        reads(&web, "SELECT inet_server_port()", 40).await,
        BTreeSet::from([pg2, pg3])
    );
    proxy.stop().await;
}

#[tokio::test]
async fn reads_prefer_the_proxys_zone_and_leave_it_only_when_nothing_is_eligible_there() {
    let p = ports();
    let relay = Relay::start(p[1]).await;
    let text = format!(
        "listen: 127.0.0.1:0\nzone: z1\nauth:\n  method: md5\n  users:\n    - {{ name: app, password: app }}\nnodes:\n  - {{ name: pg1, host: 127.0.0.1, port: {}, role: primary, zone: z1 }}\n  - {{ name: pg2, host: 127.0.0.1, port: {}, role: replica, zone: z1 }}\n  - {{ name: pg3, host: 127.0.0.1, port: {}, role: replica, zone: z2 }}\nlag:\n  check_interval: 100ms\n",
        p[0], relay.port, p[2]
    );
    let proxy = start_proxy(&text).await;
    let client = app(&proxy).await;
    assert_eq!(
        reads(&client, "SELECT inet_server_port()", 30).await,
        BTreeSet::from([p[1]])
    );
    let metrics = proxy.state.metrics.encode();
    assert!(
        metrics.contains("pgsplit_routing_decisions_total{reason=\"zone\",target=\"replica\"} 30"),
        "{metrics}"
    );
    relay.cut();
    assert_eq!(
        reads(&client, "SELECT inet_server_port()", 20).await,
        BTreeSet::from([p[2]])
    );
    relay.restore().await;
    proxy.stop().await;
}

#[tokio::test]
async fn read_only_users_read_but_never_reach_the_primary() {
    let proxy = start_proxy(&config("", "", "", "  no_replica: primary\n")).await;
    let ro = connect(&proxy, "app_md5", "md5pw").await.unwrap();
    assert!(replica_ports().contains(&served_by(&ro, "SELECT inet_server_port()").await));
    for sql in [
        "CREATE TABLE IF NOT EXISTS ro_probe (a int)",
        "SELECT nextval('seq')",
        "SELECT * FROM pg_class FOR UPDATE",
        "LISTEN nope",
    ] {
        let err = ro.simple_query(sql).await.unwrap_err();
        assert_eq!(code(&err).as_deref(), Some("25006"), "{sql}: {err}");
        assert!(
            err.as_db_error()
                .unwrap()
                .message()
                .contains("may only read through pgsplit"),
            "{err}"
        );
    }
    // transactions run on a replica
    ro.simple_query("BEGIN").await.unwrap();
    assert!(replica_ports().contains(&served_by(&ro, "SELECT inet_server_port()").await));
    ro.simple_query("COMMIT").await.unwrap();
    ro.simple_query("SET statement_timeout = 5000")
        .await
        .unwrap();
    let timeout: String = scalar(&ro, "SELECT current_setting('statement_timeout')").await;
    assert_eq!(timeout, "5s");
    proxy.stop().await;
}

#[tokio::test]
async fn rules_change_on_reload_while_clients_stay_connected() {
    let file = std::env::temp_dir().join(format!("pgsplit-rules-{}.yaml", std::process::id()));
    std::fs::write(&file, config("", ", tags: [analytics]", "", RULES)).unwrap();
    let loaded = pgsplit::config::Config::load(&file).unwrap();
    let mut proxy = pgsplit::app::Proxy::start_from(loaded, Some(file.clone()))
        .await
        .unwrap();
    proxy.reached(pgsplit::app::Phase::Ready).await;
    let (pg2, pg3) = (replica_ports()[0], replica_ports()[1]);
    let bi = client_as(&proxy, "metabase").await;
    let pid_before: BTreeSet<u16> = reads(&bi, "SELECT inet_server_port()", 10).await;
    assert_eq!(pid_before, BTreeSet::from([pg3]));
    // the rule now sends metabase to ordinary replicas: pg2 (pg3 is tagged)
    std::fs::write(
        &file,
        config("", ", tags: [analytics]", "", "  rules: []\n"),
    )
    .unwrap();
    let url = format!("http://{}", proxy.admin_addr.unwrap());
    let answer = pgsplit::admin::client::request(&url, "POST", "/reload", None, None)
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        reads(&bi, "SELECT inet_server_port()", 10).await,
        BTreeSet::from([pg2])
    );
    proxy.stop().await;
    let _ = std::fs::remove_file(file);
}
