//! Attacks on the proxy-wasm host, through the real binary, with the plugins under
//! `tests/wasm/attack/` (build them with `tests/wasm/attack/build.sh`).
//!
//! Each test is an attack and asserts that the host holds, and behaves as Envoy's does. The harness
//! runs the gateway with two worker threads (so two instance slots per plugin) and
//! connections land on either: the tests that need a victim and an attacker on the same
//! instance use several of each, each on its own connection.

mod common;

use common::{client, Gateway, TestUpstream};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn module(name: &str) -> String {
    format!(
        "{}/tests/wasm/attack/{name}.wasm",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn route(id: &str, plugin: &str, settings: &str) -> String {
    format!(
        "kind: Route\nid: {id}\nmatch: {{ paths: [\"/{id}/**\"] }}\nupstream: up\nplugins:\n  - name: wasm\n    config: {{ module: \"{}\"{settings} }}\n",
        module(plugin)
    )
}

async fn gateway(up: &TestUpstream, routes: &[String]) -> Gateway {
    Gateway::builder()
        .file("up.yaml", up.resource("up"))
        .file("routes.yaml", routes.join("---\n"))
        .start()
        .await
}

/// An auth service: 200 to `authorization: good` after `good_ms`, 403 to anything else
/// after `bad_ms`. Counts requests and the body bytes they carried.
struct Checker {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
    good_ms: Arc<AtomicU64>,
    bad_ms: Arc<AtomicU64>,
}

impl Checker {
    async fn start() -> Checker {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let c = Checker {
            addr,
            hits: Default::default(),
            bytes: Default::default(),
            good_ms: Default::default(),
            bad_ms: Default::default(),
        };
        let (hits, bytes, good, bad) = (
            c.hits.clone(),
            c.bytes.clone(),
            c.good_ms.clone(),
            c.bad_ms.clone(),
        );
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (hits, bytes, good, bad) =
                    (hits.clone(), bytes.clone(), good.clone(), bad.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut piece = vec![0u8; 65536];
                    let head_end = loop {
                        let Ok(n) = s.read(&mut piece).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&piece[..n]);
                        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap_or(0));
                    while buf.len() < head_end + length {
                        let Ok(n) = s.read(&mut piece).await else {
                            return;
                        };
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&piece[..n]);
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    bytes.fetch_add(buf.len() - head_end, Ordering::SeqCst);
                    let ok = head.contains("authorization: good");
                    let wait = if ok { &good } else { &bad }.load(Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    let answer = if ok {
                        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n"
                    } else {
                        "HTTP/1.1 403 No\r\ncontent-length: 3\r\nconnection: close\r\n\r\nno\n"
                    };
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        c
    }
}

/// The gateway's resident memory now and at its peak, in MiB.
fn rss_mib(gw: &Gateway) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| {
                v.trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap()
                    / 1024
            })
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A GET the test waits for in the background.
fn spawn_get(
    url: String,
    headers: &[(&'static str, &'static str)],
) -> tokio::task::JoinHandle<reqwest::Response> {
    let mut req = client().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    tokio::spawn(async move { req.send().await.unwrap() })
}

/// The attacker: an authenticated client posting a body over the plugin's `max_memory`,
/// which the host turns into a fault that drops the worker's instance.
async fn oversized_body(gw: &Gateway, path: &str) -> u16 {
    client()
        .post(gw.url(path))
        .header("authorization", "good")
        .body(vec![b'a'; 600 << 10])
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

fn guard_route(checker: &Checker) -> String {
    route(
        "guard",
        "guard",
        &format!(
            ", timeout: 50ms, max_memory: 512KiB, config: {{ upstream: \"{}\" }}",
            checker.addr
        ),
    )
}

/// A request paused on its auth call is never let through when another request's fault
/// drops the instance meanwhile: it fails with the instance (`fail_open` is false).
#[tokio::test(flavor = "multi_thread")]
async fn a_request_waiting_on_its_auth_call_is_not_let_through_by_a_neighbours_fault() {
    let up = TestUpstream::start("up").await;
    let checker = Checker::start().await;
    let gw = gateway(&up, &[guard_route(&checker)]).await;
    checker.bad_ms.store(1500, Ordering::SeqCst);

    // Control: without credentials the checker says no, and the request is refused.
    let alone = client().get(gw.url("/guard/x")).send().await.unwrap();
    assert_eq!(alone.status(), 403, "control");

    let mut found = Vec::new();
    for trigger in ["trap"] {
        // The attacker's own request waits upstream while the rest of its body is read.
        up.set_delay(Duration::from_millis(1000));
        let victims: Vec<_> = (0..4).map(|_| spawn_get(gw.url("/guard/x"), &[])).collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut attackers = Vec::new();
        for _ in 0..8 {
            attackers.push(match trigger {
                "trap" => client()
                    .get(gw.url("/guard/x"))
                    .header("x-boom", "1")
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16()),
                _ => oversized_body(&gw, "/guard/x").await,
            });
        }
        let mut through = Vec::new();
        for victim in victims {
            let victim = victim.await.unwrap();
            // Refused by the checker (403) or failed with the instance (500): either way,
            // never proxied.
            if victim.headers().contains_key("x-upstream") {
                through.push((victim.status(), victim.headers().get("x-upstream").cloned()));
            }
        }
        up.set_delay(Duration::ZERO);
        if !through.is_empty() {
            found.push(format!(
                "{trigger} (attackers got {attackers:?}): requests without credentials reached the upstream: {through:?}"
            ));
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

/// The response phase of an in-flight request is not skipped when a neighbour's fault
/// dropped the instance: with `fail_open` false the request fails, as Envoy fails such a
/// stream, and headers the plugin must strip never reach the client.
#[tokio::test(flavor = "multi_thread")]
async fn a_neighbours_fault_does_not_skip_the_response_filter() {
    let up = TestUpstream::start("up").await;
    let checker = Checker::start().await;
    let gw = gateway(&up, &[guard_route(&checker)]).await;
    let good = [("authorization", "good")];

    let alone = client()
        .get(gw.url("/guard/x"))
        .header("authorization", "good")
        .send()
        .await
        .unwrap();
    assert_eq!(alone.status(), 200, "control");
    assert!(alone.headers().get("x-upstream").is_none(), "control");
    assert_eq!(alone.headers()["x-guarded"], "1", "control");

    let mut found = Vec::new();
    // A trap in the request's own response phase, fail_open false: the response goes out.
    let own = client()
        .get(gw.url("/guard/boom-resp"))
        .header("authorization", "good")
        .send()
        .await
        .unwrap();
    if own.status() == 200 {
        found.push(format!(
            "own trap in on_response_headers (fail_open false): 200, x-upstream={:?}",
            own.headers().get("x-upstream")
        ));
    }
    for trigger in ["trap"] {
        up.set_delay(Duration::from_millis(1200));
        let victims: Vec<_> = (0..4)
            .map(|_| spawn_get(gw.url("/guard/x"), &good))
            .collect();
        tokio::time::sleep(Duration::from_millis(400)).await;
        for _ in 0..8 {
            let attacker = match trigger {
                "trap" => client()
                    .get(gw.url("/guard/x"))
                    .header("x-boom", "1")
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16(),
                _ => oversized_body(&gw, "/guard/x").await,
            };
            let _ = attacker;
        }
        up.set_delay(Duration::ZERO);
        let mut unfiltered = Vec::new();
        for victim in victims {
            let victim = victim.await.unwrap();
            let leaked = victim.headers().get("x-upstream").cloned();
            let guarded = victim.headers().get("x-guarded").cloned();
            if victim.status() == 200 && (leaked.is_some() || guarded.is_none()) {
                unfiltered.push((leaked, guarded));
            }
        }
        if !unfiltered.is_empty() {
            found.push(format!(
                "{trigger}: responses went out unfiltered (x-upstream, x-guarded): {unfiltered:?}"
            ));
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

/// With `fail_open: true`, a fault in a body callback lets the client's body through
/// whole: what was held back, then the rest.
#[tokio::test(flavor = "multi_thread")]
async fn fail_open_forwards_the_clients_body_not_a_truncated_one() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(
        &up,
        &[route(
            "trap",
            "bodytrap",
            ", timeout: 50ms, max_memory: 256KiB, fail_open: true",
        )],
    )
    .await;
    let c = client();
    let echo: serde_json::Value = c
        .post(gw.url("/trap/x"))
        .body("hello world")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["body"], "hello world", "control");

    let resp = c
        .post(gw.url("/trap/x"))
        .body("hello boom world")
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        echo["body"], "hello boom world",
        "fail_open (status {status}) sent the upstream a different body"
    );
}

/// The same, reached by the client alone: a body held back past `max_memory` fails the
/// request (not the instance); with `fail_open` the whole body goes upstream.
#[tokio::test(flavor = "multi_thread")]
async fn fail_open_with_an_oversized_body_does_not_forward_only_its_tail() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(
        &up,
        &[route(
            "trap",
            "bodytrap",
            ", timeout: 50ms, max_memory: 256KiB, fail_open: true",
        )],
    )
    .await;
    // The upstream is slow, so the gateway goes on reading the body while it waits.
    up.set_delay(Duration::from_millis(1500));
    // The head and the first 300 KiB, then, once those are held, the rest.
    let addr = gw
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let tail = b"TAIL-NEVER-INSPECTED";
    let total = (300 << 10) + tail.len();
    let head = format!(
        "POST /trap/x HTTP/1.1\r\nhost: x\r\ncontent-length: {total}\r\nconnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = s.write_all(&vec![b'a'; 300 << 10]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = s.write_all(tail).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    let status_line = answer.lines().next().unwrap_or("").to_string();
    let body_at = answer.find("\r\n\r\n").map_or(0, |i| i + 4);
    let echo: serde_json::Value =
        serde_json::from_str(answer[body_at..].trim()).unwrap_or(serde_json::Value::Null);
    let got = echo["body"].as_str().map_or(0, str::len);
    assert!(
        !status_line.contains(" 200 ") || got == total,
        "{status_line}: the upstream got {got} of {total} body bytes (ends with {:?})",
        echo["body"]
            .as_str()
            .map(|b| &b[b.len().saturating_sub(24)..])
    );
}

/// `proxy_send_local_response` from `proxy_on_response_headers` replaces the upstream's
/// answer; from `proxy_on_response_body`, once the head is gone, it cuts the response, as
/// Envoy resets the stream: the upstream's body never reaches the client whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_reply_from_the_response_phases_stops_the_upstreams_answer() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(
        &up,
        &[route("dlp", "dlp", ", timeout: 50ms, max_memory: 4MiB")],
    )
    .await;
    let c = client();
    let control = c.get(gw.url("/dlp/x")).send().await.unwrap();
    assert_eq!(control.status(), 200, "control");

    let by_headers = c.get(gw.url("/dlp/hdr")).send().await.unwrap();
    let s1 = by_headers.status();
    let by_body = c
        .get(gw.url("/dlp/x"))
        .header("x-data", "top secret")
        .send()
        .await
        .unwrap();
    let s2 = by_body.status();
    let body = by_body.text().await.unwrap();
    assert!(
        s1 == 403 && !body.contains("secret"),
        "headers-phase reply ignored: {s1}; body-phase reply ignored: {s2}, the client got {body}"
    );
}

/// The usual body-rewrite pattern (remove content-length in the request headers,
/// rewrite the buffered body) sends the upstream the rewritten body, chunked.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_body_rewritten_after_content_length_was_removed_reaches_the_upstream() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(
        &up,
        &[route("rb", "reqbody", ", timeout: 50ms, max_memory: 4MiB")],
    )
    .await;
    let resp = client()
        .post(gw.url("/rb/x"))
        .body("hello world")
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        echo["body"], "HELLO WORLD",
        "status {status}, upstream saw {echo}"
    );
}

