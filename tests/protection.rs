//! Adaptive protection through the real binary (SPEC §11): the slow-call breaker, a fixed
//! concurrency limit, the retry budget under a retry storm, and every fallback reason, for
//! HTTP clients and for gRPC ones. The adaptive limit under overload is in `overload.rs`.

mod common;

use common::{client, eventually, Gateway, TestUpstream};
use std::time::{Duration, Instant};

fn upstream(id: &str, nodes: &[&TestUpstream], extra: &str) -> String {
    let nodes: Vec<String> = nodes
        .iter()
        .map(|n| format!("{{ addr: \"{}\" }}", n.addr))
        .collect();
    format!(
        "kind: Upstream\nid: {id}\nnodes: [{}]\n{extra}",
        nodes.join(", ")
    )
}

fn route(id: &str, path: &str, upstream: &str, extra: &str) -> String {
    format!(
        "kind: Route\nid: {id}\nmatch: {{ paths: [\"{path}\"] }}\nupstream: {upstream}\n{extra}"
    )
}

async fn get(gw: &Gateway, path: &str) -> (u16, Option<String>, String) {
    let resp = client().get(gw.url(path)).send().await.unwrap();
    let status = resp.status().as_u16();
    let fallback = resp
        .headers()
        .get("x-gatehouse-fallback")
        .map(|v| v.to_str().unwrap().to_string());
    (status, fallback, resp.text().await.unwrap())
}

