//! HTTP/JSON → gRPC transcoding (SPEC §9) against hostile clients, hostile upstreams and
//! operators' mistakes: paths, queries and bodies built to hurt, upstreams that answer what
//! no gRPC server should, reflection that reads what it should not, and bindings that clash.
//!
//! Upstreams: a raw `h2` server in this process (echoes, or misbehaves as told, and notices
//! resets), the grpcio server of tests/grpc/transcode/server.py, and its TLS variant in
//! tests/grpc/transcode/attack/. Descriptor sets: users.proto and attack/attack.proto, by
//! grpc_tools' protoc. Clients: reqwest and raw TCP.

mod common;

use bytes::Bytes;
use common::python::PythonServer;
use common::{client, eventually, free_addr, Gateway};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn transcode_dir() -> String {
    format!("{}/tests/grpc/transcode", env!("CARGO_MANIFEST_DIR"))
}

/// A descriptor set written to a file kept for the test's life.
struct Descriptors {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Descriptors {
    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

fn write_descriptors(script: &str, args: &[&str]) -> Descriptors {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("set.pb");
    let status = Command::new("python3")
        .arg(script)
        .args(args)
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success(), "writing the descriptor set failed");
    Descriptors { _dir: dir, path }
}

/// The FileDescriptorSet of attack.proto.
fn attack_descriptors() -> Descriptors {
    write_descriptors(&format!("{}/attack/descriptors.py", transcode_dir()), &[])
}

/// The FileDescriptorSet of users.proto.
fn users_descriptors() -> Descriptors {
    write_descriptors(
        &format!("{}/server.py", transcode_dir()),
        &["--descriptors"],
    )
}

fn users_server() -> PythonServer {
    PythonServer::start(&format!("{}/server.py", transcode_dir()), &[])
}

fn upstream(id: &str, addr: SocketAddr) -> String {
    format!("kind: Upstream\nid: {id}\nscheme: grpc\nnodes: [{{ addr: \"{addr}\" }}]\n")
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A transcoded route on `/v1/**` to `upstream`, with `extra` lines inside `grpc_transcode`
/// and `route_extra` at the route's top level.
fn route(upstream: &str, source: &str, service: &str, extra: &str, route_extra: &str) -> String {
    format!(
        r#"kind: Route
id: rest
match: {{ paths: ["/v1/**"] }}
upstream: {upstream}
timeouts: {{ read: 1s }}
{route_extra}grpc_transcode:
  descriptors: "{source}"
  services: [{service}]
{extra}"#
    )
}

/// The gateway in front of `addr` with attack.proto's bindings.
async fn attack_gateway(addr: SocketAddr, set: &Descriptors) -> Gateway {
    let routes = format!(
        "{}---\n{}",
        upstream("up", addr),
        route("up", set.path(), "attack.v1.Attack", "", "")
    );
    Gateway::builder().file("routes.yaml", routes).start().await
}

/// The gateway in front of the users server, with DeleteUser bound by a rule.
async fn users_gateway(server: &PythonServer, set: &Descriptors, route_extra: &str) -> Gateway {
    let rules = "  rules:\n    - { selector: users.v1.UserService.DeleteUser, delete: \"/v1/users/{id}\" }\n";
    let routes = format!(
        "{}---\n{}",
        upstream("users", local(server.port)),
        route(
            "users",
            set.path(),
            "users.v1.UserService",
            rules,
            route_extra
        )
    );
    Gateway::builder().file("routes.yaml", routes).start().await
}

async fn call(gw: &Gateway, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut req = client().request(method.parse().unwrap(), gw.url(path));
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text));
    (status, value)
}