/// WASI `random_get` and `fd_write` check the plugin's pointers before working on its
/// behalf, and bound what they do: no callback blocks the worker past `timeout` or grows
/// the gateway by more than the plugin's memory.
#[tokio::test(flavor = "multi_thread")]
async fn host_functions_stay_within_the_plugins_timeout_and_memory() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(
        &up,
        &[
            route("stall", "stall", ", timeout: 20ms, max_memory: 4MiB"),
            "kind: Route\nid: plain\nmatch: { paths: [\"/plain/**\"] }\nupstream: up\n".to_string(),
        ],
    )
    .await;
    let c = client();
    assert_eq!(
        c.get(gw.url("/stall/x")).send().await.unwrap().status(),
        200
    );

    let (_, before) = rss_mib(&gw);
    // fd_write of 64 iovecs naming all 4 MiB of memory: 256 MiB on the host.
    let fd = c
        .get(gw.url("/stall/x"))
        .header("x-fdwrite", "64")
        .send()
        .await
        .unwrap()
        .status();
    let (_, after_fd) = rss_mib(&gw);

    // random_get of 512 MiB: the worker is stuck while a plain request waits behind it.
    let started = Instant::now();
    let attack = spawn_get(gw.url("/stall/x"), &[("x-rand", "512")]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let plain_started = Instant::now();
    let plains: Vec<_> = (0..6).map(|_| spawn_get(gw.url("/plain/x"), &[])).collect();
    let mut plain_took = Duration::ZERO;
    let mut plain = 0;
    for p in plains {
        let p = p.await.unwrap();
        plain = p.status().as_u16();
        plain_took = plain_took.max(plain_started.elapsed());
    }
    let attack = attack.await.unwrap().status();
    let took = started.elapsed();
    let (_, after_rand) = rss_mib(&gw);

    let report = format!(
        "random_get(512MiB): {attack} after {took:?}, a plain request took {plain_took:?} ({plain}); \
         peak RSS -> {after_rand} MiB; fd_write(64 x 4MiB): {fd}, peak RSS {before} -> {after_fd} MiB \
         (max_memory 4MiB, timeout 20ms)"
    );
    eprintln!("{report}");
    assert!(took < Duration::from_millis(500), "{report}");
    assert!(plain_took < Duration::from_millis(500), "{report}");
    assert!(after_fd < before + 64, "{report}");
}

