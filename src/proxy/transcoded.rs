//! A transcoded call (SPEC §9): the REST request is read whole, made a gRPC call to the
//! route's upstream through the same attempts as any proxied request (breaker, healthy
//! node, retries, passive health), and its answer written back as JSON.
//!
//! The gateway makes this call itself, as grpc-gateway does, rather than through the proxy
//! engine: the HTTP status of a REST answer is the call's `grpc-status`, which arrives in
//! the trailers, after the body, when the engine would have sent the head long before.

use super::answer::{self, answer_error, classify, Answer};
use super::attempt::{Attempts, Failure, Replay, Retry};
use super::ctx::RequestCtx;
use super::Gateway;
use crate::edge::departure::{self, Watch};
use crate::snapshot::Transcoder;
use crate::transcode::bindings::{Binding, Found};
use crate::transcode::request;
use crate::transcode::response::{self, Frames, GrpcStatus};
use crate::upstream::UpstreamTarget;
use bytes::Bytes;
use gatehouse_plugins::{ErrorAnswer, Flow};
use http::{header, HeaderName, HeaderValue, Method, StatusCode};
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use pingora::upstreams::peer::Peer;
use pingora::{Error, ErrorType, Result};
use std::sync::Arc;

/// The largest REST request body read (gRPC's own default receive limit).
const MAX_BODY: usize = 4 << 20;

/// What one attempt came to.
enum Outcome {
    /// The upstream answered: the head is read, the stream open for the rest.
    Answered(Box<HttpSession>),
    /// Try again (another node, or a fresh connection).
    Again,
    /// The attempt failed for good: this is the client's answer.
    Failed(ErrorAnswer),
    /// The client left while the call was waited for: nobody to answer, the call cancelled.
    Left,
}

