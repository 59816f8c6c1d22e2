//! Registry plugins on routes (SPEC §12) through the real binary: `cors`, `ip_restriction`
//! and `request_size_limit`, and a bad plugin entry rejected alone.

mod common;

use common::{client, Gateway, TestUpstream};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

async fn gateway(up: &TestUpstream) -> Gateway {
    let routes = r#"
kind: Route
id: shared
match: { paths: ["/shared/**"] }
upstream: up
plugins:
  - name: cors
    config: { allow_origins: ["https://app.example.com", "*.example.org"], allow_methods: [GET, POST], allow_headers: [Authorization], allow_credentials: true, max_age: 10m }
  - name: request_size_limit
    config: { max_body: 16 }
---
kind: Route
id: inside
match: { paths: ["/inside/**"] }
upstream: up
plugins:
  - name: ip_restriction
    config: { allow: [10.0.0.0/8], deny: [] }
---
kind: Route
id: outside
match: { paths: ["/outside/**"] }
upstream: up
plugins:
  - name: ip_restriction
    config: { deny: [192.0.2.0/24] }
"#;
    Gateway::builder()
        .file("up.yaml", up.resource("up"))
        .file("routes.yaml", routes)
        .start()
        .await
}

/// One raw exchange on a fresh connection; the answer as text.
fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_answers_preflights_itself_and_marks_answers_to_allowed_origins() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(&up).await;
    let c = client();

    let preflight = c
        .request(reqwest::Method::OPTIONS, gw.url("/shared/x"))
        .header("Origin", "https://app.example.com")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(h["access-control-allow-headers"], "Authorization");
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(h["vary"], "Origin");
    assert!(h.contains_key("x-request-id"));
    assert_eq!(up.hits(), 0, "a preflight never reaches the upstream");

    let refused = c
        .request(reqwest::Method::OPTIONS, gw.url("/shared/x"))
        .header("Origin", "https://evil.example")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 204);
    assert!(!refused
        .headers()
        .contains_key("access-control-allow-origin"));

    let actual = c
        .get(gw.url("/shared/x"))
        .header("Origin", "https://api.example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(actual.status(), 200);
    assert_eq!(
        actual.headers()["access-control-allow-origin"],
        "https://api.example.org"
    );
    assert_eq!(actual.headers()["vary"], "Origin");
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn ip_restriction_refuses_by_client_address() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(&up).await;
    let c = client();
    // The tests' client is 127.0.0.1: outside 10.0.0.0/8, and not in the denied net.
    let inside = c.get(gw.url("/inside/x")).send().await.unwrap();
    assert_eq!(inside.status(), 403);
    let body: serde_json::Value = inside.json().await.unwrap();
    assert_eq!(body["error"], "forbidden");
    assert_eq!(up.hits(), 0);
    // A forged X-Forwarded-For from an untrusted peer changes nothing.
    let forged = c
        .get(gw.url("/inside/x"))
        .header("X-Forwarded-For", "10.1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(
        c.get(gw.url("/outside/x")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_size_limit_refuses_declared_and_streamed_bodies_over_the_limit() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(&up).await;

    let small = raw(
        gw.addr,
        b"POST /shared/x HTTP/1.1\r\nHost: a\r\nContent-Length: 16\r\nConnection: close\r\n\r\n0123456789abcdef",
    );
    assert!(small.starts_with("HTTP/1.1 200"), "{small}");
    let hits = up.hits();

    let declared = raw(
        gw.addr,
        b"POST /shared/x HTTP/1.1\r\nHost: a\r\nContent-Length: 17\r\nConnection: close\r\n\r\n0123456789abcdefg",
    );
    assert!(declared.starts_with("HTTP/1.1 413"), "{declared}");
    assert!(
        declared.contains("\"error\":\"payload_too_large\""),
        "{declared}"
    );
    assert_eq!(up.hits(), hits, "refused before the upstream");

    let chunked = raw(
        gw.addr,
        b"POST /shared/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          a\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n",
    );
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
    assert!(
        chunked.contains("\"error\":\"payload_too_large\""),
        "{chunked}"
    );

    let chunked_small = raw(
        gw.addr,
        b"POST /shared/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          a\r\n0123456789\r\n0\r\n\r\n",
    );
    assert!(chunked_small.starts_with("HTTP/1.1 200"), "{chunked_small}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_plugin_entry_is_rejected_alone_naming_its_field() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(&up).await;
    let revision = gw.status().await["revision"].as_u64().unwrap();
    gw.write_file(
        "more.yaml",
        "kind: Route\nid: typo\nmatch: { paths: [\"/typo\"] }\nupstream: up\nplugins: [{ name: corz }]\n---\n\
         kind: Route\nid: badsize\nmatch: { paths: [\"/badsize\"] }\nupstream: up\n\
         plugins: [{ name: cors, config: { allow_origins: [\"*\"] } }, { name: request_size_limit, config: { max_body: huge } }]\n---\n\
         kind: Route\nid: fine\nmatch: { paths: [\"/fine\"] }\nupstream: up\n",
    );
    let status = gw.wait_revision_after(revision).await;
    let rejected = status["rejected"].as_array().unwrap();
    let error_of = |id: &str| {
        rejected
            .iter()
            .find(|r| r["key"].as_str().unwrap().contains(id))
            .map(|r| r["error"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{id} not rejected: {status}"))
    };
    assert!(error_of("typo").contains("plugins[0].name"), "{status}");
    assert!(
        error_of("typo").contains("no plugin is named `corz`"),
        "{status}"
    );
    assert!(
        error_of("badsize").contains("plugins[1].config.max_body"),
        "{status}"
    );
    assert_eq!(rejected.len(), 2, "{status}");
    let c = client();
    assert_eq!(c.get(gw.url("/fine")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(gw.url("/typo")).send().await.unwrap().status(), 404);
}

/// The example program built on the library (`examples/custom_plugin.rs`), built if the
/// test run has not built it already.
fn custom_plugin_program() -> std::path::PathBuf {
    // target/<profile>/deps/plugins-… -> target/<profile>/examples/custom_plugin
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let program = profile_dir.join("examples").join("custom_plugin");
    if !program.exists() {
        let built = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", "custom_plugin"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(built.success(), "the example builds");
    }
    program
}

#[tokio::test(flavor = "multi_thread")]
async fn a_program_registers_its_own_plugin_next_to_the_builtins() {
    let up = TestUpstream::start("up").await;
    let routes = "kind: Route\nid: stamped\nmatch: { paths: [\"/stamped\"] }\nupstream: up\n\
                  plugins:\n  - name: stamp\n    config: { header: X-Stamp, value: blue }\n  - name: ip_restriction\n    config: { deny: [192.0.2.0/24] }\n---\n\
                  kind: Route\nid: unstamped\nmatch: { paths: [\"/bad\"] }\nupstream: up\n\
                  plugins: [{ name: stamp, config: { header: \"bad header\", value: x } }]\n";
    let gw = Gateway::builder()
        .program(custom_plugin_program())
        .file("up.yaml", up.resource("up"))
        .file("routes.yaml", routes)
        .start()
        .await;
    let resp = client().get(gw.url("/stamped")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let echo: common::Echo = resp.json().await.unwrap();
    assert_eq!(
        echo.headers.get("x-stamp").map(String::as_str),
        Some("blue")
    );
    let status = gw.status().await;
    let rejected = status["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{status}");
    assert!(
        rejected[0]["error"]
            .as_str()
            .unwrap()
            .contains("plugins[0].config.header"),
        "{status}"
    );
    // The stock binary does not know the plugin: the same route is refused there.
    let stock = Gateway::builder()
        .file("up.yaml", up.resource("up"))
        .file("routes.yaml", routes)
        .start()
        .await;
    let status = stock.status().await;
    assert_eq!(status["rejected"].as_array().unwrap().len(), 2, "{status}");
}