/// Whether the gateway process is still running.
fn alive(gw: &Gateway) -> bool {
    Path::new(&format!("/proc/{}", gw.pid())).exists()
        && !std::fs::read_to_string(format!("/proc/{}/stat", gw.pid()))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Protobuf by hand: a length-delimited field.
fn len_field(number: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(&mut out, u64::from(number << 3 | 2));
    varint(&mut out, bytes.len() as u64);
    out.extend_from_slice(bytes);
    out
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A Node with a name.
fn node(name: &str) -> Vec<u8> {
    len_field(1, name.as_bytes())
}

fn grpc_frame(flag: u8, message: &[u8]) -> Bytes {
    let mut b = vec![flag];
    b.extend_from_slice(&(message.len() as u32).to_be_bytes());
    b.extend_from_slice(message);
    Bytes::from(b)
}

// ---------------------------------------------------------------------------------------
// A raw HTTP/2 upstream: what it does with every call, and what it saw.

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// The request message comes back (Tree and Update answer their request's type).
    Echo,
    /// Two messages to a unary call.
    TwoMessages,
    /// One message with the compressed flag set.
    Compressed,
    /// One message, then the stream ends without trailers.
    NoTrailers,
    /// HTTP 500, no gRPC at all.
    Http500,
    /// The head, then RST_STREAM.
    ResetAfterHead,
    /// The head, then nothing for a minute.
    HangAfterHead,
    /// One message of bytes that are no protobuf.
    Garbage,
    /// A good message, each byte of the frame in its own DATA frame.
    OneByteFrames,
    /// A frame that says it holds 1 GiB.
    Oversized,
    /// A message of `n` empty Nodes in Blob.items, the largest the gateway takes.
    ManyEmpty(usize),
    /// A server stream that never ends: a Node every 50 ms until the call is reset.
    Forever,
    /// A server stream: one Node, then silence until the call is reset.
    OneThenSilence,
}

#[derive(Default)]
struct Seen {
    calls: AtomicUsize,
    resets: AtomicUsize,
    last_request: Mutex<Vec<u8>>,
    last_path: Mutex<String>,
}

struct H2Upstream {
    addr: SocketAddr,
    seen: Arc<Seen>,
}

async fn h2_upstream(mode: Mode) -> H2Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let shared = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let seen = shared.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(sock).await else {
                    return;
                };
                while let Some(Ok((req, respond))) = conn.accept().await {
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        *seen.last_path.lock().unwrap() = req.uri().path().to_string();
                        let mut body = req.into_body();
                        let mut got = Vec::new();
                        while let Some(Ok(d)) = body.data().await {
                            got.extend_from_slice(&d);
                            let _ = body.flow_control().release_capacity(d.len());
                        }
                        let message = got.get(5..).unwrap_or_default().to_vec();
                        *seen.last_request.lock().unwrap() = message.clone();
                        seen.calls.fetch_add(1, Ordering::SeqCst);
                        answer(mode, respond, message, seen).await;
                    });
                }
            });
        }
    });
    H2Upstream { addr, seen }
}

