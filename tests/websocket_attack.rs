//! Attack tests of the WebSocket support: upgrade smuggling, the tunnel gauge, idle
//! timeouts from each side, refusals of the handshake, passive health after tunnels end,
//! and HTTP/2 CONNECT. A raw upstream (below) answers by the request path, so every case
//! controls exactly what the gateway sees.

mod common;

use common::{eventually, Gateway};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SWITCH: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

/// A raw HTTP/1.1 upstream. What it does depends on the request path:
/// `/always101` answers 101 (asked or not) then echoes `ECHO:<bytes>`; `/ok200` answers 200
/// and keeps the connection; `/close101` answers 101 and closes; `/rst101` answers 101 and
/// resets; `/slow101` waits 1.5 s before a 101 and echo; `/sink` answers 101 and never
/// writes again; `/push` answers 101 and writes a frame every 500 ms. `forced` overrides
/// the path (`502`: answers 502 to everything).
struct RawUp {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    tunnel: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0)
}

impl RawUp {
    async fn start(forced: Option<&'static str>) -> RawUp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let tunnel = Arc::new(Mutex::new(Vec::new()));
        let (h, t) = (heads.clone(), tunnel.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let (h, t) = (h.clone(), t.clone());
                tokio::spawn(async move {
                    let _ = serve(s, h, t, forced).await;
                });
            }
        });
        RawUp {
            addr,
            heads,
            tunnel,
            task,
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    fn tunnel(&self) -> String {
        String::from_utf8_lossy(&self.tunnel.lock().unwrap()).to_string()
    }
}

async fn serve(
    mut s: TcpStream,
    heads: Arc<Mutex<Vec<String>>>,
    tunnel: Arc<Mutex<Vec<u8>>>,
    forced: Option<&'static str>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let Some(head) = read_head(&mut s, &mut buf).await else {
            return Ok(());
        };
        heads.lock().unwrap().push(head.clone());
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let mode = forced.unwrap_or_else(|| {
            [
                "always101",
                "ok200",
                "close101",
                "rst101",
                "slow101",
                "sink",
                "push",
            ]
            .into_iter()
            .find(|m| path.contains(&format!("/{m}")))
            .unwrap_or("ok200")
        });
        match mode {
            "502" => {
                s.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                    .await?;
                continue;
            }
            "ok200" => {
                let want = content_length(&head);
                while buf.len() < want {
                    let mut chunk = [0u8; 4096];
                    let n = s.read(&mut chunk).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body: Vec<u8> = buf.drain(..want).collect();
                tunnel.lock().unwrap().extend_from_slice(&body);
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await?;
                continue;
            }
            "slow101" => {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            _ => {}
        }
        s.write_all(SWITCH).await?;
        match mode {
            "close101" => return Ok(()),
            "rst101" => {
                let _ = s.set_zero_linger();
                drop(s);
                return Ok(());
            }
            "push" => loop {
                s.write_all(&[0x81, 4, b'p', b'u', b's', b'h']).await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
            },
            "sink" => loop {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                tunnel.lock().unwrap().extend_from_slice(&chunk[..n]);
            },
            _ => {
                // echo, with whatever came with the head first
                if !buf.is_empty() {
                    tunnel.lock().unwrap().extend_from_slice(&buf);
                    let mut out = b"ECHO:".to_vec();
                    out.extend_from_slice(&buf);
                    s.write_all(&out).await?;
                    buf.clear();
                }
                loop {
                    let mut chunk = [0u8; 4096];
                    let n = s.read(&mut chunk).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    tunnel.lock().unwrap().extend_from_slice(&chunk[..n]);
                    let mut out = b"ECHO:".to_vec();
                    out.extend_from_slice(&chunk[..n]);
                    s.write_all(&out).await?;
                }
            }
        }
    }
}

fn handshake(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Reads one response head from the gateway: (status, head, bytes after it).
async fn response(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let head = tokio::time::timeout(Duration::from_secs(10), read_head(s, &mut buf))
        .await
        .expect("a response head within 10s")
        .unwrap_or_default();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, buf)
}

