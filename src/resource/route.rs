//! The `Route` resource: which requests it takes and where they go.

use super::fields::{check_header_name, is_false, is_zero, Problems, SelectorText, Text};
use super::transcode::GrpcTranscode;
use crate::router::{HostPattern, PathPattern, ValueMatcher, METHODS};
use crate::units::Span;
use gatehouse_plugins::rate_limit::shared::{OnStoreError, Scope};
use gatehouse_plugins::rate_limit::{KEY_FORMS, ON_STORE_ERROR_ALONE};
use gatehouse_plugins::selector::{Forms, SelectorKind};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub id: String,
    /// Higher wins; ties go to the more specific path, then the longer host.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Vec<WeightedUpstream>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<SelectorText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Vec<CanaryRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
    /// Plugins from the registry (SPEC §12), run in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginUse>,
    /// Accepts WebSocket upgrades (SPEC §9): the handshake goes through the route's plugins
    /// like any request, then frames are relayed both ways.
    #[serde(default, skip_serializing_if = "is_false")]
    pub websocket: bool,
    /// REST calls turned into gRPC calls to the route's gRPC upstream (SPEC §9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_transcode: Option<GrpcTranscode>,
    /// The degraded answer given instead of the listed errors (SPEC §11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
}

/// A route's degraded answer: what its clients get instead of an error for the listed
/// reasons (an empty list rather than a 503, say).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    /// Reasons, from [`FallbackReason`]'s names; strings, so an unknown one is named.
    pub on: Vec<String>,
    #[serde(default = "Fallback::default_status")]
    pub status: u16,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Text>,
    #[serde(default)]
    pub body: String,
}

impl Fallback {
    fn default_status() -> u16 {
        200
    }
}

/// Why a request failed, as `fallback.on` names it: the error codes of SPEC §4 a fallback
/// may stand in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FallbackReason {
    CircuitOpen,
    Overloaded,
    RateLimited,
    NoUpstream,
    UpstreamTimeout,
    UpstreamError,
}

impl FallbackReason {
    pub const ALL: [FallbackReason; 6] = [
        FallbackReason::CircuitOpen,
        FallbackReason::Overloaded,
        FallbackReason::RateLimited,
        FallbackReason::NoUpstream,
        FallbackReason::UpstreamTimeout,
        FallbackReason::UpstreamError,
    ];

    /// The reason's name: the error code of the answer it stands in for.
    pub fn name(self) -> &'static str {
        match self {
            FallbackReason::CircuitOpen => "circuit_open",
            FallbackReason::Overloaded => "overloaded",
            FallbackReason::RateLimited => "rate_limited",
            FallbackReason::NoUpstream => "no_upstream",
            FallbackReason::UpstreamTimeout => "upstream_timeout",
            FallbackReason::UpstreamError => "upstream_error",
        }
    }

    pub fn parse(name: &str) -> Option<FallbackReason> {
        FallbackReason::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// One entry of a route's `plugins:` list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginUse {
    pub name: String,
    /// Checked by the plugin's factory; its errors are named under `plugins[i].config`.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub config: serde_json::Value,
}

impl PluginUse {
    /// Builds the plugin from the registry in force, from its configuration alone (as
    /// admission checks it); the error names the field at fault.
    pub fn build(&self, at: usize) -> Result<Box<dyn gatehouse_plugins::Plugin>, (String, String)> {
        let built = gatehouse_plugins::registry::global().build(&self.name, &self.config);
        built.map_err(|e| Self::located(at, e))
    }

    /// Builds the plugin with the compiled resources it may use; errors as [`Self::build`].
    pub fn build_with(
        &self,
        at: usize,
        resources: &dyn gatehouse_plugins::registry::Resources,
    ) -> Result<Box<dyn gatehouse_plugins::Plugin>, (String, String)> {
        let registry = gatehouse_plugins::registry::global();
        let built = registry.build_with(&self.name, &self.config, resources);
        built.map_err(|e| Self::located(at, e))
    }

    fn located(at: usize, e: gatehouse_plugins::registry::BuildError) -> (String, String) {
        use gatehouse_plugins::registry::BuildError;
        match e {
            BuildError::Unknown(..) => (format!("plugins[{at}].name"), e.to_string()),
            BuildError::Config(c) if c.field.is_empty() => {
                (format!("plugins[{at}].config"), c.message)
            }
            BuildError::Config(c) => (format!("plugins[{at}].config.{}", c.field), c.message),
        }
    }
}

