//! The headers a client may not shape (SPEC §8): framing and authority checked once,
//! hop-by-hop headers dropped in both directions, so that what the upstream sees is what the
//! gateway decided.
//!
//! One pass over the client's header names settles the common request, which has none of
//! the rare headers this module acts on; only a request that has one pays for more.

use http::header::{self, HeaderMap, HeaderName};
use http::Version;
use serde::Deserialize;

/// What to do with request headers whose name holds `_` (`http.underscores_in_headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Underscores {
    /// Drop them, as nginx does: CGI-style upstreams read `X_User_Id` as `X-User-Id`.
    #[default]
    Drop,
    /// Answer 400.
    Reject,
    /// Forward them.
    Allow,
}

/// Why a request head was refused; answered 400 `bad_request` with this text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("an HTTP/1.1 request needs exactly one Host header")]
    Host,
    #[error("the Host header must name one authority")]
    HostList,
    #[error("the request must have at most one valid Content-Length")]
    ContentLength,
    #[error("the request must have at most one Authorization header")]
    Authorization,
    #[error("header names must not hold `_`")]
    Underscore,
}

/// What one pass over a request's header names found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Survey {
    /// Some header name holds `_`.
    pub underscores: bool,
    /// The request has hop-by-hop headers to drop before it goes upstream.
    pub hop_by_hop: bool,
}

/// Checks a request head against SPEC §8 and says what it holds.
pub fn survey(
    headers: &HeaderMap,
    version: Version,
    policy: Underscores,
) -> Result<Survey, HeadError> {
    let mut found = Survey::default();
    let (mut hosts, mut lengths, mut authorizations) = (0u32, 0u32, 0u32);
    for (name, value) in headers {
        if *name == header::HOST {
            hosts += 1;
            if value.as_bytes().contains(&b',') {
                return Err(HeadError::HostList);
            }
        } else if *name == header::CONTENT_LENGTH {
            lengths += 1;
            let digits = value.as_bytes();
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::ContentLength);
            }
        } else if *name == header::AUTHORIZATION {
            authorizations += 1;
        } else if *name == header::CONNECTION {
            // `Connection: keep-alive` or `close` (what browsers send) names nothing to drop.
            found.hop_by_hop |= !only_connection_options(value.as_bytes());
        } else if is_hop_by_hop(name) && !is_te_trailers(name, value.as_bytes()) {
            found.hop_by_hop = true;
        } else if name.as_str().as_bytes().contains(&b'_') {
            found.underscores = true;
        }
    }
    let host_ok = match version {
        Version::HTTP_11 => hosts == 1,
        _ => hosts <= 1,
    };
    if !host_ok {
        return Err(HeadError::Host);
    }
    if lengths > 1 {
        return Err(HeadError::ContentLength);
    }
    if authorizations > 1 {
        return Err(HeadError::Authorization);
    }
    if found.underscores && policy == Underscores::Reject {
        return Err(HeadError::Underscore);
    }
    Ok(found)
}

/// The header names that live only for one hop (RFC 9110 §7.6.1), besides those the
/// `Connection` header lists. `Upgrade` is among them: a route that accepts an upgrade
/// puts it back itself.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::UPGRADE
        || *name == header::PROXY_AUTHORIZATION
        || *name == header::PROXY_AUTHENTICATE
        || name.as_str() == "keep-alive"
        // The settings of an `h2c` upgrade, which is never honoured.
        || name.as_str() == "http2-settings"
        || name.as_str().starts_with("proxy-")
}

/// `TE: trailers`, the one `TE` HTTP/2 allows: a gRPC client says with it that it reads
/// trailers, and gRPC servers want to see it, so it travels on (as Envoy lets it).
fn is_te_trailers(name: &HeaderName, value: &[u8]) -> bool {
    *name == header::TE && value.trim_ascii().eq_ignore_ascii_case(b"trailers")
}

