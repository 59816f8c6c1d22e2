//! Answers the gateway writes itself: its JSON errors (SPEC §4) and direct responses.

use super::ctx::RequestCtx;
use crate::resource::FallbackReason;
use crate::snapshot::{FallbackAnswer, FALLBACK_HEADER};
use bytes::Bytes;
use gatehouse_plugins::{ErrorAnswer, Exchange, LocalAnswer, PluginChain, Tally};
use http::{header, HeaderName, HeaderValue, Method, StatusCode};
use pingora::http::ResponseHeader;
use pingora::protocols::http::HttpTask;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};

pub use crate::wire::error_body;

/// The error type for "no node to send to", mapped to 503 `no_upstream`.
pub const NO_UPSTREAM: ErrorType = ErrorType::Custom("no_upstream");
/// The error type for "the upstream's circuit is open", mapped to 503 `circuit_open`.
pub const CIRCUIT_OPEN: ErrorType = ErrorType::Custom("circuit_open");
/// The error type for "the upstream has its concurrency limit in flight", mapped to 503
/// `overloaded`.
pub const OVERLOADED: ErrorType = ErrorType::Custom("overloaded");
/// The error types for "the upstream answered with an error of its own that the route's
/// `fallback` stands in for": 502 `upstream_error` and 504 `upstream_timeout` (answered
/// by the fallback, never written as such).
pub const UPSTREAM_FAILED: ErrorType = ErrorType::Custom("upstream_failed");
pub const UPSTREAM_TIMED_OUT: ErrorType = ErrorType::Custom("upstream_timed_out");
/// The error type for "the request's lane tag is too long to be one", mapped to 400.
pub const BAD_LANE_TAG: ErrorType = ErrorType::Custom("bad_lane_tag");

/// The error of an attempt that could not start.
pub fn refused(refused: super::attempt::Refused, upstream: &str) -> Box<Error> {
    use super::attempt::Refused;
    match refused {
        Refused::CircuitOpen => Error::explain(
            CIRCUIT_OPEN,
            format!("upstream `{upstream}` has its circuit open"),
        ),
        Refused::Overloaded => Error::explain(
            OVERLOADED,
            format!("upstream `{upstream}` has its concurrency limit in flight"),
        ),
        Refused::NoNode => Error::explain(
            NO_UPSTREAM,
            format!("upstream `{upstream}` has no healthy node for the request"),
        ),
        Refused::BadTag => Error::explain(
            BAD_LANE_TAG,
            format!(
                "the lane tag is longer than {} bytes",
                crate::resource::MAX_LANE_TAG
            ),
        ),
    }
}

/// Everything a gateway-made answer carries.
pub struct Answer<'a> {
    pub status: StatusCode,
    pub headers: &'a [(HeaderName, HeaderValue)],
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

impl Answer<'_> {
    /// A plugin's local answer or a route's `direct_response`, as it is.
    pub fn local(local: &LocalAnswer) -> Answer<'_> {
        Answer {
            status: local.status,
            headers: &local.headers,
            content_type: None,
            body: local.body.clone(),
        }
    }

    /// A refusal of a gRPC call, as gRPC: HTTP 200 and the status in headers that end the
    /// stream ("trailers-only"), so a client sees UNAUTHENTICATED, not a protocol error.
    pub fn grpc(reply: &ErrorAnswer) -> (Answer<'_>, [(HeaderName, HeaderValue); 2]) {
        let status = HeaderValue::from(grpc_status(reply.status));
        let message = HeaderValue::from_str(&grpc_message(&reply.message))
            .unwrap_or(HeaderValue::from_static(""));
        (
            Answer {
                status: StatusCode::OK,
                headers: &reply.headers,
                content_type: Some(HeaderValue::from_static("application/grpc")),
                body: Bytes::new(),
            },
            [
                (HeaderName::from_static("grpc-status"), status),
                (HeaderName::from_static("grpc-message"), message),
            ],
        )
    }

    pub fn error<'a>(reply: &'a ErrorAnswer, request_id: &str) -> Answer<'a> {
        Answer {
            status: reply.status,
            headers: &reply.headers,
            content_type: Some(HeaderValue::from_static("application/json")),
            body: error_body(reply.code, &reply.message, request_id),
        }
    }
}

