//! Authentication at the edge (`AuthPolicy`): JWTs verified locally, other tokens checked by
//! RFC 7662 introspection, the caller's identity handed to the upstream as headers.
//!
//! A policy compiles into one [`Authenticator`] shared by every route that names it, with its
//! caches: a token seen before, signed or opaque, costs one cache lookup. A token is judged
//! like this:
//!
//! 1. a remembered verdict, if still fresh;
//! 2. shaped like a JWT, with a key the policy holds for its `kid`/`alg` → verified here;
//! 3. a JWT whose key is unknown → the JWKS is refetched (rate-limited), then tried again;
//! 4. still unknown, or an opaque token → introspection, if the policy has it;
//! 5. otherwise → 401.

mod cache;
mod identity;
mod introspect;
mod jwks;
mod keys;
mod token;

pub use cache::{unix_now, Outcome, VerdictCache};
pub use identity::{ClaimRules, Identity};
pub use introspect::{IntrospectionSettings, Introspector, NEGATIVE_TTL};
pub use jwks::{Jwks, MIN_REFETCH, REFRESH_EVERY};
pub use keys::{decode_base64, KeyMaterial, KeyRing, VerifyKey};
pub use token::TokenSource;

use crate::{Access, Exchange, Flow, Plugin, Reply, Stage};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::WWW_AUTHENTICATE;
use http::{HeaderName, HeaderValue, StatusCode};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use keys::KeyMatch;
use pingora_http::RequestHeader;
use serde_json::{Map, Value};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// How many verdicts one policy remembers.
pub const CACHE_ENTRIES: usize = 10_000;
/// How long a verified JWT without `exp` is remembered before it is verified again.
pub const NO_EXP_TTL: u64 = 300;

/// Why a request is not let through. The `&'static str` reasons are the `reason` label of
/// `gatehouse_auth_failures_total`: a small fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No token in any of the policy's places (401 without `error=`).
    MissingToken,
    /// A token was sent and is not acceptable (401 `invalid_token`).
    InvalidToken(&'static str),
    /// A valid token without a required scope (403 `insufficient_scope`).
    InsufficientScope,
    /// Introspection could not be reached (503 `auth_unavailable`).
    Unavailable,
}

impl Failure {
    pub fn reason(self) -> &'static str {
        match self {
            Failure::MissingToken => "missing_token",
            Failure::InvalidToken(reason) => reason,
            Failure::InsufficientScope => "insufficient_scope",
            Failure::Unavailable => "introspection_unavailable",
        }
    }
}

/// `jwt` of a policy, with its keys already parsed.
#[derive(Debug, Clone, Default)]
pub struct JwtSettings {
    pub keys: Vec<VerifyKey>,
    pub jwks_uri: Option<String>,
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub leeway: Duration,
}

/// A policy as the gateway resolved it (secrets in place, keys parsed).
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub token_from: Vec<TokenSource>,
    pub jwt: Option<JwtSettings>,
    pub introspection: Option<IntrospectionSettings>,
    pub rules: ClaimRules,
    /// Remove the credential before proxying (`forward.strip_authorization`).
    pub strip_credential: bool,
}

struct LocalJwt {
    inline: KeyRing,
    jwks: Option<Arc<Jwks>>,
    /// Everything but the algorithm, which each key sets for itself.
    validation: Validation,
    leeway: u64,
}

/// A compiled `AuthPolicy`.
pub struct Authenticator {
    sources: Vec<TokenSource>,
    jwt: Option<LocalJwt>,
    introspector: Option<Arc<Introspector>>,
    verdicts: Arc<VerdictCache>,
    rules: Arc<ClaimRules>,
    strip_credential: bool,
    forbidden_challenge: HeaderValue,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("sources", &self.sources)
            .field("jwt", &self.jwt.is_some())
            .field("introspection", &self.introspector.is_some())
            .finish_non_exhaustive()
    }
}

