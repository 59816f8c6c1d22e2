use super::*;

fn docs(source: &str, text: &str) -> Vec<Document> {
    parse_file(source.into(), text)
}

fn errors(source: &str, text: &str) -> Vec<String> {
    let (_, rejections) = admit(&docs(source, text), &Catalog::default());
    rejections
        .iter()
        .flat_map(|r| r.lines().collect::<Vec<_>>())
        .collect()
}

const UPSTREAM: &str = "kind: Upstream\nid: u1\nnodes: [{ addr: \"127.0.0.1:9001\" }]\n";

#[test]
fn a_valid_route_and_upstream_are_admitted() {
    let text = format!(
        "{UPSTREAM}---\nkind: Route\nid: r1\nmatch: {{ paths: [/api/**] }}\nupstream: u1\n"
    );
    let (catalog, rejections) = admit(&docs("a.yaml", &text), &Catalog::default());
    assert!(rejections.is_empty(), "{rejections:?}");
    assert_eq!(catalog.routes.len(), 1);
    assert_eq!(
        catalog.upstreams["u1"].value.nodes[0].weight, 1,
        "weight defaults to 1"
    );
    assert_eq!(catalog.routes["r1"].origin.to_string(), "a.yaml:2");
}

#[test]
fn unknown_fields_are_errors_naming_file_document_and_field() {
    let text = format!(
        "{UPSTREAM}---\nkind: Route\nid: r1\nmatch: {{ paths: [/x], hostz: [a] }}\nupstream: u1\n"
    );
    let errs = errors("routes/a.yaml", &text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("routes/a.yaml:2 (Route r1): match.hostz: unknown field `hostz`"),
        "{}",
        errs[0]
    );
}

#[test]
fn wrong_types_name_the_field() {
    let errs = errors(
        "a.yaml",
        "kind: Upstream\nid: u\nnodes: [{ addr: \"1.2.3.4:80\", weight: heavy }]\n",
    );
    assert!(
        errs[0].starts_with("a.yaml:1 (Upstream u): nodes[0].weight: invalid type"),
        "{errs:?}"
    );
}

#[test]
fn every_field_problem_is_listed() {
    let text = "kind: Route\nid: r\nmatch: { paths: [nope, /a/*/b], methods: [FETCH], headers: { X-A: \"~(\" } }\nrewrite: { path: relative }\ndirect_response: { status: 999 }\n";
    let errs = errors("a.yaml", text);
    for needle in [
        "match.paths[0]",
        "match.paths[1]",
        "match.methods[0]",
        "match.headers.X-A",
        "rewrite.path",
        "direct_response.status",
    ] {
        assert!(
            errs.iter().any(|e| e.contains(needle)),
            "missing {needle} in {errs:?}"
        );
    }
}

#[test]
fn a_route_needs_exactly_one_target() {
    let none = errors("a.yaml", "kind: Route\nid: r\nmatch: { paths: [/x] }\n");
    assert!(none[0].contains("needs one of"), "{none:?}");
    let two = format!("{UPSTREAM}---\nkind: Route\nid: r\nmatch: {{ paths: [/x] }}\nupstream: u1\ndirect_response: {{ status: 200 }}\n");
    assert!(errors("a.yaml", &two)[0].contains("only one"));
}

#[test]
fn references_must_resolve() {
    let errs = errors(
        "a.yaml",
        "kind: Route\nid: r\nmatch: { paths: [/x] }\nupstream: missing\n",
    );
    assert_eq!(
        errs,
        vec!["a.yaml:1 (Route r): upstream: unknown upstream `missing`"]
    );
}

#[test]
fn kind_and_id_are_required_and_checked() {
    assert!(errors("a.yaml", "id: x\n")[0].contains("kind: is required"));
    assert!(errors("a.yaml", "kind: Router\nid: x\n")[0].contains("not one of"));
    assert!(errors("a.yaml", "kind: Upstream\nnodes: []\n")[0].contains("id: is required"));
    assert!(errors(
        "a.yaml",
        "kind: Upstream\nid: \"a b\"\nnodes: [{addr: \"h:1\"}]\n"
    )[0]
    .contains("id: "));
}

