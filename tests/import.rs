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