/// What can be decided without waiting.
enum Check {
    Done(Outcome),
    /// A JWT whose key is not known yet: refetch the JWKS first.
    FetchKeys,
    /// Ask the identity provider.
    Introspect,
}

/// What a token's first segment says, if it is a JWT at all.
enum Shape {
    Jwt {
        alg: Algorithm,
        kid: Option<String>,
    },
    /// A JWT header naming `none` or an algorithm gatehouse does not verify.
    UnsupportedAlg,
    Opaque,
}

impl Authenticator {
    /// Builds the policy and, when it has a `jwks_uri` and a Tokio runtime is at hand,
    /// starts fetching its keys in the background.
    pub fn new(settings: AuthSettings) -> Result<Arc<Authenticator>, String> {
        let http = reqwest::Client::builder()
            // A redirect from an identity provider is a misconfiguration, not a hint.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let verdicts = Arc::new(VerdictCache::new(CACHE_ENTRIES));
        let rules = Arc::new(settings.rules);
        let jwt = settings.jwt.map(|jwt| {
            let mut validation = Validation::new(Algorithm::HS256);
            let mut required: Vec<&str> = Vec::new();
            validation.validate_nbf = true;
            validation.leeway = jwt.leeway.as_secs();
            if let Some(issuer) = &jwt.issuer {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            if jwt.audiences.is_empty() {
                validation.validate_aud = false;
            } else {
                validation.set_audience(&jwt.audiences);
                required.push("aud");
            }
            // `exp` is checked when present; a token without it is re-verified every
            // NO_EXP_TTL seconds.
            validation.set_required_spec_claims(&required);
            LocalJwt {
                inline: KeyRing { keys: jwt.keys },
                jwks: jwt
                    .jwks_uri
                    .map(|uri| Jwks::new(uri, http.clone(), verdicts.clone())),
                validation,
                leeway: jwt.leeway.as_secs(),
            }
        });
        let introspector = match &settings.introspection {
            Some(intro) => Some(Arc::new(Introspector::new(
                intro,
                http.clone(),
                rules.clone(),
                verdicts.clone(),
            )?)),
            None => None,
        };
        let scopes = rules.required_scopes.join(" ");
        let forbidden_challenge = HeaderValue::from_str(&format!(
            "Bearer realm=\"gatehouse\", error=\"insufficient_scope\", scope=\"{scopes}\""
        ))
        .map_err(|_| "required_scopes: not valid in a header".to_string())?;
        let sources = if settings.token_from.is_empty() {
            TokenSource::defaults()
        } else {
            settings.token_from
        };
        let auth = Arc::new(Authenticator {
            sources,
            jwt,
            introspector,
            verdicts,
            rules,
            strip_credential: settings.strip_credential,
            forbidden_challenge,
        });
        if let Some(jwks) = auth.jwt.as_ref().and_then(|j| j.jwks.as_ref()) {
            jwks.start();
        }
        Ok(auth)
    }

    /// The header names this policy sets upstream (and so removes from every request).
    pub fn forwarded_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.rules.forward.iter().map(|(h, _)| h)
    }

    /// Verdicts remembered now.
    pub fn cached_verdicts(&self) -> usize {
        self.verdicts.len()
    }

    /// Forgets every remembered verdict, so the next token is judged from scratch (benchmarks
    /// measure the cold path with it).
    pub fn forget_verdicts(&self) {
        self.verdicts.clear();
    }

    /// Judges a token: from the cache, locally, or by waiting on the JWKS or introspection.
    pub async fn authenticate(&self, token: &str) -> Outcome {
        match self.check_now(token) {
            Check::Done(outcome) => outcome,
            pending => self.check_later(token, pending).await,
        }
    }

