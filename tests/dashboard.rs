//! The dashboard (SPEC §14) in a real headless Chromium driven by Selenium
//! (`tests/dashboard/drive.py`), against a gateway on a real etcd: a wrong key shows
//! nothing; the views show what is in force, live node health and per-route rates from the
//! gateway's own metrics, and no secret; an invalid edit is refused with its errors and
//! writes nothing; a valid one is in force through the proxy; with etcd gone the last
//! snapshot is shown and the outage said.
//!
//! Screenshots of the main views are written to `DASHBOARD_SCREENSHOTS` when it is set (the
//! ones in docs/dashboard/ come from there), else to a temporary folder.

mod common;

use common::{eventually, Etcd, Gateway, TestUpstream};
use std::process::Command;
use std::time::Duration;

const PREFIX: &str = "/gatehouse";
const KEY: &str = "dashboard-admin-key";

fn drive(mode: &str, gw: &Gateway, shots: &std::path::Path) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dashboard/drive.py");
    let out = Command::new("python3")
        .args([script, mode, &gw.admin_url(""), &gw.url(""), KEY])
        .arg(shots)
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

    let main_gw = &gw;
    let main_shots = shots.clone();
    tokio::task::block_in_place(|| drive("main", main_gw, &main_shots));

    etcd.kill9();
    eventually(
        Duration::from_secs(20),
        "the gateway to see etcd gone",
        || async { gw.status().await["source"]["connected"] == false },
    )
    .await;
    tokio::task::block_in_place(|| drive("outage", &gw, &shots));
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
