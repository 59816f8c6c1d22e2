//! Request selectors: the `client_ip`, `consumer`, `header:NAME`… values that rate limits,
//! sticky splits and consistent hashing key on.
//!
//! A selector is parsed once, when the configuration that names it is read, into a
//! [`Selector`]; the request path only evaluates it ([`Selector::select`]): a header lookup
//! by a pre-built [`HeaderName`], a cookie or query scan, a field of the [`Exchange`]. Every
//! setting shares the one grammar and the one rule for a value the request lacks, and each
//! setting states the forms it takes as [`Forms`].
//!
//! The rule for an absent value: a selector finds a value or nothing, and an empty value
//! (`X-User-Id:` with nothing after it, `user=` in a cookie, no `sub`) counts as nothing, so
//! a blank never becomes one key shared by every request that sends it. A setting that must
//! key every request then uses the client address ([`Selector::select_or_client_ip`]), as
//! APISIX's limits and `chash` do, so leaving a header out never escapes a limit; a setting
//! that can do without a key (a sticky split) uses its keyless behaviour instead.

use crate::request::{cookie, query_param};
use crate::Exchange;
use http::HeaderName;
use pingora_http::RequestHeader;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// What part of a request a selector reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The client address (the socket peer, or per `trusted_proxies`).
    ClientIp,
    /// The authenticated caller (`sub`); known only after authentication.
    Consumer,
    /// The matched route: every request of the route selects the same value.
    Route,
    /// The request path, without the query.
    Path,
    /// A header's (first) value.
    Header(HeaderName),
    /// A cookie's value, as sent.
    Cookie(Box<str>),
    /// A query parameter's raw (not percent-decoded) value.
    Query(Box<str>),
}

/// The form of a selector, without its name: what a setting may or may not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorKind {
    ClientIp,
    Consumer,
    Route,
    Path,
    Header,
    Cookie,
    Query,
}

impl SelectorKind {
    /// How the form is written, for error messages and documentation.
    pub fn syntax(self) -> &'static str {
        match self {
            SelectorKind::ClientIp => "client_ip",
            SelectorKind::Consumer => "consumer",
            SelectorKind::Route => "route",
            SelectorKind::Path => "path",
            SelectorKind::Header => "header:NAME",
            SelectorKind::Cookie => "cookie:NAME",
            SelectorKind::Query => "query:NAME",
        }
    }
}

/// The forms one setting takes, in the order its error message lists them.
///
/// The grammar is shared, the forms are not: a rate limit keyed by a cookie or a sticky
/// split keyed by the route would be accepted and then do something nobody meant, so each
/// setting names what it takes and a selector outside it is refused with that list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forms(pub &'static [SelectorKind]);

impl Forms {
    /// Whether a setting with these forms takes selectors of `kind`.
    pub fn takes(self, kind: SelectorKind) -> bool {
        self.0.contains(&kind)
    }

    /// Judges `parsed`, the outcome of [`Selector::parse`] on `text`, as the value of a
    /// setting with these forms. Kept apart from parsing so that a selector parsed once,
    /// when its document is read, is judged without being parsed again.
    pub fn judge<'s>(
        self,
        text: &str,
        parsed: &'s Result<Selector, SelectorError>,
    ) -> Result<&'s Selector, SelectorError> {
        let not_one_of = || SelectorError::NotOneOf {
            text: text.into(),
            forms: self,
        };
        match parsed {
            Ok(selector) if self.takes(selector.kind()) => Ok(selector),
            Ok(_) | Err(SelectorError::Unknown { .. }) => Err(not_one_of()),
            // A form this setting does not take at all says so, rather than what would be
            // wrong with it if it did.
            Err(SelectorError::MissingName { kind, .. }) if !self.takes(*kind) => Err(not_one_of()),
            Err(SelectorError::BadHeaderName { .. }) if !self.takes(SelectorKind::Header) => {
                Err(not_one_of())
            }
            Err(e) => Err(e.clone()),
        }
    }
}

impl fmt::Display for Forms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, kind) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(kind.syntax())?;
        }
        Ok(())
    }
}

