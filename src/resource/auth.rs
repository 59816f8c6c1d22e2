//! The `AuthPolicy` resource: how a route's callers prove who they are.

use super::fields::{check_header_name, is_false, Problems};
use crate::units::Span;
use gatehouse_plugins::auth::{KeyMaterial, TokenSource, VerifyKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthPolicy {
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_from: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Jwt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection: Option<Introspection>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<Forward>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jwt {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<JwtKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway: Option<Span>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    pub alg: String,
    /// Never shown back by the admin API.
    #[serde(default, skip_serializing)]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Introspection {
    pub endpoint: String,
    pub client_id: String,
    /// Never shown back by the admin API.
    #[serde(default, skip_serializing)]
    pub client_secret: String,
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: Span,
    #[serde(default = "default_introspection_timeout")]
    pub timeout: Span,
    /// How long a refused token is remembered (by a digest of it); `0s` remembers none.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: Span,
    /// Introspection calls in flight at most; past it a request is answered 503 at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
}

fn default_cache_ttl() -> Span {
    Span::secs(60)
}

fn default_negative_ttl() -> Span {
    Span(gatehouse_plugins::auth::NEGATIVE_TTL)
}

fn default_max_concurrency() -> u32 {
    gatehouse_plugins::auth::MAX_CONCURRENCY as u32
}

fn default_introspection_timeout() -> Span {
    Span::secs(2)
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// Upstream header name -> claim name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub strip_authorization: bool,
}

/// Algorithms a configured key may use; the token's own header never chooses.
pub const ALGORITHMS: [&str; 12] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

impl AuthPolicy {
    pub(super) fn check(&self, p: &mut Problems) {
        let mut source_headers = Vec::new();
        for (i, source) in self.token_from.iter().enumerate() {
            match TokenSource::parse(source) {
                Ok(TokenSource::Header(name)) => source_headers.push(name),
                Ok(_) => {}
                Err(e) => p.add(format!("token_from[{i}]"), e),
            }
        }
        if self.token_from.is_empty() {
            source_headers.push(http::header::AUTHORIZATION);
        }
        if self.jwt.is_none() && self.introspection.is_none() {
            p.add("jwt", "a policy needs `jwt`, `introspection`, or both");
        }
        if let Some(jwt) = &self.jwt {
            if jwt.keys.is_empty() && jwt.jwks_uri.is_none() {
                p.add("jwt.keys", "give inline `keys`, a `jwks_uri`, or both");
            }
            for (i, key) in jwt.keys.iter().enumerate() {
                check_key(&format!("jwt.keys[{i}]"), key, p);
            }
            if let Some(uri) = &jwt.jwks_uri {
                check_http_url("jwt.jwks_uri", uri, p);
            }
        }
        if let Some(intro) = &self.introspection {
            check_http_url("introspection.endpoint", &intro.endpoint, p);
            if intro.client_id.is_empty() {
                p.add("introspection.client_id", "must not be empty");
            }
            if let Err(e) = check_secret_reference(&intro.client_secret) {
                p.add("introspection.client_secret", e);
            }
            if intro.timeout.0.is_zero() {
                p.add("introspection.timeout", "must be more than 0s");
            }
            if intro.max_concurrency == 0 {
                p.add("introspection.max_concurrency", "must be at least 1");
            }
        }
        for (i, scope) in self.required_scopes.iter().enumerate() {
            if scope.is_empty()
                || scope.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\')
            {
                p.add(
                    format!("required_scopes[{i}]"),
                    format!("`{scope}` is not a scope token (no spaces, quotes or backslashes)"),
                );
            }
        }
        if let Some(forward) = &self.forward {
            for (header, claim) in &forward.headers {
                let field = format!("forward.headers.{header}");
                match check_header_name(header) {
                    Ok(name) if source_headers.contains(&name) => p.add(
                        &field,
                        "is where the token comes from (token_from); it cannot also carry a claim",
                    ),
                    Ok(_) => {}
                    Err(e) => p.add(&field, e),
                }
                if claim.is_empty() {
                    p.add(field, "must name a claim");
                }
            }
        }
    }
}

/// A secret may be written as `${NAME}` (or `${NAME:-default}`), resolved from the
/// gateway's environment when the policy is compiled, so the secret itself never has to be
/// stored in etcd or in route files.
pub fn is_secret_reference(value: &str) -> bool {
    value.contains("${")
}

fn check_secret_reference(value: &str) -> Result<(), String> {
    if is_secret_reference(value) {
        crate::interpolate::interpolate(value, |_| Some(String::new()))
            .map(|_| ())
            .map_err(|e| e.to_string().trim_start_matches("line 1: ").to_string())
    } else {
        Ok(())
    }
}

fn check_key(field: &str, key: &JwtKey, p: &mut Problems) {
    if !ALGORITHMS.contains(&key.alg.as_str()) {
        p.add(
            format!("{field}.alg"),
            format!("`{}` is not one of {}", key.alg, ALGORITHMS.join(", ")),
        );
        return;
    }
    let symmetric = key.alg.starts_with("HS");
    let (part, material) = match (symmetric, &key.secret, &key.public_key) {
        (true, Some(secret), None) => {
            if let Err(e) = check_secret_reference(secret) {
                p.add(format!("{field}.secret"), e);
                return;
            }
            if is_secret_reference(secret) {
                return;
            }
            ("secret", KeyMaterial::Secret(secret.clone()))
        }
        (true, _, _) => {
            p.add(
                format!("{field}.secret"),
                format!("{} needs a `secret` (and no `public_key`)", key.alg),
            );
            return;
        }
        (false, None, Some(pem)) => ("public_key", KeyMaterial::PublicKeyPem(pem.clone())),
        (false, _, _) => {
            p.add(
                format!("{field}.public_key"),
                format!("{} needs a `public_key` PEM (and no `secret`)", key.alg),
            );
            return;
        }
    };
    if let Err(e) = VerifyKey::configured(key.kid.clone(), &key.alg, &material) {
        p.add(format!("{field}.{part}"), e);
    }
}

fn check_http_url(field: &str, url: &str, p: &mut Problems) {
    let ok = match url.parse::<http::Uri>() {
        Ok(uri) => matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some(),
        Err(_) => false,
    };
    if !ok {
        p.add(field, format!("`{url}` is not an http:// or https:// URL"));
    }
}
