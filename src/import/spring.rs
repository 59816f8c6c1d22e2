//! Spring Cloud Gateway routes (`spring.cloud.gateway.routes`, the newer
//! `spring.cloud.gateway.server.webflux.routes`, or a top-level `routes:` list) as gatehouse
//! routes and upstreams.
//!
//! Predicates and filters are read in both of Spring's forms: the shortcut
//! (`Header=X-Platform, mobile|web`) and the expanded one (`name:` with `args:`, positional
//! arguments as `_genkey_0`…). Each is translated when gatehouse can express it exactly;
//! otherwise it is listed with its line. The mapping is documented in
//! docs/configuration.md ("Importing from Spring Cloud Gateway and go-kratos gateway").

use super::headers::HeaderEdits;
use super::patterns::{self, PathRewrite};
use super::yaml::{same_name, Node, Value};
use super::{
    has_control, new_route, new_upstream, printable, typed, At, ImportError, Input, RouteOut,
    Scope, Translation,
};
use crate::resource::{
    CircuitBreaker, Discovery, HeaderRules, NodeSpec, RateLimit, Scheme, Text, Timeouts,
    WeightedUpstream,
};
use crate::router::METHODS;
use std::collections::{BTreeMap, HashMap};

const ROUTE_LISTS: [&[&str]; 4] = [
    &["spring", "cloud", "gateway", "routes"],
    &["spring", "cloud", "gateway", "server", "webflux", "routes"],
    &["spring", "cloud", "gateway", "server", "webmvc", "routes"],
    &["routes"],
];

const DEFAULT_FILTER_LISTS: [&[&str]; 3] = [
    &["spring", "cloud", "gateway", "default-filters"],
    &[
        "spring",
        "cloud",
        "gateway",
        "server",
        "webflux",
        "default-filters",
    ],
    &[
        "spring",
        "cloud",
        "gateway",
        "server",
        "webmvc",
        "default-filters",
    ],
];

/// Translates the routes of every file; all of them form one configuration, as Spring
/// merges its property sources.
pub fn translate(inputs: &[Input], t: &mut Translation) -> Result<(), ImportError> {
    let mut drafts = Vec::new();
    let mut seq = 0usize;
    let mut ids: HashMap<String, At> = HashMap::new();
    for input in inputs {
        let props = Props { docs: &input.docs };
        let routes = route_nodes(input)?;
        let defaults = default_filters(input, &props)?;
        gateway_settings(input, t);
        for node in routes {
            seq += 1;
            if let Some(draft) = read_route(input, &props, node, seq, &defaults, t)? {
                match ids.get(&draft.source_id) {
                    Some(first) => t.approximated(
                        draft.at.clone(),
                        &draft.scope,
                        "route",
                        format!("the route at {first} has the same id; this one is written under another id"),
                    ),
                    None => {
                        ids.insert(draft.source_id.clone(), draft.at.clone());
                    }
                }
                drafts.push(draft);
            }
        }
    }
    assemble(drafts, t)
}

/// Lists each gateway-wide setting under `spring.cloud.gateway` other than the routes and
/// default filters (`discovery.locator.*`, `httpclient.*`, `globalcors.*`…): none is
/// translated, and each changes what every route does.
fn gateway_settings(input: &Input, t: &mut Translation) {
    const GATEWAY: [&str; 3] = ["spring", "cloud", "gateway"];
    let under = |key: &[&str], path: &[&str]| {
        key.len() >= path.len() && key.iter().zip(path).all(|(a, b)| same_name(a, b))
    };
    for doc in &input.docs {
        let mut leaves = Vec::new();
        for (k, v) in doc.entries().unwrap_or_default() {
            if let Some(k) = k.text() {
                flatten(k, v, &mut leaves);
            }
        }
        for (key, node) in leaves {
            let parts: Vec<&str> = key.split('.').collect();
            if parts.len() <= GATEWAY.len()
                || !under(&parts, &GATEWAY)
                || ROUTE_LISTS
                    .iter()
                    .chain(DEFAULT_FILTER_LISTS.iter())
                    .any(|p| under(&parts, p))
            {
                continue;
            }
            t.missed(
                input.at.line(node.line),
                &Scope::Every,
                format!("setting {}", printable(&key, 200)),
                "gatehouse has no gateway-wide setting of this kind in a route or upstream; configure its equivalent, if any, by hand",
            );
        }
    }
}

/// Every route of the file, from each document that has some.
fn route_nodes(input: &Input) -> Result<Vec<&Node>, ImportError> {
    let mut routes = Vec::new();
    for doc in &input.docs {
        for path in ROUTE_LISTS {
            let Some(list) = doc.find(path) else { continue };
            match &list.value {
                Value::List(items) => routes.extend(items.iter()),
                Value::Null => {}
                _ => {
                    return Err(ImportError::Invalid {
                        at: input.at.line(list.line),
                        message: format!(
                            "`{}` must be a list of routes, not {}",
                            path.join("."),
                            list.shape()
                        ),
                    })
                }
            }
            break;
        }
    }
    if routes.is_empty() {
        return Err(ImportError::NoRoutes {
            file: input.at.file.to_string(),
            message: "no Spring Cloud Gateway routes: looked for a list under `spring.cloud.gateway.routes`, `spring.cloud.gateway.server.webflux.routes` and a top-level `routes`".into(),
        });
    }
    Ok(routes)
}

fn default_filters<'a>(input: &'a Input, props: &Props) -> Result<Vec<Item<'a>>, ImportError> {
    let mut items = Vec::new();
    for doc in &input.docs {
        for path in DEFAULT_FILTER_LISTS {
            let Some(list) = doc.find(path) else { continue };
            match &list.value {
                Value::List(nodes) => {
                    for node in nodes {
                        items.push(Item::read(input, props, node, "filter")?);
                    }
                }
                Value::Null => {}
                _ => {
                    return Err(ImportError::Invalid {
                        at: input.at.line(list.line),
                        message: format!("`{}` must be a list of filters", path.join(".")),
                    })
                }
            }
            break;
        }
    }
    Ok(items)
}

/// The file's own properties, for `${key:default}` placeholders. A placeholder the file
/// does not define and that has no default is left as written, as Spring Boot leaves
/// placeholders it cannot resolve.
struct Props<'a> {
    docs: &'a [Node],
}

