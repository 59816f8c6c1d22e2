//! Resources from a real etcd: hot reload, rejection, faults, `apply`/`get`/`delete`, admin
//! writes.

mod common;

use common::{
    bin, client, eventually, openssl, status_of, wait_status, Etcd, Gateway, TestUpstream, Traffic,
};
use std::process::Command;
use std::time::Duration;

const PREFIX: &str = "/gatehouse";
const WAIT: Duration = Duration::from_secs(10);

fn route(path: &str, upstream: &str) -> String {
    common::etcd::route_value(path, upstream)
}

fn upstream(addr: std::net::SocketAddr) -> String {
    common::etcd::upstream_value(addr)
}

/// A real etcd holding upstream `svc` (a real upstream) and route `id` at `path` to it.
async fn etcd_with_route(id: &str, path: &str) -> (Etcd, TestUpstream) {
    let etcd = Etcd::start();
    let up = TestUpstream::start("svc").await;
    etcd.put("/gatehouse/upstreams/svc", &upstream(up.addr));
    etcd.put(&format!("/gatehouse/routes/{id}"), &route(path, "svc"));
    (etcd, up)
}

#[tokio::test(flavor = "multi_thread")]
async fn puts_updates_and_deletes_take_effect() {
    let (etcd, _up) = etcd_with_route("r1", "/one").await;
    let gw = Gateway::builder().etcd(&etcd.url(), PREFIX).start().await;

    assert_eq!(status_of(&gw, "/one").await, 200);
    let status = gw.status().await;
    assert_eq!(
        status["revision"].as_u64().unwrap(),
        etcd.resources_revision(PREFIX).await,
        "the revision in force is that of etcd's newest resource"
    );

    // A YAML value, with kind and id that agree with the key.
    etcd.put(
        "/gatehouse/routes/r1",
        "kind: Route\nid: r1\nmatch: { paths: [\"/uno\"] }\nupstream: svc\n",
    );
    wait_status(&gw, "/uno", 200).await;
    assert_eq!(status_of(&gw, "/one").await, 404);

    etcd.put("/gatehouse/routes/r2", &route("/two", "svc"));
    wait_status(&gw, "/two", 200).await;
    etcd.delete("/gatehouse/routes/r1");
    wait_status(&gw, "/uno", 404).await;
    assert_eq!(status_of(&gw, "/two").await, 200);
    // The last change was a deletion: the revision in force is past every key's.
    let deleted_at = etcd.revision();
    eventually(WAIT, "the status to follow etcd", || async {
        let revision = gw.status().await["revision"].as_u64().unwrap();
        revision > etcd.resources_revision(PREFIX).await && revision <= deleted_at
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_value_is_rejected_alone_and_its_old_version_stays() {
    let (etcd, _up) = etcd_with_route("r1", "/one").await;
    let gw = Gateway::builder().etcd(&etcd.url(), PREFIX).start().await;

    for (bad, reason) in [
        ("{ not yaml", "not valid YAML or JSON"),
        (
            "{\"match\": {\"paths\": [\"nope\"]}, \"upstream\": \"svc\"}",
            "match.paths[0]",
        ),
        (
            "{\"id\": \"other\", \"match\": {\"paths\": [\"/x\"]}, \"upstream\": \"svc\"}",
            "does not match",
        ),
        (
            &route("/one-new", "missing") as &str,
            "unknown upstream `missing`",
        ),
    ] {
        etcd.put("/gatehouse/routes/r1", bad);
        let rejected = || async {
            let s = gw.status().await;
            s["rejected"].as_array().unwrap().iter().any(|r| {
                r["key"] == "/gatehouse/routes/r1" && r["error"].as_str().unwrap().contains(reason)
            })
        };
        eventually(WAIT, &format!("the rejection of `{bad}`"), rejected).await;
        assert_eq!(gw.metric("gatehouse_config_rejected").await, 1.0);
        assert_eq!(
            status_of(&gw, "/one").await,
            200,
            "the old version of r1 stays in force after `{bad}`"
        );
    }

    // The rest keeps working, and a good put clears the rejection.
    etcd.put("/gatehouse/routes/r2", &route("/two", "svc"));
    wait_status(&gw, "/two", 200).await;
    etcd.put("/gatehouse/routes/r1", &route("/one-fixed", "svc"));
    wait_status(&gw, "/one-fixed", 200).await;
    assert!(gw.status().await["rejected"].as_array().unwrap().is_empty());
    assert_eq!(gw.metric("gatehouse_config_rejected").await, 0.0);

    // Deleting an upstream still in use keeps it in force and says so.
    etcd.delete("/gatehouse/upstreams/svc");
    eventually(WAIT, "the deletion to be listed", || async {
        let s = gw.status().await;
        s["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["error"].as_str().unwrap().contains("still used by route"))
    })
    .await;
    assert_eq!(status_of(&gw, "/two").await, 200);

    // Keys outside the layout are listed, not silently ignored.
    etcd.put("/gatehouse/widgets/w", "{}");
    eventually(WAIT, "the stray key to be listed", || async {
        gw.status().await["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["key"] == "/gatehouse/widgets/w")
    })
    .await;
}

/// The compaction branch runs only when the gateway's watch has fallen behind a compacted
/// revision. The gateway is paused (SIGSTOP) so it reads nothing: its watch stream fills,
/// etcd parks the watcher as a slow consumer, and the changes made meanwhile are compacted
/// away before it resumes. It must then read everything again and lose nothing.
#[tokio::test(flavor = "multi_thread")]
async fn compaction_during_a_watch_loses_nothing() {
    let etcd = Etcd::start();
    let up = TestUpstream::start("svc").await;
    etcd.put("/gatehouse/upstreams/svc", &upstream(up.addr));
    let gw = Gateway::builder().etcd(&etcd.url(), PREFIX).start().await;
    // The watch must be open before the pause: a watch still being opened when the process
    // stops outlives its request timeout meanwhile, and the gateway rightly starts over
    // with a full read instead of ever meeting the compaction.
    etcd.put("/gatehouse/routes/before", &route("/before", "svc"));
    wait_status(&gw, "/before", 200).await;

    common::signal(gw.pid(), "STOP");
    let mut puts: Vec<(String, String)> = (0..200)
        .map(|i| {
            (
                format!("/gatehouse/routes/r{i}"),
                route(&format!("/r{i}"), "svc"),
            )
        })
        .collect();
    // Far more events than the watch stream holds while nobody reads it.
    for round in 0..10 {
        puts.extend((0..200).map(|i| {
            let padding = " ".repeat(2000 + round);
            (
                format!("/gatehouse/routes/r{i}"),
                format!("{}{padding}", route(&format!("/r{i}"), "svc")),
            )
        }));
    }
    etcd.put_many(&puts).await;
    let out = etcd.ctl(&["compact", &etcd.revision().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    etcd.put("/gatehouse/routes/after", &route("/after", "svc"));
    common::signal(gw.pid(), "CONT");

    wait_status(&gw, "/after", 200).await;
    assert!(
        gw.logs().contains("was compacted"),
        "the watch saw the compaction:\n{}",
        gw.logs()
    );
    eventually(WAIT, "the revision in force to be etcd's", || async {
        gw.status().await["revision"].as_u64().unwrap() == etcd.resources_revision(PREFIX).await
    })
    .await;
    assert_eq!(gw.status().await["routes"], 202, "every route is in force");
    for i in [0, 99, 199] {
        assert_eq!(status_of(&gw, &format!("/r{i}")).await, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_killed_while_requests_flow_then_restarted() {
    let (mut etcd, _up) = etcd_with_route("steady", "/steady").await;
    let gw = Gateway::builder().etcd(&etcd.url(), PREFIX).start().await;

    let traffic = Traffic::start(vec![gw.url("/steady")], false);
    traffic.wait_flowing(20).await;
    etcd.kill9();
    eventually(WAIT, "the gateway to notice etcd is gone", || async {
        gw.status().await["source"]["connected"] == false
    })
    .await;
    let served = traffic.succeeded();
    traffic.wait_flowing(served + 20).await;
    assert_eq!(
        status_of(&gw, "/steady").await,
        200,
        "the last snapshot keeps serving"
    );
    assert_eq!(gw.metric("gatehouse_config_source_up").await, 0.0);
    etcd.spawn();
    etcd.put("/gatehouse/routes/later", &route("/later", "svc"));
    wait_status(&gw, "/later", 200).await;
    assert_eq!(gw.status().await["source"]["connected"], true);

    let (ok, failed) = traffic.stop().await;
    assert!(ok > 50);
    assert_eq!(failed, 0, "no request failed while etcd was down");
}

async fn source_of(gw: &Gateway) -> serde_json::Value {
    gw.status().await["source"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_restarted_empty_is_not_trusted_until_a_resync() {
    let (mut etcd, up) = etcd_with_route("steady", "/steady").await;
    let gw = Gateway::builder()
        .etcd(&etcd.url(), PREFIX)
        .api_key("k")
        .start()
        .await;
    let source = source_of(&gw).await;
    assert_eq!(source["kind"], "etcd");
    assert_eq!(source["connected"], true);
    assert_eq!(source["error"], serde_json::Value::Null);
    assert_eq!(source["from_cache"], false);
    assert!(source["since"].is_string());
    assert_eq!(gw.metric("gatehouse_config_source_up").await, 1.0);
    let revision = gw.status().await["revision"].as_u64().unwrap();

    // Same ports, new data directory: an empty etcd at revision 1.
    etcd.kill9();
    etcd.wipe();
    etcd.spawn();
    eventually(WAIT, "the empty etcd to be refused", || async {
        source_of(&gw).await["error"]
            .as_str()
            .is_some_and(|e| e.contains("revision went back"))
    })
    .await;
    assert_eq!(
        status_of(&gw, "/steady").await,
        200,
        "the snapshot in force stays"
    );
    assert_eq!(gw.status().await["revision"].as_u64().unwrap(), revision);
    assert_eq!(gw.metric("gatehouse_config_source_up").await, 0.0);
    assert_eq!(
        gw.logs().matches("etcd not trusted").count(),
        1,
        "said once, not retried"
    );

    let resync = |key: Option<&str>| {
        let mut req = client().post(gw.admin_url("/admin/resync"));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        req.send()
    };
    assert_eq!(
        resync(None).await.unwrap().status(),
        401,
        "the admin key is needed"
    );
    assert_eq!(status_of(&gw, "/steady").await, 200);
    let resp = resync(Some("k")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["resynced"], true, "{body}");

    // Accepted: the empty store is now the configuration.
    assert_eq!(status_of(&gw, "/steady").await, 404);
    let source = source_of(&gw).await;
    assert_eq!(source["connected"], true);
    assert_eq!(source["error"], serde_json::Value::Null);
    assert_eq!(gw.metric("gatehouse_config_source_up").await, 1.0);
    // And it is watched again.
    etcd.put("/gatehouse/upstreams/svc", &upstream(up.addr));
    etcd.put("/gatehouse/routes/fresh", &route("/fresh", "svc"));
    wait_status(&gw, "/fresh", 200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_etcd_is_reported_then_its_return_noticed() {
    let (etcd, _up) = etcd_with_route("steady", "/steady").await;
    let gw = Gateway::builder().etcd(&etcd.url(), PREFIX).start().await;
    assert_eq!(gw.metric("gatehouse_config_source_up").await, 1.0);

    etcd.pause();
    // Keep-alive pings (every 5 s, answered within the 1 s timeout) notice the hang.
    eventually(
        Duration::from_secs(30),
        "the hang to be reported",
        || async { source_of(&gw).await["connected"] == false },
    )
    .await;
    assert!(source_of(&gw).await["error"].is_string());
    assert_eq!(gw.metric("gatehouse_config_source_up").await, 0.0);
    assert_eq!(
        status_of(&gw, "/steady").await,
        200,
        "the last snapshot serves"
    );

    etcd.resume();
    eventually(
        Duration::from_secs(30),
        "etcd's return to be noticed",
        || async {
            let source = source_of(&gw).await;
            source["connected"] == true && source["error"].is_null()
        },
    )
    .await;
    assert_eq!(gw.metric("gatehouse_config_source_up").await, 1.0);
    etcd.put("/gatehouse/routes/later", &route("/later", "svc"));
    wait_status(&gw, "/later", 200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_with_etcd_down_is_unready_until_etcd_answers() {
    let mut etcd = Etcd::not_started();
    let mut gw = Gateway::builder().etcd(&etcd.url(), PREFIX).spawn();
    gw.assert_unready().await;

    etcd.spawn();
    let up = TestUpstream::start("svc").await;
    etcd.put("/gatehouse/upstreams/svc", &upstream(up.addr));
    etcd.put("/gatehouse/routes/r", &route("/r", "svc"));
    gw.wait_ready().await;
    wait_status(&gw, "/r", 200).await;
}

fn gatehouse(args: &[&str], etcd: &Etcd) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .args(["--etcd", &etcd.url(), "--prefix", PREFIX])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_is_all_or_nothing_and_get_and_delete_work() {
    let etcd = Etcd::start();
    let up = TestUpstream::start("svc").await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        format!(
            "kind: Upstream\nid: svc\n{}---\nkind: Route\nid: r1\nmatch: {{ paths: [/one] }}\nupstream: svc\n---\nkind: AuthPolicy\nid: p\njwt: {{ keys: [{{ alg: HS256, secret: topsecret }}] }}\n",
            upstream(up.addr)
        ),
    )
    .unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: Route\nid: r2\nmatch: { paths: [/two] }\nupstream: ghost\n",
    )
    .unwrap();

    let out = gatehouse(
        &["apply", "-f", good.to_str().unwrap(), bad.to_str().unwrap()],
        &etcd,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:1 (Route r2): upstream: unknown upstream `ghost`",
            bad.display()
        )),
        "{stderr}"
    );
    assert!(
        etcd.keys(PREFIX).is_empty(),
        "nothing written when anything is invalid"
    );

    let out = gatehouse(&["apply", "-f", good.to_str().unwrap()], &etcd);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(etcd.keys(PREFIX).len(), 3);

    // A later apply may refer to what etcd already holds.
    std::fs::write(
        &bad,
        "kind: Route\nid: r2\nmatch: { paths: [/two] }\nupstream: svc\n",
    )
    .unwrap();
    let out = gatehouse(&["apply", "-f", bad.to_str().unwrap()], &etcd);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let gw = Gateway::builder().etcd(&etcd.url(), PREFIX).start().await;
    assert_eq!(status_of(&gw, "/one").await, 200);
    assert_eq!(status_of(&gw, "/two").await, 200);

    let out = gatehouse(&["get", "routes", "r1"], &etcd);
    assert!(String::from_utf8_lossy(&out.stdout).contains("/one"));
    let out = gatehouse(&["get", "auth", "p"], &etcd);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("topsecret"),
        "apply stores secrets as written"
    );
    let out = gatehouse(&["get", "routes"], &etcd);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("/one") && listed.contains("/two"),
        "{listed}"
    );
    let out = gatehouse(&["delete", "route", "r2"], &etcd);
    assert!(out.status.success());
    wait_status(&gw, "/two", 404).await;
    assert_eq!(
        gatehouse(&["delete", "routes", "r2"], &etcd).status.code(),
        Some(1),
        "already gone"
    );
    assert_eq!(
        gatehouse(&["get", "routes", "r2"], &etcd).status.code(),
        Some(1)
    );
}

/// `gatehouse apply -f routes/`, as the README shows it: a folder is read as `validate` and
/// the file provider read it (its YAML files, recursively; anything else skipped).
#[tokio::test(flavor = "multi_thread")]
async fn apply_takes_folders() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes");
    std::fs::create_dir_all(routes.join("team")).unwrap();
    std::fs::write(
        routes.join("upstreams.yaml"),
        "kind: Upstream\nid: svc\nnodes: [{ addr: \"127.0.0.1:9\" }]\n",
    )
    .unwrap();
    std::fs::write(
        routes.join("team/users.yml"),
        "kind: Route\nid: users\nmatch: { paths: [/users] }\nupstream: svc\n",
    )
    .unwrap();
    std::fs::write(routes.join("README.txt"), "not a resource").unwrap();

    let out = gatehouse(&["apply", "-f", routes.to_str().unwrap()], &etcd);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut keys = etcd.keys(PREFIX);
    keys.sort();
    assert_eq!(
        keys,
        vec!["/gatehouse/routes/users", "/gatehouse/upstreams/svc"]
    );

    let missing = dir.path().join("nowhere");
    let out = gatehouse(&["apply", "-f", missing.to_str().unwrap()], &etcd);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_writes_validate_then_write_to_etcd() {
    let etcd = Etcd::start();
    let up = TestUpstream::start("svc").await;
    etcd.put("/gatehouse/upstreams/svc", &upstream(up.addr));
    let gw = Gateway::builder()
        .etcd(&etcd.url(), PREFIX)
        .api_key("k")
        .start()
        .await;
    let c = client();
    let admin = |method: reqwest::Method, path: &str| {
        c.request(method, gw.admin_url(path)).bearer_auth("k")
    };

    let resp = admin(reqwest::Method::PUT, "/admin/routes/r1")
        .body(route("/one", "svc"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["in_force"], true, "{body}");
    assert_eq!(
        status_of(&gw, "/one").await,
        200,
        "in force when the write answers"
    );

    let before = etcd.resources_revision(PREFIX).await;
    let resp = admin(reqwest::Method::PUT, "/admin/routes/r2")
        .body(
            "{\"match\": {\"paths\": [\"bad\"], \"methods\": [\"FETCH\"]}, \"upstream\": \"svc\"}",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    let errors: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        errors.iter().any(|e| e.starts_with("match.paths[0]")),
        "{body}"
    );
    assert!(
        errors.iter().any(|e| e.starts_with("match.methods[0]")),
        "{body}"
    );
    let resp = admin(reqwest::Method::PUT, "/admin/routes/r2")
        .body(route("/two", "ghost"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "references are checked too");
    assert_eq!(
        etcd.resources_revision(PREFIX).await,
        before,
        "etcd untouched by invalid writes"
    );

    let resp = admin(reqwest::Method::DELETE, "/admin/upstreams/svc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409, "an upstream in use cannot be deleted");
    let resp = admin(reqwest::Method::DELETE, "/admin/routes/r1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(status_of(&gw, "/one").await, 404);
    let resp = admin(reqwest::Method::DELETE, "/admin/routes/r1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = c
        .put(gw.admin_url("/admin/routes/r3"))
        .body(route("/3", "svc"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "writes need the key");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_with_if_match_never_overwrites_a_change_made_since_its_read() {
    let (etcd, _up) = etcd_with_route("r", "/first").await;
    let gw = Gateway::builder()
        .etcd(&etcd.url(), PREFIX)
        .api_key("k")
        .start()
        .await;
    let c = client();
    let admin = |method: reqwest::Method, path: &str| {
        c.request(method, gw.admin_url(path)).bearer_auth("k")
    };
    let read = || async {
        let resp = admin(reqwest::Method::GET, "/admin/routes/r")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.headers()["etag"].to_str().unwrap().to_string()
    };
    // A PUT of the route to `path` (or a DELETE when `path` is empty), with `If-Match: tag`
    // when there is one: the status and the body's error code and message.
    let write = |tag: Option<&str>, path: &str| {
        let mut req = match path {
            "" => admin(reqwest::Method::DELETE, "/admin/routes/r"),
            path => admin(reqwest::Method::PUT, "/admin/routes/r").body(route(path, "svc")),
        };
        if let Some(tag) = tag {
            req = req.header("If-Match", tag);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.unwrap();
            let text = |field: &str| body[field].as_str().unwrap_or_default().to_string();
            (status, text("error"), text("message"))
        }
    };
    // Two editors read the same version.
    let (alice, bob) = (read().await, read().await);
    assert_eq!(alice, bob);

    // Alice writes first: her version was current, so it applies.
    assert_eq!(write(Some(&alice), "/alice").await.0, 200);
    assert_eq!(status_of(&gw, "/alice").await, 200);

    // Bob's write, from the version before Alice's, is refused and changes nothing; so is
    // his delete.
    let before = etcd.resources_revision(PREFIX).await;
    for path in ["/bob", ""] {
        let (status, code, message) = write(Some(&bob), path).await;
        assert_eq!(
            (status, code.as_str()),
            (412, "precondition_failed"),
            "{path:?}"
        );
        assert!(message.contains("routes/r changed"), "{message}");
    }
    assert_eq!(etcd.resources_revision(PREFIX).await, before);
    assert_eq!(status_of(&gw, "/alice").await, 200);
    assert_eq!(status_of(&gw, "/bob").await, 404);

    // Read again, Bob's edit applies.
    let bob = read().await;
    assert_ne!(bob, alice);
    assert_eq!(write(Some(&bob), "/bob").await.0, 200);
    assert_eq!(status_of(&gw, "/bob").await, 200);

    // An object deleted since the read is not brought back by a conditional write; `*`
    // asks only that it be in etcd; a write without If-Match stores it, as before.
    let stale = read().await;
    assert_eq!(write(None, "").await.0, 200);
    let (status, code, _) = write(Some(&stale), "/again").await;
    assert_eq!((status, code.as_str()), (412, "not_in_etcd"));
    assert_eq!(write(Some("*"), "/again").await.0, 412);
    assert_eq!(status_of(&gw, "/again").await, 404);
    assert_eq!(write(None, "/again").await.0, 200);
    assert_eq!(write(Some("*"), "/star").await.0, 200);
    assert_eq!(status_of(&gw, "/star").await, 200);
    // A weak tag (a proxy that compresses the API weakens it) reads as the same revision.
    let weak = format!("W/{}", read().await);
    assert_eq!(write(Some(&weak), "/weak").await.0, 200);
    assert_eq!(status_of(&gw, "/weak").await, 200);

    // A malformed If-Match is refused naming the header.
    for bad in ["\"abc\"", "-3", "", "\"1\", \"2\""] {
        let (status, _, message) = write(Some(bad), "/x").await;
        assert_eq!(status, 400, "{bad:?}");
        assert!(message.starts_with("If-Match"), "{message}");
    }

    // `If-None-Match: *` creates only: two who create the same object cannot overwrite
    // each other.
    let create = |path: &str, headers: &[(&str, &str)]| {
        let mut req = admin(reqwest::Method::PUT, "/admin/routes/fresh").body(route(path, "svc"));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.unwrap();
            (
                status,
                body["error"].as_str().unwrap_or_default().to_string(),
            )
        }
    };
    let only_new = [("If-None-Match", "*")];
    assert_eq!(create("/first-create", &only_new).await.0, 200);
    assert_eq!(status_of(&gw, "/first-create").await, 200);
    let before = etcd.resources_revision(PREFIX).await;
    assert_eq!(
        create("/second-create", &only_new).await,
        (412, "already_exists".to_string())
    );
    assert_eq!(etcd.resources_revision(PREFIX).await, before);
    assert_eq!(status_of(&gw, "/second-create").await, 404);
    // Another tag, both headers, or a delete with it: refused naming the header.
    for headers in [
        &[("If-None-Match", "\"5\"")][..],
        &[("If-None-Match", "*"), ("If-Match", "*")],
    ] {
        assert_eq!(
            create("/x", headers).await,
            (400, "invalid_header".to_string())
        );
    }
    let delete = admin(reqwest::Method::DELETE, "/admin/routes/fresh")
        .header("If-None-Match", "*")
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 400);
    assert_eq!(status_of(&gw, "/first-create").await, 200);
}

/// `GET /admin/{kind}/{id}/stored`: the text etcd holds, comments and all, even a version
/// that was rejected, with its own revision as the tag a conditional write takes.
#[tokio::test(flavor = "multi_thread")]
async fn the_stored_text_of_an_object_is_served_even_when_rejected_but_never_a_policys() {
    let (etcd, _up) = etcd_with_route("r", "/r").await;
    etcd.put(
        "/gatehouse/auth/p",
        "jwt: { keys: [{ alg: HS256, secret: \"a stored secret of some length\" }] }\n",
    );
    let gw = Gateway::builder()
        .etcd(&etcd.url(), PREFIX)
        .api_key("k")
        .start()
        .await;
    // A newer version that is rejected: the one before stays in force.
    let rejected = "# kept as written\nmatch: { paths: [\"/r2\"] }\nupstream: missing\n";
    etcd.put("/gatehouse/routes/r", rejected);
    eventually(WAIT, "the rejection", || async {
        !gw.status().await["rejected"].as_array().unwrap().is_empty()
    })
    .await;
    let c = client();
    let get = |path: &str| c.get(gw.admin_url(path)).bearer_auth("k").send();
    let resp = get("/admin/routes/r/stored").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/yaml"));
    let tag = resp.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(resp.text().await.unwrap(), rejected);
    assert_eq!(
        status_of(&gw, "/r").await,
        200,
        "the version before is in force"
    );

    // Fixed with its tag: written, in force.
    let fixed = rejected.replace("missing", "svc");
    let put = |tag: &str, body: String| {
        c.put(gw.admin_url("/admin/routes/r"))
            .bearer_auth("k")
            .header("If-Match", tag)
            .body(body)
            .send()
    };
    assert_eq!(put(&tag, fixed.clone()).await.unwrap().status(), 200);
    assert_eq!(status_of(&gw, "/r2").await, 200);
    // The tag is the object's own: once it was written again, the old one is refused.
    assert_eq!(put(&tag, fixed).await.unwrap().status(), 412);

    // Not in etcd: 404. A policy's text holds its secrets: refused. A wrong key: 401.
    assert_eq!(
        get("/admin/routes/none/stored").await.unwrap().status(),
        404
    );
    let policy = get("/admin/auth/p/stored").await.unwrap();
    assert_eq!(policy.status(), 403);
    assert!(!policy.text().await.unwrap().contains("a stored secret"));
    let anonymous = c
        .get(gw.admin_url("/admin/routes/r/stored"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_with_authentication() {
    let (etcd, _up) = etcd_with_route("r", "/r").await;
    for args in [
        &["user", "add", "root", "--new-user-password", "rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["auth", "enable"],
    ] {
        let out = etcd.ctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let gw = Gateway::builder()
        .etcd(&etcd.url(), PREFIX)
        .etcd_user("root", "rootpw")
        .start()
        .await;
    assert_eq!(status_of(&gw, "/r").await, 200);

    let wrong = Gateway::builder()
        .etcd(&etcd.url(), PREFIX)
        .etcd_user("root", "nope")
        .spawn();
    wrong.assert_unready().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_over_tls_with_a_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "etcd.key",
            "-out",
            "etcd.csr",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "etcd.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "etcd.pem",
        ],
    );
    let path = |f: &str| dir.join(f).display().to_string();

    let etcd = Etcd::start_tls(&path("ca.pem"), &path("etcd.pem"), &path("etcd.key"));
    assert!(etcd.url().starts_with("https://"));
    let up = TestUpstream::start("svc").await;
    etcd.put("/gatehouse/upstreams/svc", &upstream(up.addr));
    etcd.put("/gatehouse/routes/r", &route("/r", "svc"));
    let gw = Gateway::builder()
        .etcd(&etcd.url(), PREFIX)
        .etcd_ca(&path("ca.pem"))
        .start()
        .await;
    assert_eq!(status_of(&gw, "/r").await, 200);
    etcd.put("/gatehouse/routes/r2", &route("/r2", "svc"));
    wait_status(&gw, "/r2", 200).await;
}
