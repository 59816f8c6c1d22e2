//! The background service that reads transcoding descriptors by gRPC server reflection,
//! for routes with `grpc_transcode.reflection: true` (SPEC §9).
//!
//! It follows the snapshot in force: a route that needs descriptors, or whose upstream's
//! nodes changed since they were read, has them read again from one of its healthy nodes.
//! Until a first read succeeds, its REST calls are answered 503; a read that fails keeps the
//! bindings already in force and is tried again a few seconds later.

use super::transcoder::Transcoder;
use super::Live;
use crate::transcode::reflection::read;
use crate::upstream::{now_ms, UpstreamTarget};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the routes are looked over.
const TICK: Duration = Duration::from_millis(250);
/// How long after a failed read it is tried again.
const RETRY: Duration = Duration::from_secs(3);

/// Where a route stands with reflection.
#[derive(Debug, Default)]
pub struct Reflected {
    /// The nodes (sorted) when the descriptors in force were read.
    read_with: Option<Vec<SocketAddr>>,
    /// When the last read began, and the nodes then.
    tried: Option<(Instant, Vec<SocketAddr>)>,
    /// A read is under way.
    busy: bool,
}

impl Reflected {
    /// Whether to read now, the upstream's nodes being `nodes`: they changed since the
    /// descriptors in force were read (or none were), and no read is under way or failed
    /// with these same nodes a moment ago.
    fn due(&self, nodes: &[SocketAddr]) -> bool {
        if self.busy || nodes.is_empty() || self.read_with.as_deref() == Some(nodes) {
            return false;
        }
        match &self.tried {
            Some((at, with)) => with != nodes || at.elapsed() >= RETRY,
            None => true,
        }
    }
}

/// The background service that reads routes' descriptors by reflection.
pub struct Reflector {
    live: Arc<Live>,
    /// HTTP/2 by prior knowledge, for `scheme: grpc`; a TLS node gets a client of its own.
    plain: reqwest::Client,
}

impl Reflector {
    pub fn new(live: Arc<Live>) -> anyhow::Result<Reflector> {
        Ok(Reflector {
            live,
            plain: base_client().http2_prior_knowledge().build()?,
        })
    }

    /// Starts a read for every route that needs one.
    fn look_over(&self) {
        let snapshot = self.live.load();
        for route in snapshot.routes.values() {
            let Some(transcoder) = &route.transcoder else {
                continue;
            };
            if !transcoder.spec.reflection {
                continue;
            }
            let Some(upstream) = route.upstreams().next() else {
                continue;
            };
            self.maybe_read(transcoder.clone(), upstream.clone());
        }
    }

    fn maybe_read(&self, transcoder: Arc<Transcoder>, upstream: Arc<UpstreamTarget>) {
        let members = upstream.members();
        let mut nodes: Vec<SocketAddr> = members.nodes.iter().map(|n| n.addr).collect();
        nodes.sort_unstable();
        {
            let mut state = lock(&transcoder.reflected);
            if !state.due(&nodes) {
                return;
            }
            state.busy = true;
            state.tried = Some((Instant::now(), nodes.clone()));
        }
        let now = now_ms();
        let node = members
            .nodes
            .iter()
            .find(|n| n.health.is_up(now))
            .or_else(|| members.nodes.first())
            .map(|n| n.addr);
        let Some(node) = node else {
            lock(&transcoder.reflected).busy = false;
            return;
        };
        // Over TLS the node is named and trusted as the calls name and trust it: its `sni`,
        // the system's roots, `verify` as configured.
        let client = match &upstream.tls {
            None => Ok((self.plain.clone(), format!("http://{node}"))),
            Some(tls) => tls_client(&tls.sni, tls.verify, node),
        };
        let (client, base) = match client {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(upstream = %upstream.id, error = %e, "no client for reflection");
                lock(&transcoder.reflected).busy = false;
                return;
            }
        };
        let route_services = transcoder.spec.services.clone();
        tokio::spawn(async move {
            let result = read(&client, &base, &route_services).await;
            let mut state = lock(&transcoder.reflected);
            state.busy = false;
            match result {
                Ok(pool) => match transcoder.learn(&pool) {
                    Ok(()) => {
                        state.read_with = Some(nodes);
                        tracing::info!(
                            upstream = %upstream.id,
                            node = %node,
                            "transcoding descriptors read by reflection"
                        );
                    }
                    Err(errors) => {
                        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                        tracing::warn!(
                            upstream = %upstream.id,
                            errors = %errors.join("; "),
                            "descriptors read by reflection do not resolve the route's bindings"
                        );
                    }
                },
                Err(e) => tracing::warn!(
                    upstream = %upstream.id,
                    node = %node,
                    error = %e,
                    "reading descriptors by reflection failed"
                ),
            }
        });
    }
}

/// A client for one read from a TLS node: the name it is asked by is `sni` (resolved to the
/// node itself), its certificate checked against the system's roots unless `verify` is off.
fn tls_client(
    sni: &str,
    verify: bool,
    node: SocketAddr,
) -> reqwest::Result<(reqwest::Client, String)> {
    let mut builder = base_client().danger_accept_invalid_certs(!verify);
    for root in SYSTEM_ROOTS.iter() {
        builder = builder.add_root_certificate(root.clone());
    }
    let base = if sni.is_empty() {
        format!("https://{node}")
    } else {
        builder = builder.resolve(sni, node);
        format!("https://{sni}:{}", node.port())
    };
    Ok((builder.build()?, base))
}

/// The system's trusted roots (what Pingora's TLS trusts for the calls), read once: a read
/// by reflection trusts the node as the calls do.
static SYSTEM_ROOTS: std::sync::LazyLock<Vec<reqwest::Certificate>> =
    std::sync::LazyLock::new(|| {
        rustls_native_certs::load_native_certs()
            .certs
            .iter()
            .filter_map(|der| reqwest::Certificate::from_der(der).ok())
            .collect()
    });

fn base_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
}

fn lock(state: &Mutex<Reflected>) -> std::sync::MutexGuard<'_, Reflected> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl BackgroundService for Reflector {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut every = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = every.tick() => self.look_over(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_due_when_the_nodes_change_and_not_hammered_when_it_fails() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut state = Reflected::default();
        assert!(state.due(&[a]), "never read");
        assert!(!state.due(&[]), "no node to ask");
        state.tried = Some((Instant::now(), vec![a]));
        assert!(!state.due(&[a]), "failed a moment ago with the same nodes");
        assert!(state.due(&[a, b]), "the nodes changed since");
        state.tried = Some((Instant::now() - RETRY, vec![a]));
        assert!(state.due(&[a]), "failed long enough ago");
        state.read_with = Some(vec![a]);
        assert!(!state.due(&[a]), "read with these nodes");
        assert!(state.due(&[b]), "read with other nodes");
        state.busy = true;
        assert!(!state.due(&[b]), "a read is under way");
    }
}
