//! A fleet of gateway processes on one etcd (SPEC §13): each registers itself with its
//! revision in force, a change reaches every record, `gatehouse get instances` and
//! `/admin/status` list them and flag the one that lags, and a stopped instance's record
//! goes.

mod common;

use common::{bin, eventually, signal, status_of, wait_status, Etcd, Gateway, TestUpstream};
use etcd_client::{Client, GetOptions, WatchOptions};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

const PREFIX: &str = "/gatehouse";
const WAIT: Duration = Duration::from_secs(10);

fn route(path: &str, upstream: &str) -> String {
    common::etcd::route_value(path, upstream)
}

/// The keys and values under `{PREFIX}/instances/`.
async fn record_keys(client: &mut Client) -> etcd_client::GetResponse {
    client
        .get(
            format!("{PREFIX}/instances/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap()
}

/// The records under `{PREFIX}/instances/`, by id.
async fn records(client: &mut Client) -> BTreeMap<String, serde_json::Value> {
    let resp = record_keys(client).await;
    resp.kvs()
        .iter()
        .map(|kv| {
            let record: serde_json::Value = serde_json::from_slice(kv.value()).unwrap();
            (record["id"].as_str().unwrap().to_string(), record)
        })
        .collect()
}

fn get_instances(etcd: &Etcd, output: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args([
            "get",
            "instances",
            "--etcd",
            &etcd.url(),
            "--prefix",
            PREFIX,
        ])
        .args(output)
        .output()
        .unwrap()
}

/// `gatehouse get instances -o json`: whether each instance is flagged as lagging, by id.
fn lagging(etcd: &Etcd) -> BTreeMap<String, bool> {
    let out = get_instances(etcd, &["-o", "json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    listed
        .iter()
        .map(|i| (i["id"].as_str().unwrap().to_string(), i["lagging"] == true))
        .collect()
}

/// A real etcd holding upstream `svc` (a real upstream) and a route to it at each of
/// `paths` (the route's id is the path without its `/`).
async fn etcd_with_routes(paths: &[&str]) -> (Etcd, TestUpstream) {
    let etcd = Etcd::start();
    let up = TestUpstream::start("svc").await;
    etcd.put(
        "/gatehouse/upstreams/svc",
        &format!("nodes: [{{ addr: \"{}\" }}]\n", up.addr),
    );
    for path in paths {
        etcd.put(
            &format!("/gatehouse/routes/{}", path.trim_start_matches('/')),
            &route(path, "svc"),
        );
    }
    (etcd, up)
}

/// Waits for `n` records, each of an instance connected to etcd.
async fn connected_records(client: &Client, n: usize) {
    eventually(WAIT, &format!("{n} connected records"), || {
        let mut client = client.clone();
        async move {
            let records = records(&mut client).await;
            records.len() == n && records.values().all(|r| r["source_connected"] == true)
        }
    })
    .await;
}

/// Waits for `id`'s record to hold `revision`, to have seen `deleted`, and to say it is
/// connected (which a start may put a moment after the revision).
async fn record_has_seen(client: &Client, id: &str, revision: u64, deleted: u64) {
    eventually(
        WAIT,
        &format!("{id}'s record, having seen {deleted}"),
        || {
            let mut client = client.clone();
            async move {
                records(&mut client).await.get(id).is_some_and(|r| {
                    r["revision"] == revision
                        && r["seen"].as_u64() >= Some(deleted)
                        && r["source_connected"] == true
                })
            }
        },
    )
    .await;
}

/// Deletes route `gone`; its revision, once `gw` no longer serves it.
async fn delete_gone(client: &mut Client, gw: &Gateway) -> u64 {
    let deleted = client
        .delete(format!("{PREFIX}/routes/gone"), None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision() as u64;
    wait_status(gw, "/gone", 404).await;
    deleted
}

async fn fleet_of(n: usize, etcd: &Etcd) -> Vec<Gateway> {
    let mut gateways = Vec::new();
    for i in 0..n {
        gateways.push(
            Gateway::builder()
                .etcd(&etcd.url(), PREFIX)
                .config(&format!("instance: {{ id: gw-{i} }}"))
                .api_key("k")
                .start()
                .await,
        );
    }
    gateways
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_report_the_same_revision_soon_after_a_change() {
    let (etcd, _up) = etcd_with_routes(&[]).await;
    let gateways = fleet_of(3, &etcd).await;
    let mut client = Client::connect([etcd.url()], None).await.unwrap();
    connected_records(&client, 3).await;
    let records_now = records(&mut client).await;
    let gw0 = &records_now["gw-0"];
    assert_eq!(gw0["addr"], gateways[0].addr.to_string());
    assert_eq!(gw0["source_connected"], true);
    assert_eq!(gw0["version"], env!("CARGO_PKG_VERSION"));
    assert!(gw0["started_at"].as_str().unwrap().ends_with('Z'));

    // Each change: every record at its revision, timed from the put.
    let mut took = Vec::new();
    for n in 0..3 {
        let mut events = client
            .watch(
                format!("{PREFIX}/instances/"),
                Some(WatchOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        let put_at = Instant::now();
        let revision = client
            .put(
                format!("{PREFIX}/routes/r{n}"),
                route(&format!("/r{n}"), "svc"),
                None,
            )
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        let mut at: BTreeMap<String, i64> = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while at.values().filter(|r| **r >= revision).count() < 3 {
            let resp = tokio::time::timeout_at(deadline, events.message())
                .await
                .expect("every record follows the change")
                .unwrap()
                .unwrap();
            for event in resp.events() {
                if let Some(kv) = event.kv() {
                    let record: serde_json::Value = serde_json::from_slice(kv.value()).unwrap();
                    at.insert(
                        record["id"].as_str().unwrap().to_string(),
                        record["revision"].as_i64().unwrap(),
                    );
                }
            }
        }
        took.push(put_at.elapsed());
        for gw in &gateways {
            assert_eq!(status_of(gw, &format!("/r{n}")).await, 200);
        }
    }
    took.sort();
    println!("from a put to three records at its revision: {took:?}");
    assert!(
        took[1] < Duration::from_millis(100),
        "three instances report a change's revision within 100 ms: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn get_instances_and_admin_status_flag_the_instance_that_lags_and_a_stopped_one_goes() {
    let (etcd, _up) = etcd_with_routes(&[]).await;
    let mut gateways = fleet_of(3, &etcd).await;
    let mut client = Client::connect([etcd.url()], None).await.unwrap();
    eventually(WAIT, "three records", || {
        let mut client = client.clone();
        async move { records(&mut client).await.len() == 3 }
    })
    .await;

    // gw-2 hangs (SIGSTOP): it misses the next change, its record stays until its lease ends.
    signal(gateways[2].pid(), "STOP");
    let revision = client
        .put(
            format!("{PREFIX}/routes/later"),
            route("/later", "svc"),
            None,
        )
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision() as u64;
    wait_status(&gateways[0], "/later", 200).await;
    eventually(WAIT, "gw-0 and gw-1 at the new revision", || {
        let mut client = client.clone();
        async move {
            let records = records(&mut client).await;
            ["gw-0", "gw-1"]
                .iter()
                .all(|id| records[*id]["revision"] == revision)
        }
    })
    .await;

    let out = get_instances(&etcd, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].ends_with("LAGGING"),
        "{table}"
    );
    let row = |id: &str| *lines.iter().find(|l| l.starts_with(id)).unwrap();
    assert!(row("gw-0").ends_with("no"), "{table}");
    assert!(row("gw-2").ends_with("yes"), "{table}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 instance(s) lag"));

    let out = get_instances(&etcd, &["-o", "json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 3);
    let lagging: Vec<&str> = listed
        .iter()
        .filter(|i| i["lagging"] == true)
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(lagging, ["gw-2"]);

    let status = gateways[0].status().await;
    let fleet = &status["fleet"];
    assert_eq!(fleet["instances"].as_array().unwrap().len(), 3, "{status}");
    assert_eq!(fleet["config_revision"].as_u64(), Some(revision));

    // It comes back and catches up.
    signal(gateways[2].pid(), "CONT");
    let deadline = Instant::now() + WAIT;
    loop {
        let records = records(&mut client).await;
        if records
            .get("gw-2")
            .is_some_and(|r| r["revision"] == revision)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gw-2 did not catch up: {records:?}\n{}",
            gateways[2].logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A stopped instance's record goes at once (its lease is revoked).
    gateways[1].terminate();
    eventually(Duration::from_secs(3), "gw-1's record to go", || {
        let mut client = client.clone();
        async move { !records(&mut client).await.contains_key("gw-1") }
    })
    .await;
    // Records are no resources: nothing was rejected anywhere.
    let status = gateways[0].status().await;
    assert_eq!(status["rejected"].as_array().unwrap().len(), 0, "{status}");
    let out = Command::new(bin())
        .args(["get", "routes", "--etcd", &etcd.url(), "--prefix", PREFIX])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("instances"));
}

/// A deletion leaves no key behind, yet an instance that missed it is flagged, one started
/// after it is not (it has seen it), and a record that names a revision nothing was
/// deleted at flags nobody.
#[tokio::test(flavor = "multi_thread")]
async fn an_instance_that_missed_a_deletion_is_flagged_and_one_started_after_it_is_not() {
    let (etcd, _up) = etcd_with_routes(&["/gone"]).await;
    let mut gateways = fleet_of(2, &etcd).await;
    let mut client = Client::connect([etcd.url()], None).await.unwrap();
    connected_records(&client, 2).await;

    // gw-1 hangs; the route is deleted, the very last change.
    signal(gateways[1].pid(), "STOP");
    let deleted = delete_gone(&mut client, &gateways[0]).await;
    eventually(WAIT, "gw-0 at the deletion's revision", || {
        let mut client = client.clone();
        async move { records(&mut client).await["gw-0"]["revision"] == deleted }
    })
    .await;
    assert_eq!(
        lagging(&etcd),
        BTreeMap::from([("gw-0".into(), false), ("gw-1".into(), true)])
    );
    let status = gateways[0].status().await;
    assert_eq!(status["fleet"]["config_revision"].as_u64(), Some(deleted));

    // An instance started now reads everything: it holds the remaining resources at the
    // revision of the newest of them, and says it has seen the deletion.
    let newest_key = etcd.resources_revision(PREFIX).await;
    assert!(newest_key < deleted);
    gateways.push(
        Gateway::builder()
            .etcd(&etcd.url(), PREFIX)
            .config("instance: { id: gw-2 }")
            .api_key("k")
            .start()
            .await,
    );
    assert_eq!(
        gateways[2].status().await["revision"].as_u64(),
        Some(newest_key)
    );
    record_has_seen(&client, "gw-2", newest_key, deleted).await;
    let now = lagging(&etcd);
    assert!(!now["gw-2"] && now["gw-1"], "{now:?}");

    // Records naming revisions nothing was deleted at (a record's own write, a write
    // outside the prefix) are not believed: nobody is flagged because of them.
    let record_written = client
        .get(format!("{PREFIX}/instances/gw-0"), None)
        .await
        .unwrap()
        .kvs()[0]
        .mod_revision();
    let elsewhere = client
        .put("/elsewhere/x", "x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert!(record_written as u64 > deleted && elsewhere > record_written);
    for (id, revision) in [("zz", record_written), ("zy", elsewhere)] {
        let bogus = serde_json::json!({
            "id": id, "addr": "x", "version": "x", "revision": revision,
            "source_connected": true, "started_at": "x",
        });
        client
            .put(format!("{PREFIX}/instances/{id}"), bogus.to_string(), None)
            .await
            .unwrap();
    }
    let with_bogus = lagging(&etcd);
    assert_eq!(
        with_bogus,
        BTreeMap::from([
            ("gw-0".into(), false),
            ("gw-1".into(), true),
            ("gw-2".into(), false),
            ("zy".into(), false),
            ("zz".into(), false),
        ])
    );
    for id in ["zz", "zy"] {
        client
            .delete(format!("{PREFIX}/instances/{id}"), None)
            .await
            .unwrap();
    }

    // Records are not put again because an instance saw the others' records change (each
    // put would make the others put theirs, for ever): with nothing else changing, a few of
    // the one-second looks pass with at most a rare write (an instance that had to connect
    // again on a busy machine puts its record anew).
    let before = record_keys(&mut client).await.header().unwrap().revision();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let after = record_keys(&mut client).await.header().unwrap().revision();
    assert!(
        after - before <= 4,
        "{} writes in 3.5 s while nothing changed",
        after - before
    );

    // gw-1 comes back and applies what it missed: nobody lags.
    signal(gateways[1].pid(), "CONT");
    wait_status(&gateways[1], "/gone", 404).await;
    eventually(WAIT, "no instance lagging", || {
        let none = lagging(&etcd).values().all(|lagging| !lagging);
        async move { none }
    })
    .await;
}

/// An instance that reads everything again without restarting (here: its watch fell
/// behind a compaction while it was paused) after a deletion it missed keeps the revision
/// of the newest remaining resource, but its record says it has seen the deletion: it is
/// not flagged.
#[tokio::test(flavor = "multi_thread")]
async fn an_instance_that_reads_everything_again_after_a_deletion_is_not_flagged() {
    let (etcd, _up) = etcd_with_routes(&["/gone", "/stays"]).await;
    let gateways = fleet_of(2, &etcd).await;
    let mut client = Client::connect([etcd.url()], None).await.unwrap();
    connected_records(&client, 2).await;
    // A route put now and in force at gw-1 proves its watch open before the pause (a watch
    // still being opened would time out during it, and start over for that reason).
    etcd.put("/gatehouse/routes/ready", &route("/ready", "svc"));
    wait_status(&gateways[1], "/ready", 200).await;
    let newest_key = etcd.resources_revision(PREFIX).await;

    // gw-1 is paused while far more is written than its watch holds (a key that is no
    // resource, written over and over), the route is deleted, and all of it compacted.
    signal(gateways[1].pid(), "STOP");
    let filler: Vec<(String, String)> = (0..2000)
        .map(|i| {
            (
                format!("{PREFIX}/instances/filler"),
                format!("{i}{}", " ".repeat(2000)),
            )
        })
        .collect();
    etcd.put_many(&filler).await;
    client
        .delete(format!("{PREFIX}/instances/filler"), None)
        .await
        .unwrap();
    let deleted = delete_gone(&mut client, &gateways[0]).await;
    let out = etcd.ctl(&["compact", &etcd.revision().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    signal(gateways[1].pid(), "CONT");

    wait_status(&gateways[1], "/gone", 404).await;
    record_has_seen(&client, "gw-1", newest_key, deleted).await;
    assert!(
        gateways[1].logs().contains("was compacted"),
        "gw-1 read everything again:\n{}",
        gateways[1].logs()
    );
    let flags = lagging(&etcd);
    assert!(flags.values().all(|lagging| !lagging), "{flags:?}");
}
