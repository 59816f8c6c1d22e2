//! The admin listener.

mod common;

use common::{client, Gateway, TestUpstream};

const ROUTE: &str = "kind: Route\nid: r1\nmatch: { paths: [\"/r1\"] }\nupstream: u1\n";

#[tokio::test(flavor = "multi_thread")]
async fn health_status_and_read_api_behind_the_key() {
    let up = TestUpstream::start("u1").await;
    let policy = "kind: AuthPolicy\nid: p1\njwt: { keys: [{ kid: k1, alg: HS256, secret: \"base64:c2VjcmV0\" }] }\n";
    let gw = Gateway::builder()
        .file(
            "all.yaml",
            format!("{}---\n{ROUTE}---\n{policy}", up.resource("u1")),
        )
        .api_key("s3cret")
        .start()
        .await;
    let c = client();

    assert_eq!(
        c.get(gw.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(gw.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    for (key, expected) in [
        (None, 401),
        (Some("wrong"), 401),
        (Some("s3cre"), 401),
        (Some("s3cret"), 200),
    ] {
        let mut req = c.get(gw.admin_url("/admin/status"));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), expected, "key {key:?}");
        if expected == 401 {
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["error"], "unauthorized");
        }
    }

    let get = |path: &str| c.get(gw.admin_url(path)).bearer_auth("s3cret").send();
    let status: serde_json::Value = get("/admin/status").await.unwrap().json().await.unwrap();
    assert_eq!(status["routes"], 1);
    assert_eq!(status["upstreams"], 1);
    assert_eq!(status["auth"], 1);
    assert!(status["revision"].as_u64().unwrap() >= 1);
    assert!(status["rejected"].as_array().unwrap().is_empty());
    assert!(status["loaded_at"].as_str().unwrap().ends_with('Z'));

    let routes: serde_json::Value = get("/admin/routes").await.unwrap().json().await.unwrap();
    assert_eq!(routes[0]["id"], "r1");
    assert_eq!(routes[0]["kind"], "Route");
    let upstream: serde_json::Value = get("/admin/upstreams/u1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(upstream["nodes"][0]["addr"], up.addr.to_string());
    let policy: serde_json::Value = get("/admin/auth/p1").await.unwrap().json().await.unwrap();
    assert_eq!(policy["jwt"]["keys"][0]["kid"], "k1");
    assert!(
        policy["jwt"]["keys"][0].get("secret").is_none(),
        "secrets are not shown"
    );
    assert_eq!(get("/admin/routes/nope").await.unwrap().status(), 404);
    assert_eq!(get("/admin/widgets").await.unwrap().status(), 404);

    for method in [reqwest::Method::PUT, reqwest::Method::DELETE] {
        let resp = c
            .request(method.clone(), gw.admin_url("/admin/routes/r1"))
            .bearer_auth("s3cret")
            .body(ROUTE)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 409, "{method} in file mode");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "conflict");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_key_reads_are_open_and_writes_refused() {
    let gw = Gateway::builder()
        .file(
            "r.yaml",
            "kind: Route\nid: d\nmatch: { paths: [\"/d\"] }\ndirect_response: { status: 200 }\n",
        )
        .start()
        .await;
    let c = client();
    assert_eq!(
        c.get(gw.admin_url("/admin/routes/d"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let resp = c
        .delete(gw.admin_url("/admin/routes/d"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}
