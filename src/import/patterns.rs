//! Pattern translations shared by the importers: paths, hosts, header and query values, and
//! path rewrites. Pure functions: each answers the gatehouse form, or why there is none, so
//! a translator can report exactly what it left out. What gatehouse accepts is judged by
//! the router's own parsers, never by a second copy of their rules.

use crate::resource::Rewrite;
use crate::router::{HostPattern, PathPattern, Segment as Seg};
use regex::Regex;

/// A gatehouse path pattern as the router reads it, to reason about what a rewrite does
/// to the paths a route takes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    segs: Vec<Seg>,
    /// Ends in `/**`.
    subtree: bool,
}

impl Shape {
    /// The pattern's segments by the router's own parser. One it refuses (never the case
    /// for the importers' own translations) may take any path.
    fn of(pattern: &str) -> Shape {
        match PathPattern::parse(pattern) {
            Ok(parsed) => Shape {
                segs: parsed.segments,
                subtree: parsed.subtree,
            },
            Err(_) => Shape {
                segs: Vec::new(),
                subtree: true,
            },
        }
    }

    /// The request path itself when the pattern matches one path only.
    fn exact(&self) -> Option<String> {
        if self.subtree {
            return None;
        }
        let mut path = String::new();
        for seg in &self.segs {
            match seg {
                Seg::Literal(l) => {
                    path.push('/');
                    path.push_str(l);
                }
                Seg::Param => return None,
            }
        }
        Some(if path.is_empty() { "/".into() } else { path })
    }

    /// The paths left once the first `n` segments are dropped (a superset when a `/**`
    /// pattern is shorter than `n`: then anything may be left).
    fn strip(&self, n: usize) -> Shape {
        if n <= self.segs.len() {
            return Shape {
                segs: self.segs[n..].to_vec(),
                subtree: self.subtree,
            };
        }
        Shape {
            segs: Vec::new(),
            subtree: self.subtree,
        }
    }

    /// Whether every path the pattern takes starts with these whole literal segments.
    fn starts_with(&self, prefix: &[String]) -> bool {
        prefix.len() <= self.segs.len()
            && self
                .segs
                .iter()
                .zip(prefix)
                .all(|(s, p)| matches!(s, Seg::Literal(l) if l == p))
    }

    /// Whether the pattern can match the path made of exactly `n` segments of it.
    fn can_end_after(&self, n: usize) -> bool {
        self.segs.len() == n || (self.subtree && self.segs.len() <= n)
    }
}

