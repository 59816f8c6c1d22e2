//! The Pingora `ProxyHttp` implementation. Thin on purpose: each phase calls the router, the
//! route's compiled plugins and the upstream picker, in the order of SPEC §4.

mod head;
mod head_watch;
mod identity;
mod inflight;
mod reply;

pub use identity::{
    client_ip, client_request_id, identify, new_request_id, request_id, REQUEST_ID,
};
use identity::{FORWARDED_FOR_NAME, FORWARDED_HOST_NAME, FORWARDED_PROTO_NAME, REQUEST_ID_NAME};
pub use head_watch::Sweeper as HeadSweeper;
use head_watch::{HeadWatch, Ticket};
pub use inflight::{InFlight, InFlightGuard};
pub use reply::error_body;

use crate::edge::headers::{self as edge_headers, Underscores};
use crate::edge::{ClientStream, Draining, PathPolicy};
use crate::router::{normalize_host, RouteRequest};
use crate::snapshot::{Action, CompiledRoute, Live};
use crate::upstream::{now_ms, Node, NodeLease, Pass, UpstreamTarget};
use async_trait::async_trait;
use gatehouse_plugins::{Exchange, Flow, Reply};
use http::{header, HeaderValue, StatusCode};
use ipnet::IpNet;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::Digest;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use reply::Answer;
use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, LazyLock};
use std::time::{Instant, SystemTime};

use crate::telemetry::access_log::Entry;
use crate::telemetry::metrics::RouteMetrics;
use crate::telemetry::trace::{RequestTrace, SpanFacts, TRACEPARENT, TRACESTATE};
use crate::telemetry::Telemetry;
use crate::wire::push_ip;

/// The error type for "no node to send to", mapped to 503 `no_upstream`.
const NO_UPSTREAM: ErrorType = ErrorType::Custom("no_upstream");
/// The error type for "the upstream's circuit is open", mapped to 503 `circuit_open`.
const CIRCUIT_OPEN: ErrorType = ErrorType::Custom("circuit_open");

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
}

impl Gateway {
    /// SPEC §8 on a request head, before routing: refuses what no route should see (a
    /// missing Host, framing lists, a path that cannot be normalized) and puts the rest in
    /// the one form routes match and the upstream receives: the normal path in origin form,
    /// without hop-by-hop or underscored headers.
    fn settle_head(&self, session: &mut Session) -> std::result::Result<(), String> {
        let req = session.req_header();
        let survey = edge_headers::survey(&req.headers, req.version, self.settings.underscores)
            .map_err(|e| e.to_string())?;
        let path = self
            .settings
            .path
            .normalize(req.uri.path())
            .map_err(|e| e.to_string())?;
        // A path that had to be normalized, or an absolute-form target, is replaced by its
        // normal origin form.
        let absolute = req.uri.authority().is_some() || !req.raw_path().starts_with(b"/");
        if matches!(path, Cow::Owned(_)) || absolute {
            let path = path.into_owned();
            to_origin_form(session.req_header_mut(), &path).map_err(|e| e.to_string())?;
        }
        if survey.underscores || survey.hop_by_hop {
            let req = session.req_header_mut();
            let mut drop = Vec::new();
            if survey.underscores {
                drop = edge_headers::underscored(&req.headers);
            }
            if survey.hop_by_hop {
                // All of them, `Connection` too (keep-alive was settled before): Pingora
                // would otherwise strip what it names from the upstream request after the
                // plugins have set the gateway's own headers.
                drop.extend(edge_headers::hop_by_hop(&req.headers));
            }
            for name in drop {
                req.remove_header(&name);
            }
        }
        Ok(())
    }

    /// Keeps the client's connection open for the next request unless the client or a
    /// drain says otherwise.
    fn keep_alive(&self, session: &mut Session) {
        if self.settings.draining.is_on() {
            session.set_keepalive(None);
        } else if session.get_keepalive().is_some() {
            // Pingora worked out from the request whether the client keeps the connection.
            session.set_keepalive(Some(self.settings.keepalive_secs));
        }
    }

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
        }
    }

    /// The service that cuts upstream response heads past their route's `timeouts.read`.
    pub fn head_sweeper(&self) -> HeadSweeper {
        HeadSweeper(self.heads.clone())
    }

    /// Ends the head clock of the current attempt; says whether it had run out.
    fn head_arrived(&self, ctx: &mut RequestCtx) -> bool {
        ctx.head_clock.take().is_some_and(|t| self.heads.disarm(t))
    }
}

