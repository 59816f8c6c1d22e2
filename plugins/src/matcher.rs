//! The value syntax of header, query and cookie matches (`v`, `a|b`, `~regex`), shared by
//! routes and canary rules, and a plugin's `match: { headers: {...} }`.

use crate::registry::ConfigError;
use http::HeaderName;
use pingora_http::RequestHeader;
use regex::Regex;
use serde::Deserialize;
use std::collections::BTreeMap;

/// A compiled value test. Regexes are compiled here, once, when config changes.
#[derive(Debug, Clone)]
pub enum ValueMatcher {
    Exact(Box<str>),
    AnyOf(Box<[Box<str>]>),
    /// `~regex`: matches if the regex matches anywhere in the value; anchor with `^…$`.
    Regex(Regex),
}

impl ValueMatcher {
    pub fn parse(text: &str) -> Result<ValueMatcher, String> {
        if let Some(pattern) = text.strip_prefix('~') {
            return Regex::new(pattern)
                .map(ValueMatcher::Regex)
                .map_err(|e| format!("`{pattern}` is not a valid regex: {e}"));
        }
        if text.contains('|') {
            return Ok(ValueMatcher::AnyOf(
                text.split('|').map(Box::from).collect(),
            ));
        }
        Ok(ValueMatcher::Exact(text.into()))
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatcher::Exact(v) => &**v == value,
            ValueMatcher::AnyOf(vs) => vs.iter().any(|v| &**v == value),
            ValueMatcher::Regex(re) => re.is_match(value),
        }
    }
}

/// A plugin's `match:`: which requests it applies to.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A compiled `match:`: every header must be present with a matching value. Empty, it
/// takes every request.
#[derive(Debug, Clone, Default)]
pub struct RequestMatch {
    headers: Vec<(HeaderName, ValueMatcher)>,
}

impl RequestMatch {
    /// Compiles `spec`; errors are named `match.headers.NAME`.
    pub fn compile(spec: &MatchSpec) -> Result<RequestMatch, ConfigError> {
        let mut headers = Vec::with_capacity(spec.headers.len());
        for (name, value) in &spec.headers {
            let field = format!("match.headers.{name}");
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::new(&field, "not a valid header name"))?;
            let matcher = ValueMatcher::parse(value).map_err(|e| ConfigError::new(&field, e))?;
            headers.push((header, matcher));
        }
        Ok(RequestMatch { headers })
    }

    /// Whether the request meets every condition (a header sent twice matches by any of its
    /// values).
    pub fn holds(&self, req: &RequestHeader) -> bool {
        self.headers.iter().all(|(name, matcher)| {
            req.headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| matcher.matches(v))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_match_needs_every_header() {
        let spec: MatchSpec = serde_json::from_value(
            serde_json::json!({"headers": {"x-tag": "~^stress", "x-a": "1"}}),
        )
        .unwrap();
        let m = RequestMatch::compile(&spec).unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-tag", "stress-v3").unwrap();
        assert!(!m.holds(&req));
        req.insert_header("x-a", "1").unwrap();
        assert!(m.holds(&req));
        assert!(RequestMatch::default().holds(&req));
        let bad: MatchSpec =
            serde_json::from_value(serde_json::json!({"headers": {"x": "~("}})).unwrap();
        assert_eq!(
            RequestMatch::compile(&bad).unwrap_err().field,
            "match.headers.x"
        );
    }

    #[test]
    fn exact_alternatives_and_regex() {
        let m = ValueMatcher::parse("mobile|web").unwrap();
        assert!(m.matches("web") && m.matches("mobile") && !m.matches("tv"));
        let m = ValueMatcher::parse("1").unwrap();
        assert!(m.matches("1") && !m.matches("10"));
        let m = ValueMatcher::parse("~^v[0-9]+$").unwrap();
        assert!(m.matches("v12") && !m.matches("xv1"));
        assert!(ValueMatcher::parse("~(").unwrap_err().contains("regex"));
    }
}
