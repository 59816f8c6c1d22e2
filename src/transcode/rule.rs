//! A `google.api.http` rule as a route's `rules` and the methods' annotations write it:
//! a selector, one pattern, a body; and the checks of its own syntax.

use super::template::PathTemplate;
use serde::{Deserialize, Serialize};

/// A binding that does not hold, named by the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BindingError {
    pub field: String,
    pub message: String,
}

impl BindingError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> BindingError {
        BindingError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// One `google.api.http` binding: a selector, one pattern, a body.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRule {
    /// `package.Service.Method`.
    #[serde(default)]
    pub selector: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub put: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<CustomPattern>,
    /// `*` (the whole message), a field's name, or empty (no body).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// The response field answered instead of the whole message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub response_body: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_bindings: Vec<HttpRule>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomPattern {
    pub kind: String,
    pub path: String,
}

impl HttpRule {
    /// The rule's HTTP method and path template, when it has exactly one pattern.
    pub fn pattern(&self) -> Result<(&str, &str), &'static str> {
        let mut found = [
            ("GET", &self.get),
            ("PUT", &self.put),
            ("POST", &self.post),
            ("DELETE", &self.delete),
            ("PATCH", &self.patch),
        ]
        .into_iter()
        .filter_map(|(m, p)| p.as_deref().map(|p| (m, p)))
        .chain(
            self.custom
                .iter()
                .map(|c| (c.kind.as_str(), c.path.as_str())),
        );
        match (found.next(), found.next()) {
            (Some(one), None) => Ok(one),
            (None, _) => Err("needs one of get, put, post, delete, patch or custom"),
            (Some(_), Some(_)) => Err("give only one of get, put, post, delete, patch or custom"),
        }
    }
}

/// The deepest `additional_bindings` nesting taken: google.api.http allows one level.
const MAX_BINDING_DEPTH: usize = 1;

/// Checks a binding's own syntax; annotations read from descriptors go through it too.
pub fn check_rule(field: &str, rule: &HttpRule, depth: usize, p: &mut Vec<BindingError>) {
    if depth == 0 && rule.selector.split('.').filter(|s| !s.is_empty()).count() < 2 {
        p.push(BindingError::new(
            format!("{field}.selector"),
            "must name a method as `package.Service.Method`",
        ));
    }
    match rule.pattern() {
        Ok((method, path)) => {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                p.push(BindingError::new(
                    format!("{field}.custom.kind"),
                    "must be an HTTP method",
                ));
            }
            if let Err(e) = PathTemplate::parse(path) {
                p.push(BindingError::new(field, e.to_string()));
            }
        }
        Err(e) => p.push(BindingError::new(field, e)),
    }
    if depth >= MAX_BINDING_DEPTH && !rule.additional_bindings.is_empty() {
        p.push(BindingError::new(
            format!("{field}.additional_bindings"),
            "an additional binding cannot have its own",
        ));
    }
    for (i, extra) in rule.additional_bindings.iter().enumerate() {
        check_rule(
            &format!("{field}.additional_bindings[{i}]"),
            extra,
            depth + 1,
            p,
        );
    }
}