impl Props<'_> {
    fn resolve(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[start..]);
                return out;
            };
            let inner = &after[..end];
            let (key, default) = match inner.split_once(':') {
                Some((k, d)) => (k, Some(d)),
                None => (inner, None),
            };
            let path: Vec<&str> = key.split('.').collect();
            let found = self
                .docs
                .iter()
                .find_map(|d| d.find(&path).and_then(Node::text));
            match (found, default) {
                (Some(value), _) => out.push_str(value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => out.push_str(&rest[start..start + 3 + end]),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }
}

/// One predicate or filter: its name and arguments, from either form.
struct Item<'a> {
    name: String,
    line: usize,
    /// Arguments by position: the shortcut's, or `_genkey_N`.
    positional: Vec<String>,
    /// Arguments by name, nested keys joined with `.` (`redis-rate-limiter.replenishRate`).
    named: Vec<(String, &'a Node)>,
    /// The single-valued ones of `named`, placeholders resolved.
    values: Vec<(String, String)>,
}

impl<'a> Item<'a> {
    fn read(
        input: &Input,
        props: &Props,
        node: &'a Node,
        what: &str,
    ) -> Result<Item<'a>, ImportError> {
        let invalid = |message: String| ImportError::Invalid {
            at: input.at.line(node.line),
            message,
        };
        match &node.value {
            Value::Text(text) => {
                let (name, args) = match text.split_once('=') {
                    Some((name, args)) => (name.trim(), args),
                    None => (text.trim(), ""),
                };
                let positional = args
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(|a| props.resolve(a))
                    .collect();
                Ok(Item {
                    name: name.to_string(),
                    line: node.line,
                    positional,
                    named: Vec::new(),
                    values: Vec::new(),
                })
            }
            Value::Map(_) => {
                let name = node.get("name").and_then(Node::text).ok_or_else(|| {
                    invalid(format!("a {what} in the expanded form needs a `name`"))
                })?;
                let mut positional: Vec<(usize, String)> = Vec::new();
                let mut named = Vec::new();
                if let Some(args) = node.get("args") {
                    let Some(entries) = args.entries() else {
                        if args.is_null() {
                            return Ok(Item {
                                name: name.to_string(),
                                line: node.line,
                                positional: Vec::new(),
                                named,
                                values: Vec::new(),
                            });
                        }
                        return Err(invalid(format!(
                            "the `args` of {what} `{name}` must be a mapping, not {}",
                            args.shape()
                        )));
                    };
                    for (key, value) in entries {
                        let Some(key) = key.text() else { continue };
                        if let Some(n) = key
                            .strip_prefix("_genkey_")
                            .and_then(|n| n.parse::<usize>().ok())
                        {
                            let text = scalar(value).ok_or_else(|| {
                                invalid(format!(
                                    "`{key}` of {what} `{name}` must be a single value"
                                ))
                            })?;
                            positional.push((n, props.resolve(&text)));
                        } else {
                            flatten(key, value, &mut named);
                        }
                    }
                }
                positional.sort_by_key(|(n, _)| *n);
                let values = named
                    .iter()
                    .filter_map(|(k, v): &(String, &Node)| {
                        scalar(v).map(|s| (k.clone(), props.resolve(&s)))
                    })
                    .collect();
                Ok(Item {
                    name: name.to_string(),
                    line: node.line,
                    positional: positional.into_iter().map(|(_, t)| t).collect(),
                    named,
                    values,
                })
            }
            _ => Err(invalid(format!(
                "a {what} must be `Name=arguments` or a mapping with `name` and `args`, not {}",
                node.shape()
            ))),
        }
    }

    fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// A named argument (its dotted parts compared as Spring's relaxed binding does).
    fn named(&self, key: &str) -> Option<&'a Node> {
        self.named
            .iter()
            .find(|(k, _)| dotted_same(k, key))
            .map(|(_, v)| *v)
    }

    /// A single-valued argument by name, else by position.
    fn arg(&self, key: &str, position: usize) -> Option<String> {
        if let Some((_, v)) = self.values.iter().find(|(k, _)| dotted_same(k, key)) {
            return Some(v.clone());
        }
        self.positional.get(position).cloned()
    }

    /// A list argument by name (a YAML list, or a comma-separated text), else every
    /// positional argument.
    fn list(&self, key: &str) -> Vec<String> {
        match self.named(key).map(|n| &n.value) {
            Some(Value::List(items)) => items.iter().filter_map(scalar).collect(),
            Some(Value::Text(t)) => t
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            _ => self.positional.clone(),
        }
    }
}

/// A scalar argument's text (numbers and booleans as written).
fn scalar(node: &Node) -> Option<String> {
    node.text().map(String::from)
}

fn flatten<'a>(prefix: &str, node: &'a Node, out: &mut Vec<(String, &'a Node)>) {
    match &node.value {
        Value::Map(entries) => {
            for (k, v) in entries {
                if let Some(k) = k.text() {
                    flatten(&format!("{prefix}.{k}"), v, out);
                }
            }
        }
        _ => out.push((prefix.to_string(), node)),
    }
}

fn dotted_same(a: &str, b: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
    a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| same_name(x, y))
}

/// Where a route sends its requests.
struct Target {
    key: String,
    wanted_id: String,
    label: String,
    discovery: Option<String>,
    addr: Option<String>,
    scheme: Scheme,
    websocket: bool,
}

/// Reads a Spring route `uri`: `lb://NAME` (and `lb:ws://NAME`), `http(s)://host[:port]`,
/// `ws(s)://host[:port]`. The path of a URI is ignored, as Spring ignores it.
fn target(uri: &str) -> Result<Target, String> {
    if has_control(uri) {
        return Err(format!(
            "`{}` holds a control character; give the address by hand",
            printable(uri, 200)
        ));
    }
    let (lb, rest) = match uri.strip_prefix("lb:") {
        Some(rest) if rest.starts_with("//") => (true, format!("http:{rest}")),
        Some(rest) => (true, rest.to_string()),
        None => (false, uri.to_string()),
    };
    let (scheme, authority) = rest.split_once("://").ok_or_else(|| {
        format!(
            "`{uri}` is not an address or a service (gatehouse proxies to http, https, ws and wss upstreams and to `lb://` services)"
        )
    })?;
    let scheme = scheme.to_ascii_lowercase();
    let (tls, websocket) = match scheme.as_str() {
        "http" => (false, false),
        "https" => (true, false),
        "ws" => (false, true),
        "wss" => (true, true),
        _ => {
            return Err(format!(
                "`{uri}` is not sent over HTTP (gatehouse proxies to http, https, ws and wss upstreams and to `lb://` services)"
            ))
        }
    };
    let authority = authority.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.is_empty() {
        return Err(format!("`{uri}` names no host"));
    }
    let upstream_scheme = if tls { Scheme::Https } else { Scheme::Http };
    let scheme_name = if tls { "https" } else { "http" };
    if lb {
        let service = authority.split(':').next().unwrap_or(authority);
        return Ok(Target {
            key: format!("lb:{service}:{scheme_name}"),
            wanted_id: if tls {
                format!("{service}-https")
            } else {
                service.to_string()
            },
            label: format!("the service `{service}` of `{uri}`"),
            discovery: Some(service.to_string()),
            addr: None,
            scheme: upstream_scheme,
            websocket,
        });
    }
    let has_port = authority.rsplit_once(':').is_some_and(|(h, p)| {
        !h.is_empty() && !h.ends_with(':') && p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty()
    }) && !authority.ends_with(']');
    let addr = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    crate::resource::split_host_port(&addr).map_err(|e| format!("`{uri}`: {e}"))?;
    Ok(Target {
        key: format!("{scheme_name}://{addr}"),
        wanted_id: if tls {
            format!("{addr}-https")
        } else {
            addr.clone()
        },
        label: format!("`{uri}`"),
        discovery: None,
        addr: Some(addr),
        scheme: upstream_scheme,
        websocket,
    })
}