    fn check_now(&self, token: &str) -> Check {
        let now = unix_now();
        if let Some(outcome) = self.verdicts.get(token, now) {
            return Check::Done(outcome);
        }
        match shape(token) {
            Shape::UnsupportedAlg => Check::Done(Err(Failure::InvalidToken("unsupported_alg"))),
            Shape::Opaque => self.not_local("malformed_token"),
            Shape::Jwt { alg, kid } => match self.verify_local(token, alg, kid.as_deref(), now) {
                Some(outcome) => Check::Done(outcome),
                None => match self.jwt.as_ref().and_then(|j| j.jwks.as_ref()) {
                    Some(jwks) if jwks.may_refetch() => Check::FetchKeys,
                    _ => self.not_local("unknown_key"),
                },
            },
        }
    }

    /// A token no local key can judge: introspection, or refused for `reason`.
    fn not_local(&self, reason: &'static str) -> Check {
        match self.introspector {
            Some(_) => Check::Introspect,
            None => Check::Done(Err(Failure::InvalidToken(reason))),
        }
    }

    async fn check_later(&self, token: &str, pending: Check) -> Outcome {
        let pending = match pending {
            Check::FetchKeys => {
                if let Some(jwks) = self.jwt.as_ref().and_then(|j| j.jwks.as_ref()) {
                    jwks.refetch().await;
                }
                match shape(token) {
                    Shape::Jwt { alg, kid } => {
                        match self.verify_local(token, alg, kid.as_deref(), unix_now()) {
                            Some(outcome) => return outcome,
                            None => self.not_local("unknown_key"),
                        }
                    }
                    _ => self.not_local("malformed_token"),
                }
            }
            other => other,
        };
        match (pending, &self.introspector) {
            (Check::Done(outcome), _) => outcome,
            (Check::Introspect, Some(introspector)) => introspector.check(token).await,
            _ => Err(Failure::InvalidToken("unknown_key")),
        }
    }

    /// Verifies a JWT with the keys held now; `None` when no key fits it.
    fn verify_local(
        &self,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
        now: u64,
    ) -> Option<Outcome> {
        let jwt = self.jwt.as_ref()?;
        let published = jwt.jwks.as_ref().map(|j| j.keys());
        let mut found = jwt.inline.lookup(kid, alg);
        if matches!(found, KeyMatch::Unknown) {
            if let Some(ring) = &published {
                found = ring.lookup(kid, alg);
            }
        }
        let keys = match found {
            KeyMatch::Found(keys) => keys,
            KeyMatch::AlgorithmMismatch => {
                return Some(Err(Failure::InvalidToken("algorithm_mismatch")))
            }
            KeyMatch::Unknown => return None,
        };
        let mut validation = jwt.validation.clone();
        validation.algorithms = vec![alg];
        let mut failure = "bad_signature";
        for key in keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => {
                    let identity = Arc::new(Identity::from_claims(&data.claims, &self.rules));
                    let until = match data.claims.get("exp").and_then(Value::as_u64) {
                        Some(exp) => exp.saturating_add(jwt.leeway),
                        None => now + NO_EXP_TTL,
                    };
                    self.verdicts.put(token, Ok(identity.clone()), until);
                    return Some(Ok(identity));
                }
                Err(e) => {
                    let reason = jwt_failure(e.kind());
                    if reason != "bad_signature" {
                        failure = reason;
                    }
                }
            }
        }
        Some(Err(Failure::InvalidToken(failure)))
    }

    /// Lets an authenticated request through, or answers it.
    fn admit(
        &self,
        outcome: Outcome,
        source: usize,
        req: &mut RequestHeader,
        ex: &mut Exchange,
    ) -> Flow {
        let identity = match outcome {
            Ok(identity) if identity.authorized => identity,
            Ok(_) => return Flow::Respond(self.refusal(Failure::InsufficientScope)),
            Err(failure) => return Flow::Respond(self.refusal(failure)),
        };
        if self.strip_credential {
            self.sources[source].remove(req);
        }
        for (header, value) in &identity.forward {
            let _ = req.insert_header(header.clone(), value.clone());
        }
        ex.consumer = identity.consumer.clone();
        Flow::Continue
    }

    /// The answer for a failure, with the RFC 6750 challenge.
    pub fn refusal(&self, failure: Failure) -> Reply {
        const REALM: HeaderValue = HeaderValue::from_static("Bearer realm=\"gatehouse\"");
        const INVALID: HeaderValue =
            HeaderValue::from_static("Bearer realm=\"gatehouse\", error=\"invalid_token\"");
        let reply = match failure {
            Failure::MissingToken => Reply::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a bearer token is required",
            )
            .with_header(WWW_AUTHENTICATE, REALM),
            Failure::InvalidToken(reason) => Reply::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("the token is not valid ({})", reason.replace('_', " ")),
            )
            .with_header(WWW_AUTHENTICATE, INVALID),
            Failure::InsufficientScope => Reply::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the token lacks a required scope",
            )
            .with_header(WWW_AUTHENTICATE, self.forbidden_challenge.clone()),
            Failure::Unavailable => Reply::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "auth_unavailable",
                "the token could not be checked: introspection is unavailable",
            ),
        };
        reply.with_reason(failure.reason())
    }
}