#[test]
fn etcd_style_values_take_kind_and_id_from_the_key() {
    let key = ObjectKey {
        kind: Kind::Upstream,
        id: "u9".into(),
    };
    let value: serde_yaml::Value =
        serde_yaml::from_str("{\"nodes\": [{\"addr\": \"10.0.0.1:80\"}]}").unwrap();
    let doc = parse_value(
        Origin::key("/gatehouse/upstreams/u9".into()),
        value,
        Some(key.clone()),
    );
    assert_eq!(doc.parsed.unwrap().key(), key);

    let value: serde_yaml::Value =
        serde_yaml::from_str("{id: other, nodes: [{addr: \"h:1\"}]}").unwrap();
    let doc = parse_value(
        Origin::key("/gatehouse/upstreams/u9".into()),
        value,
        Some(key),
    );
    let errs = doc.parsed.unwrap_err();
    assert!(errs[0].to_string().contains("does not match"), "{errs:?}");
}

#[test]
fn auth_policy_schema_is_validated() {
    let good = "kind: AuthPolicy\nid: p\ntoken_from: [header:Authorization, query:access_token, cookie:at]\njwt:\n  keys:\n    - { kid: k1, alg: HS256, secret: \"base64:c2VjcmV0\" }\n  issuer: https://idp\n  audiences: [api]\n  leeway: 30s\nintrospection: { endpoint: \"http://idp/introspect\", client_id: gw, client_secret: s, cache_ttl: 60s, timeout: 2s }\nrequired_scopes: [users.read]\nforward: { headers: { X-User-Id: sub }, strip_authorization: true }\n";
    assert!(
        errors("p.yaml", good).is_empty(),
        "{:?}",
        errors("p.yaml", good)
    );

    let bad = "kind: AuthPolicy\nid: p\ntoken_from: [body:x]\njwt:\n  keys:\n    - { alg: none, secret: x }\n    - { alg: RS256, secret: x }\n    - { alg: HS256, secret: \"base64:***\" }\n  jwks_uri: ftp://x\n";
    let errs = errors("p.yaml", bad);
    for needle in [
        "token_from[0]",
        "jwt.keys[0].alg",
        "jwt.keys[1].public_key",
        "jwt.keys[2].secret",
        "jwt.jwks_uri",
    ] {
        assert!(
            errs.iter().any(|e| e.contains(needle)),
            "missing {needle} in {errs:?}"
        );
    }
    assert!(errors("p.yaml", "kind: AuthPolicy\nid: p\n")[0].contains("needs `jwt`"));
}

#[test]
fn auth_keys_secrets_and_forwarded_headers_are_checked_in_depth() {
    let bad = "kind: AuthPolicy\nid: p\njwt:\n  keys:\n    - { alg: RS256, public_key: \"-----BEGIN PUBLIC KEY-----\\nnot a key\\n-----END PUBLIC KEY-----\" }\n    - { alg: HS256, secret: \"${UNCLOSED\" }\nrequired_scopes: [\"two words\"]\nforward: { headers: { Authorization: sub } }\n";
    let errs = errors("p.yaml", bad);
    for needle in [
        "jwt.keys[0].public_key: is not an RSA public key PEM",
        "jwt.keys[1].secret: unclosed ${",
        "required_scopes[0]",
        "forward.headers.Authorization: is where the token comes from",
    ] {
        assert!(
            errs.iter().any(|e| e.contains(needle)),
            "missing {needle} in {errs:?}"
        );
    }
    // A reference to the gateway's environment is judged where the gateway runs.
    let referenced =
        "kind: AuthPolicy\nid: p\njwt: { keys: [{ alg: HS256, secret: \"${JWT_SECRET}\" }] }\n";
    assert!(errors("p.yaml", referenced).is_empty());
}

