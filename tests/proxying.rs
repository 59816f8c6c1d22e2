//! Routing and proxying through the real binary to real upstreams.

mod common;

use common::{client, free_addr, Echo, Gateway, TestUpstream};
use std::io::{Read, Write};
use std::time::Duration;

async fn echo(resp: reqwest::Response) -> Echo {
    assert_eq!(resp.status(), 200, "expected a proxied 200");
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_by_path_host_method_headers_and_query() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let routes = r#"
kind: Route
id: catch-all
match: { paths: ["/**"] }
upstream: a
---
kind: Route
id: users
match: { paths: ["/api/users/**"] }
upstream: b
---
kind: Route
id: user
match: { paths: ["/api/users/{id}"], methods: [GET] }
upstream: a
---
kind: Route
id: host
match: { paths: ["/**"], hosts: ["*.example.com"] }
upstream: b
---
kind: Route
id: mobile
match: { paths: ["/app"], headers: { X-Platform: "ios|android" } }
upstream: b
---
kind: Route
id: debug
match: { paths: ["/app"], query: { debug: "~^(1|true)$" } }
upstream: b
---
kind: Route
id: pinned
priority: 5
match: { paths: ["/**"], hosts: ["pinned.internal"] }
upstream: a
"#;
    let gw = Gateway::builder()
        .file(
            "upstreams.yaml",
            format!("{}---\n{}", a.resource("a"), b.resource("b")),
        )
        .file("routes.yaml", routes)
        .start()
        .await;
    let c = client();
    let served = |r: Echo| r.upstream;

    assert_eq!(
        served(echo(c.get(gw.url("/other")).send().await.unwrap()).await),
        "a"
    );
    assert_eq!(
        served(echo(c.get(gw.url("/api/users")).send().await.unwrap()).await),
        "b"
    );
    assert_eq!(
        served(echo(c.get(gw.url("/api/users/7")).send().await.unwrap()).await),
        "a",
        "param route is more specific"
    );
    assert_eq!(
        served(echo(c.post(gw.url("/api/users/7")).send().await.unwrap()).await),
        "b",
        "POST falls through to the prefix"
    );
    let host = |h: &'static str| c.get(gw.url("/x")).header("Host", h);
    assert_eq!(
        served(echo(host("Shop.Example.com:8080").send().await.unwrap()).await),
        "b"
    );
    assert_eq!(
        served(echo(host("example.com").send().await.unwrap()).await),
        "a"
    );
    assert_eq!(
        served(echo(host("pinned.internal").send().await.unwrap()).await),
        "a"
    );
    let app = |h: &'static str| c.get(gw.url("/app")).header("X-Platform", h);
    assert_eq!(
        served(echo(app("android").send().await.unwrap()).await),
        "b"
    );
    assert_eq!(served(echo(app("web").send().await.unwrap()).await), "a");
    assert_eq!(
        served(echo(c.get(gw.url("/app?debug=true")).send().await.unwrap()).await),
        "b"
    );
    assert_eq!(
        served(echo(c.get(gw.url("/app?debug=yes")).send().await.unwrap()).await),
        "a"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rewrites_headers_request_ids_and_forwarding() {
    let up = TestUpstream::start("svc").await;
    let routes = r#"
kind: Route
id: strip
match: { paths: ["/api/v1/**"] }
rewrite: { strip_prefix: 2 }
request_headers:
  set: { X-Route: "${route_id}", X-Req: "id=${request_id}", X-Client: "${client_ip}" }
  remove: [X-Debug]
response_headers:
  set: { X-Served-By: gatehouse }
  remove: [Server]
upstream: svc
---
kind: Route
id: fixed
match: { paths: ["/old/**"] }
rewrite: { path: /new/place }
upstream: svc
"#;
    let gw = Gateway::builder()
        .file("all.yaml", format!("{}---\n{routes}", up.resource("svc")))
        .start()
        .await;
    let c = client();

    let resp = c
        .get(gw.url("/api/v1/users/7?x=1&y=2"))
        .header("X-Debug", "1")
        .header("X-Request-Id", "client-id-42")
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "client-id-42");
    assert_eq!(resp.headers()["x-served-by"], "gatehouse");
    assert!(resp.headers().get("server").is_none(), "Server removed");
    assert_eq!(
        resp.headers()["x-upstream"],
        "svc",
        "other upstream headers pass through"
    );
    let e = echo(resp).await;
    assert_eq!(e.path, "/users/7?x=1&y=2");
    assert_eq!(e.headers["x-route"], "strip");
    assert_eq!(e.headers["x-req"], "id=client-id-42");
    assert_eq!(e.headers["x-client"], "127.0.0.1");
    assert!(!e.headers.contains_key("x-debug"));
    assert_eq!(e.headers["x-request-id"], "client-id-42");
    // Not from a trusted proxy: the client's chain is not passed on.
    assert_eq!(e.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(e.headers["x-forwarded-proto"], "http");
    assert_eq!(e.headers["x-forwarded-host"], gw.addr.to_string());
    assert_eq!(
        e.headers["host"],
        gw.addr.to_string(),
        "the client's Host is passed on"
    );

    let resp = c
        .get(gw.url("/old/thing?keep=me"))
        .header("X-Request-Id", "not sane!")
        .send()
        .await
        .unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(
        generated.len(),
        32,
        "a fresh id replaces an insane one: {generated}"
    );
    let e = echo(resp).await;
    assert_eq!(e.path, "/new/place?keep=me");
    assert_eq!(
        e.headers["x-request-id"], generated,
        "the upstream sees the same id"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_responses_are_answered_by_the_gateway() {
    let routes = r#"
kind: Route
id: ping
match: { paths: ["/ping"] }
response_headers: { set: { X-Route: "${route_id}" } }
direct_response: { status: 203, body: "pong", headers: { Content-Type: text/plain } }
"#;
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let resp = client().get(gw.url("/ping")).send().await.unwrap();
    assert_eq!(resp.status(), 203);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(resp.headers()["x-route"], "ping");
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.text().await.unwrap(), "pong");
}

async fn json_error(resp: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(
        body["request_id"],
        id.as_str(),
        "the body names the request id"
    );
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_errors_are_spec_json() {
    let slow = TestUpstream::start("slow").await;
    slow.set_delay(Duration::from_secs(3));
    let dead = free_addr();
    let routes = format!(
        r#"{slow}---
kind: Upstream
id: dead
nodes: [{{ addr: "{dead}" }}]
---
kind: Route
id: to-dead
match: {{ paths: ["/dead"] }}
upstream: dead
---
kind: Route
id: to-slow
match: {{ paths: ["/slow"] }}
timeouts: {{ connect: 1s, read: 300ms, write: 1s }}
upstream: slow
"#,
        slow = slow.resource("slow")
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let c = client();

    json_error(
        c.get(gw.url("/nothing/here")).send().await.unwrap(),
        404,
        "no_route",
    )
    .await;
    json_error(
        c.get(gw.url("/dead")).send().await.unwrap(),
        502,
        "upstream_error",
    )
    .await;
    json_error(
        c.get(gw.url("/slow")).send().await.unwrap(),
        504,
        "upstream_timeout",
    )
    .await;
    json_error(
        c.get(gw.url("/dead"))
            .header("X-Big", "x".repeat(40 * 1024))
            .send()
            .await
            .unwrap(),
        431,
        "bad_request",
    )
    .await;

    // Dot segments are resolved (SPEC §8); one that climbs above the root is refused. Sent
    // raw so no client normalizes it away.
    let raw = raw_request(
        gw.addr,
        "GET /x/../../dead HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(raw.contains("\"error\":\"bad_request\""), "{raw}");
    // A head the HTTP parser cannot read is refused by it (with an empty body: see docs).
    let raw = raw_request(gw.addr, "GET / HTTP/1.1\r\nBad Header\r\n\r\n");
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
}

fn raw_request(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_are_kept_alive_on_both_sides() {
    let up = TestUpstream::start("svc").await;
    let route = "kind: Route\nid: r\nmatch: { paths: [\"/**\"] }\nupstream: svc\n";
    let gw = Gateway::builder()
        .file("r.yaml", format!("{}---\n{route}", up.resource("svc")))
        .start()
        .await;

    // Two requests on one client connection.
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for i in 0..2 {
        s.write_all(format!("GET /k{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .unwrap();
        let head = read_response(&mut s);
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "request {i} on the same connection: {head}"
        );
    }

    // Sequential requests reuse pooled upstream connections.
    let c = client();
    for _ in 0..20 {
        assert_eq!(c.get(gw.url("/pooled")).send().await.unwrap().status(), 200);
    }
    assert!(up.hits() >= 22);
    assert!(
        up.connections() <= 4,
        "{} upstream connections for {} requests",
        up.connections(),
        up.hits()
    );
}

/// Reads one response with a Content-Length body.
fn read_response(s: &mut std::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    s.read_exact(&mut body).unwrap();
    head
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_move_a_failed_connection_to_another_node() {
    let live = TestUpstream::start("live").await;
    let dead = free_addr();
    let resources = |retries: u32| {
        format!(
            "kind: Upstream\nid: pair\nnodes: [{{ addr: \"{dead}\" }}, {{ addr: \"{}\" }}]\n---\nkind: Route\nid: r\nmatch: {{ paths: [\"/**\"] }}\nupstream: pair\nretries: {retries}\ntimeouts: {{ connect: 500ms }}\n",
            live.addr
        )
    };
    let gw = Gateway::builder()
        .file("r.yaml", resources(1))
        .start()
        .await;
    let c = client();
    for i in 0..10 {
        let resp = c.get(gw.url(&format!("/r{i}"))).send().await.unwrap();
        assert_eq!(
            resp.status(),
            200,
            "request {i} should have been retried on the live node"
        );
    }

    let before = gw.status().await["revision"].as_u64().unwrap();
    gw.write_file("r.yaml", &resources(0));
    gw.wait_revision_after(before).await;
    let mut failed = 0;
    for i in 0..10 {
        if c.get(gw.url(&format!("/n{i}")))
            .send()
            .await
            .unwrap()
            .status()
            == 502
        {
            failed += 1;
        }
    }
    assert_eq!(
        failed, 5,
        "without retries, round robin sends half to the dead node"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_prior_knowledge_is_served_on_the_plain_listener() {
    let up = TestUpstream::start("svc").await;
    let route = "kind: Route\nid: r\nmatch: { paths: [\"/**\"], hosts: [\"h2.example\"] }\nrewrite: { strip_prefix: 1 }\nupstream: svc\n";
    let gw = Gateway::builder()
        .file("r.yaml", format!("{}---\n{route}", up.resource("svc")))
        .start()
        .await;
    // The name only has to reach the gateway as :authority; it resolves to the gateway.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .resolve("h2.example", gw.addr)
        .build()
        .unwrap();
    let url = format!("http://h2.example:{}/v1/items?q=1", gw.addr.port());
    let resp = h2
        .get(&url)
        .header("X-Request-Id", "h2-req")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.headers()["x-request-id"], "h2-req");
    let e = echo(resp).await;
    assert_eq!(e.path, "/items?q=1");
    assert_eq!(
        e.headers["x-forwarded-host"],
        format!("h2.example:{}", gw.addr.port())
    );
}
