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
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
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
    /// A reflection service answering bytes that are no protobuf.
    ReflectGarbage,
    /// A reflection service whose every file imports one more it has not sent yet.
    ReflectEndlessImports,
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
                        let message = match mode {
                            // Every framed request, concatenated by their frames.
                            Mode::ReflectGarbage | Mode::ReflectEndlessImports => got.clone(),
                            _ => got.get(5..).unwrap_or_default().to_vec(),
                        };
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
        Mode::ReflectGarbage => {
            let _ = send.send_data(grpc_frame(0, &[0xff, 0xff, 0x07]), false);
            let _ = send.send_trailers(ok());
        }
        Mode::ReflectEndlessImports => {
            // One answer per request frame: a file named for the call, importing the next.
            let mut requests = 0;
            let mut rest = &message[..];
            while rest.len() >= 5 {
                let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
                rest = &rest[(5 + len).min(rest.len())..];
                requests += 1;
            }
            let call = seen.calls.load(Ordering::SeqCst);
            let mut body = Vec::new();
            for i in 0..requests {
                let name = format!("f{call}_{i}.proto");
                let import = format!("f{}_{i}.proto", call + 1);
                let file = [
                    len_field(1, name.as_bytes()),
                    len_field(3, import.as_bytes()),
                ]
                .concat();
                let files = len_field(1, &file);
                body.extend_from_slice(&grpc_frame(0, &len_field(4, &files)));
            }
            let _ = send.send_data(Bytes::from(body), false);
            let _ = send.send_trailers(ok());
        }
        Mode::Forever | Mode::OneThenSilence => {
            let mut ticks = 0u64;
            loop {
                if (ticks == 0 || matches!(mode, Mode::Forever))
                    && send
                        .send_data(grpc_frame(0, &node(&format!("tick {ticks}"))), false)
                        .is_err()
                {
                    seen.resets.fetch_add(1, Ordering::SeqCst);
                    return;
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
    let answered = client()
        .get(gw.url(&deep))
        .send()
        .await
        .map_err(|e| e.without_url());
    let status = answered.as_ref().map(|r| r.status().as_u16()).ok();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = gw.logs();
    let tail: String = logs
        .chars()
        .skip(logs.chars().count().saturating_sub(600))
        .collect();
    assert!(
        alive(&gw),
        "the gateway died on a deep query parameter: {:?}\n{tail}",
        answered.as_ref().err(),
    );
    assert_eq!(status, Some(400), "{tail}");
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

// ---------------------------------------------------------------------------------------
// Hostile upstreams.

/// The peak resident memory of a process, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_answer_costs_the_gateway_memory_in_proportion_to_its_size() {
    // 4 MiB (gRPC's own default receive limit) of empty Nodes in a repeated field: two
    // bytes each on the wire, 2M elements. 16 MiB, which the gateway takes, cost it 700 MiB.
    let n = 2 << 20;
    let up = h2_upstream(Mode::ManyEmpty(n)).await;
    let set = attack_descriptors();
    let gw = attack_gateway(up.addr, &set).await;
    let before = peak_rss_mib(gw.pid());
    let resp = client()
        .get(gw.url("/v1/fetch/x"))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let _ = resp.bytes().await;
    let grew = peak_rss_mib(gw.pid()).saturating_sub(before);
    assert!(status == 200 || status == 502, "{status}");
    assert!(
        grew < 128,
        "a 4 MiB answer grew the gateway by {grew} MiB (answered {status})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_request_body_costs_the_gateway_memory_in_proportion_to_its_size() {
    // Nothing needs answering: the body is read and decoded before any upstream is called.
    let set = users_descriptors();
    let routes = format!(
        "{}---\n{}",
        upstream("users", free_addr()),
        route("users", set.path(), "users.v1.UserService", "", "")
    );
    let gw = Gateway::builder().file("routes.yaml", routes).start().await;
    // Just under the 4 MiB a transcoded body may have: 830,000 nulls in a Struct's list.
    let body = format!(
        "{{\"profile\": {{\"a\": [{}null]}}}}",
        "null,".repeat(830_000)
    );
    let before = peak_rss_mib(gw.pid());
    let resp = client()
        .post(gw.url("/v1/users"))
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let grew = peak_rss_mib(gw.pid()).saturating_sub(before);
    // A few clients at once multiply it: the body must be refused, or cost little.
    assert!(
        grew < 256,
        "one 4 MiB JSON body grew the gateway by {grew} MiB (answered {status})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_answering_what_no_grpc_server_should_is_a_502_or_504_quickly() {
    let set = attack_descriptors();
    for (mode, want) in [
        (Mode::TwoMessages, 502),
        (Mode::Compressed, 502),
        (Mode::NoTrailers, 502),
        (Mode::Garbage, 502),
        (Mode::ResetAfterHead, 502),
        (Mode::Oversized, 502),
        (Mode::Http500, 500),
        (Mode::HangAfterHead, 504),
    ] {
        let up = h2_upstream(mode).await;
        let gw = attack_gateway(up.addr, &set).await;
        let started = Instant::now();
        let (status, error) = call(&gw, "GET", "/v1/fetch/x", None).await;
        assert_eq!(status, want, "{mode:?}: {error}");
        assert!(error["error"].is_string(), "{mode:?}: {error}");
        // The route's timeouts.read is 1s: nothing waits much longer.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{mode:?} took {:?}",
            started.elapsed()
        );
        assert!(alive(&gw));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_split_across_many_data_frames_is_read_whole() {
    let up = h2_upstream(Mode::OneByteFrames).await;
    let set = attack_descriptors();
    let gw = attack_gateway(up.addr, &set).await;
    let (status, blob) = call(&gw, "GET", "/v1/fetch/x", None).await;
    assert_eq!(status, 200, "{blob}");
    assert_eq!(blob, json!({"items": [{"name": "split"}]}));
    assert_eq!(
        *up.seen.last_path.lock().unwrap(),
        "/attack.v1.Attack/Fetch"
    );
    assert_eq!(*up.seen.last_request.lock().unwrap(), node("x"));
}

/// Reads a streamed answer up to its first element, then hangs up.
async fn read_first_element_and_leave(gw: &Gateway, path: &str) -> String {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&got).contains("tick 0\"}") {
        let mut piece = vec![0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut piece))
            .await
            .expect("the stream's first element within 5s")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&piece[..n]);
    }
    drop(s);
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_leaving_an_endless_server_stream_ends_the_call_upstream() {
    let up = h2_upstream(Mode::Forever).await;
    let set = attack_descriptors();
    let gw = attack_gateway(up.addr, &set).await;
    let head = read_first_element_and_leave(&gw, "/v1/watch/x").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen = up.seen.clone();
    eventually(Duration::from_secs(5), "the upstream call reset", || {
        let seen = seen.clone();
        async move { seen.resets.load(Ordering::SeqCst) == 1 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_leaving_a_quiet_server_stream_ends_the_call_upstream() {
    // A watch that sends when something happens: one Node, then nothing. The route's
    // timeouts.read is what such a stream needs, here 30s; the client leaves at once.
    let up = h2_upstream(Mode::OneThenSilence).await;
    let set = attack_descriptors();
    let routes = format!(
        "{}---\n{}",
        upstream("up", up.addr),
        route("up", set.path(), "attack.v1.Attack", "", "").replace("read: 1s", "read: 30s")
    );
    let gw = Gateway::builder().file("routes.yaml", routes).start().await;
    let head = read_first_element_and_leave(&gw, "/v1/watch/x").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen = up.seen.clone();
    eventually(
        Duration::from_secs(5),
        "the upstream call reset once the client left",
        || {
            let seen = seen.clone();
            async move { seen.resets.load(Ordering::SeqCst) == 1 }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_answer_over_http1_is_framed_so_the_connection_carries_the_next_request() {
    let server = users_server();
    let set = users_descriptors();
    let gw = users_gateway(&server, &set, "").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /v1/users:watch?count=2 HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !got.ends_with(b"]") && !got.ends_with(b"]\r\n0\r\n\r\n") {
        let mut piece = vec![0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, s.read(&mut piece)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        got.extend_from_slice(&piece[..n]);
    }
    let first = String::from_utf8_lossy(&got).into_owned();
    let head = first.to_ascii_lowercase();
    // Neither a length nor chunks: the answer ends when the connection closes, which its
    // own `Connection: keep-alive` says it will not.
    assert!(
        head.contains("transfer-encoding: chunked") || head.contains("connection: close"),
        "a close-delimited answer that says keep-alive:\n{first}"
    );
    if head.contains("connection: close") {
        return;
    }
    s.write_all(b"GET /v1/users/5 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut next = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut next)).await;
    let next = String::from_utf8_lossy(&next);
    assert!(
        next.starts_with("HTTP/1.1 200"),
        "the next request: {next:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Operators' mistakes.

#[tokio::test(flavor = "multi_thread")]
async fn a_rule_binding_the_same_method_and_path_as_another_method_is_refused() {
    // A slip in a rule: `get` where `delete` was meant. GetUser's annotation already binds
    // GET /v1/users/{id}; the rule must not silently take that path over.
    let server = users_server();
    let set = users_descriptors();
    let rules =
        "  rules:\n    - { selector: users.v1.UserService.DeleteUser, get: \"/v1/users/{id}\" }\n";
    let routes = format!(
        "{}---\n{}",
        upstream("users", local(server.port)),
        route("users", set.path(), "users.v1.UserService", rules, "")
    );
    let gw = Gateway::builder().file("routes.yaml", routes).start().await;
    let (status, answer) = call(&gw, "GET", "/v1/users/5", None).await;
    assert_ne!(
        (status, &answer),
        (200, &json!({})),
        "GET /v1/users/5 called DeleteUser"
    );
    let rejected = gw.status().await["rejected"].to_string();
    assert!(
        rejected.contains("/v1/users/{id}"),
        "two methods on GET /v1/users/{{id}}, and no rejection: {rejected}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_streaming_method_or_a_missing_body_field_is_refused_naming_it() {
    let set = attack_descriptors();
    let dead = free_addr();
    for (rule, named) in [
        (
            "    - { selector: attack.v1.Attack.Update, patch: \"/v1/x/{id}\", body: \"nope\" }\n",
            "nope",
        ),
        (
            "    - { selector: attack.v1.Attack.Update, patch: \"/v1/x/{labels}\", body: \"*\" }\n",
            "labels",
        ),
        (
            "    - { selector: attack.v1.Attack.Tree, get: \"/v1/{c}\" }\n",
            "`c`",
        ),
        (
            "    - { selector: attack.v1.Attack.Tree, get: \"/v1/y\", response_body: \"nope\" }\n",
            "nope",
        ),
        (
            "    - { selector: attack.v1.Attack.Fly, get: \"/v1/fly\" }\n",
            "attack.v1.Attack.Fly",
        ),
        (
            "    - { selector: attack.v1.Uploads.Upload, post: \"/v1/up\", body: \"*\" }\n",
            "attack.v1.Uploads.Upload",
        ),
    ] {
        let routes = format!(
            "{}---\n{}",
            upstream("up", dead),
            route(
                "up",
                set.path(),
                "attack.v1.Attack, attack.v1.Uploads",
                &format!("  rules:\n{rule}"),
                ""
            )
        );
        let gw = Gateway::builder().file("routes.yaml", routes).start().await;
        let rejected = gw.status().await["rejected"].to_string();
        assert!(rejected.contains(named), "{rule}: {rejected}");
        assert_eq!(call(&gw, "GET", "/v1/tree", None).await.0, 404);
    }
    // A descriptor set without the service named.
    let routes = format!(
        "{}---\n{}",
        upstream("up", dead),
        route("up", set.path(), "users.v1.UserService", "", "")
    );
    let gw = Gateway::builder().file("routes.yaml", routes).start().await;
    let rejected = gw.status().await["rejected"].to_string();
    assert!(rejected.contains("users.v1.UserService"), "{rejected}");
}

/// A route reading its descriptors by reflection, with `rules` inside `grpc_transcode`.
fn reflected(upstream_id: &str, rules: &str) -> String {
    format!(
        "kind: Route\nid: reflected\nmatch: {{ paths: [\"/v1/**\"] }}\nupstream: {upstream_id}\n\
         timeouts: {{ read: 2s }}\ngrpc_transcode:\n  reflection: true\n  \
         services: [users.v1.UserService]\n  rules:\n{rules}"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reflected_route_whose_new_rules_do_not_resolve_stops_serving_the_rules_it_dropped() {
    let server = users_server();
    let delete =
        "    - { selector: users.v1.UserService.DeleteUser, delete: \"/v1/users/{id}\" }\n";
    let routes = format!(
        "{}---\n{}",
        upstream("users", local(server.port)),
        reflected("users", delete)
    );
    let gw = Gateway::builder().file("routes.yaml", routes).start().await;
    eventually(Duration::from_secs(15), "descriptors read", || async {
        call(&gw, "DELETE", "/v1/users/5", None).await.0 == 200
    })
    .await;

    // The operator takes DELETE away, and in the same edit adds a rule with a typo.
    let typo = "    - { selector: users.v1.UserService.ListUser, get: \"/v1/all\" }\n";
    let rev = gw.status().await["revision"].as_u64().unwrap();
    gw.write_file(
        "routes.yaml",
        &format!(
            "{}---\n{}",
            upstream("users", local(server.port)),
            reflected("users", typo)
        ),
    );
    gw.wait_revision_after(rev).await;
    // The reflection service looks every 250 ms; a read takes a moment.
    eventually(
        Duration::from_secs(10),
        "the reflection read of the new version",
        || async {
            gw.logs()
                .lines()
                .filter(|l| l.contains("do not resolve") || l.contains("read by reflection"))
                .count()
                >= 2
        },
    )
    .await;
    let (status, answer) = call(&gw, "DELETE", "/v1/users/5", None).await;
    let said: Vec<String> = gw
        .logs()
        .lines()
        .filter(|l| l.contains("reflection"))
        .map(|l| l.chars().take(300).collect())
        .collect();
    assert_ne!(
        status,
        200,
        "the binding removed from the route still calls DeleteUser: {answer}\n{}",
        said.join("\n")
    );
}

/// A CA and a certificate it signed for `localhost` (no IP address), by the openssl CLI.
fn certificates(dir: &Path) -> (String, String, String) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "node.key",
        "-out",
        "node.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "node.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "node.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    let path = |name: &str| dir.join(name).display().to_string();
    (path("ca.pem"), path("node.pem"), path("node.key"))
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_over_tls_trusts_and_names_the_node_as_the_calls_do() {
    // A grpcs upstream with a private CA the process trusts (SSL_CERT_FILE) and `tls.sni`:
    // the calls verify it; reading its descriptors by reflection must too.
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(certs.path());
    let server = PythonServer::start(
        &format!("{}/attack/tls_server.py", transcode_dir()),
        &[&cert, &key],
    );
    let set = users_descriptors();
    let upstream = format!(
        "kind: Upstream\nid: users\nscheme: grpcs\ntls: {{ sni: localhost }}\n\
         nodes: [{{ addr: \"127.0.0.1:{}\" }}]\n",
        server.port
    );
    let by_file = format!(
        "{upstream}---\n{}",
        route("users", set.path(), "users.v1.UserService", "", "")
    );
    let gw = Gateway::builder()
        .env("SSL_CERT_FILE", &ca)
        .file("routes.yaml", by_file)
        .start()
        .await;
    let (status, user) = call(&gw, "GET", "/v1/users/7", None).await;
    assert_eq!(status, 200, "the call over TLS: {user}");

    let rev = gw.status().await["revision"].as_u64().unwrap();
    gw.write_file(
        "routes.yaml",
        &format!(
            "{upstream}---\n{}",
            reflected(
                "users",
                "    - { selector: users.v1.UserService.DeleteUser, delete: \"/v1/users/{id}\" }\n"
            )
            .replace("id: reflected", "id: rest")
        ),
    );
    gw.wait_revision_after(rev).await;
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut last = (0, Value::Null);
    while Instant::now() < deadline {
        last = call(&gw, "DELETE", "/v1/users/5", None).await;
        if last.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let why: Vec<String> = gw
        .logs()
        .lines()
        .filter(|l| l.contains("reflection"))
        .map(|l| l.chars().take(400).collect())
        .collect();
    panic!(
        "the reflected route never served: {last:?}\n{}",
        why.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// What holds: hostile paths, queries and bodies refused or read as they should be.

/// A raw HTTP/1.1 request, the target sent as written, `extra` header lines after Host:
/// the status and the body (by its Content-Length).
async fn raw(gw: &Gateway, method: &str, target: &str, extra: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!("{method} {target} HTTP/1.1\r\nHost: gw\r\n{extra}\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = s.write_all(body).await;
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0usize);
            if rest.len() >= length {
                let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                return (status, rest.to_string());
            }
        }
        let mut piece = vec![0u8; 65536];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut piece)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&piece[..n]),
            _ => return (0, text),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rest_call_saying_connection_keep_alive_or_close_is_answered() {
    // What browsers, python-requests (`Connection: keep-alive`) and urllib (`close`) send.
    let server = users_server();
    let set = users_descriptors();
    let gw = users_gateway(&server, &set, "").await;
    assert_eq!(raw(&gw, "GET", "/v1/users/7", "", b"").await.0, 200);
    for connection in ["keep-alive", "close", "Keep-Alive", "keep-alive, x-trace"] {
        let (status, body) = raw(
            &gw,
            "GET",
            "/v1/users/7",
            &format!("Connection: {connection}\r\n"),
            b"",
        )
        .await;
        assert_eq!(status, 200, "Connection: {connection}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_paths_are_normalized_or_refused_before_any_binding() {
    let server = users_server();
    let set = users_descriptors();
    let gw = users_gateway(&server, &set, "").await;
    let long = format!("/v1/users/{}", "a".repeat(40_000));
    let many = format!("/v1/users/1{}", "/a".repeat(10_000));
    for (target, want, id) in [
        ("/v1/users/7", 200, Some("7")),
        ("/v1/users/../users/8", 200, Some("8")),
        ("/v1/users/%2e%2e/users/9", 200, Some("9")),
        ("/v1/users//10", 200, Some("10")),
        ("/v1/users/%31%31", 200, Some("11")),
        ("/v1/users/1%2F2", 400, None),
        ("/v1/users/1%5C2", 400, None),
        ("/v1/users/..", 404, None),
        ("/v1/users/7;x", 400, None),
        ("/v1/users/7:watch", 400, None),
        ("/v1/users:watch:x", 404, None),
        ("/v1/users:", 404, None),
        ("/v1/users/:watch", 400, None),
        ("/v1/users/%00", 400, None),
        ("/v1/users/-1", 200, Some("-1")),
        ("/v1/users/9223372036854775808", 400, None),
        (long.as_str(), 431, None),
        (many.as_str(), 404, None),
    ] {
        let started = Instant::now();
        let (status, body) = raw(&gw, "GET", target, "", b"").await;
        let shown: String = target.chars().take(60).collect();
        assert_eq!(status, want, "{shown}: {body}");
        if let Some(id) = id {
            let user: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(user["id"], id, "{shown}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{shown} was slow"
        );
    }
    assert!(alive(&gw));
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_queries_are_read_or_refused_quickly() {
    let server = users_server();
    let set = users_descriptors();
    let gw = users_gateway(&server, &set, "").await;

    // Four thousand values of one repeated field: all arrive.
    let tags = "tags=x&".repeat(4_000);
    let (status, list) = call(&gw, "GET", &format!("/v1/users?{tags}page_size=1"), None).await;
    assert_eq!(status, 200);
    assert_eq!(list["users"][0]["tags"].as_array().unwrap().len(), 4_000);

    // `+` is a space, as in any form; `%00` is a character like another.
    let (_, user) = call(&gw, "GET", "/v1/users/7?view=a+b%2Bc", None).await;
    assert_eq!(user["nickname"], "a b+c");

    for (query, named) in [
        ("nope=1&".repeat(4_000) + "x=1", "nope"),
        ("filter.city.x=1".to_string(), "city"),
        ("filter=1".to_string(), "filter"),
        ("tags.x=1".to_string(), "tags"),
        ("id=8".to_string(), "id"),
        ("=1".to_string(), ""),
        ("page_size=99999999999".to_string(), "page_size"),
        ("role=99999999999".to_string(), "role"),
    ] {
        let path = if query.starts_with("id=") {
            format!("/v1/users/7?{query}")
        } else {
            format!("/v1/users?{query}")
        };
        let started = Instant::now();
        let (status, error) = call(&gw, "GET", &path, None).await;
        let shown: String = query.chars().take(40).collect();
        assert_eq!(status, 400, "{shown}: {error}");
        assert!(
            error["message"].as_str().unwrap_or("").contains(named),
            "{shown}: {error}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{shown} was slow"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_json_bodies_are_refused_naming_the_field() {
    let server = users_server();
    let set = users_descriptors();
    let gw = users_gateway(&server, &set, "").await;
    for (body, named) in [
        (r#"{"visits": "18446744073709551616"}"#, "visits"),
        (r#"{"visits": -1}"#, "visits"),
        (r#"{"id": 1e400}"#, ""),
        (r#"{"id": 1.5}"#, "id"),
        (r#"{"id": "NaN"}"#, "id"),
        (r#"{"active": "Infinity"}"#, "active"),
        (r#"{"createdAt": 5}"#, "createdAt"),
        (r#"{"createdAt": "yesterday"}"#, "createdAt"),
        (r#"{"sessionTtl": "forever"}"#, "sessionTtl"),
        (r#"{"nickname": {"value": "x"}}"#, "nickname"),
        (r#"{"profile": [1]}"#, "profile"),
        (r#"{"avatar": "not base64!"}"#, "avatar"),
        (r#"{"tags": [null, 1]}"#, "tags"),
        (r#"{"displayName": "a"} {"displayName": "b"}"#, ""),
        (r#"[{"displayName": "a"}]"#, ""),
        ("\"just a string\"", ""),
    ] {
        let (status, error) = call(&gw, "POST", "/v1/users", Some(body)).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert!(
            error["message"].as_str().unwrap_or("").contains(named),
            "{body}: {error}"
        );
    }
    // Big integers within range arrive exactly, whether quoted or not.
    let (status, user) = call(
        &gw,
        "POST",
        "/v1/users",
        Some(r#"{"visits": 18446744073709551615, "displayName": "\u0000x"}"#),
    )
    .await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["visits"], "18446744073709551615");
    assert_eq!(user["displayName"], "\u{0}x");
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_chunked_oversized_unfinished_or_on_a_get_are_handled() {
    let server = users_server();
    let set = users_descriptors();
    let gw = users_gateway(&server, &set, "").await;

    // Chunked, in pieces.
    let (status, body) = raw(
        &gw,
        "POST",
        "/v1/users",
        "content-type: application/json\r\ntransfer-encoding: chunked\r\n",
        b"5\r\n{\"dis\r\n13\r\nplayName\": \"Chunk\"}\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"displayName\":\"Chunk\""), "{body}");

    // A body on a GET bound with none is not read into the message.
    let (status, body) = raw(
        &gw,
        "GET",
        "/v1/users/7",
        "content-type: application/json\r\ncontent-length: 16\r\n",
        br#"{"id": "999999"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"id\":\"7\""), "{body}");

    // Over the 4 MiB a transcoded body may have.
    let big = vec![b' '; (4 << 20) + 10];
    let (status, body) = raw(
        &gw,
        "POST",
        "/v1/users",
        &format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            big.len()
        ),
        &big,
    )
    .await;
    assert_eq!(status, 413, "{body}");

    // A body that never finishes: refused after timeouts.read (1s), not held.
    let started = Instant::now();
    let (status, body) = raw(
        &gw,
        "POST",
        "/v1/users",
        "content-type: application/json\r\ncontent-length: 100\r\n",
        b"{\"displayName\":",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(alive(&gw));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_field_given_twice_in_a_json_body_is_refused() {
    // The proto3 JSON conformance suite's FieldNameDuplicate and
    // FieldNameDuplicateDifferentCasing cases: a parser must refuse them, or what a body
    // plugin reads first and what the method gets last differ.
    let server = users_server();
    let set = users_descriptors();
    let gw = users_gateway(&server, &set, "").await;
    for body in [
        r#"{"displayName": "checked", "displayName": "other"}"#,
        r#"{"display_name": "checked", "displayName": "other"}"#,
    ] {
        let (status, user) = call(&gw, "POST", "/v1/users", Some(body)).await;
        assert_eq!(
            status, 400,
            "{body} reached the method as {}",
            user["displayName"]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_header_refused_on_the_call_does_not_eject_a_healthy_node() {
    // One client's `Connection: keep-alive` must not take the node away from every client.
    let server = users_server();
    let set = users_descriptors();
    let routes = format!(
        "{}health_check: {{ passive: {{ max_fails: 3, fail_timeout: 30s }} }}\n---\n{}",
        upstream("users", local(server.port)),
        route("users", set.path(), "users.v1.UserService", "", "")
    );
    let gw = Gateway::builder().file("routes.yaml", routes).start().await;
    assert_eq!(call(&gw, "GET", "/v1/users/7", None).await.0, 200);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (status, _) = raw(&gw, "GET", "/v1/users/7", "Connection: keep-alive\r\n", b"").await;
        statuses.push(status);
    }
    let (status, answer) = call(&gw, "GET", "/v1/users/7", None).await;
    assert_eq!(
        status, 200,
        "after {statuses:?} for one client's header, another client gets: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_answering_garbage_or_endless_imports_is_refused_and_retried_calmly() {
    for mode in [Mode::ReflectGarbage, Mode::ReflectEndlessImports] {
        let up = h2_upstream(mode).await;
        let routes = format!(
            "{}---\n{}",
            upstream("users", up.addr),
            reflected(
                "users",
                "    - { selector: users.v1.UserService.DeleteUser, delete: \"/v1/users/{id}\" }\n"
            )
        );
        let gw = Gateway::builder().file("routes.yaml", routes).start().await;
        let started = Instant::now();
        eventually(
            Duration::from_secs(10),
            "a failed reflection read",
            || async {
                gw.logs()
                    .contains("reading descriptors by reflection failed")
            },
        )
        .await;
        let (status, error) = call(&gw, "DELETE", "/v1/users/5", None).await;
        assert_eq!(
            (status, &error["error"]),
            (503, &json!("no_upstream")),
            "{mode:?}"
        );
        // A read is at most nine exchanges (the services' files, then eight rounds of
        // imports), tried again 3 s after it fails: not a loop on the upstream.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let calls = up.seen.calls.load(Ordering::SeqCst);
        let seconds = started.elapsed().as_secs() + 1;
        assert!(
            calls <= 9 * (seconds as usize / 3 + 1),
            "{mode:?}: {calls} reflection calls in {seconds}s"
        );
        assert!(calls >= 1, "{mode:?}");
        let said = gw.logs();
        let line = said
            .lines()
            .find(|l| l.contains("reading descriptors by reflection failed"))
            .unwrap_or_default();
        match mode {
            Mode::ReflectEndlessImports => assert!(line.contains("imports"), "{line}"),
            _ => assert!(line.contains("error="), "{line}"),
        }
        assert!(alive(&gw));
    }
}
