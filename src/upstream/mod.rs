//! Upstreams as the proxy uses them: resolved nodes and a picker.

mod balance;
mod breaker;
mod choice;
mod health;
mod probe;

pub use balance::{smooth_schedule, Picker};
pub use breaker::{Breaker, BreakerPolicy, Pass};
pub use choice::UpstreamChoice;
pub use health::{now_ms, NodeHealth, PassivePolicy};
pub use probe::Prober;

use crate::resource::{split_host_port, Balancing, Scheme, Upstream};
use crate::telemetry::metrics::UpstreamMetrics;
use gatehouse_plugins::Exchange;
use pingora_http::RequestHeader;
use pingora_ketama::{Bucket, Continuum};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// One instance requests can be sent to.
#[derive(Debug)]
pub struct Node {
    pub addr: SocketAddr,
    pub weight: u32,
    /// The node as configured (`host:port`), for logs and metrics.
    pub label: Arc<str>,
    pub health: NodeHealth,
    /// Requests in flight on this node (kept for `least_conn`).
    pub inflight: AtomicU32,
}

impl Node {
    pub fn new(addr: SocketAddr, weight: u32, label: Arc<str>) -> Node {
        Node {
            addr,
            weight,
            label,
            health: NodeHealth::default(),
            inflight: AtomicU32::new(0),
        }
    }
}

/// TLS towards the upstream.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub sni: String,
    pub verify: bool,
}

/// An upstream compiled for the request path. Kept across reloads while its resource does
/// not change, so balancing state carries over.
#[derive(Debug)]
pub struct UpstreamTarget {
    pub id: Arc<str>,
    pub spec: Arc<Upstream>,
    pub nodes: Box<[Node]>,
    pub tls: Option<UpstreamTls>,
    pub metrics: UpstreamMetrics,
    /// `health_check.passive`, if set.
    pub passive: Option<PassivePolicy>,
    /// `pool.idle_timeout`, if set.
    pub idle_timeout: Option<std::time::Duration>,
    /// `circuit_breaker`, if set.
    pub breaker: Option<Breaker>,
    balance: Balance,
}

/// How a node is chosen.
enum Balance {
    /// `round_robin` (smooth weighted) or `random` (weighted).
    Picker(Picker),
    /// The fewest requests in flight relative to weight.
    LeastConn,
    /// A ketama ring over the nodes, looked up by the request's `hash_key`.
    Hash { ring: Continuum, key: HashKey },
}

impl std::fmt::Debug for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Balance::Picker(p) => p.fmt(f),
            Balance::LeastConn => f.write_str("LeastConn"),
            Balance::Hash { key, .. } => write!(f, "Hash({key:?})"),
        }
    }
}

impl UpstreamTarget {
    /// Builds the target, resolving host names now rather than per request. A node whose
    /// name does not resolve is left out (and logged); with no node left, requests get 503.
    pub fn compile(spec: Arc<Upstream>) -> UpstreamTarget {
        let mut nodes = Vec::with_capacity(spec.nodes.len());
        for node in &spec.nodes {
            let resolved = split_host_port(&node.addr)
                .map_err(|e| e.to_string())
                .and_then(|(host, port)| {
                    (host, port)
                        .to_socket_addrs()
                        .map_err(|e| format!("cannot resolve `{}`: {e}", node.addr))
                });
            match resolved {
                Ok(addrs) => {
                    let label: Arc<str> = node.addr.as_str().into();
                    nodes.extend(addrs.map(|addr| Node::new(addr, node.weight, label.clone())))
                }
                Err(e) => tracing::warn!(upstream = %spec.id, "node left out: {e}"),
            }
        }
        let weights: Vec<u32> = nodes.iter().map(|n| n.weight).collect();
        let balance = match spec.lb {
            Balancing::Random => Balance::Picker(Picker::random(&weights)),
            Balancing::RoundRobin => Balance::Picker(Picker::round_robin(&weights)),
            Balancing::LeastConn => Balance::LeastConn,
            Balancing::ConsistentHash => {
                let buckets: Vec<Bucket> = nodes
                    .iter()
                    .map(|n| Bucket::new(n.addr, n.weight))
                    .collect();
                Balance::Hash {
                    ring: Continuum::new(&buckets),
                    key: HashKey::parse(spec.hash_key.as_deref().unwrap_or("client_ip")),
                }
            }
        };
        let passive = spec
            .health_check
            .as_ref()
            .and_then(|h| h.passive.as_ref())
            .map(|p| PassivePolicy {
                max_fails: p.max_fails,
                fail_timeout: p.fail_timeout.0,
            });
        let idle_timeout = spec.pool.as_ref().and_then(|p| p.idle_timeout).map(|t| t.0);
        let breaker = spec.circuit_breaker.as_ref().map(|c| {
            Breaker::new(BreakerPolicy {
                error_rate: c.error_rate,
                min_requests: c.min_requests,
                window: c.window.0,
                open_for: c.open_for.0,
            })
        });
        let tls = (spec.scheme == Scheme::Https).then(|| {
            let tls = spec.tls.as_ref();
            let sni = tls.and_then(|t| t.sni.clone()).unwrap_or_else(|| {
                spec.nodes
                    .first()
                    .and_then(|n| split_host_port(&n.addr).ok())
                    .filter(|(host, _)| host.parse::<std::net::IpAddr>().is_err())
                    .map(|(host, _)| host.to_string())
                    .unwrap_or_default()
            });
            UpstreamTls {
                sni,
                verify: tls.is_none_or(|t| t.verify),
            }
        });
        let id: Arc<str> = spec.id.as_str().into();
        UpstreamTarget {
            metrics: UpstreamMetrics::new(id.clone()),
            id,
            spec,
            nodes: nodes.into(),
            tls,
            passive,
            idle_timeout,
            breaker,
            balance,
        }
    }

