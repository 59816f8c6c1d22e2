//! Discovery: upstream nodes found at run time, from the service registry in etcd
//! (`discovery.service`) or from DNS (`discovery.dns`).
//!
//! **Registry.** One watch on the registry prefix serves every upstream, however many name
//! a service: it mirrors the registrations (go-kratos format, SPEC §5) into a directory, and
//! each change bumps the directory's generation. Instances appear on put and vanish on
//! delete — which is also what etcd does when an instance's lease expires. Following the
//! prefix is [`PrefixWatch`]'s job: after a lost connection it reconnects with backoff and
//! reads everything again; meanwhile the nodes in force stay.
//!
//! **DNS.** The name is resolved when the upstream is compiled, then every `refresh`; a
//! failed lookup keeps the last good set.
//!
//! A background service applies both to the snapshot in force every [`TICK`]: an upstream
//! seen for the first time, or a directory that changed, gets its nodes (re)computed.

use super::{now_ms, InForce, Instance, LaneSpec, UpstreamTarget};
use crate::etcd::{Change, Entry, PrefixWatch, WatchEvent};
use crate::etcd::{EtcdSettings, RegistryEtcd};
use crate::resource::{Discovery, Scheme};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often discovery results are applied to the upstreams in force.
const TICK: Duration = Duration::from_millis(100);

/// One registered instance, as go-kratos writes it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Registration {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub endpoints: Vec<String>,
}

/// The registrations of every service: by service name, then by etcd key.
type Services = BTreeMap<String, BTreeMap<String, Registration>>;

/// The registry as last seen.
#[derive(Debug, Default)]
pub struct Directory {
    services: ArcSwap<Services>,
    generation: AtomicU64,
}

impl Directory {
    fn publish(&self, services: Services) {
        self.services.store(Arc::new(services));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The instances of `discovery.service` that match its metadata, with endpoints of the
    /// upstream's scheme, each in the lane its metadata names (with `lanes`).
    pub fn instances(
        &self,
        discovery: &Discovery,
        scheme: Scheme,
        lanes: Option<&LaneSpec>,
    ) -> Vec<Instance> {
        let Some(service) = &discovery.service else {
            return Vec::new();
        };
        let wanted = scheme.endpoint_prefix();
        let services = self.services.load();
        let Some(registered) = services.get(service) else {
            return Vec::new();
        };
        registered
            .values()
            .filter(|r| {
                discovery.metadata.iter().all(|(k, v)| {
                    let have = match k.as_str() {
                        "version" if !r.version.is_empty() => Some(&r.version),
                        _ => r.metadata.get(k),
                    };
                    have.is_some_and(|h| h.as_str() == v.as_str())
                })
            })
            .flat_map(|r| {
                let weight = r
                    .metadata
                    .get("weight")
                    .and_then(|w| w.parse().ok())
                    .filter(|w| (1..=10_000).contains(w))
                    .unwrap_or(1);
                let lane = lanes.and_then(|l| {
                    l.lane_of(r.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                });
                r.endpoints
                    .iter()
                    .filter_map(move |e| e.strip_prefix(wanted))
                    .filter_map(|hostport| {
                        // `host:port` with nothing after, as kratos registers its listeners.
                        let hostport = hostport.split('/').next().unwrap_or(hostport);
                        hostport.parse::<SocketAddr>().ok()
                    })
                    .map(move |addr| Instance {
                        addr,
                        weight,
                        lane: lane.clone(),
                    })
            })
            .collect()
    }
}

/// The background service.
pub struct DiscoveryService {
    live: Arc<dyn InForce>,
    registry: Option<RegistryEtcd>,
    directory: Arc<Directory>,
}

impl DiscoveryService {
    pub fn new(live: Arc<dyn InForce>, registry: Option<RegistryEtcd>) -> DiscoveryService {
        DiscoveryService {
            live,
            registry,
            directory: Arc::new(Directory::default()),
        }
    }

    fn apply(&self, now: u64) {
        let generation = self.directory.generation.load(Ordering::Acquire);
        for upstream in self.live.upstreams() {
            let Some(discovery) = &upstream.spec.discovery else {
                continue;
            };
            if discovery.service.is_some()
                && upstream.discovered.swap(generation, Ordering::AcqRel) != generation
            {
                let instances = self.directory.instances(
                    discovery,
                    upstream.spec.scheme,
                    upstream.lanes.as_ref(),
                );
                if upstream.set_instances(instances) {
                    tracing::info!(
                        upstream = %upstream.id,
                        nodes = upstream.members().nodes.len(),
                        "registry: nodes changed"
                    );
                }
            }
            if let Some(dns) = &discovery.dns {
                let refresh = dns.refresh.0.as_millis() as u64;
                if upstream.lookup_due(now, refresh) {
                    let (upstream, name, port) = (upstream.clone(), dns.name.clone(), dns.port);
                    tokio::spawn(async move { lookup(&upstream, &name, port).await });
                }
            }
        }
    }
}

async fn lookup(upstream: &UpstreamTarget, name: &str, port: u16) {
    match tokio::net::lookup_host((name, port)).await {
        Ok(addrs) => {
            let instances = addrs
                .map(|addr| Instance {
                    addr,
                    weight: 1,
                    lane: None,
                })
                .collect::<Vec<_>>();
            if instances.is_empty() {
                tracing::warn!(upstream = %upstream.id, name, "DNS: no address; keeping the last set");
            } else if upstream.set_instances(instances) {
                tracing::info!(upstream = %upstream.id, name, "DNS: nodes changed");
            }
        }
        Err(error) => {
            tracing::warn!(upstream = %upstream.id, name, %error, "DNS lookup failed; keeping the last set")
        }
    }
}

/// Mirrors the registry into the directory, for as long as the task runs.
async fn follow_registry(registry: RegistryEtcd, directory: &Directory) {
    let prefix = format!("{}/", registry.prefix.trim_end_matches('/'));
    let settings = EtcdSettings::with_endpoints(registry.endpoints, registry.prefix);
    let mut watch = PrefixWatch::new(settings, prefix.as_str(), "registry");
    let mut services = Services::new();
    loop {
        match watch.next().await {
            WatchEvent::Loaded {
                revision, entries, ..
            } => {
                services = Services::new();
                for entry in &entries {
                    add(&mut services, &prefix, &entry.key, &entry.value);
                }
                tracing::info!(instances = entries.len(), revision, "registry: loaded");
            }
            WatchEvent::Changed { changes, .. } => {
                for change in &changes {
                    match change {
                        Change::Put(Entry { key, value, .. }) => {
                            add(&mut services, &prefix, key, value)
                        }
                        Change::Delete { key, .. } => remove(&mut services, &prefix, key),
                    }
                }
            }
            WatchEvent::Lost { error, retry_in } => {
                tracing::warn!(
                    retry_in_ms = retry_in.as_millis() as u64,
                    "registry unavailable, keeping the nodes in force: {error}"
                );
                continue;
            }
        }
        directory.publish(services.clone());
    }
}

/// `{prefix}{service}/{instance}` → the service's name.
fn service_of<'k>(prefix: &str, key: &'k str) -> Option<&'k str> {
    let rest = key.strip_prefix(prefix)?;
    let (service, instance) = rest.split_once('/')?;
    (!service.is_empty() && !instance.is_empty()).then_some(service)
}

