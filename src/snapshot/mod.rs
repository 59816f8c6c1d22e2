//! The configuration in force: one immutable [`Snapshot`], compiled from the catalog of
//! resources and swapped atomically. A request loads it once and finishes on it.

mod auth;
mod fallback;
mod global;
mod reflector;
mod route;
mod source;
mod transcoder;

pub use auth::compile_policy;
pub use fallback::{FallbackAnswer, FALLBACK_HEADER};
pub use global::{CompiledGlobalRule, GlobalPlugins};
pub use reflector::Reflector;
pub use route::{Action, CompiledRoute, PathRewrite, RouteTimeouts};
pub use source::{SourceHealth, SourceKind, SourceReport};
pub use transcoder::Transcoder;

use crate::resource::{AuthPolicy, Catalog, Kind, Rejection};
use crate::router::Router;
use crate::telemetry::metrics::{Departed, METRICS};
use crate::upstream::UpstreamTarget;
use arc_swap::ArcSwap;
use gatehouse_plugins::auth::Authenticator;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Everything a request needs, compiled; never mutated after it is built.
pub struct Snapshot {
    /// Counts applied changes (file mode) or is the etcd revision in force.
    pub revision: u64,
    /// The etcd revision of the last full read this snapshot stems from (0 in file mode):
    /// every change up to it was seen. Above `revision` when the newest changes before the
    /// read were deletions (a deleted key leaves nothing to read) or touched other keys.
    /// The fleet's records say it, so an instance started after a deletion is not taken for
    /// one that missed it.
    pub seen: u64,
    pub loaded_at: SystemTime,
    /// The resources in force, as written.
    pub catalog: Catalog,
    /// What the last change could not apply.
    pub rejected: Vec<Rejection>,
    pub router: Router<Arc<CompiledRoute>>,
    pub routes: HashMap<Arc<str>, Arc<CompiledRoute>>,
    pub upstreams: HashMap<String, Arc<UpstreamTarget>>,
    /// Auth policies, compiled or refused; routes naming a refused one are refused too.
    pub policies: HashMap<String, CompiledPolicy>,
    /// Global rules in force, by id.
    pub global_rules: BTreeMap<String, CompiledGlobalRule>,
    /// Their plugins in running order, first in every route's chain.
    pub global_plugins: GlobalPlugins,
    /// Every header an auth policy's `forward.headers` sets: gateway-owned on every route
    /// (SPEC §8), so a client's copy is dropped even where no policy sets it.
    pub identity_headers: Arc<[http::HeaderName]>,
}

/// An auth policy as compiled, kept with its spec so an unchanged policy keeps its
/// authenticator (and its caches and JWKS) across reloads.
pub struct CompiledPolicy {
    pub spec: Arc<AuthPolicy>,
    pub auth: Result<Arc<Authenticator>, String>,
}

impl Snapshot {
    pub fn empty() -> Snapshot {
        Snapshot {
            revision: 0,
            seen: 0,
            loaded_at: SystemTime::now(),
            catalog: Catalog::default(),
            rejected: Vec::new(),
            router: Router::default(),
            routes: HashMap::new(),
            upstreams: HashMap::new(),
            policies: HashMap::new(),
            global_rules: BTreeMap::new(),
            global_plugins: GlobalPlugins::default(),
            identity_headers: Arc::new([]),
        }
    }

