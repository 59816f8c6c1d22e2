//! `google.api.http` path templates: `/v1/{name=projects/*/users/*}:cancel`, parsed once
//! when a route compiles and matched against the request path with no allocation beyond the
//! captured values.
//!
//! The grammar (google/api/http.proto):
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```

use std::fmt;

/// One segment of a template's path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: the rest of the path, zero or more segments; only last.
    Rest,
}

/// A variable: which field it sets, and the segments `[start, end)` it spans (`end` is
/// `None` when it ends with `**`, running to the end of the path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub field: Vec<String>,
    start: usize,
    end: Option<usize>,
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    /// As written, for messages.
    text: String,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path template `{template}`: {reason}")]
pub struct TemplateError {
    template: String,
    reason: &'static str,
}

impl PathTemplate {
    pub fn parse(text: &str) -> Result<PathTemplate, TemplateError> {
        let fail = |reason| TemplateError {
            template: text.to_owned(),
            reason,
        };
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| fail("must start with `/`"))?;
        let mut template = PathTemplate {
            text: text.to_owned(),
            segments: Vec::new(),
            variables: Vec::new(),
            verb: None,
        };
        let mut chars = rest;
        loop {
            if let Some(inner) = chars.strip_prefix('{') {
                let close = inner.find('}').ok_or_else(|| fail("a `{` is not closed"))?;
                let (body, after) = (&inner[..close], &inner[close + 1..]);
                let (field, pattern) = match body.split_once('=') {
                    Some((field, pattern)) => (field, pattern),
                    None => (body, "*"),
                };
                let field: Vec<String> = field.split('.').map(str::to_owned).collect();
                if field.iter().any(|f| !is_ident(f)) {
                    return Err(fail("a variable must name a field (`id`, `user.id`)"));
                }
                if template.variables.iter().any(|v| v.field == field) {
                    return Err(fail("a field is bound twice"));
                }
                let start = template.segments.len();
                for part in pattern.split('/') {
                    match part {
                        "*" => template.segments.push(Segment::One),
                        "**" => template.segments.push(Segment::Rest),
                        "" => return Err(fail("an empty segment")),
                        literal if literal.contains(['{', '}', '*', '=']) => {
                            return Err(fail("a variable cannot hold another"))
                        }
                        literal => template.segments.push(Segment::Literal(literal.into())),
                    }
                }
                let end = match template.segments.last() {
                    Some(Segment::Rest) => None,
                    _ => Some(template.segments.len()),
                };
                template.variables.push(Variable { field, start, end });
                chars = after;
            } else {
                let stop = chars.find(['/', ':', '{']).unwrap_or(chars.len());
                let part = &chars[..stop];
                match part {
                    "*" => template.segments.push(Segment::One),
                    "**" => template.segments.push(Segment::Rest),
                    "" => return Err(fail("an empty segment")),
                    literal if literal.contains(['}', '*', '=']) => {
                        return Err(fail("a literal holds `}`, `*` or `=`"))
                    }
                    literal => template.segments.push(Segment::Literal(literal.into())),
                }
                chars = &chars[stop..];
            }
            match chars.as_bytes().first() {
                None => break,
                Some(b'/') => chars = &chars[1..],
                Some(b':') => {
                    let verb = &chars[1..];
                    if verb.is_empty() || verb.contains(['/', '{', '}', '*', ':']) {
                        return Err(fail("the verb after `:` must be a literal"));
                    }
                    template.verb = Some(verb.into());
                    break;
                }
                Some(_) => return Err(fail("a variable must be a whole segment")),
            }
        }
        let last = template.segments.len().saturating_sub(1);
        if template.segments[..last].contains(&Segment::Rest) {
            return Err(fail("`**` may only be the last segment"));
        }
        Ok(template)
    }

    /// Whether both match exactly the same paths (whatever their variables are called).
    pub fn same_paths(&self, other: &PathTemplate) -> bool {
        self.segments == other.segments && self.verb == other.verb
    }

    /// The variables, in the order [`PathTemplate::matches`] captures them.
    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// How specific the template is, to prefer `/v1/users/me` over `/v1/users/{id}`: its
    /// literal segments count most, then its fixed length.
    pub fn specificity(&self) -> (usize, bool, bool) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        let fixed = !self.segments.contains(&Segment::Rest);
        (literals, self.verb.is_some(), fixed)
    }

    /// Matches a request path (without its query); on a match, each variable's value in
    /// order, percent-decoded (a `/` inside a value spanning several segments stays).
    pub fn matches(&self, path: &str) -> Option<Vec<String>> {
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(verb) => path.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => path,
        };
        let parts: smallvec::SmallVec<[&str; 8]> = path.split('/').collect();
        let mut at = 0;
        for segment in &self.segments {
            match segment {
                Segment::Literal(l) => {
                    if parts.get(at) != Some(&l.as_str()) {
                        return None;
                    }
                    at += 1;
                }
                Segment::One => {
                    if parts.get(at).is_none_or(|p| p.is_empty()) {
                        return None;
                    }
                    at += 1;
                }
                Segment::Rest => at = parts.len(),
            }
        }
        if at != parts.len() {
            return None;
        }
        // A value that is not UTF-8 once decoded fits no field a path may set (bytes come
        // base64): the path matches nothing rather than reaching a method mangled.
        self.variables
            .iter()
            .map(|v| {
                let end = v.end.unwrap_or(parts.len()).min(parts.len());
                let start = v.start.min(end);
                let mut value = String::new();
                for (i, part) in parts[start..end].iter().enumerate() {
                    if i > 0 {
                        value.push('/');
                    }
                    value.push_str(&decode(part, end - start > 1 || v.end.is_none())?);
                }
                Some(value)
            })
            .collect()
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for Variable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.field.join("."))
    }
}

fn is_ident(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Percent-decodes a segment; for a value of several segments `%2F` stays encoded, so the
/// value's own slashes and the path's are told apart (as grpc-gateway does). `None` when
/// the bytes are not UTF-8.
fn decode(segment: &str, keep_slash: bool) -> Option<String> {
    if !segment.contains('%') {
        return Some(segment.to_owned());
    }
    String::from_utf8(super::percent_decode(segment.as_bytes(), false, keep_slash)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(template: &str, path: &str) -> Option<Vec<String>> {
        PathTemplate::parse(template).unwrap().matches(path)
    }

    #[test]
    fn a_simple_variable_takes_one_segment() {
        assert_eq!(
            matches("/v1/users/{id}", "/v1/users/42"),
            Some(vec!["42".into()])
        );
        assert_eq!(matches("/v1/users/{id}", "/v1/users/42/x"), None);
        assert_eq!(matches("/v1/users/{id}", "/v1/users/"), None);
        assert_eq!(matches("/v1/users/{id}", "/v1/users"), None);
        assert_eq!(matches("/v1/users/{id}", "/v2/users/1"), None);
    }

    #[test]
    fn nested_fields_and_multi_segment_variables() {
        let t = PathTemplate::parse("/v1/{user.name=projects/*/users/*}/x").unwrap();
        assert_eq!(t.variables()[0].to_string(), "user.name");
        assert_eq!(
            t.matches("/v1/projects/p1/users/u%2F1/x"),
            Some(vec!["projects/p1/users/u%2F1".into()])
        );
        assert_eq!(t.matches("/v1/projects/p1/groups/u1/x"), None);
    }

    #[test]
    fn rest_matches_what_is_left() {
        assert_eq!(
            matches("/v1/files/{path=**}", "/v1/files/a/b/c"),
            Some(vec!["a/b/c".into()])
        );
        assert_eq!(
            matches("/v1/files/{path=**}", "/v1/files/"),
            Some(vec!["".into()])
        );
        assert_eq!(matches("/v1/**", "/v1/anything/at/all"), Some(vec![]));
    }

    #[test]
    fn a_verb_must_end_the_path() {
        let t = "/v1/{name=ops/*}:cancel";
        assert_eq!(matches(t, "/v1/ops/7:cancel"), Some(vec!["ops/7".into()]));
        assert_eq!(matches(t, "/v1/ops/7"), None);
        assert_eq!(matches(t, "/v1/ops/7:undo"), None);
    }

    #[test]
    fn single_segment_values_are_percent_decoded() {
        assert_eq!(
            matches("/v1/users/{id}", "/v1/users/a%20b%2Fc"),
            Some(vec!["a b/c".into()])
        );
        assert_eq!(
            matches("/v1/users/{id}", "/v1/users/100%"),
            Some(vec!["100%".into()])
        );
        assert_eq!(
            matches("/v1/users/{id}", "/v1/users/a%FF"),
            None,
            "not UTF-8"
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in [
            "v1/users",
            "/v1//users",
            "/v1/{id",
            "/v1/{id}x",
            "/v1/{}",
            "/v1/{1d}",
            "/v1/**/x",
            "/v1/{a={b}}",
            "/v1/x:",
            "/v1/{id}/{id}",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn literals_outrank_variables() {
        let me = PathTemplate::parse("/v1/users/me").unwrap();
        let id = PathTemplate::parse("/v1/users/{id}").unwrap();
        assert!(me.specificity() > id.specificity());
    }
}
