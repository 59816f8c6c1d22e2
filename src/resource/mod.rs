//! Routes, upstreams, auth policies and global rules as operators write them: serde types,
//! strict parsing and validation. Pure: nothing here does I/O, so every entry point (files,
//! etcd, the admin API, `gatehouse validate`) judges a resource the same way.

mod auth;
mod catalog;
mod depth;
mod fields;
mod global_rule;
mod route;
pub mod transcode;
mod upstream;

pub use auth::{AuthPolicy, Forward, Introspection, Jwt, JwtKey, ALGORITHMS};
pub use catalog::{admit, Catalog, Rejection, Stored};
pub use fields::{FieldError, Problems, SelectorText, Text};
pub use global_rule::GlobalRule;
pub use route::{
    CanaryMatch, CanaryRule, DirectResponse, Fallback, FallbackReason, HeaderRules, PluginUse,
    RateLimit, RefField, Rewrite, Route, RouteMatch, Timeouts, WeightedUpstream, STICKY_FORMS,
};
pub use upstream::{
    split_host_port, ActiveCheck, AdaptiveConcurrency, Balancing, CircuitBreaker, Concurrency,
    Discovery, LaneFallback, Lanes, NodeSpec, Pool, RetryBudget, Scheme, SlowCall, Upstream,
    UpstreamTls, HASH_KEY_FORMS, MAX_LANE_TAG,
};

use fields::check_id;
use serde::Serialize;
use std::fmt;
use std::sync::Arc;

/// The kinds of resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Route,
    Upstream,
    AuthPolicy,
    GlobalRule,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Route,
        Kind::Upstream,
        Kind::AuthPolicy,
        Kind::GlobalRule,
    ];

    /// The name written in a document's `kind` field.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Route => "Route",
            Kind::Upstream => "Upstream",
            Kind::AuthPolicy => "AuthPolicy",
            Kind::GlobalRule => "GlobalRule",
        }
    }

    /// The collection name used in etcd keys and admin URLs.
    pub fn collection(self) -> &'static str {
        match self {
            Kind::Route => "routes",
            Kind::Upstream => "upstreams",
            Kind::AuthPolicy => "auth",
            Kind::GlobalRule => "global_rules",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn from_collection(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.collection() == name)
    }

    /// Every kind's name, `Route, Upstream, …`, for messages.
    pub fn names() -> String {
        Kind::ALL.map(Kind::name).join(", ")
    }

    /// Every collection name, `routes, upstreams, …`, for messages.
    pub fn collections() -> String {
        Kind::ALL.map(Kind::collection).join(", ")
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Names one object: its kind and id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub id: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.collection(), self.id)
    }
}

/// One parsed, field-valid resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind")]
pub enum Resource {
    Route(Arc<Route>),
    Upstream(Arc<Upstream>),
    AuthPolicy(Arc<AuthPolicy>),
    GlobalRule(Arc<GlobalRule>),
}

impl Resource {
    pub fn key(&self) -> ObjectKey {
        let (kind, id) = match self {
            Resource::Route(r) => (Kind::Route, &r.id),
            Resource::Upstream(u) => (Kind::Upstream, &u.id),
            Resource::AuthPolicy(a) => (Kind::AuthPolicy, &a.id),
            Resource::GlobalRule(g) => (Kind::GlobalRule, &g.id),
        };
        ObjectKey {
            kind,
            id: id.clone(),
        }
    }
}

/// Where a document came from: a file and the document's 1-based position in it, or an etcd
/// key. Printed as `file:doc`, the prefix of every error about it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    pub source: Arc<str>,
    pub doc: Option<usize>,
}

impl Origin {
    pub fn file(source: Arc<str>, doc: usize) -> Origin {
        Origin {
            source,
            doc: Some(doc),
        }
    }

    pub fn key(source: Arc<str>) -> Origin {
        Origin { source, doc: None }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.doc {
            Some(doc) => write!(f, "{}:{}", self.source, doc),
            None => f.write_str(&self.source),
        }
    }
}

/// One document as read from a source: a resource, or the reasons it is not one. When the
/// document got far enough to name its kind and id, `key` says which object it meant to be,
/// so the previous version of that object can stay in force.
#[derive(Debug, Clone)]
pub struct Document {
    pub origin: Origin,
    pub key: Option<ObjectKey>,
    pub parsed: Result<Resource, Vec<FieldError>>,
}

/// Reads every YAML document of one file. A file that is not YAML at all yields a single
/// failed document with no key: everything the file held before stays in force.
pub fn parse_file(source: Arc<str>, text: &str) -> Vec<Document> {
    parse_file_with_values(source, text)
        .into_iter()
        .map(|(doc, _)| doc)
        .collect()
}

