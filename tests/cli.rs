//! The command line: validate, startup errors, graceful shutdown, the demo.

mod common;

use common::{bin, client, eventually, free_addr, spawn_gatehouse, Gateway, TestUpstream, Traffic};
use std::process::Command;
use std::time::Duration;

#[test]
fn validate_accepts_the_sample_routes() {
    let out = Command::new(bin())
        .args(["validate", concat!(env!("CARGO_MANIFEST_DIR"), "/routes")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "));
}

#[test]
fn validate_lists_every_error_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: Route\nid: r\nmatch: { paths: [nope], methods: [FETCH] }\nupstream: ghost\n---\nkind: Upstream\nid: u\nnodes: [{ addr: \"no-port\" }]\nextra: 1\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["validate", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = bad.display().to_string();
    for line in [
        format!("{file}:1 (Route r): match.paths[0]: "),
        format!("{file}:1 (Route r): match.methods[0]: "),
        format!("{file}:2 (Upstream u): extra: unknown field `extra`"),
    ] {
        assert!(stderr.contains(&line), "missing `{line}` in:\n{stderr}");
    }
}

/// Runs `gatehouse validate` with a bound on its time: a hang is a failure, not a stuck test.
fn validate_within(paths: &[&std::path::Path], limit: Duration) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(bin())
        .arg("validate")
        .args(paths)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("validate did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: std::fs::read(out).unwrap(),
        stderr: std::fs::read(err).unwrap(),
    }
}

#[test]
fn validate_names_the_kind_and_id_of_a_rejected_document() {
    let dir = tempfile::tempdir().unwrap();
    let mixed = dir.path().join("mixed.yaml");
    std::fs::write(
        &mixed,
        "kind: Upstream\nid: svc\nnodes: [{ addr: \"127.0.0.1:9\" }]\n---\nkind: Route\nid: ok\nmatch: { paths: [/ok] }\nupstream: svc\n---\nkind: Route\nid: users\nmatch: { paths: [users] }\nupstream: svc\n---\nid: nameless\n",
    )
    .unwrap();
    let out = validate_within(&[&mixed], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = mixed.display().to_string();
    assert!(
        stderr.contains(&format!("{file}:3 (Route users): match.paths[0]: ")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:4: kind: is required")),
        "a document without a kind is named by its position: {stderr}"
    );
}

#[test]
fn validate_skips_what_is_not_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("up.yaml"),
        "kind: Upstream\nid: svc\nnodes: [{ addr: \"127.0.0.1:9\" }]\n",
    )
    .unwrap();
    let fifo = dir.path().join("x.yaml");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let out = validate_within(&[dir.path()], Duration::from_secs(10));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 upstreams"));
    // Named directly, it is an error rather than a hang.
    let out = validate_within(&[&fifo], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));
}

#[test]
fn validate_refuses_deep_nesting_quickly_naming_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("deep.yaml");
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    std::fs::write(
        &deep,
        format!("kind: Upstream\nid: svc\nnodes: []\n---\nkind: Route\nid: r\nx: {nested}\n"),
    )
    .unwrap();
    let out = validate_within(&[&deep], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:2: nests deeper than 64 levels",
            deep.display()
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fifo_in_a_watched_folder_does_not_stop_reloads() {
    let up = TestUpstream::start("svc").await;
    let gw = Gateway::builder()
        .file("up.yaml", up.resource("svc"))
        .start()
        .await;
    let fifo = gw.route_file("x.yaml");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let revision = gw.status().await["revision"].as_u64().unwrap();
    gw.write_file(
        "r.yaml",
        "kind: Route\nid: r\nmatch: { paths: [/r] }\nupstream: svc\n",
    );
    let status = gw.wait_revision_after(revision).await;
    assert_eq!(status["routes"], 1, "{status}");
    assert_eq!(status["source"]["kind"], "file");
    assert_eq!(status["source"]["connected"], true);
    let resp = client().get(gw.url("/r")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[test]
fn a_bad_bootstrap_config_stops_startup_naming_the_key() {
    let stderr =
        common::startup_error("provider: { file: { paths: [r] } }\nhttp: { keepalive: 5s }\n");
    assert!(stderr.contains("http.keepalive"), "{stderr}");

    // Without `run`, the same; the path is the command line's own.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.yaml");

    std::fs::write(
        &config,
        "provider: { file: { paths: [r] } }\nadmin: { listen: \"${GW_TEST_UNSET_VAR}\" }\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("GW_TEST_UNSET_VAR"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_requests_finish_then_exits_0() {
    let slow = TestUpstream::start("slow").await;
    slow.set_delay(Duration::from_millis(1500));
    let route = "kind: Route\nid: r\nmatch: { paths: [\"/**\"] }\nupstream: slow\n";
    let mut gw = Gateway::builder()
        .file("r.yaml", format!("{}---\n{route}", slow.resource("slow")))
        .config("shutdown: { grace: 0s, timeout: 10s }")
        .start()
        .await;

    let url = gw.url("/in-flight");
    let request = tokio::spawn(async move { client().get(url).send().await });
    eventually(
        Duration::from_secs(5),
        "the request to reach the upstream",
        || async { slow.hits() == 1 },
    )
    .await;

    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = gw.terminate();
        (status, gw)
    });
    let resp = request
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(resp.status(), 200);
    let (status, gw) = status.await.unwrap();
    assert!(status.success(), "exit status {status}:\n{}", gw.logs());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "exited soon after the last request"
    );
    assert!(
        std::net::TcpStream::connect(gw.addr).is_err(),
        "no longer listening"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_serves_the_sample_routes_with_its_own_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let routes = concat!(env!("CARGO_MANIFEST_DIR"), "/routes");
    let mut child = spawn_gatehouse(
        dir.path(),
        &[
            "demo",
            "--listen",
            &listen.to_string(),
            "--admin",
            &admin.to_string(),
            "--routes",
            routes,
        ],
    );
    let c = client();
    let ready = format!("http://{admin}/readyz");
    eventually(Duration::from_secs(20), "the demo to be ready", || {
        let (c, ready) = (c.clone(), ready.clone());
        async move {
            c.get(&ready).send().await.is_ok_and(|r| r.status() == 200)
                && c.get(format!("http://{listen}/hello")).send().await.is_ok()
        }
    })
    .await;

    let hello = c
        .get(format!("http://{listen}/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(hello.text().await.unwrap(), "hello from gatehouse\n");
    let users: serde_json::Value = c
        .get(format!("http://{listen}/api/users/42"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(users["service"], "demo-v1");
    assert_eq!(users["path"], "/users/42");
    let canary: serde_json::Value = c
        .get(format!("http://{listen}/api/users/42"))
        .header("X-Canary", "true")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(canary["service"], "demo-v2");
    let mut sides = std::collections::HashSet::new();
    for _ in 0..3 {
        let split: serde_json::Value = c
            .get(format!("http://{listen}/api/split/"))
            .header("X-User-Id", "alice")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        sides.insert(split["service"].as_str().unwrap().to_string());
    }
    assert_eq!(
        sides.len(),
        1,
        "the sample split is sticky per user: {sides:?}"
    );
    let out = std::fs::read_to_string(dir.path().join("gatehouse.out")).unwrap();
    assert!(
        out.contains("curl"),
        "the demo prints commands to try:\n{out}"
    );

    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_hands_the_listeners_over_without_a_failed_request() {
    let up = TestUpstream::start("svc").await;
    let route = "kind: Route\nid: r\nmatch: { paths: [\"/**\"] }\nupstream: svc\n";
    let old = Gateway::builder()
        .file("r.yaml", format!("{}---\n{route}", up.resource("svc")))
        .start()
        .await;

    // Fresh connections: connections, not only requests, must survive the hand-over.
    let traffic = Traffic::start(vec![old.url("/during-upgrade")], true);

    // The new process waits for the old one's sockets; SIGQUIT makes the old one send them.
    let (mut new, _new_dir) = common::upgrade(&old).await;

    let mut old = old;
    let old_status = tokio::task::spawn_blocking(move || {
        let status = old.terminate_after_exit(Duration::from_secs(20));
        (status, old)
    })
    .await
    .unwrap();
    assert!(old_status.0.success(), "the old process exits 0");
    // Traffic goes on, served by the new process alone.
    traffic.wait_flowing(traffic.succeeded() + 20).await;
    let (ok, failed) = traffic.stop().await;

    let addr = old_status.1.addr;
    let after = client()
        .get(format!("http://{addr}/after"))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200, "the new process serves");
    assert!(ok > 20);
    assert_eq!(failed, 0, "no request failed across the upgrade");
    let _ = new.kill();
    let _ = new.wait();
}
