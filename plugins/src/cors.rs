//! `cors`: cross-origin requests from browsers (SPEC §12), as the Fetch standard describes
//! them. A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is
//! answered by the gateway, 204, and never reaches the upstream; other requests from an
//! allowed origin get `Access-Control-Allow-Origin` (and `-Credentials`, `-Expose-Headers`)
//! on whatever answer they receive. Answers vary by origin, so `Vary: Origin` is added
//! unless every origin is allowed alike.
//!
//! Origins: exact (`https://app.example.com`), every subdomain of a domain with any scheme
//! and port (`*.example.com`), or `*`. A preflight from an origin not allowed gets its 204
//! without any `Access-Control-Allow-*` header, which the browser takes as a refusal.

use crate::registry::{self, Config, ConfigError, PluginFactory};
use crate::units::Span;
use crate::{Access, Exchange, Flow, LocalAnswer, Plugin, Stage};
use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use pingora_http::RequestHeader;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    allow_origins: Vec<String>,
    #[serde(default = "default_methods")]
    allow_methods: Vec<String>,
    /// Left out: whatever headers the preflight asks for.
    #[serde(default)]
    allow_headers: Option<Vec<String>>,
    #[serde(default)]
    expose_headers: Vec<String>,
    #[serde(default)]
    allow_credentials: bool,
    #[serde(default = "default_max_age")]
    max_age: Span,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        .map(String::from)
        .to_vec()
}

fn default_max_age() -> Span {
    Span::secs(5)
}

/// One entry of `allow_origins`.
#[derive(Debug)]
enum Allowed {
    Any,
    /// An origin as browsers send it, lower-cased.
    Exact(String),
    /// `.example.com`: a host ending so.
    Subdomains(String),
}

/// Answers preflights and marks answers to allowed origins.
pub struct Cors {
    origins: Vec<Allowed>,
    methods: HeaderValue,
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

impl Cors {
    fn allows(&self, origin: &str) -> bool {
        // The host of `scheme://host[:port]`.
        let host = origin
            .split_once("://")
            .map(|(_, rest)| rest.rsplit_once(':').map_or(rest, |(h, _)| h));
        // Compared without case and without a lower-cased copy: this runs per request.
        let ends_with = |h: &str, suffix: &str| {
            h.len() >= suffix.len()
                && h.as_bytes()[h.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
        };
        self.origins.iter().any(|allowed| match allowed {
            Allowed::Any => true,
            Allowed::Exact(exact) => exact.eq_ignore_ascii_case(origin),
            Allowed::Subdomains(suffix) => host.is_some_and(|h| ends_with(h, suffix)),
        })
    }

    /// Every origin is answered alike: no `Vary: Origin` needed.
    fn uniform(&self) -> bool {
        !self.credentials && self.origins.iter().any(|o| matches!(o, Allowed::Any))
    }

    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if self.uniform() {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    fn preflight(&self, req: &RequestHeader, origin: &HeaderValue) -> LocalAnswer {
        let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(7);
        if !self.uniform() {
            headers.push((VARY, HeaderValue::from_static("Origin")));
        }
        if origin.to_str().is_ok_and(|o| self.allows(o)) {
            headers.push((ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin)));
            if self.credentials {
                headers.push((
                    ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                ));
            }
            headers.push((ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone()));
            let asked = req.headers.get(ACCESS_CONTROL_REQUEST_HEADERS);
            match (&self.headers, asked) {
                (Some(list), _) => headers.push((ACCESS_CONTROL_ALLOW_HEADERS, list.clone())),
                (None, Some(asked)) => {
                    headers.push((ACCESS_CONTROL_ALLOW_HEADERS, asked.clone()));
                    headers.push((
                        VARY,
                        HeaderValue::from_static("Access-Control-Request-Headers"),
                    ));
                }
                (None, None) => {}
            }
            headers.push((ACCESS_CONTROL_MAX_AGE, self.max_age.clone()));
        }
        LocalAnswer {
            status: StatusCode::NO_CONTENT,
            headers,
            body: Bytes::new(),
        }
    }
}

impl Plugin for Cors {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn stage(&self) -> Stage {
        Stage::Admit
    }

    fn access<'a>(&'a self, req: &'a mut RequestHeader, ex: &'a mut Exchange) -> Access<'a> {
        let Some(origin) = req.headers.get(ORIGIN).cloned() else {
            self.varies(ex);
            return Access::Now(Flow::Continue);
        };
        if req.method == Method::OPTIONS && req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
        {
            return Access::Now(Flow::Answer(self.preflight(req, &origin)));
        }
        self.varies(ex);
        if origin.to_str().is_ok_and(|o| self.allows(o)) {
            let marks = &mut ex.response_headers;
            marks.push((ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(&origin)));
            if self.credentials {
                marks.push((
                    ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                ));
            }
            if let Some(expose) = &self.expose {
                marks.push((ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone()));
            }
        }
        Access::Now(Flow::Continue)
    }
}