/// A route as read, before weight groups are merged.
struct Draft {
    source_id: String,
    scope: Scope,
    at: At,
    order: i64,
    seq: usize,
    target: Target,
    paths: Vec<String>,
    hosts: Vec<String>,
    methods: Vec<String>,
    headers: BTreeMap<String, Text>,
    query: BTreeMap<String, Text>,
    weight: Option<(String, u32, usize)>,
    rewrite: Option<crate::resource::Rewrite>,
    request_headers: Option<HeaderRules>,
    response_headers: Option<HeaderRules>,
    rate_limit: Option<RateLimit>,
    breaker: Option<(CircuitBreaker, usize)>,
    timeouts: Option<Timeouts>,
}

fn read_route(
    input: &Input,
    props: &Props,
    node: &Node,
    seq: usize,
    defaults: &[Item],
    t: &mut Translation,
) -> Result<Option<Draft>, ImportError> {
    let at = input.at.line(node.line);
    let invalid = |line: usize, message: String| ImportError::Invalid {
        at: input.at.line(line),
        message,
    };
    if node.entries().is_none() {
        return Err(invalid(
            node.line,
            format!("a route must be a mapping, not {}", node.shape()),
        ));
    }
    let source_id = match node.get("id") {
        Some(id) => {
            scalar(id).ok_or_else(|| invalid(id.line, "a route's `id` must be text".into()))?
        }
        None => format!("route-{seq}"),
    };
    if has_control(&source_id) || source_id.contains('/') {
        let id = printable(&source_id, 100);
        t.missed(
            at,
            &Scope::Route(id.clone()),
            "route",
            format!("its id `{id}` holds a control character or `/`; give the route another id"),
        );
        return Ok(None);
    }
    let scope = Scope::Route(source_id.clone());
    let uri = match node.get("uri").and_then(scalar) {
        Some(uri) if !uri.trim().is_empty() => props.resolve(uri.trim()),
        _ => {
            return Err(invalid(
                node.line,
                format!(
                "route `{source_id}` has no `uri`: every route must say where it sends requests"
            ),
            ))
        }
    };
    let order = match node.get("order") {
        None => 0,
        Some(o) => o
            .text()
            .and_then(|o| o.trim().parse::<i64>().ok())
            .ok_or_else(|| {
                invalid(
                    o.line,
                    format!("route `{source_id}`: `order` must be a whole number"),
                )
            })?,
    };
    let uri_line = node.get("uri").map_or(node.line, |n| n.line);
    let target = if uri.contains("${") {
        Err(format!(
            "`{uri}` holds a placeholder the file does not define; give the address by hand"
        ))
    } else {
        target(&uri)
    };
    let target = match target {
        Ok(target) => target,
        Err(why) => {
            t.missed(input.at.line(uri_line), &scope, "route", why);
            return Ok(None);
        }
    };

    let mut predicates = Vec::new();
    if let Some(list) = node.get("predicates") {
        let items = list.items().ok_or_else(|| {
            invalid(
                list.line,
                format!("the `predicates` of route `{source_id}` must be a list"),
            )
        })?;
        for p in items {
            predicates.push(Item::read(input, props, p, "predicate")?);
        }
    }
    let mut filters = Vec::new();
    if let Some(list) = node.get("filters") {
        let items = list.items().ok_or_else(|| {
            invalid(
                list.line,
                format!("the `filters` of route `{source_id}` must be a list"),
            )
        })?;
        for f in items {
            filters.push(Item::read(input, props, f, "filter")?);
        }
    }

    let mut d = Draft {
        source_id,
        scope,
        at,
        order,
        seq,
        target,
        paths: Vec::new(),
        hosts: Vec::new(),
        methods: Vec::new(),
        headers: BTreeMap::new(),
        query: BTreeMap::new(),
        weight: None,
        rewrite: None,
        request_headers: None,
        response_headers: None,
        rate_limit: None,
        breaker: None,
        timeouts: None,
    };
    let mut path_vars = Vec::new();
    let mut seen = Seen::default();
    for p in &predicates {
        let at = input.at.line(p.line);
        let item = format!("predicate {}", p.name);
        if let Err(why) = predicate(p, &mut d, &mut seen, &mut path_vars) {
            match why {
                Miss::Dropped(why) => t.missed(at, &d.scope, item, why),
                Miss::Partly(why) => t.approximated(at, &d.scope, item, why),
                Miss::Route(why) => {
                    t.missed(at, &d.scope, "route", why);
                    return Ok(None);
                }
            }
        }
    }
    if !seen.path {
        d.paths.push("/**".into());
    }

    let mut rewrite = PathRewrite::new(&d.paths);
    let mut request = HeaderEdits::default();
    let mut response = HeaderEdits::default();
    let mut ctx = FilterCtx {
        input,
        path_vars: &path_vars,
        rewrite: &mut rewrite,
        request: &mut request,
        response: &mut response,
        draft: &mut d,
    };
    // Spring numbers default filters and route filters 1, 2, 3… each, then sorts them all
    // by that number, a default filter first among equals: d1, r1, d2, r2…
    let mut ordered: Vec<(usize, bool, &Item)> = defaults
        .iter()
        .enumerate()
        .map(|(i, f)| (i, true, f))
        .chain(filters.iter().enumerate().map(|(i, f)| (i, false, f)))
        .collect();
    ordered.sort_by_key(|(i, global, _)| (*i, !*global));
    for (_, global, f) in ordered {
        let at = input.at.line(f.line);
        let item = format!("filter {}", f.name);
        let outcome = filter(f, &mut ctx);
        for (partial, why) in outcome {
            let scope = ctx.draft.scope.clone();
            if partial {
                t.approximated(at.clone(), &scope, item.clone(), why);
            } else {
                t.missed(at.clone(), &scope, item.clone(), why);
            }
            if global {
                if let Some(last) = t.reports.last_mut() {
                    last.global = true;
                }
            }
        }
    }
    d.rewrite = rewrite.finish();
    d.request_headers = request.finish();
    d.response_headers = response.finish();
    if let Some(meta) = node.get("metadata") {
        d.timeouts = timeouts(meta, &input.at, &d.scope, t)?;
    }
    Ok(Some(d))
}

