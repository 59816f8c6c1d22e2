//! Choosing a route's upstream per request: a plain route, a weighted split, a sticky split,
//! and canary rules that do not match (the common case).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gatehouse::resource::{admit, parse_file, Catalog};
use gatehouse::snapshot::{Action, Snapshot};
use gatehouse_plugins::Exchange;
use pingora_http::RequestHeader;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RESOURCES: &str = r#"
kind: Upstream
id: v1
nodes: [{ addr: "127.0.0.1:9001" }, { addr: "127.0.0.1:9002", weight: 3 }]
---
kind: Upstream
id: v2
nodes: [{ addr: "127.0.0.1:9003" }]
---
kind: Route
id: plain
match: { paths: ["/plain"] }
upstream: v1
---
kind: Route
id: weighted
match: { paths: ["/weighted"] }
weights: [{ upstream: v1, weight: 90 }, { upstream: v2, weight: 10 }]
---
kind: Route
id: sticky
match: { paths: ["/sticky"] }
weights: [{ upstream: v1, weight: 90 }, { upstream: v2, weight: 10 }]
sticky: header:X-User-Id
---
kind: Route
id: canary
match: { paths: ["/canary"] }
canary:
  - match: { headers: { X-Canary: "true" } }
    upstream: v2
  - match: { cookies: { group: beta } }
    upstream: v2
upstream: v1
"#;

fn choose(c: &mut Criterion) {
    let docs = parse_file("bench.yaml".into(), RESOURCES);
    let (catalog, rejected) = admit(&docs, &Catalog::default());
    assert!(rejected.is_empty(), "{rejected:?}");
    let snapshot = Snapshot::compile(catalog, Vec::new(), &Snapshot::empty(), 1);
    let mut req = RequestHeader::build("GET", b"/", None).unwrap();
    req.insert_header("X-User-Id", "user-4711").unwrap();
    req.insert_header("Cookie", "session=abc; theme=dark")
        .unwrap();
    let ex = Exchange::new("bench".into(), "id".into(), "10.0.0.1".parse().unwrap());

    let mut group = c.benchmark_group("upstream choice");
    for id in ["plain", "weighted", "sticky", "canary"] {
        let route = &snapshot.routes[id];
        let Action::Proxy(choice) = &route.action else {
            unreachable!()
        };
        group.bench_function(format!("{id}: choose upstream + pick node"), |b| {
            b.iter(|| black_box(choice.choose(black_box(&req), &ex).pick(&req, &ex, None)))
        });
    }
    group.finish();
}

fn limit(c: &mut Criterion) {
    use gatehouse_plugins::rate_limit::{
        LimitKey, RateLimitPlugin, RateLimitState, DEFAULT_MAX_KEYS,
    };
    use gatehouse_plugins::{Access, Plugin};
    use std::sync::Arc;
    use std::time::Duration;
    // A limit that never refuses here, so every check does the full bookkeeping.
    let plugin = RateLimitPlugin {
        state: Arc::new(
            RateLimitState::new(
                1_000_000_000,
                Duration::from_secs(1),
                1_000_000,
                DEFAULT_MAX_KEYS,
            )
            .unwrap(),
        ),
        key: LimitKey::ClientIp,
        shared: None,
    };
    let mut req = RequestHeader::build("GET", b"/", None).unwrap();
    let mut ex = Exchange::new("bench".into(), "id".into(), "10.0.0.1".parse().unwrap());
    c.bench_function(
        "rate limit check (client_ip, allowed, headers recorded)",
        |b| {
            b.iter(|| {
                ex.response_headers.clear();
                let allowed = matches!(
                    plugin.access(&mut req, &mut ex),
                    Access::Now(gatehouse_plugins::Flow::Continue)
                );
                black_box(allowed)
            })
        },
    );
}

criterion_group!(benches, choose, limit);
criterion_main!(benches);
