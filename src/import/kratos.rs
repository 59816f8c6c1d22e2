//! go-kratos gateway configurations (`gateway.config.v1.Gateway`, the YAML its file loader
//! reads) as gatehouse routes and upstreams: one route per endpoint.
//!
//! Field names are read as protobuf's JSON mapping reads them, in either spelling
//! (`allowOrigins` or `allow_origins`). Global middlewares wrap every endpoint's own, so
//! they are applied first. The mapping is documented in docs/configuration.md ("Importing
//! from Spring Cloud Gateway and go-kratos gateway").

use super::headers::HeaderEdits;
use super::patterns::{self, PathRewrite};
use super::yaml::Node;
use super::{
    has_control, new_route, new_upstream, printable, typed, ImportError, Input, RouteOut, Scope,
    Translation,
};
use crate::resource::{
    split_host_port, CircuitBreaker, Fallback, NodeSpec, PluginUse, Scheme, WeightedUpstream,
};
use crate::router::METHODS;
use crate::units::Span;
use base64::Engine;

/// The most `retries` a route takes (admission refuses more).
const MAX_RETRIES: u32 = 10;

/// Translates every endpoint of every file.
pub fn translate(inputs: &[Input], t: &mut Translation) -> Result<(), ImportError> {
    let mut seq = 0usize;
    for input in inputs {
        let configs: Vec<&Node> = input
            .docs
            .iter()
            .filter(|d| d.get("endpoints").is_some())
            .collect();
        let mut endpoints = Vec::new();
        for config in &configs {
            if let Some(list) = config.get("endpoints").filter(|l| !l.is_null()) {
                let items = list.items().ok_or_else(|| ImportError::Invalid {
                    at: input.at.line(list.line),
                    message: format!("`endpoints` must be a list, not {}", list.shape()),
                })?;
                endpoints.extend(items.iter().map(|e| (*config, e)));
            }
        }
        if endpoints.is_empty() {
            return Err(ImportError::NoRoutes {
                file: input.at.file.to_string(),
                message: "no kratos gateway endpoints: looked for a list under `endpoints`".into(),
            });
        }
        for config in &configs {
            if let Some(hosts) = config
                .get("hosts")
                .filter(|h| !h.items().unwrap_or_default().is_empty())
            {
                t.missed(
                    input.at.line(hosts.line),
                    &Scope::Every,
                    "field hosts",
                    "it is deprecated and kratos gateway does not route by it; an endpoint's `host` is translated",
                );
            }
        }
        for (config, endpoint) in endpoints {
            seq += 1;
            let globals = match config.get("middlewares") {
                Some(list) => middlewares(input, list)?,
                None => Vec::new(),
            };
            endpoint_route(input, endpoint, &globals, seq, t)?;
        }
    }
    Ok(())
}

/// One middleware as configured: its name and options.
struct Middleware<'a> {
    name: String,
    line: usize,
    options: Option<&'a Node>,
}

fn middlewares<'a>(input: &Input, list: &'a Node) -> Result<Vec<Middleware<'a>>, ImportError> {
    let invalid = |line, message: String| ImportError::Invalid {
        at: input.at.line(line),
        message,
    };
    let items = list.items().ok_or_else(|| {
        invalid(
            list.line,
            format!("`middlewares` must be a list, not {}", list.shape()),
        )
    })?;
    items
        .iter()
        .map(|m| {
            let name = m
                .get("name")
                .and_then(Node::text)
                .ok_or_else(|| invalid(m.line, "a middleware needs a `name`".into()))?;
            let options = m.get("options").filter(|o| !o.is_null());
            if let Some(o) = options {
                if o.entries().is_none() {
                    return Err(invalid(
                        o.line,
                        format!("the `options` of middleware `{name}` must be a mapping"),
                    ));
                }
            }
            Ok(Middleware {
                name: name.to_string(),
                line: m.line,
                options,
            })
        })
        .collect()
}