/// Why a text is not a selector a setting takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// Not a selector at all (`ip`, `body:x`, `Header:X`).
    #[error("`{text}` is not a request selector")]
    Unknown { text: Box<str> },
    /// A selector, or not one, that the setting does not take.
    #[error("`{text}` is not one of {forms}")]
    NotOneOf { text: Box<str>, forms: Forms },
    /// `header`, `cookie:` and the like, without the name they select.
    #[error("`{text}` needs a name: {}", kind.syntax())]
    MissingName { text: Box<str>, kind: SelectorKind },
    /// `header:NAME` whose name cannot be an HTTP header name.
    #[error("`{name}` is not a valid header name")]
    BadHeaderName { name: Box<str> },
}

/// What a selector found on one request, borrowed from the request or its exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selected<'r> {
    /// The client address, kept as an address: a limiter keys on it and a split hashes its
    /// octets without formatting it.
    ClientIp(IpAddr),
    /// The matched route's id.
    Route(&'r str),
    /// A value the request carries: a header, cookie or query value, the path, the consumer.
    /// Never empty.
    Text(&'r [u8]),
}

impl Selector {
    /// Parses any selector form: `client_ip`, `consumer`, `route`, `path`, `header:NAME`,
    /// `cookie:NAME`, `query:NAME`. Which of them a setting takes is [`Forms::judge`]'s
    /// question, or [`Selector::parse_as`]'s for both at once.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let kind = |word: &str| match word {
            "header" => Some(SelectorKind::Header),
            "cookie" => Some(SelectorKind::Cookie),
            "query" => Some(SelectorKind::Query),
            _ => None,
        };
        let missing = |kind| SelectorError::MissingName {
            text: text.into(),
            kind,
        };
        match text.split_once(':') {
            None => match text {
                "client_ip" => Ok(Selector::ClientIp),
                "consumer" => Ok(Selector::Consumer),
                "route" => Ok(Selector::Route),
                "path" => Ok(Selector::Path),
                _ => match kind(text) {
                    Some(kind) => Err(missing(kind)),
                    None => Err(SelectorError::Unknown { text: text.into() }),
                },
            },
            Some((word, name)) => match (kind(word), name) {
                (None, _) => Err(SelectorError::Unknown { text: text.into() }),
                (Some(kind), "") => Err(missing(kind)),
                (Some(SelectorKind::Header), name) => HeaderName::from_bytes(name.as_bytes())
                    .map(Selector::Header)
                    .map_err(|_| SelectorError::BadHeaderName { name: name.into() }),
                (Some(SelectorKind::Cookie), name) => Ok(Selector::Cookie(name.into())),
                (Some(_), name) => Ok(Selector::Query(name.into())),
            },
        }
    }

    /// Parses `text` as the value of a setting that takes `forms`.
    pub fn parse_as(text: &str, forms: Forms) -> Result<Selector, SelectorError> {
        forms.judge(text, &Selector::parse(text)).cloned()
    }

    /// The selector's form.
    pub fn kind(&self) -> SelectorKind {
        match self {
            Selector::ClientIp => SelectorKind::ClientIp,
            Selector::Consumer => SelectorKind::Consumer,
            Selector::Route => SelectorKind::Route,
            Selector::Path => SelectorKind::Path,
            Selector::Header(_) => SelectorKind::Header,
            Selector::Cookie(_) => SelectorKind::Cookie,
            Selector::Query(_) => SelectorKind::Query,
        }
    }

    /// Whether the value is known only once the caller is authenticated, so whatever keys on
    /// it must wait for authentication (SPEC §4).
    pub fn needs_identity(&self) -> bool {
        matches!(self, Selector::Consumer)
    }

    /// The value this selector finds on the request, or `None` when the request lacks it or
    /// it is empty (see the module documentation).
    #[inline]
    pub fn select<'r>(&self, req: &'r RequestHeader, ex: &'r Exchange) -> Option<Selected<'r>> {
        let text: &[u8] = match self {
            Selector::ClientIp => return Some(Selected::ClientIp(ex.client_ip)),
            Selector::Route => return Some(Selected::Route(&ex.route_id)),
            Selector::Consumer => ex.consumer.as_deref()?.as_bytes(),
            Selector::Path => req.uri.path().as_bytes(),
            Selector::Header(name) => req.headers.get(name)?.as_bytes(),
            Selector::Cookie(name) => cookie(req, name)?.as_bytes(),
            Selector::Query(name) => query_param(req.uri.query()?, name)?.as_bytes(),
        };
        (!text.is_empty()).then_some(Selected::Text(text))
    }

    /// As [`Selector::select`], with the client address for a request that lacks the value:
    /// for settings that must key every request (rate limits, consistent hashing).
    #[inline]
    pub fn select_or_client_ip<'r>(
        &self,
        req: &'r RequestHeader,
        ex: &'r Exchange,
    ) -> Selected<'r> {
        self.select(req, ex)
            .unwrap_or(Selected::ClientIp(ex.client_ip))
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Selector, SelectorError> {
        Selector::parse(text)
    }
}

