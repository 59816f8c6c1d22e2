//! Edge safety (SPEC §8) through the real binary: every spelling of a protected path, slow
//! and malformed clients, connection caps, and the headers a client must not shape.

mod common;

use common::{client, closed_within, Echo, Gateway, TestUpstream};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// `/admin/**` → upstream `a`, everything else → upstream `b`.
async fn admin_and_public(extra_config: &str) -> (Gateway, TestUpstream, TestUpstream) {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let routes = r#"
kind: Route
id: admin
match: { paths: ["/admin/**"] }
upstream: a
---
kind: Route
id: public
match: { paths: ["/**"] }
upstream: b
"#;
    let gw = Gateway::builder()
        .file(
            "upstreams.yaml",
            format!("{}---\n{}", a.resource("a"), b.resource("b")),
        )
        .file("routes.yaml", routes)
        .config(extra_config)
        .start()
        .await;
    (gw, a, b)
}

/// One raw exchange: writes `bytes`, reads until the gateway closes (or 5 s pass).
fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn header_of<'r>(response: &'r str, name: &str) -> Option<&'r str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn echo_of(response: &str) -> Echo {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not an echo ({e}): {response}"))
}

const BYPASSES: &[&str] = &[
    "//admin/x",
    "/%61dmin/x",
    "/admin%2Fx",
    "/%2Fadmin/x",
    "/public/.%2e/admin/x",
    "/public/%2e./admin/x",
    "/public/%2E%2E/admin/x",
    "/public/../admin/x",
    "/public/..%2fadmin/x",
    "/public/..;/admin/x",
    "/admin;x",
    "/admin;/x",
    "/admin\\x",
];

