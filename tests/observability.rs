//! Traces, metrics and access logs through the real binary: an OTLP/HTTP receiver decodes
//! the exported protobuf, `/metrics` is scraped and parsed, the access log file is read.

mod common;

use common::otlp::Collector;
use common::{client, eventually, status_of, Echo, Gateway, TestUpstream};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

const INCOMING_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INCOMING_SPAN: &str = "00f067aa0ba902b7";

fn routes(up: &TestUpstream) -> String {
    format!(
        "{}---\nkind: Route\nid: users\nmatch: {{ paths: [\"/users/{{id}}\"] }}\nupstream: svc\n---\nkind: Route\nid: hello\nmatch: {{ paths: [\"/hello\"] }}\ndirect_response: {{ status: 200, body: hi }}\n",
        up.resource("svc")
    )
}

/// Parses Prometheus text into `name{labels}` → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn sample(all: &HashMap<String, f64>, series: &str) -> f64 {
    all.get(series).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_continue_the_callers_trace_and_parent_the_upstream_request() {
    let collector = Collector::start().await;
    let up = TestUpstream::start("svc").await;
    let gw = Gateway::builder()
        .file("r.yaml", routes(&up))
        .config(&format!(
            "telemetry:\n  otlp: {{ endpoint: \"{}\", service_name: edge-test, sample_ratio: 1.0 }}\n  access_log: {{ target: off }}",
            collector.endpoint()
        ))
        .start()
        .await;

    // With a caller's traceparent: same trace, the gateway's span as the caller's child.
    let resp = client()
        .get(gw.url("/users/42?x=1"))
        .header(
            "traceparent",
            format!("00-{INCOMING_TRACE}-{INCOMING_SPAN}-01"),
        )
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-request-id"],
        INCOMING_TRACE,
        "no X-Request-Id given: the trace id is the request id"
    );
    let echo: Echo = resp.json().await.unwrap();
    let forwarded = &echo.headers["traceparent"];
    let parts: Vec<&str> = forwarded.split('-').collect();
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], INCOMING_TRACE);
    assert_ne!(parts[2], INCOMING_SPAN);
    assert_eq!(parts[3], "01");
    assert_eq!(echo.headers["tracestate"], "vendor=abc");

    let mut span = None;
    eventually(Duration::from_secs(5), "the span to be exported", || {
        span = collector.span_of(INCOMING_TRACE);
        let found = span.is_some();
        async move { found }
    })
    .await;
    let span = span.unwrap();
    assert_eq!(span.service, "edge-test");
    assert_eq!(span.parent_span_id, INCOMING_SPAN);
    assert_eq!(
        span.span_id, parts[2],
        "the upstream's parent is the gateway's span"
    );
    assert_eq!(span.kind, 2, "a server span");
    assert_eq!(span.name, "GET /users/{id}");
    let a = &span.attributes;
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["url.path"], "/users/42");
    assert_eq!(a["http.route"], "/users/{id}");
    assert_eq!(a["http.response.status_code"], "200");
    assert_eq!(a["gatehouse.route"], "users");
    assert_eq!(a["server.address"], "127.0.0.1");
    assert_eq!(a["server.port"], up.addr.port().to_string());
    assert!(span.end_ns > span.start_ns);

    // Without one: a new trace whose root is the gateway's span.
    let resp = client().get(gw.url("/hello")).send().await.unwrap();
    let trace_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(trace_id.len(), 32);
    let mut root = None;
    eventually(Duration::from_secs(5), "the root span", || {
        root = collector.span_of(&trace_id);
        let found = root.is_some();
        async move { found }
    })
    .await;
    let root = root.unwrap();
    assert_eq!(root.parent_span_id, "");
    assert_eq!(root.attributes["gatehouse.route"], "hello");
    assert!(
        !root.attributes.contains_key("server.address"),
        "no node for a direct response"
    );

    // A caller's X-Request-Id is kept; the trace id still names the trace.
    let resp = client()
        .get(gw.url("/hello"))
        .header("x-request-id", "req-from-client")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-from-client");

    let metrics = gw.metrics_text().await;
    assert!(!metrics.contains("gatehouse_trace_spans_dropped_total 1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsampled_caller_is_followed_and_nothing_is_exported_at_ratio_zero() {
    let collector = Collector::start().await;
    let up = TestUpstream::start("svc").await;
    let gw = Gateway::builder()
        .file("r.yaml", routes(&up))
        .config(&format!(
            "telemetry:\n  otlp: {{ endpoint: \"{}\", sample_ratio: 0.0 }}\n  access_log: {{ target: off }}",
            collector.endpoint()
        ))
        .start()
        .await;
    let resp = client()
        .get(gw.url("/users/1"))
        .header(
            "traceparent",
            format!("00-{INCOMING_TRACE}-{INCOMING_SPAN}-00"),
        )
        .send()
        .await
        .unwrap();
    let echo: Echo = resp.json().await.unwrap();
    assert!(echo.headers["traceparent"].starts_with(&format!("00-{INCOMING_TRACE}-")));
    assert!(echo.headers["traceparent"].ends_with("-00"));
    // A new trace at ratio 0 is not sampled either, but still propagated.
    let resp = client().get(gw.url("/users/2")).send().await.unwrap();
    let echo: Echo = resp.json().await.unwrap();
    assert!(echo.headers["traceparent"].ends_with("-00"));
    // A sampled caller afterwards marks the end: once its span has arrived, the export has
    // had its chance to carry the earlier ones, and did not.
    let marker = "5ce0e9a56015fec5aadfa328ae398115";
    client()
        .get(gw.url("/users/3"))
        .header("traceparent", format!("00-{marker}-{INCOMING_SPAN}-01"))
        .send()
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the marker span", || async {
        collector.span_of(marker).is_some()
    })
    .await;
    let spans = collector.spans();
    assert_eq!(spans.len(), 1, "{spans:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_by_route_and_status_with_latency_histograms() {
    let up = TestUpstream::start("svc").await;
    let gw = Gateway::builder()
        .file("r.yaml", routes(&up))
        .config("telemetry:\n  access_log: { target: off }")
        .start()
        .await;
    let before = samples(&gw.metrics_text().await);
    for _ in 0..3 {
        assert_eq!(
            client()
                .get(gw.url("/users/7"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(
        client()
            .get(gw.url("/nowhere"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // A request is counted just after its answer is sent, each on its own connection's
    // task: wait until all four are, in whatever order they finished.
    let not_found = "gatehouse_requests_total{route=\"\",status=\"404\"}";
    let found = "gatehouse_requests_total{route=\"users\",status=\"200\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let after = loop {
        let now = samples(&gw.metrics_text().await);
        if sample(&now, not_found) > sample(&before, not_found)
            && sample(&now, found) >= sample(&before, found) + 3.0
        {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the four requests were never all counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(
        delta("gatehouse_requests_total{route=\"users\",status=\"200\"}"),
        3.0
    );
    assert_eq!(
        delta("gatehouse_requests_total{route=\"\",status=\"404\"}"),
        1.0
    );
    assert_eq!(
        delta("gatehouse_request_duration_seconds_count{route=\"users\"}"),
        3.0
    );
    assert_eq!(
        delta("gatehouse_request_duration_seconds_bucket{route=\"users\",le=\"+Inf\"}"),
        3.0
    );
    assert!(
        sample(
            &after,
            "gatehouse_request_duration_seconds_sum{route=\"users\"}"
        ) > 0.0
    );
    assert_eq!(
        delta("gatehouse_upstream_duration_seconds_count{upstream=\"svc\"}"),
        3.0
    );
    // Buckets are cumulative and end at a minute.
    assert!(after
        .contains_key("gatehouse_request_duration_seconds_bucket{route=\"users\",le=\"0.0005\"}"));
    assert!(
        after.contains_key("gatehouse_request_duration_seconds_bucket{route=\"users\",le=\"60\"}")
    );
    // Process metrics.
    assert!(sample(&after, "process_resident_memory_bytes") > 0.0);
    assert!(after.contains_key("process_cpu_seconds_total"));
    // No raw paths in any label.
    let text = gw.metrics_text().await;
    assert!(!text.contains("/users/7") && !text.contains("/nowhere"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_series_of_a_removed_route_and_upstream_go_and_the_rest_keep_counting() {
    let up = TestUpstream::start("svc").await;
    let other = TestUpstream::start("other").await;
    let kept = format!(
        "{}---\nkind: Route\nid: kept\nmatch: {{ paths: [\"/kept\"] }}\nupstream: svc\n",
        up.resource("svc")
    );
    let leaving = format!(
        "{}---\nkind: Route\nid: leaving\nmatch: {{ paths: [\"/leaving\"] }}\nupstream: other\n\
         rate_limit: {{ rate: 1, per: 1h, burst: 1, key: route }}\n",
        other.resource("other")
    );
    let gw = Gateway::builder()
        .file("kept.yaml", kept)
        .file("leaving.yaml", leaving)
        .config("telemetry:\n  access_log: { target: off }")
        .start()
        .await;
    for (path, status) in [
        ("/kept", 200),
        ("/kept", 200),
        ("/leaving", 200),
        ("/leaving", 429),
    ] {
        let resp = client().get(gw.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), status, "{path}");
    }
    let counted = "gatehouse_requests_total{route=\"kept\",status=\"200\"}";
    eventually(
        Duration::from_secs(5),
        "the requests to be counted",
        || async {
            let now = samples(&gw.metrics_text().await);
            sample(&now, counted) == 2.0
                && sample(
                    &now,
                    "gatehouse_requests_total{route=\"leaving\",status=\"429\"}",
                ) == 1.0
        },
    )
    .await;
    let text = gw.metrics_text().await;
    for series in [
        "gatehouse_request_duration_seconds_count{route=\"leaving\"}",
        "gatehouse_rate_limited_total{route=\"leaving\"}",
        "gatehouse_upstream_duration_seconds_count{upstream=\"other\"}",
    ] {
        assert!(
            text.contains(series),
            "{series} before the removal:\n{text}"
        );
    }

    let revision = gw.status().await["revision"].as_u64().unwrap();
    std::fs::remove_file(gw.route_file("leaving.yaml")).unwrap();
    let status = gw.wait_revision_after(revision).await;
    assert_eq!(status["routes"], 1, "{status}");
    // The series go just after the change is in force.
    let left =
        |text: &str| text.contains("route=\"leaving\"") || text.contains("upstream=\"other\"");
    eventually(
        Duration::from_secs(5),
        "the removed series to go",
        || async { !left(&gw.metrics_text().await) },
    )
    .await;
    let now = samples(&gw.metrics_text().await);
    assert_eq!(
        sample(&now, counted),
        2.0,
        "the kept route's count is untouched"
    );
    assert_eq!(
        sample(
            &now,
            "gatehouse_upstream_duration_seconds_count{upstream=\"svc\"}"
        ),
        2.0
    );
    assert_eq!(status_of(&gw, "/kept").await, 200);
    eventually(
        Duration::from_secs(5),
        "the kept route to count on",
        || async { sample(&samples(&gw.metrics_text().await), counted) == 3.0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_gets_one_json_access_log_line() {
    let up = TestUpstream::start("svc").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = Gateway::builder()
        .file("r.yaml", routes(&up))
        .config(&format!(
            "telemetry:\n  access_log: {{ target: \"{}\" }}",
            log.display()
        ))
        .start()
        .await;
    let resp = client()
        .get(gw.url("/users/9?full=1"))
        .header("x-request-id", "log-me")
        .send()
        .await
        .unwrap();
    assert!(!resp.text().await.unwrap().is_empty());
    client().get(gw.url("/nowhere")).send().await.unwrap();

    let mut lines: Vec<Value> = Vec::new();
    eventually(Duration::from_secs(5), "two access log lines", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        // Only whole lines: the writer may be in the middle of one.
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        lines = complete
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        let n = lines.len();
        async move { n >= 2 }
    })
    .await;
    // Each line is written when its request ends, by whichever worker ran it: the second
    // request, answered at once, may be written before the first.
    let by_path = |path: &str| {
        lines
            .iter()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("no line for {path}: {lines:?}"))
    };
    let first = by_path("/users/9?full=1");
    assert_eq!(first["request_id"], "log-me");
    assert_eq!(first["trace_id"].as_str().unwrap().len(), 32);
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/users/9?full=1");
    assert_eq!(first["route"], "users");
    assert_eq!(first["upstream"], "svc");
    assert_eq!(first["node"], up.addr.to_string());
    assert_eq!(first["status"], 200);
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert!(first["bytes"].as_u64().unwrap() > 0);
    assert!(first["duration"].as_f64().unwrap() > 0.0);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    let second = by_path("/nowhere");
    assert_eq!(second["status"], 404);
    assert_eq!(second["route"], "");
    assert!(second.get("node").is_none());
    assert_eq!(lines.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_that_cannot_be_exported_are_counted_and_requests_go_on() {
    let up = TestUpstream::start("svc").await;
    // Port 1 on loopback: refused at once, and never a port another test's server got.
    let nowhere = "127.0.0.1:1";
    let gw = Gateway::builder()
        .file("r.yaml", routes(&up))
        .config(&format!(
            "telemetry:\n  otlp: {{ endpoint: \"http://{nowhere}\" }}\n  access_log: {{ target: off }}"
        ))
        .start()
        .await;
    for _ in 0..3 {
        assert_eq!(
            client()
                .get(gw.url("/users/3"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    eventually(
        Duration::from_secs(5),
        "the lost spans to be counted",
        || async {
            samples(&gw.metrics_text().await)
                .get("gatehouse_trace_spans_dropped_total")
                .is_some_and(|&n| n >= 3.0)
        },
    )
    .await;
}
