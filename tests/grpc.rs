//! gRPC through the gateway (SPEC §9) with real parts: a Python grpcio server built from
//! `tests/grpc/echo.proto` behind a `scheme: grpc` upstream, and grpcio clients over h2c.
//! Every kind of call, metadata and trailers, a deadline, an upstream error, and the
//! gateway's own refusals answered as gRPC statuses.

mod common;

use common::python::PythonServer;
use common::Gateway;
use std::process::Command;

fn dir() -> String {
    format!("{}/tests/grpc", env!("CARGO_MANIFEST_DIR"))
}

/// Runs the Python client's `case` against the gateway; its JSON answer.
fn client(gw: &Gateway, case: &str) -> serde_json::Value {
    common::grpc_client::call(gw, case)
}

/// The Python gRPC server of `tests/grpc/server.py`.
fn server() -> PythonServer {
    PythonServer::start(&format!("{}/server.py", dir()), &[])
}

async fn gateway(server: &PythonServer) -> Gateway {
    let routes = format!(
        r#"kind: Upstream
id: echo
scheme: grpc
nodes: [{{ addr: "127.0.0.1:{}" }}]
---
kind: Route
id: echo
match: {{ paths: ["/echo.v1.Echo/{{method}}"] }}
upstream: echo
---
kind: Route
id: guarded
match: {{ paths: ["/echo.v1.Echo/Unary"], headers: {{ x-guard: "on" }} }}
upstream: echo
priority: 10
plugins:
  - name: ip_restriction
    config: {{ deny: [127.0.0.0/8] }}
"#,
        server.port
    );
    Gateway::builder().file("routes.yaml", routes).start().await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_call_passes_with_metadata_trailers_and_deadlines() {
    let server = server();
    let gw = gateway(&server).await;
    let out = tokio::task::spawn_blocking(move || {
        let out = client(&gw, "all");
        drop(gw);
        out
    })
    .await
    .unwrap();

    assert_eq!(out["unary"]["ok"]["text"], "hi|alice", "{out}");
    assert_eq!(out["unary"]["ok"]["n"], 7, "{out}");
    assert_eq!(
        out["unary"]["ok"]["trailer"], "kept",
        "trailers pass: {out}"
    );
    assert_eq!(
        out["count"]["ok"],
        serde_json::json!([0, 1, 2, 3, 4]),
        "{out}"
    );
    assert_eq!(out["join"]["ok"], "a+b+c", "{out}");
    assert_eq!(out["chat"]["ok"], serde_json::json!(["X", "Y"]), "{out}");
    // The upstream's own error, trailers-only, reaches the client as it was.
    assert_eq!(out["missing"]["code"], "NOT_FOUND", "{out}");
    assert_eq!(out["missing"]["details"], "no such thing", "{out}");
    assert_eq!(out["deadline"]["code"], "DEADLINE_EXCEEDED", "{out}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateways_refusals_are_grpc_statuses() {
    let server = server();
    let gw = gateway(&server).await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();

    // No route: UNIMPLEMENTED, as a trailers-only answer (HTTP 200, the status in headers).
    let resp = c
        .post(gw.url("/other.Service/Call"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    assert_eq!(resp.headers()["grpc-status"], "12");
    assert!(resp.headers().contains_key("grpc-message"));
    assert!(resp.headers().contains_key("x-request-id"));

    // A plugin's refusal (403): PERMISSION_DENIED.
    let resp = c
        .post(gw.url("/echo.v1.Echo/Unary"))
        .header("content-type", "application/grpc")
        .header("x-guard", "on")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "7");

    // The same refusal to a plain HTTP client stays the JSON error of SPEC §4.
    let resp = c
        .post(gw.url("/echo.v1.Echo/Unary"))
        .header("x-guard", "on")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "forbidden");

    // A real grpcio client sees the status, not a protocol error: a node that is down is
    // UNAVAILABLE.
    drop(server);
    let out = tokio::task::spawn_blocking(move || client(&gw, "down"))
        .await
        .unwrap();
    assert_eq!(out["down"]["code"], "UNAVAILABLE", "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_nodes_are_checked_with_grpc_health_v1() {
    let server = server();
    let node = format!("127.0.0.1:{}", server.port);
    let check = "health_check: { active: { service: SERVICE, interval: 200ms, timeout: 1s, healthy: 1, unhealthy: 1 } }";
    let routes = format!(
        "kind: Upstream\nid: served\nscheme: grpc\nnodes: [{{ addr: \"{node}\" }}]\n{}\n---\n\
         kind: Upstream\nid: unknown\nscheme: grpc\nnodes: [{{ addr: \"{node}\" }}]\n{}\n---\n\
         kind: Route\nid: served\nmatch: {{ paths: [\"/echo.v1.Echo/{{method}}\"], headers: {{ x-to: served }} }}\nupstream: served\n---\n\
         kind: Route\nid: unknown\nmatch: {{ paths: [\"/echo.v1.Echo/{{method}}\"] }}\nupstream: unknown\n",
        check.replace("SERVICE", "echo.v1.Echo"),
        check.replace("SERVICE", "no.such.Service"),
    );
    let gw = Gateway::builder().file("routes.yaml", routes).start().await;
    let gauge = |upstream: &str| {
        format!("gatehouse_upstream_node_healthy{{node=\"{node}\",upstream=\"{upstream}\"}}")
    };
    let (served, unknown) = (gauge("served"), gauge("unknown"));
    common::eventually(
        std::time::Duration::from_secs(10),
        "the node asked about an unknown service to be ejected",
        || async {
            let m = gw.metrics_text().await;
            m.contains(&format!("{unknown} 0")) && m.contains(&format!("{served} 1"))
        },
    )
    .await;
    // A call to the upstream whose only node failed its checks: UNAVAILABLE.
    let out = tokio::task::spawn_blocking(move || client(&gw, "hello"))
        .await
        .unwrap();
    assert_eq!(out["hello"]["code"], "UNAVAILABLE", "{out}");
    drop(server);
}

#[test]
fn a_grpc_health_check_takes_a_service_not_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("up.yaml");
    std::fs::write(
        &file,
        "kind: Upstream\nid: a\nscheme: grpc\nnodes: [{ addr: \"127.0.0.1:1\" }]\nhealth_check: { active: { path: /healthz, interval: 1s, timeout: 1s, healthy: 1, unhealthy: 1 } }\n---\n\
         kind: Upstream\nid: b\nnodes: [{ addr: \"127.0.0.1:1\" }]\nhealth_check: { active: { path: /h, service: x, interval: 1s, timeout: 1s, healthy: 1, unhealthy: 1 } }\n",
    )
    .unwrap();
    let out = Command::new(common::bin())
        .args(["validate", file.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("health_check.active.path"), "{text}");
    assert!(text.contains("health_check.active.service"), "{text}");
}
