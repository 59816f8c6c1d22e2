use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use std::net::IpAddr;
use std::sync::Arc;

/// What the gateway knows about one request, shared by the plugins of its route.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The id of the matched route.
    pub route_id: Arc<str>,
    /// The request id sent upstream and to the client.
    pub request_id: String,
    /// The client address: the socket peer, or the first untrusted hop of `X-Forwarded-For`.
    pub client_ip: IpAddr,
    /// The authenticated caller (`sub`), once an auth plugin has set it.
    pub consumer: Option<Arc<str>>,
    /// Headers a plugin wants on the final response whatever it is (rate-limit state, say).
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers a plugin adds to the final response beside any of the same name (`Vary`).
    pub response_headers_added: Vec<(HeaderName, HeaderValue)>,
    /// Request body bytes read from the client so far.
    pub request_body_bytes: u64,
}

impl Exchange {
    pub fn new(route_id: Arc<str>, request_id: String, client_ip: IpAddr) -> Self {
        Exchange {
            route_id,
            request_id,
            client_ip,
            consumer: None,
            response_headers: Vec::new(),
            response_headers_added: Vec::new(),
            request_body_bytes: 0,
        }
    }
}

/// An answer a plugin gives instead of proxying, written as it is: a CORS preflight's 204, a
/// Wasm plugin's local response. (A refusal is an [`ErrorAnswer`] instead.)
#[derive(Debug, Clone)]
pub struct LocalAnswer {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// An answer produced by a plugin instead of proxying: the gateway renders it as the JSON
/// error body of SPEC §4, adding the request id.
#[derive(Debug, Clone)]
pub struct ErrorAnswer {
    pub status: StatusCode,
    /// The machine-readable `error` field, e.g. `unauthorized`.
    pub code: &'static str,
    /// The human-readable `message` field.
    pub message: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Why, in a word from a small fixed set, when the answer is a refusal a metric counts
    /// by reason (auth failures).
    pub reason: Option<&'static str>,
    /// Which of the gateway's refusal counters this answer adds to, if any: the gateway
    /// counts by this, never by which plugin answered.
    pub tally: Option<Tally>,
}

/// The refusal counters of SPEC §7 a plugin's answer may add to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// `gatehouse_rate_limited_total{route}`.
    RateLimited,
    /// `gatehouse_auth_failures_total{route, reason}`, the reason being the answer's.
    AuthFailure,
}

impl ErrorAnswer {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ErrorAnswer {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
            reason: None,
            tally: None,
        }
    }

    /// An authentication refusal, counted by `reason`.
    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self.tally = Some(Tally::AuthFailure);
        self
    }

    pub fn counted_as(mut self, tally: Tally) -> Self {
        self.tally = Some(tally);
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}