fn add(services: &mut Services, prefix: &str, key: &str, value: &[u8]) {
    let Some(service) = service_of(prefix, key) else {
        return;
    };
    match serde_json::from_slice::<Registration>(value) {
        Ok(registration) => {
            services
                .entry(service.to_string())
                .or_default()
                .insert(key.to_string(), registration);
        }
        Err(error) => {
            tracing::warn!(%key, %error, "registry: not a registration; ignored");
            remove(services, prefix, key);
        }
    }
}

fn remove(services: &mut Services, prefix: &str, key: &str) {
    if let Some(service) = service_of(prefix, key) {
        if let Some(instances) = services.get_mut(service) {
            instances.remove(key);
        }
    }
}

#[async_trait]
impl BackgroundService for DiscoveryService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let watcher = self.registry.clone().map(|registry| {
            let directory = self.directory.clone();
            tokio::spawn(async move { follow_registry(registry, &directory).await })
        });
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = every.tick() => self.apply(now_ms()),
            }
        }
        if let Some(watcher) = watcher {
            watcher.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(json: &str) -> Registration {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn instances_match_metadata_version_and_scheme() {
        let directory = Directory::default();
        let mut users = BTreeMap::new();
        users.insert(
            "/microservices/users/a".to_string(),
            registration(r#"{"id":"a","name":"users","version":"v1","metadata":{"region":"sh"},"endpoints":["http://127.0.0.1:9001","grpc://127.0.0.1:9002"]}"#),
        );
        users.insert(
            "/microservices/users/b".to_string(),
            registration(r#"{"id":"b","name":"users","version":"v2","metadata":{"region":"sh","weight":"3"},"endpoints":["http://127.0.0.1:9003","https://127.0.0.1:9443"]}"#),
        );
        let mut services = BTreeMap::new();
        services.insert("users".to_string(), users);
        directory.publish(services);
        let discovery = |meta: &str| -> Discovery {
            serde_yaml::from_str(&format!("{{ service: users, metadata: {meta} }}")).unwrap()
        };
        let addrs = |list: Vec<Instance>| {
            list.iter()
                .map(|i| (i.addr.port(), i.weight))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            addrs(directory.instances(&discovery("{}"), Scheme::Http, None)),
            [(9001, 1), (9003, 3)]
        );
        assert_eq!(
            addrs(directory.instances(&discovery("{ version: v2 }"), Scheme::Http, None)),
            [(9003, 3)]
        );
        assert_eq!(
            addrs(directory.instances(&discovery("{ region: bj }"), Scheme::Http, None)),
            []
        );
        assert_eq!(
            addrs(directory.instances(&discovery("{}"), Scheme::Https, None)),
            [(9443, 3)]
        );
    }

    #[test]
    fn keys_name_their_service() {
        assert_eq!(
            service_of("/microservices/", "/microservices/users/abc"),
            Some("users")
        );
        assert_eq!(service_of("/microservices/", "/microservices/users"), None);
        assert_eq!(service_of("/microservices/", "/other/users/abc"), None);
    }
}
