use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use std::any::Any;
use std::net::IpAddr;
use std::sync::Arc;

/// What the gateway knows about one request, shared by the plugins of its route.
#[derive(Debug)]
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
    /// What plugins keep from one phase of this request to the next, and the plugins that
    /// failed on it; boxed and made on first use, as most requests need neither.
    scratch: Option<Box<Scratch>>,
}

#[derive(Default)]
struct Scratch {
    kept: Vec<(usize, Box<dyn Any + Send + Sync>)>,
    failed: Vec<Arc<str>>,
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch")
            .field("kept", &self.kept.len())
            .field("failed", &self.failed)
            .finish()
    }
}

/// The key a plugin keeps its per-request state under: its own address, stable for as long
/// as the route (and so the plugin) serves the request.
fn key_of<P: ?Sized>(owner: &P) -> usize {
    owner as *const P as *const () as usize
}

/// Why a plugin cut a response short.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Abort(pub String);

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
            scratch: None,
        }
    }

    /// Keeps `value` for `owner` (a plugin) until it takes it back or the exchange ends.
    pub fn keep<P: ?Sized, T: Any + Send + Sync>(&mut self, owner: &P, value: T) {
        let key = key_of(owner);
        let kept = &mut self.scratch.get_or_insert_with(Default::default).kept;
        kept.retain(|(k, _)| *k != key);
        kept.push((key, Box::new(value)));
    }

    /// What `owner` keeps for this request, if it is a `T`.
    pub fn kept<T: Any, P: ?Sized>(&self, owner: &P) -> Option<&T> {
        let key = key_of(owner);
        let kept = &self.scratch.as_ref()?.kept;
        kept.iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.downcast_ref())
    }

    /// What `owner` keeps for this request, if it is a `T`, to change.
    pub fn kept_mut<T: Any, P: ?Sized>(&mut self, owner: &P) -> Option<&mut T> {
        let key = key_of(owner);
        let kept = &mut self.scratch.as_mut()?.kept;
        kept.iter_mut()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.downcast_mut())
    }

    /// Takes back what `owner` keeps for this request.
    pub fn take_kept<T: Any, P: ?Sized>(&mut self, owner: &P) -> Option<T> {
        let key = key_of(owner);
        let kept = &mut self.scratch.as_mut()?.kept;
        let at = kept.iter().position(|(k, v)| *k == key && v.is::<T>())?;
        kept.swap_remove(at).1.downcast().ok().map(|b| *b)
    }

    /// Records that the plugin `name` failed on this request (a trap, a timeout), whatever
    /// the request's fate; the gateway counts it in `gatehouse_plugin_errors_total{plugin}`.
    pub fn plugin_failed(&mut self, name: &Arc<str>) {
        self.scratch
            .get_or_insert_with(Default::default)
            .failed
            .push(name.clone());
    }

    /// The plugins that failed on this request.
    pub fn failed_plugins(&self) -> &[Arc<str>] {
        self.scratch.as_ref().map_or(&[], |s| &s.failed)
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
