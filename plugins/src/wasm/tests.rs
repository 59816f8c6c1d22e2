//! The host against the test plugins under `tests/wasm/` (built from their C sources there).

use super::*;
use crate::registry::BuildError;
use crate::{Access, Exchange, Flow};
use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn module(name: &str) -> String {
    format!("{}/../tests/wasm/{name}.wasm", env!("CARGO_MANIFEST_DIR"))
}

/// Built for serving: the plugin is started once, as when its route is compiled.
fn build(config: serde_json::Value) -> Result<Box<dyn Plugin>, ConfigError> {
    Factory.build_with(&config, &crate::registry::NoResources)
}

fn plugin(name: &str, config: serde_json::Value) -> Box<dyn Plugin> {
    let mut settings = json!({ "module": module(name), "timeout": "20ms", "max_memory": "4MiB" });
    if let (Some(s), Some(extra)) = (settings.as_object_mut(), config.as_object()) {
        s.extend(extra.clone());
    }
    build(settings).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn exchange() -> Exchange {
    Exchange::new("r".into(), "req-1".into(), "192.0.2.7".parse().unwrap())
}

fn request(path: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
    for (k, v) in headers {
        req.insert_header(k.to_string(), *v).unwrap();
    }
    req
}

/// The access phase of a plugin that never waits.
fn access_now(p: &dyn Plugin, req: &mut RequestHeader, ex: &mut Exchange) -> Flow {
    match p.access(req, ex) {
        Access::Now(flow) => flow,
        Access::Wait(_) => panic!("the plugin waited"),
    }
}

fn header<'r>(req: &'r RequestHeader, name: &str) -> Option<&'r str> {
    req.headers.get(name).map(|v| v.to_str().unwrap())
}

#[test]
fn a_plugin_sets_the_request_header_its_configuration_names() {
    let p = plugin(
        "add_header",
        json!({ "config": { "header": "X-Wasm", "value": "on" } }),
    );
    for _ in 0..3 {
        let mut ex = exchange();
        let mut req = request("/a", &[("x-wasm", "client")]);
        assert!(matches!(access_now(&*p, &mut req, &mut ex), Flow::Continue));
        assert_eq!(header(&req, "x-wasm"), Some("on"));
        assert_eq!(req.headers.get_all("x-wasm").iter().count(), 1);
        p.log(&mut ex);
        assert!(ex.failed_plugins().is_empty());
    }
}

#[test]
fn a_configuration_the_plugin_refuses_is_refused_at_build_naming_config() {
    let e = build(json!({ "module": module("add_header"), "config": { "value": "x" } }))
        .err()
        .unwrap();
    assert_eq!(e.field, "config");
    assert!(e.message.contains("proxy_on_configure"), "{e}");
}