/// A plugin may dispatch at most 8 HTTP calls from one callback and 16 for one request,
/// each body at most 1 MiB, so what a request can make the host hold and send is bounded.
#[tokio::test(flavor = "multi_thread")]
async fn http_calls_per_request_are_bounded() {
    let up = TestUpstream::start("up").await;
    let checker = Checker::start().await;
    let gw = gateway(
        &up,
        &[route(
            "flood",
            "flood",
            &format!(
                ", timeout: 1s, max_memory: 4MiB, config: {{ upstream: \"{}\" }}",
                checker.addr
            ),
        )],
    )
    .await;
    let c = client();

    let (_, before) = rss_mib(&gw);
    let started = Instant::now();
    let resp = c
        .get(gw.url("/flood/x"))
        .header("x-calls", "30")
        .header("x-body-kib", "1024")
        .send()
        .await
        .unwrap()
        .status();
    let (_, after) = rss_mib(&gw);
    let hits = checker.hits.load(Ordering::SeqCst);
    let mib = checker.bytes.load(Ordering::SeqCst) >> 20;
    let flood = format!(
        "one request ({resp}, {:?}) made {hits} calls carrying {mib} MiB; gateway peak RSS {before} -> {after} MiB (max_memory 4MiB)",
        started.elapsed()
    );
    eprintln!("{flood}");
    for line in gw.logs().lines().filter(|l| l.contains("flood")) {
        eprintln!("log: {}", &line[..line.len().min(300)]);
    }

    // The client gives up after 300 ms; its 10 calls of 200 ms each go on without it.
    checker.hits.store(0, Ordering::SeqCst);
    checker.bad_ms.store(200, Ordering::SeqCst);
    let gone = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .get(gw.url("/flood/x"))
        .header("x-calls", "10")
        .send()
        .await;
    assert!(gone.is_err(), "the client should have timed out");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let after_gone = checker.hits.load(Ordering::SeqCst);
    let deleted: serde_json::Value = c
        .get(gw.url("/flood/x"))
        .header("x-deleted", "?")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let report = format!(
        "{flood}; after the client left at 300 ms the checker still got {after_gone} of 10 calls; contexts deleted: {}",
        deleted["headers"]["x-deleted"]
    );
    eprintln!("{report}");
    // One callback dispatches at most 8 calls, each body at most 1 MiB.
    assert!(hits <= 8, "{report}");
    assert!(mib <= 8, "{report}");
    // Calls already dispatched are still made when the client leaves (they are not
    // cancelled), within the same bounds.
    assert!(after_gone <= 8, "{report}");
}

