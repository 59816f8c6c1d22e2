//! Upstreams as the proxy uses them: resolved nodes and a picker.

mod balance;
mod breaker;
mod choice;
mod concurrency;
mod discovery;
mod grpc_health;
mod health;
mod keepalive;
mod lanes;
mod probe;
mod retry_budget;
mod sender;

pub use balance::{smooth_schedule, Picker};
pub use breaker::{Breaker, BreakerPolicy, Outcome, Pass, SlowPolicy};
pub use choice::UpstreamChoice;
pub use concurrency::{ConcurrencyLimit, Permit};
pub use discovery::{Directory, DiscoveryService, Registration};
pub use health::{now_ms, NodeHealth, PassivePolicy};
pub use keepalive::KeptConnections;
pub use lanes::{LaneChoice, LaneRefusal, LaneSpec};
pub use probe::Prober;
pub use retry_budget::RetryBudget;
pub use sender::Sender;

use crate::resource::{split_host_port, Balancing, Upstream, HASH_KEY_FORMS};
use crate::telemetry::metrics::{UpstreamMetrics, METRICS};
use arc_swap::ArcSwap;
use gatehouse_plugins::selector::{Selected, Selector};
use gatehouse_plugins::Exchange;
use pingora::prelude::HttpPeer;
use pingora_http::RequestHeader;
use pingora_ketama::{Bucket, Continuum};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// The upstreams in force, for the services that look after them (discovery, health
/// probes). The live snapshot provides them; a trait here keeps the upstream layer from
/// depending on the snapshot, which depends on it.
pub trait InForce: Send + Sync {
    fn upstreams(&self) -> Vec<Arc<UpstreamTarget>>;
}

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
    /// Connections kept open for reuse (counted for `pool.max_idle`); shared with the node
    /// that replaces this one when only its weight changes, as those are the same
    /// connections.
    pub kept: Arc<KeptConnections>,
    /// The lane the node is in (`lanes.metadata` of its metadata), on an upstream with lanes.
    pub lane: Option<Arc<str>>,
}

impl Node {
    pub fn new(addr: SocketAddr, weight: u32, label: Arc<str>) -> Node {
        Node {
            addr,
            weight,
            label,
            health: NodeHealth::default(),
            inflight: AtomicU32::new(0),
            kept: Arc::default(),
            lane: None,
        }
    }

    /// The node, in `lane`.
    pub fn in_lane(mut self, lane: Option<Arc<str>>) -> Node {
        self.lane = lane;
        self
    }

    /// The same instance with another weight: its kept connections stay counted.
    fn reweighted(&self, weight: u32) -> Node {
        Node {
            kept: self.kept.clone(),
            ..Node::new(self.addr, weight, self.label.clone()).in_lane(self.lane.clone())
        }
    }
}

/// TLS towards the upstream.
#[derive(Debug, Clone)]
pub struct NodeTls {
    pub sni: String,
    pub verify: bool,
}

/// An upstream compiled for the request path. Kept across reloads while its resource does
/// not change, so balancing and health state carry over.
#[derive(Debug)]
pub struct UpstreamTarget {
    pub id: Arc<str>,
    pub spec: Arc<Upstream>,
    pub tls: Option<NodeTls>,
    pub metrics: UpstreamMetrics,
    /// `health_check.passive`, if set.
    pub passive: Option<PassivePolicy>,
    /// `pool.idle_timeout`, if set.
    pub idle_timeout: Option<std::time::Duration>,
    /// `pool.max_idle`, if set.
    pub max_idle: Option<u32>,
    /// This target's connection pool in Pingora's (`HttpPeer::group_key`): even for kept
    /// connections, odd for one-shot ones. Fresh for every compiled target, so connections
    /// counted by an earlier version of the upstream are never mixed with this one's.
    pool_key: u64,
    /// `circuit_breaker`, if set; shared with the next version of the upstream while its
    /// settings do not change.
    pub breaker: Option<Arc<Breaker>>,
    /// The nodes in force: fixed for static `nodes`, replaced as discovery finds instances.
    members: ArcSwap<Members>,
    /// The registry generation these nodes were computed from (`u64::MAX`: never).
    pub(crate) discovered: AtomicU64,
    /// When the next DNS lookup is due (ms).
    next_lookup: AtomicU64,
    /// `lanes`, if set.
    pub lanes: Option<LaneSpec>,
    /// `concurrency`, if set; shared with the next version of the upstream while its
    /// settings do not change.
    pub concurrency: Option<Arc<ConcurrencyLimit>>,
    /// `retry_budget`, if set; shared like the breaker.
    pub retry_budget: Option<Arc<RetryBudget>>,
}

