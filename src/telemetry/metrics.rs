//! Prometheus metrics, served as text on the admin listener's `/metrics`.

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::Histogram;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};

/// The gateway's metrics, registered once.
pub struct Metrics {
    registry: Registry,
    /// The revision of the configuration in force (etcd's, or a count of file changes).
    pub config_revision: IntGauge,
    /// Objects the last change could not apply (listed by `/admin/status`).
    pub config_rejected: IntGauge,
    /// Configuration changes applied.
    pub config_reloads: IntCounter,
    /// 1 while the provider is connected to its source and trusts it, else 0 (the snapshot
    /// in force is then the last one the source gave; `/admin/status` says why).
    pub config_source_up: IntGauge,
    /// Requests refused by a route's rate limit, by route id.
    pub rate_limited: IntCounterVec,
    /// Requests refused by a route's auth policy, by route id and reason (a fixed set:
    /// missing_token, expired, bad_signature, insufficient_scope, ...).
    pub auth_failures: IntCounterVec,
    /// Requests a plugin failed on (a Wasm trap, timeout or memory limit), by plugin name,
    /// whether the request then ended with 500 or passed (`fail_open`).
    pub plugin_errors: IntCounterVec,
    /// WebSocket tunnels open, by route id.
    pub websocket_connections: IntGaugeVec,
    pub lane_requests: IntCounterVec,
    /// The concurrency limit in force, by upstream id (SPEC §11).
    pub concurrency_limit: IntGaugeVec,
    /// Requests refused past an upstream's concurrency limit, by upstream id.
    pub overloaded: IntCounterVec,
    /// Retries a retry budget did not allow, by upstream id.
    pub retry_budget_exhausted: IntCounterVec,
    /// Requests answered with their route's fallback, by route id and reason.
    pub fallback: IntCounterVec,
    /// Requests answered, by route id (empty when none matched) and status code.
    pub requests: IntCounterVec,
    /// From a request's arrival to its last byte, by route id.
    pub request_duration: HistogramVec,
    /// From sending a request upstream to receiving the response head, by upstream id.
    pub upstream_duration: HistogramVec,
    /// 1 while a node takes traffic, 0 while it is ejected, by upstream id and node address.
    pub node_healthy: IntGaugeVec,
    /// Spans sent to the OTLP endpoint.
    pub spans_exported: IntCounter,
    /// Spans lost: the export queue was full or the endpoint failed.
    pub spans_dropped: IntCounter,
    /// Access log lines lost because the writer could not keep up.
    pub access_log_dropped: IntCounter,
}