/// Whether a request is a gRPC call: HTTP/2 (gRPC runs on nothing else) and
/// `application/grpc` or `application/grpc+FORMAT` (gRPC-Web is another protocol).
pub fn is_grpc(req: &pingora::http::RequestHeader) -> bool {
    req.version == http::Version::HTTP_2
        && req.headers.get(header::CONTENT_TYPE).is_some_and(|v| {
            let v = v.as_bytes();
            v.strip_prefix(b"application/grpc")
                .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
        })
}

/// The gRPC status of a gateway answer (SPEC §9).
pub fn grpc_status(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 3,        // INVALID_ARGUMENT
        401 => 16,       // UNAUTHENTICATED
        403 => 7,        // PERMISSION_DENIED
        404 | 405 => 12, // UNIMPLEMENTED
        413 | 429 => 8,  // RESOURCE_EXHAUSTED
        502 | 503 => 14, // UNAVAILABLE
        504 => 4,        // DEADLINE_EXCEEDED
        500 => 13,       // INTERNAL
        _ => 2,          // UNKNOWN
    }
}

/// `grpc-message` is percent-encoded: bytes outside printable ASCII, and `%`.
fn grpc_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The head of a gateway-made answer: the request id, the exchange's extra headers, the
/// route's response edits, then `last`. Without a `length`, the body is streamed.
pub fn head(
    answer: &Answer<'_>,
    length: Option<usize>,
    last: &[(HeaderName, HeaderValue)],
    ex: &mut Exchange,
    plugins: Option<&PluginChain>,
) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(answer.status, Some(answer.headers.len() + 6))?;
    if let Some(content_type) = &answer.content_type {
        resp.insert_header(header::CONTENT_TYPE, content_type.clone())?;
    }
    for (name, value) in answer.headers {
        resp.append_header(name.clone(), value.clone())?;
    }
    // A 204 or 304 has no body, and says no length (RFC 9110).
    if let Some(length) = length.filter(|_| !matches!(answer.status.as_u16(), 204 | 304)) {
        resp.insert_header(header::CONTENT_LENGTH, length)?;
    }
    if let Some(id) = super::identity::request_id_value(&ex.request_id) {
        resp.insert_header(super::identity::REQUEST_ID, id)?;
    }
    for (name, value) in &ex.response_headers {
        resp.insert_header(name.clone(), value.clone())?;
    }
    for (name, value) in &ex.response_headers_added {
        resp.append_header(name.clone(), value.clone())?;
    }
    if let Some(plugins) = plugins {
        // The gateway's own answer is final: a plugin edits it, but cannot replace it.
        let _ = plugins.response(&mut resp, ex);
    }
    for (name, value) in last {
        resp.insert_header(name.clone(), value.clone())?;
    }
    Ok(resp)
}

/// Writes a complete answer: the request id, the exchange's extra headers, then the route's
/// response edits, so `response_headers` apply to gateway-made answers too.
pub async fn send(
    session: &mut Session,
    answer: Answer<'_>,
    ex: &mut Exchange,
    plugins: Option<&PluginChain>,
) -> Result<()> {
    send_with(session, answer, &[], ex, plugins).await
}

/// [`send`], with headers of the gateway's own added last (a gRPC refusal's status).
async fn send_with(
    session: &mut Session,
    answer: Answer<'_>,
    last: &[(HeaderName, HeaderValue)],
    ex: &mut Exchange,
    plugins: Option<&PluginChain>,
) -> Result<()> {
    let resp = head(&answer, Some(answer.body.len()), last, ex, plugins)?;
    let head_only = session.req_header().method == Method::HEAD || answer.body.is_empty();
    if head_only && session.req_header().version == http::Version::HTTP_2 {
        // Pingora's session would send the head and end the stream with an empty DATA
        // frame; a gRPC client reads a status from a head that ends the stream itself.
        session
            .downstream_session
            .response_duplex_vec(vec![HttpTask::Header(Box::new(resp), true)])
            .await?;
        return Ok(());
    }
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(answer.body), true).await?;
    }
    Ok(())
}