impl Gateway {
    /// Answers a request on a transcoded route; always `Ok(true)` unless the client is gone.
    pub(super) async fn transcode(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        transcoder: Arc<Transcoder>,
        upstream: Arc<UpstreamTarget>,
    ) -> Result<bool> {
        let Some(bindings) = transcoder.bindings() else {
            let reply = ErrorAnswer::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_upstream",
                "the upstream's services are not known yet: its reflection has not answered",
            );
            return answer_error(session, &reply, ctx).await;
        };
        let req = session.req_header();
        let (binding, values) = match bindings.find(&req.method, req.uri.path()) {
            Found::Binding(binding, values) => (binding, values),
            Found::OtherMethod | Found::NoBinding => {
                let reply = ErrorAnswer::new(
                    StatusCode::NOT_FOUND,
                    "no_route",
                    "no gRPC method is bound to this method and path",
                );
                return answer_error(session, &reply, ctx).await;
            }
        };
        let body = match self.whole_body(session, ctx).await? {
            Ok(body) => body,
            Err(Flow::Answer(local)) => {
                // A plugin answering for the upstream: its answer, as it is.
                let route = ctx.route.clone();
                let plugins = route.as_ref().map(|r| &r.plugins);
                answer::send(session, Answer::local(&local), &mut ctx.exchange, plugins).await?;
                return Ok(true);
            }
            Err(Flow::Respond(reply)) => return answer_error(session, &reply, ctx).await,
            Err(Flow::Continue) => return answer_error(session, &internal("body"), ctx).await,
        };
        let query = session.req_header().uri.query();
        let message = match request::encode(binding, &values, query, &body) {
            Ok(message) => message,
            Err(e) => {
                let reply = ErrorAnswer::new(StatusCode::BAD_REQUEST, "bad_request", e.message);
                return answer_error(session, &reply, ctx).await;
            }
        };
        let framed = response::frame(&message);
        let retries = ctx.route.as_ref().map_or(0, |r| r.retries);
        ctx.attempts = Some(Attempts::new(upstream, retries));
        loop {
            match self.attempt(session, ctx, binding, framed.clone()).await {
                Outcome::Answered(up) => return self.relay(session, ctx, binding, *up).await,
                Outcome::Again => continue,
                Outcome::Failed(reply) => return answer_error(session, &reply, ctx).await,
                Outcome::Left => return answer::client_left(),
            }
        }
    }

    /// Reads the request body whole, through the route's body plugins, up to [`MAX_BODY`];
    /// a refusal or a plugin's own answer instead of it.
    async fn whole_body(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<std::result::Result<Vec<u8>, Flow>> {
        let Some(route) = ctx.route.clone() else {
            return Ok(Ok(Vec::new()));
        };
        let req = session.req_header();
        let expects = req.version == http::Version::HTTP_11
            && req
                .headers
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects {
            // The client waits to be asked for its body: the gateway reads it itself.
            session.write_continue_response().await?;
        }
        let mut body = Vec::new();
        loop {
            let piece = tokio::time::timeout(route.timeouts.read, session.read_request_body());
            let mut piece = match piece.await {
                Ok(read) => read?,
                Err(_) => {
                    return Ok(Err(Flow::Respond(ErrorAnswer::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "the request body did not arrive within timeouts.read",
                    ))))
                }
            };
            let end = piece.is_none();
            if route.plugins.wants_request_body() {
                if let Some(chunk) = &piece {
                    ctx.exchange.request_body_bytes += chunk.len() as u64;
                }
                match route
                    .plugins
                    .request_body(&mut piece, end, &mut ctx.exchange)
                {
                    Flow::Continue => {}
                    refusal => return Ok(Err(refusal)),
                }
            }
            if let Some(piece) = piece {
                if body.len() + piece.len() > MAX_BODY {
                    return Ok(Err(Flow::Respond(ErrorAnswer::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        format!("a transcoded request body is at most {MAX_BODY} bytes"),
                    ))));
                }
                body.extend_from_slice(&piece);
            }
            if end {
                return Ok(Ok(body));
            }
        }
    }

    /// One try at the upstream: a node through the breaker, a connection, the call's head
    /// and message sent, the answer's head read.
    async fn attempt(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        binding: &Binding,
        framed: Bytes,
    ) -> Outcome {
        let (Some(route), Some(attempts)) = (ctx.route.clone(), ctx.attempts.as_mut()) else {
            return Outcome::Failed(internal("no upstream was chosen"));
        };
        if let Err(refused) = attempts.start(session.req_header(), &ctx.exchange) {
            let e = answer::refused(refused, &attempts.upstream().id);
            return Outcome::Failed(classify(&e).unwrap_or_else(|| internal("no node")));
        }
        let peer = attempts.peer(&route.timeouts);
        let (mut up, reused) = match self.connector.get_http_session(&peer).await {
            Ok(connected) => connected,
            Err(e) => {
                return match attempts.connect_failed() {
                    true => Outcome::Again,
                    false => Outcome::Failed(upstream_failure(e)),
                }
            }
        };
        up.set_read_timeout(Some(route.timeouts.read));
        up.set_write_timeout(Some(route.timeouts.write));
        let head = match self.call_head(session, ctx, binding, &peer) {
            Ok(head) => head,
            Err(e) => return Outcome::Failed(classify(&e).unwrap_or_else(|| internal("head"))),
        };
        // The call is cancelled (its stream reset) if the client leaves before its answer.
        let watch = Watch::of(session.as_downstream_mut());
        let sent = departure::unless_client_leaves(watch, send(&mut up, head, framed)).await;
        let Some(sent) = sent else {
            if let Some(attempts) = ctx.attempts.as_mut() {
                attempts.unjudged();
            }
            // The stream is reset (the server sees a cancel); its connection serves on.
            self.release(up, ctx).await;
            return Outcome::Left;
        };
        let Some(attempts) = ctx.attempts.as_mut() else {
            return Outcome::Failed(internal("no upstream was chosen"));
        };
        match sent {
            Ok(()) => {
                let status = up.response_header().map_or(0, |r| r.status.as_u16());
                if attempts.answered(status, session.req_header()) {
                    return Outcome::Again;
                }
                Outcome::Answered(Box::new(up))
            }
            Err(e) => {
                let e = e.into_up();
                // The message is held whole: only a method's own effects forbid a replay.
                let replay = Replay {
                    idempotent: session.req_header().method.is_idempotent(),
                    has_body: false,
                };
                match attempts.failed(Failure::of_call(&e, reused, replay, false)) {
                    Retry::Again | Retry::Fresh => Outcome::Again,
                    Retry::AsDecided | Retry::No => Outcome::Failed(upstream_failure(e)),
                }
            }
        }
    }

    /// The gRPC call's head: the client's headers as metadata (but for those of the REST
    /// body and of gRPC's own framing), then everything any upstream request gets.
    fn call_head(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        binding: &Binding,
        peer: &HttpPeer,
    ) -> Result<RequestHeader> {
        let client = session.req_header();
        let mut head = RequestHeader::build(Method::POST, binding.grpc_path.as_bytes(), None)?;
        // What arrived holds no hop-by-hop header but `Connection: keep-alive|close`, which
        // HTTP/1 keeps for Pingora: none of them is metadata, and HTTP/2 refuses them.
        let hop = crate::edge::headers::hop_by_hop(&client.headers);
        for (name, value) in client.headers.iter() {
            if !is_rest_only(name) && !hop.contains(name) {
                head.append_header(name.clone(), value.clone())?;
            }
        }
        head.insert_header(header::CONTENT_TYPE, "application/grpc")?;
        head.set_version(http::Version::HTTP_2);
        let authority = client
            .headers
            .get(header::HOST)
            .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
            .filter(|a| !a.as_str().contains('@'));
        let scheme = if peer.is_tls() { "https" } else { "http" };
        let mut uri = http::uri::Builder::new()
            .scheme(scheme)
            .path_and_query(binding.grpc_path.as_str());
        uri = match authority {
            Some(authority) => uri.authority(authority),
            None => uri.authority(peer.address().to_string()),
        };
        let uri = uri.build().map_err(|e| {
            Error::because(ErrorType::InvalidHTTPHeader, "no authority for the call", e)
        })?;
        head.set_uri(uri);
        // Starts the clock of the upstream's latency.
        self.forward(session, &mut head, ctx)?;
        Ok(head)
    }

    /// Writes the answer of a call whose head arrived.
    async fn relay(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        binding: &Binding,
        mut up: HttpSession,
    ) -> Result<bool> {
        let Some(head) = up.response_header() else {
            return answer_error(session, &internal("no head"), ctx).await;
        };
        if head.status != StatusCode::OK {
            let status = head.status.as_u16();
            let stand_in = ctx
                .route
                .as_ref()
                .and_then(|r| answer::stands_in(r, status))
                .and_then(|e| classify(&e));
            if let Some(reply) = stand_in {
                // The route's fallback answers an upstream's own 5xx, as for REST upstreams.
                return answer_error(session, &reply, ctx).await;
            }
            // Not a gRPC answer (a proxy's between them): the status gRPC reads from it.
            let status = GrpcStatus {
                code: grpc_code_of_http(head.status.as_u16()),
                message: format!("the upstream answered HTTP {}", head.status.as_u16()),
            };
            return self.send_status(session, ctx, &status).await;
        }
        let metadata = metadata_of(&head.headers);
        if let Some(status) = GrpcStatus::of(&head.headers) {
            // Trailers-only: no message, the status in the head.
            if status.ok() && binding.server_streaming() {
                let mut array = JsonArray::default();
                array.open(session, ctx, &metadata).await?;
                return array.close(session, ctx, None).await;
            }
            return self.send_status(session, ctx, &trailers_only(status)).await;
        }
        let is_grpc = head
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if !is_grpc {
            return answer_error(session, &bad_answer("its content-type is not gRPC"), ctx).await;
        }
        if binding.server_streaming() {
            return self.relay_stream(session, ctx, binding, up, metadata).await;
        }
        let mut frames = Frames::default();
        let mut message = None;
        let read = async {
            while let Some(piece) = up.read_response_body().await? {
                frames.push(&piece);
                while let Some(m) = frames.next_message().map_err(invalid)? {
                    if message.replace(m).is_some() {
                        return Error::e_explain(
                            ErrorType::InvalidHTTPHeader,
                            "a unary call answered more than one message",
                        );
                    }
                }
            }
            frames.finish().map_err(invalid)?;
            trailers(&mut up).await
        };
        let status = match read.await {
            Ok(status) => status,
            Err(e) => return self.upstream_cut(session, ctx, e).await,
        };
        if !status.ok() {
            return self.send_status(session, ctx, &status).await;
        }
        let Some(message) = message else {
            return answer_error(session, &bad_answer("an OK call answered no message"), ctx).await;
        };
        let json = match response::to_json(binding, &message) {
            Ok(json) => json,
            Err(e) => return answer_error(session, &bad_answer(&e), ctx).await,
        };
        self.release(up, ctx).await;
        send_json(session, ctx, StatusCode::OK, &metadata, json).await
    }

    /// A server-streaming call, as a JSON array written as its messages come. A failure
    /// once the array has begun ends it with an error object of the JSON error form.
    async fn relay_stream(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        binding: &Binding,
        mut up: HttpSession,
        metadata: Vec<(HeaderName, HeaderValue)>,
    ) -> Result<bool> {
        let mut frames = Frames::default();
        let mut pending: Vec<Bytes> = Vec::new();
        let mut array = JsonArray::default();
        let mut watching = true;
        loop {
            // A quiet stream may send nothing for long: the client leaving ends the call
            // (dropping it resets the stream upstream) rather than waiting for the next
            // message.
            let read = loop {
                tokio::select! {
                    read = up.read_response_body() => break read,
                    idle = session.downstream_session.read_body_or_idle(true), if watching => {
                        if idle.is_err() {
                            return Ok(true);
                        }
                        watching = false;
                    }
                }
            };
            let piece = match read {
                Ok(piece) => piece,
                Err(e) if !array.opened => return self.upstream_cut(session, ctx, e).await,
                Err(_) => {
                    let broke = GrpcStatus {
                        code: 14,
                        message: "the upstream's stream broke off".into(),
                    };
                    return array.close(session, ctx, Some(&broke)).await;
                }
            };
            let end = piece.is_none();
            if let Some(piece) = &piece {
                frames.push(piece);
            }
            loop {
                match frames.next_message() {
                    Ok(Some(m)) => pending.push(m),
                    Ok(None) => break,
                    Err(e) if !array.opened => {
                        return answer_error(session, &bad_answer(&e.to_string()), ctx).await
                    }
                    Err(e) => {
                        let invalid = GrpcStatus {
                            code: 13,
                            message: format!("the upstream's answer is invalid: {e}"),
                        };
                        return array.close(session, ctx, Some(&invalid)).await;
                    }
                }
            }
            if !end {
                if !pending.is_empty() {
                    array.open(session, ctx, &metadata).await?;
                    array.write(session, binding, &mut pending).await?;
                }
                continue;
            }
            let status = match frames.finish().map_err(invalid) {
                Ok(()) => trailers(&mut up).await,
                Err(e) => Err(e),
            };
            let status = match status {
                Ok(status) => status,
                Err(e) if !array.opened && pending.is_empty() => {
                    return self.upstream_cut(session, ctx, e).await
                }
                Err(_) => GrpcStatus {
                    code: 14,
                    message: "the upstream's stream ended without a status".into(),
                },
            };
            if !array.opened && !status.ok() && pending.is_empty() {
                return self.send_status(session, ctx, &status).await;
            }
            array.open(session, ctx, &metadata).await?;
            array.write(session, binding, &mut pending).await?;
            if status.ok() {
                self.release(up, ctx).await;
            }
            return array
                .close(session, ctx, Some(&status).filter(|s| !s.ok()))
                .await;
        }
    }

    /// A call that ended with a non-OK status: its HTTP status and JSON error.
    async fn send_status(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        status: &GrpcStatus,
    ) -> Result<bool> {
        let (code, _) = status.http();
        let body = status.body(&ctx.exchange.request_id);
        send_json(session, ctx, code, &[], body).await
    }

    /// The upstream failed after its head: the node hears of it, the client gets a 502 or
    /// 504. Nothing is tried again: the call may have done its work.
    async fn upstream_cut(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Result<bool> {
        let e = e.into_up();
        if let Some(attempts) = ctx.attempts.as_mut() {
            let replay = Replay {
                idempotent: false,
                has_body: true,
            };
            attempts.failed(Failure::of_call(&e, false, replay, true));
        }
        answer_error(session, &upstream_failure(e), ctx).await
    }

    /// Gives a finished call's connection back to the pool.
    async fn release(&self, up: HttpSession, ctx: &RequestCtx) {
        let (Some(route), Some(attempts)) = (&ctx.route, &ctx.attempts) else {
            return;
        };
        let peer = attempts.peer(&route.timeouts);
        let idle = attempts.upstream().idle_timeout;
        self.connector.release_http_session(up, &peer, idle).await;
    }
}