/// Whether a request is a WebSocket handshake (RFC 6455 §4.1): a GET over HTTP/1.1 with
/// `Upgrade: websocket` and `upgrade` among the `Connection` options.
pub fn is_websocket_handshake(req: &pingora::http::RequestHeader) -> bool {
    req.method == http::Method::GET
        && req.version == http::Version::HTTP_11
        && req
            .headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"))
        && req.headers.get_all(header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
}

/// Names of the headers `_` is found in, to drop them.
pub fn underscored(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .keys()
        .filter(|n| n.as_str().as_bytes().contains(&b'_'))
        .cloned()
        .collect()
}

/// The hop-by-hop headers of a head: every header `Connection` names, and the fixed list
/// (`Connection` itself among them). A client's request drops them before any plugin runs,
/// so headers the gateway owns are set after, and a client that names them in
/// `Connection` removes only its own copies.
pub fn hop_by_hop(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| !never_nominated(name))
        .collect();
    names.extend(
        headers
            .iter()
            .filter(|(n, v)| {
                is_hop_by_hop(n) && *n != header::CONNECTION && !is_te_trailers(n, v.as_bytes())
            })
            .map(|(n, _)| n.clone()),
    );
    names.dedup();
    names.push(header::CONNECTION);
    names
}

/// Headers a `Connection` header can never take away: framing and authority (dropping them
/// would change where one request ends and the next begins, or which host it is for), and
/// the headers the gateway sets itself (they are replaced, not removed).
fn never_nominated(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::CONTENT_LENGTH
        || *name == header::TRANSFER_ENCODING
        || *name == header::HOST
        || matches!(
            name.as_str(),
            "x-request-id"
                | "x-forwarded-for"
                | "x-forwarded-proto"
                | "x-forwarded-host"
                | "traceparent"
                | "tracestate"
        )
}

/// Whether a `Connection` value holds only `keep-alive` and `close`.
fn only_connection_options(value: &[u8]) -> bool {
    value.split(|&b| b == b',').all(|token| {
        let token = token.trim_ascii();
        token.eq_ignore_ascii_case(b"keep-alive") || token.eq_ignore_ascii_case(b"close")
    })
}

/// Drops the hop-by-hop headers of a head, `Connection` among them.
pub fn drop_hop_by_hop(headers: &mut HeaderMap) {
    for name in hop_by_hop(headers) {
        headers.remove(name);
    }
}

