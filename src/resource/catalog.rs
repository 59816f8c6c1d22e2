//! Admission: the one judgement every source of resources goes through. It takes the
//! documents a source holds now and the catalog in force, and decides what is in force next.

use super::{
    AuthPolicy, Document, FieldError, GlobalRule, Kind, ObjectKey, Origin, Resource, Route,
    Upstream,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

/// An object in force and where it came from.
#[derive(Debug)]
pub struct Stored<T> {
    pub value: Arc<T>,
    pub origin: Origin,
}

impl<T> Clone for Stored<T> {
    fn clone(&self) -> Self {
        Stored {
            value: self.value.clone(),
            origin: self.origin.clone(),
        }
    }
}

/// Every object in force, by kind and id. Objects that did not change keep their `Arc`, so
/// compiling can tell what changed by pointer.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub routes: BTreeMap<String, Stored<Route>>,
    pub upstreams: BTreeMap<String, Stored<Upstream>>,
    pub policies: BTreeMap<String, Stored<AuthPolicy>>,
    /// Plugins every route runs first; by id, the order they run in.
    pub global_rules: BTreeMap<String, Stored<GlobalRule>>,
}

/// A document, or a change, that was not taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// Which document: the etcd key (which names the object), or the file position with the
    /// object it meant to define when it got far enough to say, `file:doc (Kind id)`; a
    /// position alone (`file:doc`) is a document without a readable kind and id.
    pub key: String,
    /// Every reason, joined with `; `.
    pub error: String,
    #[serde(skip)]
    pub errors: Vec<FieldError>,
    /// Where the document came from, for callers that pick their own documents' rejections.
    #[serde(skip)]
    pub origin: Origin,
}

impl Rejection {
    /// `object` is the kind and id the document meant to define, when known.
    pub fn from_parts(
        origin: &Origin,
        object: Option<&ObjectKey>,
        errors: Vec<FieldError>,
    ) -> Rejection {
        let error = errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        let key = match (origin.doc, object) {
            // A file position says where, not what: a file holds many documents.
            (Some(doc), Some(object)) if doc > 0 => {
                format!("{origin} ({} {})", object.kind, object.id)
            }
            _ => origin.to_string(),
        };
        Rejection {
            key,
            error,
            errors,
            origin: origin.clone(),
        }
    }

    /// One line per problem: `file:doc (Kind id): field: message` (`file:doc: field:
    /// message` when the document never said what it is).
    pub fn lines(&self) -> impl Iterator<Item = String> + '_ {
        self.errors.iter().map(|e| format!("{}: {e}", self.key))
    }
}

impl Catalog {
    pub fn len(&self, kind: Kind) -> usize {
        match kind {
            Kind::Route => self.routes.len(),
            Kind::Upstream => self.upstreams.len(),
            Kind::AuthPolicy => self.policies.len(),
            Kind::GlobalRule => self.global_rules.len(),
        }
    }

    fn origin_of(&self, resource: &Resource) -> Option<&Origin> {
        match resource {
            Resource::Route(r) => self.routes.get(&r.id).map(|s| &s.origin),
            Resource::Upstream(u) => self.upstreams.get(&u.id).map(|s| &s.origin),
            Resource::AuthPolicy(a) => self.policies.get(&a.id).map(|s| &s.origin),
            Resource::GlobalRule(g) => self.global_rules.get(&g.id).map(|s| &s.origin),
        }
    }

    pub fn contains(&self, key: &ObjectKey) -> bool {
        self.origin(key).is_some()
    }

    pub fn origin(&self, key: &ObjectKey) -> Option<&Origin> {
        match key.kind {
            Kind::Route => self.routes.get(&key.id).map(|s| &s.origin),
            Kind::Upstream => self.upstreams.get(&key.id).map(|s| &s.origin),
            Kind::AuthPolicy => self.policies.get(&key.id).map(|s| &s.origin),
            Kind::GlobalRule => self.global_rules.get(&key.id).map(|s| &s.origin),
        }
    }

    /// The object as a resource, for the admin API.
    pub fn get(&self, key: &ObjectKey) -> Option<Resource> {
        match key.kind {
            Kind::Route => self
                .routes
                .get(&key.id)
                .map(|s| Resource::Route(s.value.clone())),
            Kind::Upstream => self
                .upstreams
                .get(&key.id)
                .map(|s| Resource::Upstream(s.value.clone())),
            Kind::AuthPolicy => self
                .policies
                .get(&key.id)
                .map(|s| Resource::AuthPolicy(s.value.clone())),
            Kind::GlobalRule => self
                .global_rules
                .get(&key.id)
                .map(|s| Resource::GlobalRule(s.value.clone())),
        }
    }

    pub fn list(&self, kind: Kind) -> Vec<Resource> {
        match kind {
            Kind::Route => self
                .routes
                .values()
                .map(|s| Resource::Route(s.value.clone()))
                .collect(),
            Kind::Upstream => self
                .upstreams
                .values()
                .map(|s| Resource::Upstream(s.value.clone()))
                .collect(),
            Kind::AuthPolicy => self
                .policies
                .values()
                .map(|s| Resource::AuthPolicy(s.value.clone()))
                .collect(),
            Kind::GlobalRule => self
                .global_rules
                .values()
                .map(|s| Resource::GlobalRule(s.value.clone()))
                .collect(),
        }
    }