/// Reads a token's JWT header, if it has one. Only `alg` and `kid` matter here.
fn shape(token: &str) -> Shape {
    #[derive(serde::Deserialize)]
    struct Head {
        alg: String,
        kid: Option<String>,
    }
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Shape::Opaque;
    };
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(head) else {
        return Shape::Opaque;
    };
    let Ok(head) = serde_json::from_slice::<Head>(&bytes) else {
        return Shape::Opaque;
    };
    match Algorithm::from_str(&head.alg) {
        Ok(alg) => Shape::Jwt { alg, kid: head.kid },
        Err(_) => Shape::UnsupportedAlg,
    }
}

fn jwt_failure(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidSignature => "bad_signature",
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not_yet_valid",
        ErrorKind::InvalidIssuer => "wrong_issuer",
        ErrorKind::InvalidAudience => "wrong_audience",
        ErrorKind::InvalidAlgorithm => "algorithm_mismatch",
        ErrorKind::MissingRequiredClaim(_) => "missing_claim",
        _ => "malformed_token",
    }
}

/// The auth plugin of one route: its policy's [`Authenticator`].
pub struct Authenticate {
    pub auth: Arc<Authenticator>,
}

impl Plugin for Authenticate {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn stage(&self) -> Stage {
        Stage::Authenticate
    }

