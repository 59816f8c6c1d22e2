//! The gatehouse plugin contract and its built-in plugins.
//!
//! A plugin is built once per route when configuration is compiled, never per request. Each
//! request then walks the route's [`PluginChain`] through the phases of the gateway's request
//! order (SPEC §4): *access* (rate limits that need no identity, auth, rate limits keyed by
//! the consumer) before an upstream is chosen, *upstream request* (rewrites and headers) just
//! before proxying, *response* before the answer goes to the client, *response body* as it
//! streams, *log* once the exchange is over. Plugins that do not care about a phase simply
//! keep the default no-op.
//!
//! The access phase is synchronous by default and may hand back a future only when it must
//! wait (an introspection call, say): a route whose plugins never wait pays for no boxing.

pub mod auth;
mod chain;
pub mod cors;
mod digest;
mod exchange;
pub mod fault;
pub mod headers;
pub mod ip_restriction;
pub mod matcher;
pub mod metrics;
pub mod mirror;
pub mod rate_limit;
pub mod registry;
pub mod request;
pub mod selector;
pub mod size_limit;
pub mod template;
pub mod units;
pub mod wasm;

pub use chain::PluginChain;
pub use exchange::{Abort, ErrorAnswer, Exchange, LocalAnswer, Tally};
pub use selector::Selector;
/// The HTTP types plugins see, so a plugin crate needs no versions of its own.
pub use {http, pingora_http};

use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use std::future::Future;
use std::pin::Pin;

/// Where a plugin sits in the request order. The chain runs plugins sorted by stage, so the
/// order never depends on how a route happens to list its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Whether the request may come in at all, before anything is counted or verified:
    /// address restrictions, CORS preflights, body size limits. A route's `plugins:` run
    /// here by default, in the order listed.
    Admit = 10,
    /// How often anyone may call: rate limits keyed by what the request itself carries (the
    /// client address, a header, the route). They run before authentication (SPEC §4), so a
    /// flood of bad tokens is limited before it costs a signature check or an introspection
    /// call.
    Throttle = 50,
    /// Who is calling: token verification, introspection.
    Authenticate = 100,
    /// How often one caller may call: rate limits keyed by the consumer authentication found.
    Limit = 200,
    /// What the upstream and the client see: header and path rewrites.
    Transform = 300,
}

/// The outcome of an access check.
pub enum Flow {
    /// Go on with the next plugin, then proxy.
    Continue,
    /// Stop here and answer the client with this refusal (the JSON error of SPEC §4).
    Respond(ErrorAnswer),
    /// Stop here and answer the client with this, as it is.
    Answer(LocalAnswer),
}

/// A pending access decision, for plugins that must wait on I/O.
pub type PendingFlow<'a> = Pin<Box<dyn Future<Output = Flow> + Send + 'a>>;

/// An access decision: taken at once, or after waiting.
pub enum Access<'a> {
    Now(Flow),
    Wait(PendingFlow<'a>),
}

impl From<Flow> for Access<'_> {
    fn from(flow: Flow) -> Self {
        Access::Now(flow)
    }
}

/// A per-route plugin instance.
pub trait Plugin: Send + Sync {
    /// A short stable name, used in logs and metrics.
    fn name(&self) -> &'static str;

    /// Where the plugin runs in the request order.
    fn stage(&self) -> Stage;

    /// Decide whether the request may go on. May edit the client's request (for instance,
    /// drop headers a client must not be able to set) and record facts in the exchange.
    fn access<'a>(&'a self, _req: &'a mut RequestHeader, _ex: &'a mut Exchange) -> Access<'a> {
        Access::Now(Flow::Continue)
    }

    /// Whether [`Plugin::access`] may answer [`Access::Wait`] (a delay, a call). Only for
    /// such chains does the gateway watch the client while the request waits: on HTTP/2 that
    /// takes the request head out of the session for the wait, a cost other routes skip.
    fn may_wait(&self) -> bool {
        false
    }

    /// Whether [`Plugin::request_body`] must see the request body.
    fn wants_request_body(&self) -> bool {
        false
    }

    /// A piece of the request body on its way upstream (`None` and `end` for a request
    /// without one); [`Exchange::request_body_bytes`] already counts it. May replace the
    /// piece, or take it (leave `None`) to hand it on later, at the latest with `end`. May
    /// refuse the request, which then ends with that answer.
    fn request_body(&self, _body: &mut Option<Bytes>, _end: bool, _ex: &mut Exchange) -> Flow {
        Flow::Continue
    }

    /// Edit the request about to be sent upstream.
    fn upstream_request(&self, _req: &mut RequestHeader, _ex: &Exchange) {}

    /// Edit the response about to be sent to the client, proxied or produced by the gateway.
    /// May instead replace a proxied response, before any of it is sent, with a refusal or
    /// an answer of its own (an answer the gateway makes is not replaced again).
    fn response(&self, _resp: &mut ResponseHeader, _ex: &mut Exchange) -> Flow {
        Flow::Continue
    }

    /// Whether [`Plugin::response_body`] must see the response body.
    fn wants_response_body(&self) -> bool {
        false
    }

    /// A piece of the response body on its way to the client: may replace it, or take it
    /// (leave `None`) to hand it on later, at the latest with `end`. The head is gone by now,
    /// so a failure can only cut the response short.
    fn response_body(
        &self,
        _body: &mut Option<Bytes>,
        _end: bool,
        _ex: &mut Exchange,
    ) -> Result<(), Abort> {
        Ok(())
    }

    /// The exchange is over, answered or not: release what the request held.
    fn log(&self, _ex: &mut Exchange) {}

    /// Called now and then (every 30 s) off the request path, for upkeep such as forgetting
    /// the clients a limiter has not seen for a while.
    fn housekeep(&self) {}
}

/// A plugin shared by several chains (a global rule's, built once for every route) is a
/// plugin itself. Kept beside the trait so a method added to it is forwarded here too.
impl<P: Plugin + ?Sized> Plugin for std::sync::Arc<P> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn stage(&self) -> Stage {
        (**self).stage()
    }

    fn access<'a>(&'a self, req: &'a mut RequestHeader, ex: &'a mut Exchange) -> Access<'a> {
        (**self).access(req, ex)
    }

    fn may_wait(&self) -> bool {
        (**self).may_wait()
    }

    fn wants_request_body(&self) -> bool {
        (**self).wants_request_body()
    }

    fn request_body(&self, body: &mut Option<Bytes>, end: bool, ex: &mut Exchange) -> Flow {
        (**self).request_body(body, end, ex)
    }

    fn upstream_request(&self, req: &mut RequestHeader, ex: &Exchange) {
        (**self).upstream_request(req, ex)
    }

    fn response(&self, resp: &mut ResponseHeader, ex: &mut Exchange) -> Flow {
        (**self).response(resp, ex)
    }

    fn wants_response_body(&self) -> bool {
        (**self).wants_response_body()
    }

    fn response_body(
        &self,
        body: &mut Option<Bytes>,
        end: bool,
        ex: &mut Exchange,
    ) -> Result<(), Abort> {
        (**self).response_body(body, end, ex)
    }

    fn log(&self, ex: &mut Exchange) {
        (**self).log(ex)
    }

    fn housekeep(&self) {
        (**self).housekeep()
    }
}

impl std::fmt::Debug for dyn Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
