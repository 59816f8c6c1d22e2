//! The `Upstream` resource: a named set of nodes and how to pick one.

use super::fields::{Problems, SelectorText, Text};
use crate::units::Span;
use gatehouse_plugins::selector::{Forms, SelectorKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<Discovery>,
    #[serde(default)]
    pub scheme: Scheme,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    #[serde(default)]
    pub lb: Balancing,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<SelectorText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Pool>,
    /// Traffic lanes (SPEC §10): a tagged request goes to its lane's nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lanes: Option<Lanes>,
    /// How many requests may be in flight to the upstream at once (SPEC §11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// How many retries the upstream takes, as a share of its requests (SPEC §11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// A cap on the requests in flight to an upstream: fixed, or found from latency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveConcurrency>,
}

/// The bounds of a limit the gateway finds from the upstream's latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConcurrency {
    pub min: u32,
    pub max: u32,
}

/// Retries stay under `ratio` of the upstream's requests, plus `min_per_second` so a
/// quiet upstream can still be retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    pub ratio: f64,
    #[serde(default = "RetryBudget::default_min_per_second")]
    pub min_per_second: u32,
}

impl RetryBudget {
    fn default_min_per_second() -> u32 {
        10
    }
}

/// Which request header names a lane, which node metadata key a node's lane is, and what
/// a request tagged with a lane that has no node gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lanes {
    #[serde(default = "Lanes::default_header")]
    pub header: String,
    #[serde(default = "Lanes::default_metadata")]
    pub metadata: String,
    #[serde(default)]
    pub fallback: LaneFallback,
}

impl Lanes {
    fn default_header() -> String {
        "X-Traffic-Tag".into()
    }
    fn default_metadata() -> String {
        "lane".into()
    }
}

/// Where a request tagged with a lane that has no node goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LaneFallback {
    /// To the nodes that are in no lane.
    #[default]
    Baseline,
    /// Nowhere: 503 `no_upstream`.
    Refuse,
}

/// The longest lane tag a request may carry.
pub const MAX_LANE_TAG: usize = 128;

/// The selectors `hash_key` takes: anything a request carries except the route, which
/// would send every request to one node.
pub const HASH_KEY_FORMS: Forms = Forms(&[
    SelectorKind::ClientIp,
    SelectorKind::Consumer,
    SelectorKind::Path,
    SelectorKind::Header,
    SelectorKind::Cookie,
    SelectorKind::Query,
]);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// `host:port`; a host name is resolved when the upstream is compiled.
    pub addr: String,
    #[serde(default = "one")]
    pub weight: u32,
    /// What the registry's metadata says of an instance, for a static node: its lane.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, Text>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsDiscovery>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsDiscovery {
    pub name: String,
    pub port: u16,
    #[serde(default = "default_dns_refresh")]
    pub refresh: Span,
}

fn default_dns_refresh() -> Span {
    Span::secs(5)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    #[default]
    Http,
    Https,
    /// gRPC: HTTP/2 without TLS, by prior knowledge (h2c).
    Grpc,
    /// gRPC over TLS: HTTP/2 chosen by ALPN `h2`.
    Grpcs,
}

impl Scheme {
    /// Whether nodes are reached over TLS.
    pub fn tls(self) -> bool {
        matches!(self, Scheme::Https | Scheme::Grpcs)
    }

    /// Whether nodes speak gRPC, and so HTTP/2 only.
    pub fn grpc(self) -> bool {
        matches!(self, Scheme::Grpc | Scheme::Grpcs)
    }