    fn access<'a>(&'a self, req: &'a mut RequestHeader, ex: &'a mut Exchange) -> Access<'a> {
        let auth = &*self.auth;
        // Whatever happens next, the client's own copies of identity headers never pass.
        for header in auth.forwarded_headers() {
            req.remove_header(header);
        }
        let found = auth
            .sources
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.find(req).map(|t| (i, t)));
        let Some((source, token)) = found else {
            return Flow::Respond(auth.refusal(Failure::MissingToken)).into();
        };
        match auth.check_now(token) {
            Check::Done(outcome) => auth.admit(outcome, source, req, ex).into(),
            pending => {
                let token = token.to_owned();
                Access::Wait(Box::pin(async move {
                    let outcome = auth.check_later(&token, pending).await;
                    auth.admit(outcome, source, req, ex)
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"unit test secret";

    fn policy(rules: ClaimRules) -> Arc<Authenticator> {
        let key = VerifyKey::configured(
            Some("k1".into()),
            "HS256",
            &KeyMaterial::Secret(String::from_utf8(SECRET.to_vec()).unwrap()),
        )
        .unwrap();
        Authenticator::new(AuthSettings {
            token_from: vec![],
            jwt: Some(JwtSettings {
                keys: vec![key],
                ..JwtSettings::default()
            }),
            introspection: None,
            rules,
            strip_credential: false,
        })
        .unwrap()
    }

    fn token(alg: Algorithm, kid: Option<&str>, claims: Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(String::from);
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn reason(outcome: Outcome) -> &'static str {
        outcome.map(|_| "ok").unwrap_or_else(Failure::reason)
    }

    fn now_check(auth: &Authenticator, token: &str) -> Outcome {
        match auth.check_now(token) {
            Check::Done(outcome) => outcome,
            _ => panic!("a policy with inline keys only decides at once"),
        }
    }

    #[test]
    fn shape_tells_jwts_from_opaque_tokens() {
        assert!(matches!(shape("opaque-token"), Shape::Opaque));
        assert!(matches!(shape("a.b.c"), Shape::Opaque));
        let none = format!("{}.e30.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#));
        assert!(matches!(shape(&none), Shape::UnsupportedAlg));
        let es512 = format!("{}.e30.sig", URL_SAFE_NO_PAD.encode(r#"{"alg":"ES512"}"#));
        assert!(matches!(shape(&es512), Shape::UnsupportedAlg));
        let t = token(Algorithm::HS256, Some("k1"), json!({"sub": "a"}));
        assert!(
            matches!(shape(&t), Shape::Jwt { alg: Algorithm::HS256, kid: Some(k) } if k == "k1")
        );
    }

    #[test]
    fn verified_tokens_are_cached_until_exp_and_failures_are_not() {
        let auth = policy(ClaimRules::default());
        let good = token(
            Algorithm::HS256,
            Some("k1"),
            json!({"sub": "ann", "exp": unix_now() + 60}),
        );
        let identity = now_check(&auth, &good).unwrap();
        assert_eq!(identity.consumer.as_deref(), Some("ann"));
        assert_eq!(auth.cached_verdicts(), 1);
        // The second time it is the same identity, from the cache.
        assert!(Arc::ptr_eq(&identity, &now_check(&auth, &good).unwrap()));

        let expired = token(
            Algorithm::HS256,
            Some("k1"),
            json!({"sub": "ann", "exp": unix_now() - 60}),
        );
        assert_eq!(reason(now_check(&auth, &expired)), "expired");
        assert_eq!(auth.cached_verdicts(), 1);
    }

    #[test]
    fn the_key_decides_the_algorithm() {
        let auth = policy(ClaimRules::default());
        let claims = json!({"sub": "ann"});
        // HS384 with the key's id: the key is HS256 only.
        let t = token(Algorithm::HS384, Some("k1"), claims.clone());
        assert_eq!(reason(now_check(&auth, &t)), "algorithm_mismatch");
        // Without a kid, only keys of the token's algorithm are tried: none here.
        let t = token(Algorithm::HS384, None, claims.clone());
        assert_eq!(reason(now_check(&auth, &t)), "unknown_key");
        let t = token(Algorithm::HS256, None, claims);
        assert_eq!(reason(now_check(&auth, &t)), "ok");
    }

    #[test]
    fn cache_entries_go_stale() {
        let cache = VerdictCache::new(10);
        cache.put("t", Err(Failure::InvalidToken("inactive_token")), 100);
        assert!(cache.get("t", 100).is_some());
        assert!(cache.get("t", 101).is_none());
        assert!(cache.is_empty(), "a stale entry is dropped when found");
    }

    #[test]
    fn refusals_carry_rfc6750_challenges() {
        let auth = policy(ClaimRules {
            required_scopes: vec!["a.read".into(), "b".into()],
            forward: vec![],
        });
        let missing = auth.refusal(Failure::MissingToken);
        assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
        assert_eq!(missing.headers[0].1, "Bearer realm=\"gatehouse\"");
        let scope = auth.refusal(Failure::InsufficientScope);
        assert_eq!(scope.status, StatusCode::FORBIDDEN);
        assert_eq!(
            scope.headers[0].1,
            "Bearer realm=\"gatehouse\", error=\"insufficient_scope\", scope=\"a.read b\""
        );
        let down = auth.refusal(Failure::Unavailable);
        assert_eq!(down.code, "auth_unavailable");
        assert!(down.headers.is_empty());
        assert_eq!(down.reason, Some("introspection_unavailable"));
    }
}
