//! Who is asking: the request id and the client address.

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use std::net::IpAddr;

/// Header names the gateway writes and looks up, parsed once here: a `HeaderName` is hashed,
/// never re-parsed (the `&str` forms are for Pingora's `insert_header` on the gateway's
/// own replies).
pub const REQUEST_ID: &str = "x-request-id";
pub const FORWARDED_FOR: &str = "x-forwarded-for";
pub const FORWARDED_PROTO: &str = "x-forwarded-proto";
pub const FORWARDED_HOST: &str = "x-forwarded-host";
pub const REQUEST_ID_NAME: HeaderName = HeaderName::from_static(REQUEST_ID);
pub const FORWARDED_FOR_NAME: HeaderName = HeaderName::from_static(FORWARDED_FOR);
pub const FORWARDED_PROTO_NAME: HeaderName = HeaderName::from_static(FORWARDED_PROTO);
pub const FORWARDED_HOST_NAME: HeaderName = HeaderName::from_static(FORWARDED_HOST);

/// The request's id, and whether it is the client's own.
pub struct RequestId {
    pub id: String,
    pub from_client: bool,
}

/// The client's `X-Request-Id` if it is sane (1–128 characters of `A-Z a-z 0-9 . _ ~ : + / = -`),
/// else a new random 128-bit id in hex, the shape of a trace id.
pub fn request_id(headers: &HeaderMap) -> String {
    identify(headers).id
}

pub fn identify(headers: &HeaderMap) -> RequestId {
    match client_request_id(headers) {
        Some(id) => RequestId {
            id,
            from_client: true,
        },
        None => RequestId {
            id: new_request_id(),
            from_client: false,
        },
    }
}

/// The client's own `X-Request-Id`, if it sent exactly one and it is sane.
pub fn client_request_id(headers: &HeaderMap) -> Option<String> {
    let mut given = headers.get_all(&REQUEST_ID_NAME).iter();
    // Exactly one value: a client sending several gets one of its own choosing from nobody.
    let (Some(given), None) = (given.next(), given.next()) else {
        return None;
    };
    let bytes = given.as_bytes();
    let sane = !bytes.is_empty()
        && bytes.len() <= 128
        && bytes.iter().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'.' | b'_' | b'~' | b':' | b'+' | b'/' | b'=' | b'-')
        });
    // All ASCII, checked above.
    sane.then(|| given.to_str().ok().map(str::to_owned))
        .flatten()
}

pub use crate::wire::new_request_id;

/// The request id as the `X-Request-Id` value the gateway sends, marked for HTTP/2 as one
/// never to index (it differs on every request); `None` if it cannot be a header value.
pub fn request_id_value(id: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(id)
        .ok()
        .map(crate::wire::unique_per_request)
}

/// Whether `peer` is one of `trusted_proxies`, whose `X-Forwarded-For` is believed.
pub fn is_trusted(peer: IpAddr, trusted: &[IpNet]) -> bool {
    !trusted.is_empty() && trusted.iter().any(|net| net.contains(&peer))
}

/// The client address. The socket peer, unless the peer is a trusted proxy: then the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy. Entries a client
/// wrote further left cannot be told from forgeries, so they are never believed.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all(&FORWARDED_FOR_NAME).iter().rev() {
        let Ok(value) = value.to_str() else {
            return client;
        };
        for hop in value.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !trusted.iter().any(|net| net.contains(&ip)) {
                        return ip;
                    }
                }
                Err(_) => return client,
            }
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn sane_request_ids_are_kept_others_replaced() {
        assert_eq!(
            request_id(&headers(&[("x-request-id", "abc-123")])),
            "abc-123"
        );
        let fresh = request_id(&headers(&[("x-request-id", "bad id with spaces")]));
        assert_eq!(fresh.len(), 32);
        assert!(fresh.bytes().all(|b| b.is_ascii_hexdigit()));
        let long = "a".repeat(129);
        assert_ne!(request_id(&headers(&[("x-request-id", &long)])), long);
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.9")]);
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer, &h, &[]),
            peer,
            "no trusted proxies: the peer"
        );
        let outsider: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(
            client_ip(outsider, &h, &trusted),
            outsider,
            "untrusted peer: ignored"
        );
        let garbage = headers(&[("x-forwarded-for", "nonsense")]);
        assert_eq!(client_ip(peer, &garbage, &trusted), peer);
    }
}