/// Each spelling is refused (400) or reaches the route it names, with the path that route
/// matched: never the public upstream.
fn assert_not_bypassed(path: &str, response: &str, how: &str) {
    let status = status_of(response);
    let upstream = header_of(response, "x-upstream");
    assert!(
        status == 400 || upstream == Some("a"),
        "{how} {path}: reached {upstream:?} with {status}:\n{response}"
    );
    if status == 400 {
        assert!(response.contains("\"error\":\"bad_request\""), "{response}");
    } else {
        assert_eq!(echo_of(response).path, "/admin/x", "{how} {path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_spelling_of_a_path_reaches_a_route_it_does_not_name() {
    let (gw, _a, b) = admin_and_public("").await;
    let addr = gw.addr;
    for path in BYPASSES {
        let h11 = raw(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_not_bypassed(path, &h11, "HTTP/1.1");
        let h10 = raw(addr, format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
        assert_not_bypassed(path, &h10, "HTTP/1.0");
        let absolute = raw(
            addr,
            format!("GET http://x{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert_not_bypassed(path, &absolute, "absolute-form");
    }
    assert_eq!(b.hits(), 0, "the public upstream saw a protected path");

    // What was matched is what is forwarded; the query is never touched.
    let normal = raw(
        addr,
        b"GET /admin//./x?q=%2F..%2f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(echo_of(&normal).path, "/admin/x?q=%2F..%2f");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_spelling_of_a_path_reaches_a_route_it_does_not_name_over_h2c() {
    let (gw, _a, b) = admin_and_public("").await;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    // `\` cannot be written in an HTTP/2 `:path` by this client library: HTTP/1 covers it.
    for path in BYPASSES.iter().filter(|p| !p.contains('\\')) {
        let req = http::Request::get(format!("http://x{path}"))
            .body(())
            .unwrap();
        let (resp, _) = h2.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        let status = resp.status().as_u16();
        let upstream = resp
            .headers()
            .get("x-upstream")
            .map(|v| v.to_str().unwrap().to_string());
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        assert!(
            status == 400 || upstream.as_deref() == Some("a"),
            "h2c {path}: reached {upstream:?} with {status}"
        );
        if status != 400 {
            let echo: Echo = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(echo.path, "/admin/x", "h2c {path}");
        }
        h2 = h2.ready().await.unwrap();
    }
    assert_eq!(
        b.hits(),
        0,
        "the public upstream saw a protected path over h2c"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_may_match_paths_in_any_case() {
    let a = TestUpstream::start("a").await;
    let routes = r#"
kind: Route
id: docs
match: { paths: ["/Docs/**"], case_insensitive: true }
upstream: a
---
kind: Route
id: exact
match: { paths: ["/Exact"] }
direct_response: { status: 200, body: "exact" }
"#;
    let gw = Gateway::builder()
        .file("upstreams.yaml", a.resource("a"))
        .file("routes.yaml", routes)
        .start()
        .await;
    let c = client();
    for path in ["/docs/x", "/DOCS/x", "/Docs/x"] {
        assert_eq!(
            c.get(gw.url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
    assert_eq!(c.get(gw.url("/Exact")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(gw.url("/exact")).send().await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_head_must_arrive_whole_within_the_header_timeout() {
    let (gw, _a, b) =
        admin_and_public("http: { header_timeout: 1s, keepalive_timeout: 30s }").await;
    let connect = || TcpStream::connect(gw.addr).unwrap();

    let mut silent = connect();
    let mut one_byte = connect();
    one_byte.write_all(b"G").unwrap();
    let mut line_only = connect();
    line_only.write_all(b"GET /x HTTP/1.1\r\n").unwrap();
    for (name, s) in [
        ("silent", &mut silent),
        ("one byte", &mut one_byte),
        ("request line", &mut line_only),
    ] {
        assert!(
            closed_within(s, Duration::from_secs(5)),
            "{name}: still open"
        );
    }

    // One byte every 200 ms: each read is quick, the head as a whole is not.
    let mut trickle = connect();
    let head = b"GET /public HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let mut cut = false;
    for byte in head {
        if trickle.write_all(&[*byte]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    assert!(
        cut || closed_within(&mut trickle, Duration::from_secs(3)),
        "a trickled head was not cut"
    );
    assert_eq!(b.hits(), 0, "a trickled head was proxied");

    // A kept-alive connection's next head has its own clock: quick requests keep working.
    let mut kept = connect();
    for _ in 0..3 {
        kept.write_all(b"GET /public HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        kept.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = kept.read(&mut buf).unwrap();
        assert_eq!(status_of(&String::from_utf8_lossy(&buf[..n])), 200);
        std::thread::sleep(Duration::from_millis(600));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_that_are_not_http_get_400_and_a_close_at_once() {
    let (gw, _a, b) = admin_and_public("http: { header_timeout: 30s }").await;
    for junk in [
        &b"THIS IS NOT HTTP\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"THIS IS NOT HTTP, NOR EVER WAS IT\r\n\r\n",
    ] {
        let started = Instant::now();
        let answer = raw(gw.addr, junk);
        assert_eq!(status_of(&answer), 400, "{junk:?}: {answer}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{junk:?}: not closed at once"
        );
    }
    assert_eq!(b.hits(), 0);
}

/// A target no route can name is the gateway's JSON error, logged like any other, never a
/// tunnel nor a `Host` taken from a bare word.
#[tokio::test(flavor = "multi_thread")]
async fn connect_asterisk_and_bare_word_targets_get_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let (gw, a, b) = admin_and_public(&format!(
        "telemetry: {{ access_log: {{ target: \"{}\" }} }}",
        log.display()
    ))
    .await;
    // CONNECT: 405, and the connection closed at once, though the client keeps it open and
    // sends tunnel bytes after the head.
    let started = Instant::now();
    let answer = raw(
        gw.addr,
        b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\nGET /admin/x HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(status_of(&answer), 405, "{answer}");
    assert!(
        answer.contains("\"error\":\"method_not_allowed\""),
        "{answer}"
    );
    assert!(header_of(&answer, "x-request-id").is_some(), "{answer}");
    assert_eq!(header_of(&answer, "connection"), Some("close"), "{answer}");
    assert!(
        header_of(&answer, "allow").is_some_and(|allow| allow.contains("GET")),
        "{answer}"
    );
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "not closed at once"
    );
    for target in ["*", "hello", "admin", "a.example:443", "ftp://x/admin/x"] {
        let answer = raw(
            gw.addr,
            format!("OPTIONS {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(status_of(&answer), 400, "{target}: {answer}");
        assert!(
            answer.contains("the request target must be a path"),
            "{target}: {answer}"
        );
    }
    // Over h2c too: a CONNECT stream is refused, and the connection serves on.
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    let connect = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("a.example:443")
        .body(())
        .unwrap();
    let (resp, _) = h2.send_request(connect, false).unwrap();
    assert_eq!(resp.await.unwrap().status(), 405);
    let mut h2 = h2.ready().await.unwrap();
    let get = http::Request::get("http://x/p").body(()).unwrap();
    let (resp, _) = h2.send_request(get, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    // An absolute http URI is still taken, its authority as the host.
    let answer = raw(
        gw.addr,
        b"GET http://x/admin/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(header_of(&answer, "x-upstream"), Some("a"), "{answer}");
    assert_eq!((a.hits(), b.hits()), (1, 1));
    common::eventually(Duration::from_secs(5), "a log line for the CONNECT", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let logged = text
            .lines()
            .any(|l| l.contains("\"method\":\"CONNECT\"") && l.contains("\"status\":405"));
        async move { logged }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_client_cannot_hold_every_connection() {
    let (gw, _a, _b) =
        admin_and_public("http: { max_connections_per_ip: 20, header_timeout: 30s }").await;
    // 60 idle sockets from another loopback address.
    let hog: SocketAddr = "127.0.0.2:0".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..60 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(hog).unwrap();
        held.push(socket.connect(gw.addr).await.unwrap().into_std().unwrap());
    }
    let mut open = 0;
    for s in &mut held {
        s.set_nonblocking(false).unwrap();
        if !closed_within(s, Duration::from_millis(300)) {
            open += 1;
        }
    }
    assert_eq!(open, 20, "the per-address cap");
    let resp = client().get(gw.url("/public")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "another client still gets in");
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_sockets_cannot_exhaust_descriptors() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // The gateway starts with a soft limit of 1024 descriptors, as on a default Linux
    // machine; this test process takes its own back to hold more sockets than that.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= 4096,
        "this test needs a hard open-file limit of at least 4096"
    );
    setrlimit(Resource::RLIMIT_NOFILE, 1024, hard).unwrap();
    let started = admin_and_public("http: { header_timeout: 2s }").await;
    setrlimit(Resource::RLIMIT_NOFILE, soft.max(4096), hard).unwrap();
    let (gw, _a, _b) = started;

    let mut held = Vec::new();
    for _ in 0..1300 {
        match TcpStream::connect(gw.addr) {
            Ok(s) => held.push(s),
            Err(e) => panic!("connect: {e}"),
        }
    }
    // Admin and readiness still answer while clients hold everything they may.
    let c = client();
    assert_eq!(
        c.get(gw.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The idle ones are cut by the head clock, and service comes back.
    common::eventually(
        Duration::from_secs(15),
        "proxy service after the idle sockets are cut",
        || {
            let c = c.clone();
            let url = gw.url("/public");
            async move { c.get(url).send().await.is_ok_and(|r| r.status() == 200) }
        },
    )
    .await;
    drop(held);
}

/// A raw upstream that answers every request with `answer`, as it is.
async fn fixed_upstream(answer: &'static [u8]) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn heads_a_client_must_not_shape_are_refused() {
    let (gw, _a, b) = admin_and_public("").await;
    let cases: &[(&str, &str)] = &[
        ("no Host on HTTP/1.1", "GET /p HTTP/1.1\r\nConnection: close\r\n\r\n"),
        ("two Hosts", "GET /p HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"),
        ("a Host list", "GET /p HTTP/1.1\r\nHost: a, b\r\nConnection: close\r\n\r\n"),
        ("Content-Length list", "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\nConnection: close\r\n\r\nhello"),
        ("two Authorization", "GET /p HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer x\r\nAuthorization: Bearer y\r\nConnection: close\r\n\r\n"),
    ];
    for (name, request) in cases {
        let answer = raw(gw.addr, request.as_bytes());
        // Pingora refuses some of these itself, with a bare 400, before the gateway sees them.
        assert_eq!(status_of(&answer), 400, "{name}: {answer}");
    }
    assert_eq!(b.hits(), 0);
}

/// Route `private` (`/private`, HS256 policy `p` forwarding `sub` as `X-User-Id`) and route
/// `open` (everything else), both to `up`.
async fn private_and_open(up: &TestUpstream, secret: &[u8]) -> Gateway {
    use base64::Engine;
    let policy = format!(
        "kind: AuthPolicy\nid: p\njwt:\n  keys: [{{ alg: HS256, secret: \"base64:{}\" }}]\nforward:\n  headers: {{ X-User-Id: sub }}\n",
        base64::engine::general_purpose::STANDARD.encode(secret)
    );
    let routes = "kind: Route\nid: private\nmatch: { paths: [\"/private\"] }\nauth: p\nupstream: svc\n---\nkind: Route\nid: open\nmatch: { paths: [\"/**\"] }\nupstream: svc\n";
    Gateway::builder()
        .file(
            "r.yaml",
            format!("{}---\n{policy}---\n{routes}", up.resource("svc")),
        )
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_sees_the_gateways_word_on_hop_headers_host_and_identity() {
    let up = TestUpstream::start("svc").await;
    let secret = b"an edge test secret of some length";
    let gw = private_and_open(&up, secret).await;
    let token = common::idp::sign_hmac(
        jsonwebtoken::Algorithm::HS256,
        None,
        secret,
        &common::idp::claims("erin", serde_json::json!({})),
    );

    // A header named in Connection never removes the gateway's own.
    for owned in [
        "X-User-Id",
        "X-Forwarded-For",
        "X-Request-Id",
        "X-Forwarded-Host",
    ] {
        let answer = raw(
            gw.addr,
            format!("GET /private HTTP/1.1\r\nHost: good.example\r\nAuthorization: Bearer {token}\r\nConnection: close, {owned}\r\n\r\n").as_bytes(),
        );
        assert_eq!(status_of(&answer), 200, "{answer}");
        let echo = echo_of(&answer);
        assert_eq!(
            echo.headers.get("x-user-id").map(String::as_str),
            Some("erin"),
            "{owned}: {:?}",
            echo.headers
        );
        assert!(
            echo.headers.contains_key(&owned.to_ascii_lowercase()),
            "{owned} lost"
        );
        assert!(
            !echo.headers.contains_key("connection"),
            "Connection forwarded: {:?}",
            echo.headers
        );
    }

    // Hop-by-hop and underscored headers stay at the gateway; X-Forwarded-Host is the
    // request's own authority.
    let answer = raw(
        gw.addr,
        b"GET /open HTTP/1.1\r\nHost: good.example\r\nX-Forwarded-Host: evil.example\r\nX_User_Id: mallory\r\nContent_Length: 5\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: x\r\nTE: trailers\r\nConnection: close, Keep-Alive\r\n\r\n",
    );
    let echo = echo_of(&answer);
    assert_eq!(echo.headers["x-forwarded-host"], "good.example");
    for gone in [
        "x_user_id",
        "content_length",
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
        "connection",
    ] {
        assert!(
            !echo.headers.contains_key(gone),
            "{gone} forwarded: {:?}",
            echo.headers
        );
    }
    // Without a Host (HTTP/1.0) there is no authority to forward, and the client's is dropped.
    let answer = raw(
        gw.addr,
        b"GET /open HTTP/1.0\r\nX-Forwarded-Host: evil.example\r\n\r\n",
    );
    assert!(!echo_of(&answer).headers.contains_key("x-forwarded-host"));
    // An absolute-form target's authority is the one forwarded (Pingora refuses one that
    // contradicts Host).
    let answer = raw(
        gw.addr,
        b"GET http://api.example/open HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n",
    );
    let echo = echo_of(&answer);
    assert_eq!(
        (echo.headers["host"].as_str(), echo.path.as_str()),
        ("api.example", "/open")
    );

    // An upgrade on a route that does not accept one is plain HTTP: no tunnel opens, so bytes
    // after the head never reach the upstream as a raw stream.
    let before = up.hits();
    let answer = raw(
        gw.addr,
        b"GET /open HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nGET /private HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        up.hits(),
        before + 1,
        "the tunnelled request reached the upstream: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_answers_outside_http_are_502_and_hop_headers_stop_at_the_gateway() {
    let switch = fixed_upstream(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw bytes").await;
    let odd = fixed_upstream(b"HTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\nok").await;
    let hop = fixed_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=99\r\nProxy-Authenticate: Basic\r\nX-Secret: s\r\nConnection: X-Secret\r\nX-Kept: k\r\n\r\nok").await;
    let upstream = |id: &str, addr: SocketAddr| {
        format!("kind: Upstream\nid: {id}\nnodes: [{{ addr: \"{addr}\" }}]\n---\n")
    };
    let route = |id: &str| {
        format!("kind: Route\nid: {id}\nmatch: {{ paths: [\"/{id}\"] }}\nupstream: {id}\n---\n")
    };
    let gw = Gateway::builder()
        .file(
            "r.yaml",
            format!(
                "{}{}{}{}{}{}",
                upstream("switch", switch),
                upstream("odd", odd),
                upstream("hop", hop),
                route("switch"),
                route("odd"),
                route("hop")
            ),
        )
        .start()
        .await;
    for path in ["/switch", "/odd"] {
        let answer = raw(
            gw.addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(status_of(&answer), 502, "{path}: {answer}");
        assert!(!answer.contains("raw bytes"), "{answer}");
    }
    let answer = raw(
        gw.addr,
        b"GET /hop HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(header_of(&answer, "x-kept"), Some("k"));
    for gone in ["keep-alive", "proxy-authenticate", "x-secret"] {
        assert_eq!(
            header_of(&answer, gone),
            None,
            "{gone} reached the client: {answer}"
        );
    }
}

/// Keep-alive clients that count what a graceful exit costs them: a request written on an
/// open connection that gets no whole answer is a failure; a refused connect (the gateway is
/// gone) is not, as no request was sent.
struct KeepAliveLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<std::thread::JoinHandle<(usize, usize)>>,
}

impl KeepAliveLoad {
    fn start(addr: SocketAddr, connections: usize) -> KeepAliveLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers = (0..connections)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || keep_alive_worker(addr, &stop))
            })
            .collect();
        KeepAliveLoad { stop, workers }
    }

    /// (answered, failed)
    fn stop(self) -> (usize, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .fold((0, 0), |(a, f), (a2, f2)| (a + a2, f + f2))
    }
}

fn keep_alive_worker(addr: SocketAddr, stop: &std::sync::atomic::AtomicBool) -> (usize, usize) {
    use std::io::BufRead;
    let (mut answered, mut failed) = (0, 0);
    'connect: while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Ok(stream) = TcpStream::connect(addr) else {
            return (answered, failed);
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if writer
                .write_all(b"GET /public HTTP/1.1\r\nHost: x\r\n\r\n")
                .is_err()
            {
                failed += 1;
                continue 'connect;
            }
            let (mut length, mut close, mut status) = (0usize, false, 0u16);
            let mut line = String::new();
            let mut first = true;
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => {
                        failed += 1;
                        continue 'connect;
                    }
                    Ok(_) => {}
                }
                let l = line.trim_end();
                if first {
                    status = status_of(l);
                    first = false;
                } else if l.is_empty() {
                    break;
                } else if let Some((k, v)) = l.split_once(':') {
                    match k.trim().to_ascii_lowercase().as_str() {
                        "content-length" => length = v.trim().parse().unwrap_or(0),
                        "connection" => close = v.trim().eq_ignore_ascii_case("close"),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() || status != 200 {
                failed += 1;
                continue 'connect;
            }
            answered += 1;
            if close {
                continue 'connect;
            }
        }
        return (answered, failed);
    }
    (answered, failed)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_exit_under_keep_alive_load_fails_no_request_and_logs_every_answer() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let config = format!(
        "telemetry: {{ access_log: {{ target: \"{}\" }} }}\nshutdown: {{ timeout: 10s }}",
        log.path().display()
    );
    let (mut gw, _a, b) = admin_and_public(&config).await;
    let load = KeepAliveLoad::start(gw.addr, 50);
    common::eventually(Duration::from_secs(10), "traffic to flow", || async {
        b.hits() > 200
    })
    .await;
    common::signal(gw.pid(), "TERM");
    let status = tokio::task::spawn_blocking(move || {
        let status = gw.terminate_after_exit(Duration::from_secs(20));
        (status, gw)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "the gateway exits 0");
    let (answered, failed) = load.stop();
    assert!(answered > 200, "answered {answered}");
    assert_eq!(
        failed, 0,
        "requests failed by the exit ({answered} answered)"
    );
    let lines = std::fs::read_to_string(log.path()).unwrap().lines().count();
    assert_eq!(lines, answered, "every answer has its access-log line");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_under_keep_alive_load_fails_no_request() {
    let (old, _a, b) = admin_and_public("").await;
    let load = KeepAliveLoad::start(old.addr, 50);
    common::eventually(Duration::from_secs(10), "traffic to flow", || async {
        b.hits() > 200
    })
    .await;

    // The new process waits for the old one's sockets; SIGQUIT makes the old one send them.
    let (mut new, _new_dir) = common::upgrade(&old).await;
    let mut old = old;
    let status = tokio::task::spawn_blocking(move || {
        let status = old.terminate_after_exit(Duration::from_secs(30));
        (status, old)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "the old process exits 0");
    let hits_at_exit = b.hits();
    common::eventually(
        Duration::from_secs(10),
        "the new process to serve",
        || async { b.hits() > hits_at_exit + 100 },
    )
    .await;
    let (answered, failed) = load.stop();
    let _ = new.kill();
    let _ = new.wait();
    assert!(answered > 300, "answered {answered}");
    assert_eq!(
        failed, 0,
        "requests failed across the upgrade ({answered} answered)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_ends_as_soon_as_a_stop_is_asked_for_while_service_goes_on() {
    let (gw, _a, _b) = admin_and_public("shutdown: { grace: 3s, timeout: 5s }").await;
    let c = client();
    let readyz = gw.admin_url("/readyz");
    assert_eq!(c.get(&readyz).send().await.unwrap().status(), 200);
    common::signal(gw.pid(), "TERM");
    common::eventually(Duration::from_secs(5), "/readyz to say draining", || {
        let (c, url) = (c.clone(), readyz.clone());
        async move {
            match c.get(url).send().await {
                Ok(r) if r.status() == 503 => {
                    r.json::<serde_json::Value>().await.unwrap()["status"] == "draining"
                }
                _ => false,
            }
        }
    })
    .await;
    // The grace period: a load balancer takes the instance out while it still serves.
    let resp = c.get(gw.url("/public")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_keeps_a_chain_only_from_a_trusted_proxy() {
    let request = b"GET /public HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 198.51.100.7\r\nConnection: close\r\n\r\n";
    let (gw, _a, _b) = admin_and_public("").await;
    let echo = echo_of(&raw(gw.addr, request));
    assert_eq!(echo.headers["x-forwarded-for"], "127.0.0.1");
    let (trusting, _a, _b) = admin_and_public("trusted_proxies: [127.0.0.0/8]").await;
    let echo = echo_of(&raw(trusting.addr, request));
    assert_eq!(
        echo.headers["x-forwarded-for"],
        "203.0.113.9, 198.51.100.7, 127.0.0.1"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_cannot_take_away_framing_authority_or_the_gateways_headers() {
    let (gw, _a, b) = admin_and_public("").await;
    // The body is the body, and the bytes after it are not a second request.
    let answer = raw(
        gw.addr,
        b"POST /public HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\nContent-Length: 34\r\n\r\nGET /admin/x HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let echo = echo_of(&answer);
    assert_eq!(echo.body, "GET /admin/x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(b.hits(), 1, "one request: {answer}");
    // Host and the request id stay.
    let answer = raw(
        gw.addr,
        b"GET /public HTTP/1.1\r\nHost: good.example\r\nX-Request-Id: abc\r\nConnection: close, host, x-request-id\r\n\r\n",
    );
    let echo = echo_of(&answer);
    assert_eq!(echo.headers["host"], "good.example");
    assert_eq!(echo.headers["x-forwarded-host"], "good.example");
    assert_eq!(echo.headers["x-request-id"], "abc");
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_headers_are_the_gateways_on_every_route() {
    let up = TestUpstream::start("svc").await;
    let gw = private_and_open(&up, b"a secret of no importance here").await;
    let answer = raw(
        gw.addr,
        b"GET /open HTTP/1.1\r\nHost: x\r\nX-User-Id: admin\r\nConnection: close\r\n\r\n",
    );
    let echo = echo_of(&answer);
    assert!(
        !echo.headers.contains_key("x-user-id"),
        "a client's identity header reached the upstream: {:?}",
        echo.headers
    );
}

/// A raw upstream that reads a request (head and `Content-Length` body), then answers
/// `answer` one byte every `pace`.
async fn trickling_upstream(answer: &'static [u8], pace: Duration) -> SocketAddr {
    trickling_upstream_after(b"", answer, pace).await
}

/// As [`trickling_upstream`], with `at_once` written as soon as the request head is read
/// (before its body), as an upstream sends a `100 Continue` or `103 Early Hints`.
async fn trickling_upstream_after(
    at_once: &'static [u8],
    answer: &'static [u8],
    pace: Duration,
) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                let body_len = loop {
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                        break end + 4 + len;
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                };
                if s.write_all(at_once).await.is_err() {
                    return;
                }
                while seen.len() < body_len {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                for byte in answer {
                    if s.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(pace).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_trickling_its_head_is_cut_at_the_read_timeout() {
    // 60 bytes at one per 250 ms: 15 s for the whole head, never 1 s without a byte.
    let slow = trickling_upstream(
        b"HTTP/1.1 200 OK\r\nX-Pad: 0123456789012345678\r\nContent-Length: 2\r\n\r\nok",
        Duration::from_millis(250),
    )
    .await;
    // The same answer at once, after a request body that takes longer than the timeout.
    let prompt = trickling_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        Duration::ZERO,
    )
    .await;
    let routes = format!(
        "kind: Upstream\nid: slow\nnodes: [{{ addr: \"{slow}\" }}]\n---\n\
         kind: Upstream\nid: prompt\nnodes: [{{ addr: \"{prompt}\" }}]\n---\n\
         kind: Route\nid: slow\nmatch: {{ paths: [\"/slow\"] }}\nretries: 0\n\
         timeouts: {{ connect: 1s, read: 1s, write: 5s }}\nupstream: slow\n---\n\
         kind: Route\nid: prompt\nmatch: {{ paths: [\"/prompt\"] }}\nretries: 0\n\
         timeouts: {{ connect: 1s, read: 1s, write: 5s }}\nupstream: prompt\n"
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;

    let started = Instant::now();
    let answer = raw(
        gw.addr,
        b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let took = started.elapsed();
    assert_eq!(status_of(&answer), 504, "{answer}");
    assert!(
        answer.contains("\"error\":\"upstream_timeout\""),
        "{answer}"
    );
    assert!(
        took < Duration::from_secs(3),
        "the head clock is 1 s, the head took {took:?}"
    );

    // A body sent over 2 s keeps the clock from starting: the upstream owes nothing yet.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"POST /prompt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    for byte in b"hello" {
        std::thread::sleep(Duration::from_millis(400));
        s.write_all(&[*byte]).unwrap();
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_informational_head_does_not_stop_the_response_head_clock() {
    // A 1xx at once, then the final head at one byte per 250 ms (15 s), never 1 s apart.
    const FINAL: &[u8] =
        b"HTTP/1.1 200 OK\r\nX-Pad: 0123456789012345678\r\nContent-Length: 2\r\n\r\nok";
    let hints = trickling_upstream_after(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
        FINAL,
        Duration::from_millis(250),
    )
    .await;
    let continues = trickling_upstream_after(
        b"HTTP/1.1 100 Continue\r\n\r\n",
        FINAL,
        Duration::from_millis(250),
    )
    .await;
    let routes = format!(
        "kind: Upstream\nid: hints\nnodes: [{{ addr: \"{hints}\" }}]\n---\n\
         kind: Upstream\nid: continues\nnodes: [{{ addr: \"{continues}\" }}]\n---\n\
         kind: Route\nid: hints\nmatch: {{ paths: [\"/hints\"] }}\nretries: 0\n\
         timeouts: {{ connect: 1s, read: 1s, write: 5s }}\nupstream: hints\n---\n\
         kind: Route\nid: continues\nmatch: {{ paths: [\"/continues\"] }}\nretries: 0\n\
         timeouts: {{ connect: 1s, read: 1s, write: 5s }}\nupstream: continues\n"
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;

    let requests: [&[u8]; 2] = [
        b"GET /hints HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /continues HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    ];
    for request in requests {
        let started = Instant::now();
        let answer = raw(gw.addr, request);
        let took = started.elapsed();
        // The last head written is the final answer (a 1xx may be passed on before it).
        let last = answer.rfind("HTTP/1.1 ").map_or("", |at| &answer[at..]);
        assert_eq!(status_of(last), 504, "{answer}");
        assert!(
            took < Duration::from_secs(3),
            "the head clock is 1 s, the head took {took:?}: {answer}"
        );
    }
}