/// Translates one Spring `PathPattern` (`/api/**`, `/items/{id}`, `/files/{*rest}`, `/a/*`)
/// into a gatehouse path pattern.
pub fn spring_path(pattern: &str) -> Result<String, String> {
    let full = if pattern.starts_with('/') {
        pattern.to_string()
    } else {
        format!("/{pattern}")
    };
    let raw: Vec<&str> = full[1..].split('/').collect();
    let last = raw.len() - 1;
    let mut out = String::new();
    let mut params = 0usize;
    for (i, seg) in raw.iter().enumerate() {
        let whole_rest = *seg == "**" || (seg.starts_with("{*") && seg.ends_with('}'));
        if whole_rest {
            if i != last {
                return Err(format!(
                    "`{pattern}`: `{seg}` before the end of a path has no gatehouse form (`/**` ends a pattern)"
                ));
            }
            out.push_str("/**");
            continue;
        }
        out.push('/');
        if *seg == "*" {
            params += 1;
            out.push_str(&format!("{{p{params}}}"));
        } else if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if name.contains(':') {
                return Err(format!(
                    "`{pattern}`: the regex of `{seg}` has no gatehouse form (a `{{name}}` segment takes any value)"
                ));
            }
            params += 1;
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if valid {
                out.push_str(seg);
            } else {
                out.push_str(&format!("{{p{params}}}"));
            }
        } else if seg.contains(['*', '?', '{', '}']) {
            return Err(format!(
                "`{pattern}`: the wildcard in `{seg}` matches part of a segment; gatehouse matches whole segments"
            ));
        } else {
            out.push_str(seg);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    PathPattern::parse(&out).map_err(|e| format!("`{pattern}`: {e}"))?;
    Ok(out)
}

/// The same pattern with a trailing `/`, for Spring's `matchTrailingSlash` (on by default):
/// `/users/{id}` also takes `/users/7/`. `None` when the pattern takes it already.
pub fn with_trailing_slash(pattern: &str) -> Option<String> {
    if pattern.ends_with("/**") || pattern.ends_with('/') {
        None
    } else {
        Some(format!("{pattern}/"))
    }
}

/// Translates a go-kratos gateway endpoint path: exact (`/v1/users`, with `{name}`
/// segments) or a prefix ending in `/*` (`/helloworld/*`, gorilla/mux's `PathPrefix`).
pub fn kratos_path(path: &str) -> Result<String, String> {
    let translated = if let Some(prefix) = path.strip_suffix('*') {
        if !prefix.ends_with('/') {
            return Err(format!(
                "`{path}` takes paths by a prefix that ends inside a segment; gatehouse takes whole segments (`/a/*` becomes `/a/**`)"
            ));
        }
        format!("{prefix}**")
    } else {
        path.to_string()
    };
    if !translated.starts_with('/') {
        return Err(format!("`{path}` does not start with `/`"));
    }
    let body = translated.strip_suffix("/**").unwrap_or(&translated);
    for seg in body.split('/') {
        let braced = seg.starts_with('{') && seg.ends_with('}');
        if braced && seg.contains(':') {
            return Err(format!(
                "the regex of `{seg}` in `{path}` has no gatehouse form (a `{{name}}` segment takes any value)"
            ));
        }
        if seg.contains(['*', '{', '}']) && !braced {
            return Err(format!(
                "`{seg}` in `{path}` matches part of a segment; gatehouse matches whole segments"
            ));
        }
    }
    PathPattern::parse(&translated).map_err(|e| format!("`{path}`: {e}"))?;
    Ok(translated)
}

/// A host pattern's gatehouse form, and what differs when it is not exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosts {
    pub hosts: Vec<String>,
    pub caveat: Option<String>,
}

/// Translates one Spring `Host` pattern (`api.example.com`, `**.example.com`,
/// `*.example.com`, `{sub}.example.com`, with or without `:port`).
pub fn spring_host(pattern: &str) -> Result<Hosts, String> {
    let mut caveats = Vec::new();
    let mut name = pattern.trim();
    if let Some((host, port)) = name.rsplit_once(':') {
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            caveats.push(format!(
                "the port of `{pattern}` is left out: gatehouse matches hosts on any port"
            ));
            name = host;
        }
    }
    let hosts = if let Some(domain) = name.strip_prefix("**.") {
        vec![format!("*.{domain}"), domain.to_string()]
    } else if let Some(domain) = name.strip_prefix("*.").or_else(|| {
        name.strip_prefix('{')
            .and_then(|rest| rest.split_once("}."))
            .map(|(_, domain)| domain)
    }) {
        caveats.push(format!(
            "`{pattern}` takes one more label; gatehouse's `*.{domain}` takes names of any depth below {domain}"
        ));
        vec![format!("*.{domain}")]
    } else {
        vec![name.to_string()]
    };
    for host in &hosts {
        if let Err(e) = HostPattern::parse(host) {
            return Err(if pattern.contains(['*', '?', '{']) {
                format!(
                    "`{pattern}` has a wildcard gatehouse cannot place (only a leading `*.` is)"
                )
            } else {
                format!("`{pattern}`: {e}")
            });
        }
    }
    Ok(Hosts {
        hosts,
        caveat: (!caveats.is_empty()).then(|| caveats.join("; ")),
    })
}

/// Characters that make a Java regex more than a literal.
const META: &[char] = &[
    '\\', '^', '$', '.', '|', '?', '*', '+', '(', ')', '[', ']', '{', '}',
];