/// Reads whatever comes within `wait`.
async fn read_for(s: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

fn open_tunnels(metrics: &str, route: &str) -> i64 {
    let prefix = format!("gatehouse_websocket_connections{{route=\"{route}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn upstream(id: &str, addrs: &[SocketAddr], extra: &str) -> String {
    let nodes: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{ addr: \"{a}\" }}"))
        .collect();
    format!(
        "kind: Upstream\nid: {id}\nnodes: [{}]\n{extra}---\n",
        nodes.join(", ")
    )
}

fn route(id: &str, path: &str, up: &str, extra: &str) -> String {
    format!("kind: Route\nid: {id}\nmatch: {{ paths: [\"{path}\"] }}\nupstream: {up}\n{extra}---\n")
}

async fn connect(gw: &Gateway) -> TcpStream {
    TcpStream::connect(gw.addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_101_nobody_asked_for_is_refused() {
    let up = RawUp::start(None).await;
    let routes = upstream("raw", &[up.addr], "")
        + &route("plain", "/plain/**", "raw", "")
        + &route("ws", "/ws/**", "raw", "websocket: true\n");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;

    // A handshake on a route without websocket: the upstream sees a plain GET and answers 101.
    let mut s = connect(&gw).await;
    s.write_all(handshake("/plain/always101", "").as_bytes())
        .await
        .unwrap();
    let (status, head, _) = response(&mut s).await;
    eprintln!("plain route, handshake, upstream 101: {head}");
    assert_eq!(status, 502, "{head}");
    s.write_all(b"SMUGGLED").await.unwrap();
    let (after, closed) = read_for(&mut s, Duration::from_secs(1)).await;
    assert!(
        !String::from_utf8_lossy(&after).contains("ECHO"),
        "no tunnel: {after:?}"
    );
    eprintln!("closed after the 502: {closed}");
    let seen = up.heads();
    assert!(
        !seen[0].to_ascii_lowercase().contains("upgrade"),
        "{seen:?}"
    );

    // Not a handshake (no Upgrade) on a websocket route, upstream answers 101.
    let mut s = connect(&gw).await;
    s.write_all(b"GET /ws/always101 HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let (status, head, _) = response(&mut s).await;
    assert_eq!(status, 502, "{head}");

    // HTTP/1.0 handshake, POST handshake, and `Connection: upgrade` alone: no upgrade goes on.
    for (req, what) in [
        (
            "GET /ws/ok200 HTTP/1.0\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "http/1.0",
        ),
        (
            "POST /ws/ok200 HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 2\r\n\r\nhi",
            "post",
        ),
        (
            "GET /ws/ok200 HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\n\r\n",
            "connection only",
        ),
        (
            "GET /ws/ok200 HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n\r\n",
            "upgrade only",
        ),
        (
            "GET /ws/ok200 HTTP/1.1\r\nHost: gw\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
            "h2c",
        ),
    ] {
        let before = up.heads().len();
        let mut s = connect(&gw).await;
        s.write_all(req.as_bytes()).await.unwrap();
        let (status, head, _) = response(&mut s).await;
        assert_eq!(status, 200, "{what}: {head}");
        let seen = up.heads()[before..].join("");
        let lower = seen.to_ascii_lowercase();
        assert!(
            !lower.contains("upgrade") && !lower.contains("http2-settings"),
            "{what}: upstream saw {seen}"
        );
    }
    assert_eq!(open_tunnels(&gw.metrics_text().await, "ws"), 0);
    assert_eq!(open_tunnels(&gw.metrics_text().await, "plain"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handshake_answered_200_leaves_a_plain_connection_for_the_next_request() {
    let up = RawUp::start(None).await;
    let routes =
        upstream("raw", &[up.addr], "") + &route("ws", "/ws/**", "raw", "websocket: true\n");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;

    // The handshake answered 200 (with its body read), then the next request on the same
    // connection. (Pipelining in one write is not served by the gateway on any route:
    // see `pipelining_baselines`.)
    let mut s = connect(&gw).await;
    s.write_all(handshake("/ws/ok200", "").as_bytes())
        .await
        .unwrap();
    let (status, head, rest) = response(&mut s).await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(rest, b"ok");
    s.write_all(b"GET /ws/ok200/second HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let (more, closed) = read_for(&mut s, Duration::from_secs(2)).await;
    let rest = String::from_utf8_lossy(&more).to_string();
    eprintln!("after the refused upgrade: {rest:?} closed={closed}");
    assert!(rest.contains("HTTP/1.1 200"), "the next request: {rest:?}");
    let seen = up.heads();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        !seen[1].to_ascii_lowercase().contains("upgrade"),
        "{seen:?}"
    );

    // Frames sent right after a refused handshake are a malformed request, not tunnel data.
    let mut s = connect(&gw).await;
    let mut raw = handshake("/ws/ok200", "").into_bytes();
    raw.extend_from_slice(&[
        0x81,
        0x85,
        1,
        2,
        3,
        4,
        b'h' ^ 1,
        b'e' ^ 2,
        b'l' ^ 3,
        b'l' ^ 4,
        b'o' ^ 1,
    ]);
    s.write_all(&raw).await.unwrap();
    let (status, _, _) = response(&mut s).await;
    assert_eq!(status, 200);
    let (more, closed) = read_for(&mut s, Duration::from_secs(2)).await;
    eprintln!(
        "frame after refused handshake: {:?} closed={closed}",
        String::from_utf8_lossy(&more)
    );
    assert!(
        up.tunnel().is_empty(),
        "no frame reached the upstream: {:?}",
        up.tunnel()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handshake_with_a_body() {
    let up = RawUp::start(None).await;
    let routes =
        upstream("raw", &[up.addr], "") + &route("ws", "/ws/**", "raw", "websocket: true\n");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;

    let mut s = connect(&gw).await;
    let req = handshake("/ws/always101", "Content-Length: 5\r\n") + "hello";
    s.write_all(req.as_bytes()).await.unwrap();
    let (status, head, rest) = response(&mut s).await;
    eprintln!("handshake with a body: {head}");
    s.write_all(b"FRAME").await.unwrap();
    let (more, _) = read_for(&mut s, Duration::from_secs(1)).await;
    eprintln!(
        "status {status}; upstream head {:?}; tunnel {:?}; client got {:?}",
        up.heads(),
        up.tunnel(),
        String::from_utf8_lossy(&[rest, more].concat())
    );

    // Chunked body cut by the 101.
    let mut s = connect(&gw).await;
    let req = handshake("/ws/always101", "Transfer-Encoding: chunked\r\n") + "5\r\nhel";
    s.write_all(req.as_bytes()).await.unwrap();
    let (status, _, rest) = response(&mut s).await;
    s.write_all(b"lo\r\n0\r\n\r\nAFTER").await.unwrap();
    let (more, _) = read_for(&mut s, Duration::from_secs(1)).await;
    eprintln!(
        "chunked: status {status}; tunnel {:?}; client got {:?}",
        up.tunnel(),
        String::from_utf8_lossy(&[rest, more].concat())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gauge_returns_to_zero_however_a_tunnel_ends() {
    let up = RawUp::start(None).await;
    let bad = RawUp::start(Some("502")).await;
    let routes = upstream("raw", &[up.addr], "")
        + &upstream("mixed", &[bad.addr, up.addr], "")
        + &route("ws", "/ws/**", "raw", "websocket: true\n")
        + &route(
            "retry",
            "/retry/**",
            "mixed",
            "websocket: true\nretries: 1\n",
        );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let gauge = |route: &'static str| {
        let gw = &gw;
        async move { open_tunnels(&gw.metrics_text().await, route) }
    };

    // An open tunnel is counted.
    let mut s = connect(&gw).await;
    s.write_all(handshake("/ws/always101", "").as_bytes())
        .await
        .unwrap();
    assert_eq!(response(&mut s).await.0, 101);
    assert_eq!(gauge("ws").await, 1);
    drop(s);
    eventually(
        Duration::from_secs(5),
        "uncounted after client FIN",
        || async { gauge("ws").await == 0 },
    )
    .await;

    // 101 then the upstream closes at once / resets.
    for path in ["/ws/close101", "/ws/rst101"] {
        let mut s = connect(&gw).await;
        s.write_all(handshake(path, "").as_bytes()).await.unwrap();
        let (status, head, _) = response(&mut s).await;
        let (_, closed) = read_for(&mut s, Duration::from_secs(3)).await;
        eprintln!("{path}: {status} closed={closed} {head}");
        assert!(closed, "{path}: the client's side closes too");
    }
    eventually(
        Duration::from_secs(5),
        "uncounted after upstream close",
        || async { gauge("ws").await == 0 },
    )
    .await;

    // The client goes away during the handshake (before the 101 comes).
    let mut s = connect(&gw).await;
    s.write_all(handshake("/ws/slow101", "").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    eventually(
        Duration::from_secs(5),
        "uncounted after a gone client",
        || async { gauge("ws").await == 0 },
    )
    .await;

    // The client resets the tunnel.
    let mut s = connect(&gw).await;
    s.write_all(handshake("/ws/always101", "").as_bytes())
        .await
        .unwrap();
    assert_eq!(response(&mut s).await.0, 101);
    s.set_zero_linger().unwrap();
    drop(s);
    eventually(
        Duration::from_secs(5),
        "uncounted after client RST",
        || async { gauge("ws").await == 0 },
    )
    .await;

    // Retries: one node answers 502, the other upgrades.
    for _ in 0..4 {
        let mut s = connect(&gw).await;
        s.write_all(handshake("/retry/always101", "").as_bytes())
            .await
            .unwrap();
        let (status, head, _) = response(&mut s).await;
        assert_eq!(status, 101, "{head}");
        assert_eq!(gauge("retry").await, 1);
        s.write_all(b"x").await.unwrap();
        let (got, _) = read_for(&mut s, Duration::from_millis(300)).await;
        assert_eq!(got, b"ECHO:x");
        drop(s);
        eventually(Duration::from_secs(5), "retry uncounted", || async {
            gauge("retry").await == 0
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tunnel_ending_does_not_eject_its_node() {
    let up = RawUp::start(None).await;
    let passive = "health_check: { passive: { max_fails: 1, fail_timeout: 3s } }\n";
    let routes = upstream("raw", &[up.addr], passive)
        + &route(
            "ws",
            "/ws/**",
            "raw",
            "websocket: true\ntimeouts: { idle: 1s }\n",
        )
        + &route("plain", "/plain/**", "raw", "");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let plain = || async { common::status_of(&gw, "/plain/ok200").await };
    assert_eq!(plain().await, 200);

    let mut outcome = Vec::new();
    // (a) The client closes the tunnel cleanly (FIN).
    let mut s = connect(&gw).await;
    s.write_all(handshake("/ws/always101", "").as_bytes())
        .await
        .unwrap();
    assert_eq!(response(&mut s).await.0, 101);
    s.shutdown().await.unwrap();
    let (_, closed) = read_for(&mut s, Duration::from_secs(2)).await;
    eprintln!("FIN: gateway closed too: {closed}");
    drop(s);
    tokio::time::sleep(Duration::from_millis(500)).await;
    outcome.push(("client FIN", plain().await));
    tokio::time::sleep(Duration::from_millis(3500)).await;

    // (b) The client resets the tunnel.
    let mut s = connect(&gw).await;
    s.write_all(handshake("/ws/always101", "").as_bytes())
        .await
        .unwrap();
    assert_eq!(response(&mut s).await.0, 101);
    s.set_zero_linger().unwrap();
    drop(s);
    tokio::time::sleep(Duration::from_millis(500)).await;
    outcome.push(("client RST", plain().await));
    tokio::time::sleep(Duration::from_millis(3500)).await;

    // (c) A silent tunnel closed by timeouts.idle, as configured.
    let mut s = connect(&gw).await;
    s.write_all(handshake("/ws/sink", "").as_bytes())
        .await
        .unwrap();
    assert_eq!(response(&mut s).await.0, 101);
    let (_, closed) = read_for(&mut s, Duration::from_secs(4)).await;
    assert!(closed, "idle closes the tunnel");
    tokio::time::sleep(Duration::from_millis(300)).await;
    outcome.push(("idle timeout", plain().await));

    eprintln!("plain GET after each tunnel end: {outcome:?}");
    for (what, status) in &outcome {
        assert_eq!(
            *status, 200,
            "after {what} the node was ejected: {outcome:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tunnel_where_only_the_client_talks_is_not_idle() {
    let up = RawUp::start(None).await;
    let routes = upstream("raw", &[up.addr], "")
        + &route(
            "ws",
            "/ws/**",
            "raw",
            "websocket: true\ntimeouts: { idle: 2s }\n",
        );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;

    let mut s = connect(&gw).await;
    s.write_all(handshake("/ws/sink", "").as_bytes())
        .await
        .unwrap();
    assert_eq!(response(&mut s).await.0, 101);
    let started = Instant::now();
    let mut closed_after = None;
    while started.elapsed() < Duration::from_secs(6) {
        if s.write_all(&[0x81, 0x81, 0, 0, 0, 0, b'x']).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let (_, closed) = read_for(&mut s, Duration::from_millis(300)).await;
        if closed {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    eprintln!(
        "client sending every 300ms, upstream silent, idle 2s: closed after {closed_after:?}; upstream got {} bytes",
        up.tunnel().len()
    );
    assert_eq!(
        closed_after, None,
        "a tunnel with traffic was cut as idle after {closed_after:?}"
    );
}

/// Long (about 70 s): a tunnel where only the upstream talks, with the default idle (1 h).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "takes 70 s: cargo nextest run --run-ignored only"]
async fn a_tunnel_where_only_the_upstream_talks_outlives_a_minute() {
    let up = RawUp::start(None).await;
    let routes =
        upstream("raw", &[up.addr], "") + &route("ws", "/ws/**", "raw", "websocket: true\n");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;

    let mut s = connect(&gw).await;
    s.write_all(handshake("/ws/push", "").as_bytes())
        .await
        .unwrap();
    assert_eq!(response(&mut s).await.0, 101);
    let started = Instant::now();
    let mut frames = 0usize;
    let mut closed_after = None;
    while started.elapsed() < Duration::from_secs(70) {
        let (got, closed) = read_for(&mut s, Duration::from_secs(1)).await;
        frames += got.len() / 6;
        if closed {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    eprintln!("upstream pushing, client silent: {frames} frames, closed after {closed_after:?}");
    assert_eq!(
        closed_after, None,
        "a tunnel with traffic was cut after {closed_after:?} (timeouts.idle is 1h)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_handshake_opens_nothing() {
    let up = RawUp::start(None).await;
    let routes = upstream("raw", &[up.addr], "")
        + &route(
            "ws",
            "/ws/**",
            "raw",
            "websocket: true\nrate_limit: { rate: 1, per: 1m, burst: 1 }\n",
        );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;

    let mut s = connect(&gw).await;
    s.write_all(handshake("/ws/always101", "").as_bytes())
        .await
        .unwrap();
    assert_eq!(response(&mut s).await.0, 101);
    drop(s);
    let mut s = connect(&gw).await;
    s.write_all(handshake("/ws/always101", "").as_bytes())
        .await
        .unwrap();
    let (status, head, _) = response(&mut s).await;
    eprintln!("refused: {head}");
    assert_eq!(status, 429);
    assert!(!head.to_ascii_lowercase().contains("upgrade:"), "{head}");
    assert_eq!(up.heads().len(), 1);
    eventually(Duration::from_secs(5), "gauge 0", || async {
        open_tunnels(&gw.metrics_text().await, "ws") == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_connect_opens_no_tunnel() {
    let up = RawUp::start(None).await;
    let routes =
        upstream("raw", &[up.addr], "") + &route("ws", "/ws/**", "raw", "websocket: true\n");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;

    let tcp = connect(&gw).await;
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    // Settings arrive with the first exchange.
    let req = http::Request::get(format!("http://{}/ws/ok200", gw.addr))
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    eprintln!("h2 plain GET: {}", resp.status());
    let mut client = client.ready().await.unwrap();
    let extended = client.is_extended_connect_protocol_enabled();
    eprintln!("extended CONNECT enabled: {extended}");

    // Extended CONNECT (RFC 8441), sent whatever the server said.
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{}/ws/always101", gw.addr))
        .extension(h2::ext::Protocol::from("websocket"))
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    match client.send_request(req, false) {
        Ok((resp, _send)) => match tokio::time::timeout(Duration::from_secs(5), resp).await {
            Ok(Ok(r)) => {
                eprintln!("extended CONNECT answered {}", r.status());
                assert_ne!(r.status(), 200, "an extended CONNECT tunnel opened");
            }
            other => eprintln!("extended CONNECT: {other:?}"),
        },
        Err(e) => eprintln!("extended CONNECT not sendable: {e}"),
    }

    // Plain CONNECT.
    let mut client = client.ready().await.unwrap();
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(up.addr.to_string())
        .body(())
        .unwrap();
    match client.send_request(req, false) {
        Ok((resp, _send)) => match tokio::time::timeout(Duration::from_secs(5), resp).await {
            Ok(Ok(r)) => {
                eprintln!("CONNECT answered {}", r.status());
                assert_ne!(r.status(), 200);
            }
            other => eprintln!("CONNECT: {other:?}"),
        },
        Err(e) => eprintln!("CONNECT not sendable: {e}"),
    }
    // HTTP/1.1 CONNECT.
    let mut s = connect(&gw).await;
    s.write_all(format!("CONNECT {} HTTP/1.1\r\nHost: {}\r\n\r\n", up.addr, up.addr).as_bytes())
        .await
        .unwrap();
    let (status, head, _) = response(&mut s).await;
    eprintln!("h1 CONNECT: {head}");
    assert_ne!(status, 200);
    assert!(
        up.heads().iter().all(|h| !h.starts_with("CONNECT")),
        "{:?}",
        up.heads()
    );
    assert_eq!(open_tunnels(&gw.metrics_text().await, "ws"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelining_baselines() {
    let up = RawUp::start(None).await;
    let routes = upstream("raw", &[up.addr], "")
        + &route("ws", "/ws/**", "raw", "websocket: true\n")
        + &route("plain", "/plain/**", "raw", "");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    for (what, first) in [
        (
            "plain GET",
            "GET /plain/ok200 HTTP/1.1\r\nHost: gw\r\n\r\n".to_string(),
        ),
        ("handshake on plain route", handshake("/plain/ok200", "")),
        ("handshake on ws route", handshake("/ws/ok200", "")),
    ] {
        let before = up.heads().len();
        let mut s = connect(&gw).await;
        let both = first + "GET /plain/ok200/second HTTP/1.1\r\nHost: gw\r\n\r\n";
        s.write_all(both.as_bytes()).await.unwrap();
        let (got, closed) = read_for(&mut s, Duration::from_secs(2)).await;
        let got = String::from_utf8_lossy(&got);
        eprintln!(
            "{what}: {} answers, closed={closed}, upstream saw {}",
            got.matches("HTTP/1.1 200").count(),
            up.heads().len() - before
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_handshake_answer_is_bound_by_the_shorter_of_read_and_idle() {
    let up = RawUp::start(None).await;
    let routes = upstream("raw", &[up.addr], "")
        + &route(
            "ws",
            "/ws/**",
            "raw",
            "websocket: true\ntimeouts: { idle: 1s, read: 10s }\n",
        );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let mut s = connect(&gw).await;
    s.write_all(handshake("/ws/slow101", "").as_bytes())
        .await
        .unwrap();
    let (status, head, _) = response(&mut s).await;
    eprintln!("101 after 1.5 s with idle 1s, read 10s: {head}");
    // Each read of the upgrade's answer waits at most `timeouts.idle` (documented), like
    // every read of the tunnel after it.
    assert_eq!(status, 504, "{head}");
}
