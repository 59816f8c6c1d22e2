//! Where a route's callers put their token, and how to take it back out.

use crate::request::{cookie, query_param};
use crate::selector::{Forms, Selector, SelectorKind};
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;

/// The selectors `token_from` takes: the places a client can put a credential.
const FORMS: Forms = Forms(&[
    SelectorKind::Header,
    SelectorKind::Query,
    SelectorKind::Cookie,
]);

/// One place a token may be carried (`token_from`).
#[derive(Debug, Clone, PartialEq)]
pub enum TokenSource {
    /// A request header. For `Authorization` the `Bearer` scheme is required (RFC 6750 §2.1);
    /// for any other header a `Bearer ` prefix is accepted and dropped.
    Header(HeaderName),
    /// A query parameter (RFC 6750 §2.3).
    Query(String),
    /// A cookie.
    Cookie(String),
}

impl TokenSource {
    /// Parses `header:NAME`, `query:NAME` or `cookie:NAME`, in the grammar of every request
    /// selector, so a name is read the same way here as in a sticky or hash key.
    pub fn parse(text: &str) -> Result<TokenSource, String> {
        match Selector::parse_as(text, FORMS).map_err(|e| e.to_string())? {
            Selector::Header(name) => Ok(TokenSource::Header(name)),
            Selector::Query(name) => Ok(TokenSource::Query(name.into())),
            Selector::Cookie(name) => Ok(TokenSource::Cookie(name.into())),
            // `FORMS` lets no other form through.
            other => Err(format!("`{other}` is not one of {FORMS}")),
        }
    }

    /// The sources used when a policy names none: the `Authorization: Bearer` header.
    pub fn defaults() -> Vec<TokenSource> {
        vec![TokenSource::Header(AUTHORIZATION)]
    }

    /// The token this source finds in `req`, if any.
    pub fn find<'r>(&self, req: &'r RequestHeader) -> Option<&'r str> {
        let token = match self {
            TokenSource::Header(name) => {
                let value = req.headers.get(name)?.to_str().ok()?.trim();
                match strip_bearer(value) {
                    Some(token) => token,
                    None if *name == AUTHORIZATION => return None,
                    None => value,
                }
            }
            TokenSource::Query(name) => query_param(req.uri.query()?, name)?,
            TokenSource::Cookie(name) => cookie(req, name)?.trim_matches('"'),
        };
        (!token.is_empty()).then_some(token)
    }

    /// Removes the credential this source carries, so the upstream never sees it
    /// (`forward.strip_authorization`).
    pub fn remove(&self, req: &mut RequestHeader) {
        match self {
            TokenSource::Header(name) => {
                req.remove_header(name);
            }
            TokenSource::Query(name) => {
                let Some(query) = req.uri.query() else { return };
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| pair.split('=').next() != Some(name.as_str()))
                    .collect();
                let mut uri = req.uri.path().to_string();
                if !kept.is_empty() {
                    uri.push('?');
                    uri.push_str(&kept.join("&"));
                }
                if let Ok(uri) = uri.parse() {
                    req.set_uri(uri);
                }
            }
            TokenSource::Cookie(name) => {
                let kept: Vec<String> = req
                    .headers
                    .get_all(COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .map(str::trim)
                    .filter(|c| !c.is_empty() && c.split('=').next() != Some(name.as_str()))
                    .map(String::from)
                    .collect();
                req.remove_header(&COOKIE);
                if !kept.is_empty() {
                    if let Ok(value) = HeaderValue::from_str(&kept.join("; ")) {
                        let _ = req.insert_header(COOKIE, value);
                    }
                }
            }
        }
    }
}

fn strip_bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    #[test]
    fn authorization_needs_the_bearer_scheme() {
        let source = TokenSource::defaults().remove(0);
        let req = request("/", &[("authorization", "Bearer abc.def")]);
        assert_eq!(source.find(&req), Some("abc.def"));
        let req = request("/", &[("authorization", "bearer   xyz")]);
        assert_eq!(source.find(&req), Some("xyz"));
        let req = request("/", &[("authorization", "Basic dXNlcjpwdw==")]);
        assert_eq!(source.find(&req), None);
        let req = request("/", &[("authorization", "Bearer ")]);
        assert_eq!(source.find(&req), None);
    }

    #[test]
    fn other_headers_take_the_value_with_or_without_bearer() {
        let source = TokenSource::parse("header:X-Token").unwrap();
        assert_eq!(source.find(&request("/", &[("x-token", "t1")])), Some("t1"));
        assert_eq!(
            source.find(&request("/", &[("x-token", "Bearer t2")])),
            Some("t2")
        );
    }

    #[test]
    fn query_and_cookie_sources_find_and_remove_their_token() {
        let query = TokenSource::parse("query:access_token").unwrap();
        let mut req = request("/p?a=1&access_token=tok&b=2", &[]);
        assert_eq!(query.find(&req), Some("tok"));
        query.remove(&mut req);
        assert_eq!(req.uri.to_string(), "/p?a=1&b=2");

        let jar = TokenSource::parse("cookie:access_token").unwrap();
        let mut req = request(
            "/",
            &[("cookie", "theme=dark; access_token=c00kie; lang=en")],
        );
        assert_eq!(jar.find(&req), Some("c00kie"));
        jar.remove(&mut req);
        assert_eq!(req.headers.get("cookie").unwrap(), "theme=dark; lang=en");
    }

    #[test]
    fn malformed_sources_are_named() {
        assert!(TokenSource::parse("form:x").unwrap_err().contains("form:x"));
        assert!(TokenSource::parse("query:").is_err());
        assert!(TokenSource::parse("header:bad header").is_err());
    }
}