/// Calls dispatched from a callback that returns Continue are made, as Envoy makes them.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_dispatched_without_pausing_is_made() {
    let up = TestUpstream::start("up").await;
    let checker = Checker::start().await;
    let gw = gateway(
        &up,
        &[route(
            "flood",
            "flood",
            &format!(
                ", timeout: 50ms, max_memory: 4MiB, config: {{ upstream: \"{}\" }}",
                checker.addr
            ),
        )],
    )
    .await;
    let resp = client()
        .get(gw.url("/flood/x"))
        .header("x-calls", "1")
        .header("x-fire", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        checker.hits.load(Ordering::SeqCst),
        1,
        "the call was never made"
    );
}

/// A CAS set of a missing key sets it, as Envoy does; setting back the pairs just read
/// changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn shared_data_cas_and_header_pairs_round_trip_as_in_envoy() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(
        &up,
        &[route("misc", "misc", ", timeout: 50ms, max_memory: 4MiB")],
    )
    .await;
    let c = client();
    let echo: serde_json::Value = c
        .get(gw.url("/misc/x"))
        .header("x-cas", "a")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let h = &echo["headers"];
    let cas = format!(
        "set(cas 7) on a missing key -> {}, then get -> {} with {} bytes",
        h["x-set-status"], h["x-get-status"], h["x-get-len"]
    );
    let echo: serde_json::Value = c
        .post(gw.url("/misc/x"))
        .header("x-roundtrip", "1")
        .header("x-keep", "me")
        .body("payload")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let h = &echo["headers"];
    let roundtrip = format!(
        "set_header_map_pairs(get_header_map_pairs()) -> {}; upstream saw x-keep={} content-length={} body={}",
        h["x-roundtrip-status"], h["x-keep"], h["content-length"], echo["body"]
    );
    let pause = c
        .get(gw.url("/misc/x"))
        .header("x-pause", "1")
        .send()
        .await
        .unwrap()
        .status();
    let report = format!("{cas}; {roundtrip}; Pause with nothing to wait for -> {pause}");
    eprintln!("{report}");
    assert!(h["x-keep"] == "me" && echo["body"] == "payload", "{report}");
    assert!(
        cas.contains("-> \"0\", then get -> \"0\" with \"1\""),
        "{report}"
    );
}

