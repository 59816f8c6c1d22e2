//! WebSocket through the gateway (SPEC §9) with a real server and client (Python
//! `websockets`): frames both ways, a close from either side, the handshake through the
//! route's plugins, `timeouts.idle`, the tunnel gauge, and a route that does not take
//! WebSocket.

mod common;

use common::python::PythonServer;
use common::{eventually, Gateway};
use std::process::Command;
use std::time::Duration;

fn script() -> String {
    format!("{}/tests/websocket/ws.py", env!("CARGO_MANIFEST_DIR"))
}

async fn ws(args: Vec<String>) -> serde_json::Value {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("python3")
            .arg(script())
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    })
    .await
    .unwrap()
}

fn url(gw: &Gateway, path: &str) -> String {
    gw.url(path).replacen("http://", "ws://", 1)
}

async fn gateway(server: &PythonServer) -> Gateway {
    Gateway::builder()
        .file("routes.yaml", routes(server))
        .start()
        .await
}

fn routes(server: &PythonServer) -> String {
    format!(
        r#"kind: Upstream
id: ws
nodes: [{{ addr: "127.0.0.1:{}" }}]
---
kind: Route
id: chat
match: {{ paths: ["/chat/**"] }}
upstream: ws
websocket: true
---
kind: Route
id: quiet
match: {{ paths: ["/quiet/**"] }}
upstream: ws
websocket: true
timeouts: {{ idle: 1s }}
---
kind: Route
id: guarded
match: {{ paths: ["/guarded/**"] }}
upstream: ws
websocket: true
plugins:
  - name: ip_restriction
    config: {{ deny: [127.0.0.0/8] }}
---
kind: Route
id: plain
match: {{ paths: ["/plain/**"] }}
upstream: ws
"#,
        server.port
    )
}

/// Waits (bounded) for `/metrics` to count `n` open tunnels on `route`.
async fn tunnels_become(gw: &Gateway, route: &str, n: i64) {
    eventually(
        Duration::from_secs(5),
        &format!("{n} open tunnels counted on {route}"),
        || async { open_tunnels(&gw.metrics_text().await, route) == Some(n) },
    )
    .await;
}

fn open_tunnels(metrics: &str, route: &str) -> Option<i64> {
    let prefix = format!("gatehouse_websocket_connections{{route=\"{route}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_go_both_ways_and_a_close_from_either_side_ends_the_tunnel() {
    let server = PythonServer::start(&script(), &["serve"]);
    let gw = gateway(&server).await;

    let out = ws(vec![
        "talk".into(),
        url(&gw, "/chat/room"),
        "hello".into(),
        "again".into(),
    ])
    .await;
    assert_eq!(
        out["answers"],
        serde_json::json!(["HELLO", "AGAIN"]),
        "{out}"
    );

    // The server closes: the client sees its close code.
    let out = ws(vec![
        "talk".into(),
        url(&gw, "/chat/room"),
        "one".into(),
        "close".into(),
    ])
    .await;
    assert_eq!(out["answers"], serde_json::json!(["ONE"]), "{out}");
    assert_eq!(out["closed"]["code"], 4001, "{out}");

    // Every tunnel closed is uncounted.
    tunnels_become(&gw, "chat", 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_tunnel_is_counted_and_a_silent_one_closes_after_timeouts_idle() {
    let server = PythonServer::start(&script(), &["serve"]);
    let gw = gateway(&server).await;

    let waiting = tokio::spawn(ws(vec!["wait".into(), url(&gw, "/quiet/x"), "10".into()]));
    tunnels_become(&gw, "quiet", 1).await;
    let out = waiting.await.unwrap();
    let after = out["closed_after"]
        .as_f64()
        .unwrap_or_else(|| panic!("{out}"));
    assert!((0.5..5.0).contains(&after), "closed after {after}s: {out}");
    tunnels_become(&gw, "quiet", 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_removed_under_an_open_tunnel_leaves_no_series_when_the_tunnel_ends() {
    let server = PythonServer::start(&script(), &["serve"]);
    let logs = tempfile::tempdir().unwrap();
    let access_log = logs.path().join("access.log");
    let gw = Gateway::builder()
        .file("routes.yaml", routes(&server))
        .config(&format!(
            "telemetry:\n  access_log: {{ target: \"{}\" }}",
            access_log.display()
        ))
        .start()
        .await;
    let waiting = tokio::spawn(ws(vec!["wait".into(), url(&gw, "/quiet/x"), "10".into()]));
    tunnels_become(&gw, "quiet", 1).await;
    // The route goes while its tunnel is open; the tunnel then ends on its idle timeout.
    let without = routes(&server).replace(
        "kind: Route\nid: quiet\nmatch: { paths: [\"/quiet/**\"] }\nupstream: ws\nwebsocket: true\ntimeouts: { idle: 1s }\n---\n",
        "",
    );
    assert!(!without.contains("id: quiet"), "{without}");
    let revision = gw.status().await["revision"].as_u64().unwrap();
    gw.write_file("routes.yaml", &without);
    gw.wait_revision_after(revision).await;
    let out = waiting.await.unwrap();
    assert!(out["closed_after"].as_f64().is_some(), "{out}");
    // The tunnel's end is counted, then written to the access log: once its line is there,
    // no series of the route may be left (a gauge at -1, a count of the 101).
    eventually(
        Duration::from_secs(5),
        "the tunnel's access log line",
        || async { std::fs::read_to_string(&access_log).is_ok_and(|log| log.contains("/quiet/x")) },
    )
    .await;
    // A tunnel's line gives its 101: an interim status no, but a switch of protocols is the
    // answer.
    let log = std::fs::read_to_string(&access_log).unwrap();
    let line = log.lines().find(|l| l.contains("/quiet/x")).unwrap();
    let line: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(line["status"], 101, "{line}");
    let text = gw.metrics_text().await;
    assert!(
        !text.contains("route=\"quiet\""),
        "series of the removed route came back:\n{text}"
    );
    assert_eq!(open_tunnels(&text, "chat"), None, "other routes untouched");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_handshake_goes_through_the_routes_plugins_and_only_websocket_routes_upgrade() {
    let server = PythonServer::start(&script(), &["serve"]);
    let gw = gateway(&server).await;

    let out = ws(vec!["talk".into(), url(&gw, "/guarded/x"), "hi".into()]).await;
    assert_eq!(out["refused"], 403, "{out}");

    // A route without `websocket: true` never upgrades: the server sees a plain GET and
    // refuses it; the client gets no tunnel.
    let out = ws(vec!["talk".into(), url(&gw, "/plain/x"), "hi".into()]).await;
    assert!(out["refused"].is_number(), "{out}");
    assert_ne!(out["refused"], 101, "{out}");
}