/// Latency buckets in seconds, from half a millisecond to a minute.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

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
    let config_source_up = IntGauge::new(
        "gatehouse_config_source_up",
        "1 while the configuration source is connected and trusted, else 0",
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
    let plugin_errors = IntCounterVec::new(
        Opts::new(
            "gatehouse_plugin_errors_total",
            "Requests a plugin failed on (trap, timeout, memory limit)",
        ),
        &["plugin"],
    )
    .expect("valid metric");
    let websocket_connections = IntGaugeVec::new(
        Opts::new("gatehouse_websocket_connections", "WebSocket tunnels open"),
        &["route"],
    )
    .expect("valid metric");
    let lane_requests = IntCounterVec::new(
        Opts::new(
            "gatehouse_lane_requests_total",
            "Requests sent to an upstream with lanes, by the lane they went to",
        ),
        &["upstream", "lane"],
    )
    .expect("valid metric");
    let concurrency_limit = IntGaugeVec::new(
        Opts::new(
            "gatehouse_upstream_concurrency_limit",
            "Requests an upstream may have in flight at once",
        ),
        &["upstream"],
    )
    .expect("valid metric");
    let overloaded = IntCounterVec::new(
        Opts::new(
            "gatehouse_overloaded_total",
            "Requests refused past an upstream's concurrency limit",
        ),
        &["upstream"],
    )
    .expect("valid metric");
    let retry_budget_exhausted = IntCounterVec::new(
        Opts::new(
            "gatehouse_retry_budget_exhausted_total",
            "Retries an upstream's retry budget did not allow",
        ),
        &["upstream"],
    )
    .expect("valid metric");
    let fallback = IntCounterVec::new(
        Opts::new(
            "gatehouse_fallback_total",
            "Requests answered with their route's fallback",
        ),
        &["route", "reason"],
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
    let requests = IntCounterVec::new(
        Opts::new("gatehouse_requests_total", "Requests answered"),
        &["route", "status"],
    )
    .expect("valid metric");
    let request_duration = HistogramVec::new(
        HistogramOpts::new(
            "gatehouse_request_duration_seconds",
            "Time from a request's arrival to its last byte",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
        &["route"],
    )
    .expect("valid metric");
    let upstream_duration = HistogramVec::new(
        HistogramOpts::new(
            "gatehouse_upstream_duration_seconds",
            "Time from sending a request upstream to receiving the response head",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
        &["upstream"],
    )
    .expect("valid metric");
    let node_healthy = IntGaugeVec::new(
        Opts::new(
            "gatehouse_upstream_node_healthy",
            "1 while an upstream node takes traffic, 0 while it is ejected",
        ),
        &["upstream", "node"],
    )
    .expect("valid metric");
    let spans_exported = IntCounter::new(
        "gatehouse_trace_spans_exported_total",
        "Spans sent to the OTLP endpoint",
    )
    .expect("valid metric");
    let spans_dropped = IntCounter::new(
        "gatehouse_trace_spans_dropped_total",
        "Spans lost because the export queue was full or the endpoint failed",
    )
    .expect("valid metric");
    let access_log_dropped = IntCounter::new(
        "gatehouse_access_log_dropped_total",
        "Access log lines lost because the writer could not keep up",
    )
    .expect("valid metric");
    for metric in [
        Box::new(config_revision.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(config_rejected.clone()),
        Box::new(config_reloads.clone()),
        Box::new(config_source_up.clone()),
        Box::new(rate_limited.clone()),
        Box::new(auth_failures.clone()),
        Box::new(plugin_errors.clone()),
        Box::new(websocket_connections.clone()),
        Box::new(lane_requests.clone()),
        Box::new(concurrency_limit.clone()),
        Box::new(overloaded.clone()),
        Box::new(retry_budget_exhausted.clone()),
        Box::new(fallback.clone()),
        Box::new(requests.clone()),
        Box::new(request_duration.clone()),
        Box::new(upstream_duration.clone()),
        Box::new(node_healthy.clone()),
        Box::new(spans_exported.clone()),
        Box::new(spans_dropped.clone()),
        Box::new(access_log_dropped.clone()),
        Box::new(prometheus::process_collector::ProcessCollector::for_self()),
    ] {
        registry.register(metric).expect("registered once");
    }
    Metrics {
        registry,
        config_revision,
        config_rejected,
        config_reloads,
        config_source_up,
        rate_limited,
        auth_failures,
        plugin_errors,
        websocket_connections,
        lane_requests,
        concurrency_limit,
        overloaded,
        retry_budget_exhausted,
        fallback,
        requests,
        request_duration,
        upstream_duration,
        node_healthy,
        spans_exported,
        spans_dropped,
        access_log_dropped,
    }
});

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut families = self.registry.gather();
        families.extend(gatehouse_plugins::metrics::REGISTRY.gather());
        let _ = TextEncoder::new().encode(&families, &mut out);
        out
    }
}

/// Routes and upstreams that left the configuration, whose series go with them.
#[derive(Debug)]
pub struct Departed<'a> {
    pub routes: HashSet<&'a str>,
    pub upstreams: HashSet<&'a str>,
}

impl Departed<'_> {
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.upstreams.is_empty()
    }
}

impl Metrics {
    /// Drops every series labelled with a route or upstream that left the configuration.
    /// A platform that adds and removes routes with each release would otherwise grow
    /// `/metrics`, and the gateway's memory, without end. Runs when a change is applied,
    /// never on the request path. What still ends on a removed route is not counted: its
    /// `RouteMetrics` are retired first, so nothing brings a series back.
    pub fn forget(&self, departed: &Departed) {
        let routes = &departed.routes;
        // Labelled by the route alone: removed by name, without listing the series (the
        // latency histograms are the largest).
        forget_named(&self.rate_limited, routes);
        forget_named(&self.websocket_connections, routes);
        forget_named(&self.request_duration, routes);
        // Labelled by the route and a value of a small set.
        let plugins = gatehouse_plugins::metrics::route_labelled();
        for vec in [&self.requests, &self.auth_failures, &self.fallback]
            .into_iter()
            .chain(plugins)
        {
            forget_in(vec, "route", routes);
        }
        let upstreams = &departed.upstreams;
        forget_named(&self.upstream_duration, upstreams);
        for vec in [&self.overloaded, &self.retry_budget_exhausted] {
            forget_named(vec, upstreams);
        }
        forget_in(&self.lane_requests, "upstream", upstreams);
    }
}