/// A streamed answer's JSON array, as far as it was written.
#[derive(Default)]
struct JsonArray {
    opened: bool,
    elements: usize,
}

impl JsonArray {
    /// Writes the head and `[`, once.
    async fn open(
        &mut self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        metadata: &[(HeaderName, HeaderValue)],
    ) -> Result<()> {
        if std::mem::replace(&mut self.opened, true) {
            return Ok(());
        }
        let answer = Answer {
            status: StatusCode::OK,
            headers: metadata,
            content_type: Some(HeaderValue::from_static("application/json")),
            body: Bytes::new(),
        };
        let route = ctx.route.clone();
        let plugins = route.as_ref().map(|r| &r.plugins);
        let mut head = answer::head(&answer, None, &[], &mut ctx.exchange, plugins)?;
        match session.req_header().version {
            // Chunked, so the connection carries the next request once the array ends.
            http::Version::HTTP_11 => head.insert_header(header::TRANSFER_ENCODING, "chunked")?,
            // An HTTP/1.0 client reads the array to the connection's end.
            http::Version::HTTP_10 | http::Version::HTTP_09 => session.set_keepalive(None),
            _ => {}
        }
        session.write_response_header(Box::new(head), false).await?;
        session
            .write_response_body(Some(Bytes::from_static(b"[")), false)
            .await
    }

