//! The dashboard (SPEC §14) in a real headless Chromium driven by Selenium
//! (`tests/dashboard/drive.py`), against a gateway on a real etcd: a wrong key shows
//! nothing; the views show what is in force, live node health and per-route rates from the
//! gateway's own metrics, and no secret; an invalid edit is refused with its errors and
//! writes nothing; an unchanged one written back stays as it was; a valid one is in force
//! through the proxy; with etcd gone the last snapshot is shown and the outage said, and
//! with the gateway stopped the page says it does not answer.
//!
//! Screenshots of the main views are written to `DASHBOARD_SCREENSHOTS` when it is set (the
//! ones in docs/dashboard/ come from there), else to a temporary folder.

mod common;

use common::{eventually, Etcd, Gateway, TestUpstream};
use std::process::Command;
use std::time::Duration;

const PREFIX: &str = "/gatehouse";
const KEY: &str = "dashboard-admin-key";

/// Runs `drive.py` in `mode` against the admin listener, or against `admin` when given.
fn drive(mode: &str, gw: &Gateway, admin: Option<&str>, shots: &std::path::Path) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dashboard/drive.py");
    let admin = admin.map_or_else(|| gw.admin_url(""), str::to_string);
    let out = Command::new("python3")
        .args([script, mode, &admin, &gw.url(""), KEY])
        .arg(shots)
        .arg(gw.pid().to_string())
        .output()
        .expect("python3 runs (scripts/setup --test installs selenium and chromium)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the browser's {mode} run failed:\n{stdout}\n{}\ngateway:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_reads_edits_and_sees_an_outage_in_a_real_browser() {
    let mut etcd = Etcd::start();
    let up = TestUpstream::start("svc").await;
    etcd.put(
        &format!("{PREFIX}/upstreams/svc"),
        &format!("nodes: [{{ addr: \"{}\" }}]\n", up.addr),
    );
    etcd.put(
        &format!("{PREFIX}/routes/hello"),
        "match: { paths: [\"/hello\"] }\nupstream: svc\n",
    );
    etcd.put(
        &format!("{PREFIX}/routes/broken"),
        "match: { paths: [\"/broken\"] }\nupstream: missing\n",
    );
    // Values YAML would read as something else if written plain.
    etcd.put(
        &format!("{PREFIX}/routes/tricky"),
        "match: { paths: [\"/tricky\"], headers: { X-Colon: \"a:\", X-Yes: \"yes\", X-Num: \"08\" } }\n\
         direct_response: { status: 200, body: \"l1\\nl2 end:\" }\n",
    );
    etcd.put(
        &format!("{PREFIX}/auth/jwt-hs"),
        "jwt: { keys: [{ kid: k1, alg: HS256, secret: \"base64:ZGFzaGJvYXJkLXRlc3Qtc2VjcmV0\" }] }\n",
    );
    let gw = Gateway::builder()
        .etcd(&etcd.url(), PREFIX)
        .api_key(KEY)
        .start()
        .await;
    let temporary = tempfile::tempdir().unwrap();
    let shots = match std::env::var_os("DASHBOARD_SCREENSHOTS") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => temporary.path().to_path_buf(),
    };
    std::fs::create_dir_all(&shots).unwrap();

    // The proxy serves the admin listener under `/ops`, as an ingress with a path prefix
    // would: the page works through it.
    etcd.put(
        &format!("{PREFIX}/upstreams/admin"),
        &format!("nodes: [{{ addr: \"{}\" }}]\n", gw.admin),
    );
    etcd.put(
        &format!("{PREFIX}/routes/ops"),
        "match: { paths: [\"/ops/**\"] }\nrewrite: { strip_prefix: 1 }\nupstream: admin\n",
    );
    common::wait_status(&gw, "/ops/ui/", 200).await;
    let ops = gw.url("/ops");
    tokio::task::block_in_place(|| drive("prefix", &gw, Some(&ops), &shots));

    let main_gw = &gw;
    let main_shots = shots.clone();
    tokio::task::block_in_place(|| drive("main", main_gw, None, &main_shots));

    etcd.kill9();
    eventually(
        Duration::from_secs(20),
        "the gateway to see etcd gone",
        || async { gw.status().await["source"]["connected"] == false },
    )
    .await;
    tokio::task::block_in_place(|| drive("outage", &gw, None, &shots));
    for view in [
        "overview",
        "routes",
        "upstreams",
        "rejected",
        "edit-refused",
        "outage",
    ] {
        assert!(shots.join(format!("{view}.png")).is_file(), "{view}.png");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_files_and_live_state_are_served_as_documented() {
    let up = TestUpstream::start("svc").await;
    let gw = Gateway::builder()
        .file(
            "r.yaml",
            format!(
                "{}circuit_breaker: {{ error_rate: 0.5, min_requests: 20, window: 10s, open_for: 5s }}\n\
                 concurrency: {{ max: 7 }}\n",
                up.resource("svc")
            ),
        )
        .api_key(KEY)
        .start()
        .await;
    let c = common::client();
    let page = c.get(gw.admin_url("/ui/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(policy.contains("default-src 'none'") && policy.contains("frame-ancestors 'none'"));
    assert!(page.text().await.unwrap().contains("src=\"app.js\""));
    for (path, status) in [
        ("/ui", 301),
        ("/ui/app.js", 200),
        ("/ui/app.css", 200),
        ("/ui/nope", 404),
    ] {
        let resp = c.get(gw.admin_url(path)).send().await.unwrap();
        assert_eq!(resp.status(), status, "{path}");
    }
    // The stored text is etcd's: with files, the files are where to read it.
    let stored = c
        .get(gw.admin_url("/admin/upstreams/svc/stored"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 409);
    let post = c.post(gw.admin_url("/ui/")).send().await.unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");

    assert_eq!(
        c.get(gw.admin_url("/admin/live"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let live: serde_json::Value = c
        .get(gw.admin_url("/admin/live"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(live[0]["id"], "svc", "{live}");
    assert_eq!(live[0]["breaker"], "closed", "{live}");
    assert_eq!(live[0]["concurrency"]["limit"], 7, "{live}");
    assert_eq!(live[0]["concurrency"]["in_flight"], 0, "{live}");
    assert_eq!(live[0]["nodes"][0]["healthy"], true, "{live}");
    assert_eq!(live[0]["nodes"][0]["addr"], up.addr.to_string(), "{live}");

    // A key a browser cannot send as it is stops startup, naming it.
    let error =
        common::startup_error("provider: { file: { paths: [r] } }\nadmin: { api_key: \"kéy\" }\n");
    assert!(error.contains("admin.api_key"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_admin_key_the_page_opens_without_asking_for_one() {
    let up = TestUpstream::start("svc").await;
    let gw = Gateway::builder()
        .file(
            "r.yaml",
            format!(
                "{}---\nkind: Route\nid: hello\nmatch: {{ paths: [\"/hello\"] }}\nupstream: svc\n",
                up.resource("svc")
            ),
        )
        .start()
        .await;
    let shots = tempfile::tempdir().unwrap();
    tokio::task::block_in_place(|| drive("open", &gw, None, shots.path()));
}
