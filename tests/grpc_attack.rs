//! Attack tests of the gRPC support: grpc-timeout extremes, malformed frames, huge
//! metadata, client resets and upstream cuts mid-call, trailers-only refusals over
//! HTTP/1.1, gRPC to non-gRPC upstreams and back, gRPC health checks against nodes that do
//! not speak gRPC, and gateway answers that end in their HEADERS frame over HTTP/2.
//!
//! Clients: the `h2` crate (raw frames, resets), reqwest, raw TCP. Upstreams: the grpcio
//! server in tests/grpc/attack/server.py (it notices cancellations), a raw `h2` server, the
//! HTTP/1 test upstream, raw TCP.

mod common;

use bytes::Bytes;
use common::{eventually, Gateway, TestUpstream};
use http::HeaderMap;
use prost::Message;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, PartialEq, Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(int32, tag = "2")]
    n: i32,
}

fn frame(text: &str, n: i32) -> Bytes {
    let m = Msg {
        text: text.into(),
        n,
    }
    .encode_to_vec();
    let mut b = vec![0u8];
    b.extend_from_slice(&(m.len() as u32).to_be_bytes());
    b.extend_from_slice(&m);
    Bytes::from(b)
}

/// The messages in a gRPC body.
fn messages(body: &[u8]) -> Vec<Msg> {
    let mut out = Vec::new();
    let mut rest = body;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if rest.len() < 5 + len {
            break;
        }
        out.push(Msg::decode(&rest[5..5 + len]).unwrap_or_default());
        rest = &rest[5 + len..];
    }
    out
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new("python3")
            .arg(format!(
                "{}/tests/grpc/attack/server.py",
                env!("CARGO_MANIFEST_DIR")
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the gRPC server did not start: {line:?}"));
        Server { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a call through the gateway came back with.
#[derive(Debug, Default)]
struct Out {
    status: u16,
    headers: HeaderMap,
    end_in_headers: bool,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
    err: Option<String>,
}

impl Out {
    fn grpc_status(&self) -> Option<String> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
            .map(|v| v.to_str().unwrap().to_string())
    }
}

type H2 = h2::client::SendRequest<Bytes>;

async fn h2(addr: SocketAddr) -> H2 {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .max_header_list_size(16 << 20)
        .handshake(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client.ready().await.unwrap()
}

fn grpc_req(addr: SocketAddr, path: &str, extra: &[(&str, String)]) -> http::Request<()> {
    let mut b = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in extra {
        b = b.header(*k, v.as_str());
    }
    b.body(()).unwrap()
}

/// One whole call: request with `body`, the response read to its end.
async fn call(
    client: &mut H2,
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, String)],
    body: Bytes,
) -> Out {
    let mut out = Out::default();
    let mut c = match client.clone().ready().await {
        Ok(c) => c,
        Err(e) => {
            out.err = Some(format!("ready: {e}"));
            return out;
        }
    };
    let (resp, mut send) = match c.send_request(grpc_req(addr, path, extra), false) {
        Ok(x) => x,
        Err(e) => {
            out.err = Some(format!("send: {e}"));
            return out;
        }
    };
    let _ = send.send_data(body, true);
    read_all(resp, &mut out).await;
    out
}

async fn read_all(resp: h2::client::ResponseFuture, out: &mut Out) {
    let resp = match tokio::time::timeout(Duration::from_secs(10), resp).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            out.err = Some(format!("response: {e}"));
            return;
        }
        Err(_) => {
            out.err = Some("no response in 10s".into());
            return;
        }
    };
    out.status = resp.status().as_u16();
    out.headers = resp.headers().clone();
    let mut body = resp.into_body();
    out.end_in_headers = body.is_end_stream();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), body.data()).await {
            Ok(Some(Ok(d))) => {
                let _ = body.flow_control().release_capacity(d.len());
                out.body.extend_from_slice(&d);
            }
            Ok(Some(Err(e))) => {
                out.err = Some(format!("body: {e}"));
                return;
            }
            Ok(None) => break,
            Err(_) => {
                out.err = Some("body stalled 10s".into());
                return;
            }
        }
    }
    match tokio::time::timeout(Duration::from_secs(10), body.trailers()).await {
        Ok(Ok(t)) => out.trailers = t,
        Ok(Err(e)) => out.err = Some(format!("trailers: {e}")),
        Err(_) => out.err = Some("trailers stalled".into()),
    }
}

