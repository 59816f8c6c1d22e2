//! Path and host patterns of `match.paths` and `match.hosts`.

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `{name}`: exactly one non-empty segment.
    Param,
}

/// `/exact`, `/prefix/**` (the prefix itself and everything below it), `/items/{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    pub segments: Vec<Segment>,
    /// Ends in `/**`.
    pub subtree: bool,
}

impl PathPattern {
    pub fn parse(text: &str) -> Result<PathPattern, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("`{text}` must start with `/`"));
        };
        if text.contains(['?', '#']) {
            return Err(format!(
                "`{text}` must not hold `?` or `#`; match query with `match.query`"
            ));
        }
        let mut raw: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let subtree = raw.last() == Some(&"**");
        if subtree {
            raw.pop();
        }
        let mut segments = Vec::with_capacity(raw.len());
        for seg in raw {
            if seg.contains('*') {
                return Err(format!(
                    "`{text}`: `*` is only allowed as a final `/**` segment"
                ));
            }
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("`{text}`: `{seg}` is not a valid parameter"));
                }
                segments.push(Segment::Param);
            } else if seg.contains(['{', '}']) {
                return Err(format!(
                    "`{text}`: a parameter must be a whole segment, like /items/{{id}}"
                ));
            } else {
                segments.push(Segment::Literal(seg.to_string()));
            }
        }
        Ok(PathPattern { segments, subtree })
    }

    /// How specific the pattern is; larger is more specific. Literal segments count first,
    /// then a bounded pattern beats a `/**` one, then fewer parameters win.
    pub fn specificity(&self) -> (u16, bool, u16) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        let params = self.segments.len() - literals;
        (literals as u16, !self.subtree, u16::MAX - params as u16)
    }
}

/// `api.example.com` or `*.example.com` (any name ending in `.example.com`, at any depth,
/// but not `example.com` itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// Holds the suffix with its leading dot: `.example.com`.
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let lower = text.to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if !valid {
            return Err(format!(
                "`{text}` is not a host name or `*.domain` wildcard (ports are not part of a host match)"
            ));
        }
        Ok(if wild {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_string())
        })
    }

    /// Longer patterns are more specific.
    pub fn specificity(&self) -> u16 {
        match self {
            HostPattern::Exact(h) => h.len() as u16 + 1,
            HostPattern::Wildcard(s) => s.len() as u16,
        }
    }
}

/// The host a request names, as matching wants it: no port, lower case, no trailing dot.
/// Borrows unless the name has upper-case letters.
pub fn normalize_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let host = if let Some(v6) = raw.strip_prefix('[') {
        // [::1]:8080 — keep the brackets' content.
        v6.split(']').next().unwrap_or(v6)
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                raw
            }
        })
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_patterns_parse() {
        let p = PathPattern::parse("/api/v1/users/**").unwrap();
        assert!(p.subtree);
        assert_eq!(p.segments.len(), 3);
        let p = PathPattern::parse("/items/{id}").unwrap();
        assert_eq!(p.segments[1], Segment::Param);
        assert_eq!(PathPattern::parse("/").unwrap().segments.len(), 0);
        assert!(PathPattern::parse("/**").unwrap().subtree);
    }

    #[test]
    fn bad_path_patterns_say_why() {
        assert!(PathPattern::parse("api")
            .unwrap_err()
            .contains("start with"));
        assert!(PathPattern::parse("/a/*/b").unwrap_err().contains("/**"));
        assert!(PathPattern::parse("/a/**/b").unwrap_err().contains("/**"));
        assert!(PathPattern::parse("/a/x{id}")
            .unwrap_err()
            .contains("whole segment"));
        assert!(PathPattern::parse("/a/{}")
            .unwrap_err()
            .contains("parameter"));
        assert!(PathPattern::parse("/a?b=1")
            .unwrap_err()
            .contains("match.query"));
    }

    #[test]
    fn specificity_orders_exact_param_subtree() {
        let s = |p: &str| PathPattern::parse(p).unwrap().specificity();
        assert!(s("/api/users") > s("/api/{x}"));
        assert!(s("/api/{x}") > s("/api/**"));
        assert!(s("/api/users/**") > s("/api/**"));
        assert!(s("/api/users/{id}") > s("/api/users/**"));
    }

    #[test]
    fn host_patterns() {
        assert_eq!(
            HostPattern::parse("API.Example.com").unwrap(),
            HostPattern::Exact("api.example.com".into())
        );
        assert_eq!(
            HostPattern::parse("*.example.com").unwrap(),
            HostPattern::Wildcard(".example.com".into())
        );
        assert!(HostPattern::parse("example.com:8080").is_err());
        assert!(HostPattern::parse("a..b").is_err());
        assert!(HostPattern::parse("*.").is_err());
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("API.example.com:8080"), "api.example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "::1");
        assert_eq!(normalize_host("localhost"), "localhost");
    }
}
