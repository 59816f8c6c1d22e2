//! The per-request cost of a route with everything on: a cached RS256 JWT, a rate limit high
//! enough never to refuse, a weighted split and a header rewrite — the plugin chain's access
//! phase, the upstream choice and node pick, and the upstream request edits — against the
//! same route with nothing on.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use futures_executor_lite::block_on;
use gatehouse::resource::{admit, parse_file, Catalog};
use gatehouse::snapshot::{Action, CompiledRoute, Snapshot};
use gatehouse_plugins::Exchange;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pingora_http::RequestHeader;

#[path = "support/keys.rs"]
mod keys;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod futures_executor_lite {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    /// Polls a future that never waits (the access phase of cached tokens) to completion.
    pub fn block_on<F: Future>(future: F) -> F::Output {
        let mut future = pin!(future);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return out;
            }
        }
    }
}

fn resources(public_pem: &str) -> String {
    format!(
        r#"
kind: Upstream
id: v1
nodes: [{{ addr: "127.0.0.1:9001" }}, {{ addr: "127.0.0.1:9002" }}]
---
kind: Upstream
id: v2
nodes: [{{ addr: "127.0.0.1:9003" }}]
---
kind: AuthPolicy
id: users
jwt:
  keys: [{{ kid: k1, alg: RS256, public_key: {pem} }}]
  issuer: https://idp
  audiences: [api]
required_scopes: [users.read]
forward: {{ headers: {{ X-User-Id: sub }} }}
---
kind: Route
id: full
match: {{ paths: ["/full/**"] }}
auth: users
rate_limit: {{ rate: 1000000000, per: 1s, key: consumer }}
weights: [{{ upstream: v1, weight: 90 }}, {{ upstream: v2, weight: 10 }}]
request_headers: {{ set: {{ X-Gateway: "gatehouse ${{route_id}}", X-Consumer: "${{consumer}}" }}, remove: [X-Debug] }}
---
kind: Route
id: plain
match: {{ paths: ["/plain/**"] }}
upstream: v1
"#,
        pem = serde_json::to_string(public_pem).unwrap()
    )
}

/// What the gateway does for a request on `route` between matching it and proxying.
fn handle(route: &CompiledRoute, req: &mut RequestHeader) {
    let mut ex = Exchange::new(route.id.clone(), "id".into(), "10.0.0.1".parse().unwrap());
    let flow = block_on(route.plugins.access(req, &mut ex));
    assert!(matches!(flow, gatehouse_plugins::Flow::Continue));
    let Action::Proxy(choice) = &route.action else {
        unreachable!()
    };
    let target = choice.choose(req, &ex);
    black_box(target.pick(req, &ex, None));
    route.plugins.upstream_request(req, &ex);
    black_box(&ex);
}

fn chain(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = keys::key_pair(
        dir.path(),
        "k.pem",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );

    let docs = parse_file("bench.yaml".into(), &resources(&public));
    let (catalog, rejected) = admit(&docs, &Catalog::default());
    assert!(rejected.is_empty(), "{rejected:?}");
    let snapshot = Snapshot::compile(catalog, Vec::new(), &Snapshot::empty(), 1);
    assert!(snapshot.rejected.is_empty(), "{:?}", snapshot.rejected);

    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"sub": "user-42", "scope": "users.read", "iss": "https://idp", "aud": "api", "exp": exp}),
        &EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
    )
    .unwrap();
    let mut template = RequestHeader::build("GET", b"/full/users/42", None).unwrap();
    template.insert_header("host", "api.example.com").unwrap();
    template
        .insert_header("authorization", format!("Bearer {token}"))
        .unwrap();

    let full = &snapshot.routes["full"];
    let plain = &snapshot.routes["plain"];
    // The first request verifies the token; the measured ones find it cached.
    handle(full, &mut template.clone());

    let mut group = c.benchmark_group("route handling");
    group.bench_function("plain route", |b| {
        b.iter_batched(
            || template.clone(),
            |mut req| handle(plain, &mut req),
            BatchSize::SmallInput,
        )
    });
    group.bench_function(
        "cached RS256 + rate limit + weighted split + header rewrite",
        |b| {
            b.iter_batched(
                || template.clone(),
                |mut req| handle(full, &mut req),
                BatchSize::SmallInput,
            )
        },
    );
    group.finish();
}

criterion_group!(benches, chain);
criterion_main!(benches);