    /// Writes the messages read so far as elements.
    async fn write(
        &mut self,
        session: &mut Session,
        binding: &Binding,
        pending: &mut Vec<Bytes>,
    ) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let mut out = Vec::new();
        for message in pending.drain(..) {
            if self.elements > 0 {
                out.push(b',');
            }
            self.elements += 1;
            match response::to_json(binding, &message) {
                Ok(json) => out.extend_from_slice(&json),
                Err(e) => out.extend_from_slice(
                    &GrpcStatus {
                        code: 13,
                        message: e,
                    }
                    .body(""),
                ),
            }
        }
        session
            .write_response_body(Some(Bytes::from(out)), false)
            .await
    }

    /// Ends the array, with an error object last when the call failed.
    async fn close(
        self,
        session: &mut Session,
        ctx: &RequestCtx,
        error: Option<&GrpcStatus>,
    ) -> Result<bool> {
        let mut out = Vec::new();
        if let Some(status) = error {
            if self.elements > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&status.body(&ctx.exchange.request_id));
        }
        out.push(b']');
        session
            .write_response_body(Some(Bytes::from(out)), true)
            .await?;
        Ok(true)
    }
}

/// Writes a whole JSON answer, through the route's response edits.
async fn send_json(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: StatusCode,
    headers: &[(HeaderName, HeaderValue)],
    body: Vec<u8>,
) -> Result<bool> {
    let answer = Answer {
        status,
        headers,
        content_type: Some(HeaderValue::from_static("application/json")),
        body: Bytes::from(body),
    };
    let route = ctx.route.clone();
    let plugins = route.as_ref().map(|r| &r.plugins);
    answer::send(session, answer, &mut ctx.exchange, plugins).await?;
    Ok(true)
}