/// The selector as written in configuration (header names in lower case), so that it
/// parses back to itself.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::ClientIp => f.write_str("client_ip"),
            Selector::Consumer => f.write_str("consumer"),
            Selector::Route => f.write_str("route"),
            Selector::Path => f.write_str("path"),
            Selector::Header(name) => write!(f, "header:{name}"),
            Selector::Cookie(name) => write!(f, "cookie:{name}"),
            Selector::Query(name) => write!(f, "query:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Forms = Forms(&[
        SelectorKind::ClientIp,
        SelectorKind::Consumer,
        SelectorKind::Route,
        SelectorKind::Path,
        SelectorKind::Header,
        SelectorKind::Cookie,
        SelectorKind::Query,
    ]);
    const NAMED: Forms = Forms(&[SelectorKind::ClientIp, SelectorKind::Header]);

    fn request(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    fn exchange() -> Exchange {
        Exchange::new("orders".into(), "id".into(), "10.0.0.7".parse().unwrap())
    }

    fn text(bytes: &str) -> Option<Selected<'_>> {
        Some(Selected::Text(bytes.as_bytes()))
    }

    #[test]
    fn every_form_parses_and_prints_back() {
        let cases = [
            ("client_ip", Selector::ClientIp),
            ("consumer", Selector::Consumer),
            ("route", Selector::Route),
            ("path", Selector::Path),
            (
                "header:x-user-id",
                Selector::Header(HeaderName::from_static("x-user-id")),
            ),
            ("cookie:session", Selector::Cookie("session".into())),
            ("query:user", Selector::Query("user".into())),
        ];
        for (text, selector) in cases {
            assert_eq!(Selector::parse(text), Ok(selector.clone()), "{text}");
            assert_eq!(text.parse::<Selector>(), Ok(selector.clone()), "{text}");
            assert_eq!(selector.to_string(), text);
            assert!(ALL.takes(selector.kind()));
        }
    }

    #[test]
    fn header_names_are_kept_as_header_names_and_cookie_names_as_written() {
        assert_eq!(
            Selector::parse("header:X-User-Id"),
            Ok(Selector::Header(HeaderName::from_static("x-user-id")))
        );
        assert_eq!(
            Selector::parse("cookie:Session"),
            Ok(Selector::Cookie("Session".into()))
        );
        // Only the first colon separates: the rest is the name.
        assert_eq!(
            Selector::parse("query:a:b"),
            Ok(Selector::Query("a:b".into()))
        );
    }

    #[test]
    fn each_error_names_what_is_wrong() {
        for text in ["ip", "body:x", "Header:X-A", "client_ip:x", "", " consumer"] {
            assert_eq!(
                Selector::parse(text),
                Err(SelectorError::Unknown { text: text.into() }),
                "{text:?}"
            );
        }
        for (text, kind) in [
            ("header", SelectorKind::Header),
            ("header:", SelectorKind::Header),
            ("cookie:", SelectorKind::Cookie),
            ("query", SelectorKind::Query),
        ] {
            let err = Selector::parse(text).unwrap_err();
            assert_eq!(
                err,
                SelectorError::MissingName {
                    text: text.into(),
                    kind
                }
            );
            assert!(err.to_string().contains(kind.syntax()), "{err}");
        }
        let err = Selector::parse("header:bad header").unwrap_err();
        assert_eq!(
            err,
            SelectorError::BadHeaderName {
                name: "bad header".into()
            }
        );
        assert_eq!(err.to_string(), "`bad header` is not a valid header name");
    }

    #[test]
    fn a_setting_refuses_forms_it_does_not_take_with_the_forms_it_does() {
        assert_eq!(
            Selector::parse_as("header:X-Key", NAMED),
            Ok(Selector::Header(HeaderName::from_static("x-key")))
        );
        for text in ["consumer", "cookie:a", "cookie:", "nonsense"] {
            let err = Selector::parse_as(text, NAMED).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("`{text}` is not one of client_ip, header:NAME")
            );
        }
        // A form the setting takes, written wrong, says what is wrong with it.
        assert!(matches!(
            Selector::parse_as("header:", NAMED),
            Err(SelectorError::MissingName { .. })
        ));
        assert!(matches!(
            Selector::parse_as("header:a b", NAMED),
            Err(SelectorError::BadHeaderName { .. })
        ));
        let no_headers = Forms(&[SelectorKind::Cookie]);
        assert!(matches!(
            Selector::parse_as("header:a b", no_headers),
            Err(SelectorError::NotOneOf { .. })
        ));
    }

    #[test]
    fn present_values_are_selected_from_the_request() {
        let req = request(
            "/users/7?a=1&user=u9&b=",
            &[
                ("x-user-id", "u1"),
                ("x-user-id", "u2"),
                ("cookie", "theme=dark; session=s1"),
            ],
        );
        let mut ex = exchange();
        ex.consumer = Some("alice".into());
        let select = |text: &str| Selector::parse(text).unwrap();
        assert_eq!(
            select("client_ip").select(&req, &ex),
            Some(Selected::ClientIp("10.0.0.7".parse().unwrap()))
        );
        assert_eq!(
            select("route").select(&req, &ex),
            Some(Selected::Route("orders"))
        );
        assert_eq!(select("consumer").select(&req, &ex), text("alice"));
        assert_eq!(select("path").select(&req, &ex), text("/users/7"));
        // The first of repeated headers.
        assert_eq!(select("header:X-User-Id").select(&req, &ex), text("u1"));
        assert_eq!(select("cookie:session").select(&req, &ex), text("s1"));
        assert_eq!(select("query:user").select(&req, &ex), text("u9"));
    }

    #[test]
    fn absent_and_empty_values_select_nothing_and_fall_back_to_the_client_address() {
        let req = request("/?b=&c", &[("x-empty", ""), ("cookie", "blank=; other=1")]);
        let ex = exchange();
        let ip = Selected::ClientIp(ex.client_ip);
        for text in [
            "consumer",
            "header:x-user-id",
            "header:x-empty",
            "cookie:session",
            "cookie:blank",
            "query:user",
            "query:b",
            "query:c",
        ] {
            let selector = Selector::parse(text).unwrap();
            assert_eq!(selector.select(&req, &ex), None, "{text}");
            assert_eq!(selector.select_or_client_ip(&req, &ex), ip, "{text}");
        }
        // Without any query at all, too.
        let bare = request("/", &[]);
        let query = Selector::parse("query:user").unwrap();
        assert_eq!(query.select(&bare, &ex), None);
    }

    #[test]
    fn only_the_consumer_waits_for_authentication() {
        for kind in ALL.0 {
            let selector = match kind {
                SelectorKind::Header => Selector::parse("header:a").unwrap(),
                SelectorKind::Cookie => Selector::parse("cookie:a").unwrap(),
                SelectorKind::Query => Selector::parse("query:a").unwrap(),
                _ => Selector::parse(kind.syntax()).unwrap(),
            };
            assert_eq!(
                selector.needs_identity(),
                *kind == SelectorKind::Consumer,
                "{selector}"
            );
        }
    }
}