/// An endpoint's backend: a registry service or an address.
#[derive(Debug, Clone, PartialEq)]
enum Backend {
    Discovery(String),
    Direct(String),
}

fn backend(target: &str, tls: bool) -> Result<Backend, String> {
    if has_control(target) {
        return Err(format!(
            "`{}` holds a control character; give the address by hand",
            printable(target, 200)
        ));
    }
    if let Some(rest) = target.strip_prefix("discovery://") {
        let service = rest.rsplit('/').find(|s| !s.is_empty()).unwrap_or_default();
        if service.is_empty() || rest.trim_matches('/').is_empty() {
            return Err(format!("`{target}` names no service"));
        }
        return Ok(Backend::Discovery(service.to_string()));
    }
    let addr = match target.strip_prefix("direct://") {
        Some(rest) => rest.trim_matches('/'),
        None if target.contains("://") => {
            return Err(format!(
            "`{target}` has a scheme kratos gateway does not take (`discovery://` or `direct://`)"
        ))
        }
        None => target,
    };
    let addr = if split_host_port(addr).is_ok() {
        addr.to_string()
    } else {
        format!("{addr}:{}", if tls { 443 } else { 80 })
    };
    split_host_port(&addr).map_err(|e| format!("`{target}`: {e}"))?;
    Ok(Backend::Direct(addr))
}

/// What an endpoint's middlewares add up to.
struct Effects {
    rewrite: PathRewrite,
    request: HeaderEdits,
    response: HeaderEdits,
    plugins: Vec<PluginUse>,
    breaker: Option<(CircuitBreaker, usize)>,
    fallback: Option<Fallback>,
}

