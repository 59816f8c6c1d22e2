//! A route's `grpc_transcode` (SPEC §9): REST calls turned into gRPC calls, by the methods'
//! `google.api.http` annotations and the route's own `rules`.

use super::fields::{FieldError, Problems};
use crate::transcode::bindings::Bindings;
use crate::transcode::rule::{check_rule, HttpRule};
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
        let mut errors = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            check_rule(&format!("grpc_transcode.rules[{i}]"), rule, 0, &mut errors);
        }
        for e in errors {
            p.add(e.field, e.message);
        }
    }

    /// Reads the descriptor set and resolves every binding against it, each error named.
    /// Reading a file here lets `validate` name a selector that does not resolve.
    pub fn resolve(&self) -> Result<Option<Bindings>, Vec<FieldError>> {
        let Some(source) = &self.descriptors else {
            return Ok(None);
        };
        let pool = crate::transcode::load(source)
            .map_err(|e| vec![FieldError::new("grpc_transcode.descriptors", e)])?;
        self.bind(&pool).map(Some)
    }

    /// Resolves every binding against `pool` (a descriptor set's, or what reflection read).
    pub fn bind(&self, pool: &prost_reflect::DescriptorPool) -> Result<Bindings, Vec<FieldError>> {
        Bindings::resolve(&self.services, &self.rules, pool).map_err(|errors| {
            errors
                .into_iter()
                .map(|e| FieldError::new(e.field, e.message))
                .collect()
        })
    }
}
