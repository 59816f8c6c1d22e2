//! What the gateway keeps about one request between Pingora's phases.

use super::attempt::Attempts;
use super::head_watch::Ticket;
use super::inflight::InFlightGuard;
use crate::snapshot::CompiledRoute;
use crate::telemetry::metrics::{OpenTunnel, RouteMetrics};
use crate::telemetry::trace::RequestTrace;
use gatehouse_plugins::{Exchange, Flow};
use http::HeaderValue;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

/// The metrics of requests no route matched.
pub(super) static NO_ROUTE_METRICS: LazyLock<RouteMetrics> =
    LazyLock::new(|| RouteMetrics::new(NO_ROUTE_ID.clone()));

pub(super) static NO_ROUTE_ID: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));

/// What the gateway keeps about one request between phases.
pub struct RequestCtx {
    pub exchange: Exchange,
    /// The matched route; it holds everything it needs, so the snapshot it came from can be
    /// swapped out mid-request without affecting it.
    pub route: Option<Arc<CompiledRoute>>,
    /// The upstream chosen for this request (canary, split or default), and the request's
    /// attempts at it.
    pub(super) attempts: Option<Attempts>,
    /// The client sent a sane `X-Request-Id`: it already travels upstream as it is.
    pub id_from_client: bool,
    /// The request id as a header value, made once for the upstream request and the response.
    pub(super) request_id_value: Option<HeaderValue>,
    /// When the request arrived: for its duration, its log line and its span (the wall
    /// clock time is worked out from it at the end, and only when a log or span needs it:
    /// the context is copied with Pingora's request future, so every byte counts).
    pub arrived: Instant,
    /// The request's trace context, once its head was read.
    pub trace: Option<RequestTrace>,
    /// The clock of the upstream response head being awaited.
    pub(super) head_clock: Option<Ticket>,
    /// A plugin refused the request (while its body streamed, or on seeing the upstream's
    /// answer): the answer it gets instead, a `Flow::Respond` or `Flow::Answer` (boxed:
    /// rare, and the context travels with every request's future).
    pub(super) refusal: Option<Box<Flow>>,
    /// Where the request stands as a WebSocket handshake.
    pub(super) websocket: WebSocket,
    /// The tunnel's count, while it is open.
    pub(super) tunnel: Option<OpenTunnel>,
    /// The status of a refusal the gateway answered as gRPC (HTTP 200 on the wire): what
    /// the request is counted as.
    pub(super) refused_as: Option<u16>,
    _inflight: InFlightGuard,
}

/// A request's WebSocket state (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebSocket {
    /// Not a WebSocket handshake.
    #[default]
    No,
    /// The client asked to upgrade; no route has taken it (yet).
    Asked,
    /// The route accepts it: the upgrade went upstream.
    Sent,
    /// The upstream switched protocols: the tunnel is open, and counted.
    Open,
}

impl RequestCtx {
    pub(super) fn new(inflight: InFlightGuard) -> RequestCtx {
        RequestCtx {
            exchange: Exchange::new(
                NO_ROUTE_ID.clone(),
                String::new(),
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ),
            route: None,
            attempts: None,
            id_from_client: false,
            request_id_value: None,
            arrived: Instant::now(),
            trace: None,
            head_clock: None,
            refusal: None,
            websocket: WebSocket::No,
            tunnel: None,
            refused_as: None,
            _inflight: inflight,
        }
    }
}
