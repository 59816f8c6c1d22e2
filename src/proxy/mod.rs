//! The Pingora `ProxyHttp` implementation. Thin on purpose: each phase calls named units,
//! in the order of SPEC §4:
//!
//! - [`arrival`]: who sent the request, whether any route may see it, which route it is;
//! - [`dispatch`]: the route's access plugins, a direct answer, or the upstream choice;
//! - [`attempt`]: each try at the upstream (breaker, node, outcome, retry);
//! - [`head_watch`]: the clock of each upstream response head;
//! - [`forward`]: the request as the upstream sees it, the answer as the client may;
//! - [`answer`]: answers the gateway writes itself, errors included;
//! - [`transcoded`]: REST calls the gateway makes gRPC calls itself;
//! - [`record`]: metrics, access log and span of a finished request.

mod answer;
mod arrival;
mod attempt;
mod ctx;
mod dispatch;
mod forward;
mod head;
mod head_watch;
mod identity;
mod inflight;
mod record;
mod transcoded;

pub use answer::error_body;
use answer::{answer_error, classify};
use attempt::{Attempts, Failure, Retry};
pub use ctx::RequestCtx;
use ctx::WebSocket;
pub use head_watch::Sweeper as HeadSweeper;
use head_watch::{Connection, HeadWatch};
use identity::REQUEST_ID_NAME;
pub use identity::{
    client_ip, client_request_id, identify, new_request_id, request_id, REQUEST_ID,
};
pub use inflight::{InFlight, InFlightGuard};

use crate::edge::headers::Underscores;
use crate::edge::{ClientStream, Draining, PathPolicy};
use crate::snapshot::Live;
use crate::telemetry::metrics::OpenTunnel;
use crate::telemetry::Telemetry;
use async_trait::async_trait;
use gatehouse_plugins::{ErrorAnswer, Exchange, Flow};
use http::StatusCode;
use ipnet::IpNet;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};
use std::sync::Arc;

/// The error type for "a plugin refused the request while its body streamed".
const PLUGIN_REFUSAL: ErrorType = ErrorType::Custom("plugin_refusal");

/// Per-listener-independent proxy settings from the bootstrap config.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub trusted_proxies: Vec<IpNet>,
    pub max_header_size: usize,
    pub keepalive_secs: u64,
    pub path: PathPolicy,
    pub underscores: Underscores,
    /// On once the process is stopping: every answer then closes its connection.
    pub draining: Arc<Draining>,
}

/// The gateway's proxy logic.
pub struct Gateway {
    live: Arc<Live>,
    settings: ProxySettings,
    inflight: Arc<InFlight>,
    telemetry: Arc<Telemetry>,
    /// The clocks of upstream response heads (SPEC §8: `timeouts.read` bounds the head).
    heads: Arc<HeadWatch>,
    /// The connections of the calls the gateway makes itself (transcoded ones), pooled.
    connector: pingora::connectors::http::Connector,
}

impl Gateway {
    pub fn new(
        live: Arc<Live>,
        settings: ProxySettings,
        inflight: Arc<InFlight>,
        telemetry: Arc<Telemetry>,
    ) -> Gateway {
        Gateway {
            live,
            settings,
            inflight,
            telemetry,
            heads: Arc::new(HeadWatch::new()),
            connector: pingora::connectors::http::Connector::new(None),
        }
    }

    /// The service that cuts upstream response heads past their route's `timeouts.read`.
    pub fn head_sweeper(&self) -> HeadSweeper {
        HeadSweeper(self.heads.clone())
    }

    /// Starts the clock of the response head awaited on a connection just made ready (an
    /// HTTP/1 one: HTTP/2 times each response head as a whole already, and its connection
    /// is shared by other requests).
    fn await_head(&self, peer: &HttpPeer, fd: i32, digest: Option<&Digest>, ctx: &mut RequestCtx) {
        self.head_arrived(ctx);
        if peer.options.alpn.get_max_http_version() != 1 {
            return;
        }
        let socket = digest.and_then(|d| d.socket_digest.as_deref());
        let inet = |a: Option<&PeerAddr>| a.and_then(PeerAddr::as_inet).copied();
        if let (Some(local), Some(peer), Some(route)) = (
            socket.and_then(|s| inet(s.local_addr())),
            socket.and_then(|s| inet(s.peer_addr())),
            &ctx.route,
        ) {
            let conn = Connection { fd, local, peer };
            ctx.head_clock = Some(self.heads.arm(conn, route.timeouts.read));
        }
    }

