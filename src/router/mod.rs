//! Finds the route for a request: host, then path, then method, header and query predicates.
//!
//! Hosts index into per-host path trees (exact names in a hash map, `*.domain` by suffix),
//! and each path tree is a segment trie, so a lookup costs the depth of the path, not the
//! number of routes. The candidates a lookup collects are few; they are ranked by priority,
//! then path specificity, then host specificity, then declaration order, and the first whose
//! predicates hold wins.

mod pattern;

pub use gatehouse_plugins::matcher::ValueMatcher;
pub use pattern::{normalize_host, HostPattern, PathPattern, Segment};

use http::{HeaderMap, HeaderName, Method};
use smallvec::SmallVec;
use std::borrow::Cow;
use std::sync::Arc;

/// Route tables are rebuilt on every change and read on every request; their keys are
/// config-controlled, so a fast non-cryptographic hash is right here.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A request's query, decoded once per lookup and only if some candidate asks about it.
pub type QueryPairs<'r> = SmallVec<[(Cow<'r, str>, Cow<'r, str>); 8]>;

/// What a route asks of a request beyond host and path.
#[derive(Debug, Clone, Default)]
pub struct Predicates {
    /// Bit set over [`METHODS`]; 0 accepts every method.
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
#[derive(Clone, Copy)]
pub struct RouteSpec<'a> {
    pub priority: i32,
    pub paths: &'a [String],
    pub hosts: &'a [String],
    pub methods: &'a [String],
    pub headers: &'a [(&'a str, &'a str)],
    pub query: &'a [(&'a str, &'a str)],
    /// `match.case_insensitive`: the path patterns match any case.
    pub case_insensitive: bool,
}

/// A route's match spec, compiled once when the route changes (patterns parsed, regexes
/// built), so rebuilding the router after a change only re-links what is already compiled.
#[derive(Debug, Clone)]
pub struct RouteMatcher {
    priority: i32,
    case_insensitive: bool,
    paths: Vec<PathPattern>,
    hosts: Vec<HostPattern>,
    predicates: Arc<Predicates>,
}

/// The standard methods a route may name (a route's methods are a bit set over these).
pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];