    /// Compiles `catalog` from `previous`: unchanged upstreams and routes (by pointer:
    /// admission keeps unchanged objects' `Arc`s) are reused with their state, and the router
    /// is changed in place of a copy for the routes that changed only, so a change costs what
    /// changed, not the number of routes. A change of a global rule changes every route's
    /// chain, so it compiles every route again.
    pub fn compile(
        mut catalog: Catalog,
        mut rejected: Vec<Rejection>,
        previous: &Snapshot,
        revision: u64,
    ) -> Snapshot {
        let started = Instant::now();
        let mut upstreams = HashMap::with_capacity(catalog.upstreams.len());
        for (id, stored) in &catalog.upstreams {
            let target = match previous.upstreams.get(id) {
                Some(old) if Arc::ptr_eq(&old.spec, &stored.value) => old.clone(),
                Some(old) => {
                    Arc::new(UpstreamTarget::compile(stored.value.clone()).carry_over(old))
                }
                None => Arc::new(UpstreamTarget::compile(stored.value.clone())),
            };
            upstreams.insert(id.clone(), target);
        }

        let mut policies = HashMap::with_capacity(catalog.policies.len());
        for (id, stored) in &catalog.policies {
            let compiled = match previous.policies.get(id) {
                Some(old) if Arc::ptr_eq(&old.spec, &stored.value) => CompiledPolicy {
                    spec: old.spec.clone(),
                    auth: old.auth.clone(),
                },
                _ => CompiledPolicy {
                    spec: stored.value.clone(),
                    auth: compile_policy(&stored.value),
                },
            };
            if let Err(error) = &compiled.auth {
                rejected.push(compile_rejection(
                    &stored.origin,
                    Kind::AuthPolicy,
                    id,
                    error.clone(),
                ));
            }
            policies.insert(id.clone(), compiled);
        }

        let mut global_rules = BTreeMap::new();
        for (id, stored) in &catalog.global_rules {
            let old = previous.global_rules.get(id);
            let built = match old {
                Some(old) if Arc::ptr_eq(&old.spec, &stored.value) => Ok(old.plugins.clone()),
                _ => global::build(&stored.value),
            };
            match built {
                Ok(plugins) => {
                    let spec = stored.value.clone();
                    global_rules.insert(id.clone(), CompiledGlobalRule { spec, plugins });
                }
                Err(error) => rejected.push(compile_rejection(
                    &stored.origin,
                    Kind::GlobalRule,
                    id,
                    error,
                )),
            }
        }
        // A rule that could not be built is rejected alone: its previous version stays in
        // force, and is what the catalog shows.
        let refused: Vec<String> = catalog
            .global_rules
            .keys()
            .filter(|id| !global_rules.contains_key(*id))
            .cloned()
            .collect();
        for id in refused {
            catalog.global_rules.remove(&id);
            if let (Some(old), Some(stored)) = (
                previous.global_rules.get(&id),
                previous.catalog.global_rules.get(&id),
            ) {
                let (spec, plugins) = (old.spec.clone(), old.plugins.clone());
                global_rules.insert(id.clone(), CompiledGlobalRule { spec, plugins });
                catalog.global_rules.insert(id, stored.clone());
            }
        }
        let globals_unchanged = global_rules.len() == previous.global_rules.len()
            && global_rules
                .iter()
                .zip(&previous.global_rules)
                .all(|((id, now), (old_id, old))| {
                    id == old_id && Arc::ptr_eq(&now.plugins, &old.plugins)
                });
        let global_plugins = match globals_unchanged {
            true => previous.global_plugins.clone(),
            false => GlobalPlugins::collect(&global_rules),
        };

        let mut router = previous.router.clone();
        let mut routes = previous.routes.clone();
        let gone: Vec<Arc<str>> = previous
            .routes
            .keys()
            .filter(|id| !catalog.routes.contains_key(&***id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(old) = routes.remove(&id) {
                router.remove(&id, &old.matcher);
            }
        }
        for (id, stored) in &catalog.routes {
            let unchanged = previous.routes.get(id.as_str()).is_some_and(|old| {
                Arc::ptr_eq(&old.spec, &stored.value)
                    && old.globals.same(&global_plugins)
                    && old
                        .upstreams()
                        .chain(&old.followed)
                        .all(|u| upstreams.get(&*u.id).is_some_and(|now| Arc::ptr_eq(u, now)))
                    && match (&old.auth, &old.spec.auth) {
                        (Some(auth), Some(id)) => policies
                            .get(id)
                            .and_then(|p| p.auth.as_ref().ok())
                            .is_some_and(|now| Arc::ptr_eq(auth, now)),
                        (None, None) => true,
                        _ => false,
                    }
            });
            if unchanged {
                continue;
            }
            let old = routes.remove(id.as_str());
            if let Some(old) = &old {
                router.remove(id, &old.matcher);
            }
            match CompiledRoute::compile(
                stored.value.clone(),
                &upstreams,
                &policies,
                &global_plugins,
                old.as_deref(),
            ) {
                Ok(route) => {
                    let route = Arc::new(route);
                    router.insert(route.id.clone(), &route.matcher, route.clone());
                    routes.insert(route.id.clone(), route);
                }
                Err(error) => {
                    rejected.push(compile_rejection(&stored.origin, Kind::Route, id, error))
                }
            }
        }
        tracing::debug!(
            routes = routes.len(),
            upstreams = upstreams.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "snapshot compiled"
        );
        let mut identity_headers: Vec<http::HeaderName> = policies
            .values()
            .filter_map(|p| p.auth.as_ref().ok())
            .flat_map(|auth| auth.forwarded_headers().cloned())
            .collect();
        identity_headers.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        identity_headers.dedup();
        Snapshot {
            revision,
            seen: previous.seen,
            loaded_at: SystemTime::now(),
            catalog,
            rejected,
            router,
            routes,
            upstreams,
            policies,
            global_rules,
            global_plugins,
            identity_headers: identity_headers.into(),
        }
    }
}

/// What `old` had that `new` has not.
fn departed<'a>(old: &'a Snapshot, new: &Snapshot) -> Departed<'a> {
    Departed {
        routes: (old.routes.keys())
            .filter(|id| !new.routes.contains_key(*id))
            .map(|id| &**id)
            .collect(),
        upstreams: (old.upstreams.keys())
            .filter(|id| !new.upstreams.contains_key(*id))
            .map(String::as_str)
            .collect(),
    }
}

