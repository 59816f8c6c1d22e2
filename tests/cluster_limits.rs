//! Rate limits the fleet shares through Redis (SPEC §13, `rate_limit.scope: cluster`), with a
//! real `redis-server` and several gateway processes: one bucket for every instance, keys
//! that expire, and `on_store_error` when Redis is paused, killed and back.

mod common;

use common::redis::Redis;
use common::upstream::TestUpstream;
use common::{client, eventually, signal, Gateway};
use std::time::{Duration, Instant};

/// A route `id` on `/id` with the rate limit `limit` (a YAML flow mapping's inside).
fn limited(id: &str, limit: &str) -> String {
    format!("kind: Route\nid: {id}\nmatch: {{ paths: [\"/{id}\"] }}\nupstream: up\nrate_limit: {{ {limit} }}\n")
}

/// The upstream `up`, `routes`, and `/free`, a route without a limit.
fn routes(up: &TestUpstream, routes: &[String]) -> String {
    let mut text = up.resource("up");
    text.push_str("---\nkind: Route\nid: free\nmatch: { paths: [\"/free\"] }\nupstream: up\n");
    for route in routes {
        text.push_str("---\n");
        text.push_str(route);
    }
    text
}

async fn gateway(redis: &Redis, files: String, timeout: &str) -> Gateway {
    Gateway::builder()
        .file("r.yaml", files)
        .config(&format!(
            "redis: {{ url: \"{}\", timeout: {timeout} }}",
            redis.url()
        ))
        .start()
        .await
}

