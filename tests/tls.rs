//! TLS: an HTTPS listener with HTTP/2 by ALPN, and HTTPS upstreams.
//! Certificates are made by the `openssl` command and the client is `curl`.

mod common;

use common::{free_addr, openssl, Gateway};
use std::process::Command;

/// A self-signed certificate for localhost / 127.0.0.1, written into `dir`.
fn self_signed(dir: &std::path::Path) -> (String, String) {
    let args = [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "cert.pem",
    ];
    openssl(dir, &args);
    (
        dir.join("cert.pem").display().to_string(),
        dir.join("key.pem").display().to_string(),
    )
}

/// `curl -sk` output: the body, then a last line with the HTTP version and status.
fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "10",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .args(args)
        .output()
        .expect("the curl command runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn https_listener_and_https_upstreams() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path());
    let tls_addr = free_addr();
    // The gateway is its own HTTPS upstream: /outer/* goes over TLS to its TLS listener,
    // where /inner answers directly and echoes the forwarding headers it received.
    let resources = format!(
        r#"
kind: Upstream
id: self-tls
nodes: [{{ addr: "{tls_addr}" }}]
scheme: https
tls: {{ sni: localhost, verify: false }}
---
kind: Upstream
id: self-tls-verified
nodes: [{{ addr: "{tls_addr}" }}]
scheme: https
tls: {{ sni: localhost, verify: true }}
---
kind: Route
id: outer
match: {{ paths: ["/outer/**"] }}
rewrite: {{ path: /inner }}
upstream: self-tls
---
kind: Route
id: outer-verified
match: {{ paths: ["/verified/**"] }}
rewrite: {{ path: /inner }}
upstream: self-tls-verified
---
kind: Route
id: inner
match: {{ paths: ["/inner"] }}
response_headers: {{ set: {{ X-Inner: "${{route_id}}" }} }}
direct_response: {{ status: 200, body: "inner" }}
"#
    );
    let gw = Gateway::builder()
        .file("r.yaml", resources)
        .tls_listener(tls_addr, &cert, &key)
        .start()
        .await;

    // HTTPS with HTTP/2 negotiated by ALPN.
    let out = curl(&[
        "--http2",
        &format!("https://localhost:{}/inner", tls_addr.port()),
        "--resolve",
        &format!("localhost:{}:127.0.0.1", tls_addr.port()),
    ]);
    assert!(out.ends_with("\n2 200"), "{out}");
    assert!(out.starts_with("inner"), "{out}");

    // Plain HTTP in, HTTPS to the upstream.
    let out = curl(&["-i", &gw.url("/outer/x")]);
    assert!(out.ends_with("1.1 200"), "{out}");
    assert!(out.to_ascii_lowercase().contains("x-inner: inner"), "{out}");

    // Certificate verification is on unless switched off: a self-signed upstream fails.
    let out = curl(&[&gw.url("/verified/x")]);
    assert!(out.ends_with(" 502"), "{out}");
    assert!(out.contains("upstream_error"), "{out}");
}

/// A gateway with `config` whose TLS listener (a self-signed certificate in the returned
/// folder) answers `/hi` itself.
async fn answering_hi_over_tls(config: &str) -> (Gateway, std::net::SocketAddr, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path());
    let tls_addr = free_addr();
    let gw = Gateway::builder()
        .file(
            "r.yaml",
            "kind: Route\nid: hi\nmatch: { paths: [\"/hi\"] }\ndirect_response: { status: 200, body: hi }\n",
        )
        .config(config)
        .tls_listener(tls_addr, &cert, &key)
        .start()
        .await;
    (gw, tls_addr, certs)
}

/// A TLS connection is a client connection from its first byte (SPEC §8): the handshake runs
/// on the head clock, and a connection still shaking hands counts against the caps.
#[tokio::test(flavor = "multi_thread")]
async fn a_tls_handshake_runs_on_the_head_clock_and_counts_against_the_caps() {
    use common::closed_within;
    use std::io::Write;
    use std::net::TcpStream;
    use std::time::Duration;

    let (_gw, tls_addr, _certs) =
        answering_hi_over_tls("http: { header_timeout: 5s, max_connections_per_ip: 3 }").await;
    let https = |path: &str| {
        curl(&[
            &format!("https://localhost:{}{path}", tls_addr.port()),
            "--resolve",
            &format!("localhost:{}:127.0.0.1", tls_addr.port()),
        ])
    };
    assert!(https("/hi").ends_with(" 200"));

    // Silence, then half a ClientHello: each is closed when the head clock runs out, not
    // after a minute of handshake.
    let mut silent = TcpStream::connect(tls_addr).unwrap();
    let mut half_hello = TcpStream::connect(tls_addr).unwrap();
    half_hello.write_all(b"\x16\x03\x01\x02\x00\x01").unwrap();
    let mut third = TcpStream::connect(tls_addr).unwrap();
    // Three unfinished handshakes hold this address's three connections.
    let refused = https("/hi");
    if !refused.ends_with(" 000") {
        // Each accepted connection is admitted in a task of its own: on a busy machine the
        // fourth can be admitted before the third, which is then the one refused, closed at
        // once rather than at the head clock. Either way three at most were served.
        assert!(refused.ends_with(" 200"), "{refused}");
        let closed_early = [&mut silent, &mut half_hello, &mut third]
            .into_iter()
            .map(|s| closed_within(s, Duration::from_secs(1)))
            .filter(|closed| *closed)
            .count();
        assert_eq!(closed_early, 1, "four connections were served at once");
    }
    for s in [&mut silent, &mut half_hello, &mut third] {
        assert!(
            closed_within(s, Duration::from_secs(8)),
            "handshake not cut"
        );
    }
    common::eventually(Duration::from_secs(5), "the cap frees up", || async {
        https("/hi").ends_with(" 200")
    })
    .await;
}

/// Plain HTTP sent to the TLS port gets a 400 that says so and the connection closes (as
/// nginx answers), other bytes the close alone; TLS on the same port is unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn plain_http_to_a_tls_port_is_told_so_and_closed() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    let (_gw, tls_addr, _certs) = answering_hi_over_tls("").await;
    let exchange = |bytes: &[u8]| {
        let mut s = TcpStream::connect(tls_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(bytes).unwrap();
        let mut out = Vec::new();
        // Read to the close; a timeout here would mean the connection was held open.
        s.read_to_end(&mut out).expect("closed by the gateway");
        String::from_utf8_lossy(&out).into_owned()
    };
    let answer = exchange(b"GET /hi HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["error"], "bad_request");
    assert!(
        json["message"].as_str().unwrap().contains("plain HTTP"),
        "{json}"
    );
    assert_eq!(json["request_id"].as_str().unwrap().len(), 32);
    assert_eq!(
        exchange(b"\x00\x01junk"),
        "",
        "junk is closed without a word"
    );
    let https = curl(&[
        &format!("https://localhost:{}/hi", tls_addr.port()),
        "--resolve",
        &format!("localhost:{}:127.0.0.1", tls_addr.port()),
    ]);
    assert!(https.ends_with(" 200"), "{https}");
}
