//! Rate limiting through the real binary.

mod common;

use common::{client, Gateway, TestUpstream};
use std::time::Duration;

fn limited_route(id: &str, path: &str, limit: &str) -> String {
    format!("kind: Route\nid: {id}\nmatch: {{ paths: [\"{path}\"] }}\nrate_limit: {limit}\nupstream: svc\n")
}

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client().get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn burst_then_429_with_headers_then_refill() {
    let up = TestUpstream::start("svc").await;
    // Slow refill for the burst (a token every 20 s), fast for the refill check (every 1 s),
    // so neither depends on how quickly the test's requests follow each other.
    let routes = format!(
        "{}---
{}---
{}",
        up.resource("svc"),
        limited_route(
            "limited",
            "/limited",
            "{ rate: 3, per: 1m, burst: 3, key: client_ip }"
        ),
        limited_route("refill", "/refill", "{ rate: 1, per: 1s, burst: 1 }"),
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;

    for remaining in ["2", "1", "0"] {
        let resp = get(&gw, "/limited", &[]).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["ratelimit-limit"], "3");
        assert_eq!(resp.headers()["ratelimit-remaining"], remaining);
        assert!(resp.headers().contains_key("ratelimit-reset"));
    }
    let resp = get(&gw, "/limited", &[]).await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    assert_eq!(resp.headers()["ratelimit-remaining"], "0");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(up.hits(), 3, "refused requests never reach the upstream");

    assert_eq!(get(&gw, "/refill", &[]).await.status(), 200);
    assert_eq!(get(&gw, "/refill", &[]).await.status(), 429);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        get(&gw, "/refill", &[]).await.status(),
        200,
        "a token came back"
    );

    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains("gatehouse_rate_limited_total{route=\"limited\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatehouse_rate_limited_total{route=\"refill\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_isolated_and_forwarded_for_is_believed_only_from_trusted_proxies() {
    let up = TestUpstream::start("svc").await;
    let routes = format!(
        "{}---\n{}---\n{}",
        up.resource("svc"),
        limited_route(
            "by-key",
            "/by-key",
            "{ rate: 1, per: 1m, burst: 1, key: \"header:X-Api-Key\" }"
        ),
        limited_route("by-ip", "/by-ip", "{ rate: 1, per: 1m, burst: 1 }"),
    );
    let gw = Gateway::builder()
        .file("r.yaml", routes.clone())
        .start()
        .await;
    assert_eq!(
        get(&gw, "/by-key", &[("X-Api-Key", "a")]).await.status(),
        200
    );
    assert_eq!(
        get(&gw, "/by-key", &[("X-Api-Key", "a")]).await.status(),
        429
    );
    assert_eq!(
        get(&gw, "/by-key", &[("X-Api-Key", "b")]).await.status(),
        200,
        "another key, another bucket"
    );

    // From an untrusted peer, X-Forwarded-For does not make a new client.
    assert_eq!(
        get(&gw, "/by-ip", &[("X-Forwarded-For", "1.1.1.1")])
            .await
            .status(),
        200
    );
    assert_eq!(
        get(&gw, "/by-ip", &[("X-Forwarded-For", "2.2.2.2")])
            .await
            .status(),
        429
    );
    drop(gw);

    // Behind a trusted proxy (the loopback peer here), it does.
    let gw = Gateway::builder()
        .file("r.yaml", routes)
        .config("trusted_proxies: [127.0.0.1/32]")
        .start()
        .await;
    assert_eq!(
        get(&gw, "/by-ip", &[("X-Forwarded-For", "1.1.1.1")])
            .await
            .status(),
        200
    );
    assert_eq!(
        get(&gw, "/by-ip", &[("X-Forwarded-For", "1.1.1.1")])
            .await
            .status(),
        429
    );
    assert_eq!(
        get(&gw, "/by-ip", &[("X-Forwarded-For", "9.9.9.9, 2.2.2.2")])
            .await
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn limiter_state_survives_a_reload_that_keeps_the_limit() {
    let up = TestUpstream::start("svc").await;
    let limit = "{ rate: 1, per: 1m, burst: 2 }";
    let gw = Gateway::builder()
        .file("upstream.yaml", up.resource("svc"))
        .file("limited.yaml", limited_route("limited", "/limited", limit))
        .start()
        .await;
    for _ in 0..2 {
        assert_eq!(get(&gw, "/limited", &[]).await.status(), 200);
    }
    assert_eq!(get(&gw, "/limited", &[]).await.status(), 429);

    // An unrelated change, then a change to the route that keeps its rate_limit.
    let revision = gw.status().await["revision"].as_u64().unwrap();
    gw.write_file(
        "other.yaml",
        "kind: Route\nid: other\nmatch: { paths: [\"/other\"] }\nupstream: svc\n",
    );
    let status = gw.wait_revision_after(revision).await;
    assert_eq!(
        get(&gw, "/limited", &[]).await.status(),
        429,
        "state kept across an unrelated reload"
    );
    let revision = status["revision"].as_u64().unwrap();
    let moved = limited_route("limited", "/limited", limit)
        .replace("upstream: svc", "upstream: svc\nretries: 1");
    gw.write_file("limited.yaml", &moved);
    gw.wait_revision_after(revision).await;
    assert_eq!(
        get(&gw, "/limited", &[]).await.status(),
        429,
        "state kept while the limit is unchanged"
    );

    // A new limit starts afresh.
    let revision = gw.status().await["revision"].as_u64().unwrap();
    gw.write_file(
        "limited.yaml",
        &limited_route("limited", "/limited", "{ rate: 1, per: 1m, burst: 3 }"),
    );
    gw.wait_revision_after(revision).await;
    assert_eq!(get(&gw, "/limited", &[]).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn long_keys_are_kept_as_digests() {
    let up = TestUpstream::start("svc").await;
    let routes = format!(
        "{}---\n{}",
        up.resource("svc"),
        limited_route(
            "by-key",
            "/by-key",
            "{ rate: 1, per: 1h, key: \"header:X-Key\" }"
        ),
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let rss = || async { gw.metric("process_resident_memory_bytes").await };
    let key = |i: usize| format!("{i:06}{}", "k".repeat(28 * 1024));

    // A long key is limited like any other.
    assert_eq!(
        get(&gw, "/by-key", &[("X-Key", &key(0))]).await.status(),
        200
    );
    assert_eq!(
        get(&gw, "/by-key", &[("X-Key", &key(0))]).await.status(),
        429
    );
    assert_eq!(
        get(&gw, "/by-key", &[("X-Key", &key(1))]).await.status(),
        200
    );

    // 1,000 more, each held for the hour: kept whole they would pin 28 MB.
    let before = rss().await;
    let c = client();
    for i in 2..1002 {
        let resp = c
            .get(gw.url("/by-key"))
            .header("X-Key", key(i))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let grown = rss().await - before;
    assert!(
        grown < 16.0 * 1024.0 * 1024.0,
        "resident memory grew by {:.1} MB",
        grown / 1024.0 / 1024.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_limiter_keeps_at_most_max_keys() {
    let up = TestUpstream::start("svc").await;
    let routes = format!(
        "{}---\n{}",
        up.resource("svc"),
        limited_route(
            "by-key",
            "/by-key",
            "{ rate: 1, per: 1h, key: \"header:X-Key\", max_keys: 50 }"
        ),
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let c = client();
    let send = |key: String| {
        let req = c.get(gw.url("/by-key")).header("X-Key", key);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // `busy` is in steady use.
    assert_eq!(send("busy".into()).await, 200);
    assert_eq!(send("busy".into()).await, 429);
    // 1,000 other keys, each seen once: the limiter keeps 50 keys, so most of these go
    // again (kept, each would be refused for the hour), but not the key in use.
    for i in 0..1000 {
        assert_eq!(send(format!("other-{i}")).await, 200);
    }
    assert_eq!(
        send("busy".into()).await,
        429,
        "a busy key keeps its bucket"
    );
    let mut forgotten = 0;
    for i in 500..600 {
        if send(format!("other-{i}")).await == 200 {
            forgotten += 1;
        }
    }
    assert!(forgotten >= 90, "only {forgotten} of 100 keys were let go");
}