/// Checks every entry of a `plugins:` list by building it, each error named where the entry
/// sits (`plugins[1].config.max_body`).
pub(super) fn check_plugins(plugins: &[PluginUse], p: &mut Problems) {
    for (at, plugin) in plugins.iter().enumerate() {
        if let Err((field, message)) = plugin.build(at) {
            p.add(field, message);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Text>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, Text>,
    /// The path patterns match any case (SPEC §8); matching is case-sensitive otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub case_insensitive: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRules {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, Text>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub rate: u32,
    pub per: Span,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default = "default_limit_key")]
    pub key: SelectorText,
    /// Keys the limiter keeps at most; past it the stalest go (SPEC §8).
    #[serde(default = "default_max_keys")]
    pub max_keys: u32,
    /// `local` (each instance counts alone) or `cluster` (the fleet counts in Redis).
    #[serde(default, skip_serializing_if = "is_default")]
    pub scope: Scope,
    /// What a `cluster` limit does when Redis gives no answer: `local`, `allow` or `deny`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub on_store_error: OnStoreError,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn default_limit_key() -> SelectorText {
    SelectorText::new("client_ip")
}

fn default_max_keys() -> u32 {
    gatehouse_plugins::rate_limit::DEFAULT_MAX_KEYS as u32
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedUpstream {
    pub upstream: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryRule {
    #[serde(rename = "match")]
    pub matcher: CanaryMatch,
    pub upstream: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryMatch {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Text>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, Text>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cookies: BTreeMap<String, Text>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default = "Timeouts::default_connect")]
    pub connect: Span,
    #[serde(default = "Timeouts::default_read")]
    pub read: Span,
    #[serde(default = "Timeouts::default_write")]
    pub write: Span,
    /// How long a WebSocket tunnel may stay silent before it is closed.
    #[serde(default = "Timeouts::default_idle")]
    pub idle: Span,
}

impl Timeouts {
    fn default_connect() -> Span {
        Span::secs(5)
    }
    fn default_read() -> Span {
        Span::secs(60)
    }
    fn default_write() -> Span {
        Span::secs(60)
    }
    fn default_idle() -> Span {
        Span::secs(3600)
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Timeouts::default_connect(),
            read: Timeouts::default_read(),
            write: Timeouts::default_write(),
            idle: Timeouts::default_idle(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Text>,
}

/// The field of a route that names an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefField {
    Upstream,
    Weight(usize),
    Canary(usize),
    /// A field of the config of `plugins[i]` (a mirror's `upstream`).
    Plugin(usize, String),
}

impl std::fmt::Display for RefField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefField::Upstream => f.write_str("upstream"),
            RefField::Weight(i) => write!(f, "weights[{i}].upstream"),
            RefField::Canary(i) => write!(f, "canary[{i}].upstream"),
            RefField::Plugin(i, field) => write!(f, "plugins[{i}].config.{field}"),
        }
    }
}

/// The selectors `sticky` takes (SPEC §3): the ones that name a user. `route` or `path`
/// would send everybody, or everybody on one page, to one side.
pub const STICKY_FORMS: Forms = Forms(&[
    SelectorKind::Consumer,
    SelectorKind::ClientIp,
    SelectorKind::Header,
    SelectorKind::Cookie,
]);

/// The most extra attempts a route may ask for: beyond this, retries amplify outages.
pub const MAX_RETRIES: u32 = 10;