/// One set of nodes and how to choose among them.
#[derive(Debug)]
pub struct Members {
    pub nodes: Box<[Arc<Node>]>,
    balance: Balance,
    /// The same nodes split by lane, on an upstream with `lanes`.
    lanes: Option<Box<lanes::LaneGroups>>,
}

/// How a node is chosen.
enum Balance {
    /// `round_robin` (smooth weighted) or `random` (weighted).
    Picker(Picker),
    /// The fewest requests in flight relative to weight.
    LeastConn,
    /// A ketama ring over the nodes, looked up by the request's `hash_key`.
    Hash { ring: Continuum, key: Selector },
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

impl Members {
    /// The nodes of `spec`, split by lane when it has lanes (each lane keeping its breaker
    /// from `previous`).
    fn new(spec: &Upstream, nodes: Vec<Arc<Node>>, previous: Option<&Members>) -> Members {
        let lanes = spec.lanes.as_ref().map(|_| {
            Box::new(lanes::LaneGroups::new(
                spec,
                &nodes,
                breaker_policy(spec),
                previous.and_then(|p| p.lanes.as_deref()),
            ))
        });
        Members {
            lanes,
            ..Members::plain(spec, nodes)
        }
    }

    /// One set of nodes, whatever lanes they are in.
    fn plain(spec: &Upstream, nodes: Vec<Arc<Node>>) -> Members {
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
                    // Admission requires a valid `hash_key` with `consistent_hash`; an upstream
                    // compiled without admission hashes by client address, as a request
                    // without the key does.
                    key: spec
                        .hash_key
                        .as_ref()
                        .and_then(|k| k.selector(HASH_KEY_FORMS).ok())
                        .cloned()
                        .unwrap_or(Selector::ClientIp),
                }
            }
        };
        Members {
            nodes: nodes.into(),
            balance,
            lanes: None,
        }
    }

    fn pick(&self, req: &RequestHeader, ex: &Exchange, avoid: Option<&Node>) -> Option<usize> {
        let now = now_ms();
        let avoided = |i: usize| avoid.is_some_and(|a| a.addr == self.nodes[i].addr);
        let usable = |i: usize| !avoided(i) && self.nodes[i].health.is_up(now);
        let chosen = match &self.balance {
            Balance::Picker(picker) => (0..self.nodes.len())
                .filter_map(|_| picker.pick())
                .find(|&i| usable(i)),
            Balance::LeastConn => self.least_loaded(&usable),
            Balance::Hash { ring, key } => with_hash_key(key, req, ex, |key| {
                ring.node_iter(key)
                    .take(self.nodes.len() * 4)
                    .filter_map(|addr| self.nodes.iter().position(|n| n.addr == *addr))
                    .find(|&i| usable(i))
            }),
        };
        chosen
            .or_else(|| self.any(&usable))
            // The node to avoid is still better than none, if it is healthy.
            .or_else(|| self.any(&|i| avoided(i) && self.nodes[i].health.is_up(now)))
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

    fn any(&self, usable: &impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.nodes.len();
        let start = fastrand::usize(..n.max(1));
        (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
    }
}

/// A discovered instance: where it is, its weight, and its lane (on an upstream with lanes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instance {
    pub addr: SocketAddr,
    pub weight: u32,
    pub lane: Option<Arc<str>>,
}

/// The upstream's `circuit_breaker` settings.
fn breaker_policy(spec: &Upstream) -> Option<BreakerPolicy> {
    spec.circuit_breaker.as_ref().map(|c| BreakerPolicy {
        error_rate: c.error_rate,
        min_requests: c.min_requests,
        window: c.window.0,
        open_for: c.open_for.0,
        slow: c.slow_call.as_ref().map(|s| SlowPolicy {
            threshold_us: s.threshold.0.as_micros() as u64,
            ratio: s.ratio,
        }),
    })
}