/// Removes the series of a vector labelled by one name alone, for each of `gone`.
fn forget_named<T: MetricVecBuilder>(vec: &MetricVec<T>, gone: &HashSet<&str>) {
    for id in gone {
        // Never resolved (no request counted there): nothing to remove.
        let _ = vec.remove_label_values(&[*id]);
    }
}

/// Removes the series of `vec` whose `label` is one of `gone`.
fn forget_in<T: MetricVecBuilder>(vec: &MetricVec<T>, label: &str, gone: &HashSet<&str>) {
    if gone.is_empty() {
        return;
    }
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|pair| (pair.name(), pair.value()))
                .collect();
            if labels.get(label).is_some_and(|value| gone.contains(value)) {
                // Gone already if another change removed it meanwhile: nothing to do.
                let _ = vec.remove(&labels);
            }
        }
    }
}

/// One open WebSocket tunnel, counted in `gatehouse_websocket_connections{route}` until it
/// is dropped. The close takes back the very gauge the open added to: looked up again by
/// label, it would bring back (at -1) the series of a route removed meanwhile.
pub struct OpenTunnel(IntGauge);

impl OpenTunnel {
    pub fn open(route: &str) -> OpenTunnel {
        let gauge = METRICS.websocket_connections.with_label_values(&[route]);
        gauge.inc();
        OpenTunnel(gauge)
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Status codes whose counters a route resolves once and keeps; others are looked up by
/// label each time (rare codes, so the lookup cost is rare too).
const COMMON_STATUSES: [u16; 16] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 429, 499, 500, 502, 503, 504,
];

/// A route's request metrics, resolved lazily and then kept, so recording a request costs
/// no label hashing.
pub struct RouteMetrics {
    route: Arc<str>,
    duration: OnceLock<Histogram>,
    statuses: [OnceLock<IntCounter>; COMMON_STATUSES.len()],
    /// The route left the configuration: what still ends on it (a WebSocket tunnel, a
    /// request in flight) is no longer counted, which would bring its series back.
    retired: AtomicBool,
}

impl RouteMetrics {
    pub fn new(route: Arc<str>) -> RouteMetrics {
        RouteMetrics {
            route,
            duration: OnceLock::new(),
            statuses: Default::default(),
            retired: AtomicBool::new(false),
        }
    }

    /// The route is gone: count nothing more (its series are being removed).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Counts one answered request.
    pub fn observe(&self, status: u16, seconds: f64) {
        if self.retired.load(Ordering::Relaxed) {
            return;
        }
        let metrics = &*METRICS;
        self.duration
            .get_or_init(|| metrics.request_duration.with_label_values(&[&*self.route]))
            .observe(seconds);
        let counter = || {
            metrics
                .requests
                .with_label_values(&[&*self.route, &status.to_string()])
        };
        match COMMON_STATUSES.iter().position(|&s| s == status) {
            Some(i) => self.statuses[i].get_or_init(counter).inc(),
            None => counter().inc(),
        }
    }
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

/// An upstream's latency histogram, resolved once.
pub struct UpstreamMetrics {
    upstream: Arc<str>,
    duration: OnceLock<Histogram>,
}

impl UpstreamMetrics {
    pub fn new(upstream: Arc<str>) -> UpstreamMetrics {
        UpstreamMetrics {
            upstream,
            duration: OnceLock::new(),
        }
    }

    pub fn observe(&self, seconds: f64) {
        self.duration
            .get_or_init(|| {
                METRICS
                    .upstream_duration
                    .with_label_values(&[&*self.upstream])
            })
            .observe(seconds);
    }
}

impl std::fmt::Debug for UpstreamMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamMetrics")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}
