//! Upstream discovery through the real binary: instances registered in a real etcd the way
//! go-kratos registers them (a lease, a JSON value), and DNS.

mod common;

use common::served_by;

use common::{eventually, Etcd, Gateway, TestUpstream};
use std::time::Duration;

fn registration(id: &str, version: &str, region: &str, up: &TestUpstream) -> String {
    format!(
        r#"{{"id":"{id}","name":"users","version":"{version}","metadata":{{"region":"{region}"}},"endpoints":["http://{}","grpc://127.0.0.1:1"]}}"#,
        up.addr
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn registered_instances_take_traffic_until_their_lease_goes() {
    let etcd = Etcd::start();
    let v1 = TestUpstream::start("v1").await;
    let v2 = TestUpstream::start("v2").await;
    let routes = "kind: Upstream\nid: users-all\ndiscovery: { service: users }\n---\nkind: Upstream\nid: users-v2\ndiscovery: { service: users, metadata: { version: v2, region: sh } }\n---\nkind: Route\nid: all\nmatch: { paths: [\"/all\"] }\nupstream: users-all\n---\nkind: Route\nid: v2\nmatch: { paths: [\"/v2\"] }\nupstream: users-v2\n";
    let gw = Gateway::builder()
        .file("r.yaml", routes)
        .config(&format!(
            "registry: {{ etcd: {{ endpoints: [\"{}\"], prefix: /microservices }} }}",
            etcd.url()
        ))
        .start()
        .await;
    // Nothing registered yet: no node.
    assert_eq!(served_by(&gw, "/all", &[]).await.0, 503);

    let lease1 = etcd.grant(30);
    let lease2 = etcd.grant(30);
    etcd.put_with_lease(
        &lease1,
        "/microservices/users/i-1",
        &registration("i-1", "v1", "sh", &v1),
    );
    etcd.put_with_lease(
        &lease2,
        "/microservices/users/i-2",
        &registration("i-2", "v2", "sh", &v2),
    );
    eventually(Duration::from_secs(5), "both instances in /all", || async {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..6 {
            seen.insert(served_by(&gw, "/all", &[]).await.1);
        }
        seen.contains("v1") && seen.contains("v2")
    })
    .await;
    // The metadata filter (version counts as metadata) keeps only v2.
    for _ in 0..6 {
        assert_eq!(served_by(&gw, "/v2", &[]).await, (200, "v2".to_string()));
    }

    // The v1 instance's lease is revoked (as when it stops keeping it alive): gone.
    let out = etcd.ctl(&["lease", "revoke", &lease1]);
    assert!(out.status.success());
    eventually(Duration::from_secs(5), "v1 to leave", || async {
        let mut all_v2 = true;
        for _ in 0..6 {
            all_v2 &= served_by(&gw, "/all", &[]).await.1 == "v2";
        }
        all_v2
    })
    .await;
    let v1_hits = v1.hits();
    for _ in 0..6 {
        assert_eq!(served_by(&gw, "/all", &[]).await.1, "v2");
    }
    assert_eq!(
        v1.hits(),
        v1_hits,
        "no more traffic to a deregistered instance"
    );

    // Deleted explicitly: no instance left → 503.
    etcd.delete("/microservices/users/i-2");
    eventually(Duration::from_secs(5), "no instance", || async {
        served_by(&gw, "/all", &[]).await.0 == 503
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_discovery_resolves_localhost() {
    let up = TestUpstream::start("local").await;
    let routes = format!(
        "kind: Upstream\nid: by-name\ndiscovery: {{ dns: {{ name: localhost, port: {}, refresh: 1s }} }}\n---\nkind: Route\nid: r\nmatch: {{ paths: [\"/dns\"] }}\nupstream: by-name\nretries: 1\n",
        up.addr.port()
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    // localhost may resolve to ::1 as well, where nothing listens: the retry covers it.
    for _ in 0..4 {
        assert_eq!(
            served_by(&gw, "/dns", &[]).await,
            (200, "local".to_string())
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_stay_while_the_registry_is_down_and_follow_it_once_back() {
    let mut etcd = Etcd::start();
    let first = TestUpstream::start("first").await;
    let second = TestUpstream::start("second").await;
    let routes = "kind: Upstream\nid: users\ndiscovery: { service: users }\n---\nkind: Route\nid: all\nmatch: { paths: [\"/all\"] }\nupstream: users\n";
    let gw = Gateway::builder()
        .file("r.yaml", routes)
        .config(&format!(
            "registry: {{ etcd: {{ endpoints: [\"{}\"] }} }}",
            etcd.url()
        ))
        .start()
        .await;
    etcd.put(
        "/microservices/users/a",
        &registration("a", "v1", "sh", &first),
    );
    eventually(Duration::from_secs(5), "the first instance", || async {
        served_by(&gw, "/all", &[]).await == (200, "first".to_string())
    })
    .await;

    etcd.kill9();
    // The registry is gone; the instance known last keeps serving.
    for _ in 0..5 {
        assert_eq!(
            served_by(&gw, "/all", &[]).await,
            (200, "first".to_string())
        );
    }
    etcd.spawn();
    etcd.delete("/microservices/users/a");
    etcd.put(
        "/microservices/users/b",
        &registration("b", "v1", "sh", &second),
    );
    eventually(
        Duration::from_secs(15),
        "the watcher to catch up",
        || async { served_by(&gw, "/all", &[]).await == (200, "second".to_string()) },
    )
    .await;
    for _ in 0..5 {
        assert_eq!(served_by(&gw, "/all", &[]).await.1, "second");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn editing_a_discovered_upstream_fails_no_request_and_keeps_its_state() {
    let etcd = Etcd::start();
    let v1 = TestUpstream::start("v1").await;
    let v2 = TestUpstream::start("v2").await;
    let upstream = |lb: &str, idle: &str| {
        format!(
            "kind: Upstream\nid: users\ndiscovery: {{ service: users }}\nlb: {lb}\npool: {{ idle_timeout: {idle} }}\ncircuit_breaker: {{ error_rate: 0.5, min_requests: 10, window: 10s, open_for: 30s }}\n---\nkind: Route\nid: all\nmatch: {{ paths: [\"/all\"] }}\nupstream: users\n"
        )
    };
    let gw = Gateway::builder()
        .file("r.yaml", upstream("round_robin", "60s"))
        .config(&format!(
            "registry: {{ etcd: {{ endpoints: [\"{}\"], prefix: /microservices }} }}",
            etcd.url()
        ))
        .start()
        .await;
    let lease = etcd.grant(60);
    etcd.put_with_lease(
        &lease,
        "/microservices/users/i-1",
        &registration("i-1", "v1", "sh", &v1),
    );
    etcd.put_with_lease(
        &lease,
        "/microservices/users/i-2",
        &registration("i-2", "v2", "sh", &v2),
    );
    eventually(
        Duration::from_secs(5),
        "the instances to take traffic",
        || async { served_by(&gw, "/all", &[]).await.0 == 200 },
    )
    .await;

    let traffic = common::Traffic::start(vec![gw.url("/all"), gw.url("/all")], false);
    traffic.wait_flowing(20).await;
    let edits = [
        ("random", "60s"),
        ("least_conn", "30s"),
        ("round_robin", "30s"),
        ("consistent_hash", "10s"),
        ("random", "20s"),
        ("least_conn", "60s"),
        ("round_robin", "45s"),
        ("random", "45s"),
        ("least_conn", "15s"),
    ];
    for (lb, idle) in edits {
        let revision = gw.status().await["revision"].as_u64().unwrap();
        gw.write_file("r.yaml", &upstream(lb, idle));
        gw.wait_revision_after(revision).await;
        let served = traffic.succeeded();
        traffic.wait_flowing(served + 5).await;
    }
    let (ok, failed) = traffic.stop().await;
    assert!(ok > 50, "ok {ok}");
    assert_eq!(failed, 0, "requests failed while the upstream was edited");

    // The breaker opened by failing nodes stays open across an edit of other settings.
    v1.set_status(500);
    v2.set_status(500);
    eventually(Duration::from_secs(10), "the circuit to open", || async {
        served_by(&gw, "/all", &[]).await.0 == 503
    })
    .await;
    let revision = gw.status().await["revision"].as_u64().unwrap();
    gw.write_file("r.yaml", &upstream("random", "5s"));
    gw.wait_revision_after(revision).await;
    let hits = v1.hits() + v2.hits();
    for _ in 0..5 {
        assert_eq!(
            served_by(&gw, "/all", &[]).await.0,
            503,
            "the circuit closed on an edit"
        );
    }
    assert_eq!(
        v1.hits() + v2.hits(),
        hits,
        "a failing upstream got traffic after an edit"
    );
}