/// The upstream's `concurrency` limit, with its metrics resolved.
fn concurrency_limit(spec: &Upstream) -> Option<ConcurrencyLimit> {
    let c = spec.concurrency.as_ref()?;
    let refused = METRICS.overloaded.with_label_values(&[&spec.id]);
    Some(match (c.max, c.adaptive) {
        (_, Some(a)) => {
            ConcurrencyLimit::adaptive(a.min, a.max, std::time::Instant::now(), refused)
        }
        // Admission requires one of the two; an upstream compiled without it has no cap.
        (max, None) => ConcurrencyLimit::fixed(max.unwrap_or(u32::MAX), refused),
    })
}

/// The addresses of a static node: an IP literal as it is, a name through the system
/// resolver (blocking; see [`UpstreamTarget::compile`]).
fn resolve(host: &str, port: u16, written: &str) -> Result<Vec<SocketAddr>, String> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    (host, port)
        .to_socket_addrs()
        .map(Iterator::collect)
        .map_err(|e| format!("cannot resolve `{written}`: {e}"))
}

impl UpstreamTarget {
    /// Builds the target, resolving host names now rather than per request. A node whose
    /// name does not resolve is left out (and logged); with no node left, requests get 503.
    /// A `discovery.dns` name is resolved now too; a registry service starts empty and is
    /// filled by the registry watcher.
    ///
    /// Name lookups block (the system resolver may take seconds): this runs where a
    /// configuration change is applied, which the providers do on a blocking thread
    /// (`spawn_blocking`), never on an async runtime's worker. Address literals are parsed
    /// without a lookup.
    pub fn compile(spec: Arc<Upstream>) -> UpstreamTarget {
        let lanes = LaneSpec::of(&spec);
        let mut nodes = Vec::with_capacity(spec.nodes.len());
        for node in &spec.nodes {
            let resolved = split_host_port(&node.addr)
                .map_err(|e| e.to_string())
                .and_then(|(host, port)| resolve(host, port, &node.addr));
            match resolved {
                Ok(addrs) => {
                    let label: Arc<str> = node.addr.as_str().into();
                    let lane = lanes.as_ref().and_then(|l| {
                        l.lane_of(node.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    });
                    nodes.extend(addrs.into_iter().map(|addr| {
                        Arc::new(Node::new(addr, node.weight, label.clone()).in_lane(lane.clone()))
                    }))
                }
                Err(e) => tracing::warn!(upstream = %spec.id, "node left out: {e}"),
            }
        }
        if let Some(dns) = spec.discovery.as_ref().and_then(|d| d.dns.as_ref()) {
            match (dns.name.as_str(), dns.port).to_socket_addrs() {
                Ok(addrs) => nodes.extend(
                    addrs.map(|addr| Arc::new(Node::new(addr, 1, addr.to_string().into()))),
                ),
                Err(e) => {
                    tracing::warn!(upstream = %spec.id, name = %dns.name, "DNS lookup failed: {e}")
                }
            }
        }
        let passive = spec
            .health_check
            .as_ref()
            .and_then(|h| h.passive.as_ref())
            .map(|p| PassivePolicy {
                max_fails: p.max_fails,
                fail_timeout: p.fail_timeout.0,
            });
        let idle_timeout = spec.pool.as_ref().and_then(|p| p.idle_timeout).map(|t| t.0);
        let max_idle = spec
            .pool
            .as_ref()
            .and_then(|p| p.max_idle)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        let breaker = breaker_policy(&spec).map(|p| Arc::new(Breaker::new(p)));
        let tls = spec.scheme.tls().then(|| {
            let tls = spec.tls.as_ref();
            let sni = tls.and_then(|t| t.sni.clone()).unwrap_or_else(|| {
                let dns = spec.discovery.as_ref().and_then(|d| d.dns.as_ref());
                spec.nodes
                    .first()
                    .and_then(|n| split_host_port(&n.addr).ok())
                    .map(|(host, _)| host)
                    .or(dns.map(|d| d.name.as_str()))
                    .filter(|host| host.parse::<std::net::IpAddr>().is_err())
                    .map(str::to_string)
                    .unwrap_or_default()
            });
            NodeTls {
                sni,
                verify: tls.is_none_or(|t| t.verify),
            }
        });
        let id: Arc<str> = spec.id.as_str().into();
        let concurrency = concurrency_limit(&spec).map(Arc::new);
        let retry_budget = spec.retry_budget.as_ref().map(|b| {
            let exhausted = METRICS
                .retry_budget_exhausted
                .with_label_values(&[&spec.id]);
            Arc::new(RetryBudget::new(b.ratio, b.min_per_second, exhausted))
        });
        UpstreamTarget {
            metrics: UpstreamMetrics::new(id.clone()),
            id,
            members: ArcSwap::from_pointee(Members::new(&spec, nodes, None)),
            discovered: AtomicU64::new(u64::MAX),
            next_lookup: AtomicU64::new(
                now_ms()
                    + spec
                        .discovery
                        .as_ref()
                        .and_then(|d| d.dns.as_ref())
                        .map_or(0, |d| d.refresh.0.as_millis() as u64),
            ),
            spec,
            tls,
            passive,
            idle_timeout,
            max_idle,
            pool_key: POOL_KEYS.fetch_add(2, Ordering::Relaxed),
            breaker,
            lanes,
            concurrency,
            retry_budget,
        }
    }

    /// Takes over what a changed upstream still shares with `previous`, its version in
    /// force: an edit of `lb`, `pool` or health settings must not empty a registry-fed
    /// upstream until discovery refills it (every request would get 503 meanwhile), nor
    /// forget which nodes are failing or that the circuit is open.
    ///
    /// - nodes from the same registry query are taken as they are, with their generation;
    /// - other nodes that stay (same address and weight) keep their state;
    /// - the breaker is kept while `circuit_breaker` is unchanged.
    pub fn carry_over(mut self, previous: &UpstreamTarget) -> UpstreamTarget {
        let old = previous.members.load();
        let same_query = self.spec.scheme == previous.spec.scheme
            && self.spec.discovery == previous.spec.discovery
            && self
                .spec
                .discovery
                .as_ref()
                .is_some_and(|d| d.service.is_some());
        let nodes: Vec<Arc<Node>> = if same_query {
            // New lane rules put the same instances in other lanes: the nodes serve on until
            // discovery, not told it has seen this generation, works them out again.
            if self.spec.lanes == previous.spec.lanes {
                self.discovered = AtomicU64::new(previous.discovered.load(Ordering::Acquire));
            }
            old.nodes.to_vec()
        } else {
            self.members
                .load()
                .nodes
                .iter()
                .map(|node| {
                    old.nodes
                        .iter()
                        .find(|o| {
                            o.addr == node.addr && o.weight == node.weight && o.lane == node.lane
                        })
                        .unwrap_or(node)
                        .clone()
                })
                .collect()
        };
        let same_breaker = self.spec.circuit_breaker == previous.spec.circuit_breaker;
        let kept = same_breaker.then_some(&**old);
        self.members = ArcSwap::from_pointee(Members::new(&self.spec, nodes, kept));
        if same_breaker {
            self.breaker.clone_from(&previous.breaker);
        }
        if self.spec.concurrency == previous.spec.concurrency {
            self.concurrency.clone_from(&previous.concurrency);
        }
        if self.spec.retry_budget == previous.spec.retry_budget {
            self.retry_budget.clone_from(&previous.retry_budget);
        }
        self
    }

    /// Whether a DNS lookup is due at `now`; if so, the next one is scheduled.
    pub(crate) fn lookup_due(&self, now: u64, refresh: u64) -> bool {
        health::claim_due(&self.next_lookup, now, refresh)
    }

    /// The nodes in force now.
    pub fn members(&self) -> Arc<Members> {
        self.members.load_full()
    }

    /// Replaces the nodes with `instances` (from discovery). Nodes that stay keep their
    /// health and in-flight counts. Returns whether anything changed.
    pub fn set_instances(&self, mut instances: Vec<Instance>) -> bool {
        instances.sort();
        instances.dedup();
        let current = self.members.load();
        let same = current.nodes.len() == instances.len()
            && current
                .nodes
                .iter()
                .zip(&instances)
                .all(|(n, i)| n.addr == i.addr && n.weight == i.weight && n.lane == i.lane);
        if same {
            return false;
        }
        let nodes = instances
            .into_iter()
            .map(|i| {
                let same_addr = current
                    .nodes
                    .iter()
                    .find(|n| n.addr == i.addr && n.lane == i.lane);
                match same_addr {
                    Some(n) if n.weight == i.weight => n.clone(),
                    Some(n) => Arc::new(n.reweighted(i.weight)),
                    None => Arc::new(
                        Node::new(i.addr, i.weight, i.addr.to_string().into()).in_lane(i.lane),
                    ),
                }
            })
            .collect();
        self.members
            .store(Arc::new(Members::new(&self.spec, nodes, Some(&current))));
        true
    }

    /// The lane of a request, on an upstream with lanes (counted there); `Ok(None)` on one
    /// without.
    pub fn lane(&self, req: &RequestHeader) -> Result<Option<LaneChoice>, LaneRefusal> {
        let Some(spec) = &self.lanes else {
            return Ok(None);
        };
        let members = self.members.load();
        match &members.lanes {
            Some(groups) => groups.choose(spec, req).map(Some),
            None => Ok(None),
        }
    }

    /// [`UpstreamTarget::pick`] among the nodes of `lane` (`None`: the nodes in no lane,
    /// on an upstream with lanes). A lane gone since it was chosen falls back as a lane
    /// without nodes does.
    pub fn pick_in(
        &self,
        lane: Option<&str>,
        req: &RequestHeader,
        ex: &Exchange,
        avoid: Option<&Node>,
    ) -> Option<Arc<Node>> {
        let members = self.members.load();
        let group = match (&members.lanes, &self.lanes) {
            (Some(groups), Some(spec)) => match groups.members(lane) {
                Some(group) => group,
                None if spec.falls_back() => groups.members(None)?,
                None => return None,
            },
            _ => &**members,
        };
        group.pick(req, ex, avoid).map(|i| group.nodes[i].clone())
    }

    /// The node for a request: a healthy one, other than `avoid` (the node that just
    /// failed) when another healthy node exists. `None` when no node is healthy.
    pub fn pick(
        &self,
        req: &RequestHeader,
        ex: &Exchange,
        avoid: Option<&Node>,
    ) -> Option<Arc<Node>> {
        let members = self.members.load();
        members
            .pick(req, ex, avoid)
            .map(|i| members.nodes[i].clone())
    }

    /// Marks a request as on `node` until the lease is dropped: counted in flight for
    /// `least_conn`, and holding one of the node's kept connections under `pool.max_idle`
    /// (or told to use a one-shot connection). `None` when neither applies.
    pub fn lease(&self, node: &Arc<Node>) -> Option<NodeLease> {
        let counted = self.spec.lb == Balancing::LeastConn;
        if !counted && self.max_idle.is_none() {
            return None;
        }
        if counted {
            node.inflight.fetch_add(1, Ordering::Relaxed);
        }
        let connection = match self.max_idle {
            None => Connection::Pooled,
            Some(cap) if node.kept.take(cap) => Connection::Kept,
            Some(_) => Connection::OneShot,
        };
        Some(NodeLease {
            node: node.clone(),
            counted,
            connection,
        })
    }

    /// Pingora's peer for a request to the node at `addr` holding `lease`: the upstream's
    /// TLS, HTTP version and pool (the caller sets the timeouts).
    pub fn peer(&self, addr: SocketAddr, lease: Option<&NodeLease>) -> HttpPeer {
        let mut peer = match &self.tls {
            Some(tls) => {
                let mut peer = HttpPeer::new(addr, true, tls.sni.clone());
                peer.options.verify_cert = tls.verify;
                peer.options.verify_hostname = tls.verify;
                peer
            }
            None => HttpPeer::new(addr, false, String::new()),
        };
        if self.spec.scheme.grpc() {
            // gRPC is HTTP/2 only: by ALPN over TLS, by prior knowledge without.
            peer.options.set_http_version(2, 2);
        }
        peer.group_key = self.pool_key(lease);
        if let Some(idle) = self.idle_timeout {
            peer.options.idle_timeout = Some(idle);
        }
        peer
    }

    /// The pool key for Pingora (`HttpPeer::group_key`) of a request holding `lease`.
    pub fn pool_key(&self, lease: Option<&NodeLease>) -> u64 {
        match lease {
            Some(l) if l.one_shot() => self.pool_key | 1,
            _ => self.pool_key,
        }
    }

    /// Counts a failed request to `node` for passive health checks.
    pub fn failed(&self, node: &Node) {
        node.health.failed(self.passive.as_ref(), now_ms());
    }
}

/// Where each compiled target's pool keys start; each takes two.
static POOL_KEYS: AtomicU64 = AtomicU64::new(2);

/// Which connection a request may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connection {
    /// Any pooled connection (no `pool.max_idle`).
    Pooled,
    /// One of the node's kept connections, handed back when the request ends.
    Kept,
    /// A connection of its own, closed after the response: the kept ones are all taken.
    OneShot,
}

