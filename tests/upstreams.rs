//! Upstream behaviour through the real binary: balancing, passive health, retries.

mod common;

use common::{client, eventually, served_by as upstream_of, Gateway, TestUpstream, Traffic};
use std::collections::HashMap;
use std::time::Duration;

fn upstream(id: &str, nodes: &[&TestUpstream], extra: &str) -> String {
    let nodes: Vec<String> = nodes
        .iter()
        .map(|n| format!("{{ addr: \"{}\" }}", n.addr))
        .collect();
    format!(
        "kind: Upstream\nid: {id}\nnodes: [{}]\n{extra}",
        nodes.join(", ")
    )
}

fn route(id: &str, path: &str, upstream: &str, extra: &str) -> String {
    format!(
        "kind: Route\nid: {id}\nmatch: {{ paths: [\"{path}\"] }}\nupstream: {upstream}\n{extra}"
    )
}

/// Upstream `svc` on `nodes`, and route `api` (`/api`) to it.
fn svc_behind_api(nodes: &[&TestUpstream], upstream_extra: &str, route_extra: &str) -> String {
    format!(
        "{}---\n{}",
        upstream("svc", nodes, upstream_extra),
        route("api", "/api", "svc", route_extra)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_under_get_traffic_costs_no_failed_request() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let routes = svc_behind_api(
        &[&a, &b],
        "health_check: { passive: { max_fails: 1, fail_timeout: 30s } }\n",
        "retries: 1\n",
    );
    let gw = Gateway::builder()
        .file("r.yaml", routes.clone())
        .start()
        .await;
    let urls = (0..4).map(|_| gw.url("/api")).collect();
    let traffic = Traffic::start(urls, false);
    eventually(Duration::from_secs(5), "traffic on both nodes", || async {
        a.hits() > 20 && b.hits() > 20
    })
    .await;
    a.kill();
    let b_before = b.hits();
    eventually(Duration::from_secs(5), "traffic to go on", || async {
        b.hits() > b_before + 100
    })
    .await;
    let (ok, failed) = traffic.stop().await;
    assert_eq!(failed, 0, "{ok} succeeded, {failed} failed");
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains(&format!(
            "gatehouse_upstream_node_healthy{{node=\"{}\",upstream=\"svc\"}} 0",
            a.addr
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "gatehouse_upstream_node_healthy{{node=\"{}\",upstream=\"svc\"}} 1",
        b.addr
    )));

    // A reload that leaves the upstream as it is keeps what health checks learned.
    let revision = gw.status().await["revision"].as_u64().unwrap();
    let more = format!("{routes}---\n{}", route("other", "/other", "svc", ""));
    gw.write_file("r.yaml", &more);
    gw.wait_revision_after(revision).await;
    let metrics = gw.metrics_text().await;
    assert!(metrics.contains(&format!(
        "gatehouse_upstream_node_healthy{{node=\"{}\",upstream=\"svc\"}} 0",
        a.addr
    )));
}