fn error_code(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_turning_slow_opens_the_circuit_by_slow_call_and_a_quick_probe_closes_it() {
    let up = TestUpstream::start("svc").await;
    let routes = format!(
        "{}---\n{}",
        upstream(
            "svc",
            &[&up],
            "circuit_breaker: { error_rate: 0.9, min_requests: 4, window: 10s, open_for: 1s, slow_call: { threshold: 300ms, ratio: 0.5 } }\n"
        ),
        route("api", "/api", "svc", "")
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    for _ in 0..4 {
        assert_eq!(get(&gw, "/api").await.0, 200);
    }
    // The node turns slow: its answers still succeed, but past the threshold.
    up.set_delay(Duration::from_millis(400));
    for i in 0..4 {
        assert_eq!(get(&gw, "/api").await.0, 200, "slow call {i} is answered");
    }
    // Four slow calls of eight: half, and the circuit opens.
    let (status, _, body) = get(&gw, "/api").await;
    assert_eq!((status, error_code(&body).as_str()), (503, "circuit_open"));
    assert_eq!(up.hits(), 8, "the open circuit spares the upstream");

    // After open_for, a probe goes through; it is slow, so the circuit opens again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&gw, "/api").await.0, 200);
    assert_eq!(get(&gw, "/api").await.0, 503, "a slow probe reopens");
    assert_eq!(up.hits(), 9);

    // The node is quick again: the next probe closes the circuit.
    up.set_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..5 {
        assert_eq!(get(&gw, "/api").await.0, 200);
    }
    assert_eq!(up.hits(), 14);
}

#[tokio::test(flavor = "multi_thread")]
async fn past_a_fixed_concurrency_limit_requests_are_refused_at_once_as_overloaded() {
    let up = TestUpstream::start("svc").await;
    up.set_delay(Duration::from_millis(1500));
    let routes = format!(
        "{}---\n{}",
        upstream("svc", &[&up], "concurrency: { max: 2 }\n"),
        route("api", "/api", "svc", "")
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    assert_eq!(
        gw.metric("gatehouse_upstream_concurrency_limit{upstream=\"svc\"}")
            .await,
        2.0
    );
    let url = gw.url("/api");
    let held: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { client().get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    eventually(
        Duration::from_secs(5),
        "two requests at the upstream",
        || async { up.hits() == 2 },
    )
    .await;
    let started = Instant::now();
    let (status, _, body) = get(&gw, "/api").await;
    assert_eq!((status, error_code(&body).as_str()), (503, "overloaded"));
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "refused at once, not queued: {:?}",
        started.elapsed()
    );
    assert_eq!(up.hits(), 2);
    assert_eq!(
        gw.metric("gatehouse_overloaded_total{upstream=\"svc\"}")
            .await,
        1.0
    );
    for h in held {
        assert_eq!(h.await.unwrap(), 200, "the admitted requests are answered");
    }
    // Their places are given back.
    up.set_delay(Duration::ZERO);
    for _ in 0..3 {
        assert_eq!(get(&gw, "/api").await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_budget_caps_a_retry_storm() {
    // Two upstreams on failing nodes, both routes allowing three retries: one without a
    // budget, one with retries held to 20 % of requests (and 1 a second).
    let (a1, a2) = (
        TestUpstream::start("a1").await,
        TestUpstream::start("a2").await,
    );
    let (b1, b2) = (
        TestUpstream::start("b1").await,
        TestUpstream::start("b2").await,
    );
    for node in [&a1, &a2, &b1, &b2] {
        node.set_status(502);
    }
    let routes = [
        upstream("free", &[&a1, &a2], ""),
        upstream(
            "budgeted",
            &[&b1, &b2],
            "retry_budget: { ratio: 0.2, min_per_second: 1 }\n",
        ),
        route("free", "/free", "free", "retries: 3\n"),
        route("budgeted", "/budgeted", "budgeted", "retries: 3\n"),
    ]
    .join("---\n");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    const REQUESTS: usize = 50;
    for _ in 0..REQUESTS {
        assert_eq!(get(&gw, "/free").await.0, 502);
        assert_eq!(get(&gw, "/budgeted").await.0, 502);
    }
    let free = a1.hits() + a2.hits();
    let budgeted = b1.hits() + b2.hits();
    assert_eq!(
        free,
        REQUESTS * 4,
        "without a budget every request is tried 4 times"
    );
    // 50 requests, at most 20 % of them again, plus 1 a second over the 10 s window.
    assert!(
        (REQUESTS..=REQUESTS + 10 + 10).contains(&budgeted),
        "with the budget the upstream saw {budgeted} attempts for {REQUESTS} requests"
    );
    let refused = gw
        .metric("gatehouse_retry_budget_exhausted_total{upstream=\"budgeted\"}")
        .await;
    // A request the budget stops is counted once, when its retry is refused.
    assert!(
        (1..=REQUESTS).contains(&(refused as usize)),
        "{refused} retries refused"
    );
}

/// Routes to show every fallback reason, and the upstreams they need.
struct FallbackRig {
    gw: Gateway,
    slow: TestUpstream,
    failing: TestUpstream,
}

const FALLBACK: &str = "fallback: { on: [circuit_open, overloaded, rate_limited, no_upstream, upstream_timeout, upstream_error], status: 200, headers: { Content-Type: application/json, X-Degraded: \"yes\" }, body: '{\"items\": [], \"degraded\": true}' }\n";

async fn fallback_rig() -> FallbackRig {
    let slow = TestUpstream::start("slow").await;
    slow.set_delay(Duration::from_millis(1500));
    let failing = TestUpstream::start("failing").await;
    failing.set_status(500);
    let gone = TestUpstream::start("gone").await;
    gone.kill();
    gone.stop();
    let routes = [
        upstream("slow", &[&slow], "concurrency: { max: 1 }\n"),
        upstream(
            "failing",
            &[&failing],
            "circuit_breaker: { error_rate: 0.5, min_requests: 2, window: 10s, open_for: 30s }\n",
        ),
        upstream("gone", &[&gone], ""),
        upstream("laned", &[&slow], "lanes: { fallback: refuse }\n"),
        route("overloaded", "/overloaded", "slow", FALLBACK),
        route(
            "timeout",
            "/timeout",
            "slow",
            &format!("timeouts: {{ read: 200ms }}\n{FALLBACK}"),
        ),
        route(
            "circuit",
            "/circuit",
            "failing",
            "fallback: { on: [circuit_open], body: degraded }\n",
        ),
        route("answered", "/answered", "failing", FALLBACK),
        route("gone", "/gone", "gone", FALLBACK),
        route("laned", "/laned", "laned", FALLBACK),
        route(
            "limited",
            "/limited",
            "gone",
            &format!("rate_limit: {{ rate: 1, per: 1m, key: client_ip }}\n{FALLBACK}"),
        ),
        route(
            "unlisted",
            "/unlisted",
            "gone",
            "fallback: { on: [circuit_open], body: degraded }\n",
        ),
    ]
    .join("---\n");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    FallbackRig { gw, slow, failing }
}

async fn fallback_metric(gw: &Gateway, route: &str, reason: &str) -> f64 {
    gw.metric(&format!(
        "gatehouse_fallback_total{{reason=\"{reason}\",route=\"{route}\"}}"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn each_reason_gets_the_routes_fallback_marked_and_counted() {
    let FallbackRig { gw, slow, failing } = fallback_rig().await;
    let degraded = |resp: &(u16, Option<String>, String), reason: &str| {
        assert_eq!(resp.0, 200, "{reason}: {resp:?}");
        assert_eq!(resp.1.as_deref(), Some(reason), "{resp:?}");
        assert_eq!(resp.2, r#"{"items": [], "degraded": true}"#);
    };

    // upstream_error: the node refuses connections.
    degraded(&get(&gw, "/gone").await, "upstream_error");
    // no_upstream: a tag naming no lane, with lanes refusing such requests.
    let resp = client()
        .get(gw.url("/laned"))
        .header("X-Traffic-Tag", "ghost")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-gatehouse-fallback"], "no_upstream");
    assert_eq!(resp.headers()["x-degraded"], "yes");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(resp.headers().contains_key("x-request-id"));
    // rate_limited: the second request in a minute; the refusal is still counted as one.
    assert_eq!(
        get(&gw, "/limited").await.1.as_deref(),
        Some("upstream_error")
    );
    degraded(&get(&gw, "/limited").await, "rate_limited");
    assert_eq!(
        gw.metric("gatehouse_rate_limited_total{route=\"limited\"}")
            .await,
        1.0
    );
    // upstream_timeout: the answer's head takes longer than timeouts.read.
    let started = Instant::now();
    degraded(&get(&gw, "/timeout").await, "upstream_timeout");
    assert!(started.elapsed() < Duration::from_millis(1200));
    // overloaded: the one place is taken by a slow request.
    let url = gw.url("/overloaded");
    let held = tokio::spawn(async move { client().get(url).send().await.unwrap().status() });
    eventually(
        Duration::from_secs(5),
        "a request holding the place",
        || async { slow.hits() >= 2 },
    )
    .await;
    degraded(&get(&gw, "/overloaded").await, "overloaded");
    assert_eq!(held.await.unwrap(), 200);
    // upstream_error: the upstream's own 500, its body replaced.
    degraded(&get(&gw, "/answered").await, "upstream_error");
    failing.set_status(504);
    // Two errors of two open the circuit of `failing`.
    degraded(&get(&gw, "/answered").await, "upstream_timeout");
    degraded(&get(&gw, "/answered").await, "circuit_open");
    // A route whose fallback lists only circuit_open: its body as given, no content type.
    let resp = get(&gw, "/circuit").await;
    assert_eq!(
        (resp.0, resp.1.as_deref(), resp.2.as_str()),
        (200, Some("circuit_open"), "degraded")
    );
    // An error the fallback does not list is answered as always.
    let (status, fallback, body) = get(&gw, "/unlisted").await;
    assert_eq!(
        (status, fallback, error_code(&body).as_str()),
        (502, None, "upstream_error")
    );

    for (route, reason, count) in [
        ("gone", "upstream_error", 1.0),
        ("laned", "no_upstream", 1.0),
        ("limited", "rate_limited", 1.0),
        ("limited", "upstream_error", 1.0),
        ("timeout", "upstream_timeout", 1.0),
        ("overloaded", "overloaded", 1.0),
        ("answered", "upstream_error", 1.0),
        ("answered", "upstream_timeout", 1.0),
        ("answered", "circuit_open", 1.0),
        ("circuit", "circuit_open", 1.0),
    ] {
        assert_eq!(
            fallback_metric(&gw, route, reason).await,
            count,
            "{route} {reason}"
        );
    }
}

/// A unary call of the Python gRPC client with `x-variant: variant`.
fn grpc_call(gw: &Gateway, variant: &str) -> serde_json::Value {
    common::grpc_client::call(gw, &format!("fallback:{variant}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_call_gets_the_fallback_as_grpc() {
    let gone = TestUpstream::start("gone").await;
    gone.kill();
    gone.stop();
    let routes = format!(
        r#"kind: Upstream
id: echo
scheme: grpc
nodes: [{{ addr: "{addr}" }}]
---
kind: Route
id: empty
match: {{ paths: ["/echo.v1.Echo/{{method}}"], headers: {{ x-variant: empty }} }}
upstream: echo
fallback: {{ on: [upstream_error], status: 200, headers: {{ x-degraded: "yes" }} }}
---
kind: Route
id: unavailable
match: {{ paths: ["/echo.v1.Echo/{{method}}"], headers: {{ x-variant: unavailable }} }}
upstream: echo
fallback: {{ on: [upstream_error], status: 503, body: "degraded: try later" }}
---
kind: Route
id: plain
match: {{ paths: ["/echo.v1.Echo/{{method}}"] }}
upstream: echo
priority: -1
"#,
        addr = gone.addr
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let (empty, unavailable, plain) = tokio::task::spawn_blocking(move || {
        let out = (
            grpc_call(&gw, "empty"),
            grpc_call(&gw, "unavailable"),
            grpc_call(&gw, "none"),
        );
        drop(gw);
        out
    })
    .await
    .unwrap();
    // An OK call with the empty message (every field at its default), marked.
    assert_eq!(empty["ok"]["text"], "", "{empty}");
    assert_eq!(empty["ok"]["n"], 0, "{empty}");
    assert_eq!(empty["ok"]["fallback"], "upstream_error", "{empty}");
    assert_eq!(empty["ok"]["degraded"], "yes", "{empty}");
    assert_eq!(unavailable["code"], "UNAVAILABLE", "{unavailable}");
    assert_eq!(
        unavailable["details"], "degraded: try later",
        "{unavailable}"
    );
    assert_eq!(plain["code"], "UNAVAILABLE", "{plain}");
    assert_ne!(plain["details"], "degraded: try later", "{plain}");
}