/// Which predicates a route had already: Spring requires all of a route's predicates, so
/// a second one of a kind must hold as well as the first.
#[derive(Default)]
struct Seen {
    path: bool,
    host: bool,
    method: bool,
}

enum Miss {
    /// Left out; the route takes more requests than in the source.
    Dropped(String),
    /// Kept in part.
    Partly(String),
    /// The route itself cannot be translated.
    Route(String),
}

fn predicate(
    p: &Item,
    d: &mut Draft,
    seen: &mut Seen,
    path_vars: &mut Vec<String>,
) -> Result<(), Miss> {
    if p.is("Path") {
        if seen.path {
            return Err(Miss::Dropped("a second `Path` must hold as well as the first; a gatehouse route's paths are alternatives".into()));
        }
        seen.path = true;
        let mut patterns = p.list("patterns");
        let mut trailing = true;
        if let Some(flag) = p.arg("matchTrailingSlash", usize::MAX) {
            trailing = flag.eq_ignore_ascii_case("true");
        } else if p.named("patterns").is_none() {
            if let Some(last) = patterns.last() {
                if last.eq_ignore_ascii_case("true") || last.eq_ignore_ascii_case("false") {
                    trailing = last.eq_ignore_ascii_case("true");
                    patterns.pop();
                }
            }
        }
        if patterns.is_empty() {
            return Err(Miss::Route("its `Path` predicate has no pattern".into()));
        }
        let mut misses = Vec::new();
        for pattern in &patterns {
            match patterns::spring_path(pattern) {
                Ok(gh) => {
                    for seg in pattern.split('/') {
                        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}'))
                        {
                            path_vars.push(name.trim_start_matches('*').to_string());
                        }
                    }
                    if trailing {
                        if let Some(slashed) = patterns::with_trailing_slash(&gh) {
                            d.paths.push(gh);
                            d.paths.push(slashed);
                            continue;
                        }
                    }
                    d.paths.push(gh);
                }
                Err(why) => misses.push(why),
            }
        }
        if d.paths.is_empty() {
            return Err(Miss::Route(format!(
                "none of its paths has a gatehouse form: {}",
                misses.join("; ")
            )));
        }
        if !misses.is_empty() {
            return Err(Miss::Partly(format!(
                "left out: {} (the route takes the other patterns)",
                misses.join("; ")
            )));
        }
        return Ok(());
    }
    if p.is("Host") {
        if seen.host {
            return Err(Miss::Dropped("a second `Host` must hold as well as the first; a gatehouse route's hosts are alternatives".into()));
        }
        seen.host = true;
        let mut notes = Vec::new();
        let mut misses = Vec::new();
        for pattern in p.list("patterns") {
            match patterns::spring_host(&pattern) {
                Ok(h) => {
                    for host in h.hosts {
                        if !d.hosts.contains(&host) {
                            d.hosts.push(host);
                        }
                    }
                    notes.extend(h.caveat);
                }
                Err(why) => misses.push(why),
            }
        }
        if d.hosts.is_empty() {
            return Err(Miss::Dropped(format!(
                "{}; the route takes every host",
                if misses.is_empty() {
                    "it names no host".to_string()
                } else {
                    misses.join("; ")
                }
            )));
        }
        notes.extend(misses.into_iter().map(|m| format!("left out: {m}")));
        return if notes.is_empty() {
            Ok(())
        } else {
            Err(Miss::Partly(notes.join("; ")))
        };
    }
    if p.is("Method") {
        let mut methods: Vec<String> = Vec::new();
        let mut unknown = Vec::new();
        for m in p.list("methods") {
            let m = m.to_ascii_uppercase();
            if METHODS.contains(&m.as_str()) {
                if !methods.contains(&m) {
                    methods.push(m);
                }
            } else {
                unknown.push(m);
            }
        }
        if seen.method {
            d.methods.retain(|m| methods.contains(m));
            if d.methods.is_empty() {
                return Err(Miss::Route(
                    "its `Method` predicates share no method: it takes no request".into(),
                ));
            }
        } else {
            d.methods = methods;
        }
        seen.method = true;
        if d.methods.is_empty() {
            return Err(Miss::Route(format!(
                "its `Method` predicate names no method gatehouse routes ({})",
                unknown.join(", ")
            )));
        }
        if !unknown.is_empty() {
            return Err(Miss::Partly(format!(
                "left out {}: not one of {}",
                unknown.join(", "),
                METHODS.join(", ")
            )));
        }
        return Ok(());
    }
    if p.is("Header") || p.is("Query") {
        let header = p.is("Header");
        let (name_key, kind) = if header {
            ("header", "header")
        } else {
            ("param", "parameter")
        };
        let Some(name) = p.arg(name_key, 0).filter(|n| !n.is_empty()) else {
            return Err(Miss::Dropped(format!("it names no {kind}")));
        };
        if header && http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(Miss::Dropped(format!(
                "`{name}` is not a valid header name"
            )));
        }
        let regexp = p.arg("regexp", 1).unwrap_or_default();
        let value = if regexp.is_empty() {
            "~.*".to_string() // present, with any value
        } else {
            patterns::whole_value(&regexp).map_err(Miss::Dropped)?
        };
        let map = if header { &mut d.headers } else { &mut d.query };
        let taken = if header {
            map.keys().any(|k| k.eq_ignore_ascii_case(&name))
        } else {
            map.contains_key(&name)
        };
        if taken {
            return Err(Miss::Dropped(format!(
                "a second condition on the {kind} `{name}`; gatehouse takes one per {kind}"
            )));
        }
        map.insert(name, Text(value));
        return Ok(());
    }
    if p.is("Weight") {
        let group = p.arg("group", 0).filter(|g| !g.is_empty());
        let weight = p
            .arg("weight", 1)
            .and_then(|w| w.trim().parse::<u32>().ok());
        let (Some(group), Some(weight)) = (group, weight) else {
            return Err(Miss::Dropped(
                "it needs a group and a whole, non-negative weight".into(),
            ));
        };
        d.weight = Some((group, weight, p.line));
        return Ok(());
    }
    let hint = match p.name.to_ascii_lowercase().as_str() {
        "cookie" => "gatehouse routes do not match cookies (a route's `canary` rules do)",
        "after" | "before" | "between" => "gatehouse routes do not match on time",
        "remoteaddr" | "xforwardedremoteaddr" => {
            "gatehouse routes do not match client addresses (the `ip_restriction` plugin refuses them)"
        }
        _ => "gatehouse routes match paths, hosts, methods, headers and query parameters",
    };
    Err(Miss::Dropped(format!(
        "{hint}; without it the route takes more requests than in Spring Cloud Gateway"
    )))
}

