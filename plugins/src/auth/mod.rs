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
//! 4. still unknown, or an opaque token → a remembered refusal, else introspection, if the
//!    policy has it;
//! 5. otherwise → 401.
//!
//! A JWT header that marks an extension critical (`crit`) is refused: gatehouse implements
//! none, and RFC 7515 §4.1.11 forbids accepting a token whose critical extensions are not
//! understood.

mod cache;
mod identity;
mod introspect;
mod jwks;
mod keys;
mod token;

pub use cache::{unix_millis, unix_now, Outcome, VerdictCache};
pub use identity::{ClaimRules, Identity};
pub use introspect::{IntrospectionSettings, Introspector, MAX_CONCURRENCY, NEGATIVE_TTL};
pub use jwks::{Jwks, MIN_REFETCH, REFRESH_EVERY};
pub use keys::{decode_base64, KeyMaterial, KeyRing, VerifyKey};
pub use token::TokenSource;

use crate::{Access, ErrorAnswer, Exchange, Flow, Plugin, Stage};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
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
/// How long (seconds) a verified JWT without `exp` is remembered before it is verified again.
pub const NO_EXP_TTL: u64 = 300;
/// JWT header extensions gatehouse implements, which a token may therefore mark critical
/// (`crit`, RFC 7515 §4.1.11): none yet.
const CRITICAL_EXTENSIONS: [&str; 0] = [];

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
    /// The policy's introspection calls are all in flight (`max_concurrency`): refused at
    /// once rather than queued (503 `auth_unavailable`).
    Overloaded,
}

