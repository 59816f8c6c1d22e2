//! A request head as it arrives, up to its route: who sent it (request id, trace, client
//! address), whether any route may see it (SPEC §8), and which route it is.

use super::ctx::{RequestCtx, WebSocket};
use super::identity::{client_ip, client_request_id, new_request_id, request_id_value};
use super::Gateway;
use crate::edge::headers as edge_headers;
use crate::edge::target::{self, TargetError};
use crate::edge::ClientStream;
use crate::router::{normalize_host, RouteRequest};
use crate::snapshot::{CompiledRoute, Snapshot};
use gatehouse_plugins::ErrorAnswer;
use http::{header, HeaderValue, StatusCode};
use pingora::http::RequestHeader;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

impl Gateway {
    /// The head is read: its clock stops, the connection's keep-alive is settled, and the
    /// request gets its id, trace context and client address.
    pub(super) fn greet(&self, session: &mut Session, ctx: &mut RequestCtx) {
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
        ctx.request_id_value = request_id_value(&ctx.exchange.request_id);
        ctx.trace = Some(trace);
        ctx.exchange.client_ip = client_ip(
            peer_ip(session),
            &req.headers,
            &self.settings.trusted_proxies,
        );
    }

    /// Refuses a head no route may see (too large, or breaking SPEC §8) and settles the
    /// rest: normal path, no hop-by-hop or underscored headers, no identity headers from
    /// the client.
    pub(super) fn admit_head(
        &self,
        session: &mut Session,
        snapshot: &Snapshot,
    ) -> std::result::Result<WebSocket, ErrorAnswer> {
        // HTTP/1 keeps the head as it came; HTTP/2 heads are counted from the parsed form.
        let head = match session.as_downstream().as_http1() {
            Some(h1) => h1.get_headers_raw_bytes().len(),
            None => head_size(session.req_header()),
        };
        if head > self.settings.max_header_size {
            return Err(ErrorAnswer::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "bad_request",
                format!(
                    "request head is over {} bytes",
                    self.settings.max_header_size
                ),
            ));
        }
        let req = session.req_header();
        if let Err(refused) = target::check(&req.method, req.raw_path()) {
            return Err(match refused {
                TargetError::Connect => {
                    session.set_keepalive(None);
                    // A 405 names what is allowed (RFC 9110 §15.5.6): any method but this.
                    ErrorAnswer::new(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "method_not_allowed",
                        refused.to_string(),
                    )
                    .with_header(
                        header::ALLOW,
                        HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                    )
                }
                TargetError::NotAPath => {
                    ErrorAnswer::new(StatusCode::BAD_REQUEST, "bad_request", refused.to_string())
                }
            });
        }
        let websocket = self
            .settle_head(session)
            .map_err(|problem| ErrorAnswer::new(StatusCode::BAD_REQUEST, "bad_request", problem))?;
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
        Ok(websocket)
    }

    /// The route for a settled head, if any matches.
    pub(super) fn find_route(
        &self,
        session: &Session,
        snapshot: &Snapshot,
    ) -> Option<Arc<CompiledRoute>> {
        let req = session.req_header();
        // Only routes bound to hosts need the host: most deployments have none.
        let host = if snapshot.router.uses_hosts() {
            req.headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(normalize_host)
        } else {
            None
        };
        snapshot
            .router
            .find(&RouteRequest {
                host: host.as_deref(),
                path: req.uri.path(),
                method: &req.method,
                headers: &req.headers,
                query: req.uri.query(),
            })
            .cloned()
    }

    /// SPEC §8 on a request head, before routing: refuses what no route should see (a
    /// missing Host, framing lists, a path that cannot be normalized) and puts the rest in
    /// the one form routes match and the upstream receives: the normal path in origin form,
    /// without hop-by-hop or underscored headers.
    fn settle_head(&self, session: &mut Session) -> std::result::Result<WebSocket, String> {
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
        let mut websocket = WebSocket::No;
        if survey.underscores || survey.hop_by_hop {
            let req = session.req_header_mut();
            if survey.hop_by_hop && edge_headers::is_websocket_handshake(req) {
                // Dropped with the other hop-by-hop headers, and put back if the route
                // accepts WebSocket.
                websocket = WebSocket::Asked;
            }
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
        Ok(websocket)
    }

    /// Keeps the client's connection open for the next request unless the client or a
    /// drain says otherwise.
    pub(super) fn keep_alive(&self, session: &mut Session) {
        if self.settings.draining.is_on() {
            session.set_keepalive(None);
        } else if session.get_keepalive().is_some() {
            // Pingora worked out from the request whether the client keeps the connection.
            session.set_keepalive(Some(self.settings.keepalive_secs));
        }
    }
}

pub(super) fn peer_ip(session: &Session) -> IpAddr {
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
    fn absolute_targets_become_origin_form_with_their_authority_as_host() {
        let mut req =
            RequestHeader::build("GET", b"http://api.example:8080/a//b?x=%2F", None).unwrap();
        req.insert_header("Host", "evil.example").unwrap();
        to_origin_form(&mut req, "/a/b").unwrap();
        assert_eq!(req.uri.to_string(), "/a/b?x=%2F");
        assert_eq!(req.headers.get(header::HOST).unwrap(), "api.example:8080");
    }
}
