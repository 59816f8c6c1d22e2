//! Traffic lanes (SPEC §10) through the real binary: instances registered in a real etcd
//! the way go-kratos registers them, each lane's nodes by their `lane` metadata, and static
//! nodes with `metadata:`. Tagged requests stay in their lane, untagged ones never enter
//! one, and lanes follow the registry as instances come and go.

mod common;

use common::{client, eventually, Etcd, Gateway, TestUpstream};
use std::collections::BTreeMap;
use std::time::Duration;

fn registration(id: &str, lane: Option<&str>, up: &TestUpstream) -> String {
    let metadata = match lane {
        Some(lane) => format!(r#"{{"lane":"{lane}"}}"#),
        None => "{}".into(),
    };
    format!(
        r#"{{"id":"{id}","name":"users","version":"v1","metadata":{metadata},"endpoints":["http://{}"]}}"#,
        up.addr
    )
}

fn register(etcd: &Etcd, lease: &str, id: &str, value: &str) {
    etcd.put_with_lease(lease, &format!("/microservices/users/{id}"), value);
}

/// Sends `n` requests with `tag` (none when `None`); which upstream answered each, counted.
async fn spread(gw: &Gateway, tag: Option<&str>, n: usize) -> BTreeMap<String, usize> {
    let http = client();
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let mut req = http.get(gw.url("/users"));
        if let Some(tag) = tag {
            req = req.header("x-traffic-tag", tag);
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

#[tokio::test(flavor = "multi_thread")]
async fn lanes_follow_the_registry_and_no_request_crosses_one() {
    let etcd = Etcd::start();
    let base = TestUpstream::start("base").await;
    let stress = TestUpstream::start("stress").await;
    let canary = TestUpstream::start("canary").await;
    let routes = "kind: Upstream\nid: users\ndiscovery: { service: users }\nlanes: { header: X-Traffic-Tag, metadata: lane, fallback: baseline }\n---\nkind: Route\nid: users\nmatch: { paths: [\"/users\"] }\nupstream: users\n";
    let gw = Gateway::builder()
        .file("r.yaml", routes)
        .config(&format!(
            "registry: {{ etcd: {{ endpoints: [\"{}\"], prefix: /microservices }} }}",
            etcd.url()
        ))
        .start()
        .await;

    let lease = etcd.grant(60);
    register(&etcd, &lease, "base", &registration("base", None, &base));
    let stress_lease = etcd.grant(60);
    register(
        &etcd,
        &stress_lease,
        "stress",
        &registration("stress", Some("stress-v3"), &stress),
    );
    eventually(
        Duration::from_secs(5),
        "the stress lane to appear",
        || async {
            spread(&gw, Some("stress-v3"), 1)
                .await
                .contains_key("stress")
        },
    )
    .await;

    // 1,000 tagged and 1,000 untagged requests: not one crosses.
    let tagged = spread(&gw, Some("stress-v3"), 1000).await;
    assert_eq!(tagged, BTreeMap::from([("stress".to_string(), 1000)]));
    let untagged = spread(&gw, None, 1000).await;
    assert_eq!(untagged, BTreeMap::from([("base".to_string(), 1000)]));

    // The tag travels on unchanged, so the next service keeps the request in its lane.
    let echo: serde_json::Value = client()
        .get(gw.url("/users"))
        .header("x-traffic-tag", "stress-v3")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["headers"]["x-traffic-tag"], "stress-v3");

    // A lane with no node falls back to the nodes in no lane.
    assert_eq!(
        spread(&gw, Some("canary"), 20).await,
        BTreeMap::from([("base".to_string(), 20)])
    );
    // A lane that registers takes its traffic from then on, while traffic flows.
    let canary_lease = etcd.grant(60);
    let flowing = {
        let gw_url = gw.url("/users");
        tokio::spawn(async move {
            let http = client();
            let mut failures = 0;
            for _ in 0..300 {
                let status = http
                    .get(&gw_url)
                    .header("x-traffic-tag", "canary")
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                failures += usize::from(status != 200);
            }
            failures
        })
    };
    register(
        &etcd,
        &canary_lease,
        "canary",
        &registration("canary", Some("canary"), &canary),
    );
    eventually(
        Duration::from_secs(5),
        "the canary lane to appear",
        || async { spread(&gw, Some("canary"), 1).await.contains_key("canary") },
    )
    .await;
    assert_eq!(
        spread(&gw, Some("canary"), 50).await,
        BTreeMap::from([("canary".to_string(), 50)])
    );
    // The stress lane's instance goes (its lease revoked): its requests fall back.
    let out = etcd.ctl(&["lease", "revoke", &stress_lease]);
    assert!(out.status.success());
    eventually(Duration::from_secs(5), "the stress lane to go", || async {
        spread(&gw, Some("stress-v3"), 1).await.contains_key("base")
    })
    .await;
    assert_eq!(
        flowing.await.unwrap(),
        0,
        "no request failed while lanes came and went"
    );
    assert_eq!(
        spread(&gw, Some("stress-v3"), 20).await,
        BTreeMap::from([("base".to_string(), 20)])
    );

    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains(r#"gatehouse_lane_requests_total{lane="stress-v3",upstream="users"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gatehouse_lane_requests_total{lane="baseline",upstream="users"}"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn static_nodes_take_lanes_and_refuse_or_a_long_tag_is_answered() {
    let base = TestUpstream::start("base").await;
    let blue = TestUpstream::start("blue").await;
    let routes = format!(
        r#"kind: Upstream
id: users
nodes:
  - {{ addr: "{}" }}
  - {{ addr: "{}", metadata: {{ lane: blue }} }}
lanes: {{ header: X-Traffic-Tag, metadata: lane, fallback: refuse }}
---
kind: Route
id: users
match: {{ paths: ["/users"] }}
upstream: users
"#,
        base.addr, blue.addr
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    assert_eq!(
        spread(&gw, Some("blue"), 30).await,
        BTreeMap::from([("blue".to_string(), 30)])
    );
    assert_eq!(
        spread(&gw, None, 30).await,
        BTreeMap::from([("base".to_string(), 30)])
    );
    // `fallback: refuse`: a lane without nodes is not served by anyone else.
    let resp = client()
        .get(gw.url("/users"))
        .header("x-traffic-tag", "green")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "no_upstream");

    // A tag over 128 bytes names no lane: the request is refused, not sent anywhere.
    let long = "x".repeat(129);
    let resp = client()
        .get(gw.url("/users"))
        .header("x-traffic-tag", &long)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "bad_request");
    assert!(body["message"].as_str().unwrap().contains("128"), "{body}");
    let hits = base.hits() + blue.hits();
    assert_eq!(hits, 60, "the refused requests reached no node");
}
