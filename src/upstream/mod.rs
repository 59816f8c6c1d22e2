//! Upstreams as the proxy uses them: resolved nodes and a picker.

mod balance;
mod choice;

pub use balance::{smooth_schedule, Picker};
pub use choice::UpstreamChoice;

use crate::resource::{split_host_port, Balancing, Scheme, Upstream};
use crate::telemetry::metrics::UpstreamMetrics;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

/// One instance requests can be sent to.
#[derive(Debug, Clone)]
pub struct Node {
    pub addr: SocketAddr,
    pub weight: u32,
    /// The node as configured (`host:port`), for logs and metrics.
    pub label: Arc<str>,
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
    picker: Picker,
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
                    nodes.extend(addrs.map(|addr| Node {
                        addr,
                        weight: node.weight,
                        label: label.clone(),
                    }))
                }
                Err(e) => tracing::warn!(upstream = %spec.id, "node left out: {e}"),
            }
        }
        let weights: Vec<u32> = nodes.iter().map(|n| n.weight).collect();
        let picker = match spec.lb {
            Balancing::Random => Picker::random(&weights),
            _ => Picker::round_robin(&weights),
        };
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
            picker,
        }
    }

    /// The node for the next request.
    pub fn pick(&self) -> Option<&Node> {
        self.picker.pick().map(|i| &self.nodes[i])
    }
}