/// What the grpcio server saw so far (its `status` call).
async fn seen(client: &mut H2, addr: SocketAddr) -> Result<serde_json::Value, Out> {
    let out = call(client, addr, "/echo.v1.Echo/Unary", &[], frame("status", 0)).await;
    match messages(&out.body).first() {
        Some(m) if out.grpc_status().as_deref() == Some("0") => {
            Ok(serde_json::from_str(&m.text).unwrap())
        }
        _ => Err(out),
    }
}

fn grpc_upstream(port: u16, extra: &str) -> String {
    format!(
        "kind: Upstream\nid: echo\nscheme: grpc\nnodes: [{{ addr: \"127.0.0.1:{port}\" }}]\n{extra}---\n\
         kind: Route\nid: echo\nmatch: {{ paths: [\"/echo.v1.Echo/{{method}}\"] }}\nupstream: echo\n"
    )
}

fn requests_total(metrics: &str, route: &str, status: &str) -> f64 {
    let prefix = format!("gatehouse_requests_total{{route=\"{route}\",status=\"{status}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn statuses(metrics: &str, route: &str) -> Vec<String> {
    let prefix = format!("gatehouse_requests_total{{route=\"{route}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

const PASSIVE: &str = "health_check: { passive: { max_fails: 1, fail_timeout: 3s } }\n";

#[tokio::test(flavor = "multi_thread")]
async fn grpc_timeout_extremes() {
    let server = Server::start();
    let gw = Gateway::builder()
        .file("r.yaml", grpc_upstream(server.port, PASSIVE))
        .start()
        .await;
    let mut c = h2(gw.addr).await;
    let path = "/echo.v1.Echo/Unary";
    let mut report = Vec::new();
    for value in ["99999999H", "99999999M", "0S", "0n", "1n", "00000001u"] {
        let out = call(
            &mut c,
            gw.addr,
            path,
            &[("grpc-timeout", value.to_string())],
            frame("hi", 1),
        )
        .await;
        // Did the deadline cost the node its place?
        let next = call(&mut c, gw.addr, path, &[], frame("next", 1)).await;
        report.push(format!(
            "grpc-timeout {value}: status {} grpc-status {:?} err {:?}; the next plain call: grpc-status {:?} {:?}",
            out.status,
            out.grpc_status(),
            out.err,
            next.grpc_status(),
            next.headers.get("grpc-message")
        ));
        if next.grpc_status().as_deref() != Some("0") {
            tokio::time::sleep(Duration::from_millis(3500)).await;
        }
    }
    let saw = seen(&mut c, gw.addr).await.unwrap();
    eprintln!(
        "{}\nupstream time_remaining: {}",
        report.join("\n"),
        saw["timeouts"]
    );
    assert!(
        report
            .iter()
            .all(|r| r.contains("next plain call: grpc-status Some(\"0\")")),
        "a caller's own grpc-timeout ejected the node:\n{}",
        report.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_timeout_on_a_plain_http_route_ejects_no_node() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    a.set_delay(Duration::from_millis(50));
    b.set_delay(Duration::from_millis(50));
    let routes = format!(
        "kind: Upstream\nid: svc\nnodes: [{{ addr: \"{}\" }}, {{ addr: \"{}\" }}]\n{PASSIVE}---\n\
         kind: Route\nid: plain\nmatch: {{ paths: [\"/plain\"] }}\nupstream: svc\nretries: 1\n",
        a.addr, b.addr
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let c = common::client();
    assert_eq!(c.get(gw.url("/plain")).send().await.unwrap().status(), 200);
    let resp = c
        .get(gw.url("/plain"))
        .header("grpc-timeout", "1m")
        .send()
        .await
        .unwrap();
    let first = resp.status();
    let after = c.get(gw.url("/plain")).send().await.unwrap();
    let after_status = after.status();
    let body = after.text().await.unwrap();
    eprintln!(
        "plain HTTP GET with grpc-timeout: 1m -> {first}; the next plain GET -> {after_status} {body}"
    );
    assert_eq!(
        after_status, 200,
        "one client header took every node out: {body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_frames_and_huge_metadata() {
    let server = Server::start();
    let gw = Gateway::builder()
        .file("r.yaml", grpc_upstream(server.port, PASSIVE))
        .start()
        .await;
    let mut c = h2(gw.addr).await;
    let path = "/echo.v1.Echo/Unary";
    let mut report = Vec::new();
    for (what, body) in [
        (
            "length 4 GiB",
            Bytes::from_static(&[0, 0xff, 0xff, 0xff, 0xff, b'a', b'b']),
        ),
        ("short prefix", Bytes::from_static(&[0, 0, 0])),
        (
            "compressed, no encoding",
            Bytes::from_static(&[1, 0, 0, 0, 1, b'x']),
        ),
        ("two messages to a unary", {
            let mut b = frame("a", 1).to_vec();
            b.extend_from_slice(&frame("b", 2));
            Bytes::from(b)
        }),
        (
            "garbage proto",
            Bytes::from_static(&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]),
        ),
    ] {
        let out = call(&mut c, gw.addr, path, &[], body).await;
        report.push(format!(
            "{what}: {} grpc-status {:?} {:?} err {:?}",
            out.status,
            out.grpc_status(),
            out.trailers.as_ref().and_then(|t| t.get("grpc-message")),
            out.err
        ));
    }
    // Huge metadata from the client.
    for (what, extra) in [
        ("one 20 KB value", vec![("x-big", "a".repeat(20_000))]),
        ("one 300 KB value", vec![("x-big", "a".repeat(300_000))]),
    ] {
        let mut c = h2(gw.addr).await;
        let out = call(&mut c, gw.addr, path, &extra, frame("hi", 1)).await;
        report.push(format!(
            "client metadata {what}: {} grpc-status {:?} msg {:?} end_in_headers {} err {:?}",
            out.status,
            out.grpc_status(),
            out.headers.get("grpc-message"),
            out.end_in_headers,
            out.err
        ));
    }
    // Huge metadata from the upstream.
    for (what, text, n) in [
        ("trailer 20 KB", "bigtrailer", 20_000),
        ("trailer 200 KB", "bigtrailer", 200_000),
        ("header 200 KB", "bigheader", 200_000),
    ] {
        let mut c = h2(gw.addr).await;
        let out = call(&mut c, gw.addr, path, &[], frame(text, n)).await;
        report.push(format!(
            "upstream metadata {what}: {} grpc-status {:?} msg {:?} err {:?}",
            out.status,
            out.grpc_status(),
            out.headers
                .get("grpc-message")
                .or(out.trailers.as_ref().and_then(|t| t.get("grpc-message"))),
            out.err
        ));
    }
    let mut c = h2(gw.addr).await;
    let alive = call(&mut c, gw.addr, path, &[], frame("alive", 1)).await;
    eprintln!("{}\nthen: {:?}", report.join("\n"), alive.grpc_status());
    assert_eq!(alive.grpc_status().as_deref(), Some("0"), "{alive:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_reset_leaves_the_node_alone() {
    client_resets(PASSIVE).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_reset_cancels_the_upstream_call() {
    client_resets("").await;
}

async fn client_resets(health: &str) {
    let server = Server::start();
    let gw = Gateway::builder()
        .file("r.yaml", grpc_upstream(server.port, health))
        .start()
        .await;
    let mut c = h2(gw.addr).await;
    let mut report = Vec::new();

    // Unary, request complete, waiting for the answer: the client resets.
    let mut cc = c.clone().ready().await.unwrap();
    let (resp, mut send) = cc
        .send_request(grpc_req(gw.addr, "/echo.v1.Echo/Unary", &[]), false)
        .unwrap();
    send.send_data(frame("block", 0), true).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    send.send_reset(h2::Reason::CANCEL);
    drop(resp);
    tokio::time::sleep(Duration::from_millis(800)).await;
    report.push(format!(
        "after unary reset: {:?}",
        seen(&mut c, gw.addr).await
    ));
    tokio::time::sleep(Duration::from_millis(3500)).await;

    // Server streaming: two messages read, then a reset.
    let mut cc = c.clone().ready().await.unwrap();
    let (resp, mut send) = cc
        .send_request(grpc_req(gw.addr, "/echo.v1.Echo/Count", &[]), false)
        .unwrap();
    send.send_data(frame("c", 50), true).unwrap();
    let resp = resp.await.unwrap();
    let mut body = resp.into_body();
    let mut got = 0;
    while got < 10 {
        let d = body.data().await.unwrap().unwrap();
        got += d.len();
    }
    send.send_reset(h2::Reason::CANCEL);
    drop(body);
    tokio::time::sleep(Duration::from_millis(800)).await;
    report.push(format!(
        "after stream reset: {:?}",
        seen(&mut c, gw.addr).await
    ));
    tokio::time::sleep(Duration::from_millis(3500)).await;

    // Bidi: one exchange, then a reset with the request still open.
    let mut cc = c.clone().ready().await.unwrap();
    let (resp, mut send) = cc
        .send_request(grpc_req(gw.addr, "/echo.v1.Echo/Chat", &[]), false)
        .unwrap();
    send.send_data(frame("x", 1), false).unwrap();
    let resp = resp.await.unwrap();
    let mut body = resp.into_body();
    let _ = body.data().await;
    send.send_reset(h2::Reason::CANCEL);
    drop(body);
    tokio::time::sleep(Duration::from_millis(800)).await;
    report.push(format!(
        "after bidi reset: {:?}",
        seen(&mut c, gw.addr).await
    ));

    let metrics = gw.metrics_text().await;
    eprintln!(
        "{}\nmetrics: {:?}",
        report.join("\n"),
        statuses(&metrics, "echo")
    );
    for r in &report {
        assert!(
            r.contains("Ok("),
            "the node was ejected by a client's reset: {r}"
        );
    }
    // Each cancel reaches the server when it next looks (the stream's next message, 100 ms
    // apart): under load that may be after the last call above, so the counts are read
    // until every call has ended upstream, for a bounded time.
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    let mut last = seen(&mut c, gw.addr).await.unwrap();
    while std::time::Instant::now() < deadline {
        let ended = |k: &str| last[k].as_i64().unwrap_or(0);
        let count_ended = ended("count_cancelled") + ended("count_completed");
        let chat_ended = ended("chat_cancelled") + ended("chat_ended");
        if ended("block_cancelled") + ended("block_completed") >= 1
            && count_ended >= 1
            && chat_ended >= 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = seen(&mut c, gw.addr).await.unwrap();
    }
    assert_eq!(
        last["block_cancelled"], 1,
        "unary cancel reached upstream: {last}"
    );
    assert_eq!(
        last["count_cancelled"], 1,
        "stream cancel reached upstream: {last}"
    );
    // A reset bidi stream ends upstream either as a cancel or, when Pingora has passed on
    // the end of the client's half first, as an ended stream: never left open.
    let chat =
        last["chat_cancelled"].as_i64().unwrap_or(0) + last["chat_ended"].as_i64().unwrap_or(0);
    assert_eq!(chat, 1, "the bidi call ended upstream: {last}");
}

/// A raw HTTP/2 upstream, for what grpcio will not do.
#[derive(Clone, Copy)]
enum H2Mode {
    /// Headers, one message, then RST_STREAM(INTERNAL_ERROR).
    StreamThenReset,
    /// Headers, one message, then the TCP connection closes.
    StreamThenCut,
    /// 200 application/grpc, a SERVING message, grpc-status 14 in the trailers.
    ServingBodyButUnavailable,
    /// 200 text/html with a body that happens to read as SERVING.
    HtmlThatLooksServing,
    /// Accepts the request and never answers.
    Hang,
    /// Answers 200 with the request head (Debug) as its body.
    EchoHead,
}

async fn h2_upstream(mode: H2Mode) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(sock).await else {
                    return;
                };
                let (cut_tx, mut cut_rx) = tokio::sync::mpsc::channel::<()>(1);
                loop {
                    tokio::select! {
                        next = conn.accept() => match next {
                            Some(Ok((req, mut respond))) => {
                                if let H2Mode::EchoHead = mode {
                                    tokio::spawn(async move {
                                        let head = format!("{:?} {:?} {:?}", req.method(), req.uri(), req.headers());
                                        let mut body = req.into_body();
                                        let mut got = 0;
                                        while let Some(Ok(d)) = body.data().await { got += d.len(); let _ = body.flow_control().release_capacity(d.len()); }
                                        let resp = http::Response::builder().status(200).body(()).unwrap();
                                        let mut send = respond.send_response(resp, false).unwrap();
                                        let _ = send.send_data(Bytes::from(format!("{head} body={got}")), true);
                                    });
                                    continue;
                                }
                                let cut = cut_tx.clone();
                                tokio::spawn(answer(mode, respond, cut));
                            }
                            _ => return,
                        },
                        _ = cut_rx.recv() => return,
                    }
                }
            });
        }
    });
    addr
}

async fn answer(
    mode: H2Mode,
    mut respond: h2::server::SendResponse<Bytes>,
    cut: tokio::sync::mpsc::Sender<()>,
) {
    let serving = Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1]);
    let grpc = || {
        http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .body(())
            .unwrap()
    };
    match mode {
        H2Mode::StreamThenReset | H2Mode::StreamThenCut => {
            let mut send = respond.send_response(grpc(), false).unwrap();
            send.send_data(frame("one", 1), false).unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let H2Mode::StreamThenReset = mode {
                send.send_reset(h2::Reason::INTERNAL_ERROR);
                tokio::time::sleep(Duration::from_secs(5)).await;
            } else {
                let _ = cut.send(()).await;
            }
        }
        H2Mode::ServingBodyButUnavailable => {
            let mut send = respond.send_response(grpc(), false).unwrap();
            send.send_data(serving, false).unwrap();
            let mut t = HeaderMap::new();
            t.insert("grpc-status", "14".parse().unwrap());
            send.send_trailers(t).unwrap();
        }
        H2Mode::HtmlThatLooksServing => {
            let resp = http::Response::builder()
                .status(200)
                .header("content-type", "text/html")
                .body(())
                .unwrap();
            let mut send = respond.send_response(resp, false).unwrap();
            send.send_data(serving, true).unwrap();
        }
        H2Mode::EchoHead => {}
        H2Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(respond);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_cut_by_the_upstream_is_not_a_clean_end() {
    let reset = h2_upstream(H2Mode::StreamThenReset).await;
    let cut = h2_upstream(H2Mode::StreamThenCut).await;
    let routes = format!(
        "kind: Upstream\nid: reset\nscheme: grpc\nnodes: [{{ addr: \"{reset}\" }}]\n---\n\
         kind: Upstream\nid: cut\nscheme: grpc\nnodes: [{{ addr: \"{cut}\" }}]\n---\n\
         kind: Route\nid: reset\nmatch: {{ paths: [\"/reset/{{m}}\"] }}\nupstream: reset\n---\n\
         kind: Route\nid: cut\nmatch: {{ paths: [\"/cut/{{m}}\"] }}\nupstream: cut\n"
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let mut report = Vec::new();
    for path in ["/reset/Count", "/cut/Count"] {
        let mut c = h2(gw.addr).await;
        let out = call(&mut c, gw.addr, path, &[], frame("c", 5)).await;
        report.push(format!(
            "h2 {path}: {} messages {}, trailers {:?}, err {:?}",
            out.status,
            messages(&out.body).len(),
            out.trailers,
            out.err
        ));
        // The same over HTTP/1.1.
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let f = frame("c", 5);
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: gw\r\ncontent-type: application/grpc\r\nte: trailers\r\ncontent-length: {}\r\n\r\n",
            f.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        s.write_all(&f).await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
        let text = String::from_utf8_lossy(&got);
        report.push(format!(
            "h1 {path}: {:?} last-chunk present: {}",
            text,
            text.contains("\r\n0\r\n")
        ));
    }
    eprintln!("{}", report.join("\n"));
    for r in report.iter().filter(|r| r.starts_with("h2")) {
        assert!(
            r.contains("err Some"),
            "an upstream reset/cut ended the client's stream cleanly: {r}"
        );
    }
    for r in report.iter().filter(|r| r.starts_with("h1")) {
        assert!(
            r.ends_with("last-chunk present: false"),
            "an upstream reset/cut ended the HTTP/1.1 body cleanly: {r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_refusals_to_http1_clients_and_their_metrics() {
    let server = Server::start();
    let routes = grpc_upstream(server.port, "")
        + "---\nkind: Route\nid: limited\nmatch: { paths: [\"/limited/**\"] }\nrate_limit: { rate: 1, per: 1m, burst: 1 }\ndirect_response: { status: 200, body: \"fine\" }\n";
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let mut report = Vec::new();
    for (what, req) in [
        (
            "h1 POST application/grpc, no route",
            "POST /nope HTTP/1.1\r\nHost: gw\r\ncontent-type: application/grpc\r\ncontent-length: 5\r\n\r\n\0\0\0\0\0",
        ),
        (
            "h1 GET application/grpc, no route",
            "GET /some/page HTTP/1.1\r\nHost: gw\r\ncontent-type: application/grpc\r\n\r\n",
        ),
        (
            "h1 GET grpc-web-text, no route",
            "GET /some/page HTTP/1.1\r\nHost: gw\r\ncontent-type: application/grpc-web-text\r\n\r\n",
        ),
        (
            "h1 GET application/grpc, rate limited (2nd)",
            "GET /limited/x HTTP/1.1\r\nHost: gw\r\ncontent-type: application/grpc\r\n\r\n",
        ),
        (
            "h1 GET application/grpc, rate limited (3rd)",
            "GET /limited/x HTTP/1.1\r\nHost: gw\r\ncontent-type: application/grpc\r\n\r\n",
        ),
    ] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut got = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut got))
            .await
            .unwrap()
            .unwrap();
        report.push(format!("{what}: {:?}", String::from_utf8_lossy(&got[..n])));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = gw.metrics_text().await;
    eprintln!(
        "{}\nno-route metrics: {:?}\nlimited metrics: {:?}",
        report.join("\n"),
        statuses(&metrics, ""),
        statuses(&metrics, "limited")
    );
    assert!(
        requests_total(&metrics, "", "404") > 0.0,
        "refused gRPC calls are recorded as 200s: {:?}",
        statuses(&metrics, "")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_across_protocol_mismatches() {
    let server = Server::start();
    let up = TestUpstream::start("plain").await;
    let routes = grpc_upstream(server.port, "")
        + &format!(
            "---\nkind: Upstream\nid: plain\nnodes: [{{ addr: \"{}\" }}]\n---\n\
             kind: Route\nid: plain\nmatch: {{ paths: [\"/plain.Svc/{{m}}\"] }}\nupstream: plain\n",
            up.addr
        );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let mut report = Vec::new();

    // A gRPC call (h2) to an HTTP/1 upstream.
    let mut c = h2(gw.addr).await;
    let out = call(&mut c, gw.addr, "/plain.Svc/Call", &[], frame("hi", 1)).await;
    let echo: serde_json::Value = serde_json::from_slice(&out.body).unwrap_or_default();
    report.push(format!(
        "grpc to HTTP/1 upstream: {} grpc-status {:?} ct {:?}; upstream saw te={:?} connection={:?} transfer-encoding={:?}",
        out.status,
        out.grpc_status(),
        out.headers.get("content-type"),
        echo["headers"]["te"],
        echo["headers"]["connection"],
        echo["headers"]["transfer-encoding"],
    ));

    // An HTTP/1.1 client to the gRPC upstream.
    for (what, te) in [("with te", "te: trailers\r\n"), ("without te", "")] {
        let f = frame("h1", 3);
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let req = format!(
            "POST /echo.v1.Echo/Unary HTTP/1.1\r\nHost: gw\r\ncontent-type: application/grpc\r\n{te}content-length: {}\r\nconnection: close\r\n\r\n",
            f.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        s.write_all(&f).await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
        report.push(format!(
            "HTTP/1.1 client to grpc upstream ({what}): {:?}",
            String::from_utf8_lossy(&got)
        ));
    }
    // A client listing TE in Connection, as HTTP/1.1 asks of it.
    let f = frame("h1", 3);
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let req = format!(
        "POST /plain.Svc/Call HTTP/1.1\r\nHost: gw\r\ncontent-type: application/grpc\r\nte: trailers\r\nconnection: te\r\ncontent-length: {}\r\n\r\n",
        f.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(&f).await.unwrap();
    let mut got = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut got))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&got[..n]);
    report.push(format!(
        "HTTP/1.1 te+connection:te to plain upstream, upstream saw te: {}",
        text.contains("\"te\"")
    ));
    eprintln!("{}", report.join("\n"));
    let logs = gw.logs();
    eprintln!(
        "gateway logs:\n{}",
        logs.lines()
            .filter(|l| !l.contains("access"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_health_checks_against_nodes_that_are_not_grpc() {
    let http1 = TestUpstream::start("http1").await;
    let garbage = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let garbage_addr = garbage.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = garbage.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(b"\x00\x00\x12\x04\x00garbage garbage garbage\r\n\r\n")
                    .await;
            });
        }
    });
    let unavailable = h2_upstream(H2Mode::ServingBodyButUnavailable).await;
    let html = h2_upstream(H2Mode::HtmlThatLooksServing).await;
    let hang = h2_upstream(H2Mode::Hang).await;
    let check =
        "health_check: { active: { interval: 200ms, timeout: 1s, healthy: 1, unhealthy: 1 } }";
    let nodes = [
        ("http1", http1.addr),
        ("garbage", garbage_addr),
        ("unavailable", unavailable),
        ("html", html),
        ("hang", hang),
    ];
    let mut routes = String::new();
    for (id, addr) in nodes {
        routes += &format!(
            "kind: Upstream\nid: {id}\nscheme: grpc\nnodes: [{{ addr: \"{addr}\" }}]\n{check}\n---\n"
        );
    }
    routes += "kind: Route\nid: r\nmatch: { paths: [\"/x\"] }\nupstream: http1\n";
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = gw.metrics_text().await;
    let mut report = Vec::new();
    let mut healthy = Vec::new();
    for (id, addr) in nodes {
        let gauge =
            format!("gatehouse_upstream_node_healthy{{node=\"{addr}\",upstream=\"{id}\"}} ");
        let v = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&gauge))
            .unwrap_or("?")
            .trim()
            .to_string();
        if v == "1" {
            healthy.push(id);
        }
        report.push(format!("{id}: {v}"));
    }
    eprintln!("node_healthy after 3 s: {}", report.join(", "));
    assert_eq!(
        healthy,
        Vec::<&str>::new(),
        "nodes that are not SERVING passed: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_answers_over_http2_keep_their_headers() {
    let routes = r#"kind: Route
id: empty
match: { paths: ["/empty"] }
response_headers: { set: { X-Route: "${route_id}" } }
direct_response: { status: 204 }
---
kind: Route
id: empty200
match: { paths: ["/empty200"] }
response_headers: { set: { X-Route: "${route_id}" } }
direct_response: { status: 200 }
---
kind: Route
id: pong
match: { paths: ["/pong"] }
response_headers: { set: { X-Route: "${route_id}" } }
direct_response: { status: 200, body: "pong", headers: { Content-Type: text/plain } }
"#;
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let mut c = h2(gw.addr).await;
    let mut report = Vec::new();
    let mut problems = Vec::new();
    for (method, path, want_len) in [
        ("HEAD", "/nope", None),
        ("GET", "/empty", Some("0")),
        ("GET", "/empty200", Some("0")),
        ("HEAD", "/empty200", Some("0")),
        ("HEAD", "/pong", Some("4")),
        ("GET", "/pong", Some("4")),
    ] {
        let mut cc = c.clone().ready().await.unwrap();
        let req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", gw.addr))
            .body(())
            .unwrap();
        let (resp, _) = cc.send_request(req, true).unwrap();
        let mut out = Out::default();
        read_all(resp, &mut out).await;
        let h = &out.headers;
        report.push(format!(
            "h2 {method} {path}: {} end_in_headers={} body={} headers={:?}",
            out.status,
            out.end_in_headers,
            out.body.len(),
            h
        ));
        if !h.contains_key("x-request-id") {
            problems.push(format!("{method} {path}: no x-request-id"));
        }
        if path != "/nope" && h.get("x-route").is_none() {
            problems.push(format!("{method} {path}: no X-Route"));
        }
        match (want_len, h.get("content-length")) {
            (Some(want), Some(got)) if got != want => problems.push(format!(
                "{method} {path}: content-length {got:?}, want {want}"
            )),
            (Some(want), None) if out.status != 204 => {
                problems.push(format!("{method} {path}: no content-length, want {want}"))
            }
            (None, None) => problems.push(format!("{method} {path}: no content-length")),
            _ => {}
        }
        if out.err.is_some() {
            problems.push(format!("{method} {path}: {:?}", out.err));
        }
    }
    // gRPC refusal: trailers-only, ends in HEADERS.
    let out = call(&mut c, gw.addr, "/nope.Svc/M", &[], frame("x", 1)).await;
    report.push(format!(
        "h2 grpc no route: {} end_in_headers={} headers={:?}",
        out.status, out.end_in_headers, out.headers
    ));
    if !out.end_in_headers {
        problems.push("grpc refusal not trailers-only".into());
    }
    let metrics = gw.metrics_text().await;
    eprintln!(
        "{}\nmetrics: {:?} {:?} {:?}",
        report.join("\n"),
        statuses(&metrics, "empty"),
        statuses(&metrics, "empty200"),
        statuses(&metrics, "pong")
    );
    if requests_total(&metrics, "empty", "204") != 1.0 {
        problems.push(format!("metrics: {:?}", statuses(&metrics, "empty")));
    }
    if requests_total(&metrics, "empty200", "200") != 2.0 {
        problems.push(format!("metrics: {:?}", statuses(&metrics, "empty200")));
    }
    eventually(Duration::from_secs(1), "nothing", || async { true }).await;
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Why an HTTP/1.1 client's call fails on the gRPC upstream: the same call straight to the
/// grpcio server, with the pieces Pingora's HTTP/1 -> HTTP/2 conversion adds.
#[tokio::test(flavor = "multi_thread")]
async fn what_grpcio_refuses_of_a_converted_request() {
    let server = Server::start();
    let addr: SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let mut report = Vec::new();
    for (what, scheme, host, cl) in [
        ("baseline", "http", false, false),
        ("scheme https", "https", false, false),
        ("host header", "http", true, false),
        ("content-length", "http", false, true),
        ("https + host + content-length", "https", true, true),
    ] {
        let mut c = h2(addr).await;
        let f = frame("x", 1);
        let mut b = http::Request::post(format!("{scheme}://{addr}/echo.v1.Echo/Unary"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if host {
            b = b.header("host", addr.to_string());
        }
        if cl {
            b = b.header("content-length", f.len().to_string());
        }
        let mut cc = c.clone().ready().await.unwrap();
        let (resp, mut send) = cc.send_request(b.body(()).unwrap(), false).unwrap();
        let _ = send.send_data(f, true);
        let mut out = Out::default();
        read_all(resp, &mut out).await;
        let _ = &mut c;
        report.push(format!(
            "{what}: {} {:?} {:?}",
            out.status,
            out.grpc_status(),
            out.err
        ));
    }
    eprintln!("{}", report.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn what_an_http1_call_looks_like_upstream() {
    let echo = h2_upstream(H2Mode::EchoHead).await;
    let routes = format!(
        "kind: Upstream\nid: e\nscheme: grpc\nnodes: [{{ addr: \"{echo}\" }}]\n---\n\
         kind: Route\nid: e\nmatch: {{ paths: [\"/e/{{m}}\"] }}\nupstream: e\n"
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    for req in [
        "POST /e/M HTTP/1.1\r\nHost: gw\r\ncontent-type: application/grpc\r\nte: trailers\r\ncontent-length: 5\r\nconnection: close\r\n\r\n\0\0\0\0\0",
        "POST /e/M HTTP/1.1\r\nHost: gw\r\ncontent-type: application/grpc\r\nte: trailers\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\n\0\0\0\0\0\r\n0\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
        eprintln!("{}", String::from_utf8_lossy(&got));
    }
    let mut c = h2(gw.addr).await;
    let out = call(
        &mut c,
        gw.addr,
        "/e/M",
        &[],
        Bytes::from_static(&[0, 0, 0, 0, 0]),
    )
    .await;
    eprintln!("via h2: {}", String::from_utf8_lossy(&out.body));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http1_request_to_a_grpc_route() {
    let server = Server::start();
    let gw = Gateway::builder()
        .file("r.yaml", grpc_upstream(server.port, PASSIVE))
        .start()
        .await;
    let mut c = h2(gw.addr).await;
    assert!(seen(&mut c, gw.addr).await.is_ok());
    // Anyone's plain HTTP/1.1 GET (curl http://gw/echo.v1.Echo/Unary).
    let resp = common::client()
        .get(gw.url("/echo.v1.Echo/Unary"))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    let after = seen(&mut c, gw.addr).await;
    eprintln!("HTTP/1.1 GET to a grpc route: {status} {body}\nthen a real gRPC call: {after:?}");
    assert!(
        after.is_ok(),
        "one HTTP/1.1 GET ejected the gRPC node: {after:?}"
    );
}

/// The grpcio node honours the 50 ms deadline itself, and the gateway's read timeout is the
/// same 50 ms: whichever fires first, the caller's deadline says nothing of the node.
#[tokio::test(flavor = "multi_thread")]
async fn a_callers_short_deadline_does_not_eject_the_node() {
    let server = Server::start();
    let gw = Gateway::builder()
        .file("r.yaml", grpc_upstream(server.port, PASSIVE))
        .start()
        .await;
    let mut c = h2(gw.addr).await;
    // A call that takes its time (up to 5 s), with a 50 ms deadline of the caller's.
    let out = call(
        &mut c,
        gw.addr,
        "/echo.v1.Echo/Unary",
        &[("grpc-timeout", "50m".to_string())],
        frame("block", 0),
    )
    .await;
    let after = seen(&mut c, gw.addr).await;
    eprintln!(
        "grpc-timeout 50m on a slow call: grpc-status {:?} {:?}\nthen: {after:?}",
        out.grpc_status(),
        out.headers.get("grpc-message")
    );
    assert!(
        after.is_ok(),
        "a caller's deadline ejected the node: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callers_deadline_on_a_slow_grpc_node_does_not_eject_it() {
    let hang = h2_upstream(H2Mode::Hang).await;
    let routes = format!(
        "kind: Upstream\nid: h\nscheme: grpc\nnodes: [{{ addr: \"{hang}\" }}]\n{PASSIVE}---\n\
         kind: Route\nid: h\nmatch: {{ paths: [\"/h/{{m}}\"] }}\nupstream: h\n"
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let mut c = h2(gw.addr).await;
    let first = call(
        &mut c,
        gw.addr,
        "/h/M",
        &[("grpc-timeout", "20m".into())],
        frame("x", 1),
    )
    .await;
    let second = call(
        &mut c,
        gw.addr,
        "/h/M",
        &[("grpc-timeout", "20m".into())],
        frame("x", 1),
    )
    .await;
    eprintln!(
        "grpc-timeout 20m to a node that takes its time: {:?} {:?}; the next call: {:?} {:?}",
        first.grpc_status(),
        first.headers.get("grpc-message"),
        second.grpc_status(),
        second.headers.get("grpc-message")
    );
    assert_ne!(
        second.grpc_status().as_deref(),
        Some("14"),
        "a caller's 20 ms deadline ejected the node"
    );
}