fn compile_rejection(
    origin: &crate::resource::Origin,
    kind: Kind,
    id: &str,
    error: String,
) -> Rejection {
    let object = crate::resource::ObjectKey {
        kind,
        id: id.to_string(),
    };
    Rejection::from_parts(
        origin,
        Some(&object),
        vec![crate::resource::FieldError::new("", error)],
    )
}

/// The snapshot in force, shared by the proxy, the admin API and the providers.
pub struct Live {
    snapshot: ArcSwap<Snapshot>,
    ready: AtomicBool,
    /// The revision in force, for whoever waits for a change to apply (admin writes).
    revision: tokio::sync::watch::Sender<u64>,
    /// How the source of that snapshot is doing. Kept here because the provider and the
    /// admin API share nothing else; the request path never reads it.
    source: SourceHealth,
}

impl Live {
    pub fn new() -> Live {
        Live {
            snapshot: ArcSwap::from_pointee(Snapshot::empty()),
            ready: AtomicBool::new(false),
            revision: tokio::sync::watch::Sender::new(0),
            // The provider says which kind it is when it is built.
            source: SourceHealth::new(SourceKind::File),
        }
    }

    pub fn source(&self) -> &SourceHealth {
        &self.source
    }

    /// The snapshot in force; the caller keeps it for as long as it needs a consistent view.
    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Puts a new snapshot in force; from now on the gateway is ready. The series of routes
    /// and upstreams it no longer has are dropped.
    pub fn store(&self, snapshot: Snapshot) {
        let revision = snapshot.revision;
        let new = Arc::new(snapshot);
        let old = self.snapshot.swap(new.clone());
        self.ready.store(true, Ordering::Release);
        let departed = departed(&old, &new);
        if !departed.is_empty() {
            for id in &departed.routes {
                if let Some(route) = old.routes.get(*id) {
                    route.metrics.retire();
                }
            }
            METRICS.forget(&departed);
        }
        // Whoever waits for this revision (an admin write) finds its metrics settled too.
        self.revision.send_replace(revision);
    }

    /// Waits (at most `within`) for a snapshot of `revision` or later to be in force;
    /// whether one is.
    pub async fn in_force(&self, revision: u64, within: std::time::Duration) -> bool {
        let mut in_force = self.revision.subscribe();
        let reached = in_force.wait_for(|r| *r >= revision);
        let outcome = tokio::time::timeout(within, reached).await;
        outcome.is_ok_and(|seen| seen.is_ok())
    }

    /// Follows the revision in force as snapshots are applied.
    pub fn subscribe_revision(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// True once a first snapshot has been loaded from the provider.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

impl crate::upstream::InForce for Live {
    fn upstreams(&self) -> Vec<Arc<UpstreamTarget>> {
        self.load().upstreams.values().cloned().collect()
    }
}

impl Default for Live {
    fn default() -> Self {
        Live::new()
    }
}