impl Cors {
    /// The answer varies by origin: `Vary: Origin`, added beside what the upstream says
    /// varies, never in place of it (and on answers to requests without `Origin` too, so a
    /// cache never serves one of them to a cross-origin request).
    fn varies(&self, ex: &mut Exchange) {
        if !self.uniform() {
            ex.response_headers_added
                .push((VARY, HeaderValue::from_static("Origin")));
        }
    }
}

/// A comma-separated header value from a list, each item checked as `what`.
fn joined(
    field: &str,
    items: &[String],
    check: fn(&str) -> bool,
) -> Result<HeaderValue, ConfigError> {
    for (i, item) in items.iter().enumerate() {
        if !check(item) {
            return Err(ConfigError::new(
                format!("{field}[{i}]"),
                format!("`{item}` is not a valid entry"),
            ));
        }
    }
    HeaderValue::from_str(&items.join(", "))
        .map_err(|_| ConfigError::new(field, "not a header value"))
}

pub struct Factory;

impl PluginFactory for Factory {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn build(&self, config: &Config) -> Result<Box<dyn Plugin>, ConfigError> {
        let s: Settings = registry::decode(config)?;
        if s.allow_origins.is_empty() {
            return Err(ConfigError::new(
                "allow_origins",
                "name at least one origin, or `*`",
            ));
        }
        let mut origins = Vec::with_capacity(s.allow_origins.len());
        for (i, origin) in s.allow_origins.iter().enumerate() {
            let field = || format!("allow_origins[{i}]");
            let lower = origin.trim().trim_end_matches('/').to_ascii_lowercase();
            origins.push(if lower == "*" {
                Allowed::Any
            } else if let Some(domain) = lower.strip_prefix("*.") {
                if domain.is_empty() || domain.contains(['/', ':', '*']) {
                    return Err(ConfigError::new(field(), "write `*.example.com`"));
                }
                Allowed::Subdomains(format!(".{domain}"))
            } else {
                let valid = lower
                    .split_once("://")
                    .is_some_and(|(scheme, host)| !scheme.is_empty() && !host.is_empty() && !host.contains(['/', '*']));
                if !valid {
                    return Err(ConfigError::new(
                        field(),
                        format!("`{origin}` is not an origin (`https://app.example.com`, `*.example.com` or `*`)"),
                    ));
                }
                Allowed::Exact(lower)
            });
        }
        if s.allow_credentials && origins.iter().any(|o| matches!(o, Allowed::Any)) {
            // Browsers refuse credentials with a wildcard origin; echoing every origin
            // instead would let any site read the user's data.
            return Err(ConfigError::new(
                "allow_credentials",
                "cannot be true when `allow_origins` holds `*`",
            ));
        }
        let token = |t: &str| !t.is_empty() && HeaderName::from_bytes(t.as_bytes()).is_ok();
        let method = |m: &str| Method::from_bytes(m.as_bytes()).is_ok() && !m.is_empty();
        Ok(Box::new(Cors {
            origins,
            methods: joined("allow_methods", &s.allow_methods, method)?,
            headers: s
                .allow_headers
                .as_deref()
                .map(|h| joined("allow_headers", h, token))
                .transpose()?,
            expose: (!s.expose_headers.is_empty())
                .then(|| joined("expose_headers", &s.expose_headers, token))
                .transpose()?,
            credentials: s.allow_credentials,
            max_age: HeaderValue::from(s.max_age.0.as_secs()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cors(config: Config) -> Box<dyn Plugin> {
        Factory.build(&config).unwrap()
    }

    fn request(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, b"/", None).unwrap();
        for (k, v) in headers {
            req.insert_header(k.to_string(), *v).unwrap();
        }
        req
    }

    fn exchange() -> Exchange {
        Exchange::new("r".into(), String::new(), "127.0.0.1".parse().unwrap())
    }

    fn header<'a>(headers: &'a [(HeaderName, HeaderValue)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .and_then(|(_, v)| v.to_str().ok())
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_is_answered_with_its_permissions() {
        let plugin = cors(json!({
            "allow_origins": ["https://app.example.com", "*.example.org"],
            "allow_methods": ["GET", "POST"],
            "allow_headers": ["Authorization"],
            "allow_credentials": true,
            "max_age": "10m"
        }));
        for origin in ["https://app.example.com", "http://a.b.example.org:8080"] {
            let mut req = request(
                "OPTIONS",
                &[
                    ("Origin", origin),
                    ("Access-Control-Request-Method", "POST"),
                ],
            );
            let Access::Now(Flow::Answer(answer)) = plugin.access(&mut req, &mut exchange()) else {
                panic!("not answered")
            };
            assert_eq!(answer.status, 204);
            let h = &answer.headers;
            assert_eq!(header(h, "access-control-allow-origin"), Some(origin));
            assert_eq!(header(h, "access-control-allow-credentials"), Some("true"));
            assert_eq!(header(h, "access-control-allow-methods"), Some("GET, POST"));
            assert_eq!(
                header(h, "access-control-allow-headers"),
                Some("Authorization")
            );
            assert_eq!(header(h, "access-control-max-age"), Some("600"));
            assert_eq!(header(h, "vary"), Some("Origin"));
        }
    }

    #[test]
    fn a_preflight_from_elsewhere_gets_no_permission() {
        let plugin = cors(json!({ "allow_origins": ["https://app.example.com", "*.example.org"] }));
        for origin in [
            "https://evil.example",
            "https://example.org.evil.com",
            "null",
        ] {
            let mut req = request(
                "OPTIONS",
                &[("Origin", origin), ("Access-Control-Request-Method", "GET")],
            );
            let Access::Now(Flow::Answer(answer)) = plugin.access(&mut req, &mut exchange()) else {
                panic!("not answered")
            };
            assert_eq!(
                header(&answer.headers, "access-control-allow-origin"),
                None,
                "{origin}"
            );
        }
    }

    #[test]
    fn an_allowed_request_is_marked_and_others_pass_unmarked() {
        let plugin = cors(
            json!({ "allow_origins": ["https://app.example.com"], "expose_headers": ["X-Total"] }),
        );
        let mut ex = exchange();
        let mut req = request("GET", &[("Origin", "https://APP.example.com")]);
        assert!(matches!(
            plugin.access(&mut req, &mut ex),
            Access::Now(Flow::Continue)
        ));
        assert_eq!(
            header(&ex.response_headers, "access-control-allow-origin"),
            Some("https://APP.example.com")
        );
        assert_eq!(
            header(&ex.response_headers, "access-control-expose-headers"),
            Some("X-Total")
        );
        let mut ex = exchange();
        let mut req = request("GET", &[("Origin", "https://other.example")]);
        assert!(matches!(
            plugin.access(&mut req, &mut ex),
            Access::Now(Flow::Continue)
        ));
        assert!(ex.response_headers.is_empty());
        // Without a preflight header an OPTIONS is an ordinary request.
        let mut req = request("OPTIONS", &[("Origin", "https://app.example.com")]);
        assert!(matches!(
            plugin.access(&mut req, &mut exchange()),
            Access::Now(Flow::Continue)
        ));
    }

    #[test]
    fn every_answer_varies_by_origin_unless_all_are_allowed_alike() {
        let plugin = cors(json!({ "allow_origins": ["https://app.example.com"] }));
        for headers in [&[][..], &[("Origin", "https://x.example")][..]] {
            let mut ex = exchange();
            let mut req = request("GET", headers);
            let _ = plugin.access(&mut req, &mut ex);
            assert_eq!(header(&ex.response_headers_added, "vary"), Some("Origin"));
        }
        let any = cors(json!({ "allow_origins": ["*"] }));
        let mut ex = exchange();
        let _ = any.access(
            &mut request("GET", &[("Origin", "https://x.example")]),
            &mut ex,
        );
        assert!(
            ex.response_headers_added.is_empty(),
            "every origin is answered alike"
        );
    }

    #[test]
    fn settings_browsers_would_refuse_are_refused() {
        let err = |c: Config| Factory.build(&c).err().unwrap();
        assert_eq!(
            err(json!({ "allow_origins": ["*"], "allow_credentials": true })).field,
            "allow_credentials"
        );
        assert_eq!(
            err(json!({ "allow_origins": ["app.example.com"] })).field,
            "allow_origins[0]"
        );
        assert_eq!(err(json!({ "allow_origins": [] })).field, "allow_origins");
        assert_eq!(
            err(json!({ "allow_origins": ["*"], "allow_methods": ["GET", "B AD"] })).field,
            "allow_methods[1]"
        );
        assert_eq!(
            err(json!({ "allow_origins": ["*"], "max_age": "soon" })).field,
            "max_age"
        );
    }
}
