//! Lanes, mirroring and fault injection (SPEC §10) under attack and on a bad day: copies
//! that would loop back through the gateway, reloads while a mirror hangs, abort statuses
//! that carry no body, lane metadata the way registries really fill it, and lanes added to
//! an upstream that is already in force.

mod common;

use common::{client, eventually, free_addr, Etcd, Gateway, TestUpstream};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn upstream(id: &str, addr: std::net::SocketAddr) -> String {
    format!("kind: Upstream\nid: {id}\nnodes: [{{ addr: \"{addr}\" }}]\n")
}

fn route(id: &str, path: &str, upstream: &str, plugins: &str) -> String {
    format!(
        "kind: Route\nid: {id}\nmatch: {{ paths: [\"{path}\"] }}\nupstream: {upstream}\nplugins:\n{plugins}"
    )
}

async fn metric(gw: &Gateway, series: &str) -> f64 {
    let text = gw.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn revision(gw: &Gateway) -> u64 {
    gw.status().await["revision"].as_u64().unwrap()
}

/// An upstream that reads each request head and never answers: every request it is sent
/// is counted and held.
async fn hanging() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => {
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Sends `raw` on a fresh connection and reads what comes back within `wait`.
async fn exchange_raw(addr: std::net::SocketAddr, raw: &[u8], wait: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `n` requests to `/users` with `tag` (none when `None`); who answered, counted.
async fn spread(gw: &Gateway, tag: Option<&[u8]>, n: usize) -> BTreeMap<String, usize> {
    let http = client();
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let mut req = http.get(gw.url("/users"));
        if let Some(tag) = tag {
            req = req.header(
                "x-traffic-tag",
                reqwest::header::HeaderValue::from_bytes(tag).unwrap(),
            );
        }
        let resp = req.send().await.unwrap();
        let who = match resp.status().as_u16() {
            200 => resp.json::<serde_json::Value>().await.unwrap()["upstream"]
                .as_str()
                .unwrap()
                .to_string(),
            status => format!("status {status}"),
        };
        *seen.entry(who).or_default() += 1;
    }
    seen
}

// ---------------------------------------------------------------------------------------
// Mirror

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_of_a_mirrored_request_is_not_mirrored_again() {
    let main = TestUpstream::start("main").await;
    let gw = Gateway::builder()
        .file("main.yaml", upstream("main", main.addr))
        .start()
        .await;
    // The mirror upstream is the gateway's own listener: a copy comes back through the
    // same route, carrying `X-Gatehouse-Mirror: 1`.
    let before = revision(&gw).await;
    gw.write_file(
        "loop.yaml",
        &[
            upstream("itself", gw.addr),
            route(
                "loop",
                "/loop",
                "main",
                "  - name: mirror\n    config: { upstream: itself }\n",
            ),
        ]
        .join("---\n"),
    );
    gw.wait_revision_after(before).await;

    assert_eq!(
        client().get(gw.url("/loop")).send().await.unwrap().status(),
        200
    );
    // The client's request and its copy reach `main`; nothing else does.
    eventually(Duration::from_secs(5), "the copy", || async {
        main.hits() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sent = metric(
        &gw,
        "gatehouse_mirror_requests_total{result=\"sent\",route=\"loop\"}",
    )
    .await;
    assert_eq!(
        (main.hits(), sent),
        (2, 1.0),
        "one client request became {} upstream requests and {sent} copies",
        main.hits()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_holds_at_most_queue_copies_of_a_hanging_mirror_across_reloads() {
    let main = TestUpstream::start("main").await;
    let (shadow, held) = hanging().await;
    let gw = Gateway::builder()
        .file("main.yaml", upstream("main", main.addr))
        .file(
            "r.yaml",
            [
                upstream("shadow", shadow),
                route(
                    "m",
                    "/m",
                    "main",
                    "  - name: mirror\n    config: { upstream: shadow, queue: 2, timeout: 60s }\n",
                ),
            ]
            .join("---\n"),
        )
        .start()
        .await;
    let http = client();
    let mut reloads = 0;
    for round in 0..4 {
        for _ in 0..2 {
            assert_eq!(http.get(gw.url("/m")).send().await.unwrap().status(), 200);
        }
        // An edit of the route's main upstream (not of the mirror) compiles the route again.
        let before = revision(&gw).await;
        gw.write_file(
            "main.yaml",
            &format!(
                "kind: Upstream\nid: main\nnodes: [{{ addr: \"{}\", weight: {} }}]\n",
                main.addr,
                round + 2
            ),
        );
        gw.wait_revision_after(before).await;
        reloads += 1;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dropped = metric(
        &gw,
        "gatehouse_mirror_requests_total{result=\"dropped\",route=\"m\"}",
    )
    .await;
    assert!(
        held.load(Ordering::SeqCst) <= 2,
        "queue: 2, yet {} copies hang at the mirror after {reloads} reloads ({dropped} dropped)",
        held.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_body_is_copied_whole_under_max_body_and_dropped_over_it() {
    let main = TestUpstream::start("main").await;
    let recorder = common::recorder::Recorder::start(Duration::ZERO).await;
    let seen = recorder.seen.clone();
    let gw = Gateway::builder()
        .file(
            "r.yaml",
            [
                upstream("main", main.addr),
                upstream("shadow", recorder.addr),
                route(
                    "m",
                    "/m",
                    "main",
                    "  - name: mirror\n    config: { upstream: shadow, max_body: 10B }\n",
                ),
            ]
            .join("---\n"),
        )
        .start()
        .await;
    // Chunked, no content-length: 9 bytes in three chunks, then 12 bytes in three chunks.
    let small = b"POST /m HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n3\r\nghi\r\n0\r\n\r\n";
    let got = exchange_raw(gw.addr, small, Duration::from_secs(2)).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let big = b"POST /m HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n4\r\nefgh\r\n4\r\nijkl\r\n0\r\n\r\n";
    let got = exchange_raw(gw.addr, big, Duration::from_secs(2)).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    eventually(Duration::from_secs(5), "the small copy", || async {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (head, body) = &seen[0];
    assert!(head.contains("content-length: 9"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert_eq!(body, "abcdefghi");
    assert_eq!(
        metric(
            &gw,
            "gatehouse_mirror_requests_total{result=\"dropped\",route=\"m\"}"
        )
        .await,
        1.0
    );
    assert_eq!(main.hits(), 2, "both client requests went on");
}

// ---------------------------------------------------------------------------------------
// Fault

#[tokio::test(flavor = "multi_thread")]
async fn an_injected_abort_with_a_status_that_forbids_a_body_is_refused_at_admission() {
    // An abort answers the JSON error: 204 and 304 carry no body, so they are no abort.
    let main = TestUpstream::start("main").await;
    let gw = Gateway::builder()
        .file(
            "r.yaml",
            [
                upstream("main", main.addr),
                route(
                    "no-content",
                    "/204",
                    "main",
                    "  - name: fault\n    config: { abort: { status: 204, percent: 100 } }\n",
                ),
                route(
                    "not-modified",
                    "/304",
                    "main",
                    "  - name: fault\n    config: { abort: { status: 304, percent: 100 } }\n",
                ),
            ]
            .join("---\n"),
        )
        .start()
        .await;
    let rejected = gw.status().await["rejected"].to_string();
    assert_eq!(
        rejected.matches("plugins[0].config.abort.status").count(),
        2,
        "{rejected}"
    );
    assert_eq!(
        client().get(gw.url("/204")).send().await.unwrap().status(),
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn percent_zero_never_falls_and_percent_one_hundred_always_does() {
    let main = TestUpstream::start("main").await;
    let gw = Gateway::builder()
        .file(
            "r.yaml",
            [
                upstream("main", main.addr),
                route(
                    "never",
                    "/never",
                    "main",
                    "  - name: fault\n    config: { abort: { status: 500, percent: 0 }, delay: { duration: 1h, percent: 0 } }\n",
                ),
                route(
                    "always",
                    "/always",
                    "main",
                    "  - name: fault\n    config: { abort: { status: 418, percent: 100 }, match: { headers: { X-Drill: \"~.*\" } } }\n",
                ),
            ]
            .join("---\n"),
        )
        .start()
        .await;
    let http = client();
    for _ in 0..200 {
        assert_eq!(
            http.get(gw.url("/never")).send().await.unwrap().status(),
            200
        );
    }
    for _ in 0..50 {
        let resp = http
            .get(gw.url("/always"))
            .header("x-drill", "")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 418);
    }
    // A match on a header the request lacks does not hold, even with a regex that takes
    // any value.
    assert_eq!(
        http.get(gw.url("/always")).send().await.unwrap().status(),
        200
    );
    assert_eq!(main.hits(), 201);
}

// ---------------------------------------------------------------------------------------
// Lanes

fn lane_upstream(nodes: &str, fallback: &str) -> String {
    format!(
        "kind: Upstream\nid: users\nnodes:\n{nodes}lanes: {{ header: X-Traffic-Tag, metadata: lane, fallback: {fallback} }}\n---\nkind: Route\nid: users\nmatch: {{ paths: [\"/users\"] }}\nupstream: users\nretries: 2\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_lane_metadata_is_empty_is_in_no_lane() {
    let base = TestUpstream::start("base").await;
    let gw = Gateway::builder()
        .file(
            "r.yaml",
            lane_upstream(
                &format!(
                    "  - {{ addr: \"{}\", metadata: {{ lane: \"\" }} }}\n",
                    base.addr
                ),
                "refuse",
            ),
        )
        .start()
        .await;
    // A registry (or an unset environment variable in a kratos service) often writes the
    // lane key with an empty value for production instances: they are the baseline, and
    // untagged traffic must reach them.
    assert_eq!(
        spread(&gw, None, 10).await,
        BTreeMap::from([("base".to_string(), 10)])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_within_a_lane_never_leave_it_and_odd_tags_never_cross() {
    let base = TestUpstream::start("base").await;
    let blue = TestUpstream::start("blue").await;
    let dead = free_addr();
    let gw = Gateway::builder()
        .file(
            "r.yaml",
            lane_upstream(
                &format!(
                    "  - {{ addr: \"{}\" }}\n  - {{ addr: \"{}\", metadata: {{ lane: blue }} }}\n  - {{ addr: \"{dead}\", metadata: {{ lane: red }} }}\n",
                    base.addr, blue.addr
                ),
                "refuse",
            ),
        )
        .start()
        .await;
    // The red lane's only node is down: its requests fail, and never reach another lane.
    let red = spread(&gw, Some(b"red"), 10).await;
    assert!(
        !red.contains_key("base") && !red.contains_key("blue"),
        "{red:?}"
    );
    // Case, padding and bytes that are not UTF-8 name no lane: refused, never another lane.
    for tag in [&b"Blue"[..], b"blue2", b"bl\xffue", b"blue, blue"] {
        let seen = spread(&gw, Some(tag), 5).await;
        assert_eq!(
            seen,
            BTreeMap::from([("status 503".to_string(), 5)]),
            "{}",
            String::from_utf8_lossy(tag)
        );
    }
    // Tags with whitespace around them are the same tag (HTTP trims it).
    assert_eq!(
        spread(&gw, Some(b" blue\t"), 5).await,
        BTreeMap::from([("blue".to_string(), 5)])
    );
    assert_eq!(base.hits(), 0);
    // A tag sent twice: the request goes to the first one's lane.
    let resp = client()
        .get(gw.url("/users"))
        .header("x-traffic-tag", "blue")
        .header("x-traffic-tag", "red")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-upstream"], "blue");
}

#[tokio::test(flavor = "multi_thread")]
async fn adding_lanes_to_a_registry_upstream_in_force_puts_its_instances_in_their_lanes() {
    let etcd = Etcd::start();
    let base = TestUpstream::start("base").await;
    let stress = TestUpstream::start("stress").await;
    let plain = "kind: Upstream\nid: users\ndiscovery: { service: users }\n---\nkind: Route\nid: users\nmatch: { paths: [\"/users\"] }\nupstream: users\n";
    let gw = Gateway::builder()
        .file("r.yaml", plain)
        .config(&format!(
            "registry: {{ etcd: {{ endpoints: [\"{}\"], prefix: /microservices }} }}",
            etcd.url()
        ))
        .start()
        .await;
    let lease = etcd.grant(60);
    for (id, lane, up) in [
        ("base", None, &base),
        ("stress", Some("stress-v3"), &stress),
    ] {
        let metadata = match lane {
            Some(lane) => format!(r#"{{"lane":"{lane}"}}"#),
            None => "{}".into(),
        };
        etcd.put_with_lease(
            &lease,
            &format!("/microservices/users/{id}"),
            &format!(
                r#"{{"id":"{id}","name":"users","version":"v1","metadata":{metadata},"endpoints":["http://{}"]}}"#,
                up.addr
            ),
        );
    }
    eventually(Duration::from_secs(5), "both instances", || async {
        spread(&gw, None, 10).await.len() == 2
    })
    .await;

    // The operator turns lanes on for the upstream; the registry does not change.
    let before = revision(&gw).await;
    gw.write_file(
        "r.yaml",
        &plain.replace(
            "discovery: { service: users }\n",
            "discovery: { service: users }\nlanes: { header: X-Traffic-Tag, metadata: lane, fallback: refuse }\n",
        ),
    );
    gw.wait_revision_after(before).await;
    // The nodes keep the lanes they had until discovery's next pass (every 100 ms) works
    // them out with the new rules.
    eventually(
        Duration::from_secs(2),
        "the instances in their lanes",
        || async { spread(&gw, None, 10).await == BTreeMap::from([("base".to_string(), 10)]) },
    )
    .await;
    assert_eq!(
        spread(&gw, None, 30).await,
        BTreeMap::from([("base".to_string(), 30)]),
        "untagged requests reached a lane node"
    );
    assert_eq!(
        spread(&gw, Some(b"stress-v3"), 10).await,
        BTreeMap::from([("stress".to_string(), 10)])
    );
}
