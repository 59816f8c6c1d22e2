//! Mirroring and fault injection (SPEC §10) through the real binary: a mirror upstream that
//! records what it is sent, one that hangs, one that refuses connections; sampling and
//! fault percentages checked against their statistical bounds.

mod common;

use common::recorder::Recorder;
use common::{client, eventually, free_addr, Gateway, TestUpstream};
use std::time::{Duration, Instant};

fn upstream(id: &str, addr: std::net::SocketAddr) -> String {
    format!("kind: Upstream\nid: {id}\nnodes: [{{ addr: \"{addr}\" }}]\n")
}

fn route(id: &str, path: &str, plugins: &str) -> String {
    format!(
        "kind: Route\nid: {id}\nmatch: {{ paths: [\"{path}\"] }}\nupstream: main\nplugins:\n{plugins}"
    )
}

/// One client for the whole test binary: its kept connections make a thousand requests
/// cheap.
fn shared() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(client)
}

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = shared().get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap().status().as_u16()
}

async fn metric(gw: &Gateway, series: &str) -> f64 {
    let text = gw.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn matching_requests_are_copied_with_their_body_and_the_mark() {
    let main = TestUpstream::start("main").await;
    let shadow = Recorder::start(Duration::ZERO).await;
    let routes = [
        upstream("main", main.addr),
        upstream("shadow", shadow.addr),
        route(
            "orders",
            "/orders",
            "  - name: mirror\n    config: { upstream: shadow, match: { headers: { X-Traffic-Tag: \"~^stress\" } } }\n",
        ),
    ]
    .join("---\n");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;

    let resp = client()
        .post(gw.url("/orders?x=1"))
        .header("x-traffic-tag", "stress-v3")
        .body("a body to copy")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        echo["body"], "a body to copy",
        "the client's request is untouched"
    );
    assert!(echo["headers"].get("x-gatehouse-mirror").is_none());
    eventually(Duration::from_secs(5), "the copy", || async {
        shadow.count() == 1
    })
    .await;
    let (head, body) = shadow.seen.lock().unwrap()[0].clone();
    assert!(head.starts_with("post /orders?x=1 http/1.1"), "{head}");
    assert!(head.contains("x-gatehouse-mirror: 1"), "{head}");
    assert!(head.contains("x-traffic-tag: stress-v3"), "{head}");
    assert_eq!(body, "a body to copy");

    // Not matching: no copy.
    assert_eq!(get(&gw, "/orders", &[]).await, 200);
    assert_eq!(get(&gw, "/orders", &[("x-traffic-tag", "prod")]).await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(shadow.count(), 1);
    eventually(Duration::from_secs(5), "the copy counted", || async {
        metric(
            &gw,
            "gatehouse_mirror_requests_total{result=\"sent\",route=\"orders\"}",
        )
        .await
            == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_or_refusing_mirror_never_touches_the_client() {
    let main = TestUpstream::start("main").await;
    let hanging = Recorder::start(Duration::from_secs(5)).await;
    let refusing = free_addr();
    let routes = [
        upstream("main", main.addr),
        upstream("hanging", hanging.addr),
        upstream("refusing", refusing),
        route(
            "slow",
            "/slow",
            "  - name: mirror\n    config: { upstream: hanging, queue: 5, timeout: 10s }\n",
        ),
        route(
            "down",
            "/down",
            "  - name: mirror\n    config: { upstream: refusing }\n",
        ),
    ]
    .join("---\n");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;

    // Fifty requests while every copy hangs five seconds: each client answer is as quick
    // as without a mirror, and past the queue of five the copies are dropped.
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let started = Instant::now();
        assert_eq!(get(&gw, "/slow", &[]).await, 200);
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(2),
        "a client waited {slowest:?}"
    );
    assert_eq!(
        metric(
            &gw,
            "gatehouse_mirror_requests_total{result=\"dropped\",route=\"slow\"}"
        )
        .await,
        45.0
    );

    for _ in 0..10 {
        assert_eq!(get(&gw, "/down", &[]).await, 200);
    }
    eventually(Duration::from_secs(5), "ten failed copies", || async {
        metric(
            &gw,
            "gatehouse_mirror_requests_total{result=\"failed\",route=\"down\"}",
        )
        .await
            == 10.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sample_copies_its_share_and_an_unknown_mirror_upstream_is_rejected_alone() {
    let main = TestUpstream::start("main").await;
    let shadow = Recorder::start(Duration::ZERO).await;
    let routes = [
        upstream("main", main.addr),
        upstream("shadow", shadow.addr),
        route(
            "sampled",
            "/sampled",
            "  - name: mirror\n    config: { upstream: shadow, sample: 0.1 }\n",
        ),
        route(
            "orphan",
            "/orphan",
            "  - name: mirror\n    config: { upstream: nowhere }\n",
        ),
    ]
    .join("---\n");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let rejected = gw.status().await["rejected"].to_string();
    assert!(
        rejected.contains("plugins[0].config.upstream"),
        "{rejected}"
    );
    assert!(rejected.contains("nowhere"), "{rejected}");
    assert_eq!(get(&gw, "/orphan", &[]).await, 404);

    for _ in 0..2000 {
        assert_eq!(get(&gw, "/sampled", &[]).await, 200);
    }
    eventually(Duration::from_secs(5), "the copies to land", || async {
        metric(
            &gw,
            "gatehouse_mirror_requests_total{result=\"sent\",route=\"sampled\"}",
        )
        .await
            == shadow.count() as f64
    })
    .await;
    // 10 % of 2,000 is 200, with a standard deviation of 13.4: five of them either side.
    let copies = shadow.count();
    assert!((133..=267).contains(&copies), "{copies} copies");
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_abort_and_delay_about_as_often_as_asked() {
    let main = TestUpstream::start("main").await;
    let routes = [
        upstream("main", main.addr),
        route(
            "abort",
            "/abort",
            "  - name: fault\n    config: { abort: { status: 503, percent: 20 } }\n",
        ),
        route(
            "delay",
            "/delay",
            "  - name: fault\n    config: { delay: { duration: 300ms, percent: 100 }, match: { headers: { X-Drill: \"on\" } } }\n",
        ),
        route(
            "bad",
            "/bad",
            "  - name: fault\n    config: { abort: { status: 503, percent: 120 } }\n",
        ),
    ]
    .join("---\n");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let rejected = gw.status().await["rejected"].to_string();
    assert!(
        rejected.contains("plugins[0].config.abort.percent"),
        "{rejected}"
    );

    let mut aborted = 0;
    for _ in 0..1000 {
        let resp = shared().get(gw.url("/abort")).send().await.unwrap();
        if resp.status() == 503 {
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["error"], "fault_injected");
            aborted += 1;
        }
    }
    // 20 % of 1,000 is 200, with a standard deviation of 12.6: five of them either side.
    assert!((137..=263).contains(&aborted), "{aborted} aborted");
    assert_eq!(
        metric(
            &gw,
            "gatehouse_faults_injected_total{fault=\"abort\",route=\"abort\"}"
        )
        .await,
        aborted as f64
    );

    let started = Instant::now();
    assert_eq!(get(&gw, "/delay", &[("x-drill", "on")]).await, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let before = main.hits();
    assert_eq!(get(&gw, "/delay", &[]).await, 200);
    assert_eq!(main.hits(), before + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_during_a_fault_delay_is_not_waited_for() {
    use tokio::io::AsyncWriteExt;
    let main = TestUpstream::start("main").await;
    let delay = |d: &str| {
        format!("  - name: fault\n    config: {{ delay: {{ duration: {d}, percent: 100 }} }}\n")
    };
    let routes = [
        upstream("main", main.addr),
        route("slow", "/slow", &delay("6s")),
        route("brief", "/brief", &delay("300ms")),
        route(
            "quick",
            "/quick",
            "  - name: fault\n    config: { abort: { status: 503, percent: 100 } }\n",
        ),
    ]
    .join("---\n");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;

    // A client that hangs up during the delay: the wait ends at once (its line is logged,
    // as nginx's 499, long before the delay is over) and the upstream never hears of it.
    let left = Instant::now();
    for with_body in [false, true] {
        let mut raw = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        if with_body {
            raw.write_all(b"POST /slow HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n\r\n")
                .await
                .unwrap();
            // Body bytes that wait unread on the connection do not count as the client
            // leaving (sent apart from the head, so the gateway has not read them with it).
            tokio::time::sleep(Duration::from_millis(50)).await;
            raw.write_all(b"body").await.unwrap();
        } else {
            raw.write_all(b"GET /slow HTTP/1.1\r\nHost: gw\r\n\r\n")
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(raw);
    }
    // An HTTP/2 client that gives up on its stream (it resets it) and goes on using its
    // connection.
    let h2 = common::h2_giving_up(&gw.url("/quick"), 503, &gw.url("/slow")).await;
    let series = "gatehouse_requests_total{route=\"slow\",status=\"499\"}";
    eventually(
        Duration::from_secs(10),
        "the three departures logged",
        || async { metric(&gw, series).await == 3.0 },
    )
    .await;
    assert!(
        left.elapsed() < Duration::from_secs(4),
        "the waits ran on after their clients left: {:?}",
        left.elapsed()
    );
    // Past the delay's end: nothing reached the upstream, and no error line was written.
    tokio::time::sleep(Duration::from_millis(7000).saturating_sub(left.elapsed())).await;
    assert_eq!(main.hits(), 0);
    let logs = gw.logs();
    assert!(!logs.contains("the client left"), "{logs}");

    // A client that stays through a delay, its body waiting meanwhile, is answered.
    let started = Instant::now();
    let resp = shared()
        .post(gw.url("/brief"))
        .body("body")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(main.hits(), 1);
    // So is an HTTP/2 one, on the connection whose other stream was reset.
    let resp = h2.get(gw.url("/brief")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(main.hits(), 2);
}