/// The literal a regex matches when it is one (escapes of punctuation undone), `None` when
/// it holds any operator.
fn literal(regex: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = regex.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e) if !e.is_ascii_alphanumeric() => out.push(e),
                _ => return None,
            }
        } else if META.contains(&c) {
            return None;
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// Splits a regex on its top-level `|` (outside groups, classes and escapes).
fn alternatives(regex: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut class, mut escaped, mut start) = (0i32, false, false, 0);
    for (i, c) in regex.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '[' => class = true,
            ']' => class = false,
            '(' if !class => depth += 1,
            ')' if !class => depth -= 1,
            '|' if !class && depth == 0 => {
                parts.push(&regex[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&regex[start..]);
    parts
}

/// Translates a Java regex that must match a whole header or query value (Spring's
/// `Header`, `Query`) into a gatehouse match value: a literal (`web`), a choice of literals
/// (`mobile|web`), or else `~^(?:regex)$` when gatehouse's regex engine reads it.
pub fn whole_value(regex: &str) -> Result<String, String> {
    let literals: Option<Vec<String>> = alternatives(regex).into_iter().map(literal).collect();
    if let Some(literals) = literals {
        let plain = literals
            .iter()
            .all(|l| !l.contains('|') && !l.starts_with('~'));
        if plain && !(literals.len() == 1 && literals[0].is_empty()) {
            return Ok(literals.join("|"));
        }
    }
    let anchored = format!("^(?:{regex})$");
    match Regex::new(&anchored) {
        Ok(_) => Ok(format!("~{anchored}")),
        Err(e) => Err(format!(
            "the regex `{regex}` is not one gatehouse's regex engine runs ({})",
            regex_reason(&e)
        )),
    }
}

/// The gist of a regex error, on one line.
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .unwrap_or_else(|| text.lines().next().unwrap_or("unreadable"))
        .to_string()
}

/// The path rewrite a route's filters add up to, in their order. Each step is judged
/// against the paths the route takes as they are at that point (the route's patterns,
/// stripped by the steps before), so `StripPrefix` then `RewritePath` compose as they do in
/// the source gateway.
#[derive(Debug, Clone)]
pub struct PathRewrite {
    shapes: Vec<Shape>,
    strip: usize,
    fixed: Option<String>,
}

impl PathRewrite {
    /// Starts from the gatehouse path patterns of the route.
    pub fn new(patterns: &[String]) -> PathRewrite {
        PathRewrite {
            shapes: patterns.iter().map(|p| Shape::of(p)).collect(),
            strip: 0,
            fixed: None,
        }
    }

    /// Drops the first `n` segments (Spring's `StripPrefix`).
    pub fn strip(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        match &mut self.fixed {
            Some(path) => *path = strip_path(path, n),
            None => {
                self.strip += n;
                self.shapes = self.shapes.iter().map(|s| s.strip(n)).collect();
            }
        }
    }

    /// Drops a literal prefix (kratos gateway's `stripPrefix: /bbs`), when every path the
    /// route takes starts with it as whole segments.
    pub fn strip_literal(&mut self, prefix: &str) -> Result<(), String> {
        if let Some(path) = &self.fixed {
            let rest = path.strip_prefix(prefix).unwrap_or(path);
            let rest = if rest.starts_with('/') {
                rest.to_string()
            } else {
                format!("/{rest}")
            };
            self.fixed = Some(rest);
            return Ok(());
        }
        let segs: Vec<String> = prefix
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if segs.is_empty() {
            return Ok(());
        }
        if self.shapes.iter().all(|s| s.starts_with(&segs)) {
            self.strip(segs.len());
            Ok(())
        } else {
            Err(format!(
                "the prefix `{prefix}` is not whole leading segments of every path the route takes"
            ))
        }
    }

    /// Replaces the path (Spring's `SetPath` without variables, kratos's `pathRewrite`).
    pub fn set(&mut self, path: &str) -> Result<(), String> {
        if !path.starts_with('/') || path.contains(['?', '#']) {
            return Err(format!(
                "`{path}` is not a path gatehouse can set (it starts with `/`, without `?` or `#`)"
            ));
        }
        self.fixed = Some(path.to_string());
        Ok(())
    }

    /// Spring's `RewritePath=REGEX, REPLACEMENT` (Java's `replaceAll`). Translated when it
    /// drops leading literal segments (`/api/?(?<rest>.*)` → `/${rest}`), or when the
    /// route takes fixed paths only and all of them come out the same.
    pub fn rewrite(&mut self, regex: &str, replacement: &str) -> Result<(), String> {
        let replacement = replacement.replace("$\\", "$");
        let compiled = Regex::new(regex).map_err(|e| {
            format!(
                "the regex `{regex}` is not one gatehouse's regex engine runs ({})",
                regex_reason(&e)
            )
        })?;
        let rust_replacement = java_replacement(&replacement)?;
        if let Some(path) = &self.fixed {
            let next = compiled
                .replace_all(path, rust_replacement.as_str())
                .into_owned();
            return self.set(&next);
        }
        if let Some(prefix) = strip_form(regex, &replacement) {
            let applies = self.shapes.iter().all(|s| s.starts_with(&prefix.segs));
            let ends_safe = prefix.slash_optional
                || !self
                    .shapes
                    .iter()
                    .any(|s| s.can_end_after(prefix.segs.len()));
            if applies && ends_safe {
                self.strip(prefix.segs.len());
                return Ok(());
            }
        }
        let exact: Option<Vec<String>> = self.shapes.iter().map(Shape::exact).collect();
        if let Some(paths) = exact {
            let outs: Vec<String> = paths
                .iter()
                .map(|p| {
                    compiled
                        .replace_all(p, rust_replacement.as_str())
                        .into_owned()
                })
                .collect();
            if outs == paths {
                return Ok(()); // it changes none of the route's paths
            }
            if outs.windows(2).all(|w| w[0] == w[1]) {
                return self.set(&outs[0]);
            }
            return Err(format!(
                "`{regex}` → `{replacement}` gives the route's paths different results ({}); gatehouse sets one fixed `path`",
                outs.join(", ")
            ));
        }
        Err(format!(
            "`{regex}` → `{replacement}` rewrites the path by a pattern; gatehouse rewrites by dropping leading segments (`strip_prefix`) or setting one fixed `path`"
        ))
    }

    /// The route's `rewrite`, if any.
    pub fn finish(&self) -> Option<Rewrite> {
        if let Some(path) = &self.fixed {
            return Some(Rewrite {
                strip_prefix: None,
                path: Some(path.clone()),
            });
        }
        (self.strip > 0).then_some(Rewrite {
            strip_prefix: Some(self.strip),
            path: None,
        })
    }
}

/// Drops the first `n` segments of a path; nothing left is `/`.
fn strip_path(path: &str, n: usize) -> String {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let kept: Vec<&str> = rest.split('/').skip(n).collect();
    if kept.is_empty() {
        "/".into()
    } else {
        format!("/{}", kept.join("/"))
    }
}

/// The leading segments a `RewritePath` in "strip" form drops.
struct StripPrefix {
    segs: Vec<String>,
    /// `/api/?(…)`: the bare `/api` is rewritten too (to `/`).
    slash_optional: bool,
}

/// Recognizes the usual ways of writing "drop these leading segments":
/// `/api/?(?<rest>.*)` → `/${rest}` (or `/(?<rest>.*)`, or a numbered group `$1`), and
/// `/api(?<rest>/?.*)` → `${rest}`. Anchors (`^`, `$`) may be written or not.
fn strip_form(regex: &str, replacement: &str) -> Option<StripPrefix> {
    let body = regex.strip_prefix('^').unwrap_or(regex);
    let body = body.strip_suffix('$').unwrap_or(body);
    let open = body.find('(')?;
    let (head, group) = body.split_at(open);
    let inner = group.strip_suffix(')')?;
    let inner = inner
        .strip_prefix("(?<")
        .or_else(|| inner.strip_prefix("(?P<"))
        .and_then(|s| s.split_once('>'))
        .map(|(name, rest)| (Some(name), rest))
        .or_else(|| inner.strip_prefix('(').map(|rest| (None, rest)))?;
    let (name, capture) = inner;
    let refs_group = |r: &str| match name {
        Some(n) => r == format!("${{{n}}}") || r == "$1" || r == "${1}",
        None => r == "$1" || r == "${1}",
    };
    let (prefix, slash_optional) = if capture == ".*" {
        let rest = replacement.strip_prefix('/')?;
        if !refs_group(rest) {
            return None;
        }
        if let Some(p) = head.strip_suffix("/?") {
            (p, true)
        } else {
            (head.strip_suffix('/')?, false)
        }
    } else if capture == "/?.*" || capture == "/.*" {
        if !refs_group(replacement) {
            return None;
        }
        (head, capture == "/?.*")
    } else {
        return None;
    };
    let prefix = literal(prefix)?;
    let segs: Vec<String> = prefix
        .strip_prefix('/')?
        .split('/')
        .map(String::from)
        .collect();
    if segs.iter().any(String::is_empty) {
        return None;
    }
    Some(StripPrefix {
        segs,
        slash_optional,
    })
}

/// A Java `replaceAll` replacement (`$1`, `${name}`, `\$`) in the `regex` crate's syntax.
fn java_replacement(java: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = java.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('$') => out.push_str("$$"),
                Some(e) => out.push(e),
                None => return Err(format!("the replacement `{java}` ends with `\\`")),
            },
            '$' => {
                if chars.peek() == Some(&'{') {
                    chars.next();
                    let mut name = String::new();
                    for n in chars.by_ref() {
                        if n == '}' {
                            break;
                        }
                        name.push(n);
                    }
                    out.push_str(&format!("${{{name}}}"));
                } else {
                    let mut digits = String::new();
                    while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                        digits.push(*d);
                        chars.next();
                    }
                    if digits.is_empty() {
                        return Err(format!(
                            "the replacement `{java}` has a `$` naming no group"
                        ));
                    }
                    out.push_str(&format!("${{{digits}}}"));
                }
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spring_paths() {
        assert_eq!(spring_path("/api/v1/users/**").unwrap(), "/api/v1/users/**");
        assert_eq!(spring_path("/items/{id}").unwrap(), "/items/{id}");
        assert_eq!(spring_path("/files/{*rest}").unwrap(), "/files/**");
        assert_eq!(spring_path("/a/*/b").unwrap(), "/a/{p1}/b");
        assert_eq!(spring_path("/a/{user-id}").unwrap(), "/a/{p1}");
        assert_eq!(spring_path("api/x").unwrap(), "/api/x");
        assert_eq!(spring_path("/**").unwrap(), "/**");
        assert_eq!(spring_path("/").unwrap(), "/");
        assert!(spring_path("/a/**/b").is_err());
        assert!(spring_path("/a/*.html").is_err());
        assert!(spring_path("/a/{id:[0-9]+}").is_err());
        assert!(spring_path("/t?st").is_err());
    }

    #[test]
    fn kratos_paths() {
        assert_eq!(kratos_path("/helloworld/*").unwrap(), "/helloworld/**");
        assert_eq!(kratos_path("/*").unwrap(), "/**");
        assert_eq!(kratos_path("/v1/users/{id}").unwrap(), "/v1/users/{id}");
        assert_eq!(
            kratos_path("/helloworld.v1.Greeter/SayHello").unwrap(),
            "/helloworld.v1.Greeter/SayHello"
        );
        assert!(kratos_path("/hello*").is_err());
        assert!(kratos_path("/v1/{id:[0-9]+}").is_err());
        assert!(kratos_path("/v1/{id}.json").is_err());
    }

    #[test]
    fn trailing_slash_variants() {
        assert_eq!(with_trailing_slash("/a/{id}").as_deref(), Some("/a/{id}/"));
        assert_eq!(with_trailing_slash("/a/**"), None);
        assert_eq!(with_trailing_slash("/"), None);
    }

    #[test]
    fn spring_hosts() {
        let h = spring_host("api.example.com").unwrap();
        assert_eq!(h.hosts, ["api.example.com"]);
        assert_eq!(h.caveat, None);
        let h = spring_host("**.example.com").unwrap();
        assert_eq!(h.hosts, ["*.example.com", "example.com"]);
        assert_eq!(h.caveat, None);
        let h = spring_host("*.example.com").unwrap();
        assert_eq!(h.hosts, ["*.example.com"]);
        assert!(h.caveat.unwrap().contains("any depth"));
        let h = spring_host("{sub}.example.com").unwrap();
        assert_eq!(h.hosts, ["*.example.com"]);
        let h = spring_host("example.com:8080").unwrap();
        assert_eq!(h.hosts, ["example.com"]);
        assert!(h.caveat.unwrap().contains("port"));
        assert!(spring_host("a*.example.com").is_err());
        assert!(spring_host("*.*.example.com").is_err());
    }

    #[test]
    fn whole_values() {
        assert_eq!(whole_value("mobile|web").unwrap(), "mobile|web");
        assert_eq!(whole_value("web").unwrap(), "web");
        assert_eq!(whole_value(r"v1\.0").unwrap(), "v1.0");
        assert_eq!(whole_value(r"\d+").unwrap(), r"~^(?:\d+)$");
        assert_eq!(whole_value("gree.").unwrap(), "~^(?:gree.)$");
        assert_eq!(whole_value("(a|b)c").unwrap(), "~^(?:(a|b)c)$");
        assert_eq!(whole_value("~x").unwrap(), "~^(?:~x)$");
        let e = whole_value("(?<=a)b").unwrap_err();
        assert!(e.contains("regex engine"), "{e}");
        let e = whole_value(r"(a)\1").unwrap_err();
        assert!(e.contains("regex engine"), "{e}");
    }

    fn rewrite(paths: &[&str], steps: &[(&str, &str)]) -> Result<Option<Rewrite>, String> {
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        let mut r = PathRewrite::new(&paths);
        for (regex, replacement) in steps {
            r.rewrite(regex, replacement)?;
        }
        Ok(r.finish())
    }

    fn strip(n: usize) -> Option<Rewrite> {
        Some(Rewrite {
            strip_prefix: Some(n),
            path: None,
        })
    }

    fn path(p: &str) -> Option<Rewrite> {
        Some(Rewrite {
            strip_prefix: None,
            path: Some(p.into()),
        })
    }

    #[test]
    fn rewrite_path_in_strip_form() {
        let r = rewrite(&["/red/**"], &[("/red/?(?<segment>.*)", "/$\\{segment}")]);
        assert_eq!(r.unwrap(), strip(1));
        let r = rewrite(&["/api/v1/**"], &[("^/api/v1/?(.*)$", "/$1")]);
        assert_eq!(r.unwrap(), strip(2));
        let r = rewrite(&["/red/**"], &[("/red(?<segment>/?.*)", "${segment}")]);
        assert_eq!(r.unwrap(), strip(1));
        // `/red/(…)` leaves a bare `/red` as it is: not a strip when the route takes it.
        assert!(rewrite(&["/red/**"], &[("/red/(?<s>.*)", "/${s}")]).is_err());
        assert_eq!(
            rewrite(&["/red/{id}"], &[("/red/(?<s>.*)", "/${s}")]).unwrap(),
            strip(1)
        );
        // A prefix the route's paths do not all start with.
        assert!(rewrite(&["/blue/**"], &[("/red/?(?<s>.*)", "/${s}")]).is_err());
        // A new prefix cannot be added.
        assert!(rewrite(&["/red/**"], &[("/red/?(?<s>.*)", "/v2/${s}")]).is_err());
    }

    #[test]
    fn rewrite_path_of_fixed_paths() {
        assert_eq!(
            rewrite(&["/old", "/old/"], &[("/old/?", "/new")]).unwrap(),
            path("/new")
        );
        assert_eq!(rewrite(&["/x"], &[("/nothing", "/y")]).unwrap(), None);
        assert_eq!(rewrite(&["/a", "/b"], &[("/(a|b)", "/$1")]).unwrap(), None);
        assert!(rewrite(&["/a", "/b"], &[("/(a|b)", "/x$1")]).is_err());
    }

    #[test]
    fn steps_compose_in_order() {
        let paths = vec!["/api/v1/users/**".to_string()];
        let mut r = PathRewrite::new(&paths);
        r.strip(1);
        r.rewrite("/v1/?(?<s>.*)", "/${s}").unwrap();
        assert_eq!(r.finish(), strip(2));
        let mut r = PathRewrite::new(&paths);
        r.set("/fixed/a/b").unwrap();
        r.strip(1);
        r.rewrite("/a", "/z").unwrap();
        assert_eq!(r.finish(), path("/z/b"));
        let mut r = PathRewrite::new(&paths);
        r.strip_literal("/api/").unwrap();
        assert_eq!(r.finish(), strip(1));
        assert!(r.strip_literal("/ap").is_err());
    }

    #[test]
    fn java_replacements() {
        assert_eq!(java_replacement("/${a}/$1\\$").unwrap(), "/${a}/${1}$$");
        assert!(java_replacement("$x").is_err());
    }
}