/// Sends the call's head and its one message, then reads the answer's head.
async fn send(up: &mut HttpSession, head: RequestHeader, framed: Bytes) -> Result<()> {
    up.write_request_header(Box::new(head)).await?;
    up.write_request_body(framed, true).await?;
    up.read_response_header().await
}

/// The call's status from its trailers; a stream that ends without one is an invalid answer.
async fn trailers(up: &mut HttpSession) -> Result<GrpcStatus> {
    let trailers = match up {
        HttpSession::H2(h2) => h2.read_trailers().await?,
        _ => None,
    };
    trailers.as_ref().and_then(GrpcStatus::of).ok_or_else(|| {
        Error::explain(
            ErrorType::InvalidHTTPHeader,
            "the call ended without grpc-status",
        )
    })
}

/// A trailers-only OK answer to a unary call carries no message: that is an error too.
fn trailers_only(status: GrpcStatus) -> GrpcStatus {
    if status.ok() {
        GrpcStatus {
            code: 13,
            message: "the upstream answered no message".into(),
        }
    } else {
        status
    }
}

/// The response headers passed to the client: the call's initial metadata, without gRPC's
/// own and the framing of a body that is rewritten.
fn metadata_of(headers: &http::HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            !name.starts_with("grpc-")
                && !matches!(name, "content-type" | "content-length" | "trailer" | "te")
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// Headers of the REST exchange that are not the call's metadata: the body's framing and
/// encoding, and gRPC's own headers, which only the gateway sets on this call.
fn is_rest_only(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.starts_with("grpc-")
        || matches!(
            name,
            "content-type"
                | "content-length"
                | "transfer-encoding"
                | "content-encoding"
                | "accept-encoding"
                | "accept"
                | "expect"
                | "te"
        )
}

/// The gRPC code a non-gRPC HTTP answer stands for (the gRPC HTTP/2 protocol's table).
fn grpc_code_of_http(status: u16) -> u16 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

fn invalid(e: crate::transcode::response::FrameError) -> Box<Error> {
    Error::explain(ErrorType::InvalidHTTPHeader, e.to_string())
}

fn internal(what: &str) -> ErrorAnswer {
    ErrorAnswer::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        format!("the gateway failed to make the call: {what}"),
    )
}

fn bad_answer(what: &str) -> ErrorAnswer {
    ErrorAnswer::new(
        StatusCode::BAD_GATEWAY,
        "upstream_error",
        format!("the upstream's answer is invalid: {what}"),
    )
}

fn upstream_failure(e: Box<Error>) -> ErrorAnswer {
    classify(&e.into_up()).unwrap_or_else(|| bad_answer("the connection failed"))
}
