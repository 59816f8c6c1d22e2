//! `gatehouse import` (SPEC §14): Spring Cloud Gateway routes and go-kratos gateway
//! configurations turned into gatehouse `Route` and `Upstream` resources, with a line for
//! everything that could not be translated, so an operator moving a platform knows exactly
//! what is left to do by hand.
//!
//! The work is split by job: [`yaml`] reads the input with the line of every value,
//! [`patterns`] translates paths, hosts, match values and rewrites (pure functions, tested
//! on their own), [`headers`] keeps a route's header edits in the source's order,
//! [`spring`] and [`kratos`] read each source's configuration, and
//! [`output`] judges the resources as `gatehouse validate` does and writes them. The
//! translators produce the resource types of `crate::resource` themselves, serialized as
//! any resource is, so an imported file reads like one written by hand.

pub mod headers;
pub mod kratos;
pub mod output;
pub mod patterns;
pub mod spring;
pub mod yaml;

use crate::resource::{Route, Upstream};
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The configuration formats `gatehouse import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dialect {
    /// Spring Cloud Gateway's `spring.cloud.gateway.routes` (an application.yml).
    #[value(name = "spring-cloud-gateway")]
    SpringCloudGateway,
    /// go-kratos gateway's `gateway.config.v1.Gateway` (its YAML config).
    #[value(name = "kratos-gateway")]
    KratosGateway,
}

/// The largest input file read: configurations are kilobytes; anything near this is not one.
pub const MAX_INPUT: u64 = 16 * 1024 * 1024;

/// A place in an input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    pub file: Arc<str>,
    /// The file's position on the command line, so reports list files in the order given.
    pub index: usize,
    pub line: usize,
}

impl At {
    /// The same file, another line.
    pub fn line(&self, line: usize) -> At {
        At {
            file: self.file.clone(),
            index: self.index,
            line,
        }
    }
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// What a report is about: one route, or every route (a global filter or middleware).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The route as the source names it (a Spring route id; for a kratos endpoint, the id
    /// the import gave its route).
    Route(String),
    Every,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Route(id) => write!(f, "route {id}"),
            Scope::Every => f.write_str("every route"),
        }
    }
}

/// Something of the input the translation left out (or, `partial`, kept only in part).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub at: At,
    pub scope: Scope,
    /// What was left out: `predicate Header`, `filter RewritePath`, `middleware logging`.
    pub item: String,
    pub why: String,
    /// Translated, but not exactly: `why` says what differs.
    pub partial: bool,
    /// Made while applying a global filter or middleware to one route; such reports are
    /// folded into one `every route` line when they hold for every route.
    pub global: bool,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = if self.partial {
            "not translated exactly"
        } else {
            "not translated"
        };
        let line = format!(
            "{}: {}: {} {how}: {}",
            self.at, self.scope, self.item, self.why
        );
        f.write_str(&printable(&line, usize::MAX))
    }
}

/// `text` fit for one line of a comment or a report: control characters (line breaks
/// included) escaped as `\n`, `\u{1b}`…, and cut to `max` characters (an ellipsis marking
/// the cut). Input never reaches a written file or a report line raw.
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n >= max {
            out.push('…');
            break;
        }
        if control(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `text` holds a control character or a Unicode line or paragraph separator.
pub fn has_control(text: &str) -> bool {
    text.chars().any(control)
}

fn control(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Why an import stopped without writing anything.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{file}: cannot read it: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: larger than {MAX_INPUT} bytes; not a gateway configuration")]
    TooLarge { file: String },
    #[error("{file}:{line}: not valid YAML: {message}")]
    Yaml {
        file: String,
        line: usize,
        message: String,
    },
    /// The file is YAML but not the configuration the dialect reads.
    #[error("{at}: {message}")]
    Invalid { at: At, message: String },
    /// The file holds no route at all.
    #[error("{file}: {message}")]
    NoRoutes { file: String, message: String },
    /// The output folder is there and is not an empty folder.
    #[error("{path}: {message}; nothing is written into it")]
    Output { path: String, message: String },
    #[error("nothing to write: no route could be translated")]
    NothingTranslated,
    #[error("{path}: cannot write it: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A resource the import built did not take its own shape; a defect of the import.
    #[error("the import built a resource it cannot write: {0}")]
    Internal(String),
}

/// A route made by a translator, with where it came from and its place in the source's
/// order of evaluation.
#[derive(Debug, Clone)]
pub struct RouteOut {
    pub route: Route,
    pub at: At,
    /// How reports name it.
    pub scope: Scope,
    /// What the source calls it, for the file's header comment.
    pub label: String,
    /// The source's precedence: lower first (Spring's `order`; 0 for kratos).
    pub order: i64,
    /// Then the position in the source: earlier first.
    pub seq: usize,
}

/// An upstream made by a translator.
#[derive(Debug, Clone)]
pub struct UpstreamOut {
    pub upstream: Upstream,
    pub at: At,
    pub label: String,
    /// What makes two references the same upstream (`lb:users:http`).
    pub key: String,
    /// The route whose breaker settings it took, if any.
    pub breaker_from: Option<String>,
}

/// Everything translated so far: resources, and what could not be translated.
#[derive(Debug, Default)]
pub struct Translation {
    pub routes: Vec<RouteOut>,
    pub upstreams: Vec<UpstreamOut>,
    pub reports: Vec<Report>,
    route_ids: HashSet<String>,
    upstream_ids: HashSet<String>,
}

impl Translation {
    /// Lists an item that could not be translated.
    pub fn missed(
        &mut self,
        at: At,
        scope: &Scope,
        item: impl Into<String>,
        why: impl Into<String>,
    ) {
        self.report(at, scope, item.into(), why.into(), false);
    }

    /// Lists an item translated only in part.
    pub fn approximated(
        &mut self,
        at: At,
        scope: &Scope,
        item: impl Into<String>,
        why: impl Into<String>,
    ) {
        self.report(at, scope, item.into(), why.into(), true);
    }

    fn report(&mut self, at: At, scope: &Scope, item: String, why: String, partial: bool) {
        self.reports.push(Report {
            at,
            scope: scope.clone(),
            item,
            why,
            partial,
            global: false,
        });
    }

    /// A route id not used yet, as close to `wanted` as gatehouse's id alphabet allows.
    pub fn route_id(&mut self, wanted: &str) -> String {
        unique(&mut self.route_ids, wanted)
    }

    /// The id of the upstream `key` names, made by `make` (given a fresh id) the first time.
    pub fn upstream(
        &mut self,
        key: &str,
        wanted: &str,
        at: At,
        label: String,
        make: impl FnOnce(String) -> Result<Upstream, ImportError>,
    ) -> Result<String, ImportError> {
        if let Some(u) = self.upstreams.iter().find(|u| u.key == key) {
            return Ok(u.upstream.id.clone());
        }
        let id = unique(&mut self.upstream_ids, wanted);
        let upstream = make(id.clone())?;
        self.upstreams.push(UpstreamOut {
            upstream,
            at,
            label,
            key: key.to_string(),
            breaker_from: None,
        });
        Ok(id)
    }

    pub fn upstream_mut(&mut self, id: &str) -> Option<&mut UpstreamOut> {
        self.upstreams.iter_mut().find(|u| u.upstream.id == id)
    }
}

/// Keeps `[A-Za-z0-9._-]` (the resource id alphabet), other characters becoming `-`, and
/// appends `-2`, `-3`… until the id is free.
fn unique(used: &mut HashSet<String>, wanted: &str) -> String {
    let mut base: String = wanted
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    while base.contains("--") {
        base = base.replace("--", "-");
    }
    let mut base = base.trim_matches('-').to_string();
    base.truncate(100);
    if base.is_empty() {
        base = "route".into();
    }
    let mut id = base.clone();
    let mut n = 2;
    while used.contains(&id) {
        id = format!("{base}-{n}");
        n += 1;
    }
    used.insert(id.clone());
    id
}

/// Deserializes a resource part from its written form: the import builds resources the way
/// a file does, so every default is the one a hand-written file gets.
pub(crate) fn typed<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, ImportError> {
    serde_json::from_value(value).map_err(|e| ImportError::Internal(e.to_string()))
}

/// A route with only its id and a path; the translators fill in the rest.
pub(crate) fn new_route(id: &str) -> Result<Route, ImportError> {
    typed(serde_json::json!({ "id": id, "match": { "paths": ["/**"] } }))
}

/// An upstream with only its id; the translators give it nodes or discovery.
pub(crate) fn new_upstream(id: &str) -> Result<Upstream, ImportError> {
    typed(serde_json::json!({ "id": id }))
}

/// What an import wrote.
#[derive(Debug)]
pub struct Outcome {
    pub routes: usize,
    pub upstreams: usize,
    pub files: Vec<PathBuf>,
    /// Everything not translated, in file and line order.
    pub reports: Vec<Report>,
}

/// One input file, read and parsed.
pub struct Input {
    pub at: At,
    pub docs: Vec<yaml::Node>,
}

/// Reads every file, translates them together (routes of several files share upstreams and
/// one order of precedence), then writes the resources under `out` — only when every file
/// parsed and at least one route could be translated.
pub fn run(dialect: Dialect, files: &[PathBuf], out: &Path) -> Result<Outcome, ImportError> {
    output::check_target(out)?;
    let mut inputs = Vec::with_capacity(files.len());
    for (index, path) in files.iter().enumerate() {
        inputs.push(read(path, index)?);
    }
    let mut translation = Translation::default();
    match dialect {
        Dialect::SpringCloudGateway => spring::translate(&inputs, &mut translation)?,
        Dialect::KratosGateway => kratos::translate(&inputs, &mut translation)?,
    }
    output::finish(translation, out)
}

fn read(path: &Path, index: usize) -> Result<Input, ImportError> {
    let file = path.display().to_string();
    let read_err = |source| ImportError::Read {
        file: file.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_file() {
        return Err(ImportError::Read {
            file,
            source: std::io::Error::other("not a regular file"),
        });
    }
    if meta.len() > MAX_INPUT {
        return Err(ImportError::TooLarge { file });
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    let text = String::from_utf8(bytes).map_err(|_| ImportError::Yaml {
        file: file.clone(),
        line: 1,
        message: "not UTF-8 text".into(),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let docs = yaml::parse(text).map_err(|e| ImportError::Yaml {
        file: file.clone(),
        line: e.line,
        message: e.message,
    })?;
    Ok(Input {
        at: At {
            file: Arc::from(file.as_str()),
            index,
            line: 1,
        },
        docs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_to_the_alphabet_and_stay_unique() {
        let mut used = HashSet::new();
        assert_eq!(unique(&mut used, "users"), "users");
        assert_eq!(unique(&mut used, "users"), "users-2");
        assert_eq!(unique(&mut used, "a b/c"), "a-b-c");
        assert_eq!(unique(&mut used, "/"), "route");
        assert_eq!(unique(&mut used, "127.0.0.1:80"), "127.0.0.1-80");
    }

    #[test]
    fn reports_read_as_one_line() {
        let at = At {
            file: Arc::from("gw.yaml"),
            index: 0,
            line: 7,
        };
        let r = Report {
            at,
            scope: Scope::Route("users".into()),
            item: "filter Retry".into(),
            why: "reason".into(),
            partial: false,
            global: false,
        };
        assert_eq!(
            r.to_string(),
            "gw.yaml:7: route users: filter Retry not translated: reason"
        );
    }
}
