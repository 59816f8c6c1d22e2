//! Finds the route for a request: host, then path, then method, header and query predicates.
//!
//! Hosts index into per-host path trees (exact names in a hash map, `*.domain` by suffix),
//! and each path tree is a segment trie, so a lookup costs the depth of the path, not the
//! number of routes. The candidates a lookup collects are few; they are ranked by priority,
//! then path specificity, then host specificity, then declaration order, and the first whose
//! predicates hold wins.

mod pattern;
mod value;

pub use pattern::{normalize_host, HostPattern, PathPattern, Segment};
pub use value::ValueMatcher;

use http::{HeaderMap, HeaderName, Method};
use smallvec::SmallVec;
use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::HashMap;

/// A request's query, decoded once per lookup and only if some candidate asks about it.
type QueryPairs<'r> = SmallVec<[(Cow<'r, str>, Cow<'r, str>); 8]>;

/// What a route asks of a request beyond host and path.
#[derive(Debug, Clone, Default)]
pub struct Predicates {
    /// Bit set over [`crate::resource::METHODS`]; 0 accepts every method.
    methods: u16,
    headers: Vec<(HeaderName, ValueMatcher)>,
    query: Vec<(Box<str>, ValueMatcher)>,
}

/// Everything the router needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// The normalized host (see [`normalize_host`]), if the request named one.
    pub host: Option<&'a str>,
    /// The path, without the query.
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
}

/// The match spec of one route, already checked by validation.
pub struct RouteSpec<'a> {
    pub priority: i32,
    pub paths: &'a [String],
    pub hosts: &'a [String],
    pub methods: &'a [String],
    pub headers: Vec<(&'a str, &'a str)>,
    pub query: Vec<(&'a str, &'a str)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    priority: i32,
    path: (u16, bool, u16),
    host: u16,
    /// Earlier routes win the last tie, so a lookup is deterministic.
    order: Reverse<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    entry: u32,
    rank: Rank,
}

#[derive(Debug, Default)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    /// Routes whose pattern ends exactly here.
    exact: Vec<Candidate>,
    /// Routes whose `/**` pattern covers this node and everything below.
    subtree: Vec<Candidate>,
}

impl Node {
    fn insert(&mut self, pattern: &PathPattern, candidate: Candidate) {
        let mut node = self;
        for seg in &pattern.segments {
            node = match seg {
                Segment::Literal(s) => node.literal.entry(s.as_str().into()).or_default(),
                Segment::Param => node.param.get_or_insert_with(Default::default),
            };
        }
        if pattern.subtree {
            node.subtree.push(candidate);
        } else {
            node.exact.push(candidate);
        }
    }

    fn collect<'n>(&'n self, segs: &[&str], out: &mut SmallVec<[&'n Candidate; 8]>) {
        out.extend(self.subtree.iter());
        let Some((first, rest)) = segs.split_first() else {
            out.extend(self.exact.iter());
            return;
        };
        if let Some(child) = self.literal.get(*first) {
            child.collect(rest, out);
        }
        if let Some(child) = &self.param {
            if !first.is_empty() {
                child.collect(rest, out);
            }
        }
    }
}

/// An immutable router over values of type `T` (the gateway stores compiled routes).
pub struct Router<T> {
    entries: Vec<(Predicates, T)>,
    any_host: Node,
    exact_hosts: HashMap<Box<str>, Node>,
    wildcard_hosts: HashMap<Box<str>, Node>,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Router {
            entries: Vec::new(),
            any_host: Node::default(),
            exact_hosts: HashMap::new(),
            wildcard_hosts: HashMap::new(),
        }
    }
}

impl<T> Router<T> {
    /// Adds a route. Patterns and matchers are compiled here; an invalid one (which validation
    /// would have refused) is an error naming it.
    pub fn add(&mut self, spec: RouteSpec<'_>, value: T) -> Result<(), String> {
        let entry = self.entries.len() as u32;
        let mut predicates = Predicates::default();
        for method in spec.methods {
            let upper = method.to_ascii_uppercase();
            let bit = crate::resource::METHODS
                .iter()
                .position(|m| *m == upper)
                .ok_or_else(|| format!("unknown method `{method}`"))?;
            predicates.methods |= 1 << bit;
        }
        for (name, value) in spec.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
            predicates.headers.push((name, ValueMatcher::parse(value)?));
        }
        for (name, value) in spec.query {
            predicates
                .query
                .push((name.into(), ValueMatcher::parse(value)?));
        }

        let paths = spec
            .paths
            .iter()
            .map(|p| PathPattern::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        let hosts = spec
            .hosts
            .iter()
            .map(|h| HostPattern::parse(h))
            .collect::<Result<Vec<_>, _>>()?;
        for path in &paths {
            let rank = |host: u16| Rank {
                priority: spec.priority,
                path: path.specificity(),
                host,
                order: Reverse(entry),
            };
            if hosts.is_empty() {
                self.any_host.insert(
                    path,
                    Candidate {
                        entry,
                        rank: rank(0),
                    },
                );
            }
            for host in &hosts {
                let candidate = Candidate {
                    entry,
                    rank: rank(host.specificity()),
                };
                let tree = match host {
                    HostPattern::Exact(h) => self.exact_hosts.entry(h.as_str().into()),
                    HostPattern::Wildcard(s) => self.wildcard_hosts.entry(s.as_str().into()),
                };
                tree.or_default().insert(path, candidate);
            }
        }
        self.entries.push((predicates, value));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The best route for the request, if any.
    pub fn find(&self, req: &RouteRequest<'_>) -> Option<&T> {
        let path = req.path.strip_prefix('/').unwrap_or(req.path);
        let segs: SmallVec<[&str; 16]> = if path.is_empty() {
            SmallVec::new()
        } else {
            path.split('/').collect()
        };

        let mut found: SmallVec<[&Candidate; 8]> = SmallVec::new();
        if let Some(host) = req.host {
            if let Some(tree) = self.exact_hosts.get(host) {
                tree.collect(&segs, &mut found);
            }
            if !self.wildcard_hosts.is_empty() {
                for (i, _) in host.match_indices('.') {
                    if let Some(tree) = self.wildcard_hosts.get(&host[i..]) {
                        tree.collect(&segs, &mut found);
                    }
                }
            }
        }
        self.any_host.collect(&segs, &mut found);

        if found.len() > 1 {
            found.sort_unstable_by_key(|c| Reverse(c.rank));
        }
        let mut query: Option<QueryPairs<'_>> = None;
        found.into_iter().find_map(|c| {
            let (predicates, value) = &self.entries[c.entry as usize];
            predicates.hold(req, &mut query).then_some(value)
        })
    }
}

impl Predicates {
    fn hold<'r>(&self, req: &RouteRequest<'r>, query: &mut Option<QueryPairs<'r>>) -> bool {
        if self.methods != 0 {
            let bit = crate::resource::METHODS
                .iter()
                .position(|m| *m == req.method.as_str());
            match bit {
                Some(bit) if self.methods & (1 << bit) != 0 => {}
                _ => return false,
            }
        }
        for (name, matcher) in &self.headers {
            let any = req
                .headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| matcher.matches(v)));
            if !any {
                return false;
            }
        }
        if !self.query.is_empty() {
            // Parsed once per lookup, and only when some candidate asks about the query.
            let pairs = query.get_or_insert_with(|| {
                form_urlencoded::parse(req.query.unwrap_or("").as_bytes()).collect()
            });
            for (name, matcher) in &self.query {
                let any = pairs
                    .iter()
                    .any(|(k, v)| k == &**name && matcher.matches(v));
                if !any {
                    return false;
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests;