/// Like [`parse_file`], also handing back each document's YAML value as written, so it can
/// be stored elsewhere (in etcd) with nothing lost, secrets included.
pub fn parse_file_with_values(
    source: Arc<str>,
    text: &str,
) -> Vec<(Document, Option<serde_yaml::Value>)> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    if let Some(doc) = depth::too_deep(text, depth::MAX_DEPTH) {
        // Refused before the parser spends seconds on it; the parser cannot skip one
        // document of a stream, so the file is not read at all and what it held stays.
        let doc = Document {
            origin: Origin::file(source, doc),
            key: None,
            parsed: Err(vec![FieldError::new("", too_deep_message())]),
        };
        docs.push((doc, None));
        return docs;
    }
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let origin = Origin::file(source.clone(), i + 1);
        match serde_yaml::Value::deserialize(de) {
            Ok(serde_yaml::Value::Null) => {} // an empty document, e.g. after a trailing `---`
            Ok(value) => docs.push((parse_value(origin, value.clone(), None), Some(value))),
            Err(e) => {
                let doc = Document {
                    origin,
                    key: None,
                    parsed: Err(vec![FieldError::new("", format!("not valid YAML: {e}"))]),
                };
                docs.push((doc, None));
                // The YAML stream cannot be trusted past a syntax error.
                break;
            }
        }
    }
    docs
}

/// Reads one resource stored under a key (an etcd value, an admin API body): YAML or JSON,
/// whose kind and id come from the key.
pub fn parse_stored(origin: Origin, key: ObjectKey, bytes: &[u8]) -> Document {
    let text = String::from_utf8_lossy(bytes);
    if depth::too_deep(&text, depth::MAX_DEPTH).is_some() {
        return Document {
            origin,
            key: Some(key),
            parsed: Err(vec![FieldError::new("", too_deep_message())]),
        };
    }
    match serde_yaml::from_slice::<serde_yaml::Value>(bytes) {
        Ok(value) => parse_value(origin, value, Some(key)),
        Err(e) => Document {
            origin,
            key: Some(key),
            parsed: Err(vec![FieldError::new(
                "",
                format!(
                    "not valid YAML or JSON: {}",
                    clean_serde_message(&e.to_string())
                ),
            )]),
        },
    }
}

fn too_deep_message() -> String {
    format!(
        "nests deeper than {} levels (the limit for a YAML document); refused before parsing",
        depth::MAX_DEPTH
    )
}

/// Reads one resource from an already-parsed YAML value. `expected` is the kind and id an
/// etcd key gives; a file document must carry both itself.
pub fn parse_value(
    origin: Origin,
    value: serde_yaml::Value,
    expected: Option<ObjectKey>,
) -> Document {
    let fail = |key: Option<ObjectKey>, field: &str, message: String| Document {
        origin: origin.clone(),
        key,
        parsed: Err(vec![FieldError::new(field, message)]),
    };
    let serde_yaml::Value::Mapping(mut map) = value else {
        return fail(
            expected,
            "",
            "a resource must be a mapping of fields".into(),
        );
    };

    let kind = match (map.remove("kind"), &expected) {
        (Some(serde_yaml::Value::String(name)), _) => match Kind::from_name(&name) {
            Some(kind) => kind,
            None => {
                return fail(
                    expected.clone(),
                    "kind",
                    format!("`{name}` is not one of {}", Kind::names()),
                )
            }
        },
        (Some(_), _) => return fail(expected.clone(), "kind", "must be a string".into()),
        (None, Some(key)) => key.kind,
        (None, None) => return fail(None, "kind", format!("is required ({})", Kind::names())),
    };
    if let Some(key) = &expected {
        if key.kind != kind {
            return fail(
                expected.clone(),
                "kind",
                format!("is {kind} but the key holds a {}", key.kind),
            );
        }
    }

    let id = match (map.get("id"), &expected) {
        (Some(serde_yaml::Value::String(id)), _) => id.clone(),
        (Some(_), _) => return fail(expected.clone(), "id", "must be a string".into()),
        (None, Some(key)) => {
            map.insert("id".into(), key.id.clone().into());
            key.id.clone()
        }
        (None, None) => return fail(None, "id", "is required".into()),
    };
    let key = ObjectKey {
        kind,
        id: id.clone(),
    };
    if let Some(expected) = &expected {
        if expected.id != id {
            return fail(
                Some(expected.clone()),
                "id",
                format!("`{id}` does not match the key's id `{}`", expected.id),
            );
        }
    }
    if let Err(e) = check_id(&id) {
        return fail(Some(key), "id", e);
    }

    let value = serde_yaml::Value::Mapping(map);
    let parsed = match kind {
        Kind::Route => typed(value).and_then(|r: Route| {
            let mut p = Problems::default();
            r.check(&mut p);
            p.into_result(Resource::Route(Arc::new(r)))
        }),
        Kind::Upstream => typed(value).and_then(|u: Upstream| {
            let mut p = Problems::default();
            u.check(&mut p);
            p.into_result(Resource::Upstream(Arc::new(u)))
        }),
        Kind::AuthPolicy => typed(value).and_then(|a: AuthPolicy| {
            let mut p = Problems::default();
            a.check(&mut p);
            p.into_result(Resource::AuthPolicy(Arc::new(a)))
        }),
        Kind::GlobalRule => typed(value).and_then(|g: GlobalRule| {
            let mut p = Problems::default();
            g.check(&mut p);
            p.into_result(Resource::GlobalRule(Arc::new(g)))
        }),
    };
    Document {
        origin,
        key: Some(key),
        parsed,
    }
}

/// Strict deserialization, with the failing field's path in the error.
fn typed<T: serde::de::DeserializeOwned>(value: serde_yaml::Value) -> Result<T, Vec<FieldError>> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        vec![FieldError::new(
            field,
            clean_serde_message(&e.into_inner().to_string()),
        )]
    })
}

/// serde_yaml appends positions that mean nothing once the value left its file.
fn clean_serde_message(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests;