/// What a filter works on.
struct FilterCtx<'a, 'b> {
    input: &'a Input,
    path_vars: &'a [String],
    rewrite: &'b mut PathRewrite,
    request: &'b mut HeaderEdits,
    response: &'b mut HeaderEdits,
    draft: &'b mut Draft,
}

/// Applies one filter; answers what could not be translated (`true`: kept in part).
fn filter(f: &Item, c: &mut FilterCtx) -> Vec<(bool, String)> {
    let miss = |why: String| vec![(false, why)];
    if f.is("StripPrefix") {
        return match f.arg("parts", 0).map(|p| p.trim().parse::<usize>()) {
            Some(Ok(n)) => {
                c.rewrite.strip(n);
                Vec::new()
            }
            _ => miss("it needs `parts`, a whole number".into()),
        };
    }
    if f.is("RewritePath") {
        let (Some(regex), Some(replacement)) = (f.arg("regexp", 0), f.arg("replacement", 1)) else {
            return miss("it needs a regex and a replacement".into());
        };
        return match c.rewrite.rewrite(&regex, &replacement) {
            Ok(()) => Vec::new(),
            Err(why) => miss(why),
        };
    }
    if f.is("SetPath") {
        let Some(template) = f.arg("template", 0) else {
            return miss("it needs a template".into());
        };
        if let Some(var) = uses_var(&template, c.path_vars) {
            return miss(format!(
                "`{template}` uses the path variable `{{{var}}}`; gatehouse sets one fixed path"
            ));
        }
        return match c.rewrite.set(&template) {
            Ok(()) => Vec::new(),
            Err(why) => miss(why),
        };
    }
    let header_edit = [
        ("AddRequestHeader", true, true),
        ("SetRequestHeader", true, true),
        ("RemoveRequestHeader", true, false),
        ("AddResponseHeader", false, true),
        ("SetResponseHeader", false, true),
        ("RemoveResponseHeader", false, false),
    ];
    if let Some((_, request, set)) = header_edit.iter().find(|(n, _, _)| f.is(n)) {
        let Some(name) = f.arg("name", 0).filter(|n| !n.is_empty()) else {
            return miss("it names no header".into());
        };
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return miss(format!("`{name}` is not a valid header name"));
        }
        let edits = if *request {
            &mut *c.request
        } else {
            &mut *c.response
        };
        if !set {
            edits.remove(&name);
            return Vec::new();
        }
        let value = f.arg("value", 1).unwrap_or_default();
        if let Some(var) = uses_var(&value, c.path_vars) {
            return miss(format!(
                "its value uses the path variable `{{{var}}}`; gatehouse header values take ${{request_id}}, ${{client_ip}}, ${{route_id}} and ${{consumer}}"
            ));
        }
        if let Err(e) = gatehouse_plugins::template::Template::parse(&value) {
            return miss(format!("its value `{value}`: {e}"));
        }
        return match edits.set(&name, &value) {
            Ok(()) => Vec::new(),
            Err(why) => miss(why),
        };
    }
    if f.is("RequestRateLimiter") {
        return rate_limit(f, c);
    }
    if f.is("CircuitBreaker") {
        return circuit_breaker(f, c);
    }
    if f.is("PreserveHostHeader") {
        return Vec::new(); // gatehouse always passes the client's Host on
    }
    let hint = match f.name.to_ascii_lowercase().as_str() {
        "retry" => "gatehouse's route `retries` retries connection failures, and 502/503 answers to idempotent requests; set it by hand if that fits",
        "prefixpath" => "gatehouse's `rewrite` drops leading segments or sets a fixed path; it does not add a prefix",
        "requestsize" => "the `request_size_limit` plugin does this; add it by hand",
        "setrequesthostheader" => "gatehouse passes the client's Host on",
        "redirectto" | "setstatus" => "gatehouse answers by itself with `direct_response`; set it by hand",
        _ => "gatehouse has no translation for this filter",
    };
    miss(hint.into())
}

/// The first `{name}` of `text` that names a path variable.
fn uses_var<'v>(text: &str, vars: &'v [String]) -> Option<&'v str> {
    vars.iter()
        .find(|v| text.contains(&format!("{{{v}}}")))
        .map(String::as_str)
}

