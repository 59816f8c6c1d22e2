//! `kind: GlobalRule` (SPEC §12) through the real binary: plugins every route runs before its
//! own, from files (hot reload, a bad rule rejected alone, `validate`) and from etcd (keys,
//! admin API, `apply`/`get`/`delete`).

mod common;

use common::{bin, client, eventually, status_of, wait_status, Etcd, Gateway, TestUpstream};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
const PREFIX: &str = "/gatehouse";

const ROUTES: &str = r#"
kind: Route
id: a
match: { paths: ["/a/**"] }
upstream: up
---
kind: Route
id: here
match: { paths: ["/here"] }
direct_response: { status: 200, body: "here" }
---
kind: Route
id: own
match: { paths: ["/own/**"] }
upstream: up
plugins:
  - name: ip_restriction
    config: { deny: [127.0.0.0/8] }
"#;

fn rule(id: &str, plugins: &str) -> String {
    format!("kind: GlobalRule\nid: {id}\nplugins:\n{plugins}")
}

fn ip_rule(id: &str, list: &str, cidr: &str) -> String {
    rule(
        id,
        &format!("  - name: ip_restriction\n    config: {{ {list}: [{cidr}] }}\n"),
    )
}

fn rejected(status: &serde_json::Value) -> Vec<(String, String)> {
    status["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let text = |f: &str| r[f].as_str().unwrap().to_string();
            (text("key"), text("error"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_global_rule_runs_on_every_route_and_reloads_with_its_file() {
    let up = TestUpstream::start("up").await;
    let gw = Gateway::builder()
        .file("up.yaml", up.resource("up"))
        .file("routes.yaml", ROUTES)
        .file("global.yaml", ip_rule("guard", "deny", "127.0.0.0/8"))
        .start()
        .await;
    let status = gw.status().await;
    assert_eq!(status["global_rules"], 1, "{status}");

    // Every route, proxied or answered here, refuses the loopback client.
    for path in ["/a/x", "/here", "/own/x"] {
        let resp = client().get(gw.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 403, "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "forbidden");
    }
    assert_eq!(up.hits(), 0, "refused before the upstream");

    // Edited to allow the client: the routes answer again, the route's own plugins still
    // run after the global ones.
    let revision = status["revision"].as_u64().unwrap();
    gw.write_file("global.yaml", &ip_rule("guard", "allow", "127.0.0.0/8"));
    gw.wait_revision_after(revision).await;
    assert_eq!(status_of(&gw, "/a/x").await, 200);
    assert_eq!(status_of(&gw, "/here").await, 200);
    assert_eq!(status_of(&gw, "/own/x").await, 403, "the route's own deny");

    // Global plugins run before the route's own of the same stage: a global cors answers
    // the preflight before the route's ip_restriction would refuse it.
    let revision = gw.status().await["revision"].as_u64().unwrap();
    let cors = rule(
        "cors",
        "  - name: cors\n    config: { allow_origins: [\"https://app.example.com\"] }\n",
    );
    gw.write_file("cors.yaml", &cors);
    gw.wait_revision_after(revision).await;
    let preflight = client()
        .request(reqwest::Method::OPTIONS, gw.url("/own/x"))
        .header("Origin", "https://app.example.com")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let resp = client()
        .get(gw.url("/a/x"))
        .header("Origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example.com",
        "the global cors marks proxied answers too"
    );

    // Deleting a rule takes its plugins off every route.
    let revision = gw.status().await["revision"].as_u64().unwrap();
    std::fs::remove_file(gw.route_file("cors.yaml")).unwrap();
    let status = gw.wait_revision_after(revision).await;
    assert_eq!(status["global_rules"], 1);
    let preflight = client()
        .request(reqwest::Method::OPTIONS, gw.url("/own/x"))
        .header("Origin", "https://app.example.com")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 403, "the route's own deny again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_global_rule_is_rejected_alone_and_the_good_one_stays() {
    let up = TestUpstream::start("up").await;
    let gw = Gateway::builder()
        .file("up.yaml", up.resource("up"))
        .file("routes.yaml", ROUTES)
        .file("global.yaml", ip_rule("guard", "deny", "127.0.0.0/8"))
        .start()
        .await;
    assert_eq!(status_of(&gw, "/a/x").await, 403);

    // A second rule that does not validate: rejected alone, naming the field.
    let revision = gw.status().await["revision"].as_u64().unwrap();
    gw.write_file("bad.yaml", &ip_rule("bad", "allow", "not-an-address"));
    let status = gw.wait_revision_after(revision).await;
    let rejections = rejected(&status);
    assert_eq!(rejections.len(), 1, "{status}");
    assert!(
        rejections[0].0.ends_with("bad.yaml:1 (GlobalRule bad)"),
        "{rejections:?}"
    );
    assert!(
        rejections[0].1.starts_with("plugins[0].config.allow[0]: "),
        "{rejections:?}"
    );
    assert_eq!(status["global_rules"], 1);
    assert_eq!(status_of(&gw, "/a/x").await, 403, "the good rule stays");
    assert_eq!(status_of(&gw, "/here").await, 403);

    // The good rule edited into a bad one: its previous version stays in force.
    let revision = status["revision"].as_u64().unwrap();
    let unknown = rule("guard", "  - name: ip_restrictions\n    config: {}\n");
    gw.write_file("global.yaml", &unknown);
    let status = gw.wait_revision_after(revision).await;
    let rejections = rejected(&status);
    assert!(
        rejections.iter().any(
            |(key, error)| key.ends_with("global.yaml:1 (GlobalRule guard)")
                && error.starts_with("plugins[0].name: no plugin is named `ip_restrictions`")
        ),
        "{rejections:?}"
    );
    assert_eq!(
        status_of(&gw, "/a/x").await,
        403,
        "the previous version stays"
    );

    // Both fixed: the routes answer, nothing is rejected.
    let revision = status["revision"].as_u64().unwrap();
    gw.write_file("global.yaml", &ip_rule("guard", "deny", "192.0.2.0/24"));
    gw.write_file("bad.yaml", &ip_rule("bad", "allow", "127.0.0.1"));
    eventually(WAIT, "both rules to be in force", || async {
        let s = gw.status().await;
        s["revision"].as_u64().unwrap() > revision
            && s["global_rules"] == 2
            && rejected(&s).is_empty()
    })
    .await;
    wait_status(&gw, "/a/x", 200).await;
    assert_eq!(status_of(&gw, "/here").await, 200);
}

#[test]
fn validate_judges_global_rules() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("global.yaml");
    std::fs::write(&file, ip_rule("guard", "deny", "192.0.2.0/24")).unwrap();
    let out = Command::new(bin())
        .args(["validate", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("1 global rules"), "{stdout}");

    let bad = rule(
        "guard",
        "  - name: request_size_limit\n    config: { max_body: lots }\n",
    );
    std::fs::write(&file, bad).unwrap();
    let out = Command::new(bin())
        .args(["validate", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(":1 (GlobalRule guard): plugins[0].config.max_body: "),
        "{stderr}"
    );
}

fn gatehouse(args: &[&str], etcd: &Etcd) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .args(["--etcd", &etcd.url(), "--prefix", PREFIX])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn global_rules_from_etcd_keys_the_admin_api_and_the_command_line() {
    let etcd = Etcd::start();
    let up = TestUpstream::start("up").await;
    etcd.put("/gatehouse/upstreams/up", &up.resource("up"));
    etcd.put(
        "/gatehouse/routes/a",
        r#"{"match": {"paths": ["/a/**"]}, "upstream": "up"}"#,
    );
    let gw = Gateway::builder()
        .etcd(&etcd.url(), PREFIX)
        .api_key("k")
        .start()
        .await;
    assert_eq!(status_of(&gw, "/a/x").await, 200);

    // A key under {prefix}/global_rules/ applies to every route.
    etcd.put(
        "/gatehouse/global_rules/x",
        r#"{"plugins": [{"name": "ip_restriction", "config": {"deny": ["127.0.0.0/8"]}}]}"#,
    );
    wait_status(&gw, "/a/x", 403).await;
    etcd.put(
        "/gatehouse/global_rules/x",
        "plugins: [{ name: ip_restriction, config: { allow: [nope] } }]\n",
    );
    eventually(WAIT, "the bad value to be rejected", || async {
        rejected(&gw.status().await).iter().any(|(key, error)| {
            key == "/gatehouse/global_rules/x" && error.starts_with("plugins[0].config.allow[0]")
        })
    })
    .await;
    assert_eq!(status_of(&gw, "/a/x").await, 403, "the old version stays");

    // The admin API reads and writes them like any kind.
    let c = client();
    let admin = |method: reqwest::Method, path: &str| {
        c.request(method, gw.admin_url(path)).bearer_auth("k")
    };
    let list: serde_json::Value = admin(reqwest::Method::GET, "/admin/global_rules")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["kind"], "GlobalRule", "{list}");
    assert_eq!(list[0]["id"], "x");
    assert_eq!(list[0]["plugins"][0]["config"]["deny"][0], "127.0.0.0/8");

    let before = etcd.resources_revision(PREFIX).await;
    let resp = admin(reqwest::Method::PUT, "/admin/global_rules/y")
        .body(r#"{"plugins": [{"name": "request_size_limit", "config": {"max_body": "lots"}}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("plugins[0].config.max_body: "),
        "{body}"
    );
    assert_eq!(
        etcd.resources_revision(PREFIX).await,
        before,
        "etcd untouched by an invalid write"
    );

    let resp = admin(reqwest::Method::PUT, "/admin/global_rules/x")
        .body("plugins: [{ name: ip_restriction, config: { deny: [192.0.2.0/24] } }]\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["in_force"], true, "{body}");
    assert_eq!(status_of(&gw, "/a/x").await, 200, "in force when answered");
    let one: serde_json::Value = admin(reqwest::Method::GET, "/admin/global_rules/x")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["plugins"][0]["config"]["deny"][0], "192.0.2.0/24");
    assert!(rejected(&gw.status().await).is_empty());

    let resp = admin(reqwest::Method::DELETE, "/admin/global_rules/x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(etcd.keys("/gatehouse/global_rules").is_empty());
    assert_eq!(gw.status().await["global_rules"], 0);

    // The command line: apply, get, delete.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("global.yaml");
    std::fs::write(&file, ip_rule("cli", "deny", "127.0.0.1")).unwrap();
    let out = gatehouse(&["apply", "-f", file.to_str().unwrap()], &etcd);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied global_rules/cli"));
    wait_status(&gw, "/a/x", 403).await;
    let out = gatehouse(&["get", "global_rules"], &etcd);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("# /gatehouse/global_rules/cli") && listed.contains("127.0.0.1"),
        "{listed}"
    );
    let out = gatehouse(&["get", "global_rules", "cli"], &etcd);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ip_restriction"));
    let out = gatehouse(&["delete", "global_rule", "cli"], &etcd);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_status(&gw, "/a/x", 200).await;
}