fn endpoint_route(
    input: &Input,
    e: &Node,
    globals: &[Middleware],
    seq: usize,
    t: &mut Translation,
) -> Result<(), ImportError> {
    let invalid = |line, message: String| ImportError::Invalid {
        at: input.at.line(line),
        message,
    };
    if e.entries().is_none() {
        return Err(invalid(
            e.line,
            format!("an endpoint must be a mapping, not {}", e.shape()),
        ));
    }
    let path = e
        .get("path")
        .and_then(Node::text)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| invalid(e.line, "an endpoint needs a `path`".into()))?;
    let method = e
        .get("method")
        .and_then(Node::text)
        .map(str::to_ascii_uppercase)
        .filter(|m| !m.is_empty() && m != "*");
    let grpc = match e.get("protocol").and_then(Node::text) {
        None => false,
        Some(p) if p.eq_ignore_ascii_case("GRPC") || p == "2" => true,
        Some(p)
            if p.eq_ignore_ascii_case("HTTP")
                || p.eq_ignore_ascii_case("UNSPECIFIED")
                || p == "1"
                || p == "0" =>
        {
            false
        }
        Some(p) => {
            return Err(invalid(
                e.get("protocol").map_or(e.line, |n| n.line),
                format!("`protocol: {p}` is not HTTP or GRPC"),
            ))
        }
    };
    let backends = e.get("backends").and_then(Node::items).unwrap_or_default();
    if backends.is_empty() {
        return Err(invalid(
            e.line,
            format!("endpoint `{path}` has no `backends`: every endpoint must say where it sends requests"),
        ));
    }
    let wanted = match &method {
        Some(m) => format!("{path}-{}", m.to_ascii_lowercase()),
        None => path.to_string(),
    };
    let id = t.route_id(&wanted);
    let scope = Scope::Route(id.clone());
    let at = input.at.line(e.line);
    let label = format!(
        "kratos gateway endpoint {}{path}",
        method
            .as_deref()
            .map(|m| format!("{m} "))
            .unwrap_or_default()
    );
    let mut route = new_route(&id)?;

    if has_control(path) {
        t.missed(
            at,
            &scope,
            "route",
            format!(
                "its path `{}` holds a control character",
                printable(path, 200)
            ),
        );
        return Ok(());
    }
    match patterns::kratos_path(path) {
        Ok(p) => route.matcher.paths = vec![p],
        Err(why) => {
            t.missed(at, &scope, "route", why);
            return Ok(());
        }
    }
    if let Some(m) = &method {
        if !METHODS.contains(&m.as_str()) {
            t.missed(
                at,
                &scope,
                "route",
                format!("`method: {m}` is not one of {}", METHODS.join(", ")),
            );
            return Ok(());
        }
        // gorilla/mux takes OPTIONS too on a route with a method, for CORS preflights.
        route.matcher.methods = if m == "OPTIONS" {
            vec![m.clone()]
        } else {
            vec![m.clone(), "OPTIONS".into()]
        };
    }
    if let Some(host) = e
        .get("host")
        .filter(|h| h.text().is_some_and(|h| !h.is_empty()))
    {
        let text = host.text().unwrap_or_default();
        match patterns::spring_host(text) {
            Ok(h) => {
                route.matcher.hosts = h.hosts;
                if let Some(caveat) = h.caveat {
                    t.approximated(input.at.line(host.line), &scope, "field host", caveat);
                }
            }
            Err(why) => t.missed(
                input.at.line(host.line),
                &scope,
                "field host",
                format!("{why}; the route takes every host"),
            ),
        }
    }

    let mut fx = Effects {
        rewrite: PathRewrite::new(&route.matcher.paths),
        request: HeaderEdits::default(),
        response: HeaderEdits::default(),
        plugins: Vec::new(),
        breaker: None,
        fallback: None,
    };
    let own = match e.get("middlewares") {
        Some(list) => middlewares(input, list)?,
        None => Vec::new(),
    };
    for (global, m) in globals
        .iter()
        .map(|m| (true, m))
        .chain(own.iter().map(|m| (false, m)))
    {
        for (partial, why) in middleware(m, &mut fx) {
            let item = format!("middleware {}", m.name);
            let at = input.at.line(m.line);
            if partial {
                t.approximated(at, &scope, item, why);
            } else {
                t.missed(at, &scope, item, why);
            }
            if global {
                if let Some(last) = t.reports.last_mut() {
                    last.global = true;
                }
            }
        }
    }
    route.rewrite = fx.rewrite.finish();
    route.request_headers = fx.request.finish();
    route.response_headers = fx.response.finish();
    route.plugins = fx.plugins;
    route.fallback = fx.fallback;

    timeouts_and_retry(input, e, &scope, &mut route, t)?;

    // Backends.
    let mut parsed: Vec<(Backend, Scheme, u32, usize)> = Vec::new();
    for b in backends {
        let Some(target) = b.get("target").and_then(Node::text) else {
            return Err(invalid(
                b.line,
                format!("a backend of endpoint `{path}` needs a `target`"),
            ));
        };
        let tls = b.get("tls").and_then(Node::text) == Some("true");
        let scheme = match (grpc, tls) {
            (true, true) => Scheme::Grpcs,
            (true, false) => Scheme::Grpc,
            (false, true) => Scheme::Https,
            (false, false) => Scheme::Http,
        };
        let kind = match backend(target, tls) {
            Ok(kind) => kind,
            Err(why) => {
                t.missed(input.at.line(b.line), &scope, "route", why);
                return Ok(());
            }
        };
        let weight = match b
            .get("weight")
            .and_then(Node::text)
            .map(|w| w.trim().parse::<i64>())
        {
            None => 1,
            Some(Ok(w)) if (1..=10_000).contains(&w) => w as u32,
            Some(_) => {
                t.approximated(
                    input.at.line(b.line),
                    &scope,
                    "field weight",
                    "a weight must be a whole number from 1 to 10000; taken as 1",
                );
                1
            }
        };
        if b.get("healthCheck").is_some() {
            t.missed(
                input.at.line(b.line),
                &scope,
                "field health_check",
                "kratos gateway's health check has no settings; give the upstream a `health_check` by hand",
            );
        }
        if let Some(name) = b
            .get("tlsConfigName")
            .and_then(Node::text)
            .filter(|n| !n.is_empty())
        {
            t.missed(
                input.at.line(b.line),
                &scope,
                "field tls_config_name",
                format!("the client certificate of `{name}` in `tls_store` is not translated; gatehouse verifies the node's certificate with the system's roots"),
            );
        }
        parsed.push((kind, scheme, weight, b.line));
    }

    let all_direct = parsed.iter().all(|(k, ..)| matches!(k, Backend::Direct(_)));
    let mut upstreams: Vec<(String, u32)> = Vec::new();
    if parsed.len() > 1 && all_direct && parsed.iter().all(|(_, s, ..)| *s == parsed[0].1) {
        // One balancer over the nodes, as kratos gateway has it.
        let scheme = parsed[0].1;
        let key = format!(
            "direct:{scheme:?}:{}",
            parsed
                .iter()
                .map(|(k, _, w, _)| format!("{k:?}/{w}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let nodes: Vec<(String, u32)> = parsed
            .iter()
            .filter_map(|(k, _, w, _)| match k {
                Backend::Direct(a) => Some((a.clone(), *w)),
                Backend::Discovery(_) => None,
            })
            .collect();
        let upstream = t.upstream(
            &key,
            &id,
            at.clone(),
            format!("upstream of {label}"),
            |uid| {
                let mut u = new_upstream(&uid)?;
                u.scheme = scheme;
                for (addr, weight) in &nodes {
                    let node: NodeSpec =
                        typed(serde_json::json!({ "addr": addr, "weight": weight }))?;
                    u.nodes.push(node);
                }
                Ok(u)
            },
        )?;
        upstreams.push((upstream, 1));
    } else {
        for (kind, scheme, weight, line) in &parsed {
            let (key, wanted, what) = match kind {
                Backend::Discovery(service) => (
                    format!("discovery:{scheme:?}:{service}"),
                    match scheme {
                        Scheme::Http => service.clone(),
                        other => format!("{service}-{}", scheme_name(*other)),
                    },
                    format!("the service `{service}`"),
                ),
                Backend::Direct(addr) => (
                    format!("direct:{scheme:?}:{addr}"),
                    match scheme {
                        Scheme::Http => addr.clone(),
                        other => format!("{addr}-{}", scheme_name(*other)),
                    },
                    format!("`{addr}`"),
                ),
            };
            let upstream = t.upstream(
                &key,
                &wanted,
                input.at.line(*line),
                format!("upstream for {what}"),
                |uid| {
                    let mut u = new_upstream(&uid)?;
                    u.scheme = *scheme;
                    match kind {
                        Backend::Discovery(service) => {
                            u.discovery = Some(typed(serde_json::json!({ "service": service }))?)
                        }
                        Backend::Direct(addr) => {
                            u.nodes = vec![typed(serde_json::json!({ "addr": addr }))?]
                        }
                    }
                    Ok(u)
                },
            )?;
            match upstreams.iter_mut().find(|(u, _)| *u == upstream) {
                Some((_, w)) => *w = w.saturating_add(*weight),
                None => upstreams.push((upstream, *weight)),
            }
        }
    }
    if let Some((breaker, line)) = &fx.breaker {
        for (upstream, _) in &upstreams {
            let conflict = match t.upstream_mut(upstream) {
                Some(u) => match &u.upstream.circuit_breaker {
                    None => {
                        u.upstream.circuit_breaker = Some(breaker.clone());
                        u.breaker_from = Some(id.clone());
                        None
                    }
                    Some(existing) if existing == breaker => None,
                    Some(_) => Some(u.breaker_from.clone().unwrap_or_default()),
                },
                None => None,
            };
            if let Some(from) = conflict {
                t.missed(
                    input.at.line(*line),
                    &scope,
                    "middleware circuitbreaker",
                    format!("the upstream `{upstream}` has the breaker of route `{from}` already, with other settings; gatehouse keeps one breaker per upstream"),
                );
            }
        }
    }
    if upstreams.len() == 1 {
        route.upstream = upstreams.pop().map(|(u, _)| u);
    } else {
        route.weights = Some(
            upstreams
                .into_iter()
                .map(|(upstream, weight)| WeightedUpstream { upstream, weight })
                .collect(),
        );
    }
    t.routes.push(RouteOut {
        route,
        at,
        scope,
        label,
        order: 0,
        seq,
    });
    Ok(())
}

fn scheme_name(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
        Scheme::Grpc => "grpc",
        Scheme::Grpcs => "grpcs",
    }
}

/// A protobuf JSON duration (`1s`, `0.1s`, `1.5s`).
fn duration(text: &str) -> Option<Span> {
    Span::parse(text).ok().filter(|s| !s.0.is_zero())
}

/// `timeout` bounds a request, all its attempts together; gatehouse's `timeouts.read`
/// bounds each attempt's wait for the answer, so `retry.perTryTimeout` is its better
/// source when given. `retry.attempts` counts the first attempt; gatehouse's `retries`
/// does not.
fn timeouts_and_retry(
    input: &Input,
    e: &Node,
    scope: &Scope,
    route: &mut crate::resource::Route,
    t: &mut Translation,
) -> Result<(), ImportError> {
    let at = |n: &Node| input.at.line(n.line);
    let timeout_node = e.get("timeout");
    let timeout = timeout_node.and_then(Node::text).and_then(duration);
    if let (Some(node), None) = (timeout_node, timeout) {
        t.missed(
            at(node),
            scope,
            "field timeout",
            "not a duration such as `1s` or `0.5s`",
        );
    }
    let retry = e.get("retry").filter(|r| r.entries().is_some());
    let per_try_node = retry.and_then(|r| r.get("perTryTimeout"));
    let per_try = per_try_node.and_then(Node::text).and_then(duration);
    if let (Some(node), None) = (per_try_node, per_try) {
        t.missed(
            at(node),
            scope,
            "field retry.per_try_timeout",
            "not a duration such as `1s` or `0.5s`",
        );
    }
    if let (Some(node), Some(_), Some(_)) = (timeout_node, timeout, per_try) {
        t.missed(
            at(node),
            scope,
            "field timeout",
            "gatehouse bounds each attempt (`timeouts.read`, from `perTryTimeout`), not all of a request's attempts together",
        );
    }
    if let Some(read) = per_try.or(timeout) {
        let connect = read.min(Span::secs(5));
        route.timeouts = Some(typed(serde_json::json!({
            "connect": connect.to_string(), "read": read.to_string()
        }))?);
    }
    let Some(retry) = retry else { return Ok(()) };
    if let Some(node) = retry.get("attempts") {
        match node.text().map(|a| a.trim().parse::<u32>()) {
            Some(Ok(0 | 1)) => {}
            Some(Ok(n)) if n - 1 <= MAX_RETRIES => route.retries = Some(n - 1),
            Some(Ok(n)) => {
                route.retries = Some(MAX_RETRIES);
                t.approximated(
                    at(node),
                    scope,
                    "field retry.attempts",
                    format!(
                        "{n} attempts; gatehouse makes at most {} retries",
                        MAX_RETRIES
                    ),
                );
            }
            _ => t.missed(
                at(node),
                scope,
                "field retry.attempts",
                "not a whole number",
            ),
        }
    }
    if let Some(node) = retry
        .get("conditions")
        .filter(|c| !c.items().unwrap_or_default().is_empty())
    {
        t.approximated(
            at(node),
            scope,
            "field retry.conditions",
            "gatehouse retries connection failures, and 502 and 503 answers to idempotent requests without a body, whatever the conditions say",
        );
    }
    if let Some(node) = retry
        .get("priorities")
        .filter(|c| !c.items().unwrap_or_default().is_empty())
    {
        t.missed(
            at(node),
            scope,
            "field retry.priorities",
            "gatehouse has no priority configs",
        );
    }
    Ok(())
}

/// Applies one middleware; answers what could not be translated (`true`: kept in part).
fn middleware(m: &Middleware, fx: &mut Effects) -> Vec<(bool, String)> {
    let miss = |why: &str| vec![(false, why.to_string())];
    match m.name.as_str() {
        "cors" => cors(m.options, fx),
        "rewrite" => rewrite(m.options, fx),
        "circuitbreaker" => breaker(m.options, m.line, fx),
        "logging" => miss("gatehouse writes its access log for every route (bootstrap `telemetry.access_log`)"),
        "tracing" => miss("gatehouse traces every request when the bootstrap sets `telemetry.otlp.endpoint`"),
        "transcoder" => miss("gatehouse transcodes with a route's `grpc_transcode` and the service's descriptors; set it by hand"),
        "bbr" => miss("gatehouse's adaptive limit is an upstream's `concurrency.adaptive`; set it by hand"),
        _ => miss("gatehouse has no translation for this middleware"),
    }
}

fn texts(node: Option<&Node>) -> Option<Vec<String>> {
    node.and_then(Node::items).map(|items| {
        items
            .iter()
            .filter_map(|i| i.text().map(String::from))
            .collect()
    })
}

/// `cors`: the `cors` plugin. kratos gateway allows origins by host name (`example.com`,
/// `*.example.com`, `*`) on any scheme; its defaults are carried over (credentials allowed,
/// methods GET POST PUT DELETE, headers Origin Content-Length Content-Type, max age 10m).
fn cors(options: Option<&Node>, fx: &mut Effects) -> Vec<(bool, String)> {
    let get = |k: &str| options.and_then(|o| o.get(k));
    let mut out = Vec::new();
    let mut origins = Vec::new();
    for origin in texts(get("allowOrigins")).unwrap_or_default() {
        let lower = origin.trim().to_ascii_lowercase();
        if lower == "*" || lower.starts_with("*.") {
            origins.push(lower);
        } else if lower.starts_with('*') {
            out.push((true, format!("the origin `{origin}` (a host ending so) is left out: gatehouse allows `*.domain` or exact origins")));
        } else if lower.starts_with('.') {
            out.push((true, format!("the origin `{origin}` is left out: kratos gateway compares it with the whole host name, so it allows nothing (write `*{origin}` for subdomains)")));
        } else {
            out.push((true, format!("`{origin}` is allowed on any scheme and port by kratos gateway; translated as `http://{lower}` and `https://{lower}`")));
            origins.push(format!("http://{lower}"));
            origins.push(format!("https://{lower}"));
        }
    }
    if origins.is_empty() {
        out.push((false, "it allows no origin gatehouse can express".into()));
        return out;
    }
    let mut credentials = get("allowCredentials")
        .and_then(Node::text)
        .is_none_or(|c| c == "true");
    if credentials && origins.iter().any(|o| o == "*") {
        credentials = false;
        out.push((true, "credentials are not allowed with the origin `*` (browsers refuse the pair); `allowCredentials` is left out".into()));
    }
    if get("allowPrivateNetwork").and_then(Node::text) == Some("true") {
        out.push((true, "`allowPrivateNetwork` is left out: gatehouse does not answer private network preflights".into()));
    }
    let methods = texts(get("allowMethods"))
        .unwrap_or_else(|| ["GET", "POST", "PUT", "DELETE"].map(String::from).to_vec());
    let headers = texts(get("allowHeaders")).unwrap_or_else(|| {
        ["Origin", "Content-Length", "Content-Type"]
            .map(String::from)
            .to_vec()
    });
    let max_age = match get("maxAge").and_then(Node::text) {
        None => "10m".to_string(),
        Some(text) => match duration(text) {
            Some(span) => span.to_string(),
            None => {
                out.push((
                    true,
                    format!("`maxAge: {text}` is not a duration; the default 10m is kept"),
                ));
                "10m".to_string()
            }
        },
    };
    let mut config = serde_json::json!({
        "allow_origins": origins,
        "allow_methods": methods,
        "allow_headers": headers,
        "allow_credentials": credentials,
        "max_age": max_age,
    });
    if let Some(expose) = texts(get("exposeHeaders")).filter(|e| !e.is_empty()) {
        config["expose_headers"] = expose.into();
    }
    if let Err(e) = gatehouse_plugins::registry::global().build("cors", &config) {
        return vec![(
            false,
            format!("the `cors` plugin refuses its translation: {e}"),
        )];
    }
    fx.plugins.push(PluginUse {
        name: "cors".into(),
        config,
    });
    out
}

/// `rewrite`: `pathRewrite` (then `stripPrefix`, in that order, as kratos gateway applies
/// them) into `rewrite`, header edits into `request_headers` and `response_headers`.
fn rewrite(options: Option<&Node>, fx: &mut Effects) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let Some(o) = options else { return out };
    if let Some(path) = o.get("pathRewrite").and_then(Node::text) {
        if let Err(why) = fx.rewrite.set(path) {
            out.push((true, format!("`pathRewrite` is left out: {why}")));
        }
    }
    if let Some(prefix) = o.get("stripPrefix").and_then(Node::text) {
        if let Err(why) = fx.rewrite.strip_literal(prefix) {
            out.push((true, format!("`stripPrefix` is left out: {why}")));
        }
    }
    if o.get("hostRewrite").and_then(Node::text).is_some() {
        out.push((
            true,
            "`hostRewrite` is left out: gatehouse passes the client's Host on".into(),
        ));
    }
    for (key, request) in [
        ("requestHeadersRewrite", true),
        ("responseHeadersRewrite", false),
    ] {
        let Some(policy) = o.get(key) else { continue };
        let edits = if request {
            &mut fx.request
        } else {
            &mut fx.response
        };
        for (field, add) in [("set", false), ("add", true)] {
            for (name, value) in policy
                .get(field)
                .and_then(Node::entries)
                .unwrap_or_default()
            {
                let (Some(name), Some(value)) = (name.text(), value.text()) else {
                    continue;
                };
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    out.push((
                        true,
                        format!("`{key}.{field}.{name}` is left out: not a valid header name"),
                    ));
                    continue;
                }
                if let Err(e) = gatehouse_plugins::template::Template::parse(value) {
                    out.push((true, format!("`{key}.{field}.{name}` is left out: {e}")));
                    continue;
                }
                if add {
                    if let Err(why) = edits.set(name, value) {
                        out.push((true, format!("`{key}.add.{name}` is left out: {why}")));
                    }
                } else {
                    edits.replace(name, value);
                }
            }
        }
        for name in texts(policy.get("remove")).unwrap_or_default() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_ok() {
                edits.remove(&name);
            } else {
                out.push((
                    true,
                    format!("`{key}.remove` `{name}` is left out: not a valid header name"),
                ));
            }
        }
    }
    out
}

