//! Hot reload from files: edits apply with one swap, bad input is rejected alone.

mod common;

use common::{client, eventually, Gateway, TestUpstream, Traffic};
use std::time::Duration;

fn route(id: &str, path: &str, upstream: &str) -> String {
    format!("kind: Route\nid: {id}\nmatch: {{ paths: [\"{path}\"] }}\nupstream: {upstream}\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_edited_while_traffic_flows_applies_without_a_failed_request() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let upstreams = format!("{}---\n{}", a.resource("a"), b.resource("b"));
    let gw = Gateway::builder()
        .file("upstreams.yaml", upstreams)
        .file("routes.yaml", route("steady", "/steady/**", "a"))
        .start()
        .await;

    // Traffic on the steady route during the whole edit.
    let urls = (0..4).map(|w| gw.url(&format!("/steady/{w}"))).collect();
    let traffic = Traffic::start(urls, false);

    traffic.wait_flowing(20).await;
    let revision = gw.status().await["revision"].as_u64().unwrap();
    let edited = format!(
        "{}---\n{}",
        route("steady", "/steady/**", "a"),
        route("fresh", "/fresh", "b")
    );
    gw.write_file("routes.yaml", &edited);
    let status = gw.wait_revision_after(revision).await;
    assert_eq!(status["routes"], 2);
    let resp = client().get(gw.url("/fresh")).send().await.unwrap();
    assert_eq!(resp.headers()["x-upstream"], "b");

    // Move the steady route to the other upstream: one swap, no gap.
    let revision = status["revision"].as_u64().unwrap();
    let moved = format!(
        "{}---\n{}",
        route("steady", "/steady/**", "b"),
        route("fresh", "/fresh", "b")
    );
    gw.write_file("routes.yaml", &moved);
    gw.wait_revision_after(revision).await;
    let resp = client().get(gw.url("/steady/x")).send().await.unwrap();
    assert_eq!(resp.headers()["x-upstream"], "b");
    // Traffic keeps flowing after the swap, not only before it.
    let served = traffic.succeeded();
    traffic.wait_flowing(served + 20).await;

    let (ok, failed) = traffic.stop().await;
    assert!(ok > 50, "traffic flowed: {ok}");
    assert_eq!(failed, 0, "no request failed during the edits");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_file_or_document_is_rejected_alone() {
    let a = TestUpstream::start("a").await;
    let gw = Gateway::builder()
        .file("upstreams.yaml", a.resource("a"))
        .file("one.yaml", route("one", "/one", "a"))
        .file(
            "two.yaml",
            format!(
                "{}---\n{}",
                route("two", "/two", "a"),
                route("two-b", "/two-b", "a")
            ),
        )
        .start()
        .await;
    let c = client();
    let status_of = |path: &'static str| {
        let c = c.clone();
        let url = gw.url(path);
        async move { c.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status_of("/two").await, 200);

    // A file that is not YAML: everything it held stays in force.
    let revision = gw.status().await["revision"].as_u64().unwrap();
    gw.write_file("two.yaml", "kind: Route\n  id: [broken\n");
    let status = gw.wait_revision_after(revision).await;
    let rejected = status["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{status}");
    assert!(
        rejected[0]["key"].as_str().unwrap().ends_with("two.yaml:1"),
        "{status}"
    );
    assert!(rejected[0]["error"]
        .as_str()
        .unwrap()
        .contains("not valid YAML"));
    assert_eq!(
        status_of("/two").await,
        200,
        "the previous version stays in force"
    );
    assert_eq!(status_of("/two-b").await, 200);
    assert_eq!(status_of("/one").await, 200, "other files keep working");

    // One bad document: only it is rejected, naming its field; its old version stays.
    let revision = status["revision"].as_u64().unwrap();
    let bad_doc = format!(
        "{}---\nkind: Route\nid: two-b\nmatch: {{ paths: [\"/two-b\"], methods: [FETCH] }}\nupstream: a\n---\n{}",
        route("two", "/two-new", "a"),
        route("three", "/three", "a")
    );
    gw.write_file("two.yaml", &bad_doc);
    let status = gw.wait_revision_after(revision).await;
    let rejected = status["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{status}");
    assert!(
        rejected[0]["key"]
            .as_str()
            .unwrap()
            .ends_with("two.yaml:2 (Route two-b)"),
        "the rejection names the object: {status}"
    );
    assert!(
        rejected[0]["error"]
            .as_str()
            .unwrap()
            .contains("match.methods[0]"),
        "{status}"
    );
    assert_eq!(
        status_of("/two-new").await,
        200,
        "the good documents of the file apply"
    );
    assert_eq!(status_of("/three").await, 200);
    assert_eq!(status_of("/two").await, 404);
    assert_eq!(
        status_of("/two-b").await,
        200,
        "the bad document's object keeps its old version"
    );

    // A route naming a missing upstream is rejected; fixing it clears the rejection.
    let revision = status["revision"].as_u64().unwrap();
    gw.write_file("one.yaml", &route("one", "/one", "missing"));
    let status = gw.wait_revision_after(revision).await;
    let errors: Vec<&str> = status["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["error"].as_str().unwrap())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("unknown upstream `missing`")),
        "{status}"
    );
    assert_eq!(status_of("/one").await, 200);

    let revision = status["revision"].as_u64().unwrap();
    gw.write_file("one.yaml", &route("one", "/one", "a"));
    gw.write_file("two.yaml", &route("two", "/two", "a"));
    eventually(Duration::from_secs(10), "rejections cleared", || async {
        let s = gw.status().await;
        s["revision"].as_u64().unwrap() > revision && s["rejected"].as_array().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        status_of("/two-b").await,
        404,
        "a removed document removes its route"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_used_upstream_keeps_it_in_force_and_files_come_and_go() {
    let a = TestUpstream::start("a").await;
    let gw = Gateway::builder()
        .file("upstreams.yaml", a.resource("a"))
        .file("routes.yaml", route("r", "/r", "a"))
        .start()
        .await;
    let revision = gw.status().await["revision"].as_u64().unwrap();
    std::fs::remove_file(gw.route_file("upstreams.yaml")).unwrap();
    let status = gw.wait_revision_after(revision).await;
    assert_eq!(status["upstreams"], 1, "{status}");
    assert!(status["rejected"][0]["error"]
        .as_str()
        .unwrap()
        .contains("still used by route r"));
    assert_eq!(
        client().get(gw.url("/r")).send().await.unwrap().status(),
        200
    );

    let revision = status["revision"].as_u64().unwrap();
    gw.write_file(
        "more.yaml",
        &format!("{}---\n{}", a.resource("a"), route("s", "/s", "a")),
    );
    let status = gw.wait_revision_after(revision).await;
    assert_eq!(status["routes"], 2);
    assert!(
        status["rejected"].as_array().unwrap().is_empty(),
        "{status}"
    );
    assert_eq!(
        client().get(gw.url("/s")).send().await.unwrap().status(),
        200
    );
}
