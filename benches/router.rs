//! Route lookup at 10 and 10,000 routes, and snapshot compilation at 10,000.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gatehouse::resource::{admit, parse_file, Catalog};
use gatehouse::router::RouteRequest;
use gatehouse::snapshot::Snapshot;
use http::{HeaderMap, Method};

// The allocator the gateway runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `n` routes: a mix of prefixes, parameters, hosts, methods and header predicates, all
/// on 10 upstreams.
fn resources(n: usize) -> String {
    let mut out = String::new();
    for u in 0..10 {
        out.push_str(&format!(
            "kind: Upstream\nid: u{u}\nnodes: [{{ addr: \"127.0.0.1:{}\" }}]\n---\n",
            9000 + u
        ));
    }
    for i in 0..n {
        let extra = match i % 4 {
            0 => format!("hosts: [\"svc{i}.example.com\"]"),
            1 => "methods: [GET, POST]".to_string(),
            2 => "headers: { X-Platform: \"ios|android\" }".to_string(),
            _ => "hosts: [\"*.example.org\"]".to_string(),
        };
        out.push_str(&format!(
            "kind: Route\nid: r{i}\nmatch: {{ paths: [\"/svc{i}/v1/**\", \"/items{i}/{{id}}\"], {extra} }}\nupstream: u{}\n---\n",
            i % 10
        ));
    }
    out
}

fn compile(text: &str) -> Snapshot {
    let (catalog, rejected) = admit(&parse_file("bench.yaml".into(), text), &Catalog::default());
    assert!(rejected.is_empty(), "{:?}", rejected.first());
    Snapshot::compile(catalog, rejected, &Snapshot::empty(), 1)
}

fn lookup(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert("x-platform", "ios".parse().unwrap());
    // Route `i` is host-less when i % 4 is 1 or 2, bound to an exact host when it is 0 and
    // to a wildcard host when it is 3; the cases pick routes near the end of each table.
    for (n, label, last) in [
        (10, "router 10 routes", 9),
        (10_000, "router 10k routes", 9997),
    ] {
        let snapshot = compile(&resources(n));
        let exact = last - 5; // i % 4 == 0
        let wildcard = last - 2; // i % 4 == 3
        let (prefix, param) = (
            format!("/svc{last}/v1/users/42"),
            format!("/items{last}/42"),
        );
        let exact_host = format!("svc{exact}.example.com");
        let (exact_path, wildcard_path) = (
            format!("/svc{exact}/v1/orders"),
            format!("/svc{wildcard}/v1/x"),
        );
        let cases: [(&str, Option<&str>, &str); 5] = [
            ("prefix, host-less", None, &prefix),
            ("param", None, &param),
            ("exact host", Some(&exact_host), &exact_path),
            ("wildcard host", Some("api.eu.example.org"), &wildcard_path),
            ("miss", Some("nothing.example.net"), "/nothing/at/all"),
        ];
        let mut group = c.benchmark_group(label);
        for (name, host, path) in cases {
            let req = RouteRequest {
                host,
                path,
                method: &Method::GET,
                headers: &headers,
                query: None,
            };
            assert_eq!(
                snapshot.router.find(&req).is_some(),
                name != "miss",
                "{label}: {name}"
            );
            group.bench_function(name, |b| {
                b.iter(|| black_box(snapshot.router.find(black_box(&req))))
            });
        }
        group.finish();
    }
}

fn rebuild(c: &mut Criterion) {
    let text = resources(10_000);
    let (catalog, _) = admit(&parse_file("bench.yaml".into(), &text), &Catalog::default());
    let previous = Snapshot::compile(catalog.clone(), Vec::new(), &Snapshot::empty(), 1);
    let mut group = c.benchmark_group("snapshot 10k routes");
    group.sample_size(10);
    group.bench_function("parse + admit + compile from scratch", |b| {
        b.iter_with_large_drop(|| compile(&text))
    });
    // What a one-object change costs: admission over every document (already parsed, as the
    // providers keep them), then compilation reusing every unchanged route.
    let docs = catalog.documents();
    group.bench_function("admit + recompile, nothing changed", |b| {
        b.iter_with_large_drop(|| {
            let (catalog, rejected) = admit(&docs, &previous.catalog);
            Snapshot::compile(catalog, rejected, &previous, 2)
        })
    });
    group.bench_function("recompile only, nothing changed", |b| {
        b.iter_with_large_drop(|| Snapshot::compile(catalog.clone(), Vec::new(), &previous, 2))
    });
    group.finish();
}

criterion_group!(benches, lookup, rebuild);
criterion_main!(benches);
