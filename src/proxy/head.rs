//! Adding the gateway's own headers to a request or response head at the cost of a plain
//! `http::HeaderMap` insert.
//!
//! Pingora's `insert_header` re-parses the name from bytes, allocates it twice (for the
//! value map and again to share it with the map that remembers the client's spelling) and
//! inserts into both maps, each sized exactly for the headers received, so both grow too:
//! about 2,000 instructions per header, and SPEC §4 adds five or six on every request.
//! Here the head is taken apart into `http` parts, the headers go in with names parsed at
//! compile time, and the head is put back together. The price is the spelling map: header
//! names are then written in the canonical case Pingora uses for well-known headers
//! (`Content-Type`) and in lower case otherwise, as Envoy writes them.

use http::header::MaxSizeReached;
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{Error, ErrorType, Result};

fn too_many(e: MaxSizeReached) -> Box<Error> {
    Error::because(ErrorType::InternalError, "too many headers", e)
}

/// Puts headers into the request head on its way upstream.
pub fn edit_request(
    req: &mut RequestHeader,
    edit: impl FnOnce(&mut HeaderMap) -> Result<(), MaxSizeReached>,
) -> Result<()> {
    if !req.raw_path_is_utf8() {
        // The head holds the target's raw bytes, which only Pingora's own type carries:
        // the headers go in one by one, the slow way.
        let mut added = HeaderMap::new();
        edit(&mut added).map_err(too_many)?;
        for (name, value) in added {
            if let Some(name) = name {
                req.insert_header(name, value)?;
            }
        }
        return Ok(());
    }
    let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts: http::request::Parts = std::mem::replace(req, empty).into();
    let edited = edit(&mut parts.headers);
    *req = RequestHeader::from(parts);
    edited.map_err(too_many)
}

/// Puts headers into the response head on its way to the client.
pub fn edit_response(
    resp: &mut ResponseHeader,
    edit: impl FnOnce(&mut HeaderMap) -> Result<(), MaxSizeReached>,
) -> Result<()> {
    let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts: http::response::Parts = std::mem::replace(resp, empty).into();
    let edited = edit(&mut parts.headers);
    *resp = ResponseHeader::from(parts);
    edited.map_err(too_many)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

    fn wire(req: &RequestHeader) -> String {
        let mut buf = Vec::new();
        req.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn headers_are_added_or_replaced_and_the_rest_kept() {
        let mut req = RequestHeader::build("GET", b"/a?b=1", None).unwrap();
        req.append_header("Host", "example.com").unwrap();
        req.append_header("X-Forwarded-For", "10.0.0.1").unwrap();
        req.append_header("Cookie", "a=1").unwrap();
        req.append_header("Cookie", "b=2").unwrap();
        edit_request(&mut req, |h| {
            h.try_insert(
                HeaderName::from_static("x-forwarded-for"),
                HeaderValue::from_static("10.0.0.1, 127.0.0.1"),
            )?;
            h.try_insert(REQUEST_ID, HeaderValue::from_static("abc"))?;
            Ok(())
        })
        .unwrap();
        assert_eq!(req.uri, "/a?b=1");
        assert_eq!(req.method, "GET");
        let wire = wire(&req);
        assert!(wire.contains("Host: example.com\r\n"), "{wire}");
        assert!(
            wire.contains("x-forwarded-for: 10.0.0.1, 127.0.0.1\r\n"),
            "{wire}"
        );
        assert_eq!(wire.matches("x-forwarded-for").count(), 1, "{wire}");
        assert!(wire.contains("x-request-id: abc\r\n"), "{wire}");
        assert!(wire.contains("cookie: a=1\r\ncookie: b=2\r\n"), "{wire}");
    }

    #[test]
    fn a_target_that_is_not_utf8_is_kept_verbatim() {
        let mut req = RequestHeader::build("GET", b"/caf\xe9", None).unwrap();
        edit_request(&mut req, |h| {
            h.try_insert(REQUEST_ID, HeaderValue::from_static("abc"))?;
            Ok(())
        })
        .unwrap();
        assert_eq!(req.raw_path(), b"/caf\xe9");
        assert_eq!(req.headers["x-request-id"], "abc");
    }

    #[test]
    fn response_headers_are_added() {
        let mut resp = ResponseHeader::build(201, None).unwrap();
        resp.append_header("Content-Type", "text/plain").unwrap();
        edit_response(&mut resp, |h| {
            h.try_insert(REQUEST_ID, HeaderValue::from_static("abc"))?;
            Ok(())
        })
        .unwrap();
        assert_eq!(resp.status, 201);
        assert_eq!(resp.headers["content-type"], "text/plain");
        assert_eq!(resp.headers["x-request-id"], "abc");
    }
}
