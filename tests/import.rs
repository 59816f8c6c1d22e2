//! `gatehouse import`: Spring Cloud Gateway and go-kratos gateway configurations turned into
//! resources that `gatehouse validate` accepts and a running gateway serves, with a line on
//! stderr for everything that could not be translated.

mod common;

use common::{bin, client, Echo, Gateway, TestUpstream};
use serde_yaml::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `gatehouse import --from FROM FILES... -o OUT`.
fn import(from: &str, files: &[&Path], out: &Path) -> Output {
    Command::new(bin())
        .args(["import", "--from", from])
        .args(files)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes `text` to `name` in `dir`.
fn input(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Asserts `gatehouse validate DIR` accepts the folder.
fn assert_valid(dir: &Path) {
    let out = Command::new(bin())
        .arg("validate")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gatehouse validate refused the import:\n{}",
        stderr(&out)
    );
}

/// A written resource, without its header comment, as YAML.
fn resource(dir: &Path, name: &str) -> Value {
    let text = std::fs::read_to_string(dir.join(name))
        .unwrap_or_else(|e| panic!("{name} was not written: {e}"));
    serde_yaml::from_str(&text).unwrap()
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap()
}

/// The names of the files in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spring_route_is_served_as_it_was() {
    let users = TestUpstream::start("users").await;
    let orders = TestUpstream::start("orders").await;
    let dir = tempfile::tempdir().unwrap();
    let file = input(
        dir.path(),
        "application.yml",
        &format!(
            r#"spring:
  cloud:
    gateway:
      routes:
        - id: users
          uri: lb://user-service
          predicates: [Path=/api/v1/users/**, "Header=X-Platform, mobile|web"]
          filters: [StripPrefix=2, "AddRequestHeader=X-Trace-ID, abc"]
        - id: orders
          uri: http://{}
          predicates:
            - Path=/api/v1/orders/**
          filters:
            - RewritePath=/api/v1/(?<rest>.*), /$\{{rest}}
"#,
            orders.addr
        ),
    );
    let out_dir = dir.path().join("out");
    let out = import("spring-cloud-gateway", &[&file], &out_dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "everything is translated");
    assert_valid(&out_dir);

    assert_eq!(
        resource(&out_dir, "route-users.yaml"),
        yaml(
            r#"
kind: Route
id: users
match:
  paths: [/api/v1/users/**]
  headers: { X-Platform: "mobile|web" }
rewrite: { strip_prefix: 2 }
request_headers: { set: { X-Trace-ID: abc } }
upstream: user-service
"#
        )
    );
    assert_eq!(
        resource(&out_dir, "upstream-user-service.yaml"),
        yaml("kind: Upstream\nid: user-service\ndiscovery: { service: user-service }\nscheme: http\nlb: round_robin\n")
    );
    let static_upstream = format!("upstream-127.0.0.1-{}.yaml", orders.addr.port());
    assert_eq!(
        resource(&out_dir, &static_upstream)["nodes"],
        yaml(&format!("[{{ addr: \"{}\", weight: 1 }}]", orders.addr))
    );
    assert_eq!(
        resource(&out_dir, "route-orders.yaml")["rewrite"],
        yaml("{ strip_prefix: 2 }")
    );

    // The written files, run by a gateway: `lb://user-service` needs the registry, so its
    // upstream is swapped for one with the test server as its node.
    let mut builder = Gateway::builder();
    for name in listing(&out_dir) {
        let text = if name == "upstream-user-service.yaml" {
            users.resource("user-service")
        } else {
            std::fs::read_to_string(out_dir.join(&name)).unwrap()
        };
        builder = builder.file(&name, text);
    }
    let gw = builder.start().await;
    let c = client();
    let resp = c
        .get(gw.url("/api/v1/users/7?x=1"))
        .header("X-Platform", "web")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.upstream, "users");
    assert_eq!(echo.path, "/users/7?x=1", "two segments stripped");
    assert_eq!(
        echo.headers.get("x-trace-id").map(String::as_str),
        Some("abc")
    );

    let other = c
        .get(gw.url("/api/v1/users/7"))
        .header("X-Platform", "desktop")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404, "the Header predicate holds");

    let resp = c.get(gw.url("/api/v1/orders/9")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.upstream, "orders");
    assert_eq!(echo.path, "/orders/9", "RewritePath as strip_prefix");
}

const EVERY: &str = r##"spring:
  cloud:
    gateway:
      default-filters:
        - AddResponseHeader=X-Gateway, gatehouse
        - DedupeResponseHeader=Access-Control-Allow-Origin
      routes:
        - id: everything
          uri: http://127.0.0.1:9001
          order: 5
          predicates:
            - Path=/api/v1/items/{id},/api/v1/items/*.json
            - Host=**.example.com
            - Method=GET,POST
            - Header=X-Request-Id, \d+
            - name: Query
              args:
                param: color
                regexp: red|green
            - Cookie=session, abc
          filters:
            - StripPrefix=1
            - RewritePath=/v1/?(?<rest>.*), /$\{rest}
            - SetPath=/fixed/{id}
            - AddRequestHeader=X-Trace-ID, abc
            - RemoveRequestHeader=X-Debug
            - AddResponseHeader=X-Served-By, gatehouse
            - name: RequestRateLimiter
              args:
                redis-rate-limiter.replenishRate: 10
                redis-rate-limiter.burstCapacity: 20
                redis-rate-limiter.requestedTokens: 2
                key-resolver: "#{@userKeyResolver}"
            - name: CircuitBreaker
              args:
                name: itemsBreaker
                fallbackUri: forward:/fallback
            - PrefixPath=/mypath
        - id: search
          uri: lb://search
          predicates:
            - Path=/search,false
            - Header=X-Version, (?!beta).*
          filters:
            - RewritePath=/search, /v2/search
            - RewritePath=/v2/(?<rest>.*), /v3/$\{rest}
        - id: canary-a
          uri: lb://items-v1
          order: -1
          predicates: [Path=/canary/**, "Weight=canary, 80"]
        - id: canary-b
          uri: lb://items-v2
          order: -1
          predicates:
            - Path=/canary/**
            - name: Weight
              args: { _genkey_0: canary, _genkey_1: 20 }
        - id: local
          uri: forward:/local
          predicates: [Path=/local]
        - id: fixed
          uri: lb://search
          predicates: ["Path=/fixed/{id}"]
          filters: [SetPath=/static]
resilience4j:
  circuitbreaker:
    instances:
      itemsBreaker:
        failureRateThreshold: 25
        minimumNumberOfCalls: 10
        waitDurationInOpenState: 30s
        slidingWindowType: TIME_BASED
        slidingWindowSize: 20
"##;

#[test]
fn every_spring_predicate_and_filter_is_translated_or_listed() {
    let dir = tempfile::tempdir().unwrap();
    let file = input(dir.path(), "gateway.yml", EVERY);
    let out_dir = dir.path().join("out");
    let out = import("spring-cloud-gateway", &[&file], &out_dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_valid(&out_dir);

    let f = file.display();
    let expected = [
        format!("{f}:6: every route: filter DedupeResponseHeader not translated: gatehouse has no translation for this filter"),
        format!("{f}:12: route everything: predicate Path not translated exactly: left out: `/api/v1/items/*.json`: the wildcard in `*.json` matches part of a segment; gatehouse matches whole segments (the route takes the other patterns)"),
        format!("{f}:20: route everything: predicate Cookie not translated: gatehouse routes do not match cookies (a route's `canary` rules do); without it the route takes more requests than in Spring Cloud Gateway"),
        format!("{f}:24: route everything: filter SetPath not translated: `/fixed/{{id}}` uses the path variable `{{id}}`; gatehouse sets one fixed path"),
        format!("{f}:28: route everything: filter RequestRateLimiter not translated exactly: the key resolver `#{{@userKeyResolver}}` is the application's code, which the configuration does not show; translated as `key: client_ip`"),
        format!("{f}:34: route everything: filter CircuitBreaker not translated exactly: its `fallbackUri` `forward:/fallback` is left out: it leads to the application's own handler; give the route a `fallback` answer by hand"),
        format!("{f}:38: route everything: filter PrefixPath not translated: gatehouse's `rewrite` drops leading segments or sets a fixed path; it does not add a prefix"),
        format!("{f}:43: route search: predicate Header not translated: the regex `(?!beta).*` is not one gatehouse's regex engine runs (look-around, including look-ahead and look-behind, is not supported)"),
        format!("{f}:59: route local: route not translated: `forward:/local` is not an address or a service (gatehouse proxies to http, https, ws and wss upstreams and to `lb://` services)"),
    ];
    let got = stderr(&out);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines, expected, "stderr:\n{got}");

    assert_eq!(
        listing(&out_dir),
        [
            "route-canary.yaml",
            "route-everything.yaml",
            "route-fixed.yaml",
            "route-search.yaml",
            "upstream-127.0.0.1-9001.yaml",
            "upstream-items-v1.yaml",
            "upstream-items-v2.yaml",
            "upstream-search.yaml",
        ]
    );
    // Every predicate and filter that has a gatehouse form, in one route. Spring's order 5
    // puts it after the three others (order -1, then two of order 0 as listed): -3.
    assert_eq!(
        resource(&out_dir, "route-everything.yaml"),
        yaml(
            r#"
kind: Route
id: everything
priority: -3
match:
  paths: ["/api/v1/items/{id}", "/api/v1/items/{id}/"]
  hosts: ["*.example.com", example.com]
  methods: [GET, POST]
  headers: { X-Request-Id: '~^(?:\d+)$' }
  query: { color: "red|green" }
rewrite: { strip_prefix: 2 }
request_headers: { set: { X-Trace-ID: abc }, remove: [X-Debug] }
response_headers: { set: { X-Gateway: gatehouse, X-Served-By: gatehouse } }
rate_limit: { rate: 10, per: 2s, burst: 10, key: client_ip, max_keys: 100000 }
upstream: 127.0.0.1-9001
"#
        )
    );
    assert_eq!(
        resource(&out_dir, "upstream-127.0.0.1-9001.yaml")["circuit_breaker"],
        yaml("{ error_rate: 0.25, min_requests: 10, window: 20s, open_for: 30s }"),
        "the breaker's Resilience4j instance settings"
    );
    // A fixed path rewritten twice; `false` turns the trailing-slash match off.
    assert_eq!(
        resource(&out_dir, "route-search.yaml"),
        yaml(
            r#"
kind: Route
id: search
priority: -1
match: { paths: [/search] }
rewrite: { path: /v3/search }
response_headers: { set: { X-Gateway: gatehouse } }
upstream: search
"#
        )
    );
    // A fixed `SetPath`; the route shares the upstream of `lb://search`.
    assert_eq!(
        resource(&out_dir, "route-fixed.yaml"),
        yaml(
            r#"
kind: Route
id: fixed
priority: -2
match: { paths: ["/fixed/{id}", "/fixed/{id}/"] }
rewrite: { path: /static }
response_headers: { set: { X-Gateway: gatehouse } }
upstream: search
"#
        )
    );
    // A weight group: one route splitting between the group's upstreams, first in order.
    assert_eq!(
        resource(&out_dir, "route-canary.yaml"),
        yaml(
            r#"
kind: Route
id: canary
match: { paths: [/canary/**] }
response_headers: { set: { X-Gateway: gatehouse } }
weights: [{ upstream: items-v1, weight: 80 }, { upstream: items-v2, weight: 20 }]
"#
        )
    );
    assert_eq!(
        resource(&out_dir, "upstream-items-v2.yaml")["discovery"],
        yaml("{ service: items-v2 }")
    );
}

const KRATOS: &str = r#"name: shop
version: v1
middlewares:
  - name: logging
  - name: cors
    options:
      '@type': type.googleapis.com/gateway.middleware.cors.v1.Cors
      allowCredentials: false
      allowOrigins: ['*.example.com']
      allowMethods: [GET, POST]
      maxAge: 600s
endpoints:
  - path: /users/*
    method: GET
    timeout: 2s
    protocol: HTTP
    backends:
      - target: discovery:///users-v1
        weight: 90
      - target: discovery:///users-v2
        weight: 10
    middlewares:
      - name: rewrite
        options:
          '@type': type.googleapis.com/gateway.middleware.rewrite.v1.Rewrite
          stripPrefix: /users
          requestHeadersRewrite:
            set: { X-From: gatehouse }
            remove: [X-Debug]
          responseHeadersRewrite:
            set: { X-Served-By: gatehouse }
      - name: circuitbreaker
        options:
          '@type': type.googleapis.com/gateway.middleware.circuitbreaker.v1.CircuitBreaker
          successRatio: { success: 0.8, request: "20", bucket: "10", window: 5s }
          responseData: { statusCode: 503, body: "eyJpdGVtcyI6W119" }
      - name: transcoder
  - path: /helloworld.v1.Greeter/*
    method: POST
    protocol: GRPC
    backends:
      - target: discovery:///greeter
"#;

#[test]
fn a_kratos_config_becomes_routes_splits_and_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let file = input(dir.path(), "config.yaml", KRATOS);
    let out_dir = dir.path().join("out");
    let out = import("kratos-gateway", &[&file], &out_dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_valid(&out_dir);

    let f = file.display();
    let expected = [
        format!("{f}:4: every route: middleware logging not translated: gatehouse writes its access log for every route (bootstrap `telemetry.access_log`)"),
        format!("{f}:32: route users-get: middleware circuitbreaker not translated exactly: kratos gateway throttles by the SRE formula (it drops a share of requests growing with the failures); gatehouse opens the circuit when the error rate passes 1 − success"),
        format!("{f}:37: route users-get: middleware transcoder not translated: gatehouse transcodes with a route's `grpc_transcode` and the service's descriptors; set it by hand"),
    ];
    let got = stderr(&out);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines, expected, "stderr:\n{got}");

    let cors = r#"{ name: cors, config: { allow_origins: ["*.example.com"], allow_methods: [GET, POST], allow_headers: [Origin, Content-Length, Content-Type], allow_credentials: false, max_age: 10m } }"#;
    assert_eq!(
        resource(&out_dir, "route-users-get.yaml"),
        yaml(&format!(
            r#"
kind: Route
id: users-get
match: {{ paths: [/users/**], methods: [GET, OPTIONS] }}
rewrite: {{ strip_prefix: 1 }}
request_headers: {{ set: {{ X-From: gatehouse }}, remove: [X-Debug] }}
response_headers: {{ set: {{ X-Served-By: gatehouse }} }}
weights: [{{ upstream: users-v1, weight: 90 }}, {{ upstream: users-v2, weight: 10 }}]
timeouts: {{ connect: 2s, read: 2s, write: 1m, idle: 1h }}
plugins: [{cors}]
fallback: {{ on: [circuit_open], status: 503, body: '{{"items":[]}}' }}
"#
        ))
    );
    for side in ["users-v1", "users-v2"] {
        assert_eq!(
            resource(&out_dir, &format!("upstream-{side}.yaml")),
            yaml(&format!(
                "kind: Upstream\nid: {side}\ndiscovery: {{ service: {side} }}\nscheme: http\nlb: round_robin\ncircuit_breaker: {{ error_rate: 0.2, min_requests: 20, window: 5s, open_for: 5s }}\n"
            ))
        );
    }
    assert_eq!(
        resource(&out_dir, "route-helloworld.v1.Greeter-post.yaml"),
        yaml(&format!(
            r#"
kind: Route
id: helloworld.v1.Greeter-post
priority: -1
match: {{ paths: [/helloworld.v1.Greeter/**], methods: [POST, OPTIONS] }}
upstream: greeter-grpc
plugins: [{cors}]
"#
        ))
    );
    assert_eq!(
        resource(&out_dir, "upstream-greeter-grpc.yaml"),
        yaml("kind: Upstream\nid: greeter-grpc\ndiscovery: { service: greeter }\nscheme: grpc\nlb: round_robin\n")
    );
}

#[test]
fn garbage_is_refused_naming_the_file_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let good = input(
        dir.path(),
        "good.yml",
        "routes:\n  - id: a\n    uri: http://127.0.0.1:9001\n    predicates: [Path=/a/**]\n",
    );
    let cases: [(&str, &str, &str, &str); 5] = [
        (
            "spring-cloud-gateway",
            "not-yaml.yml",
            "routes: [\n  - id: a\n    uri: {\n",
            "not-yaml.yml:2: not valid YAML",
        ),
        (
            "spring-cloud-gateway",
            "no-routes.yml",
            "server:\n  port: 8080\n",
            "no-routes.yml: no Spring Cloud Gateway routes",
        ),
        (
            "spring-cloud-gateway",
            "no-uri.yml",
            "spring.cloud.gateway.routes:\n  - id: a\n    uri: http://127.0.0.1:1\n  - id: b\n    predicates: [Path=/b/**]\n",
            "no-uri.yml:4: route `b` has no `uri`",
        ),
        (
            "kratos-gateway",
            "no-endpoints.yaml",
            "name: gw\nmiddlewares: []\n",
            "no-endpoints.yaml: no kratos gateway endpoints",
        ),
        (
            "kratos-gateway",
            "no-backends.yaml",
            "endpoints:\n  - path: /a/*\n    backends: []\n",
            "no-backends.yaml:2: endpoint `/a/*` has no `backends`",
        ),
    ];
    for (from, name, text, message) in cases {
        let bad = input(dir.path(), name, text);
        let out_dir = dir.path().join(format!("out-{name}"));
        // The bad file comes after a good one: still, nothing is written.
        let good_input = if from == "spring-cloud-gateway" {
            vec![good.as_path(), bad.as_path()]
        } else {
            vec![bad.as_path()]
        };
        let out = import(from, &good_input, &out_dir);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
        let err = stderr(&out);
        let named = format!("{}/{message}", dir.path().display());
        assert!(
            err.contains(&named),
            "{name}: expected `{named}` in:\n{err}"
        );
        assert!(err.contains("nothing written"), "{name}:\n{err}");
        assert!(!out_dir.exists(), "{name}: the output folder was created");
    }

    // An existing output folder is left as it was.
    let existing = dir.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    let bad = dir.path().join("no-uri.yml");
    let out = import("spring-cloud-gateway", &[&good, &bad], &existing);
    assert_eq!(out.status.code(), Some(1));
    assert!(listing(&existing).is_empty());

    // A file that is not there.
    let out = import(
        "kratos-gateway",
        &[&dir.path().join("missing.yaml")],
        &existing,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing.yaml: cannot read it"));
}

/// Runs a Spring import of `text` into a new folder `out` of `dir`.
fn spring(dir: &Path, text: &str) -> (Output, PathBuf) {
    let file = input(dir, "application.yml", text);
    let out_dir = dir.join("out");
    (import("spring-cloud-gateway", &[&file], &out_dir), out_dir)
}

#[test]
fn names_with_line_breaks_never_reach_a_file_raw() {
    let dir = tempfile::tempdir().unwrap();
    let (out, out_dir) = spring(
        dir.path(),
        r#"spring.cloud.gateway.routes:
  - id: "users\n---\nkind: Route\nid: hidden\nmatch: {paths: ['/**']}\nupstream: users\n---\n#"
    uri: lb://users
    predicates: [Path=/users/**]
  - id: "a/b"
    uri: lb://users
  - id: ok
    uri: "http://127.0.0.1:9000/\n---\nkind: Route"
  - id: kept
    uri: lb://users
    predicates: [Path=/kept/**]
"#,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(r"route users\n---\nkind: Route") && err.contains("control character"),
        "{err}"
    );
    assert!(err.contains("route a/b: route not translated"), "{err}");
    assert!(err.contains("route ok: route not translated"), "{err}");
    assert!(!err.contains("\n---"), "{err}");
    assert_eq!(
        listing(&out_dir),
        ["route-kept.yaml", "upstream-users.yaml"]
    );
    assert_valid(&out_dir);
    for name in listing(&out_dir) {
        let text = std::fs::read_to_string(out_dir.join(&name)).unwrap();
        assert!(!text.contains("---"), "{name}:\n{text}");
        assert!(!text.contains("hidden"), "{name}:\n{text}");
    }

    // A kratos path with a line break is refused the same way.
    let file = input(
        dir.path(),
        "k.yaml",
        "endpoints:\n  - path: \"/x\\n---\\nkind: Route\"\n    backends: [{target: 'direct://127.0.0.1:9000'}]\n  - path: /y\n    backends: [{target: 'direct://127.0.0.1:9000'}]\n",
    );
    let k_out = dir.path().join("k-out");
    let out = import("kratos-gateway", &[&file], &k_out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("control character"),
        "{}",
        stderr(&out)
    );
    assert_eq!(listing(&k_out).len(), 2);
    assert_valid(&k_out);
}

#[test]
fn merge_keys_bring_their_predicates_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let (out, out_dir) = spring(
        dir.path(),
        "x-common: &common\n  filters:\n    - StripPrefix=1\n  predicates:\n    - Path=/common/**\n  uri: lb://common\nspring.cloud.gateway.routes:\n  - id: users\n    uri: lb://users\n    <<: *common\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let route = resource(&out_dir, "route-users.yaml");
    assert_eq!(route["upstream"], yaml("users"), "{route:?}");
    assert_eq!(route["match"]["paths"], yaml("['/common/**']"), "{route:?}");
    assert!(route.get("rewrite").is_some(), "{route:?}");
    assert_valid(&out_dir);
}

#[test]
fn the_output_folder_is_new_or_empty_and_written_all_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = "routes:\n  - id: a\n    uri: http://127.0.0.1:9001\n    predicates: [Path=/a/**]\n";
    let file = input(dir.path(), "application.yml", text);

    // A folder with something in it is refused and left as it was.
    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("route-old.yaml"), "stale").unwrap();
    let out = import("spring-cloud-gateway", &[&file], &full);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    assert!(stderr(&out).contains("nothing written"));
    assert_eq!(listing(&full), ["route-old.yaml"]);

    // A file, or a link to an empty folder, is refused.
    let plain = input(dir.path(), "plain", "x");
    let out = import("spring-cloud-gateway", &[&file], &plain);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&plain).unwrap(), "x");
    #[cfg(unix)]
    {
        let target = dir.path().join("target");
        std::fs::create_dir(&target).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let out = import("spring-cloud-gateway", &[&file], &link);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(listing(&target).is_empty());
    }

    // An empty folder is filled; nothing is left beside it.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = import("spring-cloud-gateway", &[&file], &empty);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        listing(&empty),
        ["route-a.yaml", "upstream-127.0.0.1-9001.yaml"]
    );
    assert_valid(&empty);
    let mut beside = listing(dir.path());
    beside.retain(|n| n.starts_with('.'));
    assert!(beside.is_empty(), "{beside:?}");

    // A run that cannot write leaves nothing behind.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
        let target = locked.join("out");
        let out = import("spring-cloud-gateway", &[&file], &target);
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
        // Root writes anyway; only judge a run that failed.
        if out.status.code() == Some(1) {
            assert!(stderr(&out).contains("nothing written"));
            assert!(listing(&locked).is_empty(), "{:?}", listing(&locked));
        }
    }
}

#[test]
fn a_byte_order_mark_is_read_past() {
    let dir = tempfile::tempdir().unwrap();
    let (out, out_dir) = spring(
        dir.path(),
        "\u{feff}spring.cloud.gateway.routes:\n  - id: r\n    uri: http://127.0.0.1:9000\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(listing(&out_dir).contains(&"route-r.yaml".to_string()));
}

#[test]
fn an_untranslatable_default_filter_on_many_routes_stays_quick() {
    let dir = tempfile::tempdir().unwrap();
    let mut text =
        String::from("spring.cloud.gateway:\n  default-filters: [SaveSession]\n  routes:\n");
    for i in 0..3000 {
        text.push_str(&format!(
            "    - id: r{i}\n      uri: http://127.0.0.1:9000\n      predicates: [Path=/r{i}/**]\n"
        ));
    }
    let started = std::time::Instant::now();
    let (out, _) = spring(dir.path(), &text);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.matches("SaveSession").count(), 1, "{err}");
    assert!(err.contains("every route: filter SaveSession"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn gateway_wide_settings_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = spring(
        dir.path(),
        "spring:\n  cloud:\n    gateway:\n      discovery:\n        locator:\n          enabled: true\n      httpclient:\n        connect-timeout: 500\n      globalcors:\n        cors-configurations:\n          '[/**]':\n            allowedOrigins: \"https://app.example.com\"\n      routes:\n        - id: users\n          uri: lb://users\nspring.cloud.gateway.httpclient.response-timeout: 2s\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    for line in [
        "application.yml:6: every route: setting spring.cloud.gateway.discovery.locator.enabled not translated",
        "application.yml:8: every route: setting spring.cloud.gateway.httpclient.connect-timeout not translated",
        "application.yml:12: every route: setting spring.cloud.gateway.globalcors.cors-configurations.[/**].allowedOrigins not translated",
        "application.yml:16: every route: setting spring.cloud.gateway.httpclient.response-timeout not translated",
    ] {
        assert!(err.contains(line), "expected `{line}` in:\n{err}");
    }
    assert!(
        !err.contains("setting spring.cloud.gateway.routes"),
        "{err}"
    );
}

#[test]
fn breaker_values_that_do_not_parse_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let (out, out_dir) = spring(
        dir.path(),
        "resilience4j.circuitbreaker.instances.usersCB:\n  failureRateThreshold: 30\n  waitDurationInOpenState: PT10S\n  minimumNumberOfCalls: ten\nspring.cloud.gateway.routes:\n  - id: users\n    uri: lb://users\n    filters:\n      - name: CircuitBreaker\n        args: { name: usersCB }\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("`minimumNumberOfCalls: ten` (line 4) is not a whole number; 100 is used"),
        "{err}"
    );
    assert!(!err.contains("waitDurationInOpenState"), "{err}");
    let cb = &resource(&out_dir, "upstream-users.yaml")["circuit_breaker"];
    assert_eq!(cb["open_for"], yaml("10s"), "{cb:?}");
    assert_eq!(cb["min_requests"], yaml("100"), "{cb:?}");

    let file = input(
        dir.path(),
        "k.yaml",
        "endpoints:\n  - path: /y\n    backends: [{target: 'direct://127.0.0.1:9000'}]\n    middlewares:\n      - name: circuitbreaker\n        options:\n          successRatio: {success: lots, request: many, window: 0s}\n",
    );
    let k_out = dir.path().join("k-out");
    let out = import("kratos-gateway", &[&file], &k_out);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    for part in [
        "`successRatio.success: lots` is not a number; the default 0.6 is used",
        "`successRatio.request: many` is not a whole number; the default 100 is used",
        "`successRatio.window: 0s` is not a duration above zero; the default 3s is used",
    ] {
        assert!(err.contains(part), "expected `{part}` in:\n{err}");
    }
    assert_valid(&k_out);
}