    /// The scheme of the registry endpoints this upstream takes (`grpc://`, ...).
    pub fn endpoint_prefix(self) -> &'static str {
        match self {
            Scheme::Http => "http://",
            Scheme::Https => "https://",
            Scheme::Grpc => "grpc://",
            Scheme::Grpcs => "grpcs://",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(default = "yes")]
    pub verify: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balancing {
    #[default]
    RoundRobin,
    Random,
    LeastConn,
    ConsistentHash,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveCheck>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveCheck {
    /// `GET path` for HTTP upstreams.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// The service `grpc.health.v1.Health/Check` asks about, for gRPC upstreams (`""`, the
    /// server as a whole, by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub interval: Span,
    pub timeout: Span,
    pub healthy: u32,
    pub unhealthy: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveCheck {
    pub max_fails: u32,
    pub fail_timeout: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    pub error_rate: f64,
    pub min_requests: u32,
    pub window: Span,
    pub open_for: Span,
    /// Also open when this share of the window's calls took longer than `threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_call: Option<SlowCall>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowCall {
    pub threshold: Span,
    pub ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Span>,
}

impl Upstream {
    pub(super) fn check(&self, p: &mut Problems) {
        match (&self.discovery, self.nodes.is_empty()) {
            (None, true) => p.add("nodes", "give static `nodes` or a `discovery` source"),
            (Some(_), false) => p.add("nodes", "give either `nodes` or `discovery`, not both"),
            _ => {}
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if let Err(e) = split_host_port(&node.addr) {
                p.add(format!("nodes[{i}].addr"), e);
            }
            if node.weight == 0 || node.weight > 10_000 {
                p.add(format!("nodes[{i}].weight"), "must be between 1 and 10000");
            }
            for (key, value) in &node.metadata {
                if key.is_empty() {
                    p.add(format!("nodes[{i}].metadata"), "a key must not be empty");
                }
                if value.as_str().len() > MAX_LANE_TAG {
                    p.add(
                        format!("nodes[{i}].metadata.{key}"),
                        format!("at most {MAX_LANE_TAG} bytes"),
                    );
                }
            }
        }
        if let Some(lanes) = &self.lanes {
            if let Err(e) = super::fields::check_header_name(&lanes.header) {
                p.add("lanes.header", e);
            }
            if lanes.metadata.is_empty() {
                p.add("lanes.metadata", "must name a metadata key");
            }
        }
        if let Some(d) = &self.discovery {
            match (&d.service, &d.dns) {
                (None, None) => p.add("discovery", "give `service` or `dns`"),
                (Some(_), Some(_)) => p.add("discovery", "give `service` or `dns`, not both"),
                _ => {}
            }
            if let Some(dns) = &d.dns {
                if dns.name.is_empty() {
                    p.add("discovery.dns.name", "must not be empty");
                }
                if dns.port == 0 {
                    p.add("discovery.dns.port", "must be a port number");
                }
                if dns.refresh.0.is_zero() {
                    p.add("discovery.dns.refresh", "must be more than 0s");
                }
            }
        }
        if self.tls.is_some() && !self.scheme.tls() {
            p.add("tls", "only applies with `scheme: https` or `grpcs`");
        }
        match (&self.lb, &self.hash_key) {
            (Balancing::ConsistentHash, None) => {
                p.add("hash_key", "is required with `lb: consistent_hash`")
            }
            (Balancing::ConsistentHash, Some(key)) => {
                if let Err(e) = key.selector(HASH_KEY_FORMS) {
                    p.add("hash_key", e.to_string());
                }
            }
            (_, Some(_)) => p.add("hash_key", "only applies with `lb: consistent_hash`"),
            _ => {}
        }
        if let Some(hc) = &self.health_check {
            if let Some(a) = &hc.active {
                if self.scheme.grpc() {
                    if !a.path.is_empty() {
                        p.add(
                            "health_check.active.path",
                            "a gRPC upstream is checked with grpc.health.v1: give `service` instead",
                        );
                    }
                } else {
                    if !a.path.starts_with('/') {
                        p.add("health_check.active.path", "must start with `/`");
                    }
                    if a.service.is_some() {
                        p.add(
                            "health_check.active.service",
                            "only applies with `scheme: grpc` or `grpcs`",
                        );
                    }
                }
                if a.interval.0.is_zero() || a.timeout.0.is_zero() {
                    p.add(
                        "health_check.active",
                        "interval and timeout must be more than 0s",
                    );
                }
                if a.healthy == 0 || a.unhealthy == 0 {
                    p.add(
                        "health_check.active",
                        "healthy and unhealthy must be at least 1",
                    );
                }
            }
            if let Some(passive) = &hc.passive {
                if passive.max_fails == 0 {
                    p.add("health_check.passive.max_fails", "must be at least 1");
                }
            }
        }
        if let Some(idle) = self.pool.as_ref().and_then(|p| p.idle_timeout) {
            if idle.0.is_zero() {
                p.add("pool.idle_timeout", "must be more than 0s");
            }
        }
        if let Some(cb) = &self.circuit_breaker {
            if !(cb.error_rate > 0.0 && cb.error_rate <= 1.0) {
                p.add("circuit_breaker.error_rate", "must be in (0, 1]");
            }
            if cb.window.0.is_zero() || cb.open_for.0.is_zero() {
                p.add(
                    "circuit_breaker",
                    "window and open_for must be more than 0s",
                );
            }
            if let Some(slow) = &cb.slow_call {
                if slow.threshold.0.is_zero() {
                    p.add(
                        "circuit_breaker.slow_call.threshold",
                        "must be more than 0s",
                    );
                }
                if !(slow.ratio > 0.0 && slow.ratio <= 1.0) {
                    p.add("circuit_breaker.slow_call.ratio", "must be in (0, 1]");
                }
            }
        }
        if let Some(c) = &self.concurrency {
            match (c.max, &c.adaptive) {
                (None, None) => p.add("concurrency", "give `max` or `adaptive`"),
                (Some(_), Some(_)) => p.add("concurrency", "give `max` or `adaptive`, not both"),
                (Some(0), None) => p.add("concurrency.max", "must be at least 1"),
                (None, Some(a)) => {
                    if a.min == 0 {
                        p.add("concurrency.adaptive.min", "must be at least 1");
                    }
                    if a.min > a.max {
                        p.add(
                            "concurrency.adaptive.min",
                            format!("must not be more than `max` ({})", a.max),
                        );
                    }
                }
                _ => {}
            }
        }
        if let Some(budget) = &self.retry_budget {
            if !(0.0..=1.0).contains(&budget.ratio) {
                p.add("retry_budget.ratio", "must be between 0 and 1");
            }
        }
    }
}

/// Splits `host:port` (or `[v6]:port`); the port is required.
pub fn split_host_port(addr: &str) -> Result<(&str, u16), String> {
    let bad = || format!("`{addr}` is not host:port");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok((host, port))
}