async fn answer(
    mode: Mode,
    mut respond: h2::server::SendResponse<Bytes>,
    message: Vec<u8>,
    seen: Arc<Seen>,
) {
    let grpc = || {
        http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .body(())
            .unwrap()
    };
    let ok = || {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        t
    };
    let Ok(mut send) = respond.send_response(
        match mode {
            Mode::Http500 => http::Response::builder().status(500).body(()).unwrap(),
            _ => grpc(),
        },
        matches!(mode, Mode::Http500),
    ) else {
        return;
    };
    match mode {
        Mode::Echo => {
            let _ = send.send_data(grpc_frame(0, &message), false);
            let _ = send.send_trailers(ok());
        }
        Mode::TwoMessages => {
            let _ = send.send_data(grpc_frame(0, &[]), false);
            let _ = send.send_data(grpc_frame(0, &[]), false);
            let _ = send.send_trailers(ok());
        }
        Mode::Compressed => {
            let _ = send.send_data(grpc_frame(1, &[]), false);
            let _ = send.send_trailers(ok());
        }
        Mode::NoTrailers => {
            let _ = send.send_data(grpc_frame(0, &[]), true);
        }
        Mode::Http500 => {}
        Mode::ResetAfterHead => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            send.send_reset(h2::Reason::INTERNAL_ERROR);
        }
        Mode::HangAfterHead => {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        Mode::Garbage => {
            let _ = send.send_data(grpc_frame(0, &[0xff, 0xff, 0xff, 0xff]), false);
            let _ = send.send_trailers(ok());
        }
        Mode::OneByteFrames => {
            let framed = grpc_frame(0, &len_field(1, &node("split")));
            for b in framed.iter() {
                send.reserve_capacity(1);
                let _ = send.send_data(Bytes::copy_from_slice(&[*b]), false);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let _ = send.send_trailers(ok());
        }
        Mode::Oversized => {
            let mut head = vec![0u8];
            head.extend_from_slice(&(1u32 << 30).to_be_bytes());
            let _ = send.send_data(Bytes::from(head), false);
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Mode::ManyEmpty(n) => {
            let items: Vec<u8> = [0x0a, 0x00].repeat(n);
            let framed = grpc_frame(0, &items);
            send_all(&mut send, framed).await;
            let _ = send.send_trailers(ok());
        }
        Mode::Forever | Mode::OneThenSilence => {
            let mut ticks = 0u64;
            loop {
                if ticks == 0 || matches!(mode, Mode::Forever) {
                    if send
                        .send_data(grpc_frame(0, &node(&format!("tick {ticks}"))), false)
                        .is_err()
                    {
                        seen.resets.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
                ticks += 1;
                let wait = tokio::time::sleep(Duration::from_millis(50));
                tokio::select! {
                    _ = wait => {}
                    r = std::future::poll_fn(|cx| send.poll_reset(cx)) => {
                        let _ = r;
                        seen.resets.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
                if ticks > 1200 {
                    return;
                }
            }
        }
    }
    // Keep the stream's sender until the peer is done with it.
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// Sends a large body, waiting for the peer's flow-control window.
async fn send_all(send: &mut h2::SendStream<Bytes>, mut data: Bytes) {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let Some(Ok(cap)) = std::future::poll_fn(|cx| send.poll_capacity(cx)).await else {
            return;
        };
        let piece = data.split_to(cap.min(data.len()));
        if send.send_data(piece, false).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Hostile requests.

#[tokio::test(flavor = "multi_thread")]
async fn a_deeply_nested_query_parameter_is_refused_not_crashing_the_gateway() {
    let up = h2_upstream(Mode::Echo).await;
    let set = attack_descriptors();
    let gw = attack_gateway(up.addr, &set).await;

    // A shallow one works: the recursive field is walked as google.api.http says.
    let (status, tree) = call(&gw, "GET", "/v1/tree?c.c.name=leaf", None).await;
    assert_eq!(status, 200, "{tree}");
    assert_eq!(tree, json!({"c": {"c": {"name": "leaf"}}}));

    // `c.c.c.…name=x`, 10,000 deep, fits the 32 KiB head: it must be refused (400), not
    // recursed into until the gateway's stack runs out.
    let deep = format!("/v1/tree?{}name=x", "c.".repeat(10_000));
    let answered = client().get(gw.url(&deep)).send().await;
    let status = answered.as_ref().map(|r| r.status().as_u16()).ok();
    assert!(
        alive(&gw),
        "the gateway died on a deep query parameter: {:?}\n{}",
        answered.err(),
        gw.logs()
    );
    assert_eq!(status, Some(400));
    let (status, _) = call(&gw, "GET", "/v1/tree?name=after", None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deeply_nested_json_body_is_refused_not_crashing_the_gateway() {
    let up = h2_upstream(Mode::Echo).await;
    let set = attack_descriptors();
    let gw = attack_gateway(up.addr, &set).await;

    // The body field's own nesting, far past any sane depth.
    let depth = 50_000;
    let body = format!(
        "{}{}",
        "{\"c\":".repeat(depth),
        "{}".to_string() + &"}".repeat(depth)
    );
    let (status, error) = call(&gw, "PATCH", "/v1/nodes/1", Some(&body)).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"], "bad_request");
    assert!(alive(&gw));

    // Within the depth JSON parsing takes, the message arrives whole.
    let body = format!(
        "{}{}",
        "{\"c\":".repeat(20),
        "{\"name\":\"x\"}".to_string() + &"}".repeat(20)
    );
    let (status, echoed) = call(&gw, "PATCH", "/v1/nodes/1", Some(&body)).await;
    assert_eq!(status, 200, "{echoed}");
    assert_eq!(echoed["id"], "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_bound_to_one_field_is_one_json_value_and_sets_nothing_beside_it() {
    let up = h2_upstream(Mode::Echo).await;
    let set = attack_descriptors();
    let gw = attack_gateway(up.addr, &set).await;

    let (status, echoed) = call(&gw, "PATCH", "/v1/nodes/7", Some(r#"{"name": "n"}"#)).await;
    assert_eq!(status, 200, "{echoed}");
    assert_eq!(echoed, json!({"id": "7", "node": {"name": "n"}}));

    // `body: "node"`: the body is the node, one JSON value. This one is not JSON at all, but
    // pasted inside `{"node": …}` it reads as a whole Patch, and sets `labels`, which
    // google.api.http leaves to gRPC callers (no path, body or query parameter sets a map).
    let hostile = r#"{"name": "n"}, "labels": {"role": "admin"}"#;
    let (status, answer) = call(&gw, "PATCH", "/v1/nodes/7", Some(hostile)).await;
    assert_eq!(
        status, 400,
        "an invalid JSON body was taken, the upstream got: {answer}"
    );
    assert!(
        up.seen.calls.load(Ordering::SeqCst) == 1,
        "the call was made"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_repeated_field_given_twice_in_the_query_is_refused() {
    // The route admits only `view=basic`; the upstream must not see another view.
    let server = users_server();
    let set = users_descriptors();
    let gw = users_gateway(&server, &set, "").await;
    let (status, user) = call(&gw, "GET", "/v1/users/7?view=basic", None).await;
    assert_eq!((status, &user["nickname"]), (200, &json!("basic")));

    for query in [
        "/v1/users/7?view=basic&view=full",
        "/v1/users?page_size=1&pageSize=3",
    ] {
        let (status, answer) = call(&gw, "GET", query, None).await;
        assert_eq!(
            status, 400,
            "`{query}`: the field was set twice and the last value won: {answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_matching_on_a_query_value_sees_the_value_the_upstream_gets() {
    // The route is chosen by `view=basic`; a repeated parameter must not carry another view
    // to the method past that predicate.
    let server = users_server();
    let set = users_descriptors();
    let gw = users_gateway(&server, &set, "").await;
    let routes = format!(
        "{}---\n{}",
        upstream("users", local(server.port)),
        route("users", set.path(), "users.v1.UserService", "", "").replace(
            "match: { paths: [\"/v1/**\"] }",
            "match: { paths: [\"/v1/**\"], query: { view: basic } }"
        )
    );
    let rev = gw.status().await["revision"].as_u64().unwrap();
    gw.write_file("routes.yaml", &routes);
    gw.wait_revision_after(rev).await;
    let (status, _) = call(&gw, "GET", "/v1/users/7?view=full", None).await;
    assert_eq!(status, 404, "the predicate holds");
    let (status, user) = call(&gw, "GET", "/v1/users/7?view=basic&view=full", None).await;
    assert!(
        status == 400 || user["nickname"] == "basic",
        "the route matched `view=basic`, the method got view {}",
        user["nickname"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_utf8_in_a_string_field_is_refused_not_replaced() {
    let server = users_server();
    let set = users_descriptors();
    let gw = users_gateway(&server, &set, "").await;
    let (status, user) = call(&gw, "GET", "/v1/users/7?view=%C3%A9", None).await;
    assert_eq!((status, &user["nickname"]), (200, &json!("é")));

    // `%FF` and `%FE` are no UTF-8: a string field cannot hold them, and two different
    // values must not both reach the method as U+FFFD.
    for query in ["view=%FF", "view=a%FEb"] {
        let (status, user) = call(&gw, "GET", &format!("/v1/users/7?{query}"), None).await;
        assert_eq!(
            status, 400,
            "`{query}` reached the method as {}",
            user["nickname"]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_expects_100_continue_is_told_to_send_its_body() {
    let server = users_server();
    let set = users_descriptors();
    let gw = users_gateway(&server, &set, "").await;

    // curl sends `Expect: 100-continue` with larger bodies and waits a second for the
    // interim answer before sending the body anyway; the route's timeouts.read is 1s.
    let body = r#"{"displayName": "Ed"}"#;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/users HTTP/1.1\r\nHost: gw\r\ncontent-type: application/json\r\n\
         expect: 100-continue\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = vec![0u8; 4096];
    let interim = tokio::time::timeout(Duration::from_millis(1500), s.read(&mut got)).await;
    let interim = match interim {
        Ok(Ok(n)) => String::from_utf8_lossy(&got[..n]).into_owned(),
        _ => String::new(),
    };
    assert!(
        interim.starts_with("HTTP/1.1 100"),
        "no 100 Continue within 1.5s: {interim:?}"
    );
    s.write_all(body.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains(" 200 "), "{text}");
}