#[test]
fn secrets_are_never_shown_back() {
    let text = "kind: AuthPolicy\nid: p\njwt: { keys: [{ alg: HS256, secret: topsecret }] }\n";
    let (catalog, _) = admit(&docs("p.yaml", text), &Catalog::default());
    let shown = serde_json::to_string(&catalog.list(Kind::AuthPolicy)).unwrap();
    assert!(!shown.contains("topsecret"), "{shown}");
    assert!(shown.contains("\"kind\":\"AuthPolicy\""), "{shown}");
}

#[test]
fn pool_settings_are_accepted_and_checked() {
    let text = "kind: Upstream\nid: u\ndiscovery: { service: users }\npool: { max_idle: 8, idle_timeout: 30s }\nhealth_check: { passive: { max_fails: 3, fail_timeout: 10s }, active: { path: /h, interval: 1s, timeout: 1s, healthy: 1, unhealthy: 1 } }\n";
    assert!(errors("a.yaml", text).is_empty());
    let text = "kind: Upstream\nid: u\nnodes: [{ addr: \"127.0.0.1:1\" }]\npool: { max_idle: -1, idle_timeout: 0s }\n";
    let errs = errors("a.yaml", text);
    assert!(errs.iter().any(|e| e.contains("max_idle")), "{errs:?}");
    let text = "kind: Upstream\nid: u\nnodes: [{ addr: \"127.0.0.1:1\" }]\npool: { max_idle: 4, idle_timeout: 0s }\n";
    let errs = errors("a.yaml", text);
    assert!(
        errs.iter()
            .any(|e| e.contains("pool.idle_timeout: must be more than 0s")),
        "{errs:?}"
    );
}

#[test]
fn a_bad_document_keeps_the_previous_version_of_its_object() {
    let v1 =
        format!("{UPSTREAM}---\nkind: Route\nid: r1\nmatch: {{ paths: [/v1] }}\nupstream: u1\n");
    let (before, _) = admit(&docs("a.yaml", &v1), &Catalog::default());
    let broken =
        format!("{UPSTREAM}---\nkind: Route\nid: r1\nmatch: {{ paths: [v2] }}\nupstream: u1\n");
    let (after, rejections) = admit(&docs("a.yaml", &broken), &before);
    assert_eq!(rejections.len(), 1);
    assert_eq!(
        after.routes["r1"].value.matcher.paths,
        vec!["/v1".to_string()]
    );
    assert!(
        Arc::ptr_eq(&before.upstreams["u1"].value, &after.upstreams["u1"].value),
        "unchanged objects keep their Arc"
    );
}

#[test]
fn a_file_that_is_not_yaml_keeps_everything_it_held() {
    let v1 =
        format!("{UPSTREAM}---\nkind: Route\nid: r1\nmatch: {{ paths: [/v1] }}\nupstream: u1\n");
    let mut all = docs("a.yaml", &v1);
    all.extend(docs(
        "b.yaml",
        "kind: Route\nid: r2\nmatch: { paths: [/b] }\nupstream: u1\n",
    ));
    let (before, _) = admit(&all, &Catalog::default());

    let mut all = docs("a.yaml", "kind: Route\n  id: [unclosed\n");
    all.extend(docs(
        "b.yaml",
        "kind: Route\nid: r2\nmatch: { paths: [/b2] }\nupstream: u1\n",
    ));
    let (after, rejections) = admit(&all, &before);
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert!(rejections[0].error.contains("not valid YAML"));
    assert!(after.routes.contains_key("r1") && after.upstreams.contains_key("u1"));
    assert_eq!(
        after.routes["r2"].value.matcher.paths,
        vec!["/b2".to_string()],
        "the other file applies"
    );
}

#[test]
fn a_removed_document_removes_its_object() {
    let (before, _) = admit(&docs("a.yaml", UPSTREAM), &Catalog::default());
    let (after, rejections) = admit(&Vec::new(), &before);
    assert!(rejections.is_empty());
    assert!(after.upstreams.is_empty());
}