    /// Ends the head clock of the current attempt; says whether it had run out.
    fn head_arrived(&self, ctx: &mut RequestCtx) -> bool {
        ctx.head_clock.take().is_some_and(|t| self.heads.disarm(t))
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.inflight.enter())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.greet(session, ctx);
        let snapshot = self.live.load();
        match self.admit_head(session, &snapshot) {
            Ok(websocket) => ctx.websocket = websocket,
            Err(reply) => return answer_error(session, &reply, ctx).await,
        }
        let Some(route) = self.find_route(session, &snapshot) else {
            let reply = ErrorAnswer::new(
                StatusCode::NOT_FOUND,
                "no_route",
                "no route matches the request",
            );
            return answer_error(session, &reply, ctx).await;
        };
        drop(snapshot);
        self.enter_route(session, ctx, route).await
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let (Some(route), Some(attempts)) = (&ctx.route, &mut ctx.attempts) else {
            return Error::e_explain(ErrorType::InternalError, "no upstream was chosen");
        };
        if let Err(refused) = attempts.start(session.req_header(), &ctx.exchange) {
            return Err(answer::refused(refused, &attempts.upstream().id));
        }
        let mut timeouts = route.timeouts;
        if ctx.websocket == WebSocket::Sent {
            // Once upgraded, reads wait for the next frame: the tunnel's silence is bounded by
            // `timeouts.idle`. Each read of the handshake's answer is too, and the head as a
            // whole by `timeouts.read` (the head clock).
            timeouts.read = timeouts.idle;
        }
        if let Some(deadline) = caller_deadline(session.req_header(), attempts) {
            // The caller's deadline: no point waiting for an answer it no longer wants.
            timeouts.read = timeouts.read.min(deadline);
        }
        Ok(Box::new(attempts.peer(&timeouts)))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let retry = ctx.attempts.as_mut().is_some_and(Attempts::connect_failed);
        e.set_retry(retry);
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.await_head(peer, fd, digest, ctx);
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if end_of_stream {
            // The upstream's latency is timed from here: a client's slow upload (or a
            // streaming call's requests) is not the upstream being slow.
            if let Some(attempts) = ctx.attempts.as_mut().filter(|a| a.sent().is_some()) {
                attempts.sending(std::time::Instant::now());
            }
        }
        match &ctx.route {
            Some(route) if route.plugins.wants_request_body() => body_piece(
                &route.plugins,
                body,
                end_of_stream,
                &mut ctx.exchange,
                &mut ctx.refusal,
            ),
            _ => Ok(()),
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.forward(session, upstream_request, ctx)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if matches!(status, 100 | 102..=199) {
            // An interim answer (100 Continue, 103 Early Hints) is passed on; the final
            // head is still awaited, on the same clock.
            return forward::settle_answer(upstream_response);
        }
        self.head_arrived(ctx);
        if status == 101 && ctx.websocket == WebSocket::Sent {
            // The upgrade the route asked for: its headers stay, the tunnel is counted, and
            // the attempt is an answer like any other (health and the breaker hear of it).
            ctx.websocket = WebSocket::Open;
            ctx.tunnel = Some(OpenTunnel::open(&ctx.exchange.route_id));
        } else {
            forward::settle_answer(upstream_response)?;
        }
        let Some(attempts) = &mut ctx.attempts else {
            return Ok(());
        };
        if attempts.answered(status, session.req_header()) {
            let mut e = Error::explain(
                ErrorType::HTTPStatus(status),
                "upstream answered with a retryable status",
            );
            e.set_retry(true);
            return Err(e);
        }
        if let Some(stand_in) = ctx
            .route
            .as_ref()
            .and_then(|r| answer::stands_in(r, status))
        {
            // The route's fallback answers instead (written by `fail_to_proxy`).
            return Err(stand_in);
        }
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if answer::is_stand_in(&e) {
            // The answer was counted as such; only the fallback is left to write.
            e.set_retry(false);
            return e;
        }
        if ctx.refusal.is_some() {
            // A plugin refused the body: nothing to say of the node, nothing to try again.
            self.head_arrived(ctx);
            e.set_retry(false);
            return e;
        }
        if self.head_arrived(ctx) {
            // The head clock ran out and cut the connection: a timeout, not a broken peer.
            e = Error::because(
                ErrorType::ReadTimedout,
                "the response head took longer than timeouts.read",
                e,
            )
            .into_up();
        }
        let Some(attempts) = &mut ctx.attempts else {
            return e;
        };
        // What says nothing of the node: an open tunnel that ended (idle, or either side
        // closing), or the caller's own deadline running out.
        let not_the_node = ctx.websocket == WebSocket::Open
            || (e.etype() == &ErrorType::ReadTimedout
                && ctx.route.as_ref().is_some_and(|r| {
                    caller_deadline(session.req_header(), attempts)
                        .is_some_and(|d| d < r.timeouts.read)
                }));
        match attempts.failed(Failure::of(session, &e, client_reused, not_the_node)) {
            Retry::AsDecided => {}
            Retry::Again | Retry::Fresh => e.set_retry(true),
            Retry::No => e.set_retry(false),
        }
        e
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A request that began before the drain still closes its connection.
        if self.settings.draining.is_on() {
            session.set_keepalive(None);
        }
        let id = match ctx.request_id_value.take() {
            Some(id) => Some(id),
            None => identity::request_id_value(&ctx.exchange.request_id),
        };
        let ex = &mut ctx.exchange;
        head::edit_response(resp, |h| {
            h.try_reserve(1 + ex.response_headers.len() + ex.response_headers_added.len())?;
            if let Some(id) = id {
                h.try_insert(REQUEST_ID_NAME, id)?;
            }
            for (name, value) in &ex.response_headers {
                h.try_insert(name.clone(), value.clone())?;
            }
            for (name, value) in &ex.response_headers_added {
                h.try_append(name.clone(), value.clone())?;
            }
            Ok(())
        })?;
        if let Some(route) = &ctx.route {
            let flow = route.plugins.response(resp, ex);
            if !matches!(flow, Flow::Continue) {
                // Written instead by `fail_to_proxy`: nothing of the upstream's answer is out.
                ctx.refusal = Some(Box::new(flow));
                return Error::e_explain(PLUGIN_REFUSAL, "a plugin replaced the upstream's answer");
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(route) = &ctx.route {
            if route.plugins.wants_response_body() {
                route
                    .plugins
                    .response_body(body, end_of_stream, &mut ctx.exchange)
                    .or_else(|abort| {
                        Error::e_explain(
                            PLUGIN_REFUSAL,
                            format!("a plugin cut the response: {abort}"),
                        )
                    })?;
            }
        }
        Ok(None)
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        answer::is_client_left(e)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // A refusal a plugin made (while the body streamed, or on seeing the upstream's
        // answer) wins over the error it caused.
        let answer = match ctx.refusal.take().map(|r| *r) {
            Some(Flow::Continue) | None => classify(e).map(Flow::Respond),
            refusal => refusal,
        };
        let code = match &answer {
            Some(Flow::Respond(reply)) => reply.status.as_u16(),
            Some(Flow::Answer(local)) => local.status.as_u16(),
            _ => 0,
        };
        // Only an interim answer (a 1xx) may have gone out: the final one is still owed.
        let owed = session
            .response_written()
            .is_none_or(|r| r.status.is_informational());
        if owed && answer.is_some() {
            // Pingora closes the client connection after a failed proxy attempt; say so, or
            // a client would send its next request into a closing socket.
            session.set_keepalive(None);
            if ctx.exchange.request_id.is_empty() {
                ctx.exchange.request_id = request_id(&session.req_header().headers);
            }
            match answer {
                Some(Flow::Respond(reply)) => {
                    let _ = answer_error(session, &reply, ctx).await;
                }
                Some(Flow::Answer(local)) => {
                    let route = ctx.route.clone();
                    let plugins = route.as_ref().map(|r| &r.plugins);
                    let _ = answer::send(
                        session,
                        answer::Answer::local(&local),
                        &mut ctx.exchange,
                        plugins,
                    )
                    .await;
                }
                _ => {}
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        self.head_arrived(ctx);
        ctx.tunnel = None;
        if let Some(route) = &ctx.route {
            route.plugins.log(&mut ctx.exchange);
        }
        // The connection now waits for its next head. A body left unread by an answer cannot
        // be taken for one: Pingora closes a connection answered before its body was read.
        if let Some(stream) = session.as_downstream().stream().and_then(ClientStream::of) {
            stream.answered();
        }
        self.record(session, ctx);
    }
}

/// The deadline a gRPC caller set for a call to a gRPC upstream, if any.
fn caller_deadline(req: &RequestHeader, attempts: &Attempts) -> Option<std::time::Duration> {
    if attempts.upstream().spec.scheme.grpc() && answer::is_grpc(req) {
        grpc_timeout(req)
    } else {
        None
    }
}

/// A gRPC call's `grpc-timeout` (`100m`, `5S`: at most 8 digits and a unit of H, M, S, m,
/// u or n), when it has a valid one.
fn grpc_timeout(req: &RequestHeader) -> Option<std::time::Duration> {
    use std::time::Duration;
    let value = req.headers.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Shows a piece of the request body to the route's plugins; a refusal ends the request
/// with the plugin's answer (written by `fail_to_proxy`).
fn body_piece(
    plugins: &gatehouse_plugins::PluginChain,
    body: &mut Option<bytes::Bytes>,
    end: bool,
    ex: &mut Exchange,
    refused: &mut Option<Box<Flow>>,
) -> Result<()> {
    if let Some(chunk) = body {
        ex.request_body_bytes += chunk.len() as u64;
    }
    match plugins.request_body(body, end, ex) {
        Flow::Continue => Ok(()),
        // Written by `fail_to_proxy`, unless the upstream has answered already.
        flow => {
            *refused = Some(Box::new(flow));
            Error::e_explain(PLUGIN_REFUSAL, "a plugin refused the request body")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn grpc_timeout_reads_every_unit_and_refuses_the_rest() {
        let with = |v: &str| {
            let mut req = RequestHeader::build("POST", b"/s/M", None).unwrap();
            req.insert_header("grpc-timeout", v).unwrap();
            grpc_timeout(&req)
        };
        assert_eq!(with("100m"), Some(Duration::from_millis(100)));
        assert_eq!(with("2S"), Some(Duration::from_secs(2)));
        assert_eq!(with("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(with("3M"), Some(Duration::from_secs(180)));
        assert_eq!(with("5u"), Some(Duration::from_micros(5)));
        assert_eq!(with("7n"), Some(Duration::from_nanos(7)));
        for bad in ["m", "100", "100x", "123456789S", "-1S", "1.5S"] {
            assert_eq!(with(bad), None, "{bad}");
        }
    }
}