/// Whether a response head needs [`drop_hop_by_hop`]: one cheap pass for the usual answer
/// that has none. A `Connection` that only says `keep-alive` or `close` (as most servers
/// send) needs nothing: Pingora writes its own `Connection` on every HTTP/1 answer and
/// none on HTTP/2, and such a value names no other header.
pub fn has_hop_by_hop(headers: &HeaderMap) -> bool {
    headers.iter().any(|(name, value)| {
        is_hop_by_hop(name)
            && !(*name == header::CONNECTION && only_connection_options(value.as_bytes()))
            && !is_te_trailers(name, value.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn head(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn check(pairs: &[(&str, &str)]) -> Result<Survey, HeadError> {
        survey(&head(pairs), Version::HTTP_11, Underscores::Drop)
    }

    #[test]
    fn a_response_needs_no_edit_for_a_connection_that_only_keeps_alive_or_closes() {
        assert!(!has_hop_by_hop(&head(&[("connection", "keep-alive")])));
        assert!(!has_hop_by_hop(&head(&[(
            "connection",
            "Keep-Alive, close"
        )])));
        assert!(has_hop_by_hop(&head(&[(
            "connection",
            "keep-alive, x-secret"
        )])));
        assert!(has_hop_by_hop(&head(&[
            ("connection", "close"),
            ("keep-alive", "timeout=5")
        ])));
        assert!(has_hop_by_hop(&head(&[("proxy-authenticate", "Basic")])));
        assert!(!has_hop_by_hop(&head(&[("content-type", "text/plain")])));
    }

    #[test]
    fn an_ordinary_request_passes_untouched() {
        let found = check(&[("host", "a"), ("accept", "*/*"), ("content-length", "5")]);
        assert_eq!(found, Ok(Survey::default()));
    }

    #[test]
    fn host_must_be_one_authority_on_http_1_1() {
        assert_eq!(check(&[]), Err(HeadError::Host));
        assert_eq!(check(&[("host", "a"), ("host", "b")]), Err(HeadError::Host));
        assert_eq!(check(&[("host", "a, b")]), Err(HeadError::HostList));
        let h10 = survey(&head(&[]), Version::HTTP_10, Underscores::Drop);
        assert_eq!(h10, Ok(Survey::default()));
        let h2 = survey(&head(&[]), Version::HTTP_2, Underscores::Drop);
        assert_eq!(h2, Ok(Survey::default()));
    }

    #[test]
    fn framing_and_credentials_must_be_single() {
        let cl = |v| check(&[("host", "a"), ("content-length", v)]);
        assert_eq!(cl("5, 5"), Err(HeadError::ContentLength));
        assert_eq!(cl("-1"), Err(HeadError::ContentLength));
        assert_eq!(cl(""), Err(HeadError::ContentLength));
        let two_lengths = check(&[
            ("host", "a"),
            ("content-length", "5"),
            ("content-length", "5"),
        ]);
        assert_eq!(two_lengths, Err(HeadError::ContentLength));
        let two_auth = check(&[
            ("host", "a"),
            ("authorization", "x"),
            ("authorization", "y"),
        ]);
        assert_eq!(two_auth, Err(HeadError::Authorization));
    }

    #[test]
    fn underscores_follow_the_policy() {
        let h = head(&[
            ("host", "a"),
            ("x_user_id", "1"),
            ("transfer_encoding", "x"),
        ]);
        let found = survey(&h, Version::HTTP_11, Underscores::Drop).unwrap();
        assert!(found.underscores);
        assert_eq!(underscored(&h).len(), 2);
        assert_eq!(
            survey(&h, Version::HTTP_11, Underscores::Reject),
            Err(HeadError::Underscore)
        );
    }

    #[test]
    fn connection_never_takes_framing_authority_or_owned_headers() {
        let mut h = head(&[
            ("host", "a"),
            ("content-length", "5"),
            (
                "connection",
                "content-length, transfer-encoding, host, x-request-id, x-forwarded-for, traceparent",
            ),
            ("x-request-id", "abc"),
        ]);
        drop_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        assert_eq!(left, ["host", "content-length", "x-request-id"]);
    }

    #[test]
    fn hop_by_hop_headers_go_and_owned_ones_stay_for_the_gateway() {
        let mut h = head(&[
            ("host", "a"),
            ("connection", "close, X-User-Id"),
            ("connection", "x-extra"),
            ("x-user-id", "spoofed"),
            ("x-extra", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ("accept", "*/*"),
        ]);
        assert!(
            check(&[("host", "a"), ("upgrade", "websocket")])
                .unwrap()
                .hop_by_hop
        );
        let options = check(&[("host", "a"), ("connection", "Keep-Alive")]);
        assert!(!options.unwrap().hop_by_hop);
        let named = check(&[("host", "a"), ("connection", "close, x-a")]);
        assert!(named.unwrap().hop_by_hop);
        assert!(has_hop_by_hop(&h));
        drop_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        assert_eq!(left, ["host", "accept"]);
        assert!(!has_hop_by_hop(&h));
        // `TE: trailers` alone (a gRPC client's) travels on.
        let mut grpc = head(&[("host", "a"), ("te", "trailers")]);
        assert!(
            !check(&[("host", "a"), ("te", "Trailers")])
                .unwrap()
                .hop_by_hop
        );
        assert!(!has_hop_by_hop(&grpc));
        drop_hop_by_hop(&mut grpc);
        assert_eq!(grpc["te"], "trailers");
    }
}
