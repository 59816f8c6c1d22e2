//! The caller a verified token stands for, reduced to what requests need: computed once per
//! token and then shared by every request that presents it.

use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};
use std::sync::Arc;

/// How a policy turns claims into an identity: `required_scopes` and `forward.headers`.
#[derive(Debug, Clone, Default)]
pub struct ClaimRules {
    pub required_scopes: Vec<String>,
    /// Upstream header ← claim name.
    pub forward: Vec<(HeaderName, String)>,
}

/// A verified caller.
#[derive(Debug)]
pub struct Identity {
    /// `sub`: the consumer for rate limits, sticky splits and `${consumer}`.
    pub consumer: Option<Arc<str>>,
    /// The token carries every required scope.
    pub authorized: bool,
    /// The headers `forward.headers` gives the upstream, rendered.
    pub forward: Vec<(HeaderName, HeaderValue)>,
}

impl Identity {
    pub fn from_claims(claims: &Map<String, Value>, rules: &ClaimRules) -> Identity {
        let scopes = granted_scopes(claims);
        let authorized = rules
            .required_scopes
            .iter()
            .all(|s| scopes.iter().any(|g| g == s));
        let forward = rules
            .forward
            .iter()
            .filter_map(|(header, claim)| {
                let text = claim_text(claims.get(claim)?)?;
                Some((header.clone(), HeaderValue::from_str(&text).ok()?))
            })
            .collect();
        Identity {
            consumer: claims.get("sub").and_then(Value::as_str).map(Arc::from),
            authorized,
            forward,
        }
    }
}

/// Scopes from `scope` (RFC 8693 / RFC 7662: space-separated) or `scp` (a list, as some
/// identity providers issue them).
fn granted_scopes(claims: &Map<String, Value>) -> Vec<&str> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split_whitespace()),
            Some(Value::Array(items)) => out.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

/// A claim as header text: strings as they are, lists joined by spaces (like `scope`),
/// numbers and booleans printed, objects as JSON.
fn claim_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(claim_text)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn scopes_come_from_scope_or_scp() {
        let rules = ClaimRules {
            required_scopes: vec!["users.read".into(), "users.write".into()],
            forward: vec![],
        };
        let both = claims(json!({"scope": "users.read users.write"}));
        assert!(Identity::from_claims(&both, &rules).authorized);
        let list = claims(json!({"scp": ["users.write", "users.read"]}));
        assert!(Identity::from_claims(&list, &rules).authorized);
        let one = claims(json!({"scope": "users.read"}));
        assert!(!Identity::from_claims(&one, &rules).authorized);
    }

    #[test]
    fn forwarded_claims_are_rendered_as_text() {
        let rules = ClaimRules {
            required_scopes: vec![],
            forward: vec![
                (HeaderName::from_static("x-user-id"), "sub".into()),
                (HeaderName::from_static("x-roles"), "roles".into()),
                (HeaderName::from_static("x-level"), "level".into()),
                (HeaderName::from_static("x-missing"), "nope".into()),
                (HeaderName::from_static("x-bad"), "bad".into()),
            ],
        };
        let c = claims(json!({"sub": "alice", "roles": ["a", "b"], "level": 3, "bad": "x\ny"}));
        let id = Identity::from_claims(&c, &rules);
        assert_eq!(id.consumer.as_deref(), Some("alice"));
        let names: Vec<_> = id
            .forward
            .iter()
            .map(|(h, v)| (h.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            names,
            [("x-user-id", "alice"), ("x-roles", "a b"), ("x-level", "3")]
        );
    }
}
