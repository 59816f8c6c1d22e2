//! Adaptive protection (SPEC §11) under attack and on a bad day: clients that upload or
//! stream slowly, clients that stop reading, requests that outlive a measurement of the
//! adaptive limit, light traffic that lets the limit grow with nothing to show for it,
//! refusals that pay for retries, a fallback given to a gRPC call, and mirrored copies.
//! Each test states what the contract promises; each was written against a defect an
//! attacker's pass found, and guards its fix.

mod common;

use common::upstream::read_request;
use common::{client, eventually, Gateway, TestUpstream};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn upstream(id: &str, addr: SocketAddr, extra: &str) -> String {
    format!("kind: Upstream\nid: {id}\nnodes: [{{ addr: \"{addr}\" }}]\n{extra}")
}

fn route(id: &str, path: &str, upstream: &str, extra: &str) -> String {
    format!(
        "kind: Route\nid: {id}\nmatch: {{ paths: [\"{path}\"] }}\nupstream: {upstream}\n{extra}"
    )
}

async fn get_status(url: &str) -> u16 {
    client().get(url).send().await.unwrap().status().as_u16()
}

/// The value of `series` on `/metrics`, 0 when absent.
async fn metric(gw: &Gateway, series: &str) -> f64 {
    let text = gw.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn limit_of(gw: &Gateway, upstream: &str) -> f64 {
    metric(
        gw,
        &format!("gatehouse_upstream_concurrency_limit{{upstream=\"{upstream}\"}}"),
    )
    .await
}

/// Reads an HTTP/1.1 status line off `s` (within 10 s); 0 when the connection ends first.
async fn read_status(s: &mut TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !head.ends_with(b"\r\n") {
            match s.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A POST whose `bytes`-byte body the client sends one byte every `gap`, as a client on a
/// slow link (or one that means harm) does; the status the gateway answers.
async fn slow_post(addr: SocketAddr, path: &str, bytes: usize, gap: Duration) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: {bytes}\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(head.as_bytes()).await.is_err() {
        return 0;
    }
    for _ in 0..bytes {
        tokio::time::sleep(gap).await;
        if s.write_all(b"x").await.is_err() {
            break;
        }
    }
    read_status(&mut s).await
}

/// An upstream that answers by path: `/api/big` with a body that never ends, `/api/hold`
/// after 100 s, anything else at once with `ok`.
struct Scripted {
    addr: SocketAddr,
    big: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    async fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let big = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(AtomicUsize::new(0));
        let (b, h) = (big.clone(), held.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (b, h) = (b.clone(), h.clone());
                tokio::spawn(async move {
                    let mut conn = BufReader::new(stream);
                    while let Ok(Some(req)) = read_request(&mut conn).await {
                        let out = conn.get_mut();
                        if req.path.starts_with("/api/big") {
                            b.fetch_add(1, Ordering::SeqCst);
                            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 17179869184\r\n\r\n";
                            if out.write_all(head.as_bytes()).await.is_err() {
                                return;
                            }
                            let chunk = vec![0u8; 64 * 1024];
                            while out.write_all(&chunk).await.is_ok() {}
                            return;
                        }
                        if req.path.starts_with("/api/hold") {
                            h.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_secs(100)).await;
                        }
                        let answer =
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";
                        if out.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Scripted {
            addr,
            big,
            held,
            task,
        }
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Loops of GETs to `url` until `stop`, counting answers by status.
fn load(
    url: String,
    loops: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<[AtomicUsize; 2]>, Vec<tokio::task::JoinHandle<()>>) {
    // [answered 200, answered otherwise]
    let counts: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let tasks = (0..loops)
        .map(|_| {
            let (url, stop, counts) = (url.clone(), stop.clone(), counts.clone());
            tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::SeqCst) {
                    match c.get(&url).send().await {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.bytes().await;
                            counts[0].fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {
                            counts[1].fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    (counts, tasks)
}

/// `slow_call` is about the upstream ("a call whose answer's head took longer than
/// `threshold`"). A client that uploads slowly must not make a fast upstream's calls
/// "slow": the clock starts once the request's body is all sent, so a handful of slow
/// uploads cannot open the circuit for every client of the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_uploading_slowly_does_not_open_the_slow_call_circuit() {
    let up = TestUpstream::start("svc").await;
    let routes = [
        upstream(
            "svc",
            up.addr,
            "circuit_breaker: { error_rate: 0.9, min_requests: 4, window: 10s, open_for: 30s, slow_call: { threshold: 300ms, ratio: 0.5 } }\n",
        ),
        route("api", "/api", "svc", ""),
    ]
    .join("---\n");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let url = gw.url("/api");
    for _ in 0..2 {
        assert_eq!(get_status(&url).await, 200);
    }
    // One client, four uploads of 5 bytes at one byte every 150 ms. The upstream answers
    // each as soon as its body is in.
    let uploads: Vec<_> = (0..4)
        .map(|_| {
            let addr = gw.addr;
            tokio::spawn(
                async move { slow_post(addr, "/api", 5, Duration::from_millis(150)).await },
            )
        })
        .collect();
    for u in uploads {
        assert_eq!(u.await.unwrap(), 200, "the upload is answered");
    }
    // The upstream never took more than a millisecond or two over any request.
    let status = get_status(&url).await;
    assert_eq!(
        status, 200,
        "a quick upstream's circuit was opened by one client's slow uploads ({status})"
    );
}

/// The adaptive limit's samples are "the latencies of successful answers (the time to their
/// head)", meant to show a queue forming at the upstream. A slow upload is not such a
/// sample: a few of them among quick answers must not drive the limit down to `min` while
/// the upstream answers everything in a millisecond.
#[tokio::test(flavor = "multi_thread")]
async fn slow_uploads_do_not_drive_the_adaptive_limit_down() {
    let up = TestUpstream::start("svc").await;
    let routes = [
        upstream(
            "svc",
            up.addr,
            "concurrency: { adaptive: { min: 3, max: 200 } }\n",
        ),
        route("api", "/api", "svc", ""),
    ]
    .join("---\n");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    // A limit grows only with traffic that comes near it: twelve clients take it past 20,
    // then two go on.
    let grow = Arc::new(AtomicBool::new(false));
    let (_, growing) = load(gw.url("/api"), 12, grow.clone());
    eventually(
        Duration::from_secs(15),
        "the adaptive limit to grow past 20",
        || async { limit_of(&gw, "svc").await >= 20.0 },
    )
    .await;
    grow.store(true, Ordering::SeqCst);
    for t in growing {
        t.await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (counts, tasks) = load(gw.url("/api"), 2, stop.clone());
    let before = limit_of(&gw, "svc").await;
    let refused_before = counts[1].load(Ordering::SeqCst);

    // Three connections of one client upload 3 bytes each, a byte every 100 ms, over and
    // over, for 4 s, while the quick traffic goes on: never more than 5 requests in flight.
    let attack_until = Instant::now() + Duration::from_secs(4);
    let attackers: Vec<_> = (0..3u64)
        .map(|i| {
            let addr = gw.addr;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100 * i)).await;
                while Instant::now() < attack_until {
                    slow_post(addr, "/api", 3, Duration::from_millis(100)).await;
                }
            })
        })
        .collect();
    let mut lowest = before;
    while Instant::now() < attack_until {
        lowest = lowest.min(limit_of(&gw, "svc").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for a in attackers {
        a.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let refused = counts[1].load(Ordering::SeqCst) - refused_before;
    let answered = counts[0].load(Ordering::SeqCst);
    // With 5 requests in flight at most, a quick request is refused only by a limit under 5.
    assert_eq!(
        refused, 0,
        "the limit fell from {before} to as low as {lowest} while the upstream answered every \
         request at once; {refused} quick requests were refused ({answered} answered)"
    );
}

/// A request holds its place "from its first attempt to its last byte". A client that
/// reads the head and then stops reading must not hold it for as long as it keeps the socket
/// open: each write to the client is bounded by `timeouts.write`, so `max` such connections
/// cannot shut the upstream to every other client.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_gives_its_place_back() {
    let up = Scripted::start().await;
    let routes = [
        upstream("svc", up.addr, "concurrency: { max: 2 }\n"),
        route(
            "api",
            "/api/**",
            "svc",
            "timeouts: { connect: 1s, read: 1s, write: 1s, idle: 1s }\n",
        ),
    ]
    .join("---\n");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(gw.addr).await.unwrap();
        s.write_all(b"GET /api/big HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_status(&mut s).await, 200, "the download begins");
        held.push(s); // and is never read again
    }
    assert_eq!(up.big.load(Ordering::SeqCst), 2);
    // Well past every timeout of the route.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let resp = client().get(gw.url("/api/small")).send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    assert_eq!(
        status, 200,
        "two sockets that stopped reading 5 s ago still hold both places of the upstream: {body}"
    );
    drop(held);
}

/// Every 30 s (plus jitter) the adaptive limit measures `min_rtt` again, with at most `min`
/// requests of its own. Requests already in flight (WebSocket tunnels, long polls, streams)
/// must not count against those: when `min` of them last long, the measurement still takes
/// new requests, ends, and the upstream is not refused to everyone meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn long_requests_do_not_freeze_the_adaptive_limit_at_its_next_measurement() {
    let up = Scripted::start().await;
    let routes = [
        upstream(
            "svc",
            up.addr,
            "concurrency: { adaptive: { min: 2, max: 100 } }\n",
        ),
        route("api", "/api/**", "svc", "timeouts: { read: 120s }\n"),
    ]
    .join("---\n");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let stop = Arc::new(AtomicBool::new(false));
    // A limit grows only with traffic that comes near it.
    let (_, tasks) = load(gw.url("/api/quick"), 8, stop.clone());
    eventually(
        Duration::from_secs(15),
        "the adaptive limit to grow past 8",
        || async { limit_of(&gw, "svc").await >= 8.0 },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    // Two long requests, well under the limit.
    let mut holds = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /api/hold HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        holds.push(s);
    }
    eventually(
        Duration::from_secs(5),
        "both long requests upstream",
        || async { up.held.load(Ordering::SeqCst) == 2 },
    )
    .await;
    // Quick requests, one at a time, for 45 s: the next measurement falls in them. While it
    // runs, requests past `min` are refused; with a quick upstream it needs well under a
    // second of them. Refusals that go on for 5 s are a limit that no longer measures.
    let url = gw.url("/api/quick");
    let c = client();
    let started = Instant::now();
    let mut refused_since: Option<Instant> = None;
    let (mut ok, mut refused) = (0usize, 0usize);
    while started.elapsed() < Duration::from_secs(45) {
        let status = c.get(&url).send().await.unwrap().status().as_u16();
        if status == 200 {
            ok += 1;
            refused_since = None;
        } else {
            refused += 1;
            let since = *refused_since.get_or_insert_with(Instant::now);
            assert!(
                since.elapsed() < Duration::from_secs(5),
                "after {:?} of quick traffic ({ok} answered), every request has been refused \
                 ({status}) for 5 s: {refused} refusals, the limit at {}",
                started.elapsed(),
                limit_of(&gw, "svc").await
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(holds);
}

/// A limit grows only with traffic that comes near it: one request at a time for a few
/// seconds must not take it from `min` to `max`, or after a quiet spell the limit would
/// hold nothing back and the next burst would reach the upstream whole.
#[tokio::test(flavor = "multi_thread")]
async fn one_request_at_a_time_does_not_run_the_adaptive_limit_up_to_max() {
    let up = TestUpstream::start("svc").await;
    up.set_delay(Duration::from_millis(20));
    let routes = [
        upstream(
            "svc",
            up.addr,
            "concurrency: { adaptive: { min: 5, max: 1000 } }\n",
        ),
        route("api", "/api", "svc", ""),
    ]
    .join("---\n");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let url = gw.url("/api");
    let c = client();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    }
    let limit = limit_of(&gw, "svc").await;
    assert!(
        limit <= 100.0,
        "never more than one request in flight, yet the limit is {limit}: a burst now goes \
         to the upstream whole"
    );
}

/// A unary call of the Python gRPC client with `x-variant: variant`.
fn grpc_call(gw: &Gateway, variant: &str) -> serde_json::Value {
    common::grpc_client::call(gw, &format!("fallback:{variant}"))
}

/// The docs' own fallback example carries `headers: { Content-Type: application/json }`. A
/// gRPC call on such a route must still get one content type, `application/grpc`.
#[tokio::test(flavor = "multi_thread")]
async fn a_fallback_with_a_content_type_still_answers_a_grpc_call_as_grpc() {
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
id: json
match: {{ paths: ["/echo.v1.Echo/{{method}}"] }}
upstream: echo
fallback: {{ on: [upstream_error], status: 200, headers: {{ Content-Type: application/json, x-degraded: "yes" }}, body: '{{"items": []}}' }}
"#,
        addr = gone.addr
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let addr = gw.addr;
    let (answer, gw) = tokio::task::spawn_blocking(move || {
        let answer = grpc_call(&gw, "json");
        (answer, gw)
    })
    .await
    .unwrap();
    // The head as an HTTP/2 client sees it.
    let content_types = grpc_content_types(addr).await;
    drop(gw);
    assert_eq!(
        content_types,
        vec!["application/grpc".to_string()],
        "the fallback's head to a gRPC call (the call itself came back as {answer})"
    );
    assert_eq!(answer["ok"]["fallback"], "upstream_error", "{answer}");
}

/// The `content-type` values of the head answering a unary call to `/echo.v1.Echo/Unary`.
async fn grpc_content_types(addr: SocketAddr) -> Vec<String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/echo.v1.Echo/Unary"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut body) = h2.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .unwrap()
        .unwrap();
    resp.headers()
        .get_all("content-type")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// `concurrency.max` "caps the requests in flight to the upstream (all its nodes)". A
/// mirror's copies to that upstream stay under its cap (and away from its open circuit).
#[tokio::test(flavor = "multi_thread")]
async fn mirrored_copies_stay_under_the_mirror_upstreams_concurrency_limit() {
    let main = TestUpstream::start("main").await;
    let shadow = TestUpstream::start("shadow").await;
    shadow.set_delay(Duration::from_secs(2));
    let routes = [
        upstream("main", main.addr, ""),
        upstream("shadow", shadow.addr, "concurrency: { max: 1 }\n"),
        route(
            "orders",
            "/orders",
            "main",
            "plugins:\n  - name: mirror\n    config: { upstream: shadow }\n",
        ),
    ]
    .join("---\n");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    for _ in 0..5 {
        assert_eq!(get_status(&gw.url("/orders")).await, 200);
    }
    // Every copy arrives within a moment; each takes 2 s to answer.
    eventually(Duration::from_secs(1), "the first copy", || async {
        shadow.hits() >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        shadow.hits() <= 1,
        "{} copies in flight at an upstream capped at 1",
        shadow.hits()
    );
}

/// The retry budget allows retries up to `ratio` of "the requests of the last 10 seconds".
/// Requests the open circuit refused never reached the upstream and must pay for no
/// retries: the moment the circuit closes, failing requests are not all tried again.
#[tokio::test(flavor = "multi_thread")]
async fn requests_refused_by_the_open_circuit_do_not_fund_retries() {
    let (a, b) = (
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
    );
    let routes = [
        format!(
            "kind: Upstream\nid: svc\nnodes: [{{ addr: \"{}\" }}, {{ addr: \"{}\" }}]\n\
             circuit_breaker: {{ error_rate: 0.5, min_requests: 20, window: 10s, open_for: 1s }}\n\
             retry_budget: {{ ratio: 0.2, min_per_second: 0 }}\n",
            a.addr, b.addr
        ),
        route("api", "/api", "svc", "retries: 1\n"),
    ]
    .join("---\n");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let url = gw.url("/api");
    let hits = || a.hits() + b.hits();
    // The upstream fails until its circuit opens.
    a.set_status(502);
    b.set_status(502);
    let mut reached = 0;
    for _ in 0..40 {
        if get_status(&url).await == 503 {
            break;
        }
        reached += 1;
    }
    assert!(reached < 40, "the circuit opened");
    // 200 requests while it is open: none reaches the upstream.
    let before = hits();
    for _ in 0..200 {
        assert_eq!(get_status(&url).await, 503);
    }
    assert_eq!(hits(), before, "the open circuit spares the upstream");
    // It recovers: the probe closes the circuit. Then it fails again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.set_status(200);
    b.set_status(200);
    assert_eq!(get_status(&url).await, 200);
    reached += 1;
    a.set_status(502);
    b.set_status(502);
    let retries_before = hits() - reached;
    let before = hits();
    for _ in 0..9 {
        assert_eq!(get_status(&url).await, 502);
    }
    reached += 9;
    let retries = hits() - reached;
    // Within one 10 s window: at most a fifth of the requests that reached the upstream.
    assert!(
        retries as f64 <= 0.2 * reached as f64,
        "{reached} requests reached the upstream, yet {retries} retries were allowed \
         ({} of them for the last 9 requests, {} attempts in all)",
        retries - retries_before,
        hits() - before
    );
}

/// The same clock with no one meaning harm: a client-streaming gRPC call (`Join`) is
/// answered once the client's stream ends, and is timed from there, so a few of them do not
/// open the circuit of a quick upstream for its unary calls.
#[tokio::test(flavor = "multi_thread")]
async fn client_streaming_grpc_calls_do_not_open_the_slow_call_circuit() {
    let dir = format!("{}/tests/grpc", env!("CARGO_MANIFEST_DIR"));
    let server = common::python::PythonServer::start(&format!("{dir}/server.py"), &[]);
    let routes = format!(
        "kind: Upstream\nid: echo\nscheme: grpc\nnodes: [{{ addr: \"127.0.0.1:{}\" }}]\n\
         circuit_breaker: {{ error_rate: 0.9, min_requests: 4, window: 10s, open_for: 30s, slow_call: {{ threshold: 300ms, ratio: 0.5 }} }}\n\
         ---\nkind: Route\nid: echo\nmatch: {{ paths: [\"/echo.v1.Echo/{{method}}\"] }}\nupstream: echo\n",
        server.port
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let target = format!("127.0.0.1:{}", gw.addr.port());
    let script = format!(
        r#"
import json, sys, time, grpc
sys.path.insert(0, "{dir}")
protos, services = grpc.protos_and_services("echo.proto")
stub = services.EchoStub(grpc.insecure_channel("{target}"))
def outcome(call):
    try:
        return call()
    except grpc.RpcError as e:
        return e.code().name + ": " + e.details()
def stream():
    for t in "abc":
        time.sleep(0.2)
        yield protos.Msg(text=t)
out = {{"unary_before": outcome(lambda: stub.Unary(protos.Msg(text="hi"), timeout=5).text)}}
out["joins"] = [outcome(lambda: stub.Join(stream(), timeout=10).text) for _ in range(4)]
out["unary_after"] = outcome(lambda: stub.Unary(protos.Msg(text="hi"), timeout=5).text)
print(json.dumps(out))
"#
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", &script])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out["unary_before"], "hi|", "{out}");
    assert_eq!(
        (&out["joins"], &out["unary_after"]),
        (
            &serde_json::json!(["a+b+c", "a+b+c", "a+b+c", "a+b+c"]),
            &serde_json::json!("hi|")
        ),
        "client-streaming calls to a quick upstream opened its circuit: {out}"
    );
    drop(gw);
    drop(server);
}