impl Failure {
    pub fn reason(self) -> &'static str {
        match self {
            Failure::MissingToken => "missing_token",
            Failure::InvalidToken(reason) => reason,
            Failure::InsufficientScope => "insufficient_scope",
            Failure::Unavailable => "introspection_unavailable",
            Failure::Overloaded => "introspection_busy",
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
    /// How often the JWKS is refetched anyway; `None`: every [`REFRESH_EVERY`]. Not a policy
    /// field: tests shorten it to see a withdrawn key go.
    pub jwks_refresh: Option<Duration>,
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
    /// A JWT header gatehouse refuses before any key is looked up, for this reason: one
    /// naming `none` or an algorithm gatehouse does not verify, or marking critical an
    /// extension gatehouse does not implement.
    Refused(&'static str),
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
                jwks: jwt.jwks_uri.map(|uri| {
                    let refresh = jwt.jwks_refresh.unwrap_or(REFRESH_EVERY);
                    Jwks::new(uri, http.clone(), verdicts.clone(), refresh)
                }),
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

    /// The policy's published keys, when it has a `jwks_uri`.
    fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwt.as_ref().and_then(|j| j.jwks.as_ref())
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
        let now = unix_millis();
        if let Some(outcome) = self.verdicts.get(token, now) {
            return Check::Done(outcome);
        }
        match shape(token) {
            Shape::Refused(reason) => Check::Done(Err(Failure::InvalidToken(reason))),
            Shape::Opaque => self.not_local(token, "malformed_token", now),
            Shape::Jwt { alg, kid } => match self.verify_local(token, alg, kid.as_deref(), now) {
                Some(outcome) => Check::Done(outcome),
                None => match self.jwks() {
                    Some(jwks) if jwks.may_refetch() || jwks.is_fetching() => Check::FetchKeys,
                    _ => self.not_local(token, "unknown_key", now),
                },
            },
        }
    }

    /// A token no local key can judge: a refusal remembered from introspection,
    /// introspection, or refused for `reason`.
    fn not_local(&self, token: &str, reason: &'static str, now: u64) -> Check {
        match &self.introspector {
            Some(introspector) => match introspector.remembered_refusal(token, now) {
                Some(failure) => Check::Done(Err(failure)),
                None => Check::Introspect,
            },
            None => Check::Done(Err(Failure::InvalidToken(reason))),
        }
    }

    async fn check_later(&self, token: &str, pending: Check) -> Outcome {
        let pending = match pending {
            Check::FetchKeys => {
                if let Some(jwks) = self.jwks() {
                    jwks.refetch().await;
                }
                let now = unix_millis();
                match shape(token) {
                    Shape::Jwt { alg, kid } => {
                        match self.verify_local(token, alg, kid.as_deref(), now) {
                            Some(outcome) => return outcome,
                            None => self.not_local(token, "unknown_key", now),
                        }
                    }
                    _ => self.not_local(token, "malformed_token", now),
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

    /// Verifies a JWT with the keys held now (`now` in Unix milliseconds); `None` when no key
    /// fits it.
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
                    // RFC 7519 §4.1.1: a string. The JWT library also takes a list, and
                    // accepts it when any entry is the issuer.
                    if data.claims.get("iss").is_some_and(|iss| !iss.is_string()) {
                        return Some(Err(Failure::InvalidToken("wrong_issuer")));
                    }
                    let identity = Arc::new(Identity::from_claims(&data.claims, &self.rules));
                    // Never beyond `exp` (+ leeway), to the millisecond.
                    let until = match data.claims.get("exp").and_then(Value::as_u64) {
                        Some(exp) => exp.saturating_add(jwt.leeway).saturating_mul(1000),
                        None => now.saturating_add(NO_EXP_TTL * 1000),
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
    pub fn refusal(&self, failure: Failure) -> ErrorAnswer {
        const REALM: HeaderValue = HeaderValue::from_static("Bearer realm=\"gatehouse\"");
        const INVALID: HeaderValue =
            HeaderValue::from_static("Bearer realm=\"gatehouse\", error=\"invalid_token\"");
        let reply = match failure {
            Failure::MissingToken => ErrorAnswer::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a bearer token is required",
            )
            .with_header(WWW_AUTHENTICATE, REALM),
            Failure::InvalidToken(reason) => ErrorAnswer::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("the token is not valid ({})", reason.replace('_', " ")),
            )
            .with_header(WWW_AUTHENTICATE, INVALID),
            Failure::InsufficientScope => ErrorAnswer::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the token lacks a required scope",
            )
            .with_header(WWW_AUTHENTICATE, self.forbidden_challenge.clone()),
            Failure::Unavailable => ErrorAnswer::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "auth_unavailable",
                "the token could not be checked: introspection is unavailable",
            ),
            Failure::Overloaded => ErrorAnswer::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "auth_unavailable",
                "the token could not be checked: too many token checks are under way",
            )
            .with_header(RETRY_AFTER, HeaderValue::from_static("1")),
        };
        reply.with_reason(failure.reason())
    }
}

/// Reads a token's JWT header, if it has one. Only `alg`, `kid` and `crit` matter here.
fn shape(token: &str) -> Shape {
    #[derive(serde::Deserialize)]
    struct Head {
        alg: String,
        kid: Option<String>,
        #[serde(default)]
        crit: Option<Value>,
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
    if let Some(crit) = head.crit {
        // A list of names, none empty, each one implemented; anything else is refused.
        let understood = crit.as_array().is_some_and(|names| {
            !names.is_empty()
                && names.iter().all(|name| {
                    name.as_str()
                        .is_some_and(|name| CRITICAL_EXTENSIONS.contains(&name))
                })
        });
        if !understood {
            return Shape::Refused("unsupported_crit");
        }
    }
    match Algorithm::from_str(&head.alg) {
        Ok(alg) => Shape::Jwt { alg, kid: head.kid },
        Err(_) => Shape::Refused("unsupported_alg"),
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

    /// A key set to fetch, or a token to introspect.
    fn may_wait(&self) -> bool {
        self.auth.jwks().is_some() || self.auth.introspector.is_some()
    }

    fn access<'a>(&'a self, req: &'a mut RequestHeader, ex: &'a mut Exchange) -> Access<'a> {
        let auth = &*self.auth;
        if let Some(jwks) = auth.jwks() {
            jwks.keep_refreshing();
        }
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

/// `auth`: runs an auth policy. A route's `auth: POLICY` field is this plugin with
/// `config: { policy: POLICY }`, built against the compiled policies; it cannot be listed in
/// `plugins:`, where nothing would say which policies are in force.
pub struct Factory;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    policy: String,
}

impl crate::registry::PluginFactory for Factory {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn build(
        &self,
        config: &crate::registry::Config,
    ) -> Result<Box<dyn Plugin>, crate::registry::ConfigError> {
        crate::registry::decode::<Settings>(config)?;
        Err(crate::registry::ConfigError::new(
            "",
            "`auth` runs a route's auth policy: set the route's `auth` field instead",
        ))
    }

    fn build_with(
        &self,
        config: &crate::registry::Config,
        resources: &dyn crate::registry::Resources,
    ) -> Result<Box<dyn Plugin>, crate::registry::ConfigError> {
        let settings: Settings = crate::registry::decode(config)?;
        let auth = resources.auth_policy(&settings.policy).ok_or_else(|| {
            crate::registry::ConfigError::new(
                "policy",
                format!("no auth policy `{}` is in force", settings.policy),
            )
        })?;
        Ok(Box::new(Authenticate { auth }))
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
        assert!(matches!(shape(&none), Shape::Refused("unsupported_alg")));
        let es512 = format!("{}.e30.sig", URL_SAFE_NO_PAD.encode(r#"{"alg":"ES512"}"#));
        assert!(matches!(shape(&es512), Shape::Refused("unsupported_alg")));
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
    fn a_critical_header_extension_is_refused() {
        let auth = policy(ClaimRules::default());
        let claims = json!({"sub": "ann"});
        for crit in [
            json!(["exp"]),
            json!(["b64"]),
            json!([]),
            json!("b64"),
            json!([1]),
        ] {
            let head = URL_SAFE_NO_PAD
                .encode(json!({"alg": "HS256", "kid": "k1", "crit": crit}).to_string());
            let body = URL_SAFE_NO_PAD.encode(claims.to_string());
            let signing_input = format!("{head}.{body}");
            let signature = jsonwebtoken::crypto::sign(
                signing_input.as_bytes(),
                &EncodingKey::from_secret(SECRET),
                Algorithm::HS256,
            )
            .unwrap();
            let t = format!("{signing_input}.{signature}");
            assert_eq!(reason(now_check(&auth, &t)), "unsupported_crit", "{crit}");
        }
        // The same token without `crit` passes.
        let t = token(Algorithm::HS256, Some("k1"), claims);
        assert_eq!(reason(now_check(&auth, &t)), "ok");
    }

    #[test]
    fn iss_must_be_a_string() {
        let key = VerifyKey::configured(
            Some("k1".into()),
            "HS256",
            &KeyMaterial::Secret(String::from_utf8(SECRET.to_vec()).unwrap()),
        )
        .unwrap();
        let with_issuer = Authenticator::new(AuthSettings {
            token_from: vec![],
            jwt: Some(JwtSettings {
                keys: vec![key],
                issuer: Some("https://idp".into()),
                ..JwtSettings::default()
            }),
            introspection: None,
            rules: ClaimRules::default(),
            strip_credential: false,
        })
        .unwrap();
        let listed = json!({"sub": "ann", "iss": ["https://idp", "https://evil"]});
        let t = token(Algorithm::HS256, Some("k1"), listed.clone());
        assert_eq!(reason(now_check(&with_issuer, &t)), "wrong_issuer");
        // Without an issuer to check, a list is refused all the same.
        let t = token(Algorithm::HS256, Some("k1"), listed);
        assert_eq!(
            reason(now_check(&policy(ClaimRules::default()), &t)),
            "wrong_issuer"
        );
        let single = json!({"sub": "ann", "iss": "https://idp"});
        let t = token(Algorithm::HS256, Some("k1"), single);
        assert_eq!(reason(now_check(&with_issuer, &t)), "ok");
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
        let busy = auth.refusal(Failure::Overloaded);
        assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.code, "auth_unavailable");
        assert_eq!(busy.reason, Some("introspection_busy"));
    }

    /// An Ed25519 key made here: its `kid`, a JWK of its public half, and its private half
    /// for signing.
    fn ed25519_key(kid: &str) -> (Value, EncodingKey) {
        use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
        let pair = Ed25519KeyPair::generate().unwrap();
        let jwk = json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        });
        let pkcs8 = pair.to_pkcs8().unwrap();
        (jwk, EncodingKey::from_ed_der(pkcs8.as_ref()))
    }

    /// A JWKS endpoint on loopback answering whatever `published` holds at the time; its URL.
    async fn serve_jwks(published: Arc<std::sync::Mutex<String>>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let body = published.lock().unwrap().clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}/jwks")
    }

    async fn run(plugin: &Authenticate, token: &str) -> Flow {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("authorization", format!("Bearer {token}"))
            .unwrap();
        let mut ex = Exchange::new("r".into(), "id".into(), [127, 0, 0, 1].into());
        let flow = match plugin.access(&mut req, &mut ex) {
            Access::Now(flow) => flow,
            Access::Wait(pending) => pending.await,
        };
        flow
    }

    /// A file-mode gateway compiles its first policies before any runtime exists: the
    /// refresh must start from the request path, or a withdrawn key stays trusted until an
    /// unknown `kid` happens to cause a fetch.
    #[test]
    fn a_withdrawn_jwks_key_stops_being_trusted_though_the_policy_was_built_without_a_runtime() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (jwk, signing) = ed25519_key("k1");
        let published = Arc::new(std::sync::Mutex::new(json!({ "keys": [jwk] }).to_string()));
        let uri = runtime.block_on(serve_jwks(published.clone()));
        let auth = Authenticator::new(AuthSettings {
            token_from: vec![],
            jwt: Some(JwtSettings {
                jwks_uri: Some(uri),
                jwks_refresh: Some(Duration::from_millis(100)),
                ..JwtSettings::default()
            }),
            introspection: None,
            rules: ClaimRules::default(),
            strip_credential: false,
        })
        .unwrap();
        assert!(!auth.jwks().unwrap().is_refreshing(), "no runtime, no task");
        let plugin = Authenticate { auth: auth.clone() };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("k1".into());
        let claims = json!({"sub": "ann", "exp": unix_now() + 600});
        let token = jsonwebtoken::encode(&header, &claims, &signing).unwrap();
        runtime.block_on(async {
            assert!(matches!(run(&plugin, &token).await, Flow::Continue));
            assert!(
                auth.jwks().unwrap().is_refreshing(),
                "the first request started the refresh"
            );
            *published.lock().unwrap() = r#"{"keys":[]}"#.to_string();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Flow::Respond(reply) = run(&plugin, &token).await {
                    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
                    assert_eq!(reply.reason, Some("unknown_key"));
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the withdrawn key is still trusted after 10 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        // A runtime that stops takes the task with it; the next runtime's request restarts it.
        drop(runtime);
        assert!(!auth.jwks().unwrap().is_refreshing());
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let _ = run(&plugin, &token).await;
            assert!(auth.jwks().unwrap().is_refreshing());
        });
    }
}