impl Route {
    /// The upstream ids this route names, for reference checks, with the field naming each
    /// (rendered only when a reference is reported): its targets, and the upstreams its
    /// plugins send to.
    pub fn upstream_refs(&self) -> impl Iterator<Item = (RefField, Cow<'_, str>)> {
        let direct = self
            .upstream
            .iter()
            .map(|u| (RefField::Upstream, Cow::Borrowed(u.as_str())));
        let weighted = self
            .weights
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, w)| (RefField::Weight(i), Cow::Borrowed(w.upstream.as_str())));
        let canary = self
            .canary
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, c)| (RefField::Canary(i), Cow::Borrowed(c.upstream.as_str())));
        direct
            .chain(weighted)
            .chain(canary)
            .chain(self.plugin_upstreams())
    }

    /// The upstreams the route's plugins name, by their factories' say.
    fn plugin_upstreams(&self) -> impl Iterator<Item = (RefField, Cow<'_, str>)> {
        use gatehouse_plugins::registry::{self, Reference};
        let refs: Vec<(RefField, Cow<'_, str>)> = self
            .plugins
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                registry::global()
                    .references(&p.name, &p.config)
                    .into_iter()
                    .map(move |r| match r {
                        Reference::Upstream { field, id } => {
                            (RefField::Plugin(i, field), Cow::Owned(id))
                        }
                    })
            })
            .collect();
        refs.into_iter()
    }

    /// Field checks that need nothing but the route itself.
    pub(super) fn check(&self, p: &mut Problems) {
        self.check_match(p);
        if let Some(rewrite) = &self.rewrite {
            if let Some(path) = &rewrite.path {
                if !path.starts_with('/') || path.contains(['?', '#']) {
                    p.add("rewrite.path", "must start with `/` and hold no `?` or `#`");
                }
            }
            if rewrite.strip_prefix == Some(0) {
                p.add("rewrite.strip_prefix", "must be at least 1 (or left out)");
            }
        }
        for (side, rules) in [
            ("request_headers", &self.request_headers),
            ("response_headers", &self.response_headers),
        ] {
            if let Some(rules) = rules {
                check_header_rules(side, rules, p);
            }
        }
        self.check_target(p);
        check_plugins(&self.plugins, p);
        if let Some(limit) = &self.rate_limit {
            if limit.rate == 0 {
                p.add("rate_limit.rate", "must be at least 1");
            }
            if limit.per.0.is_zero() {
                p.add("rate_limit.per", "must be more than 0s");
            }
            if limit.burst == Some(0) {
                p.add("rate_limit.burst", "must be at least 1");
            }
            if limit.max_keys == 0 {
                p.add("rate_limit.max_keys", "must be at least 1");
            }
            if let Err(e) = limit.key.selector(KEY_FORMS) {
                p.add("rate_limit.key", e.to_string());
            }
            if limit.scope == Scope::Local && limit.on_store_error != OnStoreError::Local {
                p.add("rate_limit.on_store_error", ON_STORE_ERROR_ALONE);
            }
        }
        if let Some(t) = &self.timeouts {
            for (name, span) in [
                ("connect", t.connect),
                ("read", t.read),
                ("write", t.write),
                ("idle", t.idle),
            ] {
                if span.0.is_zero() {
                    p.add(format!("timeouts.{name}"), "must be more than 0s");
                }
            }
        }
        if let Some(retries) = self.retries {
            if retries > MAX_RETRIES {
                p.add("retries", format!("must be at most {MAX_RETRIES}"));
            }
        }
        if let Some(id) = &self.auth {
            if id.is_empty() {
                p.add("auth", "must name an AuthPolicy");
            }
        }
        if let Some(transcode) = &self.grpc_transcode {
            self.check_transcode(transcode, p);
        }
        if let Some(fallback) = &self.fallback {
            self.check_fallback(fallback, p);
        }
    }

    fn check_fallback(&self, fallback: &Fallback, p: &mut Problems) {
        if self.direct_response.is_some() {
            p.add("fallback", "does not apply to a `direct_response` route");
        }
        if fallback.on.is_empty() {
            p.add("fallback.on", "name at least one reason");
        }
        for (i, name) in fallback.on.iter().enumerate() {
            if FallbackReason::parse(name).is_none() {
                let names: Vec<&str> = FallbackReason::ALL.iter().map(|r| r.name()).collect();
                p.add(
                    format!("fallback.on[{i}]"),
                    format!("`{name}` is not one of {}", names.join(", ")),
                );
            } else if fallback.on[..i].contains(name) {
                p.add(
                    format!("fallback.on[{i}]"),
                    format!("`{name}` is listed twice"),
                );
            }
        }
        if !(200..=599).contains(&fallback.status) {
            p.add("fallback.status", "must be between 200 and 599");
        }
        if matches!(fallback.status, 204 | 304) && !fallback.body.is_empty() {
            p.add("fallback.body", "a 204 or 304 answer has no body");
        }
        for (name, value) in &fallback.headers {
            let field = format!("fallback.headers.{name}");
            if let Err(e) = check_header_name(name) {
                p.add(&field, e);
            }
            const FRAMING: [&str; 5] = [
                "content-length",
                "transfer-encoding",
                "connection",
                "keep-alive",
                "upgrade",
            ];
            if FRAMING.iter().any(|h| name.eq_ignore_ascii_case(h)) {
                p.add(&field, "the gateway frames the answer itself");
            }
            if http::HeaderValue::from_str(value.as_str()).is_err() {
                p.add(field, "not a valid header value");
            }
        }
    }

    fn check_transcode(&self, transcode: &GrpcTranscode, p: &mut Problems) {
        for (given, name) in [
            (self.rewrite.is_some(), "rewrite"),
            (self.direct_response.is_some(), "direct_response"),
            (self.websocket, "websocket"),
        ] {
            if given {
                p.add(
                    "grpc_transcode",
                    format!("a transcoded route cannot have `{name}`: the binding makes the call"),
                );
            }
        }
        let before = p.0.len();
        transcode.check(p);
        if p.0.len() == before {
            // The descriptors are read now, so a selector that does not resolve is named by
            // `validate` and `apply` as by the gateway.
            if let Err(errors) = transcode.resolve() {
                p.0.extend(errors);
            }
        }
    }

    fn check_match(&self, p: &mut Problems) {
        let m = &self.matcher;
        if m.paths.is_empty() {
            p.add("match.paths", "at least one path is required");
        }
        for (i, path) in m.paths.iter().enumerate() {
            if let Err(e) = PathPattern::parse(path) {
                p.add(format!("match.paths[{i}]"), e);
            }
        }
        for (i, host) in m.hosts.iter().enumerate() {
            if let Err(e) = HostPattern::parse(host) {
                p.add(format!("match.hosts[{i}]"), e);
            }
        }
        for (i, method) in m.methods.iter().enumerate() {
            if !METHODS.contains(&method.to_ascii_uppercase().as_str()) {
                p.add(
                    format!("match.methods[{i}]"),
                    format!("`{method}` is not one of {}", METHODS.join(", ")),
                );
            }
        }
        check_value_map("match.headers", &m.headers, true, p);
        check_value_map("match.query", &m.query, false, p);
    }

    fn check_target(&self, p: &mut Problems) {
        let targets = [
            self.upstream.is_some(),
            self.weights.is_some(),
            self.direct_response.is_some(),
        ];
        match targets.iter().filter(|t| **t).count() {
            0 => p.add(
                "upstream",
                "a route needs one of `upstream`, `weights` or `direct_response`",
            ),
            1 => {}
            _ => p.add(
                "upstream",
                "give only one of `upstream`, `weights` or `direct_response`",
            ),
        }
        if let Some(weights) = &self.weights {
            if weights.is_empty() {
                p.add("weights", "at least one upstream is required");
            } else if weights.iter().all(|w| w.weight == 0) {
                p.add("weights", "at least one weight must be more than 0");
            }
        }
        if let Some(sticky) = &self.sticky {
            if self.weights.is_none() {
                p.add("sticky", "only applies to a `weights` split");
            }
            if let Err(e) = sticky.selector(STICKY_FORMS) {
                p.add("sticky", e.to_string());
            }
        }
        if let Some(rules) = &self.canary {
            if self.direct_response.is_some() {
                p.add("canary", "does not apply to a `direct_response` route");
            }
            for (i, rule) in rules.iter().enumerate() {
                let m = &rule.matcher;
                if m.headers.is_empty() && m.query.is_empty() && m.cookies.is_empty() {
                    p.add(
                        format!("canary[{i}].match"),
                        "needs at least one of headers, query or cookies",
                    );
                }
                check_value_map(&format!("canary[{i}].match.headers"), &m.headers, true, p);
                check_value_map(&format!("canary[{i}].match.query"), &m.query, false, p);
                check_value_map(&format!("canary[{i}].match.cookies"), &m.cookies, false, p);
            }
        }
        if let Some(d) = &self.direct_response {
            if !(100..=599).contains(&d.status) {
                p.add("direct_response.status", "must be between 100 and 599");
            }
            for (name, value) in &d.headers {
                let field = format!("direct_response.headers.{name}");
                if let Err(e) = check_header_name(name) {
                    p.add(&field, e);
                }
                if http::HeaderValue::from_str(value.as_str()).is_err() {
                    p.add(field, "not a valid header value");
                }
            }
        }
    }
}

fn check_value_map(field: &str, map: &BTreeMap<String, Text>, headers: bool, p: &mut Problems) {
    for (name, value) in map {
        let field = format!("{field}.{name}");
        if headers {
            if let Err(e) = check_header_name(name) {
                p.add(&field, e);
            }
        } else if name.is_empty() {
            p.add(&field, "name must not be empty");
        }
        if let Err(e) = ValueMatcher::parse(value.as_str()) {
            p.add(field, e);
        }
    }
}

fn check_header_rules(side: &str, rules: &HeaderRules, p: &mut Problems) {
    for (name, value) in &rules.set {
        let field = format!("{side}.set.{name}");
        if let Err(e) = check_header_name(name) {
            p.add(&field, e);
        }
        if let Err(e) = gatehouse_plugins::template::Template::parse(value.as_str()) {
            p.add(field, e.to_string());
        }
    }
    for (i, name) in rules.remove.iter().enumerate() {
        if let Err(e) = check_header_name(name) {
            p.add(format!("{side}.remove[{i}]"), e);
        }
    }
}
