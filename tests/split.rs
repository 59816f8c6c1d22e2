//! Choosing the upstream: canary rules, weighted splits, sticky splits, and their reloads.

mod common;

use common::{client, Gateway, TestUpstream};
use std::collections::HashMap;

async fn served_by(gw: &Gateway, req: reqwest::RequestBuilder) -> String {
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", gw.logs());
    resp.headers()["x-upstream"].to_str().unwrap().to_string()
}

fn split(weights: (u32, u32), sticky: Option<&str>) -> String {
    let sticky = sticky
        .map(|s| format!("sticky: \"{s}\"\n"))
        .unwrap_or_default();
    format!(
        "kind: Route\nid: split\nmatch: {{ paths: [\"/split\"] }}\nweights:\n  - {{ upstream: v1, weight: {} }}\n  - {{ upstream: v2, weight: {} }}\n{sticky}",
        weights.0, weights.1
    )
}

async fn start(v1: &TestUpstream, v2: &TestUpstream, v3: &TestUpstream, routes: &str) -> Gateway {
    let upstreams = format!(
        "{}---\n{}---\n{}",
        v1.resource("v1"),
        v2.resource("v2"),
        v3.resource("v3")
    );
    Gateway::builder()
        .file("upstreams.yaml", upstreams)
        .file("routes.yaml", routes)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn canary_rules_match_in_order_before_the_split() {
    let (v1, v2, v3) = (
        TestUpstream::start("v1").await,
        TestUpstream::start("v2").await,
        TestUpstream::start("v3").await,
    );
    let route = r#"
kind: Route
id: users
match: { paths: ["/users"] }
canary:
  - match: { headers: { X-Canary: "true|1" } }
    upstream: v2
  - match: { query: { canary: "~^(yes|on)$" } }
    upstream: v2
  - match: { cookies: { group: beta } }
    upstream: v3
upstream: v1
"#;
    let gw = start(&v1, &v2, &v3, route).await;
    let c = client();
    let url = gw.url("/users");
    assert_eq!(served_by(&gw, c.get(&url)).await, "v1");
    assert_eq!(
        served_by(&gw, c.get(&url).header("X-Canary", "1")).await,
        "v2"
    );
    assert_eq!(
        served_by(&gw, c.get(&url).header("X-Canary", "no")).await,
        "v1"
    );
    assert_eq!(
        served_by(&gw, c.get(gw.url("/users?canary=on"))).await,
        "v2"
    );
    assert_eq!(
        served_by(&gw, c.get(&url).header("Cookie", "a=b; group=beta")).await,
        "v3"
    );
    assert_eq!(
        served_by(&gw, c.get(&url).header("Cookie", "group=alpha")).await,
        "v1"
    );
    assert_eq!(
        served_by(
            &gw,
            c.get(&url)
                .header("Cookie", "group=beta")
                .header("X-Canary", "true")
        )
        .await,
        "v2",
        "the first matching rule wins"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn weighted_shares_are_exact_and_follow_a_reload() {
    let (v1, v2, v3) = (
        TestUpstream::start("v1").await,
        TestUpstream::start("v2").await,
        TestUpstream::start("v3").await,
    );
    let gw = start(&v1, &v2, &v3, &split((90, 10), None)).await;
    let c = client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..1000 {
        *counts
            .entry(served_by(&gw, c.get(gw.url("/split"))).await)
            .or_default() += 1;
    }
    // Smooth weighted round robin: exact over every full turn of 10.
    assert_eq!((counts["v1"], counts["v2"]), (900, 100), "{counts:?}");

    let revision = gw.status().await["revision"].as_u64().unwrap();
    gw.write_file("routes.yaml", &split((1, 1), None));
    gw.wait_revision_after(revision).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        *counts
            .entry(served_by(&gw, c.get(gw.url("/split"))).await)
            .or_default() += 1;
    }
    assert_eq!((counts["v1"], counts["v2"]), (200, 200), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sticky_users_stay_put_and_a_ramp_only_moves_users_onto_the_canary() {
    let (v1, v2, v3) = (
        TestUpstream::start("v1").await,
        TestUpstream::start("v2").await,
        TestUpstream::start("v3").await,
    );
    let gw = start(&v1, &v2, &v3, &split((90, 10), Some("header:X-User-Id"))).await;
    let c = client();
    let users = 400;
    let mut before = Vec::with_capacity(users);
    for user in 0..users {
        let side = served_by(
            &gw,
            c.get(gw.url("/split"))
                .header("X-User-Id", format!("u{user}")),
        )
        .await;
        for _ in 0..2 {
            let again = served_by(
                &gw,
                c.get(gw.url("/split"))
                    .header("X-User-Id", format!("u{user}")),
            )
            .await;
            assert_eq!(again, side, "user u{user} stays on one side");
        }
        before.push(side);
    }
    let on_v2 = before.iter().filter(|s| *s == "v2").count();
    // Expected 40 of 400 (p = 0.1); the standard deviation is 6, allow five.
    assert!((10..=70).contains(&on_v2), "{on_v2} users on v2");

    let revision = gw.status().await["revision"].as_u64().unwrap();
    gw.write_file("routes.yaml", &split((90, 20), Some("header:X-User-Id")));
    gw.wait_revision_after(revision).await;
    let mut after_on_v2 = 0;
    for (user, side) in before.iter().enumerate() {
        let now = served_by(
            &gw,
            c.get(gw.url("/split"))
                .header("X-User-Id", format!("u{user}")),
        )
        .await;
        if side == "v2" {
            assert_eq!(
                now, "v2",
                "user u{user} was on the canary and must stay there"
            );
        }
        if now == "v2" {
            after_on_v2 += 1;
        }
    }
    assert!(
        after_on_v2 > on_v2,
        "raising the canary's weight moved users onto it: {on_v2} -> {after_on_v2}"
    );

    // Without the key, the split still works, just not sticky.
    assert!(["v1", "v2"].contains(&served_by(&gw, c.get(gw.url("/split"))).await.as_str()));
}
