//! The last-known-good cache (SPEC §13, `provider.etcd.cache`) with a real etcd: written
//! after each applied snapshot, served by an instance started while etcd is down, left for
//! etcd's contents once it answers with no request failed at the switch; a corrupt or
//! foreign cache refused, the instance waiting for etcd.

mod common;

use common::{eventually, status_of, wait_status, Etcd, Gateway, TestUpstream, Traffic};
use std::path::Path;
use std::time::Duration;

const PREFIX: &str = "/gatehouse";
const WAIT: Duration = Duration::from_secs(10);

fn route(path: &str, upstream: &str) -> String {
    common::etcd::route_value(path, upstream)
}

fn upstream(addr: std::net::SocketAddr) -> String {
    common::etcd::upstream_value(addr)
}

/// The revision the cache file says it holds, once it exists.
fn cached_revision(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["revision"].as_u64()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_started_while_etcd_is_down_serves_the_cache_then_switches_to_etcd() {
    let mut etcd = Etcd::start();
    let up = TestUpstream::start("svc").await;
    etcd.put("/gatehouse/upstreams/svc", &upstream(up.addr));
    etcd.put("/gatehouse/routes/steady", &route("/steady", "svc"));
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("last-good.json");

    // A first instance writes every applied snapshot to the cache.
    let mut first = Gateway::builder()
        .etcd(&etcd.url(), PREFIX)
        .etcd_cache(&cache)
        .start()
        .await;
    let loaded = etcd.resources_revision(PREFIX).await;
    eventually(WAIT, "the cache to hold what etcd holds", || async {
        cached_revision(&cache).is_some_and(|r| r >= loaded)
    })
    .await;
    etcd.put("/gatehouse/routes/added", &route("/added", "svc"));
    wait_status(&first, "/added", 200).await;
    let revision = etcd.resources_revision(PREFIX).await;
    eventually(WAIT, "the cache to follow a change", || async {
        cached_revision(&cache).is_some_and(|r| r >= revision)
    })
    .await;
    first.terminate();

    // etcd goes down; a new instance starts with only the cache.
    etcd.kill9();
    let gw = Gateway::builder()
        .etcd(&etcd.url(), PREFIX)
        .etcd_cache(&cache)
        .api_key("k")
        .start()
        .await;
    assert_eq!(status_of(&gw, "/steady").await, 200);
    assert_eq!(status_of(&gw, "/added").await, 200);
    let status = gw.status().await;
    assert_eq!(status["source"]["from_cache"], true, "{status}");
    assert_eq!(status["source"]["connected"], false, "{status}");
    assert_eq!(status["revision"].as_u64(), Some(revision));

    // Traffic through the switch to etcd: nothing fails.
    let traffic = Traffic::start(vec![gw.url("/steady"); 4], false);
    let served = traffic.succeeded();
    traffic.wait_flowing(served + 20).await;
    etcd.spawn();
    eventually(WAIT, "the instance to switch to etcd", || async {
        let source = gw.status().await["source"].clone();
        source["connected"] == true && source["from_cache"] == false
    })
    .await;
    etcd.put("/gatehouse/routes/later", &route("/later", "svc"));
    wait_status(&gw, "/later", 200).await;
    let served = traffic.succeeded();
    traffic.wait_flowing(served + 20).await;
    let (ok, failed) = traffic.stop().await;
    assert!(ok > 40, "{ok}");
    assert_eq!(failed, 0, "no request failed at the switch");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_or_foreign_cache_is_refused_and_the_instance_waits_for_etcd() {
    let mut etcd = Etcd::not_started();
    let up = TestUpstream::start("svc").await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("last-good.json");

    // A cache another prefix wrote: refused, named, and the instance not ready.
    let mut writer = Etcd::start();
    writer.put("/other/upstreams/svc", &upstream(up.addr));
    writer.put("/other/routes/r", &route("/r", "svc"));
    let mut other = Gateway::builder()
        .etcd(&writer.url(), "/other")
        .etcd_cache(&cache)
        .start()
        .await;
    eventually(WAIT, "the other prefix's cache", || async {
        cached_revision(&cache).is_some()
    })
    .await;
    other.terminate();
    writer.kill9();
    let foreign = Gateway::builder()
        .etcd(&etcd.url(), PREFIX)
        .etcd_cache(&cache)
        .api_key("k")
        .spawn();
    foreign.assert_unready().await;
    let error = foreign.status().await["source"]["error"].to_string();
    assert!(error.contains("last-good.json"), "{error}");
    assert!(error.contains("/other"), "{error}");
    drop(foreign);

    // A cache with one byte changed: refused whole, never half-loaded.
    let text = std::fs::read_to_string(&cache).unwrap();
    std::fs::write(&cache, text.replacen("/r", "/x", 1)).unwrap();
    let corrupt = Gateway::builder()
        .etcd(&etcd.url(), PREFIX)
        .etcd_cache(&cache)
        .api_key("k")
        .spawn();
    corrupt.assert_unready().await;
    let error = corrupt.status().await["source"]["error"].to_string();
    assert!(error.contains("last-good.json"), "{error}");
    assert!(
        error.contains("corrupt") || error.contains("checksum"),
        "{error}"
    );
    assert_eq!(
        status_of(&corrupt, "/r").await,
        404,
        "nothing of it is served"
    );

    // etcd comes: the instance takes what it holds and is ready.
    etcd.spawn();
    etcd.put("/gatehouse/upstreams/svc", &upstream(up.addr));
    etcd.put("/gatehouse/routes/fresh", &route("/fresh", "svc"));
    wait_status(&corrupt, "/fresh", 200).await;
    assert_eq!(corrupt.status().await["source"]["from_cache"], false);
}