    /// The index of the node for a request: a healthy one, other than `avoid` (the node
    /// that just failed) when another healthy node exists. `None` when no node is healthy.
    pub fn pick(&self, req: &RequestHeader, ex: &Exchange, avoid: Option<usize>) -> Option<usize> {
        let now = now_ms();
        let usable = |i: usize| Some(i) != avoid && self.nodes[i].health.is_up(now);
        let chosen = match &self.balance {
            Balance::Picker(picker) => (0..self.nodes.len())
                .filter_map(|_| picker.pick())
                .find(|&i| usable(i)),
            Balance::LeastConn => self.least_loaded(&usable),
            Balance::Hash { ring, key } => {
                let key = key.of(req, ex);
                ring.node_iter(&key)
                    .take(self.nodes.len() * 4)
                    .filter_map(|addr| self.nodes.iter().position(|n| n.addr == *addr))
                    .find(|&i| usable(i))
            }
        };
        chosen
            .or_else(|| self.any_healthy(&usable))
            // The node to avoid is still better than none, if it is healthy.
            .or_else(|| avoid.filter(|&i| self.nodes[i].health.is_up(now)))
    }

    fn least_loaded(&self, usable: &impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.nodes.len();
        if n == 0 {
            return None;
        }
        // Ties go to a node picked at random, not always the first one.
        let start = fastrand::usize(..n);
        let mut best: Option<(usize, u64, u64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !usable(i) {
                continue;
            }
            let node = &self.nodes[i];
            let load = node.inflight.load(Ordering::Relaxed) as u64;
            let weight = node.weight as u64;
            // load / weight < best_load / best_weight, without division.
            if best.is_none_or(|(_, l, w)| load * w < l * weight) {
                best = Some((i, load, weight));
            }
        }
        best.map(|(i, _, _)| i)
    }

    fn any_healthy(&self, usable: &impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.nodes.len();
        let start = fastrand::usize(..n.max(1));
        (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
    }

    /// Marks a request as in flight on node `index` until the lease is dropped (for
    /// `least_conn`; other balancers need no count).
    pub fn lease(self: &Arc<Self>, index: usize) -> Option<NodeLease> {
        matches!(self.balance, Balance::LeastConn).then(|| {
            self.nodes[index].inflight.fetch_add(1, Ordering::Relaxed);
            NodeLease {
                target: self.clone(),
                index,
            }
        })
    }

    /// Counts a failed request to node `index` for passive health checks.
    pub fn failed(&self, index: usize) {
        if let Some(node) = self.nodes.get(index) {
            node.health.failed(self.passive.as_ref(), now_ms());
        }
    }
}

/// A request in flight on a node; dropping it ends the count.
#[derive(Debug)]
pub struct NodeLease {
    target: Arc<UpstreamTarget>,
    index: usize,
}

impl Drop for NodeLease {
    fn drop(&mut self) {
        self.target.nodes[self.index]
            .inflight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// What `consistent_hash` hashes (`hash_key`).
#[derive(Debug)]
enum HashKey {
    ClientIp,
    Consumer,
    Path,
    Header(http::HeaderName),
    Cookie(String),
    Query(String),
}

impl HashKey {
    /// Validation has checked the text; anything else falls back to the client address.
    fn parse(text: &str) -> HashKey {
        match text.split_once(':') {
            Some(("header", name)) => http::HeaderName::from_bytes(name.as_bytes())
                .map(HashKey::Header)
                .unwrap_or(HashKey::ClientIp),
            Some(("cookie", name)) => HashKey::Cookie(name.to_string()),
            Some(("query", name)) => HashKey::Query(name.to_string()),
            _ => match text {
                "consumer" => HashKey::Consumer,
                "path" => HashKey::Path,
                _ => HashKey::ClientIp,
            },
        }
    }

    /// The bytes to hash; a request without the key hashes by its client address.
    fn of(&self, req: &RequestHeader, ex: &Exchange) -> Vec<u8> {
        let found: Option<&[u8]> = match self {
            HashKey::ClientIp => None,
            HashKey::Consumer => ex.consumer.as_deref().map(str::as_bytes),
            HashKey::Path => Some(req.uri.path().as_bytes()),
            HashKey::Header(name) => req.headers.get(name).map(|v| v.as_bytes()),
            HashKey::Cookie(name) => req
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|c| {
                    let (k, v) = c.trim().split_once('=')?;
                    (k == name).then_some(v.as_bytes())
                }),
            HashKey::Query(name) => req.uri.query().and_then(|q| {
                q.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    (k == name).then_some(v.as_bytes())
                })
            }),
        };
        match found {
            Some(bytes) => bytes.to_vec(),
            None => ex.client_ip.to_string().into_bytes(),
        }
    }
}