/// Waits until the gateway's connection to Redis is open.
async fn connected(gw: &Gateway) {
    eventually(
        Duration::from_secs(10),
        "the gateway connects to redis",
        || async { gw.status().await["redis"]["connected"] == true },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_share_one_bucket_where_local_limits_admit_three_times_as_much() {
    let redis = Redis::start();
    let up = TestUpstream::start("up").await;
    // 20 a second with a burst of 10, for the whole route.
    let limit = "rate: 20, per: 1s, burst: 10, key: route";
    let files = routes(
        &up,
        &[
            limited("shared", &format!("{limit}, scope: cluster")),
            limited("local", limit),
        ],
    );
    let mut fleet = Vec::new();
    for _ in 0..3 {
        fleet.push(gateway(&redis, files.clone(), "50ms").await);
    }
    for gw in &fleet {
        connected(gw).await;
    }

    // A client spreading its requests round-robin over the three, 150 a second to each
    // route for 10 seconds: 7.5 times the limit.
    let c = client();
    let (mut shared, mut local) = (0u32, 0u32);
    let mut headers_seen = false;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(6_667));
    let mut n = 0usize;
    while started.elapsed() < Duration::from_secs(10) {
        tick.tick().await;
        let gw = &fleet[n % 3];
        n += 1;
        let resp = c.get(gw.url("/shared")).send().await.unwrap();
        match resp.status().as_u16() {
            200 => {
                shared += 1;
                headers_seen |= resp.headers().contains_key("ratelimit-remaining");
            }
            429 => assert!(resp.headers().contains_key("retry-after")),
            other => panic!("/shared answered {other}"),
        }
        let status = c.get(gw.url("/local")).send().await.unwrap().status();
        match status.as_u16() {
            200 => local += 1,
            429 => {}
            other => panic!("/local answered {other}"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let allowed = 20.0 * seconds + 10.0;
    println!(
        "over {seconds:.1}s, the limit plus burst is {allowed:.0}: scope cluster admitted {shared}, \
         scope local {local}"
    );
    assert!(headers_seen, "admitted requests carry RateLimit-* headers");
    assert!(
        f64::from(shared) <= allowed + 1.0,
        "the fleet admitted {shared}, more than {allowed:.0}"
    );
    assert!(
        f64::from(shared) >= allowed * 0.9,
        "the fleet admitted {shared}, well under {allowed:.0}"
    );
    assert!(
        f64::from(local) >= f64::from(shared) * 2.5,
        "three local limiters admitted {local}, not about three times {shared}"
    );
    assert_eq!(
        fleet[0]
            .metric("gatehouse_rate_limit_store_errors_total")
            .await,
        0.0
    );

    // The bucket's key is gone once the bucket is full again (10 requests at 20 a second).
    assert!(redis.key_count() >= 1, "the bucket lives in redis");
    let deadline = Instant::now() + Duration::from_secs(3);
    while redis.key_count() > 0 {
        assert!(Instant::now() < deadline, "the bucket's key never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `count` requests to `path` one after another; their statuses, and the slowest.
/// The connection is opened beforehand (on `/free`), so only the gateway's answers are timed.
async fn probe(gw: &Gateway, path: &str, count: usize) -> (Vec<u16>, Duration) {
    let c = client();
    let warm = c.get(gw.url("/free")).send().await.unwrap();
    assert_eq!(warm.status(), 200);
    let mut statuses = Vec::with_capacity(count);
    let mut slowest = Duration::ZERO;
    for _ in 0..count {
        let started = Instant::now();
        let resp = c
            .get(gw.url(path))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("every request is answered");
        slowest = slowest.max(started.elapsed());
        statuses.push(resp.status().as_u16());
    }
    (statuses, slowest)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_redis_leaves_each_route_to_its_policy_within_the_timeout() {
    let mut redis = Redis::start();
    let up = TestUpstream::start("up").await;
    // Redis admits all of these; the instance's own limiter (for `local`) admits 2.
    let roomy = "rate: 1000, per: 1s, burst: 1000, key: route, scope: cluster";
    let files = routes(
        &up,
        &[
            limited(
                "own",
                "rate: 1, per: 1h, burst: 2, key: route, scope: cluster",
            ),
            limited("allow", &format!("{roomy}, on_store_error: allow")),
            limited("deny", &format!("{roomy}, on_store_error: deny")),
        ],
    );
    let gw = gateway(&redis, files, "50ms").await;
    connected(&gw).await;
    // What an answer takes here with Redis up, once each route has served one: the
    // proxying the limiter's wait adds to. (Redis admits one of `/own`'s two; its local
    // limiter still has both.)
    let mut usual = Duration::ZERO;
    for path in ["/allow", "/deny", "/own"] {
        assert_eq!(probe(&gw, path, 1).await.0, [200], "{path} with redis up");
    }
    for path in ["/allow", "/deny"] {
        let (statuses, slowest) = probe(&gw, path, 10).await;
        assert_eq!(statuses, [200; 10], "{path} with redis up");
        usual = usual.max(slowest);
    }

    // The limiter waits at most its timeout, plus 5 ms. One stall of a busy machine can
    // hold a single answer past any bound, so Redis is paused up to three times: a gateway
    // that waited past its timeout would be late in every round.
    let timeout = Duration::from_millis(50);
    let within = timeout + Duration::from_millis(5) + usual;
    let mut rounds = Vec::new();
    for round in 0..3 {
        signal(redis.pid(), "STOP");
        let (own, slowest_own) = probe(&gw, "/own", 6).await;
        let (allow, slowest_allow) = probe(&gw, "/allow", 20).await;
        let (deny, slowest_deny) = probe(&gw, "/deny", 20).await;
        println!(
            "slowest answers with redis up: {usual:?}; paused (round {round}): {slowest_own:?} \
             {slowest_allow:?} {slowest_deny:?}"
        );
        // `local`: the instance's own limiter, which the first round empties.
        let expected = if round == 0 {
            [200, 200, 429, 429, 429, 429]
        } else {
            [429; 6]
        };
        assert_eq!(own, expected, "`local`: the instance's own limiter");
        assert!(allow.iter().all(|s| *s == 200), "`allow`: {allow:?}");
        assert!(deny.iter().all(|s| *s == 429), "`deny`: {deny:?}");
        if round == 0 {
            assert!(gw.metric("gatehouse_rate_limit_store_errors_total").await >= 46.0);
            assert_eq!(gw.status().await["redis"]["connected"], false);
        }
        // Resumed: the store decides again.
        signal(redis.pid(), "CONT");
        connected(&gw).await;
        let slowest = slowest_own.max(slowest_allow).max(slowest_deny);
        rounds.push(slowest);
        if slowest <= within {
            break;
        }
    }
    assert!(
        rounds.iter().any(|slowest| *slowest <= within),
        "an answer took longer than {within:?} in every round: {rounds:?}"
    );

    let (deny, _) = probe(&gw, "/deny", 3).await;
    assert_eq!(deny, [200, 200, 200], "`deny` route with redis back");
    let errors = gw.metric("gatehouse_rate_limit_store_errors_total").await;
    probe(&gw, "/allow", 3).await;
    assert_eq!(
        gw.metric("gatehouse_rate_limit_store_errors_total").await,
        errors
    );

    // Killed: the instance notices without a request, refused connections are answered by
    // the policy at once, and the instance connects again when Redis is back (empty: it
    // kept nothing).
    redis.kill();
    eventually(
        Duration::from_secs(5),
        "the status to say redis is gone",
        || async { gw.status().await["redis"]["connected"] == false },
    )
    .await;
    let (deny, slowest) = probe(&gw, "/deny", 10).await;
    assert!(
        deny.iter().all(|s| *s == 429),
        "`deny` with redis gone: {deny:?}"
    );
    assert!(
        slowest <= within,
        "an answer took {slowest:?}, over {within:?}"
    );
    redis.spawn();
    connected(&gw).await;
    let (deny, _) = probe(&gw, "/deny", 3).await;
    assert_eq!(
        deny,
        [200, 200, 200],
        "`deny` route with redis started again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_is_shared_by_key_and_a_long_key_by_a_digest_every_instance_agrees_on() {
    let redis = Redis::start();
    let up = TestUpstream::start("up").await;
    let files = routes(
        &up,
        &[limited(
            "keyed",
            "rate: 1, per: 1h, burst: 2, key: \"header:X-Key\", scope: cluster, on_store_error: allow",
        )],
    );
    let (a, b) = (
        gateway(&redis, files.clone(), "50ms").await,
        gateway(&redis, files, "50ms").await,
    );
    connected(&a).await;
    connected(&b).await;
    let c = client();
    let send = |gw: &Gateway, key: String| {
        let request = c.get(gw.url("/keyed")).header("x-key", key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let long = "k".repeat(4096);
    for key in ["alice".to_string(), long.clone()] {
        assert_eq!(send(&a, key.clone()).await, 200);
        assert_eq!(send(&b, key.clone()).await, 200);
        assert_eq!(
            send(&a, key.clone()).await,
            429,
            "the third request of one key"
        );
        assert_eq!(send(&b, key.clone()).await, 429);
    }
    // Another key has a bucket of its own, on either instance.
    assert_eq!(send(&b, "bob".into()).await, 200);
    // Long keys are kept as a digest, not as sent.
    let longest = redis
        .command(&["EVAL", "local m = 0 for _, k in ipairs(redis.call('KEYS', '*')) do m = math.max(m, #k) end return m", "0"])
        .unwrap();
    let longest: usize = longest.trim_start_matches(':').parse().unwrap();
    assert!(longest < 200, "a key of {longest} bytes in redis");
    assert_eq!(redis.key_count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_limit_without_redis_or_with_a_bad_policy_is_rejected_alone() {
    let up = TestUpstream::start("up").await;
    let files = routes(
        &up,
        &[
            limited("needs-redis", "rate: 5, per: 1s, scope: cluster"),
            limited(
                "bad-policy",
                "rate: 5, per: 1s, scope: cluster, on_store_error: sometimes",
            ),
            limited("bad-scope", "rate: 5, per: 1s, scope: planet"),
            // A store policy on a limit without a store: a `scope: cluster` left out.
            limited("no-store", "rate: 5, per: 1s, on_store_error: deny"),
            limited(
                "no-store-said",
                "rate: 5, per: 1s, scope: local, on_store_error: allow",
            ),
            limited("local-said", "rate: 5, per: 1s, on_store_error: local"),
            // Periods no clock can count are refused, not a panic of the reload.
            limited("forever", "rate: 1, per: 2600000000h"),
            limited("slow-refill", "rate: 1, per: 87600h, burst: 1000"),
            limited("fine", "rate: 5, per: 1s"),
        ],
    );
    let gw = Gateway::builder().file("r.yaml", files).start().await;
    let status = gw.status().await;
    let error_of = |id: &str| -> String {
        status["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"].as_str().unwrap().contains(id))
            .unwrap_or_else(|| panic!("{id} not rejected: {status}"))["error"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let needs = error_of("needs-redis");
    assert!(
        needs.contains("rate_limit.scope") && needs.contains("redis"),
        "{needs}"
    );
    assert!(error_of("bad-policy").contains("rate_limit.on_store_error"));
    assert!(error_of("bad-scope").contains("rate_limit.scope"));
    for id in ["no-store", "no-store-said"] {
        let e = error_of(id);
        assert!(
            e.contains("rate_limit.on_store_error") && e.contains("scope: cluster"),
            "{e}"
        );
    }
    assert!(error_of("forever").contains("rate_limit.per"));
    assert!(error_of("slow-refill").contains("rate_limit.burst"));
    for id in ["fine", "local-said"] {
        let url = gw.url(&format!("/{id}"));
        assert_eq!(
            client().get(url).send().await.unwrap().status(),
            200,
            "{id}"
        );
    }

    // A bootstrap `redis` that cannot be right stops startup, naming the key.
    for (redis, key) in [
        ("{ url: \"http://127.0.0.1:6379\" }", "redis.url"),
        (
            "{ url: \"redis://127.0.0.1:6379\", timeout: 0s }",
            "redis.timeout",
        ),
        (
            "{ url: \"redis://127.0.0.1:6379\", timeout: soon }",
            "redis.timeout",
        ),
    ] {
        let stderr = common::startup_error(&format!(
            "provider: {{ file: {{ paths: [r] }} }}\nredis: {redis}\n"
        ));
        assert!(stderr.contains(key), "{redis}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_primary_demoted_to_a_replica_is_reported_and_left_until_it_leads_again() {
    let redis = Redis::start();
    let up = TestUpstream::start("up").await;
    let files = routes(
        &up,
        &[limited(
            "tight",
            "rate: 1, per: 1h, burst: 1, key: \"header:X-Key\", scope: cluster, \
             on_store_error: allow",
        )],
    );
    let gw = gateway(&redis, files, "50ms").await;
    connected(&gw).await;
    let c = client();
    let send = |key: &str| {
        let request = c.get(gw.url("/tight")).header("x-key", key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        (send("a").await, send("a").await),
        (200, 429),
        "redis decides"
    );

    // What a failover does to the old primary behind the same address: it only reads now,
    // so a request that would take from a bucket cannot be counted. (Its primary is a port
    // where nothing listens, so it never syncs anything.)
    let replica_of = redis.command(&["REPLICAOF", "127.0.0.1", "1"]);
    assert_eq!(replica_of.as_deref(), Some("+OK"));
    let errors = gw.metric("gatehouse_rate_limit_store_errors_total").await;
    for _ in 0..3 {
        assert_eq!(send("b").await, 200, "`allow` while redis cannot write");
    }
    assert!(gw.metric("gatehouse_rate_limit_store_errors_total").await >= errors + 3.0);
    let status = gw.status().await;
    let error = status["redis"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("read only replica"), "{status}");

    // It leads again: a connection opened again writes, and the status clears.
    assert_eq!(
        redis.command(&["REPLICAOF", "NO", "ONE"]).as_deref(),
        Some("+OK")
    );
    eventually(Duration::from_secs(10), "redis to count again", || async {
        send("c").await == 200 && send("c").await == 429
    })
    .await;
    assert!(gw.status().await["redis"]["error"].is_null());
    assert!(
        gw.logs().contains("read only replica"),
        "the failure is logged"
    );
}
