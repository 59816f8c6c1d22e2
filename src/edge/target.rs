//! The request target (RFC 9112 §3.2): what a reverse proxy takes is a path (origin form)
//! or, from a client that speaks to it as to a forward proxy, an absolute `http`/`https` URI
//! whose authority becomes the request's host. The two other forms ask for what a gateway
//! does not do, and no route can name them: `CONNECT host:port` (authority form) opens a
//! tunnel to wherever the client says, `OPTIONS *` (asterisk form) asks about the server
//! itself. A bare word (`GET hello`) is none of the four: left alone, it would be read as an
//! authority and become the request's `Host`.

use http::Method;

/// Why a request target was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Answered 405 `method_not_allowed`, and the connection closed: whatever follows a
    /// CONNECT head is meant as tunnel bytes, not as the next request.
    #[error("CONNECT is not proxied: the gateway opens no tunnels")]
    Connect,
    /// Answered 400 `bad_request`.
    #[error("the request target must be a path or an absolute http(s) URI")]
    NotAPath,
}

/// Checks the method and the target as the client sent it (`raw`: the HTTP/1 request line's
/// target, or HTTP/2's `:path`).
pub fn check(method: &Method, raw: &[u8]) -> Result<(), TargetError> {
    if *method == Method::CONNECT {
        return Err(TargetError::Connect);
    }
    if raw.first() == Some(&b'/') {
        return Ok(());
    }
    let absolute = http::Uri::try_from(raw).is_ok_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some()
    });
    if absolute {
        Ok(())
    } else {
        Err(TargetError::NotAPath)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_absolute_http_uris_pass() {
        for target in [
            "/",
            "/a/b?c=d",
            "http://api.example/p",
            "https://api.example:8443/",
        ] {
            assert_eq!(check(&Method::GET, target.as_bytes()), Ok(()), "{target}");
        }
    }

    #[test]
    fn connect_and_targets_no_route_can_name_are_refused() {
        assert_eq!(
            check(&Method::CONNECT, b"api.example:443"),
            Err(TargetError::Connect)
        );
        assert_eq!(check(&Method::CONNECT, b"/"), Err(TargetError::Connect));
        for target in [
            "*",
            "hello",
            "api.example:443",
            "ftp://api.example/p",
            "http:/p",
            "",
        ] {
            assert_eq!(
                check(&Method::OPTIONS, target.as_bytes()),
                Err(TargetError::NotAPath),
                "{target}"
            );
        }
    }
}
