//! A route's `grpc_transcode` (SPEC §9): REST calls turned into gRPC calls, by the methods'
//! `google.api.http` annotations and the route's own `rules`.

use super::fields::Problems;
use crate::transcode::template::PathTemplate;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcTranscode {
    /// A FileDescriptorSet (`protoc --include_imports -o`): a file path, or `base64:…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptors: Option<String>,
    /// Read the descriptors from the upstream's gRPC server reflection instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reflection: bool,
    /// The services transcoded; all the descriptors hold when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Bindings beside the annotations, in their syntax.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<HttpRule>,
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

impl GrpcTranscode {
    /// Checks what needs nothing but the field itself; whether the selectors resolve is
    /// known once the descriptors are read.
    pub(super) fn check(&self, p: &mut Problems) {
        match (&self.descriptors, self.reflection) {
            (Some(_), true) => p.add(
                "grpc_transcode",
                "give only one of `descriptors` or `reflection: true`",
            ),
            (None, false) => p.add(
                "grpc_transcode",
                "needs `descriptors` (a FileDescriptorSet) or `reflection: true`",
            ),
            (Some(d), false) if d.is_empty() => {
                p.add("grpc_transcode.descriptors", "must not be empty")
            }
            _ => {}
        }
        for (i, service) in self.services.iter().enumerate() {
            if service.is_empty() || service.starts_with('.') || service.ends_with('.') {
                p.add(
                    format!("grpc_transcode.services[{i}]"),
                    "must be a full service name (`users.v1.UserService`)",
                );
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            check_rule(&format!("grpc_transcode.rules[{i}]"), rule, 0, p);
        }
    }
}

/// Checks a binding's own syntax; annotations read from descriptors go through it too.
pub fn check_rule(field: &str, rule: &HttpRule, depth: usize, p: &mut Problems) {
    if depth == 0 && rule.selector.split('.').filter(|s| !s.is_empty()).count() < 2 {
        p.add(
            format!("{field}.selector"),
            "must name a method as `package.Service.Method`",
        );
    }
    match rule.pattern() {
        Ok((method, path)) => {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                p.add(format!("{field}.custom.kind"), "must be an HTTP method");
            }
            if let Err(e) = PathTemplate::parse(path) {
                p.add(field, e.to_string());
            }
        }
        Err(e) => p.add(field, e),
    }
    if depth >= MAX_BINDING_DEPTH && !rule.additional_bindings.is_empty() {
        p.add(
            format!("{field}.additional_bindings"),
            "an additional binding cannot have its own",
        );
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