/// The tick task of a plugin ends once a reload drops the plugin.
#[tokio::test(flavor = "multi_thread")]
async fn ticks_stop_when_a_reload_drops_the_plugin() {
    let up = TestUpstream::start("up").await;
    let ticker = format!(
        "kind: Route\nid: t\nmatch: {{ paths: [\"/t/**\"] }}\nupstream: up\nplugins:\n  - name: wasm\n    config: {{ module: \"{}/tests/wasm/ticker.wasm\", timeout: 20ms }}\n",
        env!("CARGO_MANIFEST_DIR")
    );
    let gw = gateway(&up, &[ticker]).await;
    assert_eq!(
        client().get(gw.url("/t/x")).send().await.unwrap().status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ticks = |logs: &str| logs.lines().filter(|l| l.contains("tick")).count();
    let running = ticks(&gw.logs());
    assert!(running > 5, "no ticks in the log:\n{}", gw.logs());
    let revision = gw.status().await["revision"].as_u64().unwrap();
    gw.write_file(
        "routes.yaml",
        "kind: Route\nid: plain\nmatch: { paths: [\"/plain/**\"] }\nupstream: up\n",
    );
    gw.wait_revision_after(revision).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let at_reload = ticks(&gw.logs());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = ticks(&gw.logs());
    assert!(
        later <= at_reload + 1,
        "ticks went on after the reload: {at_reload} -> {later}"
    );
}

/// A request body the plugin holds (Pause) reaches the upstream whole, and only after the
/// plugin's verdict at its end (`None` would end the body for Pingora: a held piece is an
/// empty one).
#[tokio::test(flavor = "multi_thread")]
async fn a_buffered_request_body_reaches_the_upstream_whole_and_only_after_the_verdict() {
    let up = TestUpstream::start("up").await;
    let gw = gateway(
        &up,
        &[route(
            "trap",
            "bodytrap",
            ", timeout: 50ms, max_memory: 4MiB",
        )],
    )
    .await;
    let addr = gw
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let send = |pieces: [&'static str; 2]| {
        let addr = addr.clone();
        async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let head = format!(
                "POST /trap/x HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                pieces[0].len() + pieces[1].len(),
                pieces[0]
            );
            s.write_all(head.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = s.write_all(pieces[1].as_bytes()).await;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
            String::from_utf8_lossy(&answer).into_owned()
        }
    };
    let whole = send(["hello ", "world"]).await;
    let hits = up.hits();
    let verdict = send(["hello ", "boom"]).await;
    let report = format!(
        "two pieces: {:?}\n'boom' in the second piece (the plugin traps, not fail_open): {:?}, upstream hits {} -> {}",
        whole.lines().last(),
        verdict.lines().next(),
        hits,
        up.hits()
    );
    eprintln!("{report}");
    assert!(whole.contains("\"body\":\"hello world\""), "{report}");
    assert!(
        verdict.starts_with("HTTP/1.1 500") && up.hits() == hits,
        "{report}"
    );
}

/// A response held past `max_memory` by a buffering plugin fails that request alone: the
/// instance stays, and so does the response filtering of every other request in flight on
/// it. Here the plugin is a global rule (one instance set for every route): a large answer
/// on one route never strips the filter from responses on another.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_response_on_one_route_does_not_unfilter_responses_on_another() {
    let slow = TestUpstream::start("slow").await;
    let fast = TestUpstream::start("fast").await;
    let global = format!(
        "kind: GlobalRule\nid: g\nplugins:\n  - name: wasm\n    config: {{ module: \"{}\", timeout: 50ms, max_memory: 1MiB }}\n",
        module("stamp")
    );
    let routes = [
        slow.resource("slow"),
        fast.resource("fast"),
        "kind: Route\nid: s\nmatch: { paths: [\"/slow/**\"] }\nupstream: slow\n".to_string(),
        "kind: Route\nid: f\nmatch: { paths: [\"/fast/**\"] }\nupstream: fast\n".to_string(),
        global,
    ];
    let gw = Gateway::builder()
        .file("routes.yaml", routes.join("---\n"))
        .start()
        .await;
    let control = client().get(gw.url("/slow/x")).send().await.unwrap();
    assert!(control.headers().get("x-upstream").is_none(), "control");
    assert_eq!(control.headers()["x-guarded"], "1", "control");

    slow.set_delay(Duration::from_millis(1500));
    let victims: Vec<_> = (0..4).map(|_| spawn_get(gw.url("/slow/x"), &[])).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut attackers = Vec::new();
    for _ in 0..6 {
        // The echo of a 2 MiB body is a 2 MiB response: more than the plugin may hold.
        let r = client()
            .post(gw.url("/fast/x"))
            .body(vec![b'a'; 2 << 20])
            .send()
            .await;
        attackers.push(match r {
            Ok(r) => format!("{} {:?}", r.status(), r.bytes().await.map(|b| b.len())),
            Err(e) => format!("{e}"),
        });
    }
    let mut unfiltered = Vec::new();
    for victim in victims {
        let victim = victim.await.unwrap();
        let leaked = victim.headers().get("x-upstream").cloned();
        let guarded = victim.headers().get("x-guarded").cloned();
        if leaked.is_some() || guarded.is_none() {
            unfiltered.push((victim.status().as_u16(), leaked, guarded));
        }
    }
    let errors = gw.metrics_text().await;
    let errors: Vec<&str> = errors
        .lines()
        .filter(|l| l.starts_with("gatehouse_plugin_errors_total"))
        .collect();
    assert!(
        unfiltered.is_empty(),
        "attackers: {attackers:?}; {errors:?}; victims unfiltered (status, x-upstream, x-guarded): {unfiltered:?}"
    );
}
