//! The request as the upstream receives it, and the answer as the client may see it
//! (SPEC §4 and §8): the route's rewrite, the headers the gateway owns, the route's request
//! plugins; an upstream answer outside HTTP refused, its hop-by-hop headers dropped.

use super::attempt::Attempts;
use super::ctx::RequestCtx;
use super::head;
use super::identity::{
    self, FORWARDED_FOR_NAME, FORWARDED_HOST_NAME, FORWARDED_PROTO_NAME, REQUEST_ID_NAME,
};
use super::Gateway;
use crate::edge::headers as edge_headers;
use crate::telemetry::trace::{TRACEPARENT, TRACESTATE};
use crate::wire::push_ip;
use http::{header, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use std::time::Instant;

impl Gateway {
    /// Makes the upstream request: rewrite, forwarding headers, request id, trace context,
    /// then the route's request plugins.
    pub(super) fn forward(
        &self,
        session: &Session,
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
        let peer = super::arrival::peer_ip(session);
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
        let one_shot = ctx.attempts.as_ref().is_some_and(Attempts::one_shot);
        let request_id = ctx
            .request_id_value
            .as_ref()
            .filter(|_| !ctx.id_from_client);
        let trace = ctx.trace.as_ref();
        // gRPC servers want `TE: trailers`, which Pingora drops from an HTTP/1 client's
        // request: a call to a gRPC upstream always says it.
        let grpc = ctx
            .attempts
            .as_ref()
            .is_some_and(|a| a.upstream().spec.scheme.grpc());
        head::edit_request(upstream_request, |h| {
            // The map was sized for the client's headers: grow it once, not per insert.
            h.try_reserve(7)?;
            if grpc {
                h.try_insert(header::TE, HeaderValue::from_static("trailers"))?;
            }
            if one_shot {
                // Over `pool.max_idle`, or the try after a stale kept connection: the
                // upstream closes this connection after answering.
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
        if let Some(attempts) = ctx.attempts.as_mut() {
            attempts.sending(Instant::now());
        }
        Ok(())
    }
}

/// Settles an upstream's answer for the client: refused when it is outside HTTP (SPEC §8),
/// without its hop-by-hop headers otherwise.
pub(super) fn settle_answer(upstream_response: &mut ResponseHeader) -> Result<()> {
    if let Err(problem) = check_upstream_status(upstream_response.status.as_u16()) {
        // Counted as a failed attempt by `error_while_proxy`, like any invalid answer.
        return Error::e_explain(ErrorType::InvalidHTTPHeader, problem).map_err(|e| e.into_up());
    }
    if edge_headers::has_hop_by_hop(&upstream_response.headers) {
        head::edit_response(upstream_response, |h| {
            edge_headers::drop_hop_by_hop(h);
            Ok(())
        })?;
    }
    Ok(())
}

/// Upstream answers a client must never see as they are (SPEC §8): an upgrade nobody asked
/// for (a WebSocket upgrade a route asked for is let through before this), and status codes
/// HTTP does not have.
fn check_upstream_status(status: u16) -> std::result::Result<(), &'static str> {
    match status {
        101 => Err("the upstream switched protocols without being asked to"),
        100..=599 => Ok(()),
        _ => Err("the upstream answered with a status outside 100-599"),
    }
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
}