/// Writes a gateway error and tells Pingora the request is answered.
pub async fn answer_error(
    session: &mut Session,
    reply: &ErrorAnswer,
    ctx: &mut RequestCtx,
) -> Result<bool> {
    let metrics = &crate::telemetry::metrics::METRICS;
    let route = &*ctx.exchange.route_id;
    match reply.tally {
        Some(Tally::RateLimited) => metrics.rate_limited.with_label_values(&[route]).inc(),
        Some(Tally::AuthFailure) => metrics
            .auth_failures
            .with_label_values(&[route, reply.reason.unwrap_or("other")])
            .inc(),
        None => {}
    }
    if let Some(reason) = fallback_reason(reply) {
        let route = ctx.route.clone();
        if let Some(fallback) = route.as_ref().and_then(|r| r.fallback.as_deref()) {
            if fallback.take(reason) {
                let plugins = route.as_ref().map(|r| &r.plugins);
                send_fallback(session, fallback, reason, ctx, plugins).await?;
                return Ok(true);
            }
        }
    }
    let plugins = ctx.route.as_ref().map(|r| &r.plugins);
    if is_grpc(session.req_header()) {
        // Counted as what it is, whatever the wire says.
        ctx.refused_as = Some(reply.status.as_u16());
        let (answer, status) = Answer::grpc(reply);
        send_with(session, answer, &status, &mut ctx.exchange, plugins).await?;
    } else {
        let answer = Answer::error(reply, &ctx.exchange.request_id);
        send(session, answer, &mut ctx.exchange, plugins).await?;
    }
    Ok(true)
}

/// The error that has a route's fallback answer for an upstream's own error answer
/// (`status` 5xx), when the route's `fallback` lists its reason.
pub fn stands_in(route: &crate::snapshot::CompiledRoute, status: u16) -> Option<Box<Error>> {
    let fallback = route.fallback.as_deref()?;
    let (reason, etype) = match status {
        504 => (FallbackReason::UpstreamTimeout, UPSTREAM_TIMED_OUT),
        500..=599 => (FallbackReason::UpstreamError, UPSTREAM_FAILED),
        _ => return None,
    };
    fallback
        .covers(reason)
        .then(|| Error::explain(etype, format!("the upstream answered {status}")))
}

/// Why a request ended when its client left while the gateway waited on its behalf (its
/// plugins, or a call the gateway makes itself).
const CLIENT_LEFT: &str = "the client left while the gateway waited on its behalf";

/// Ends a request whose client left during a wait: nothing to answer ([`classify`] gives
/// none for a downstream close), logged as nginx's 499, the upstream never asked.
pub fn client_left<T>() -> Result<T> {
    Error::e_explain(ErrorType::ConnectionClosed, CLIENT_LEFT).map_err(|e| e.into_down())
}

/// Whether an error is one [`client_left`] made: the access log's 499 says it, so no error
/// line does (a client that comes and goes at will must not be able to fill the error log).
pub fn is_client_left(e: &Error) -> bool {
    e.etype() == &ErrorType::ConnectionClosed
        && e.context
            .as_ref()
            .is_some_and(|c| c.as_str() == CLIENT_LEFT)
}

/// Whether an error is one [`stands_in`] made.
pub fn is_stand_in(e: &Error) -> bool {
    *e.etype() == UPSTREAM_FAILED || *e.etype() == UPSTREAM_TIMED_OUT
}

/// Which of a route's `fallback.on` reasons an error answer is, if any: a rate limit's
/// refusal (whichever plugin made it), or one of the gateway's own errors by its code.
fn fallback_reason(reply: &ErrorAnswer) -> Option<FallbackReason> {
    if reply.tally == Some(Tally::RateLimited) {
        return Some(FallbackReason::RateLimited);
    }
    FallbackReason::parse(reply.code).filter(|r| *r != FallbackReason::RateLimited)
}

