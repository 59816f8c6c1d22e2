//! Reading parts of a request that several features key on (auth token sources, sticky
//! splits, canary rules, consistent hashing), parsed one way everywhere.

use http::header::{CONTENT_LENGTH, COOKIE, TRANSFER_ENCODING};
use pingora_http::RequestHeader;

/// The value of cookie `name`, as sent, from any of the request's `Cookie` headers.
pub fn cookie<'r>(req: &'r RequestHeader, name: &str) -> Option<&'r str> {
    req.headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// Whether a request carries a body: chunked, or a `Content-Length` other than 0.
pub fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(TRANSFER_ENCODING)
        || req
            .headers
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// The body length a request declares in `Content-Length`, when it is a number.
pub fn declared_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The raw (not percent-decoded) value of query parameter `name`.
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then_some(value)
    })
}