/// A request on a node; dropping it ends its in-flight count and hands back its kept
/// connection. Dropped with the request's context, after Pingora has put the connection
/// back into its pool.
#[derive(Debug)]
pub struct NodeLease {
    node: Arc<Node>,
    counted: bool,
    connection: Connection,
}

impl NodeLease {
    /// Whether the request must use a connection of its own and close it afterwards.
    pub fn one_shot(&self) -> bool {
        self.connection == Connection::OneShot
    }
}

impl Drop for NodeLease {
    fn drop(&mut self) {
        if self.counted {
            self.node.inflight.fetch_sub(1, Ordering::Relaxed);
        }
        if self.connection == Connection::Kept {
            self.node.kept.hand_back();
        }
    }
}

/// Calls `f` with the bytes of the request's `hash_key`; a request without the key hashes by
/// its client address. The address is hashed as text, formatted on the stack (no allocation
/// per request), whether it is the key or the fallback, so a key's node never depends on
/// which of the two it came from.
fn with_hash_key<R>(
    key: &Selector,
    req: &RequestHeader,
    ex: &Exchange,
    f: impl FnOnce(&[u8]) -> R,
) -> R {
    match key.select_or_client_ip(req, ex) {
        Selected::Text(bytes) => f(bytes),
        Selected::Route(id) => f(id.as_bytes()),
        Selected::ClientIp(ip) => {
            use std::io::Write;
            let mut text = [0u8; 48];
            let mut cursor = std::io::Cursor::new(&mut text[..]);
            let _ = write!(cursor, "{ip}");
            let len = cursor.position() as usize;
            f(&text[..len])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashed(key: &str, req: &RequestHeader, ex: &Exchange) -> Vec<u8> {
        let key = Selector::parse_as(key, HASH_KEY_FORMS).unwrap();
        with_hash_key(&key, req, ex, <[u8]>::to_vec)
    }

    #[test]
    fn the_hash_key_is_the_value_or_else_the_client_address_as_text() {
        let mut req = RequestHeader::build("GET", b"/users/7?uid=q1", None).unwrap();
        req.append_header("x-user-id", "u1").unwrap();
        req.append_header("x-blank", "").unwrap();
        req.append_header("cookie", "uid=c1").unwrap();
        let mut ex = Exchange::new("r".into(), "id".into(), "2001:db8::7".parse().unwrap());
        assert_eq!(hashed("header:X-User-Id", &req, &ex), b"u1");
        assert_eq!(hashed("cookie:uid", &req, &ex), b"c1");
        assert_eq!(hashed("query:uid", &req, &ex), b"q1");
        assert_eq!(hashed("path", &req, &ex), b"/users/7");
        assert_eq!(hashed("client_ip", &req, &ex), b"2001:db8::7");
        for absent in [
            "header:X-Other",
            "header:X-Blank",
            "cookie:x",
            "query:x",
            "consumer",
        ] {
            assert_eq!(hashed(absent, &req, &ex), b"2001:db8::7", "{absent}");
        }
        ex.consumer = Some("alice".into());
        assert_eq!(hashed("consumer", &req, &ex), b"alice");
    }

    #[test]
    fn a_consistent_hash_upstream_keeps_its_parsed_key() {
        let spec: Upstream = serde_yaml::from_str(
            "id: u\nnodes: [{ addr: \"127.0.0.1:1\" }, { addr: \"127.0.0.1:2\" }]\nlb: consistent_hash\nhash_key: header:X-User-Id\n",
        )
        .unwrap();
        let target = UpstreamTarget::compile(Arc::new(spec));
        let members = target.members();
        let Balance::Hash { key, .. } = &members.balance else {
            panic!("{:?}", members.balance)
        };
        assert_eq!(
            *key,
            Selector::Header(http::HeaderName::from_static("x-user-id"))
        );
        // The same key always reaches the same node.
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("x-user-id", "u1").unwrap();
        let ex = Exchange::new("r".into(), "id".into(), "10.0.0.1".parse().unwrap());
        let first = target.pick(&req, &ex, None).unwrap().addr;
        for _ in 0..10 {
            assert_eq!(target.pick(&req, &ex, None).unwrap().addr, first);
        }
    }
}