/// The metrics of requests no route matched.
static NO_ROUTE_METRICS: LazyLock<RouteMetrics> =
    LazyLock::new(|| RouteMetrics::new(NO_ROUTE_ID.clone()));

static NO_ROUTE_ID: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));

/// What the gateway keeps about one request between phases.
pub struct RequestCtx {
    pub exchange: Exchange,
    /// The matched route; it holds everything it needs, so the snapshot it came from can be
    /// swapped out mid-request without affecting it.
    pub route: Option<Arc<CompiledRoute>>,
    /// The upstream chosen for this request (canary, split or default).
    pub upstream: Option<Arc<UpstreamTarget>>,
    /// The client sent a sane `X-Request-Id`: it already travels upstream as it is.
    pub id_from_client: bool,
    /// The request id as a header value, made once for the upstream request and the response.
    request_id_value: Option<HeaderValue>,
    /// Failed connection attempts so far, for `retries`.
    pub failed_attempts: u32,
    /// The node last chosen.
    pub node: Option<Arc<Node>>,
    /// Holds the node's in-flight count (for `least_conn`) and kept connection (for
    /// `pool.max_idle`) while the request is on it.
    lease: Option<NodeLease>,
    /// The current attempt is being abandoned on purpose to retry a 502/503.
    retrying_status: bool,
    /// A kept connection already turned out stale once for this request.
    stale_retried: bool,
    /// How the current attempt passed the upstream's circuit breaker, until its outcome is
    /// recorded.
    pass: Option<Pass>,
    /// When the request arrived: for its duration, its log line and its span (the wall
    /// clock time is worked out from it at the end, and only when a log or span needs it:
    /// the context is copied with Pingora's request future, so every byte counts).
    pub arrived: Instant,
    /// The request's trace context, once its head was read.
    pub trace: Option<RequestTrace>,
    /// When the request was last sent upstream.
    pub upstream_sent: Option<Instant>,
    /// The clock of the upstream response head being awaited.
    head_clock: Option<Ticket>,
    _inflight: InFlightGuard,
}

impl RequestCtx {
    /// The current attempt failed on its node: passive health and the breaker hear of it.
    fn attempt_failed(&mut self) {
        if let (Some(upstream), Some(node)) = (&self.upstream, &self.node) {
            upstream.failed(node);
        }
        self.outcome(false);
    }