/// `circuitbreaker`: kratos's SRE breaker (success ratio over a window) as the upstream's
/// `circuit_breaker` — `error_rate` 1 − `success`, `min_requests` `request`, `window` and
/// `open_for` its `window` (defaults 0.6, 100, 3s) — and a `responseData` action as the
/// route's `fallback` for `circuit_open`.
fn breaker(options: Option<&Node>, line: usize, fx: &mut Effects) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let get = |k: &str| options.and_then(|o| o.get(k));
    if get("ratio").is_some() {
        return vec![(false, "the `ratio` trigger drops a fixed share of requests at random; gatehouse's breaker opens on errors".into())];
    }
    let ratio = get("successRatio");
    let number = |k: &str| {
        ratio
            .and_then(|r| r.get(k))
            .and_then(Node::text)
            .map(str::trim)
    };
    let mut defaulted = |key: &str, what: &str, default: &str| {
        if let Some(v) = number(key) {
            out.push((
                true,
                format!(
                    "`successRatio.{key}: {}` is not {what}; the default {default} is used",
                    printable(v, 100)
                ),
            ));
        }
    };
    let success = match number("success").map(str::parse::<f64>) {
        Some(Ok(s)) => s,
        _ => {
            defaulted("success", "a number", "0.6");
            0.6
        }
    };
    let request = match number("request").map(str::parse::<u32>) {
        Some(Ok(r)) => r,
        _ => {
            defaulted("request", "a whole number", "100");
            100
        }
    };
    let window = match number("window").map(duration) {
        Some(Some(w)) => w,
        _ => {
            defaulted("window", "a duration above zero", "3s");
            Span::secs(3)
        }
    };
    if !(success > 0.0 && success < 1.0) {
        return vec![(
            false,
            format!("`success: {success}` is not a ratio between 0 and 1"),
        )];
    }
    out.push((true, "kratos gateway throttles by the SRE formula (it drops a share of requests growing with the failures); gatehouse opens the circuit when the error rate passes 1 − success".into()));
    let cb: Result<CircuitBreaker, _> = typed(serde_json::json!({
        "error_rate": ((1.0 - success) * 1000.0).round() / 1000.0,
        "min_requests": request,
        "window": window.to_string(),
        "open_for": window.to_string(),
    }));
    match cb {
        Ok(cb) => fx.breaker = Some((cb, line)),
        Err(e) => return vec![(false, e.to_string())],
    }
    if let Some(data) = get("responseData") {
        match fallback(data) {
            Ok(f) => fx.fallback = Some(f),
            Err(why) => out.push((true, format!("`responseData` is left out: {why}"))),
        }
    }
    if get("backupService").is_some() {
        out.push((true, "`backupService` is left out: gatehouse answers an open circuit itself (503, or the route's `fallback`)".into()));
    }
    if get("assertCondtions")
        .or_else(|| get("assertConditions"))
        .is_some()
    {
        out.push((true, "its conditions are left out: gatehouse counts 5xx answers, connection failures and timeouts as errors".into()));
    }
    out
}

