//! Active health checks (`health_check.active`): a background service that sends each node
//! of each upstream an HTTP `GET path` every `interval`, and takes a node out after
//! `unhealthy` failed probes in a row (back in after `healthy` good ones). A probe passes
//! with a 2xx or 3xx answer within `timeout`.
//!
//! The service follows the snapshot in force: an upstream that appears is probed from its
//! next tick, one that goes away is forgotten, and an unchanged upstream keeps its nodes'
//! verdicts across reloads (they live in the nodes). Probes of `https` nodes check that the
//! node answers over TLS, not its certificate: the proxied requests verify that.
//!
//! Nodes of a gRPC upstream are asked `grpc.health.v1.Health/Check` (for `service`, the
//! whole server by default) over HTTP/2 instead, and pass when they answer SERVING.

use super::{grpc_health, now_ms, InForce, UpstreamTarget};
use crate::resource::{ActiveCheck, Scheme};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// How often due probes are looked for.
const TICK: Duration = Duration::from_millis(100);

pub struct Prober {
    live: Arc<dyn InForce>,
    plain: reqwest::Client,
    tls: reqwest::Client,
    /// HTTP/2 by prior knowledge, for `scheme: grpc`.
    grpc: reqwest::Client,
}

impl Prober {
    pub fn new(live: Arc<dyn InForce>) -> anyhow::Result<Prober> {
        let builder = || {
            reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(1)
        };
        Ok(Prober {
            live,
            plain: builder().build()?,
            tls: builder().danger_accept_invalid_certs(true).build()?,
            grpc: builder().http2_prior_knowledge().build()?,
        })
    }

    fn probe_due(&self, upstream: &Arc<UpstreamTarget>, check: &ActiveCheck, now: u64) {
        let interval = check.interval.0.as_millis() as u64;
        for node in upstream.members().nodes.iter() {
            if !node.health.probe_due(now, interval) {
                continue;
            }
            let scheme = upstream.spec.scheme;
            let request = if scheme.grpc() {
                // A `grpcs` node negotiates HTTP/2 by ALPN on the TLS client.
                let client = if scheme.tls() { &self.tls } else { &self.grpc };
                let base = if scheme.tls() { "https" } else { "http" };
                client
                    .post(format!("{base}://{}{}", node.addr, grpc_health::PATH))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(grpc_health::request(check.service.as_deref().unwrap_or("")))
            } else {
                let https = scheme == Scheme::Https;
                let client = if https { &self.tls } else { &self.plain };
                let url = format!(
                    "{}://{}{}",
                    if https { "https" } else { "http" },
                    node.addr,
                    check.path
                );
                client.get(url)
            }
            .timeout(check.timeout.0);
            let (upstream, node, check) = (upstream.clone(), node.clone(), check.clone());
            tokio::spawn(async move {
                let ok = match request.send().await {
                    Ok(resp) if scheme.grpc() => grpc_health::passed(resp).await,
                    Ok(resp) => resp.status().is_success() || resp.status().is_redirection(),
                    Err(_) => false,
                };
                if let Some(up) = node.health.probed(ok, check.healthy, check.unhealthy) {
                    if up {
                        tracing::info!(upstream = %upstream.id, node = %node.addr, "node healthy again");
                    } else {
                        tracing::warn!(upstream = %upstream.id, node = %node.addr, "node failed its health checks");
                    }
                }
            });
        }
    }
}

#[async_trait]
impl BackgroundService for Prober {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = every.tick() => {
                    let now = now_ms();
                    for upstream in self.live.upstreams() {
                        let active = upstream.spec.health_check.as_ref().and_then(|h| h.active.as_ref());
                        if let Some(check) = active {
                            self.probe_due(&upstream, check, now);
                        }
                    }
                }
            }
        }
    }
}