impl RouteMatcher {
    pub fn compile(spec: RouteSpec<'_>) -> Result<RouteMatcher, String> {
        let mut predicates = Predicates::compile(spec.headers, spec.query)?;
        for method in spec.methods {
            let upper = method.to_ascii_uppercase();
            let bit = METHODS
                .iter()
                .position(|m| *m == upper)
                .ok_or_else(|| format!("unknown method `{method}`"))?;
            predicates.methods |= 1 << bit;
        }
        Ok(RouteMatcher {
            priority: spec.priority,
            case_insensitive: spec.case_insensitive,
            paths: spec
                .paths
                .iter()
                .map(|p| match spec.case_insensitive {
                    // Folded once here; requests are folded only when such routes exist.
                    true => PathPattern::parse(&p.to_ascii_lowercase()),
                    false => PathPattern::parse(p),
                })
                .collect::<Result<_, _>>()?,
            hosts: spec
                .hosts
                .iter()
                .map(|h| HostPattern::parse(h))
                .collect::<Result<_, _>>()?,
            predicates: Arc::new(predicates),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    priority: i32,
    path: (u16, bool, u16),
    host: u16,
}

/// One route as the router holds it.
#[derive(Debug)]
struct Entry<T> {
    /// Breaks the last tie (lexical order), so a lookup never depends on load order.
    id: Arc<str>,
    predicates: Arc<Predicates>,
    value: T,
}

#[derive(Debug)]
struct Candidate<T> {
    rank: Rank,
    entry: Arc<Entry<T>>,
}

impl<T> Clone for Candidate<T> {
    fn clone(&self) -> Self {
        Candidate {
            rank: self.rank,
            entry: self.entry.clone(),
        }
    }
}

/// A node of a path-segment trie. Children are shared between router versions: a change
/// copies only the nodes on the paths it touches (copy-on-write), so a new router costs
/// what changed, not the number of routes.
#[derive(Debug)]
struct TrieNode<T> {
    literal: HashMap<Arc<str>, Arc<TrieNode<T>>>,
    param: Option<Arc<TrieNode<T>>>,
    /// Routes whose pattern ends exactly here.
    exact: Vec<Candidate<T>>,
    /// Routes whose `/**` pattern covers this node and everything below.
    subtree: Vec<Candidate<T>>,
}

impl<T> Default for TrieNode<T> {
    fn default() -> Self {
        TrieNode {
            literal: HashMap::default(),
            param: None,
            exact: Vec::new(),
            subtree: Vec::new(),
        }
    }
}

impl<T> Clone for TrieNode<T> {
    fn clone(&self) -> Self {
        TrieNode {
            literal: self.literal.clone(),
            param: self.param.clone(),
            exact: self.exact.clone(),
            subtree: self.subtree.clone(),
        }
    }
}

impl<T> TrieNode<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.param.is_none()
            && self.exact.is_empty()
            && self.subtree.is_empty()
    }

    fn insert(
        node: &mut Arc<TrieNode<T>>,
        segs: &[Segment],
        subtree: bool,
        candidate: Candidate<T>,
    ) {
        let n = Arc::make_mut(node);
        match segs.split_first() {
            None if subtree => n.subtree.push(candidate),
            None => n.exact.push(candidate),
            Some((Segment::Literal(s), rest)) => {
                // Look up before inserting: most segments already exist, and a new key
                // costs an allocation.
                if !n.literal.contains_key(s.as_str()) {
                    n.literal.insert(s.as_str().into(), Arc::default());
                }
                let child = n.literal.get_mut(s.as_str()).expect("inserted above");
                TrieNode::insert(child, rest, subtree, candidate);
            }
            Some((Segment::Param, rest)) => {
                let child = n.param.get_or_insert_with(Arc::default);
                TrieNode::insert(child, rest, subtree, candidate);
            }
        }
    }

    /// Removes the candidates of route `id` under this pattern; true when the node is left
    /// empty (and can be dropped by its parent).
    fn remove(node: &mut Arc<TrieNode<T>>, segs: &[Segment], subtree: bool, id: &str) -> bool {
        let n = Arc::make_mut(node);
        match segs.split_first() {
            None => {
                let list = if subtree {
                    &mut n.subtree
                } else {
                    &mut n.exact
                };
                list.retain(|c| &*c.entry.id != id);
            }
            Some((Segment::Literal(s), rest)) => {
                if let Some(child) = n.literal.get_mut(s.as_str()) {
                    if TrieNode::remove(child, rest, subtree, id) {
                        n.literal.remove(s.as_str());
                    }
                }
            }
            Some((Segment::Param, rest)) => {
                if let Some(child) = &mut n.param {
                    if TrieNode::remove(child, rest, subtree, id) {
                        n.param = None;
                    }
                }
            }
        }
        n.is_empty()
    }

    fn collect<'n>(&'n self, segs: &[&str], out: &mut SmallVec<[&'n Candidate<T>; 8]>) {
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

/// Path tries by host: routes bound to no host, to exact hosts, to `*.domain` suffixes.
struct Trees<T> {
    any_host: Arc<TrieNode<T>>,
    exact_hosts: HashMap<Arc<str>, Arc<TrieNode<T>>>,
    wildcard_hosts: HashMap<Arc<str>, Arc<TrieNode<T>>>,
}

impl<T> Default for Trees<T> {
    fn default() -> Self {
        Trees {
            any_host: Arc::default(),
            exact_hosts: HashMap::default(),
            wildcard_hosts: HashMap::default(),
        }
    }
}

impl<T> Clone for Trees<T> {
    fn clone(&self) -> Self {
        Trees {
            any_host: self.any_host.clone(),
            exact_hosts: self.exact_hosts.clone(),
            wildcard_hosts: self.wildcard_hosts.clone(),
        }
    }
}

impl<T> Trees<T> {
    fn is_empty(&self) -> bool {
        self.any_host.is_empty() && self.exact_hosts.is_empty() && self.wildcard_hosts.is_empty()
    }

    fn insert(&mut self, matcher: &RouteMatcher, entry: &Arc<Entry<T>>) {
        for path in &matcher.paths {
            let rank = |host: u16| Rank {
                priority: matcher.priority,
                path: path.specificity(),
                host,
            };
            if matcher.hosts.is_empty() {
                let candidate = Candidate {
                    rank: rank(0),
                    entry: entry.clone(),
                };
                TrieNode::insert(&mut self.any_host, &path.segments, path.subtree, candidate);
            }
            for host in &matcher.hosts {
                let candidate = Candidate {
                    rank: rank(host.specificity()),
                    entry: entry.clone(),
                };
                let (map, key) = match host {
                    HostPattern::Exact(h) => (&mut self.exact_hosts, h),
                    HostPattern::Wildcard(s) => (&mut self.wildcard_hosts, s),
                };
                if !map.contains_key(key.as_str()) {
                    map.insert(key.as_str().into(), Arc::default());
                }
                let tree = map.get_mut(key.as_str()).expect("inserted above");
                TrieNode::insert(tree, &path.segments, path.subtree, candidate);
            }
        }
    }

    fn remove(&mut self, id: &str, matcher: &RouteMatcher) {
        for path in &matcher.paths {
            if matcher.hosts.is_empty() {
                TrieNode::remove(&mut self.any_host, &path.segments, path.subtree, id);
            }
            for host in &matcher.hosts {
                let (map, key) = match host {
                    HostPattern::Exact(h) => (&mut self.exact_hosts, h),
                    HostPattern::Wildcard(s) => (&mut self.wildcard_hosts, s),
                };
                if let Some(tree) = map.get_mut(key.as_str()) {
                    if TrieNode::remove(tree, &path.segments, path.subtree, id) {
                        map.remove(key.as_str());
                    }
                }
            }
        }
    }

    fn collect<'n>(
        &'n self,
        host: Option<&str>,
        segs: &[&str],
        found: &mut SmallVec<[&'n Candidate<T>; 8]>,
    ) {
        if let Some(host) = host {
            if let Some(tree) = self.exact_hosts.get(host) {
                tree.collect(segs, found);
            }
            if !self.wildcard_hosts.is_empty() {
                for (i, _) in host.match_indices('.') {
                    if let Some(tree) = self.wildcard_hosts.get(&host[i..]) {
                        tree.collect(segs, found);
                    }
                }
            }
        }
        self.any_host.collect(segs, found);
    }
}

/// Splits a path into the segments the tries are keyed by.
fn segments(path: &str) -> SmallVec<[&str; 16]> {
    let path = path.strip_prefix('/').unwrap_or(path);
    if path.is_empty() {
        SmallVec::new()
    } else {
        path.split('/').collect()
    }
}

/// An immutable-once-published router over values of type `T` (the gateway stores compiled
/// routes). Cloning it is cheap; changing the clone leaves the original untouched.
pub struct Router<T> {
    /// Routes whose patterns match case-sensitively (SPEC §8: like nginx and Envoy).
    exact: Trees<T>,
    /// Routes with `match.case_insensitive`, keyed by lower-cased literals.
    folded: Trees<T>,
    len: usize,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Router {
            exact: Trees::default(),
            folded: Trees::default(),
            len: 0,
        }
    }
}

impl<T> Clone for Router<T> {
    fn clone(&self) -> Self {
        Router {
            exact: self.exact.clone(),
            folded: self.folded.clone(),
            len: self.len,
        }
    }
}

impl<T> Router<T> {
    /// Adds route `id` under its compiled matcher.
    pub fn insert(&mut self, id: Arc<str>, matcher: &RouteMatcher, value: T) {
        let entry = Arc::new(Entry {
            id,
            predicates: matcher.predicates.clone(),
            value,
        });
        self.trees(matcher).insert(matcher, &entry);
        self.len += 1;
    }

    /// Removes route `id`, which was inserted under `matcher`.
    pub fn remove(&mut self, id: &str, matcher: &RouteMatcher) {
        self.trees(matcher).remove(id, matcher);
        self.len = self.len.saturating_sub(1);
    }

    fn trees(&mut self, matcher: &RouteMatcher) -> &mut Trees<T> {
        match matcher.case_insensitive {
            true => &mut self.folded,
            false => &mut self.exact,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether any route is bound to a host; when none is, lookups need no host.
    pub fn uses_hosts(&self) -> bool {
        [&self.exact, &self.folded]
            .iter()
            .any(|t| !t.exact_hosts.is_empty() || !t.wildcard_hosts.is_empty())
    }

    /// The best route for the request, if any.
    pub fn find(&self, req: &RouteRequest<'_>) -> Option<&T> {
        let mut found: SmallVec<[&Candidate<T>; 8]> = SmallVec::new();
        self.exact
            .collect(req.host, &segments(req.path), &mut found);
        if !self.folded.is_empty() {
            let lower = req.path.to_ascii_lowercase();
            self.folded.collect(req.host, &segments(&lower), &mut found);
        }

        if found.len() > 1 {
            found.sort_unstable_by(|a, b| {
                b.rank
                    .cmp(&a.rank)
                    .then_with(|| a.entry.id.cmp(&b.entry.id))
            });
        }
        let mut query: Option<QueryPairs<'_>> = None;
        found.into_iter().find_map(|c| {
            c.entry
                .predicates
                .hold(req, &mut query)
                .then_some(&c.entry.value)
        })
    }
}

impl Predicates {
    /// Header and query conditions in the value syntax of `match` (`v`, `a|b`, `~regex`),
    /// compiled once; route matching and canary rules share them.
    pub fn compile(headers: &[(&str, &str)], query: &[(&str, &str)]) -> Result<Predicates, String> {
        let mut predicates = Predicates::default();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
            predicates.headers.push((name, ValueMatcher::parse(value)?));
        }
        for (name, value) in query {
            predicates
                .query
                .push(((*name).into(), ValueMatcher::parse(value)?));
        }
        Ok(predicates)
    }

    /// Whether a request (method, headers, raw query) meets every condition. `query` caches
    /// the decoded query between calls on the same request.
    pub fn hold<'r>(&self, req: &RouteRequest<'r>, query: &mut Option<QueryPairs<'r>>) -> bool {
        if self.methods != 0 {
            let bit = METHODS.iter().position(|m| *m == req.method.as_str());
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
