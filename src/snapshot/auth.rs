//! An `AuthPolicy` compiled into the plugin crate's [`Authenticator`]: secrets resolved from
//! the environment, keys parsed, token sources and claim rules built once.

use crate::interpolate::{interpolate, InterpolationError};
use crate::resource::{AuthPolicy, JwtKey};
use gatehouse_plugins::auth::{
    AuthSettings, Authenticator, ClaimRules, IntrospectionSettings, JwtSettings, KeyMaterial,
    TokenSource, VerifyKey,
};
use http::HeaderName;
use std::sync::Arc;
use std::time::Duration;

pub fn compile_policy(policy: &AuthPolicy) -> Result<Arc<Authenticator>, String> {
    let token_from = policy
        .token_from
        .iter()
        .enumerate()
        .map(|(i, s)| TokenSource::parse(s).map_err(|e| format!("token_from[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let jwt = match &policy.jwt {
        Some(jwt) => Some(JwtSettings {
            keys: jwt
                .keys
                .iter()
                .enumerate()
                .map(|(i, key)| verify_key(key).map_err(|e| format!("jwt.keys[{i}].{e}")))
                .collect::<Result<Vec<_>, _>>()?,
            jwks_uri: jwt.jwks_uri.clone(),
            issuer: jwt.issuer.clone(),
            audiences: jwt.audiences.clone(),
            leeway: jwt.leeway.map_or(Duration::ZERO, |l| l.0),
            jwks_refresh: None,
        }),
        None => None,
    };
    let introspection = match &policy.introspection {
        Some(intro) => Some(IntrospectionSettings {
            endpoint: intro.endpoint.clone(),
            client_id: intro.client_id.clone(),
            client_secret: resolve_secret(&intro.client_secret)
                .map_err(|e| format!("introspection.client_secret: {e}"))?,
            cache_ttl: intro.cache_ttl.0,
            timeout: intro.timeout.0,
            negative_ttl: intro.negative_ttl.0,
            max_concurrency: intro.max_concurrency as usize,
        }),
        None => None,
    };
    let forward = policy.forward.clone().unwrap_or_default();
    let rules = ClaimRules {
        required_scopes: policy.required_scopes.clone(),
        forward: forward
            .headers
            .iter()
            .map(|(header, claim)| {
                HeaderName::from_bytes(header.as_bytes())
                    .map(|h| (h, claim.clone()))
                    .map_err(|e| format!("forward.headers.{header}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    Authenticator::new(AuthSettings {
        token_from,
        jwt,
        introspection,
        rules,
        strip_credential: forward.strip_authorization,
    })
}

fn verify_key(key: &JwtKey) -> Result<VerifyKey, String> {
    let (field, material) = match (&key.secret, &key.public_key) {
        (Some(secret), _) => (
            "secret",
            KeyMaterial::Secret(resolve_secret(secret).map_err(|e| format!("secret: {e}"))?),
        ),
        (None, Some(pem)) => ("public_key", KeyMaterial::PublicKeyPem(pem.clone())),
        (None, None) => return Err("secret: a key needs a `secret` or a `public_key`".into()),
    };
    VerifyKey::configured(key.kid.clone(), &key.alg, &material).map_err(|e| format!("{field}: {e}"))
}

/// Replaces `${NAME}` / `${NAME:-default}` in a secret with the gateway's environment.
fn resolve_secret(value: &str) -> Result<String, String> {
    interpolate(value, |name| std::env::var(name).ok()).map_err(|e| match e {
        InterpolationError::Unset { name, .. } => {
            format!("environment variable {name} is not set in the gateway's environment")
        }
        other => other.to_string().trim_start_matches("line 1: ").to_string(),
    })
}