/// One gRPC message of no bytes: the answer's message with every field at its default.
const EMPTY_MESSAGE: [u8; 5] = [0; 5];

/// Writes a route's fallback for `reason`, marked with `X-Gatehouse-Fallback`. A gRPC call
/// gets it as gRPC: a 2xx `status` is an OK call answering one message with every field
/// at its default (proto3's empty answer); any other status ends the call with its gRPC
/// status (SPEC §9's table) and `body` as the message.
async fn send_fallback(
    session: &mut Session,
    fallback: &FallbackAnswer,
    reason: FallbackReason,
    ctx: &mut RequestCtx,
    plugins: Option<&PluginChain>,
) -> Result<()> {
    let marker = [(FALLBACK_HEADER, HeaderValue::from_static(reason.name()))];
    if !is_grpc(session.req_header()) {
        let answer = Answer {
            status: fallback.status,
            headers: &fallback.headers,
            content_type: None,
            body: fallback.body.clone(),
        };
        return send_with(session, answer, &marker, &mut ctx.exchange, plugins).await;
    }
    let grpc = |status: u16, message: &str| {
        [
            (
                HeaderName::from_static("grpc-status"),
                HeaderValue::from(status),
            ),
            (
                HeaderName::from_static("grpc-message"),
                HeaderValue::from_str(&grpc_message(message))
                    .unwrap_or(HeaderValue::from_static("")),
            ),
        ]
    };
    // gRPC sets its own content type; the fallback's is for HTTP clients.
    let answer = Answer {
        status: StatusCode::OK,
        headers: &fallback.grpc_headers,
        content_type: Some(HeaderValue::from_static("application/grpc")),
        body: Bytes::new(),
    };
    if !fallback.status.is_success() {
        ctx.refused_as = Some(fallback.status.as_u16());
        let body = String::from_utf8_lossy(&fallback.body);
        let [status, message] = grpc(grpc_status(fallback.status), &body);
        let last = [marker[0].clone(), status, message];
        return send_with(session, answer, &last, &mut ctx.exchange, plugins).await;
    }
    let resp = head(&answer, None, &marker, &mut ctx.exchange, plugins)?;
    let mut trailers = http::HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from(0u16));
    session
        .downstream_session
        .response_duplex_vec(vec![
            HttpTask::Header(Box::new(resp), false),
            HttpTask::Body(Some(Bytes::from_static(&EMPTY_MESSAGE)), false),
            HttpTask::Trailer(Some(Box::new(trailers))),
        ])
        .await?;
    Ok(())
}

/// The gateway error for a proxying failure; `None` when the client is gone.
pub fn classify(e: &Error) -> Option<ErrorAnswer> {
    use ErrorType::*;
    let reply = |status, code, message: &str| Some(ErrorAnswer::new(status, code, message));
    match (e.etype(), e.esource()) {
        (t, _) if *t == NO_UPSTREAM => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_upstream",
            "no upstream node is available",
        ),
        (t, _) if *t == BAD_LANE_TAG => Some(ErrorAnswer::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "the lane tag is longer than {} bytes",
                crate::resource::MAX_LANE_TAG
            ),
        )),
        (t, _) if *t == UPSTREAM_FAILED => reply(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "the upstream answered with an error",
        ),
        (t, _) if *t == UPSTREAM_TIMED_OUT => reply(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "the upstream answered that it timed out",
        ),
        (t, _) if *t == OVERLOADED => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the upstream has as many requests in flight as it takes; try again later",
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
            Some(ErrorAnswer::new(
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(code(&Error::new(CIRCUIT_OPEN)), Some((503, "circuit_open")));
        assert_eq!(code(&Error::new(OVERLOADED)), Some((503, "overloaded")));
        assert_eq!(code(&Error::new_down(ErrorType::ConnectionClosed)), None);
    }
}