/// `RequestRateLimiter` with Spring's Redis limiter: a token bucket refilled by
/// `replenishRate` tokens a second, holding `burstCapacity`, each request taking
/// `requestedTokens`. That admits `replenishRate` requests per `requestedTokens` seconds
/// with a bucket of `burstCapacity / requestedTokens` requests: gatehouse's `rate`, `per`
/// and `burst`.
fn rate_limit(f: &Item, c: &mut FilterCtx) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    if c.draft.rate_limit.is_some() {
        return vec![(
            false,
            "the route has a rate limit already; gatehouse takes one per route".into(),
        )];
    }
    if let Some(limiter) = f.arg("rate-limiter", usize::MAX) {
        return vec![(false, format!("the limiter `{limiter}` is the application's own; gatehouse can translate Spring's Redis limiter only"))];
    }
    let number = |key: &str| f.arg(key, usize::MAX).map(|v| v.trim().parse::<u64>());
    let rate = match number("redis-rate-limiter.replenishRate") {
        Some(Ok(r)) if r > 0 => r,
        _ => {
            return vec![(
                false,
                "it needs `redis-rate-limiter.replenishRate`, a whole number above 0".into(),
            )]
        }
    };
    let tokens = match number("redis-rate-limiter.requestedTokens") {
        None => 1,
        Some(Ok(t)) if t > 0 => t,
        _ => {
            return vec![(
                false,
                "`redis-rate-limiter.requestedTokens` must be a whole number above 0".into(),
            )]
        }
    };
    let capacity = match number("redis-rate-limiter.burstCapacity") {
        None => 1,
        Some(Ok(b)) => b,
        Some(Err(_)) => {
            return vec![(
                false,
                "`redis-rate-limiter.burstCapacity` must be a whole number".into(),
            )]
        }
    };
    let burst = capacity / tokens;
    if burst == 0 {
        return vec![(false, format!("`burstCapacity` ({capacity}) is below `requestedTokens` ({tokens}): Spring Cloud Gateway refuses every request"))];
    }
    let key = match f.arg("key-resolver", usize::MAX) {
        None => {
            out.push((true, "without `key-resolver` Spring Cloud Gateway counts per authenticated principal and refuses requests without one (`deny-empty-key`); translated as `key: consumer`, which counts requests without a caller by client address".into()));
            "consumer"
        }
        Some(resolver) => {
            out.push((true, format!("the key resolver `{resolver}` is the application's code, which the configuration does not show; translated as `key: client_ip`")));
            "client_ip"
        }
    };
    if let Some(status) = f.arg("status-code", usize::MAX) {
        if status != "429" && !status.eq_ignore_ascii_case("TOO_MANY_REQUESTS") {
            out.push((
                true,
                format!("refusals are answered 429 `rate_limited`, not `{status}`"),
            ));
        }
    }
    let (Ok(rate), Ok(burst)) = (u32::try_from(rate), u32::try_from(burst)) else {
        return vec![(false, "its numbers are beyond gatehouse's limits".into())];
    };
    let limit: Result<RateLimit, _> = typed(serde_json::json!({
        "rate": rate, "per": format!("{tokens}s"), "burst": burst, "key": key
    }));
    match limit {
        Ok(limit) => c.draft.rate_limit = Some(limit),
        Err(e) => return vec![(false, e.to_string())],
    }
    out
}

/// `CircuitBreaker` (Spring Cloud CircuitBreaker on Resilience4j): the breaker of the
/// route's upstream, with Resilience4j's defaults (or the file's
/// `resilience4j.circuitbreaker` settings for the breaker's name).
fn circuit_breaker(f: &Item, c: &mut FilterCtx) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let name = f.arg("name", 0);
    let breaker = match resilience4j(c.input, name.as_deref(), &mut out) {
        Ok(b) => b,
        Err(why) => return vec![(false, why)],
    };
    if let Some(uri) = f.arg("fallbackUri", 1) {
        out.push((true, format!("its `fallbackUri` `{uri}` is left out: it leads to the application's own handler; give the route a `fallback` answer by hand")));
    }
    if f.named("statusCodes").is_some() {
        out.push((true, "`statusCodes` is left out: gatehouse's breaker counts 5xx answers, connection failures and timeouts".into()));
    }
    if f.arg("resumeWithoutError", usize::MAX)
        .is_some_and(|v| v == "true")
    {
        out.push((
            true,
            "`resumeWithoutError` is left out: an open circuit answers 503 `circuit_open`".into(),
        ));
    }
    c.draft.breaker = Some((breaker, f.line));
    out
}

/// The breaker's settings: Resilience4j's defaults (50 % failures over at least 100 calls,
/// open for 60 s), overridden by `resilience4j.circuitbreaker.instances.NAME` or
/// `…configs.default` in the same file. Resilience4j counts the last 100 calls by default;
/// gatehouse counts over a time window, 60 s unless the file says `TIME_BASED`.
/// A value that does not parse is listed in `notes` (with the default kept) rather than
/// dropped unseen.
fn resilience4j(
    input: &Input,
    name: Option<&str>,
    notes: &mut Vec<(bool, String)>,
) -> Result<CircuitBreaker, String> {
    let mut rate = 50.0f64;
    let mut min_calls = 100u64;
    let mut open_for = 60_000u64;
    let mut window = 60u64;
    let mut slow: Option<(f64, u64)> = None;
    let mut slow_rate = 100.0f64;
    let mut slow_ms = 60_000u64;
    let mut sections: Vec<&Node> = Vec::new();
    for doc in &input.docs {
        if let Some(d) = doc.find(&["resilience4j", "circuitbreaker", "configs", "default"]) {
            sections.push(d);
        }
        if let Some(n) = name {
            if let Some(i) = doc.find(&["resilience4j", "circuitbreaker", "instances", n]) {
                sections.push(i);
            }
        }
    }
    for s in sections {
        let text = |k: &str| s.get(k).and_then(|n| n.text().map(|v| (v.trim(), n.line)));
        let mut bad = |k: &str, v: &str, line: usize, what: &str, default: String| {
            notes.push((
                true,
                format!(
                    "`{k}: {}` (line {line}) is not {what}; {default} is used",
                    printable(v, 100)
                ),
            ));
        };
        if let Some((v, line)) = text("failureRateThreshold") {
            match v.parse::<f64>() {
                Ok(v) => rate = v,
                Err(_) => bad(
                    "failureRateThreshold",
                    v,
                    line,
                    "a number",
                    format!("{rate} %"),
                ),
            }
        }
        if let Some((v, line)) = text("minimumNumberOfCalls") {
            match v.parse() {
                Ok(v) => min_calls = v,
                Err(_) => bad(
                    "minimumNumberOfCalls",
                    v,
                    line,
                    "a whole number",
                    format!("{min_calls}"),
                ),
            }
        }
        if let Some((v, line)) = text("waitDurationInOpenState") {
            match spring_millis(v) {
                Some(v) => open_for = v,
                None => bad(
                    "waitDurationInOpenState",
                    v,
                    line,
                    "a duration",
                    format!("{open_for}ms"),
                ),
            }
        }
        let time_based =
            text("slidingWindowType").is_some_and(|(t, _)| t.eq_ignore_ascii_case("TIME_BASED"));
        if time_based {
            if let Some((v, line)) = text("slidingWindowSize") {
                match v.parse() {
                    Ok(v) => window = v,
                    Err(_) => bad(
                        "slidingWindowSize",
                        v,
                        line,
                        "a whole number of seconds",
                        format!("{window}s"),
                    ),
                }
            }
        }
        if let Some((v, line)) = text("slowCallRateThreshold") {
            match v.parse::<f64>() {
                Ok(v) => {
                    slow_rate = v;
                    slow = Some((slow_rate, slow_ms));
                }
                Err(_) => bad(
                    "slowCallRateThreshold",
                    v,
                    line,
                    "a number",
                    format!("{slow_rate} %"),
                ),
            }
        }
        if let Some((v, line)) = text("slowCallDurationThreshold") {
            match spring_millis(v) {
                Some(v) => {
                    slow_ms = v;
                    slow = Some((slow_rate, slow_ms));
                }
                None => bad(
                    "slowCallDurationThreshold",
                    v,
                    line,
                    "a duration",
                    format!("{slow_ms}ms"),
                ),
            }
        }
    }
    if !(rate > 0.0 && rate <= 100.0) || window == 0 || open_for == 0 {
        return Err("its Resilience4j settings are outside what a breaker can take".into());
    }
    let mut cb = serde_json::json!({
        "error_rate": rate / 100.0,
        "min_requests": min_calls.min(u64::from(u32::MAX)),
        "window": format!("{window}s"),
        "open_for": format!("{open_for}ms"),
    });
    if let Some((ratio, ms)) = slow.filter(|(r, ms)| *r > 0.0 && *r < 100.0 && *ms > 0) {
        cb["slow_call"] =
            serde_json::json!({ "threshold": format!("{ms}ms"), "ratio": ratio / 100.0 });
    }
    typed(cb).map_err(|e| e.to_string())
}