#[test]
fn deleting_an_upstream_still_in_use_keeps_it_and_says_so() {
    let route = "kind: Route\nid: r1\nmatch: { paths: [/x] }\nupstream: u1\n";
    let mut all = docs("u.yaml", UPSTREAM);
    all.extend(docs("r.yaml", route));
    let (before, _) = admit(&all, &Catalog::default());
    let (after, rejections) = admit(&docs("r.yaml", route), &before);
    assert!(after.upstreams.contains_key("u1"));
    assert!(after.routes.contains_key("r1"));
    assert_eq!(rejections.len(), 1);
    assert!(
        rejections[0].error.contains("still used by route r1"),
        "{rejections:?}"
    );
    assert_eq!(rejections[0].key, "u.yaml:1 (Upstream u1)");
}

#[test]
fn a_route_with_a_new_dangling_reference_keeps_its_previous_version() {
    let v1 =
        format!("{UPSTREAM}---\nkind: Route\nid: r1\nmatch: {{ paths: [/x] }}\nupstream: u1\n");
    let (before, _) = admit(&docs("a.yaml", &v1), &Catalog::default());
    let v2 =
        format!("{UPSTREAM}---\nkind: Route\nid: r1\nmatch: {{ paths: [/x] }}\nupstream: nope\n");
    let (after, rejections) = admit(&docs("a.yaml", &v2), &before);
    assert_eq!(after.routes["r1"].value.upstream.as_deref(), Some("u1"));
    assert!(rejections[0].error.contains("unknown upstream `nope`"));
}

#[test]
fn duplicate_ids_are_rejected() {
    let errs = errors("a.yaml", &format!("{UPSTREAM}---\n{UPSTREAM}"));
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("already defined at a.yaml:1"), "{errs:?}");
}

#[test]
fn scalars_are_read_as_text_in_matches() {
    let text = "kind: Route\nid: r\nmatch: { paths: [/x], query: { debug: 1 }, headers: { X-On: true } }\ndirect_response: { status: 204 }\n";
    let (catalog, rejections) = admit(&docs("a.yaml", text), &Catalog::default());
    assert!(rejections.is_empty(), "{rejections:?}");
    assert_eq!(
        catalog.routes["r"].value.matcher.query["debug"].as_str(),
        "1"
    );
}

#[test]
fn a_rejected_file_document_is_named_by_kind_and_id_when_it_says_them() {
    let text = format!(
        "{UPSTREAM}---\nkind: Route\nid: users\nmatch: {{ paths: [nope] }}\nupstream: u1\n---\nid: x\n---\nkind: AuthPolicy\nid: p\njwt: {{ keys: [] }}\nextra: 1\n"
    );
    let (_, rejections) = admit(&docs("r/mixed.yaml", &text), &Catalog::default());
    let keys: Vec<&str> = rejections.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "r/mixed.yaml:2 (Route users)",
            "r/mixed.yaml:3",
            "r/mixed.yaml:4 (AuthPolicy p)"
        ],
        "a document that never said its kind is named by its position alone"
    );
    let line = rejections[0].lines().next().unwrap();
    assert!(
        line.starts_with("r/mixed.yaml:2 (Route users): match.paths[0]: "),
        "{line}"
    );
    // etcd keys name the object already.
    let stored = parse_stored(
        Origin::key("/g/routes/users".into()),
        ObjectKey {
            kind: Kind::Route,
            id: "users".into(),
        },
        b"{ not yaml",
    );
    let (_, rejections) = admit(&[stored], &Catalog::default());
    assert_eq!(rejections[0].key, "/g/routes/users");
}

