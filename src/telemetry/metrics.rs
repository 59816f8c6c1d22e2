//! Prometheus metrics, served as text on the admin listener's `/metrics`.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use std::sync::LazyLock;

/// The gateway's metrics, registered once.
pub struct Metrics {
    registry: Registry,
    /// The revision of the configuration in force (etcd's, or a count of file changes).
    pub config_revision: IntGauge,
    /// Objects the last change could not apply (listed by `/admin/status`).
    pub config_rejected: IntGauge,
    /// Configuration changes applied.
    pub config_reloads: IntCounter,
    /// Requests refused by a route's rate limit, by route id.
    pub rate_limited: IntCounterVec,
    /// Requests refused by a route's auth policy, by route id and reason (a fixed set:
    /// missing_token, expired, bad_signature, insufficient_scope, ...).
    pub auth_failures: IntCounterVec,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let config_revision = IntGauge::new(
        "gatehouse_config_revision",
        "Revision of the configuration in force",
    )
    .expect("valid metric");
    let config_rejected = IntGauge::new(
        "gatehouse_config_rejected",
        "Resources or changes rejected by the last configuration change",
    )
    .expect("valid metric");
    let config_reloads = IntCounter::new(
        "gatehouse_config_reloads_total",
        "Configuration changes applied",
    )
    .expect("valid metric");
    let rate_limited = IntCounterVec::new(
        Opts::new(
            "gatehouse_rate_limited_total",
            "Requests refused by a rate limit",
        ),
        &["route"],
    )
    .expect("valid metric");
    let auth_failures = IntCounterVec::new(
        Opts::new(
            "gatehouse_auth_failures_total",
            "Requests refused by an auth policy",
        ),
        &["route", "reason"],
    )
    .expect("valid metric");
    for metric in [
        Box::new(config_revision.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(config_rejected.clone()),
        Box::new(config_reloads.clone()),
        Box::new(rate_limited.clone()),
        Box::new(auth_failures.clone()),
    ] {
        registry.register(metric).expect("registered once");
    }
    Metrics {
        registry,
        config_revision,
        config_rejected,
        config_reloads,
        rate_limited,
        auth_failures,
    }
});

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