/// A `responseData` answer as a `fallback` for an open circuit.
fn fallback(data: &Node) -> Result<Fallback, String> {
    let status = data
        .get("statusCode")
        .and_then(Node::text)
        .map_or(Ok(200), |s| s.trim().parse::<u16>())
        .map_err(|_| "`statusCode` is not a status".to_string())?;
    let mut headers = serde_json::Map::new();
    for h in data.get("header").and_then(Node::items).unwrap_or_default() {
        let Some(key) = h.get("key").and_then(Node::text) else {
            continue;
        };
        let values = texts(h.get("value")).unwrap_or_default();
        headers.insert(key.to_string(), values.join(", ").into());
    }
    let body = match data.get("body").and_then(Node::text) {
        None => String::new(),
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| "`body` is not base64 (protobuf's JSON form of bytes)".to_string())?;
            String::from_utf8(bytes).map_err(|_| "`body` is not text".to_string())?
        }
    };
    let fallback: Fallback = typed(serde_json::json!({
        "on": ["circuit_open"], "status": status, "headers": headers, "body": body
    }))
    .map_err(|e| e.to_string())?;
    if !(200..=599).contains(&fallback.status) {
        return Err(format!("`statusCode: {status}` is outside 200-599"));
    }
    Ok(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends() {
        assert_eq!(
            backend("discovery:///users", false).unwrap(),
            Backend::Discovery("users".into())
        );
        assert_eq!(
            backend("discovery://default/users", false).unwrap(),
            Backend::Discovery("users".into())
        );
        assert_eq!(
            backend("127.0.0.1:8000", false).unwrap(),
            Backend::Direct("127.0.0.1:8000".into())
        );
        assert_eq!(
            backend("direct:///10.0.0.1:9000", false).unwrap(),
            Backend::Direct("10.0.0.1:9000".into())
        );
        assert_eq!(
            backend("localhost", true).unwrap(),
            Backend::Direct("localhost:443".into())
        );
        assert!(backend("http://x:1", false).is_err());
        assert!(backend("discovery:///", false).is_err());
    }
}