    /// Every object as a document, as if read again from where it came from.
    pub fn documents(&self) -> Vec<Document> {
        let doc = |kind: Kind, id: &String, origin: &Origin, resource: Resource| Document {
            origin: origin.clone(),
            key: Some(ObjectKey {
                kind,
                id: id.clone(),
            }),
            parsed: Ok(resource),
        };
        let routes = self
            .routes
            .iter()
            .map(|(id, s)| doc(Kind::Route, id, &s.origin, Resource::Route(s.value.clone())));
        let upstreams = self.upstreams.iter().map(|(id, s)| {
            doc(
                Kind::Upstream,
                id,
                &s.origin,
                Resource::Upstream(s.value.clone()),
            )
        });
        let policies = self.policies.iter().map(|(id, s)| {
            doc(
                Kind::AuthPolicy,
                id,
                &s.origin,
                Resource::AuthPolicy(s.value.clone()),
            )
        });
        let global_rules = self.global_rules.iter().map(|(id, s)| {
            doc(
                Kind::GlobalRule,
                id,
                &s.origin,
                Resource::GlobalRule(s.value.clone()),
            )
        });
        routes
            .chain(upstreams)
            .chain(policies)
            .chain(global_rules)
            .collect()
    }

    /// The routes that use an upstream or auth policy.
    pub fn users_of(&self, key: &ObjectKey) -> Vec<String> {
        self.routes
            .values()
            .filter(|s| match key.kind {
                Kind::Upstream => s.value.upstream_refs().any(|(_, id)| *id == *key.id),
                Kind::AuthPolicy => s.value.auth.as_deref() == Some(key.id.as_str()),
                Kind::Route | Kind::GlobalRule => false,
            })
            .map(|s| s.value.id.clone())
            .collect()
    }

    /// Inserts, reusing `previous`'s `Arc` when the value is unchanged.
    fn insert(&mut self, resource: Resource, origin: Origin, previous: &Catalog) {
        fn keep<T: PartialEq>(new: Arc<T>, old: Option<&Stored<T>>) -> Arc<T> {
            match old {
                Some(old) if Arc::ptr_eq(&old.value, &new) || *old.value == *new => {
                    old.value.clone()
                }
                _ => new,
            }
        }
        match resource {
            Resource::Route(r) => {
                let value = keep(r.clone(), previous.routes.get(&r.id));
                self.routes
                    .insert(value.id.clone(), Stored { value, origin });
            }
            Resource::Upstream(u) => {
                let value = keep(u.clone(), previous.upstreams.get(&u.id));
                self.upstreams
                    .insert(value.id.clone(), Stored { value, origin });
            }
            Resource::AuthPolicy(a) => {
                let value = keep(a.clone(), previous.policies.get(&a.id));
                self.policies
                    .insert(value.id.clone(), Stored { value, origin });
            }
            Resource::GlobalRule(g) => {
                let value = keep(g.clone(), previous.global_rules.get(&g.id));
                self.global_rules
                    .insert(value.id.clone(), Stored { value, origin });
            }
        }
    }

    fn carry_over(&mut self, key: &ObjectKey, previous: &Catalog) {
        match key.kind {
            Kind::Route => {
                if let Some(s) = previous.routes.get(&key.id) {
                    self.routes.insert(key.id.clone(), s.clone());
                }
            }
            Kind::Upstream => {
                if let Some(s) = previous.upstreams.get(&key.id) {
                    self.upstreams.insert(key.id.clone(), s.clone());
                }
            }
            Kind::AuthPolicy => {
                if let Some(s) = previous.policies.get(&key.id) {
                    self.policies.insert(key.id.clone(), s.clone());
                }
            }
            Kind::GlobalRule => {
                if let Some(s) = previous.global_rules.get(&key.id) {
                    self.global_rules.insert(key.id.clone(), s.clone());
                }
            }
        }
    }

    fn keys(&self) -> impl Iterator<Item = (ObjectKey, &Origin)> {
        let key = |kind: Kind, id: &String| ObjectKey {
            kind,
            id: id.clone(),
        };
        self.routes
            .iter()
            .map(move |(id, s)| (key(Kind::Route, id), &s.origin))
            .chain(
                self.upstreams
                    .iter()
                    .map(move |(id, s)| (key(Kind::Upstream, id), &s.origin)),
            )
            .chain(
                self.policies
                    .iter()
                    .map(move |(id, s)| (key(Kind::AuthPolicy, id), &s.origin)),
            )
            .chain(
                self.global_rules
                    .iter()
                    .map(move |(id, s)| (key(Kind::GlobalRule, id), &s.origin)),
            )
    }

