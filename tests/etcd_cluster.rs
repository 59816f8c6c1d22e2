//! Resources from a three-member etcd cluster (SPEC §13: "a lost member or a leader
//! election costs no request"): members killed under load, the leader first, then a
//! follower, fail no request, and a change acknowledged by the cluster afterwards is in
//! force soon after.

mod common;

use common::{client, eventually, EtcdCluster, Gateway, TestUpstream, Traffic};
use std::time::{Duration, Instant};

const PREFIX: &str = "/gatehouse";
const WAIT: Duration = Duration::from_secs(10);
/// How soon a change acknowledged by etcd is in force, whichever member went away: the
/// watch moves to the next member at once, and reads it whole when changes were made
/// meanwhile. Runs take 3–30 ms.
const IN_FORCE_WITHIN: Duration = Duration::from_millis(100);
/// How often the gateway is asked whether a change is in force.
const PROBE_EVERY: Duration = Duration::from_millis(5);

fn route(path: &str, upstream: &str) -> String {
    common::etcd::route_value(path, upstream)
}

fn upstream(addr: std::net::SocketAddr) -> String {
    format!("nodes: [{{ addr: \"{addr}\" }}]\n")
}

/// Puts a route to `path` and asks the gateway every 5 ms until `path` answers 200: the
/// time from etcd's acknowledgement of the put to that first 200.
async fn put_to_in_force(cluster: &EtcdCluster, gw: &Gateway, id: &str, path: &str) -> Duration {
    let c = client();
    let url = gw.url(path);
    cluster
        .put(&format!("{PREFIX}/routes/{id}"), &route(path, "svc"))
        .await;
    let acknowledged = Instant::now();
    loop {
        if let Ok(resp) = c.get(&url).send().await {
            if resp.status() == 200 {
                return acknowledged.elapsed();
            }
        }
        if acknowledged.elapsed() > WAIT {
            panic!("{path} not in force {WAIT:?} after its put:\n{}", gw.logs());
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_leader_then_a_follower_cost_no_request_and_changes_apply_soon() {
    let mut cluster = EtcdCluster::start();
    let up = TestUpstream::start("svc").await;
    cluster
        .put(&format!("{PREFIX}/upstreams/svc"), &upstream(up.addr))
        .await;
    cluster
        .put(&format!("{PREFIX}/routes/steady"), &route("/steady", "svc"))
        .await;
    let gw = Gateway::builder()
        .etcd_endpoints(&cluster.urls(), PREFIX)
        .start()
        .await;
    let traffic = Traffic::start(vec![gw.url("/steady"); 4], false);
    traffic.wait_flowing(50).await;
    // The same under the same load with every member up, for comparison.
    let calm = put_to_in_force(&cluster, &gw, "calm", "/calm").await;

    // The leader goes, and with it the gateway's watch: leadership is first handed to the
    // member the gateway watches, so the test does not depend on where the watch landed.
    let leader = cluster.watched();
    cluster.move_leader(leader);
    let killed = Instant::now();
    cluster.kill9(leader);
    let (new_leader, elected) = cluster.wait_leader_other_than(leader);
    let election = elected - killed;
    // The change is made once the cluster has a leader again.
    let after_leader = put_to_in_force(&cluster, &gw, "after-leader", "/after-leader").await;
    let since_election = elected.elapsed();
    println!(
        "leader {leader} (the member the gateway watched) killed; member {new_leader} seen \
         leading after {election:?}; a change put then was in force {after_leader:?} after its \
         acknowledgement ({since_election:?} after the election was seen)"
    );

    // The killed member comes back; then a follower goes, again the one the gateway watches
    // (leadership moves elsewhere first if that member leads).
    cluster.restart(leader);
    let follower = cluster.watched();
    if cluster.leader() == follower {
        cluster.move_leader((follower + 1) % 3);
    }
    let leader = cluster.leader();
    cluster.kill9(follower);
    let after_follower = put_to_in_force(&cluster, &gw, "after-follower", "/after-follower").await;
    println!(
        "member {leader} leading; follower {follower} (the member the gateway watched) killed; a \
         change put at once was in force {after_follower:?} after its acknowledgement"
    );
    assert_eq!(
        cluster.leader(),
        leader,
        "the leader stayed while a follower went"
    );

    let (ok, failed) = traffic.stop().await;
    println!(
        "with every member up a change was in force {calm:?} after its acknowledgement; \
         requests: {ok} succeeded, {failed} failed"
    );
    assert_eq!(failed, 0, "no request failed ({ok} succeeded)");
    assert!(ok > 0);
    for (when, took) in [
        ("after the leader was killed", after_leader),
        ("after a follower was killed", after_follower),
    ] {
        assert!(
            took < IN_FORCE_WITHIN,
            "a change made {when} took {took:?} to be in force:\n{}",
            gw.logs()
        );
    }
    eventually(WAIT, "the gateway to report etcd connected", || async {
        gw.status().await["source"]["connected"] == true
    })
    .await;
}
