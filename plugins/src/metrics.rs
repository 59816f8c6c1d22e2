//! The metrics built-in plugins keep themselves, in a registry of their own that the
//! gateway's `/metrics` serves beside its own: what they count happens off the request
//! path too (a mirror copy's outcome), where the gateway does not see it.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use std::sync::LazyLock;

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// `gatehouse_mirror_requests_total{route,result}`: `sent`, `failed`, `dropped`.
pub static MIRROR_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "gatehouse_mirror_requests_total",
        "Request copies the mirror plugin sent, failed to send, or dropped",
        &["route", "result"],
    )
});

/// `gatehouse_faults_injected_total{route,fault}`: `abort`, `delay`.
pub static FAULTS_INJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "gatehouse_faults_injected_total",
        "Faults the fault plugin injected",
        &["route", "fault"],
    )
});

/// `gatehouse_rate_limit_store_errors_total`: requests a `scope: cluster` limit decided
/// without the shared store (by `on_store_error`), because it failed or did not answer.
pub static RATE_LIMIT_STORE_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    let counter = IntCounter::new(
        "gatehouse_rate_limit_store_errors_total",
        "Requests a cluster rate limit decided without its shared store",
    )
    .expect("valid metric");
    REGISTRY
        .register(Box::new(counter.clone()))
        .expect("registered once");
    counter
});

/// The plugins' series labelled by route, for the gateway to drop when a route is removed.
pub fn route_labelled() -> [&'static IntCounterVec; 2] {
    [&MIRROR_REQUESTS, &FAULTS_INJECTED]
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let counter = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    REGISTRY
        .register(Box::new(counter.clone()))
        .expect("registered once");
    counter
}