    /// Tells the upstream's circuit breaker how the current attempt ended.
    fn outcome(&mut self, ok: bool) {
        if let (Some(upstream), Some(pass)) = (&self.upstream, self.pass.take()) {
            if let Some(breaker) = &upstream.breaker {
                breaker.record(pass, ok, now_ms());
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            exchange: Exchange::new(
                NO_ROUTE_ID.clone(),
                String::new(),
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ),
            route: None,
            upstream: None,
            id_from_client: false,
            request_id_value: None,
            failed_attempts: 0,
            node: None,
            lease: None,
            retrying_status: false,
            stale_retried: false,
            pass: None,
            arrived: Instant::now(),
            trace: None,
            upstream_sent: None,
            head_clock: None,
            _inflight: self.inflight.enter(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if let Some(stream) = session.as_downstream().stream().and_then(ClientStream::of) {
            stream.head_read();
        }
        self.keep_alive(session);
        let req = session.req_header();
        let trace = self.telemetry.tracer.start(&req.headers);
        match client_request_id(&req.headers) {
            Some(id) => {
                ctx.exchange.request_id = id;
                ctx.id_from_client = true;
            }
            None if self.telemetry.trace_id_as_request_id => {
                ctx.exchange.request_id = trace.trace_id_hex();
            }
            None => ctx.exchange.request_id = new_request_id(),
        }
        ctx.request_id_value = HeaderValue::from_str(&ctx.exchange.request_id).ok();
        ctx.trace = Some(trace);
        ctx.exchange.client_ip = client_ip(
            peer_ip(session),
            &req.headers,
            &self.settings.trusted_proxies,
        );

        // HTTP/1 keeps the head as it came; HTTP/2 heads are counted from the parsed form.
        let head = match session.as_downstream().as_http1() {
            Some(h1) => h1.get_headers_raw_bytes().len(),
            None => head_size(req),
        };
        if head > self.settings.max_header_size {
            let reply = Reply::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "bad_request",
                format!(
                    "request head is over {} bytes",
                    self.settings.max_header_size
                ),
            );
            return answer_error(session, &reply, ctx).await;
        }
        if let Err(problem) = self.settle_head(session) {
            return answer_bad_request(session, problem, ctx).await;
        }
        let snapshot = self.live.load();
        if !snapshot.identity_headers.is_empty() {
            // Identity headers are the gateway's on every route, not only where a policy
            // sets them: an upstream shared with a protected route must not trust them.
            let req = session.req_header_mut();
            for name in snapshot.identity_headers.iter() {
                if req.headers.contains_key(name) {
                    req.remove_header(name);
                }
            }
        }
        let req = session.req_header();
        let path = req.uri.path();
        // Only routes bound to hosts need the host: most deployments have none.
        let host = if snapshot.router.uses_hosts() {
            req.headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(normalize_host)
        } else {
            None
        };
        let found = snapshot.router.find(&RouteRequest {
            host: host.as_deref(),
            path,
            method: &req.method,
            headers: &req.headers,
            query: req.uri.query(),
        });
        let Some(route) = found.cloned() else {
            let reply = Reply::new(
                StatusCode::NOT_FOUND,
                "no_route",
                "no route matches the request",
            );
            return answer_error(session, &reply, ctx).await;
        };
        drop(snapshot);
        ctx.exchange.route_id = route.id.clone();

        if !route.plugins.is_empty() {
            let flow = route
                .plugins
                .access(session.req_header_mut(), &mut ctx.exchange)
                .await;
            // The plugins may have waited (an introspection call) while a drain began.
            if self.settings.draining.is_on() {
                session.set_keepalive(None);
            }
            if let Flow::Respond(reply) = flow {
                ctx.route = Some(route);
                return answer_error(session, &reply, ctx).await;
            }
        }

        let choice = match &route.action {
            Action::Proxy(choice) => choice,
            Action::Respond(direct) => {
                let answer = Answer {
                    status: StatusCode::from_u16(direct.status).unwrap_or(StatusCode::OK),
                    headers: &direct.headers,
                    content_type: None,
                    body: direct.body.clone(),
                };
                reply::send(session, answer, &ctx.exchange, Some(&route.plugins)).await?;
                ctx.route = Some(route);
                return Ok(true);
            }
        };
        // Chosen once: retries go to other nodes of the same upstream.
        ctx.upstream = Some(choice.choose(session.req_header(), &ctx.exchange).clone());
        ctx.route = Some(route);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let (Some(route), Some(upstream)) = (&ctx.route, &ctx.upstream) else {
            return Error::e_explain(ErrorType::InternalError, "no upstream was chosen");
        };
        // A retry after a stale kept connection still holds its pass: the upstream never
        // saw that attempt.
        if let (Some(breaker), None) = (&upstream.breaker, &ctx.pass) {
            match breaker.admit(now_ms()) {
                Some(pass) => ctx.pass = Some(pass),
                None => {
                    return Error::e_explain(
                        CIRCUIT_OPEN,
                        format!("upstream `{}` has its circuit open", upstream.id),
                    )
                }
            }
        }
        // On a retry, prefer a node other than the one that just failed.
        let picked = upstream.pick(session.req_header(), &ctx.exchange, ctx.node.as_deref());
        let Some(node) = picked else {
            return Error::e_explain(
                NO_UPSTREAM,
                format!("upstream `{}` has no healthy node", upstream.id),
            );
        };
        // Replaces (and so ends) the lease of a previous attempt.
        ctx.lease = upstream.lease(&node);
        let (tls, sni) = match &upstream.tls {
            Some(t) => (true, t.sni.clone()),
            None => (false, String::new()),
        };
        let mut peer = HttpPeer::new(node.addr, tls, sni);
        peer.group_key = upstream.pool_key(ctx.lease.as_ref());
        ctx.node = Some(node);
        let t = route.timeouts;
        peer.options.connection_timeout = Some(t.connect);
        peer.options.read_timeout = Some(t.read);
        peer.options.write_timeout = Some(t.write);
        if let Some(tls) = &upstream.tls {
            peer.options.verify_cert = tls.verify;
            peer.options.verify_hostname = tls.verify;
        }
        if let Some(idle) = upstream.idle_timeout {
            peer.options.idle_timeout = Some(idle);
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.attempt_failed();
        ctx.failed_attempts += 1;
        let allowed = ctx.route.as_ref().map_or(0, |r| r.retries);
        // Nothing was sent yet, so trying another node is safe for any method.
        e.set_retry(ctx.failed_attempts <= allowed);
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
        self.head_arrived(ctx);
        // HTTP/2 times each response head as a whole already, and its connection is shared.
        if peer.options.alpn.get_max_http_version() != 1 {
            return Ok(());
        }
        let socket = digest.and_then(|d| d.socket_digest.as_deref());
        let inet = |a: Option<&PeerAddr>| a.and_then(PeerAddr::as_inet).copied();
        if let (Some(local), Some(peer), Some(route)) = (
            socket.and_then(|s| inet(s.local_addr())),
            socket.and_then(|s| inet(s.peer_addr())),
            &ctx.route,
        ) {
            let deadline = Instant::now() + route.timeouts.read;
            let conn = head_watch::Connection { fd, local, peer };
            ctx.head_clock = Some(self.heads.arm(conn, deadline));
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The upstream owes no answer before it has the whole body: the head clock starts
        // again with each piece sent.
        if let (Some(ticket), Some(route), Some(_)) = (&ctx.head_clock, &ctx.route, body) {
            self.heads
                .extend(ticket, Instant::now() + route.timeouts.read);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(route) = &ctx.route else {
            return Ok(());
        };
        if let Some(rewrite) = &route.rewrite {
            let uri = rewrite.apply(
                session.req_header().uri.path(),
                session.req_header().uri.query(),
            );
            let uri = uri.parse().map_err(|e| {
                Error::because(ErrorType::InternalError, "rewritten path is not a URI", e)
            })?;
            upstream_request.set_uri(uri);
        }
        let ex = &ctx.exchange;
        let mut forwarded_for = String::new();
        let peer = peer_ip(session);
        // The chain so far is kept only from a trusted proxy (SPEC §8: the gateway owns this
        // header); from anyone else it starts at the socket peer, whatever the client wrote.
        if identity::is_trusted(peer, &self.settings.trusted_proxies) {
            let earlier = session.req_header().headers.get_all(&FORWARDED_FOR_NAME);
            for value in earlier.iter().filter_map(|v| v.to_str().ok()) {
                forwarded_for.push_str(value);
                forwarded_for.push_str(", ");
            }
        }
        push_ip(&mut forwarded_for, peer);
        let forwarded_for = HeaderValue::try_from(forwarded_for).map_err(|e| {
            Error::because(
                ErrorType::InternalError,
                "X-Forwarded-For is not a header value",
                e,
            )
        })?;
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        // The request's own authority: absolute-form and HTTP/2 targets were moved into
        // `Host` when the head was read.
        let host = session.req_header().headers.get(header::HOST).cloned();
        let one_shot = ctx.lease.as_ref().is_some_and(NodeLease::one_shot);
        let request_id = ctx
            .request_id_value
            .as_ref()
            .filter(|_| !ctx.id_from_client);
        let trace = ctx.trace.as_ref();
        head::edit_request(upstream_request, |h| {
            // The map was sized for the client's headers: grow it once, not per insert.
            h.try_reserve(6)?;
            if one_shot {
                // Over `pool.max_idle`: the upstream closes this connection after answering.
                h.try_insert(header::CONNECTION, HeaderValue::from_static("close"))?;
            }
            if let Some(id) = request_id {
                h.try_insert(REQUEST_ID_NAME, id.clone())?;
            }
            if let Some(trace) = trace {
                h.try_insert(TRACEPARENT, trace.traceparent())?;
                let state = trace.state.header();
                if !state.is_empty() {
                    if let Ok(state) = HeaderValue::try_from(state) {
                        h.try_insert(TRACESTATE, state)?;
                    }
                }
            }
            h.try_insert(FORWARDED_FOR_NAME, forwarded_for)?;
            h.try_insert(FORWARDED_PROTO_NAME, proto)?;
            match host {
                Some(host) => {
                    if !h.contains_key(header::HOST) {
                        h.try_insert(header::HOST, host.clone())?;
                    }
                    h.try_insert(FORWARDED_HOST_NAME, host)?;
                }
                // An HTTP/1.0 request without Host: no authority to forward, and never the
                // client's word for one.
                None => {
                    h.remove(FORWARDED_HOST_NAME);
                }
            }
            Ok(())
        })?;
        route.plugins.upstream_request(upstream_request, ex);
        ctx.upstream_sent = Some(Instant::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.head_arrived(ctx);
        let status = upstream_response.status.as_u16();
        if let Err(problem) = check_upstream_status(status) {
            // Counted as a failed attempt by `error_while_proxy`, like any invalid answer.
            return Error::e_explain(ErrorType::InvalidHTTPHeader, problem)
                .map_err(|e| e.into_up());
        }
        if edge_headers::has_hop_by_hop(&upstream_response.headers) {
            head::edit_response(upstream_response, |h| {
                edge_headers::drop_hop_by_hop(h);
                Ok(())
            })?;
        }
        ctx.outcome(status < 500);
        let Some(upstream) = &ctx.upstream else {
            return Ok(());
        };
        if let Some(sent) = ctx.upstream_sent {
            upstream.metrics.observe(sent.elapsed().as_secs_f64());
        }
        if matches!(status, 502..=504) {
            if let Some(node) = &ctx.node {
                upstream.failed(node);
            }
            // A 502/503 is tried again on another node when that cannot repeat a side
            // effect: an idempotent method, and no request body (nothing streamed yet).
            let allowed = ctx.route.as_ref().map_or(0, |r| r.retries);
            let req = session.req_header();
            if status != 504
                && ctx.failed_attempts < allowed
                && req.method.is_idempotent()
                && !has_body(req)
            {
                ctx.failed_attempts += 1;
                ctx.retrying_status = true;
                let mut e = Error::explain(
                    ErrorType::HTTPStatus(status),
                    "upstream answered with a retryable status",
                );
                e.set_retry(true);
                return Err(e);
            }
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
        if self.head_arrived(ctx) {
            // The head clock ran out and cut the connection: a timeout, not a broken peer.
            e = Error::because(
                ErrorType::ReadTimedout,
                "the response head took longer than timeouts.read",
                e,
            )
            .into_up();
        }
        if std::mem::take(&mut ctx.retrying_status) {
            // Our own decision in upstream_response_filter, already counted.
            return e;
        }
        let req = session.req_header();
        let replayable = req.method.is_idempotent() && !has_body(req);
        if client_reused
            && replayable
            && !ctx.stale_retried
            && session.response_written().is_none()
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
        {
            // A kept connection the upstream closed while it sat in the pool (its reset
            // meets the next request): that says nothing of the node. One more try on a
            // fresh connection, counted neither against `retries` nor the node's health, as
            // nginx and Envoy do.
            ctx.stale_retried = true;
            e.set_retry(true);
            return e;
        }
        ctx.attempt_failed();
        if replayable && session.response_written().is_none() {
            // Nothing reached the client and nothing can be repeated twice: another node
            // may answer instead (a node that died mid-request, a timeout), as nginx's
            // `proxy_next_upstream error timeout` does.
            e.set_retry(true);
        } else if !req.method.is_idempotent() || session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            // Pingora's rule: a failure on a reused connection (closed by the upstream
            // meanwhile) is worth one more try.
            e.retry.decide_reuse(client_reused);
        }
        if e.retry() {
            ctx.failed_attempts += 1;
            let allowed = ctx.route.as_ref().map_or(0, |r| r.retries);
            e.set_retry(ctx.failed_attempts <= allowed);
        }
        e
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        self.head_arrived(ctx);
        // The connection now waits for its next head. A body left unread by an answer cannot
        // be taken for one: Pingora closes a connection answered before its body was read.
        if let Some(stream) = session.as_downstream().stream().and_then(ClientStream::of) {
            stream.answered();
        }
        // Nothing written: the client went away first (nginx's 499).
        let status = session
            .response_written()
            .map_or(499, |r| r.status.as_u16());
        let elapsed = ctx.arrived.elapsed();
        let route = ctx.route.as_deref();
        route
            .map_or(&*NO_ROUTE_METRICS, |r| &r.metrics)
            .observe(status, elapsed.as_secs_f64());
        let telemetry = &*self.telemetry;
        if telemetry.access_log.is_none() && !telemetry.tracer.exports() {
            return;
        }
        let req = session.req_header();
        let node = ctx.upstream_sent.and(ctx.node.as_ref().map(|n| n.addr));
        let now = SystemTime::now();
        let arrived_at = now.checked_sub(elapsed).unwrap_or(now);
        let trace_id = ctx.trace.as_ref().map(|t| t.trace_id);
        if let Some(log) = &telemetry.access_log {
            log.log(Entry {
                time: arrived_at,
                // The last phase: what the entry needs is moved out rather than copied.
                request_id: std::mem::take(&mut ctx.exchange.request_id),
                trace_id,
                client_ip: ctx.exchange.client_ip,
                method: req.method.clone(),
                path: req
                    .uri
                    .path_and_query()
                    .map_or_else(|| req.uri.path().to_string(), |p| p.as_str().to_string()),
                route: ctx.exchange.route_id.clone(),
                upstream: ctx.upstream.as_ref().map(|u| u.id.clone()),
                node,
                consumer: ctx.exchange.consumer.clone(),
                status,
                bytes: session.body_bytes_sent(),
                duration: elapsed.as_secs_f64(),
            });
        }
        if let Some(trace) = &ctx.trace {
            telemetry.tracer.finish(
                trace,
                SpanFacts {
                    start: arrived_at,
                    end: now,
                    method: req.method.as_str(),
                    path: req.uri.path(),
                    pattern: route.and_then(|r| r.pattern.as_ref()),
                    route: &ctx.exchange.route_id,
                    status,
                    node,
                },
            );
        }
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
            None => HeaderValue::from_str(&ctx.exchange.request_id).ok(),
        };
        let ex = &ctx.exchange;
        head::edit_response(resp, |h| {
            h.try_reserve(1 + ex.response_headers.len())?;
            if let Some(id) = id {
                h.try_insert(REQUEST_ID_NAME, id)?;
            }
            for (name, value) in &ex.response_headers {
                h.try_insert(name.clone(), value.clone())?;
            }
            Ok(())
        })?;
        if let Some(route) = &ctx.route {
            route.plugins.response(resp, ex);
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let reply = classify(e);
        let code = reply.as_ref().map_or(0, |r| r.status.as_u16());
        if let Some(reply) = reply {
            if session.response_written().is_none() {
                // Pingora closes the client connection after a failed proxy attempt; say so,
                // or a client would send its next request into a closing socket.
                session.set_keepalive(None);
                if ctx.exchange.request_id.is_empty() {
                    ctx.exchange.request_id = request_id(&session.req_header().headers);
                }
                let _ = answer_error(session, &reply, ctx).await;
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

/// Whether a request carries a body (so a retry would have to replay it).
fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(header::TRANSFER_ENCODING)
        || req
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Answers 400 `bad_request` for a request head the gateway will not route.
async fn answer_bad_request(
    session: &mut Session,
    message: String,
    ctx: &RequestCtx,
) -> Result<bool> {
    let reply = Reply::new(StatusCode::BAD_REQUEST, "bad_request", message);
    answer_error(session, &reply, ctx).await
}

/// Writes a gateway error and tells Pingora the request is answered.
async fn answer_error(session: &mut Session, reply: &Reply, ctx: &RequestCtx) -> Result<bool> {
    let metrics = &crate::telemetry::metrics::METRICS;
    if reply.code == "rate_limited" {
        metrics
            .rate_limited
            .with_label_values(&[&*ctx.exchange.route_id])
            .inc();
    } else if let Some(reason) = reply.reason {
        metrics
            .auth_failures
            .with_label_values(&[&*ctx.exchange.route_id, reason])
            .inc();
    }
    let answer = Answer::error(reply, &ctx.exchange.request_id);
    reply::send(
        session,
        answer,
        &ctx.exchange,
        ctx.route.as_ref().map(|r| &r.plugins),
    )
    .await?;
    Ok(true)
}

/// The gateway error for a proxying failure; `None` when the client is gone.
fn classify(e: &Error) -> Option<Reply> {
    use ErrorType::*;
    let reply = |status, code, message: &str| Some(Reply::new(status, code, message));
    match (e.etype(), e.esource()) {
        (t, _) if *t == NO_UPSTREAM => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_upstream",
            "no upstream node is available",
        ),
        (t, _) if *t == CIRCUIT_OPEN => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "circuit_open",
            "the upstream is failing; its circuit breaker is open",
        ),
        (
            ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout,
            ErrorSource::Upstream,
        ) => reply(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "the upstream did not answer in time",
        ),
        (_, ErrorSource::Upstream) => reply(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "the upstream connection failed or its response was invalid",
        ),
        (ReadError | WriteError | ConnectionClosed, ErrorSource::Downstream) => None,
        (ReadTimedout, ErrorSource::Downstream) => None,
        (HTTPStatus(code), _) => {
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::BAD_REQUEST);
            Some(Reply::new(
                status,
                "bad_request",
                "the request could not be processed",
            ))
        }
        (_, ErrorSource::Downstream) => reply(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request is malformed",
        ),
        _ => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the gateway failed to handle the request",
        ),
    }
}

fn peer_ip(session: &Session) -> IpAddr {
    match session.client_addr() {
        Some(PeerAddr::Inet(addr)) => addr.ip(),
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

/// The size of a request head as HTTP/1 would carry it, near enough: request line and
/// header lines with their separators. Counted, not rendered: no allocation.
fn head_size(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len() + req.raw_path().len() + 12;
    req.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// Upstream answers a client must never see as they are (SPEC §8): an upgrade nobody asked
/// for (no route accepts upgrades yet), and status codes HTTP does not have.
fn check_upstream_status(status: u16) -> std::result::Result<(), &'static str> {
    match status {
        101 => Err("the upstream switched protocols without being asked to"),
        100..=599 => Ok(()),
        _ => Err("the upstream answered with a status outside 100-599"),
    }
}

/// Puts a normalized path (and the query as it came) in place of the request target, and
/// moves an absolute-form or HTTP/2 authority into `Host` (RFC 9112 §3.2.2: it wins over
/// any `Host` the client also sent).
fn to_origin_form(req: &mut RequestHeader, path: &str) -> Result<()> {
    // HTTP/2 carries the authority in the URI; an HTTP/1 absolute-form target keeps it in
    // the raw target only.
    let authority = match req.uri.authority() {
        Some(a) => Some(HeaderValue::from_str(a.as_str())),
        None => http::Uri::try_from(req.raw_path())
            .ok()
            .and_then(|uri| uri.authority().map(|a| HeaderValue::from_str(a.as_str()))),
    };
    let target = match req.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let uri = target.parse().map_err(|e| {
        Error::because(
            ErrorType::InvalidHTTPHeader,
            "the normalized path is not a URI",
            e,
        )
    })?;
    req.set_uri(uri);
    if let Some(authority) = authority {
        let authority = authority.map_err(|e| {
            Error::because(
                ErrorType::InvalidHTTPHeader,
                "the authority is not a header value",
                e,
            )
        })?;
        req.insert_header(header::HOST, authority)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_statuses_outside_http_are_refused() {
        assert!(check_upstream_status(101).is_err());
        assert!(check_upstream_status(999).is_err());
        assert!(check_upstream_status(600).is_err());
        assert!(check_upstream_status(99).is_err());
        assert!(check_upstream_status(100).is_ok());
        assert!(check_upstream_status(599).is_ok());
    }

    #[test]
    fn absolute_targets_become_origin_form_with_their_authority_as_host() {
        let mut req =
            RequestHeader::build("GET", b"http://api.example:8080/a//b?x=%2F", None).unwrap();
        req.insert_header("Host", "evil.example").unwrap();
        to_origin_form(&mut req, "/a/b").unwrap();
        assert_eq!(req.uri.to_string(), "/a/b?x=%2F");
        assert_eq!(req.headers.get(header::HOST).unwrap(), "api.example:8080");
    }

    #[test]
    fn errors_map_to_the_spec_codes() {
        let up = Error::new_up;
        let code = |e: &Error| classify(e).map(|r| (r.status.as_u16(), r.code));
        assert_eq!(
            code(&up(ErrorType::ConnectRefused)),
            Some((502, "upstream_error"))
        );
        assert_eq!(
            code(&up(ErrorType::ReadTimedout)),
            Some((504, "upstream_timeout"))
        );
        assert_eq!(
            code(&up(ErrorType::ConnectTimedout)),
            Some((504, "upstream_timeout"))
        );
        assert_eq!(code(&Error::new(NO_UPSTREAM)), Some((503, "no_upstream")));
        assert_eq!(code(&Error::new_down(ErrorType::ConnectionClosed)), None);
    }
}
