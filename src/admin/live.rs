//! `GET /admin/live`: what the upstreams are doing now, as the dashboard shows it — each
//! node's health and requests in flight, the breaker's state, the concurrency limit. Read
//! from the snapshot in force when asked; nothing is kept for it.

use crate::snapshot::Snapshot;
use serde::Serialize;

#[derive(Serialize)]
pub struct UpstreamLive {
    pub id: String,
    /// `closed`, `open` or `half_open`; absent without `circuit_breaker`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencyLive>,
    pub nodes: Vec<NodeLive>,
}

#[derive(Serialize)]
pub struct ConcurrencyLive {
    pub limit: u32,
    pub in_flight: u32,
}

#[derive(Serialize)]
pub struct NodeLive {
    pub addr: String,
    /// The node as configured (`host:port`) or discovered.
    pub label: String,
    pub weight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lane: Option<String>,
    pub healthy: bool,
    pub in_flight: u32,
}

/// Every upstream in force, by id.
pub fn upstreams(snapshot: &Snapshot) -> Vec<UpstreamLive> {
    let now = crate::upstream::now_ms();
    let mut out: Vec<UpstreamLive> = snapshot
        .upstreams
        .iter()
        .map(|(id, target)| UpstreamLive {
            id: id.clone(),
            breaker: target.breaker.as_ref().map(|b| b.state_name()),
            concurrency: target.concurrency.as_ref().map(|c| ConcurrencyLive {
                limit: c.limit(),
                in_flight: c.inflight(),
            }),
            nodes: target
                .members()
                .nodes
                .iter()
                .map(|node| NodeLive {
                    addr: node.addr.to_string(),
                    label: node.label.to_string(),
                    weight: node.weight,
                    lane: node.lane.as_ref().map(|l| l.to_string()),
                    healthy: node.health.is_up(now),
                    in_flight: node.inflight.load(std::sync::atomic::Ordering::Relaxed),
                })
                .collect(),
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}
