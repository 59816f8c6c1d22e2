//! The `AuthPolicy` resource: how a route's callers prove who they are.

use super::fields::{check_header_name, is_false, split_selector, Problems};
use crate::units::Span;
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
}

fn default_cache_ttl() -> Span {
    Span::secs(60)
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
        for (i, source) in self.token_from.iter().enumerate() {
            let field = format!("token_from[{i}]");
            match split_selector(source) {
                ("header", Some(name)) => {
                    if let Err(e) = check_header_name(name) {
                        p.add(field, e);
                    }
                }
                ("query" | "cookie", Some(name)) if !name.is_empty() => {}
                _ => p.add(
                    field,
                    format!("`{source}` is not one of header:NAME, query:NAME, cookie:NAME"),
                ),
            }
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
            if intro.timeout.0.is_zero() {
                p.add("introspection.timeout", "must be more than 0s");
            }
        }
        if let Some(forward) = &self.forward {
            for (header, claim) in &forward.headers {
                let field = format!("forward.headers.{header}");
                if let Err(e) = check_header_name(header) {
                    p.add(&field, e);
                }
                if claim.is_empty() {
                    p.add(field, "must name a claim");
                }
            }
        }
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
    match (symmetric, &key.secret, &key.public_key) {
        (true, Some(secret), None) => {
            if let Some(encoded) = secret.strip_prefix("base64:") {
                if decode_base64(encoded).is_none() {
                    p.add(
                        format!("{field}.secret"),
                        "the part after `base64:` is not base64",
                    );
                }
            } else if secret.is_empty() {
                p.add(format!("{field}.secret"), "must not be empty");
            }
        }
        (true, _, _) => p.add(
            format!("{field}.secret"),
            format!("{} needs a `secret` (and no `public_key`)", key.alg),
        ),
        (false, None, Some(pem)) => {
            if !pem.trim_start().starts_with("-----BEGIN ") {
                p.add(
                    format!("{field}.public_key"),
                    "must be a PEM block (-----BEGIN ...)",
                );
            }
        }
        (false, _, _) => p.add(
            format!("{field}.public_key"),
            format!("{} needs a `public_key` PEM (and no `secret`)", key.alg),
        ),
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

/// Standard or URL-safe base64, padded or not.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    use base64::Engine;
    let text = text.trim_end_matches('=');
    STANDARD_NO_PAD
        .decode(text)
        .or_else(|_| URL_SAFE_NO_PAD.decode(text))
        .ok()
}