#[test]
fn modules_that_are_missing_not_wasm_or_not_proxy_wasm_are_refused_naming_module() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.wasm");
    let e = build(json!({ "module": missing })).err().unwrap();
    assert_eq!(e.field, "module");
    assert!(e.message.contains("cannot read"), "{e}");

    let text = dir.path().join("text.wasm");
    std::fs::write(&text, "this is not wasm").unwrap();
    let e = build(json!({ "module": text })).err().unwrap();
    assert_eq!(
        (e.field.as_str(), e.message.contains("not a Wasm module")),
        ("module", true),
        "{e}"
    );

    let bare = dir.path().join("bare.wat");
    std::fs::write(
        &bare,
        r#"(module (memory (export "memory") 1) (func (export "_start")))"#,
    )
    .unwrap();
    let e = build(json!({ "module": bare })).err().unwrap();
    assert!(e.message.contains("proxy_abi_version_0_2_1"), "{e}");

    let e = build(json!({ "module": module("add_header"), "max_memory": "1KiB" }))
        .err()
        .unwrap();
    assert_eq!(e.field, "max_memory");
    let e = build(json!({ "module": module("add_header"), "timeot": "1s" }))
        .err()
        .unwrap();
    assert!(e.message.contains("timeot"), "{e}");
    match crate::registry::Registry::builtin().build("wasm", &json!({})) {
        Err(BuildError::Config(e)) => assert!(e.message.contains("module"), "{e}"),
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn a_header_rule_answers_locally_with_the_plugins_status_headers_and_body() {
    let p = plugin("deny", json!({ "config": { "header": "x-block" } }));
    let mut ex = exchange();
    let mut req = request("/a", &[("x-block", "yes")]);
    match access_now(&*p, &mut req, &mut ex) {
        Flow::Answer(local) => {
            assert_eq!(local.status, 403);
            assert_eq!(&local.body[..], b"blocked by wasm\n");
            assert!(local
                .headers
                .iter()
                .any(|(k, v)| k == "x-blocked-by" && v == "wasm"));
        }
        _ => panic!("not answered"),
    }
    p.log(&mut ex);
    let mut ex = exchange();
    let mut req = request("/a", &[]);
    assert!(matches!(access_now(&*p, &mut req, &mut ex), Flow::Continue));
}

#[test]
fn a_callback_that_never_returns_is_cut_by_its_timeout_and_the_next_request_is_served() {
    let p = plugin("spin", json!({}));
    let mut ex = exchange();
    let mut req = request("/a", &[("x-spin", "1")]);
    let started = std::time::Instant::now();
    match access_now(&*p, &mut req, &mut ex) {
        Flow::Respond(answer) => {
            assert_eq!(answer.status, 500);
            assert_eq!(answer.code, "plugin_error");
            assert!(answer.message.contains("timeout"), "{}", answer.message);
        }
        _ => panic!("not refused"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ex.failed_plugins(), [Arc::<str>::from("spin")]);
    p.log(&mut ex);

    // A fresh instance serves the next request.
    let mut ex = exchange();
    let mut req = request("/a", &[]);
    assert!(matches!(access_now(&*p, &mut req, &mut ex), Flow::Continue));
    assert_eq!(header(&req, "x-spin-checked"), Some("1"));
}

#[test]
fn fail_open_lets_the_request_pass_a_failing_plugin_but_still_counts_it() {
    let p = plugin("spin", json!({ "fail_open": true, "name": "spinner" }));
    let mut ex = exchange();
    let mut req = request("/a", &[("x-spin", "1")]);
    assert!(matches!(access_now(&*p, &mut req, &mut ex), Flow::Continue));
    assert_eq!(ex.failed_plugins(), [Arc::<str>::from("spinner")]);
}

#[test]
fn memory_past_max_memory_ends_the_request_with_plugin_error() {
    let p = plugin("hog", json!({}));
    let mut ex = exchange();
    let mut req = request("/a", &[("x-hog", "1")]);
    match access_now(&*p, &mut req, &mut ex) {
        Flow::Respond(answer) => {
            assert_eq!(answer.status, 500);
            assert!(answer.message.contains("max_memory"), "{}", answer.message);
        }
        _ => panic!("not refused"),
    }
    let mut ex = exchange();
    let mut req = request("/a", &[]);
    assert!(matches!(access_now(&*p, &mut req, &mut ex), Flow::Continue));
}

#[test]
fn a_buffered_response_body_is_rewritten_and_sent_chunked() {
    let p = plugin(
        "body_rewrite",
        json!({ "config": { "from": "hello", "to": "HOWDY" } }),
    );
    let mut ex = exchange();
    let mut req = request("/a", &[]);
    assert!(matches!(access_now(&*p, &mut req, &mut ex), Flow::Continue));
    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.insert_header("content-length", "17").unwrap();
    p.response(&mut resp, &mut ex);
    assert!(resp.headers.get("content-length").is_none());
    assert_eq!(resp.headers.get("transfer-encoding").unwrap(), "chunked");

    let mut piece = Some(Bytes::from_static(b"say hel"));
    p.response_body(&mut piece, false, &mut ex).unwrap();
    assert!(piece.is_none(), "held while the plugin buffers");
    let mut piece = Some(Bytes::from_static(b"lo, hello!"));
    p.response_body(&mut piece, true, &mut ex).unwrap();
    assert_eq!(piece.as_deref(), Some(&b"say HOWDY, HOWDY!"[..]));
    p.log(&mut ex);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn ticks_shared_data_and_properties_reach_the_plugin() {
    let p = plugin("ticker", json!({ "name": "clock" }));
    let mut ex = exchange();
    let mut req = request("/tick?x=1", &[]);
    assert!(matches!(access_now(&*p, &mut req, &mut ex), Flow::Continue));
    assert_eq!(header(&req, "x-path"), Some("/tick?x=1"));
    assert_eq!(header(&req, "x-method"), Some("GET"));
    assert_eq!(header(&req, "x-source"), Some("192.0.2.7"));
    assert_eq!(header(&req, "x-plugin-name"), Some("clock"));
    p.log(&mut ex);

    // The instance ticks every 10 ms and counts in shared data.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut ex = exchange();
        let mut req = request("/tick", &[]);
        access_now(&*p, &mut req, &mut ex);
        p.log(&mut ex);
        let ticks: u64 = header(&req, "x-ticks").unwrap().parse().unwrap();
        if ticks >= 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ticks stayed at {ticks}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A one-shot HTTP server that answers `status` with `body` to every request, and counts them.
async fn checker(status: u16, body: &'static str) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    (addr, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_for_the_plugins_http_call_and_goes_on_with_its_answer() {
    let (ok, calls) = checker(200, "alice\n").await;
    let p = plugin(
        "http_call",
        json!({ "config": { "upstream": ok.to_string(), "path": "/check" } }),
    );
    let mut ex = exchange();
    let mut req = request("/a", &[("authorization", "Bearer t")]);
    let flow = match p.access(&mut req, &mut ex) {
        Access::Wait(pending) => pending.await,
        Access::Now(_) => panic!("did not wait for the call"),
    };
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(header(&req, "x-checked"), Some("alice"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    p.log(&mut ex);

    let (no, _) = checker(401, "no").await;
    let p = plugin(
        "http_call",
        json!({ "config": { "upstream": no.to_string() } }),
    );
    let mut ex = exchange();
    let mut req = request("/a", &[]);
    let flow = match p.access(&mut req, &mut ex) {
        Access::Wait(pending) => pending.await,
        Access::Now(_) => panic!("did not wait for the call"),
    };
    match flow {
        Flow::Answer(local) => assert_eq!(local.status, 403),
        _ => panic!("not denied"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_by_url_is_fetched_once_and_refused_on_a_digest_mismatch() {
    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A module no other test loads, so the first build must fetch it.
    let bytes: &'static [u8] = br#"(module (memory (export "memory") 1)
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "malloc") (param i32) (result i32) i32.const 1024)
        (func (export "proxy_on_context_create") (param i32 i32))
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) i32.const 0)
        (global $fetched i32 (i32.const 7)))"#;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = fetches.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                bytes.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(bytes).await;
        }
    });
    let url = format!("http://{addr}/plugin.wat");
    let good = hex::encode(Sha256::digest(bytes));
    let bad = hex::encode(Sha256::digest(b"something else"));
    let config = move |sha: &str| json!({ "module": { "url": url.clone(), "sha256": sha } });

    let c = config.clone();
    let e = tokio::task::spawn_blocking(move || build(c(&bad)).err().unwrap())
        .await
        .unwrap();
    assert_eq!(e.field, "module.sha256", "{e}");
    let c = config.clone();
    let e = tokio::task::spawn_blocking(move || build(c("zz")).err().unwrap())
        .await
        .unwrap();
    assert_eq!(e.field, "module.sha256", "{e}");
    for _ in 0..3 {
        let c = config.clone();
        let g = good.clone();
        tokio::task::spawn_blocking(move || build(c(&g)).unwrap())
            .await
            .unwrap();
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "one refused fetch, then one kept"
    );
}