    /// The references of `route` that this catalog cannot resolve.
    fn missing_refs(&self, route: &Route) -> Vec<FieldError> {
        let mut missing: Vec<FieldError> = route
            .upstream_refs()
            .filter(|(_, id)| !self.upstreams.contains_key(&**id))
            .map(|(field, id)| {
                FieldError::new(field.to_string(), format!("unknown upstream `{id}`"))
            })
            .collect();
        if let Some(id) = &route.auth {
            if !self.policies.contains_key(id) {
                missing.push(FieldError::new(
                    "auth",
                    format!("unknown AuthPolicy `{id}`"),
                ));
            }
        }
        missing
    }
}

/// Decides what is in force after a source changed.
///
/// `docs` is everything the source holds now; `previous` is what was in force. The rules:
/// - a valid document puts its object in force (a second document with the same kind and id
///   is rejected);
/// - an invalid document is rejected alone, and the previous version of the object it meant
///   to define stays in force; a file that is not YAML at all keeps everything it held;
/// - an object whose document is gone is deleted — unless a route still uses it (an upstream
///   or auth policy): then it stays, and the deletion is listed as rejected until no route
///   needs it, so deleting never silently breaks a route;
/// - a route naming an upstream or policy that does not exist is rejected, and its previous
///   version, if it still resolves, stays in force.
pub fn admit<'d>(
    docs: impl IntoIterator<Item = &'d Document>,
    previous: &Catalog,
) -> (Catalog, Vec<Rejection>) {
    let mut next = Catalog::default();
    let mut rejections = Vec::new();
    let mut failed_keys = HashSet::new();
    let mut failed_sources = HashSet::new();

    for doc in docs {
        match &doc.parsed {
            Ok(resource) => {
                if let Some(first) = next.origin_of(resource) {
                    let message = format!("{} is already defined at {first}", resource.key());
                    let errors = vec![FieldError::new("id", message)];
                    let object = resource.key();
                    rejections.push(Rejection::from_parts(&doc.origin, Some(&object), errors));
                    continue;
                }
                next.insert(resource.clone(), doc.origin.clone(), previous);
            }
            Err(errors) => {
                match &doc.key {
                    Some(key) => failed_keys.insert(key.clone()),
                    None => failed_sources.insert(doc.origin.source.clone()),
                };
                rejections.push(Rejection::from_parts(
                    &doc.origin,
                    doc.key.as_ref(),
                    errors.clone(),
                ));
            }
        }
    }

    // The previous version of whatever could not be read stays in force.
    if !failed_keys.is_empty() || !failed_sources.is_empty() {
        for (key, origin) in previous.keys() {
            if !next.contains(&key)
                && (failed_keys.contains(&key) || failed_sources.contains(&origin.source))
            {
                next.carry_over(&key, previous);
            }
        }
    }

    // Objects deleted while a route still uses them stay, and say so.
    let mut still_used: BTreeMap<ObjectKey, BTreeSet<String>> = BTreeMap::new();
    for route in next.routes.values() {
        let upstreams = route
            .value
            .upstream_refs()
            .map(|(_, id)| (Kind::Upstream, id));
        let policies = route
            .value
            .auth
            .iter()
            .map(|id| (Kind::AuthPolicy, std::borrow::Cow::Borrowed(id.as_str())));
        for (kind, id) in upstreams.chain(policies) {
            let id = &*id;
            let (in_next, in_previous) = match kind {
                Kind::AuthPolicy => (
                    next.policies.contains_key(id),
                    previous.policies.contains_key(id),
                ),
                _ => (
                    next.upstreams.contains_key(id),
                    previous.upstreams.contains_key(id),
                ),
            };
            if !in_next && in_previous {
                let key = ObjectKey {
                    kind,
                    id: id.to_string(),
                };
                still_used
                    .entry(key)
                    .or_default()
                    .insert(route.value.id.clone());
            }
        }
    }
    for (key, users) in still_used {
        next.carry_over(&key, previous);
        let origin = next.origin(&key).expect("carried over").clone();
        let users: Vec<_> = users.into_iter().collect();
        let message = format!(
            "{key} was deleted but is still used by route {}; it stays in force until no route uses it",
            users.join(", ")
        );
        rejections.push(Rejection::from_parts(
            &origin,
            Some(&key),
            vec![FieldError::new("", message)],
        ));
    }

    // Routes must resolve; an unresolved one falls back to its previous version.
    let unresolved: Vec<(String, Vec<FieldError>)> = next
        .routes
        .values()
        .filter_map(|s| {
            let missing = next.missing_refs(&s.value);
            (!missing.is_empty()).then(|| (s.value.id.clone(), missing))
        })
        .collect();
    for (id, missing) in unresolved {
        let stored = next.routes.remove(&id).expect("listed above");
        let object = ObjectKey {
            kind: Kind::Route,
            id: id.clone(),
        };
        rejections.push(Rejection::from_parts(
            &stored.origin,
            Some(&object),
            missing,
        ));
        if let Some(old) = previous.routes.get(&id) {
            if !Arc::ptr_eq(&old.value, &stored.value) && next.missing_refs(&old.value).is_empty() {
                next.routes.insert(id, old.clone());
            }
        }
    }

    (next, rejections)
}
