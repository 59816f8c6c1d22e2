//! Authentication through the real binary: tokens signed with keys generated for the test,
//! a real JWKS endpoint and a real introspection endpoint.

mod common;

use common::idp::{claims, jwks, now, sign_hmac, Idp, SigningKey};
use common::{client, eventually, Echo, Gateway, TestUpstream};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const HS_SECRET: &[u8] = b"a shared secret of the test suite";

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A route on `/api` to `svc`, protected by policy `policy`.
fn protected_route(id: &str, path: &str, policy: &str, extra: &str) -> String {
    format!(
        "kind: Route\nid: {id}\nmatch: {{ paths: [\"{path}\"] }}\nauth: {policy}\nupstream: svc\n{extra}"
    )
}

async fn call(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client().get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

async fn bearer(gw: &Gateway, path: &str, token: &str) -> reqwest::Response {
    call(gw, path, &[("authorization", &format!("Bearer {token}"))]).await
}

/// Asserts a 401/403 in the shape of SPEC §4 and returns its challenge.
async fn refused(resp: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    assert!(body["request_id"].is_string());
    challenge
}

#[tokio::test(flavor = "multi_thread")]
async fn every_algorithm_family_is_verified_locally_and_the_identity_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let signers: Vec<SigningKey> = [
        (Algorithm::RS256, "rs256"),
        (Algorithm::RS512, "rs512"),
        (Algorithm::PS256, "ps256"),
        (Algorithm::PS384, "ps384"),
        (Algorithm::ES256, "es256"),
        (Algorithm::ES384, "es384"),
        (Algorithm::EdDSA, "ed"),
    ]
    .into_iter()
    .map(|(alg, kid)| SigningKey::generate(dir.path(), alg, kid))
    .collect();
    let mut keys: Vec<String> = signers.iter().map(|k| k.yaml()).collect();
    keys.push(format!(
        "{{ kid: hs256, alg: HS256, secret: \"base64:{}\" }}",
        b64(HS_SECRET)
    ));
    keys.push("{ kid: hs512, alg: HS512, secret: \"plain text secret\" }".into());
    let policy = format!(
        "kind: AuthPolicy\nid: users\njwt:\n  keys: [{}]\n  issuer: https://idp.test\n  audiences: [api]\nforward:\n  headers: {{ X-User-Id: sub, X-User-Scope: scope }}\n",
        keys.join(", ")
    );
    let up = TestUpstream::start("svc").await;
    let routes = format!(
        "{}---\n{policy}---\n{}",
        up.resource("svc"),
        protected_route(
            "api",
            "/api",
            "users",
            "request_headers: { set: { X-Consumer: \"${consumer}\" } }\nrate_limit: { rate: 1, per: 1m, burst: 1, key: consumer }\n"
        ),
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;

    let good = |sub: &str| {
        claims(
            sub,
            json!({"iss": "https://idp.test", "aud": "api", "scope": "users.read users.write"}),
        )
    };
    let mut tokens: Vec<(String, String)> = signers
        .iter()
        .map(|k| (k.kid.clone(), k.sign(&good(&format!("user-{}", k.kid)))))
        .collect();
    tokens.push((
        "hs256".into(),
        sign_hmac(
            Algorithm::HS256,
            Some("hs256"),
            HS_SECRET,
            &good("user-hs256"),
        ),
    ));
    tokens.push((
        "hs512".into(),
        sign_hmac(
            Algorithm::HS512,
            Some("hs512"),
            b"plain text secret",
            &good("user-hs512"),
        ),
    ));
    for (kid, token) in &tokens {
        // The client's own identity headers must never reach the upstream.
        let resp = call(
            &gw,
            "/api",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-user-id", "admin"),
                ("x-user-scope", "everything"),
            ],
        )
        .await;
        assert_eq!(resp.status(), 200, "{kid}");
        let echo: Echo = resp.json().await.unwrap();
        assert_eq!(echo.headers["x-user-id"], format!("user-{kid}"), "{kid}");
        assert_eq!(echo.headers["x-user-scope"], "users.read users.write");
        assert_eq!(echo.headers["x-consumer"], format!("user-{kid}"));
        assert!(
            echo.headers.contains_key("authorization"),
            "kept by default"
        );
    }
    assert_eq!(up.hits(), tokens.len());
    // The rate limit counts per consumer: each caller above had one request; a second one
    // from the same caller is over its limit.
    let resp = bearer(&gw, "/api", &tokens[0].1).await;
    assert_eq!(resp.status(), 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_are_refused_with_rfc6750_challenges_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = SigningKey::generate(dir.path(), Algorithm::RS256, "rsa");
    let stranger = SigningKey::generate(dir.path(), Algorithm::RS256, "rsa");
    let policy = format!(
        "kind: AuthPolicy\nid: strict\njwt:\n  keys: [{}, {{ kid: hs, alg: HS256, secret: \"base64:{}\" }}]\n  issuer: https://idp.test\n  audiences: [api]\n  leeway: 5s\nrequired_scopes: [orders.read]\n",
        rsa.yaml(),
        b64(HS_SECRET)
    );
    let up = TestUpstream::start("svc").await;
    let routes = format!(
        "{}---\n{policy}---\n{}",
        up.resource("svc"),
        protected_route("orders", "/orders", "strict", "")
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let valid = json!({"iss": "https://idp.test", "aud": "api", "scope": "orders.read"});

    // No token: a bare challenge.
    let challenge = refused(call(&gw, "/orders", &[]).await, 401, "unauthorized").await;
    assert_eq!(challenge, "Bearer realm=\"gatehouse\"");
    let challenge = refused(
        call(&gw, "/orders", &[("authorization", "Basic dXNlcjpwYXNz")]).await,
        401,
        "unauthorized",
    )
    .await;
    assert_eq!(challenge, "Bearer realm=\"gatehouse\"");

    let merged = |extra: Value| {
        let mut c = claims("alice", valid.clone());
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    let none_token = {
        use base64::Engine;
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            enc.encode(r#"{"alg":"none","typ":"JWT"}"#),
            enc.encode(merged(json!({})).to_string())
        )
    };
    let cases: Vec<(&str, String)> = vec![
        ("expired", rsa.sign(&merged(json!({"exp": now() - 60})))),
        (
            "not_yet_valid",
            rsa.sign(&merged(json!({"nbf": now() + 600}))),
        ),
        (
            "wrong_issuer",
            rsa.sign(&merged(json!({"iss": "https://evil.test"}))),
        ),
        ("wrong_audience", rsa.sign(&merged(json!({"aud": "other"})))),
        (
            "missing_claim",
            rsa.sign(&claims("alice", json!({"aud": "api"}))),
        ),
        ("bad_signature", stranger.sign(&merged(json!({})))),
        ("unsupported_alg", none_token),
        // HS/RS confusion: an HS256 token made with the RSA public key as its secret,
        // naming the RSA key.
        (
            "algorithm_mismatch",
            sign_hmac(
                Algorithm::HS256,
                Some("rsa"),
                rsa.public_pem.as_bytes(),
                &merged(json!({})),
            ),
        ),
        // The same without a kid: no HS key verifies it.
        (
            "bad_signature",
            sign_hmac(
                Algorithm::HS256,
                None,
                rsa.public_pem.as_bytes(),
                &merged(json!({})),
            ),
        ),
        ("unknown_key", {
            let other = SigningKey::generate(dir.path(), Algorithm::ES256, "nobody");
            other.sign(&merged(json!({})))
        }),
        ("malformed_token", "not-a-jwt".to_string()),
        // `iss` is a string; a list holding the issuer is not the issuer.
        (
            "wrong_issuer",
            rsa.sign(&merged(
                json!({"iss": ["https://idp.test", "https://evil.test"]}),
            )),
        ),
        // A critical header extension gatehouse does not implement, validly signed.
        ("unsupported_crit", {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("hs".into());
            header.crit = Some(vec!["exp".into()]);
            jsonwebtoken::encode(
                &header,
                &merged(json!({})),
                &EncodingKey::from_secret(HS_SECRET),
            )
            .unwrap()
        }),
    ];
    for (reason, token) in &cases {
        let challenge = refused(bearer(&gw, "/orders", token).await, 401, "unauthorized").await;
        assert_eq!(
            challenge, "Bearer realm=\"gatehouse\", error=\"invalid_token\"",
            "{reason}"
        );
    }
    // Within the leeway, an expired token still passes.
    let resp = bearer(
        &gw,
        "/orders",
        &rsa.sign(&merged(json!({"exp": now() - 2}))),
    )
    .await;
    assert_eq!(resp.status(), 200);

    // Valid, but without the scope.
    let token = rsa.sign(&merged(json!({"scope": "orders.write"})));
    let challenge = refused(bearer(&gw, "/orders", &token).await, 403, "forbidden").await;
    assert_eq!(
        challenge,
        "Bearer realm=\"gatehouse\", error=\"insufficient_scope\", scope=\"orders.read\""
    );
    assert_eq!(up.hits(), 1, "only the token within the leeway got through");

    let metrics = gw.metrics_text().await;
    for reason in [
        "missing_token",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "missing_claim",
        "unsupported_alg",
        "unsupported_crit",
        "algorithm_mismatch",
        "unknown_key",
        "malformed_token",
        "insufficient_scope",
    ] {
        let line = format!("gatehouse_auth_failures_total{{reason=\"{reason}\",route=\"orders\"}}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    assert!(metrics
        .contains("gatehouse_auth_failures_total{reason=\"bad_signature\",route=\"orders\"} 2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_keys_are_fetched_and_refetched_for_an_unknown_kid_at_most_every_10s() {
    let dir = tempfile::tempdir().unwrap();
    let first = SigningKey::generate(dir.path(), Algorithm::RS256, "2026-01");
    let second = SigningKey::generate(dir.path(), Algorithm::ES256, "2026-02");
    let idp = Idp::start("gatehouse", "unused").await;
    idp.publish(jwks(&[&first]));
    let policy = format!(
        "kind: AuthPolicy\nid: published\njwt: {{ jwks_uri: \"{}\" }}\n",
        idp.jwks_uri()
    );
    let up = TestUpstream::start("svc").await;
    let routes = format!(
        "{}---\n{policy}---\n{}",
        up.resource("svc"),
        protected_route("api", "/api", "published", "")
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;

    let token = first.sign(&claims("alice", json!({})));
    // The key set is fetched after this moment (nothing fetches it before a request comes).
    let first_try = std::time::Instant::now();
    eventually(Duration::from_secs(5), "the JWKS key to verify", || async {
        bearer(&gw, "/api", &token).await.status() == 200
    })
    .await;
    let fetched = idp.jwks_calls();
    assert!(fetched >= 1);

    // The provider rotates in a new key. Within 10 s of the last fetch, unknown kids are
    // refused without a refetch, however many arrive.
    idp.publish(jwks(&[&first, &second]));
    let rotated = second.sign(&claims("bob", json!({})));
    for _ in 0..5 {
        let resp = bearer(&gw, "/api", &rotated).await;
        if first_try.elapsed() >= Duration::from_secs(9) {
            break; // a machine so slow that the 10 s may be over: nothing to tell
        }
        refused(resp, 401, "unauthorized").await;
    }
    assert!(idp.jwks_calls() <= fetched + 1);
    // After the 10 s, the unknown kid triggers one fetch and the token passes.
    eventually(Duration::from_secs(15), "the rotated key", || async {
        bearer(&gw, "/api", &rotated).await.status() == 200
    })
    .await;
    assert_eq!(
        idp.jwks_calls(),
        fetched + 1,
        "one refetch for the rotation"
    );
    // Both keys are in force; the cached verdicts cost no fetch.
    for t in [&token, &rotated] {
        assert_eq!(bearer(&gw, "/api", t).await.status(), 200);
    }
    assert_eq!(idp.jwks_calls(), fetched + 1);
}

/// A gateway serving `/api` through `up`, protected by `policy` (whose id is `opaque`),
/// with `IDP_SECRET` set to `secret`.
async fn protected_gateway(up: &TestUpstream, policy: &str, secret: &str) -> Gateway {
    let routes = format!(
        "{}---\n{policy}---\n{}",
        up.resource("svc"),
        protected_route("api", "/api", "opaque", "")
    );
    Gateway::builder()
        .file("r.yaml", routes)
        .env("IDP_SECRET", secret)
        .start()
        .await
}

fn introspection_policy(idp: &Idp, extra: &str) -> String {
    format!(
        "kind: AuthPolicy\nid: opaque\nintrospection:\n  endpoint: \"{}\"\n  client_id: gatehouse\n  client_secret: \"${{IDP_SECRET}}\"\n  cache_ttl: 60s\n  timeout: 1s\nforward:\n  headers: {{ X-User-Id: sub, X-Tenant: tenant }}\n{extra}",
        idp.introspection_endpoint()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn opaque_tokens_are_introspected_cached_and_shared_between_concurrent_requests() {
    let idp = Idp::start("gatehouse", "s3cret").await;
    idp.set_token(
        "opaque-alice",
        json!({"active": true, "sub": "alice", "scope": "users.read", "tenant": "acme", "exp": now() + 600}),
    );
    let up = TestUpstream::start("svc").await;
    let policy = introspection_policy(&idp, "required_scopes: [users.read]\n");
    let gw = protected_gateway(&up, &policy, "s3cret").await;

    for _ in 0..5 {
        let resp = bearer(&gw, "/api", "opaque-alice").await;
        assert_eq!(resp.status(), 200);
        let echo: Echo = resp.json().await.unwrap();
        assert_eq!(echo.headers["x-user-id"], "alice");
        assert_eq!(echo.headers["x-tenant"], "acme");
    }
    assert_eq!(idp.introspections(), 1, "later requests hit the cache");

    // Inactive and unknown tokens are refused, and the refusal is cached briefly.
    idp.set_token("opaque-revoked", json!({"active": false}));
    for _ in 0..3 {
        let challenge = refused(
            bearer(&gw, "/api", "opaque-revoked").await,
            401,
            "unauthorized",
        )
        .await;
        assert!(challenge.contains("invalid_token"));
    }
    assert_eq!(idp.introspections(), 2);

    // Active without the scope → 403.
    idp.set_token(
        "opaque-noscope",
        json!({"active": true, "sub": "eve", "scope": "other"}),
    );
    refused(
        bearer(&gw, "/api", "opaque-noscope").await,
        403,
        "forbidden",
    )
    .await;

    // Twenty concurrent requests with one new token share one introspection call.
    idp.set_token(
        "opaque-burst",
        json!({"active": true, "sub": "bob", "scope": "users.read"}),
    );
    idp.set_delay(Duration::from_millis(300));
    let before = idp.introspections();
    let calls = (0..20).map(|_| {
        let url = gw.url("/api");
        tokio::spawn(async move {
            client()
                .get(url)
                .bearer_auth("opaque-burst")
                .send()
                .await
                .unwrap()
                .status()
        })
    });
    for call in calls.collect::<Vec<_>>() {
        assert_eq!(call.await.unwrap(), 200);
    }
    assert_eq!(idp.introspections(), before + 1, "one call for the burst");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_or_misconfigured_introspection_answers_503() {
    let idp = Idp::start("gatehouse", "right").await;
    idp.set_token("opaque-1", json!({"active": true, "sub": "a"}));
    let up = TestUpstream::start("svc").await;
    // The gateway authenticates with the wrong secret: the endpoint refuses it.
    let gw = protected_gateway(&up, &introspection_policy(&idp, ""), "wrong").await;
    let resp = bearer(&gw, "/api", "opaque-1").await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("www-authenticate").is_none());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "auth_unavailable");

    // Slower than the timeout, then down: 503 too, and never cached.
    idp.set_delay(Duration::from_millis(1500));
    assert_eq!(bearer(&gw, "/api", "opaque-2").await.status(), 503);
    idp.stop();
    assert_eq!(bearer(&gw, "/api", "opaque-3").await.status(), 503);
    assert_eq!(up.hits(), 0);
    let metrics = gw.metrics_text().await;
    assert!(metrics.contains(
        "gatehouse_auth_failures_total{reason=\"introspection_unavailable\",route=\"api\"} 3"
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jwt_with_an_unknown_key_goes_to_introspection() {
    let dir = tempfile::tempdir().unwrap();
    let known = SigningKey::generate(dir.path(), Algorithm::ES256, "known");
    let foreign = SigningKey::generate(dir.path(), Algorithm::ES256, "foreign");
    let idp = Idp::start("gatehouse", "s3cret").await;
    let foreign_token = foreign.sign(&claims("carol", json!({})));
    idp.set_token(&foreign_token, json!({"active": true, "sub": "carol"}));
    let policy = format!(
        "{}jwt:\n  keys: [{}]\n",
        introspection_policy(&idp, ""),
        known.yaml()
    );
    let up = TestUpstream::start("svc").await;
    let gw = protected_gateway(&up, &policy, "s3cret").await;
    let resp = bearer(&gw, "/api", &known.sign(&claims("dave", json!({})))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(idp.introspections(), 0, "a known key is verified locally");
    let resp = bearer(&gw, "/api", &foreign_token).await;
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.headers["x-user-id"], "carol");
    assert_eq!(idp.introspections(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_from_query_or_cookie_are_stripped_when_asked_and_policies_reload() {
    let up = TestUpstream::start("svc").await;
    let policy = |secret: &[u8]| {
        format!(
            "kind: AuthPolicy\nid: web\ntoken_from: [header:Authorization, query:access_token, cookie:session]\njwt:\n  keys: [{{ alg: HS256, secret: \"base64:{}\" }}]\nforward:\n  headers: {{ X-User-Id: sub }}\n  strip_authorization: true\n",
            b64(secret)
        )
    };
    let routes = |secret: &[u8]| {
        format!(
            "{}---\n{}---\n{}",
            up.resource("svc"),
            policy(secret),
            protected_route("web", "/web", "web", "")
        )
    };
    let gw = Gateway::builder()
        .file("r.yaml", routes(HS_SECRET))
        .start()
        .await;
    let token = sign_hmac(
        Algorithm::HS256,
        None,
        HS_SECRET,
        &claims("erin", json!({})),
    );

    let resp = call(&gw, &format!("/web?a=1&access_token={token}&b=2"), &[]).await;
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.path, "/web?a=1&b=2");
    assert_eq!(echo.headers["x-user-id"], "erin");

    let cookie = format!("theme=dark; session={token}");
    let resp = call(&gw, "/web", &[("cookie", &cookie)]).await;
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.headers["cookie"], "theme=dark");

    let resp = bearer(&gw, "/web", &token).await;
    let echo: Echo = resp.json().await.unwrap();
    assert!(!echo.headers.contains_key("authorization"));

    // A rotated secret takes effect like any other change: old tokens stop working.
    let rotated = b"the rotated secret";
    let revision = gw.status().await["revision"].as_u64().unwrap();
    gw.write_file("r.yaml", &routes(rotated));
    gw.wait_revision_after(revision).await;
    refused(bearer(&gw, "/web", &token).await, 401, "unauthorized").await;
    let fresh = sign_hmac(Algorithm::HS256, None, rotated, &claims("erin", json!({})));
    assert_eq!(bearer(&gw, "/web", &fresh).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_whose_secret_is_not_in_the_environment_is_refused_with_its_routes() {
    let up = TestUpstream::start("svc").await;
    let idp = Idp::start("gatehouse", "x").await;
    let routes = format!(
        "{}---\n{}---\n{}---\nkind: Route\nid: open\nmatch: {{ paths: [\"/open\"] }}\nupstream: svc\n",
        up.resource("svc"),
        introspection_policy(&idp, ""),
        protected_route("api", "/api", "opaque", "")
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let status = gw.status().await;
    let rejected = status["rejected"].to_string();
    assert!(rejected.contains("IDP_SECRET"), "{rejected}");
    assert!(
        rejected.contains("policy `opaque` was refused"),
        "{rejected}"
    );
    // The protected route is not served unprotected; the rest keeps working.
    assert_eq!(bearer(&gw, "/api", "anything").await.status(), 404);
    assert_eq!(call(&gw, "/open", &[]).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_without_an_identity_run_before_auth_and_consumer_limits_after() {
    let idp = Idp::start("gatehouse", "s3cret").await;
    idp.set_token(
        "opaque-alice",
        json!({"active": true, "sub": "alice", "exp": now() + 600}),
    );
    let up = TestUpstream::start("svc").await;
    let routes = format!(
        "{}---\n{}---\n{}---\n{}",
        up.resource("svc"),
        introspection_policy(&idp, ""),
        protected_route(
            "by-ip",
            "/by-ip",
            "opaque",
            "rate_limit: { rate: 5, per: 1m, key: client_ip }\n"
        ),
        protected_route(
            "by-consumer",
            "/by-consumer",
            "opaque",
            "rate_limit: { rate: 1, per: 1m, key: consumer }\n"
        ),
    );
    let gw = Gateway::builder()
        .file("r.yaml", routes)
        .env("IDP_SECRET", "s3cret")
        .start()
        .await;

    // 200 made-up tokens from one client: the limit refuses all but 5 before any of them
    // costs an introspection call.
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..200 {
        let status = bearer(&gw, "/by-ip", &format!("made-up-{i}"))
            .await
            .status();
        *statuses.entry(status.as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses.get(&401), Some(&5), "{statuses:?}");
    assert_eq!(statuses.get(&429), Some(&195), "{statuses:?}");
    assert_eq!(idp.introspections(), 5);

    // Keyed by the consumer, the limit needs the identity: bad tokens are judged (and refused)
    // first, and never use up a caller's budget.
    assert_eq!(
        bearer(&gw, "/by-consumer", "opaque-alice").await.status(),
        200
    );
    for i in 0..3 {
        let resp = bearer(&gw, "/by-consumer", &format!("other-{i}")).await;
        refused(resp, 401, "unauthorized").await;
    }
    assert_eq!(
        bearer(&gw, "/by-consumer", "opaque-alice").await.status(),
        429
    );
    assert_eq!(idp.introspections(), 5 + 1 + 3);
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn introspection_calls_in_flight_are_bounded_by_max_concurrency() {
    let idp = Idp::start("gatehouse", "s3cret").await;
    idp.set_delay(Duration::from_millis(300));
    let up = TestUpstream::start("svc").await;
    let policy = introspection_policy(&idp, "")
        .replace("  timeout: 1s\n", "  timeout: 1s\n  max_concurrency: 8\n");
    let gw = protected_gateway(&up, &policy, "s3cret").await;

    let url = gw.url("/api");
    let requests = (0..300).map(|i| {
        let url = url.clone();
        tokio::spawn(async move {
            let resp = client()
                .get(url)
                .bearer_auth(format!("random-{i}"))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap();
            (
                status,
                body["error"].as_str().unwrap_or_default().to_string(),
            )
        })
    });
    let mut busy = 0;
    for request in requests.collect::<Vec<_>>() {
        match request.await.unwrap() {
            (401, _) => {}
            (503, error) => {
                assert_eq!(error, "auth_unavailable");
                busy += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(
        idp.max_in_flight() <= 8,
        "{} calls in flight at once",
        idp.max_in_flight()
    );
    assert!(busy > 0, "300 at once cannot all fit in 8 slots");
    assert_eq!(idp.introspections() + busy, 300);
    let metrics = gw.metrics_text().await;
    let line = format!(
        "gatehouse_auth_failures_total{{reason=\"introspection_busy\",route=\"api\"}} {busy}"
    );
    assert!(metrics.contains(&line), "{line} in\n{metrics}");
}

/// Sleeps until the wall clock is early in a second (its first 300 ms), so that what
/// follows starts at a known offset within the second.
async fn early_in_a_second() {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        if millis < 300 {
            return;
        }
        assert!(Instant::now() < deadline, "the clock does not move");
        tokio::time::sleep(Duration::from_millis(u64::from(1005 - millis))).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_revoked_at_the_identity_provider_is_refused_once_cache_ttl_has_passed() {
    let idp = Idp::start("gatehouse", "s3cret").await;
    idp.set_token(
        "opaque-dora",
        json!({"active": true, "sub": "dora", "exp": now() + 600}),
    );
    let up = TestUpstream::start("svc").await;
    let policy = introspection_policy(&idp, "").replace("cache_ttl: 60s", "cache_ttl: 1s");
    let gw = protected_gateway(&up, &policy, "s3cret").await;

    // Early in a second, so a cache that counts whole seconds would keep the verdict past
    // the 1.1 s waited below: the answer is remembered from before `answered`, so at
    // `answered + 1.1 s` it is more than 1 s old, wherever the second boundaries fall.
    early_in_a_second().await;
    assert_eq!(bearer(&gw, "/api", "opaque-dora").await.status(), 200);
    let answered = Instant::now();
    assert_eq!(idp.introspections(), 1);
    idp.set_token("opaque-dora", json!({"active": false}));
    tokio::time::sleep_until((answered + Duration::from_millis(1100)).into()).await;
    let resp = bearer(&gw, "/api", "opaque-dora").await;
    refused(resp, 401, "unauthorized").await;
    assert_eq!(
        idp.introspections(),
        2,
        "asked again once the verdict was 1 s old"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_tokens_are_remembered_for_negative_ttl_by_digest() {
    let idp = Idp::start("gatehouse", "s3cret").await;
    let up = TestUpstream::start("svc").await;
    let policy = introspection_policy(&idp, "")
        .replace("  timeout: 1s\n", "  timeout: 1s\n  negative_ttl: 1h\n");
    let gw = protected_gateway(&up, &policy, "s3cret").await;

    // Large refused tokens: each costs one call, then is answered from memory, which holds
    // a digest of it, not the token.
    let rss = || async { gw.metric("process_resident_memory_bytes").await };
    let tokens: Vec<String> = (0..1000)
        .map(|i| format!("{i:06}{}", "x".repeat(28 * 1024)))
        .collect();
    let client = client();
    let before = rss().await;
    for token in &tokens {
        let resp = client
            .get(gw.url("/api"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    assert_eq!(idp.introspections(), 1000);
    for token in tokens.iter().take(50) {
        let resp = client
            .get(gw.url("/api"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    assert_eq!(idp.introspections(), 1000, "remembered: no second call");
    let grown = rss().await - before;
    // Kept whole, the refusals alone would hold 28 MB.
    assert!(
        grown < 16.0 * 1024.0 * 1024.0,
        "resident memory grew by {:.1} MB",
        grown / 1024.0 / 1024.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn in_file_mode_the_jwks_is_kept_fresh_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let published = SigningKey::generate(dir.path(), Algorithm::ES256, "published");
    let idp = Idp::start("gatehouse", "unused").await;
    idp.publish(jwks(&[&published]));
    // An inline key verifies every token of this test: only the background refresh has a
    // reason to fetch the JWKS.
    let policy = format!(
        "kind: AuthPolicy\nid: both\njwt:\n  keys: [{{ kid: hs, alg: HS256, secret: \"base64:{}\" }}]\n  jwks_uri: \"{}\"\n",
        b64(HS_SECRET),
        idp.jwks_uri()
    );
    let up = TestUpstream::start("svc").await;
    let routes = format!(
        "{}---\n{policy}---\n{}",
        up.resource("svc"),
        protected_route("api", "/api", "both", "")
    );
    let gw = Gateway::builder().file("r.yaml", routes).start().await;
    let token = sign_hmac(
        Algorithm::HS256,
        Some("hs"),
        HS_SECRET,
        &claims("erin", json!({})),
    );
    assert_eq!(bearer(&gw, "/api", &token).await.status(), 200);
    eventually(
        Duration::from_secs(5),
        "a background JWKS fetch",
        || async { idp.jwks_calls() >= 1 },
    )
    .await;
    // The published key was fetched without any token asking for it.
    let calls = idp.jwks_calls();
    let token = published.sign(&claims("frank", json!({})));
    assert_eq!(bearer(&gw, "/api", &token).await.status(), 200);
    assert_eq!(idp.jwks_calls(), calls);
}
