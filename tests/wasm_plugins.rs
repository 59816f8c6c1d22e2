//! proxy-wasm plugins (SPEC §12) through the real binary, with the test plugins built from
//! the C sources under `tests/wasm/`: header edits, local answers, a rewritten response
//! body, a callback cut by its timeout and memory cut by `max_memory` while other requests
//! go on, the error count, and a bad module rejected alone.

mod common;

use common::{client, status_of, Gateway, TestUpstream};
use std::time::{Duration, Instant};

fn module(name: &str) -> String {
    format!("{}/tests/wasm/{name}.wasm", env!("CARGO_MANIFEST_DIR"))
}

fn route(id: &str, plugin: &str, config: &str) -> String {
    format!(
        "kind: Route\nid: {id}\nmatch: {{ paths: [\"/{id}/**\"] }}\nupstream: up\nplugins:\n  - name: wasm\n    config: {{ module: \"{}\", timeout: 20ms, max_memory: 4MiB{config} }}\n",
        module(plugin)
    )
}

fn routes() -> String {
    [
        route(
            "add",
            "add_header",
            ", config: '{\"header\": \"x-wasm\", \"value\": \"on\"}'",
        ),
        route("deny", "deny", ", config: { header: x-block }"),
        route(
            "body",
            "body_rewrite",
            ", config: { from: headers, to: HEADERS-REWRITTEN }",
        ),
        route("spin", "spin", ""),
        route("hog", "hog", ""),
        "kind: Route\nid: plain\nmatch: { paths: [\"/plain/**\"] }\nupstream: up\n".to_string(),
    ]
    .join("---\n")
}

/// What the echo upstream saw of a GET through the gateway.
async fn echo(gw: &Gateway, path: &str) -> serde_json::Value {
    client()
        .get(gw.url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn gateway(up: &TestUpstream) -> Gateway {
    Gateway::builder()
        .file("up.yaml", up.resource("up"))
        .file("routes.yaml", routes())
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_edit_headers_answer_locally_and_rewrite_bodies() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(&up).await;
    let c = client();

    let echo: serde_json::Value = c
        .get(gw.url("/add/x"))
        .header("x-wasm", "from-client")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["headers"]["x-wasm"], "on", "{echo}");

    let hits = up.hits();
    let denied = c
        .get(gw.url("/deny/x"))
        .header("x-block", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(denied.headers()["x-blocked-by"], "wasm");
    assert!(denied.headers().contains_key("x-request-id"));
    assert_eq!(denied.text().await.unwrap(), "blocked by wasm\n");
    assert_eq!(up.hits(), hits, "a local answer never reaches the upstream");
    assert_eq!(status_of(&gw, "/deny/x").await, 200);

    // The echo body, rewritten by the plugin, arrives whole (chunked, its length changed).
    for _ in 0..3 {
        let resp = c.get(gw.url("/body/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("content-length").is_none());
        let body = resp.text().await.unwrap();
        assert!(body.contains("\"HEADERS-REWRITTEN\""), "{body}");
        assert!(!body.contains("\"headers\""), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_looping_or_hoarding_plugin_fails_its_request_alone_and_is_counted() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(&up).await;
    let c = client();

    // Plain requests keep flowing while the spinning plugin is cut again and again.
    let plain = {
        let c = c.clone();
        let url = gw.url("/plain/x");
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            for _ in 0..100 {
                let started = Instant::now();
                let resp = c.get(&url).send().await.unwrap();
                assert_eq!(resp.status(), 200);
                slowest = slowest.max(started.elapsed());
            }
            slowest
        })
    };
    for _ in 0..5 {
        let started = Instant::now();
        let resp = c
            .get(gw.url("/spin/x"))
            .header("x-spin", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 500);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "plugin_error", "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    let slowest = plain.await.unwrap();
    assert!(
        slowest < Duration::from_secs(1),
        "a plain request took {slowest:?}"
    );
    // The worker's instance was replaced: the plugin still serves the next request.
    let echo = echo(&gw, "/spin/x").await;
    assert_eq!(echo["headers"]["x-spin-checked"], "1");

    let resp = c
        .get(gw.url("/hog/x"))
        .header("x-hog", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(status_of(&gw, "/hog/x").await, 200);

    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains("gatehouse_plugin_errors_total{plugin=\"spin\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatehouse_plugin_errors_total{plugin=\"hog\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_module_is_rejected_alone_and_the_previous_version_stays() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(&up).await;
    let revision = gw.status().await["revision"].as_u64().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let not_wasm = dir.path().join("not.wasm");
    std::fs::write(&not_wasm, "plain text").unwrap();
    let broken = routes()
        .replace(&module("add_header"), "/nowhere/add_header.wasm")
        .replace(&module("deny"), not_wasm.to_str().unwrap());
    gw.write_file("routes.yaml", &broken);
    let status = gw.wait_revision_after(revision).await;
    let rejected: Vec<String> = status["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["error"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(rejected.len(), 2, "{status}");
    assert!(
        rejected
            .iter()
            .any(|e| e.starts_with("plugins[0].config.module: cannot read")),
        "{rejected:?}"
    );
    assert!(
        rejected
            .iter()
            .any(|e| e.starts_with("plugins[0].config.module: not a Wasm module")),
        "{rejected:?}"
    );
    // Both routes keep their previous version; the others are untouched.
    let echo = echo(&gw, "/add/x").await;
    assert_eq!(echo["headers"]["x-wasm"], "on");
    let denied = client()
        .get(gw.url("/deny/x"))
        .header("x-block", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(status_of(&gw, "/plain/x").await, 200);
}