#[tokio::test(flavor = "multi_thread")]
async fn with_every_node_down_the_answer_is_503_no_upstream() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let routes = svc_behind_api(
        &[&a, &b],
        "health_check: { passive: { max_fails: 1, fail_timeout: 30s } }\n",
        "retries: 1\n",
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    a.kill();
    b.kill();
    // The first request finds both down (502, both nodes tried); then both are ejected.
    let first = client().get(gw.url("/api")).send().await.unwrap();
    assert_eq!(first.status(), 502);
    let resp = client().get(gw.url("/api")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "no_upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_502_or_503_is_retried_on_another_node_for_idempotent_requests_only() {
    let bad = TestUpstream::start("bad").await;
    let good = TestUpstream::start("good").await;
    bad.set_status(503);
    let routes = format!(
        "{}---\n{}---\n{}",
        upstream("svc", &[&bad, &good], ""),
        route("api", "/api", "svc", "retries: 1\n"),
        route("no-retry", "/once", "svc", ""),
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    for _ in 0..10 {
        let (status, name) = upstream_of(&gw, "/api", &[]).await;
        assert_eq!((status, name.as_str()), (200, "good"));
    }
    assert!(
        bad.hits() >= 3,
        "round robin sent some to the bad node first"
    );
    // A POST with a body is not repeated: the bad node's 503 reaches the client.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let resp = client()
            .post(gw.url("/api"))
            .body("payload")
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    assert!(
        statuses.contains(&503) && statuses.contains(&200),
        "{statuses:?}"
    );
    // Without `retries`, a GET's 503 is passed on as well.
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(upstream_of(&gw, "/once", &[]).await.0);
    }
    assert!(seen.contains(&503), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn least_conn_sends_new_requests_to_the_least_busy_node() {
    let slow = TestUpstream::start("slow").await;
    let fast = TestUpstream::start("fast").await;
    slow.set_delay(Duration::from_millis(400));
    let routes = format!(
        "{}---\n{}",
        upstream("svc", &[&slow, &fast], "lb: least_conn\n"),
        route("api", "/api", "svc", "")
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let url = gw.url("/api");
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 10)).await;
                client().get(url).send().await.unwrap().status()
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    // The slow node holds its requests for 400 ms, so it is busy whenever a new one comes.
    assert!(
        slow.hits() <= 4 && fast.hits() >= 36,
        "slow {} fast {}",
        slow.hits(),
        fast.hits()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn consistent_hash_keeps_each_key_on_its_node_and_moves_few_when_one_joins() {
    let nodes = [
        TestUpstream::start("n1").await,
        TestUpstream::start("n2").await,
        TestUpstream::start("n3").await,
        TestUpstream::start("n4").await,
    ];
    let config = |count: usize| {
        let members: Vec<&TestUpstream> = nodes.iter().take(count).collect();
        format!(
            "{}---\n{}",
            upstream(
                "svc",
                &members,
                "lb: consistent_hash\nhash_key: header:X-User-Id\n"
            ),
            route("api", "/api", "svc", "")
        )
    };
    let gw = Gateway::builder().file("r.yaml", config(3)).start().await;
    let users: Vec<String> = (0..120).map(|i| format!("user-{i}")).collect();
    let mut placed: HashMap<&str, String> = HashMap::new();
    for user in &users {
        let (_, node) = upstream_of(&gw, "/api", &[("x-user-id", user)]).await;
        placed.insert(user, node);
    }
    for user in users.iter().take(30) {
        let (_, node) = upstream_of(&gw, "/api", &[("x-user-id", user)]).await;
        assert_eq!(node, placed[user.as_str()], "a key stays on its node");
    }
    let per_node = |name: &str| placed.values().filter(|n| *n == name).count();
    for name in ["n1", "n2", "n3"] {
        assert!(per_node(name) >= 15, "{name} has {} keys", per_node(name));
    }

    let revision = gw.status().await["revision"].as_u64().unwrap();
    gw.write_file("r.yaml", &config(4));
    gw.wait_revision_after(revision).await;
    let mut moved = 0;
    for user in &users {
        let (_, node) = upstream_of(&gw, "/api", &[("x-user-id", user)]).await;
        if node != placed[user.as_str()] {
            moved += 1;
            assert_eq!(node, "n4", "a key only moves to the node that joined");
        }
    }
    // A quarter would be ideal; a modulo hash would move three quarters.
    assert!((10..=50).contains(&moved), "{moved} of 120 keys moved");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_circuit_opens_on_errors_then_a_probe_closes_it() {
    let up = TestUpstream::start("svc").await;
    up.set_status(500);
    let routes = svc_behind_api(
        &[&up],
        "circuit_breaker: { error_rate: 0.5, min_requests: 4, window: 10s, open_for: 1s }\n",
        "",
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    for _ in 0..4 {
        assert_eq!(upstream_of(&gw, "/api", &[]).await.0, 500);
    }
    // Open: refused here, the upstream is spared.
    let resp = client().get(gw.url("/api")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "circuit_open");
    assert_eq!(up.hits(), 4);

    // After open_for, one probe goes through; it fails, so the circuit opens again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(upstream_of(&gw, "/api", &[]).await.0, 500);
    assert_eq!(upstream_of(&gw, "/api", &[]).await.0, 503);
    assert_eq!(up.hits(), 5);

    // The upstream recovers: the next probe succeeds and closes the circuit.
    up.set_status(200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..5 {
        assert_eq!(upstream_of(&gw, "/api", &[]).await.0, 200);
    }
    assert_eq!(up.hits(), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn active_checks_take_a_failing_node_out_and_bring_it_back() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let routes = svc_behind_api(&[&a, &b], "health_check: { active: { path: /healthz, interval: 100ms, timeout: 500ms, healthy: 2, unhealthy: 2 } }\n", "");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let healthy = |node: &TestUpstream, value: u8| {
        format!(
            "gatehouse_upstream_node_healthy{{node=\"{}\",upstream=\"svc\"}} {value}",
            node.addr
        )
    };
    // Probes arrive by themselves.
    eventually(Duration::from_secs(5), "probes", || async { a.hits() >= 2 }).await;

    a.set_status(503);
    eventually(Duration::from_secs(5), "a to be taken out", || async {
        gw.metrics_text().await.contains(&healthy(&a, 0))
    })
    .await;
    for _ in 0..10 {
        assert_eq!(upstream_of(&gw, "/api", &[]).await, (200, "b".to_string()));
    }

    a.set_status(200);
    eventually(Duration::from_secs(5), "a to come back", || async {
        gw.metrics_text().await.contains(&healthy(&a, 1))
    })
    .await;
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(upstream_of(&gw, "/api", &[]).await.1);
    }
    assert!(
        seen.iter().any(|n| n == "a") && seen.iter().any(|n| n == "b"),
        "{seen:?}"
    );
}

/// Sends `n` GETs at once and checks every one is answered 200.
async fn burst(gw: &Gateway, path: &str, n: usize) {
    let requests: Vec<_> = (0..n)
        .map(|_| tokio::spawn(client().get(gw.url(path)).send()))
        .collect();
    for r in requests {
        assert_eq!(r.await.unwrap().unwrap().status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_max_idle_bounds_the_connections_kept_to_each_node() {
    let capped = TestUpstream::start("capped").await;
    let uncapped = TestUpstream::start("uncapped").await;
    capped.set_delay(Duration::from_millis(300));
    uncapped.set_delay(Duration::from_millis(300));
    let routes = [
        upstream(
            "capped",
            &[&capped],
            "pool: { max_idle: 2, idle_timeout: 30s }\n",
        ),
        upstream("uncapped", &[&uncapped], "pool: { idle_timeout: 30s }\n"),
        route("c", "/c", "capped", ""),
        route("u", "/u", "uncapped", ""),
    ]
    .join("---\n");
    let gw = Gateway::builder().file("r.yaml", routes).start().await;

    burst(&gw, "/c", 8).await;
    burst(&gw, "/u", 8).await;
    eventually(Duration::from_secs(5), "two kept connections", || async {
        capped.open_connections() == 2
    })
    .await;
    assert_eq!(capped.connections(), 8);
    assert_eq!(
        uncapped.open_connections(),
        8,
        "without max_idle every connection stays pooled"
    );

    // The next burst reuses the kept connections and keeps no more. (A kept connection goes
    // back to the pool a moment after its client has the whole answer, so the burst may
    // find only one of the two back: 6 or 7 new connections, never 8.)
    let before = capped.connections();
    burst(&gw, "/c", 8).await;
    let opened = capped.connections() - before;
    assert!((6..=7).contains(&opened), "{opened} new connections");
    eventually(Duration::from_secs(5), "two kept connections", || async {
        capped.open_connections() == 2
    })
    .await;

    // One request at a time, the kept connections serve them: a few more may be opened (a
    // kept connection goes back to the pool a moment after its answer is out, and Pingora
    // now and then finds a pooled one unusable), none of them kept: two stay open.
    capped.set_delay(Duration::ZERO);
    let before = capped.connections();
    let c = client();
    for _ in 0..10 {
        let resp = c.get(gw.url("/c")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        // Read to the end, so the client connection is free for the next request.
        resp.bytes().await.unwrap();
    }
    let opened = capped.connections() - before;
    assert!(
        opened <= 3,
        "{opened} new connections for 10 requests in a row"
    );
    eventually(Duration::from_secs(5), "two kept connections", || async {
        capped.open_connections() == 2
    })
    .await;
}

/// An upstream that answers the first request on each connection, then resets the
/// connection as the second one arrives: a kept connection gone stale in the pool.
async fn resetting_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                for n in 0.. {
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match reader.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    if n == 1 {
                        // Reset, not a clean close: what a restarted or idle-reaping
                        // upstream does to a pooled connection.
                        let stream = reader.into_inner();
                        let _ = stream.set_zero_linger();
                        return;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = reader
                        .get_mut()
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    (addr, served)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_connection_reset_in_the_pool_is_tried_again_not_a_502() {
    let (addr, served) = resetting_upstream().await;
    let gw = Gateway::builder()
        .file(
            "r.yaml",
            format!(
                "kind: Upstream\nid: svc\nnodes: [{{ addr: \"{addr}\" }}]\n---\n{}",
                route("api", "/api", "svc", "")
            ),
        )
        .start()
        .await;
    let c = client();
    for i in 0..6 {
        let resp = c.get(gw.url("/api")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
    }
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 6);
    // The one more try went on a connection of its own, closed after it: the pool holds
    // nothing now, so the next request opens one (and leaves it there, stale).
    assert_eq!(c.get(gw.url("/api")).send().await.unwrap().status(), 200);
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 7);
    // A request with a body is never sent twice: on the stale connection left in the pool
    // it fails as it is. The connection goes back to the pool just after the client has its
    // answer, so a POST sent at once may still find the pool empty and open a connection of
    // its own (200, and a fresh stale one left behind): then try again. Were the POST sent
    // twice, every try would end 200.
    let mut answers = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let before = served.load(std::sync::atomic::Ordering::SeqCst);
        let status = c
            .post(gw.url("/api"))
            .body("x")
            .send()
            .await
            .unwrap()
            .status();
        let after = served.load(std::sync::atomic::Ordering::SeqCst);
        answers.push(status.as_u16());
        if status == 502 {
            assert_eq!(after, before, "the failed POST reached a node: {answers:?}");
            return;
        }
        assert_eq!((status.as_u16(), after), (200, before + 1), "{answers:?}");
    }
    panic!("a POST on the stale pooled connection never failed: {answers:?}");
}