/// A Spring duration in milliseconds: `500` (ms), `10s`, `100ms`, `2m`, `1h`, or ISO-8601
/// as `java.time.Duration` writes it (`PT10S`, `PT1.5S`, `PT2M`, `PT1H30M`, `P1DT2H`).
fn spring_millis(text: &str) -> Option<u64> {
    if let Ok(ms) = text.parse::<u64>() {
        return Some(ms);
    }
    if text.starts_with(['P', 'p']) {
        return iso_millis(text);
    }
    crate::units::Span::parse(text)
        .ok()
        .and_then(|s| u64::try_from(s.0.as_millis()).ok())
}

/// An ISO-8601 duration of days, hours, minutes and seconds (seconds may have a fraction).
fn iso_millis(text: &str) -> Option<u64> {
    let upper = text.to_ascii_uppercase();
    let rest = upper.strip_prefix('P')?;
    let (days, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut ms: f64 = 0.0;
    let mut any = false;
    if !days.is_empty() {
        ms += days.strip_suffix('D')?.parse::<u32>().ok()? as f64 * 86_400_000.0;
        any = true;
    }
    if let Some(mut time) = time {
        if time.is_empty() {
            return None;
        }
        for (unit, scale) in [('H', 3_600_000.0), ('M', 60_000.0), ('S', 1_000.0)] {
            if let Some((n, after)) = time.split_once(unit) {
                let fraction_ok = unit == 'S' || !n.contains('.');
                if n.is_empty()
                    || !fraction_ok
                    || !n.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                {
                    return None;
                }
                ms += n.parse::<f64>().ok()? * scale;
                any = true;
                time = after;
            }
        }
        if !time.is_empty() {
            return None;
        }
    }
    if !any || !ms.is_finite() || ms >= u64::MAX as f64 {
        return None;
    }
    Some(ms.round() as u64)
}

/// `metadata: { response-timeout: MS, connect-timeout: MS }` (milliseconds; a negative
/// response timeout means none).
fn timeouts(
    meta: &Node,
    file: &At,
    scope: &Scope,
    t: &mut Translation,
) -> Result<Option<Timeouts>, ImportError> {
    let mut fields = serde_json::Map::new();
    for (key, field) in [("response-timeout", "read"), ("connect-timeout", "connect")] {
        let Some(node) = meta.get(key) else { continue };
        match node.text().map(|v| v.trim().parse::<i64>()) {
            Some(Ok(ms)) if ms > 0 => {
                fields.insert(field.into(), format!("{ms}ms").into());
            }
            Some(Ok(_)) => {}
            _ => t.missed(
                file.line(node.line),
                scope,
                format!("metadata {key}"),
                "it must be a whole number of milliseconds",
            ),
        }
    }
    if fields.is_empty() {
        return Ok(None);
    }
    typed(serde_json::Value::Object(fields)).map(Some)
}

/// Merges weight groups, makes the upstreams, and hands the routes over.
fn assemble(drafts: Vec<Draft>, t: &mut Translation) -> Result<(), ImportError> {
    let mut order: Vec<usize> = (0..drafts.len()).collect();
    order.sort_by_key(|&i| (drafts[i].order, drafts[i].seq));
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    let mut singles = Vec::new();
    for i in order {
        match &drafts[i].weight {
            Some((group, _, _)) => match groups.iter_mut().find(|(g, _)| g == group) {
                Some((_, members)) => members.push(i),
                None => groups.push((group.clone(), vec![i])),
            },
            None => singles.push(i),
        }
    }
    for i in singles {
        let d = &drafts[i];
        let upstream = make_upstream(d, t)?;
        let mut route = route_of(d, &d.source_id, t)?;
        route.upstream = Some(upstream);
        push(
            d,
            route,
            format!("Spring Cloud Gateway route {}", d.source_id),
            t,
        );
    }
    for (group, members) in groups {
        let lead = &drafts[members[0]];
        let mut route = route_of(lead, &group, t)?;
        let mut weights: Vec<WeightedUpstream> = Vec::new();
        for &m in &members {
            let d = &drafts[m];
            let id = make_upstream(d, t)?;
            let weight = d.weight.as_ref().map_or(0, |(_, w, _)| *w);
            match weights.iter_mut().find(|w| w.upstream == id) {
                Some(w) => w.weight = w.weight.saturating_add(weight),
                None => weights.push(WeightedUpstream {
                    upstream: id,
                    weight,
                }),
            }
            if m != members[0] && !same_route(lead, d) {
                let line = d.weight.as_ref().map_or(d.at.line, |(_, _, l)| *l);
                t.approximated(
                    d.at.line(line),
                    &d.scope,
                    "predicate Weight",
                    format!(
                        "its other predicates or filters differ from those of `{}`, the first route of group `{group}`; gatehouse splits one route's requests, and the group's route takes those of `{}`",
                        lead.source_id, lead.source_id
                    ),
                );
            }
        }
        if weights.len() == 1 {
            route.upstream = weights.pop().map(|w| w.upstream);
        } else {
            route.weights = Some(weights);
        }
        let ids: Vec<&str> = members
            .iter()
            .map(|&m| drafts[m].source_id.as_str())
            .collect();
        push(
            lead,
            route,
            format!(
                "Spring Cloud Gateway weight group {group} (routes {})",
                ids.join(", ")
            ),
            t,
        );
    }
    Ok(())
}

fn push(d: &Draft, route: crate::resource::Route, label: String, t: &mut Translation) {
    t.routes.push(RouteOut {
        route,
        at: d.at.clone(),
        scope: d.scope.clone(),
        label,
        order: d.order,
        seq: d.seq,
    });
}

/// Whether two routes of a weight group translate to the same gatehouse route but for
/// their upstream.
fn same_route(a: &Draft, b: &Draft) -> bool {
    a.paths == b.paths
        && a.hosts == b.hosts
        && a.methods == b.methods
        && a.headers == b.headers
        && a.query == b.query
        && a.rewrite == b.rewrite
        && a.request_headers == b.request_headers
        && a.response_headers == b.response_headers
        && a.rate_limit == b.rate_limit
        && a.timeouts == b.timeouts
        && a.target.websocket == b.target.websocket
}

fn route_of(
    d: &Draft,
    wanted: &str,
    t: &mut Translation,
) -> Result<crate::resource::Route, ImportError> {
    let id = t.route_id(wanted);
    let mut route = new_route(&id)?;
    route.matcher.paths = d.paths.clone();
    route.matcher.hosts = d.hosts.clone();
    route.matcher.methods = d.methods.clone();
    route.matcher.headers = d.headers.clone();
    route.matcher.query = d.query.clone();
    route.rewrite = d.rewrite.clone();
    route.request_headers = d.request_headers.clone();
    route.response_headers = d.response_headers.clone();
    route.rate_limit = d.rate_limit.clone();
    route.timeouts = d.timeouts;
    route.websocket = d.target.websocket;
    Ok(route)
}

/// The upstream of a route's `uri` (one per service or address, shared by the routes that
/// name it), with the route's breaker.
fn make_upstream(d: &Draft, t: &mut Translation) -> Result<String, ImportError> {
    let target = &d.target;
    let id = t.upstream(
        &target.key,
        &target.wanted_id,
        d.at.clone(),
        format!("upstream for {}", target.label),
        |id| {
            let mut u = new_upstream(&id)?;
            u.scheme = target.scheme;
            if let Some(service) = &target.discovery {
                let discovery: Discovery = typed(serde_json::json!({ "service": service }))?;
                u.discovery = Some(discovery);
            }
            if let Some(addr) = &target.addr {
                let node: NodeSpec = typed(serde_json::json!({ "addr": addr }))?;
                u.nodes = vec![node];
            }
            Ok(u)
        },
    )?;
    if let Some((breaker, line)) = &d.breaker {
        let source = d.source_id.clone();
        let conflict = match t.upstream_mut(&id) {
            Some(u) => match (&u.upstream.circuit_breaker, &u.breaker_from) {
                (None, _) => {
                    u.upstream.circuit_breaker = Some(breaker.clone());
                    u.breaker_from = Some(source);
                    None
                }
                (Some(existing), _) if existing == breaker => None,
                (Some(_), from) => Some(from.clone().unwrap_or_default()),
            },
            None => None,
        };
        if let Some(from) = conflict {
            t.missed(
                d.at.line(*line),
                &d.scope,
                "filter CircuitBreaker",
                format!("the upstream `{id}` has the breaker of route `{from}` already, with other settings; gatehouse keeps one breaker per upstream"),
            );
        }
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let t = target("lb://user-service").unwrap();
        assert_eq!(t.discovery.as_deref(), Some("user-service"));
        assert_eq!(t.wanted_id, "user-service");
        assert!(!t.websocket);
        let t = target("lb:ws://chat").unwrap();
        assert!(t.websocket);
        assert_eq!(t.discovery.as_deref(), Some("chat"));
        let t = target("http://127.0.0.1:9000/ignored").unwrap();
        assert_eq!(t.addr.as_deref(), Some("127.0.0.1:9000"));
        let t = target("https://example.org").unwrap();
        assert_eq!(t.addr.as_deref(), Some("example.org:443"));
        assert_eq!(t.scheme, Scheme::Https);
        let t = target("http://[::1]:8080").unwrap();
        assert_eq!(t.addr.as_deref(), Some("[::1]:8080"));
        assert!(target("forward:/local").is_err());
        assert!(target("no://op").is_err());
    }

    #[test]
    fn a_uri_left_with_a_placeholder_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yml");
        std::fs::write(
            &file,
            "routes:\n  - id: a\n    uri: http://${HOST}:8080\n  - id: b\n    uri: ${B:http://127.0.0.1:1}\n",
        )
        .unwrap();
        let out = dir.path().join("out");
        let outcome =
            super::super::run(super::super::Dialect::SpringCloudGateway, &[file], &out).unwrap();
        assert_eq!(outcome.routes, 1, "b, from the placeholder's default");
        assert_eq!(outcome.reports.len(), 1);
        assert_eq!(outcome.reports[0].at.line, 3);
        assert!(outcome.reports[0].why.contains("placeholder"));
    }

    #[test]
    fn placeholders_resolve_from_the_file() {
        let docs = super::super::yaml::parse("svc:\n  url: http://a:1\n").unwrap();
        let props = Props { docs: &docs };
        assert_eq!(props.resolve("${svc.url}"), "http://a:1");
        assert_eq!(props.resolve("${nope:http://b:2}/x"), "http://b:2/x");
        assert_eq!(props.resolve("/${segment}"), "/${segment}");
    }

    #[test]
    fn durations_in_spring_form() {
        assert_eq!(spring_millis("500"), Some(500));
        assert_eq!(spring_millis("10s"), Some(10_000));
        assert_eq!(spring_millis("PT10S"), Some(10_000));
        assert_eq!(spring_millis("PT1.5S"), Some(1_500));
        assert_eq!(spring_millis("pt2m"), Some(120_000));
        assert_eq!(spring_millis("PT1H30M"), Some(5_400_000));
        assert_eq!(spring_millis("P1DT1S"), Some(86_401_000));
        for bad in [
            "PT", "P", "PT10", "PT1.5M", "PT10X", "PTS", "PT30S1M", "ten",
        ] {
            assert_eq!(spring_millis(bad), None, "{bad}");
        }
    }
}