#[test]
fn a_too_deeply_nested_file_is_refused_whole_and_keeps_what_it_held() {
    let v1 =
        format!("{UPSTREAM}---\nkind: Route\nid: r1\nmatch: {{ paths: [/v1] }}\nupstream: u1\n");
    let (before, _) = admit(&docs("a.yaml", &v1), &Catalog::default());
    let deep = format!(
        "{UPSTREAM}---\nkind: Route\nid: r1\nmatch: {{ paths: [/v2] }}\nupstream: u1\nx: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let (after, rejections) = admit(&docs("a.yaml", &deep), &before);
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert_eq!(
        rejections[0].key, "a.yaml:2",
        "the document that is too deep"
    );
    assert!(
        rejections[0].error.contains("deeper than 64"),
        "{rejections:?}"
    );
    assert_eq!(
        after.routes["r1"].value.matcher.paths,
        vec!["/v1".to_string()]
    );
    assert!(after.upstreams.contains_key("u1"));

    let stored = parse_stored(
        Origin::key("/g/routes/r1".into()),
        ObjectKey {
            kind: Kind::Route,
            id: "r1".into(),
        },
        format!("{{\"a\": {}", "{\"a\": ".repeat(70)).as_bytes(),
    );
    assert!(stored.key.is_some(), "its old version stays");
    assert!(stored.parsed.unwrap_err()[0]
        .message
        .contains("deeper than 64"));
}

#[test]
fn rate_limit_max_keys_defaults_and_is_checked() {
    let route = |limit: &str| {
        format!("{UPSTREAM}---\nkind: Route\nid: r1\nmatch: {{ paths: [/x] }}\nupstream: u1\nrate_limit: {limit}\n")
    };
    let (catalog, rejections) = admit(
        &docs("a.yaml", &route("{ rate: 5, per: 1m }")),
        &Catalog::default(),
    );
    assert!(rejections.is_empty(), "{rejections:?}");
    let limit = catalog.routes["r1"].value.rate_limit.clone().unwrap();
    assert_eq!(limit.max_keys, 100_000);
    assert!(errors("a.yaml", &route("{ rate: 5, per: 1m, max_keys: 10 }")).is_empty());
    let errs = errors("a.yaml", &route("{ rate: 5, per: 1m, max_keys: 0 }"));
    assert!(
        errs.iter()
            .any(|e| e.contains("rate_limit.max_keys: must be at least 1")),
        "{errs:?}"
    );
}

#[test]
fn a_store_policy_on_a_local_limit_is_refused() {
    let route = |limit: &str| {
        format!("{UPSTREAM}---\nkind: Route\nid: r1\nmatch: {{ paths: [/x] }}\nupstream: u1\nrate_limit: {{ rate: 5, per: 1s{limit} }}\n")
    };
    for limit in [
        ", on_store_error: deny",
        ", scope: local, on_store_error: allow",
    ] {
        let errs = errors("a.yaml", &route(limit));
        assert!(
            errs.iter()
                .any(|e| e.contains("rate_limit.on_store_error: applies to `scope: cluster` only")),
            "{limit}: {errs:?}"
        );
    }
    for limit in [
        "",
        ", on_store_error: local",
        ", scope: cluster, on_store_error: deny",
    ] {
        assert!(errors("a.yaml", &route(limit)).is_empty(), "{limit}");
    }
}

#[test]
fn introspection_bounds_default_and_are_checked() {
    let policy = |extra: &str| {
        format!("kind: AuthPolicy\nid: p\nintrospection: {{ endpoint: \"http://idp/introspect\", client_id: gw, client_secret: s{extra} }}\n")
    };
    let (catalog, rejections) = admit(&docs("p.yaml", &policy("")), &Catalog::default());
    assert!(rejections.is_empty(), "{rejections:?}");
    let intro = catalog.policies["p"].value.introspection.clone().unwrap();
    assert_eq!(intro.max_concurrency, 64);
    assert_eq!(intro.negative_ttl.0, std::time::Duration::from_secs(5));
    let custom = policy(", max_concurrency: 8, negative_ttl: 0s");
    assert!(errors("p.yaml", &custom).is_empty());
    let errs = errors("p.yaml", &policy(", max_concurrency: 0"));
    assert!(
        errs.iter()
            .any(|e| e.contains("introspection.max_concurrency: must be at least 1")),
        "{errs:?}"
    );
    let errs = errors("p.yaml", &policy(", negative_ttl: soon"));
    assert!(
        errs.iter()
            .any(|e| e.contains("introspection.negative_ttl")),
        "{errs:?}"
    );
}

#[test]
fn selectors_are_judged_by_the_forms_each_setting_takes() {
    let route = |extra: &str| {
        format!("{UPSTREAM}---\nkind: Route\nid: r1\nmatch: {{ paths: [/x] }}\n{extra}")
    };
    let split = |sticky: &str| {
        route(&format!(
            "weights: [{{ upstream: u1, weight: 1 }}]\nsticky: \"{sticky}\"\n"
        ))
    };
    let limit = |key: &str| {
        route(&format!(
            "upstream: u1\nrate_limit: {{ rate: 1, per: 1s, key: \"{key}\" }}\n"
        ))
    };
    let hashed = |key: &str| {
        format!("kind: Upstream\nid: u\nnodes: [{{ addr: \"127.0.0.1:1\" }}]\nlb: consistent_hash\nhash_key: \"{key}\"\n")
    };
    for ok in ["client_ip", "consumer", "route", "header:X-Key"] {
        assert!(errors("a.yaml", &limit(ok)).is_empty(), "{ok}");
    }
    for ok in ["consumer", "client_ip", "header:X-User-Id", "cookie:uid"] {
        assert!(errors("a.yaml", &split(ok)).is_empty(), "{ok}");
    }
    for ok in [
        "client_ip",
        "consumer",
        "path",
        "header:X-User-Id",
        "cookie:uid",
        "query:uid",
    ] {
        assert!(errors("a.yaml", &hashed(ok)).is_empty(), "{ok}");
    }
    let cases = [
        (
            limit("cookie:uid"),
            "rate_limit.key: `cookie:uid` is not one of client_ip, consumer, route, header:NAME",
        ),
        (
            limit("header:"),
            "rate_limit.key: `header:` needs a name: header:NAME",
        ),
        (
            limit("header:bad key"),
            "rate_limit.key: `bad key` is not a valid header name",
        ),
        (
            split("route"),
            "sticky: `route` is not one of consumer, client_ip, header:NAME, cookie:NAME",
        ),
        (split("cookie:"), "sticky: `cookie:` needs a name: cookie:NAME"),
        (
            hashed("route"),
            "hash_key: `route` is not one of client_ip, consumer, path, header:NAME, cookie:NAME, query:NAME",
        ),
        (
            hashed("body:x"),
            "hash_key: `body:x` is not one of client_ip, consumer, path, header:NAME, cookie:NAME, query:NAME",
        ),
    ];
    for (text, expected) in cases {
        let errs = errors("a.yaml", &text);
        assert!(
            errs.iter().any(|e| e.ends_with(expected)),
            "{expected}: {errs:?}"
        );
    }
}

#[test]
fn a_selector_reads_back_as_written() {
    let text = format!(
        "{UPSTREAM}---\nkind: Route\nid: r1\nmatch: {{ paths: [/x] }}\nweights: [{{ upstream: u1, weight: 1 }}]\nsticky: header:X-User-Id\n"
    );
    let (catalog, rejections) = admit(&docs("a.yaml", &text), &Catalog::default());
    assert!(rejections.is_empty(), "{rejections:?}");
    let route = &catalog.routes["r1"].value;
    let sticky = route.sticky.as_ref().unwrap();
    assert_eq!(sticky.as_str(), "header:X-User-Id");
    assert_eq!(
        sticky.selector(STICKY_FORMS),
        Ok(&gatehouse_plugins::Selector::Header(
            http::HeaderName::from_static("x-user-id")
        ))
    );
    let json = serde_json::to_value(&**route).unwrap();
    assert_eq!(json["sticky"], "header:X-User-Id");
    // The default key is the client address.
    let limited: RateLimit = serde_yaml::from_str("{ rate: 1, per: 1s }").unwrap();
    assert_eq!(limited.key.as_str(), "client_ip");
    assert_eq!(
        limited
            .key
            .selector(gatehouse_plugins::rate_limit::KEY_FORMS),
        Ok(&gatehouse_plugins::Selector::ClientIp)
    );
}

const GLOBAL: &str = "kind: GlobalRule\nid: g\nplugins:\n  - name: ip_restriction\n    config: { deny: [192.0.2.0/24] }\n";

#[test]
fn a_global_rule_is_admitted_with_its_plugins() {
    let (catalog, rejections) = admit(&docs("g.yaml", GLOBAL), &Catalog::default());
    assert!(rejections.is_empty(), "{rejections:?}");
    assert_eq!(catalog.len(Kind::GlobalRule), 1);
    assert_eq!(
        catalog.global_rules["g"].value.plugins[0].name,
        "ip_restriction"
    );
    assert!(matches!(
        catalog.get(&ObjectKey {
            kind: Kind::GlobalRule,
            id: "g".into()
        }),
        Some(Resource::GlobalRule(_))
    ));
}

#[test]
fn a_global_rule_names_the_plugin_field_at_fault() {
    let errs = errors(
        "g.yaml",
        "kind: GlobalRule\nid: g\nplugins:\n  - name: cors\n    config: { allow_origins: [\"*\"] }\n  - name: ip_restriction\n    config: { deny: [not-an-address] }\n",
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("g.yaml:1 (GlobalRule g): plugins[1].config.deny[0]: "),
        "{errs:?}"
    );
    let errs = errors(
        "g.yaml",
        "kind: GlobalRule\nid: g\nplugins: [{ name: nope }]\n",
    );
    assert!(
        errs[0].starts_with("g.yaml:1 (GlobalRule g): plugins[0].name: no plugin is named `nope`"),
        "{errs:?}"
    );
    let errs = errors("g.yaml", "kind: GlobalRule\nid: g\n");
    assert!(errs[0].contains("missing field `plugins`"), "{errs:?}");
}

#[test]
fn a_bad_global_rule_keeps_its_previous_version_in_force() {
    let (before, _) = admit(&docs("g.yaml", GLOBAL), &Catalog::default());
    let bad = "kind: GlobalRule\nid: g\nplugins: [{ name: request_size_limit, config: { max_body: lots } }]\n";
    let (after, rejections) = admit(&docs("g.yaml", bad), &before);
    assert_eq!(rejections.len(), 1);
    assert!(Arc::ptr_eq(
        &after.global_rules["g"].value,
        &before.global_rules["g"].value
    ));
}

#[test]
fn global_rules_have_a_kind_and_a_collection() {
    assert_eq!(Kind::from_name("GlobalRule"), Some(Kind::GlobalRule));
    assert_eq!(
        Kind::from_collection("global_rules"),
        Some(Kind::GlobalRule)
    );
    let doc = parse_stored(
        Origin::key("/g/global_rules/x".into()),
        ObjectKey {
            kind: Kind::GlobalRule,
            id: "x".into(),
        },
        br#"{"plugins": [{"name": "ip_restriction", "config": {"allow": ["10.0.0.0/8"]}}]}"#,
    );
    assert!(doc.parsed.is_ok(), "{:?}", doc.parsed);
    let errs = errors("w.yaml", "kind: Widget\nid: w\n");
    assert!(
        errs[0].contains("is not one of Route, Upstream, AuthPolicy, GlobalRule"),
        "{errs:?}"
    );
}

#[test]
fn protection_settings_are_accepted_and_checked_naming_the_field() {
    let good = "kind: Upstream\nid: u\nnodes: [{ addr: \"127.0.0.1:1\" }]\ncircuit_breaker: { error_rate: 0.5, min_requests: 20, window: 10s, open_for: 5s, slow_call: { threshold: 800ms, ratio: 0.5 } }\nconcurrency: { adaptive: { min: 5, max: 1000 } }\nretry_budget: { ratio: 0.2, min_per_second: 10 }\n";
    assert!(
        errors("a.yaml", good).is_empty(),
        "{:?}",
        errors("a.yaml", good)
    );
    let fixed = "kind: Upstream\nid: u\nnodes: [{ addr: \"127.0.0.1:1\" }]\nconcurrency: { max: 200 }\nretry_budget: { ratio: 0 }\n";
    assert!(
        errors("a.yaml", fixed).is_empty(),
        "{:?}",
        errors("a.yaml", fixed)
    );
    let cases = [
        ("retry_budget: { ratio: 1.5 }", "retry_budget.ratio: must be between 0 and 1"),
        ("retry_budget: { ratio: -0.1 }", "retry_budget.ratio: must be between 0 and 1"),
        (
            "concurrency: { adaptive: { min: 10, max: 5 } }",
            "concurrency.adaptive.min: must not be more than `max` (5)",
        ),
        ("concurrency: { adaptive: { min: 0, max: 5 } }", "concurrency.adaptive.min: must be at least 1"),
        ("concurrency: { max: 0 }", "concurrency.max: must be at least 1"),
        ("concurrency: {}", "concurrency: give `max` or `adaptive`"),
        (
            "concurrency: { max: 5, adaptive: { min: 1, max: 5 } }",
            "concurrency: give `max` or `adaptive`, not both",
        ),
        (
            "circuit_breaker: { error_rate: 0.5, min_requests: 1, window: 1s, open_for: 1s, slow_call: { threshold: 0s, ratio: 2 } }",
            "circuit_breaker.slow_call.threshold: must be more than 0s",
        ),
        (
            "circuit_breaker: { error_rate: 0.5, min_requests: 1, window: 1s, open_for: 1s, slow_call: { threshold: 1s, ratio: 2 } }",
            "circuit_breaker.slow_call.ratio: must be in (0, 1]",
        ),
    ];
    for (field, expected) in cases {
        let text =
            format!("kind: Upstream\nid: u\nnodes: [{{ addr: \"127.0.0.1:1\" }}]\n{field}\n");
        let errs = errors("a.yaml", &text);
        assert!(
            errs.iter().any(|e| e.contains(expected)),
            "{field}: {errs:?}"
        );
    }
}

#[test]
fn a_fallback_is_checked_naming_the_field_and_a_bad_one_is_rejected_alone() {
    let route = |fallback: &str| {
        format!("{UPSTREAM}---\nkind: Route\nid: r1\nmatch: {{ paths: [/a] }}\nupstream: u1\nfallback: {fallback}\n---\nkind: Route\nid: r2\nmatch: {{ paths: [/b] }}\nupstream: u1\n")
    };
    let good = route("{ on: [circuit_open, upstream_error], headers: { Content-Type: application/json }, body: '{\"items\": []}' }");
    let (catalog, rejections) = admit(&docs("a.yaml", &good), &Catalog::default());
    assert!(rejections.is_empty(), "{rejections:?}");
    assert_eq!(
        catalog.routes["r1"].value.fallback.as_ref().unwrap().status,
        200,
        "status defaults to 200"
    );
    let cases = [
        ("{ on: [circuit_open, teapot] }", "fallback.on[1]: `teapot` is not one of circuit_open, overloaded, rate_limited, no_upstream, upstream_timeout, upstream_error"),
        ("{ on: [] }", "fallback.on: name at least one reason"),
        ("{ on: [overloaded, overloaded] }", "fallback.on[1]: `overloaded` is listed twice"),
        ("{ on: [overloaded], status: 199 }", "fallback.status: must be between 200 and 599"),
        ("{ on: [overloaded], status: 600 }", "fallback.status: must be between 200 and 599"),
        ("{ on: [overloaded], status: 204, body: x }", "fallback.body: a 204 or 304 answer has no body"),
        ("{ on: [overloaded], headers: { \"bad name\": x } }", "fallback.headers.bad name"),
    ];
    for (fallback, expected) in cases {
        let (catalog, rejections) = admit(&docs("a.yaml", &route(fallback)), &Catalog::default());
        let errs: Vec<String> = rejections
            .iter()
            .flat_map(|r| r.lines().collect::<Vec<_>>())
            .collect();
        assert!(
            errs.iter().any(|e| e.contains(expected)),
            "{fallback}: {errs:?}"
        );
        assert!(!catalog.routes.contains_key("r1"), "{fallback}");
        assert!(
            catalog.routes.contains_key("r2"),
            "the other route stays: {fallback}"
        );
    }
}
