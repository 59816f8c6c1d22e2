//! A route compiled for the request path.

use super::Transcoder;
use super::{CompiledPolicy, GlobalPlugins};
use crate::resource::transcode::GrpcTranscode;
use crate::resource::PluginUse;
use crate::resource::{DirectResponse, RefField, Route};
use crate::router::{RouteMatcher, RouteSpec};
use crate::telemetry::metrics::RouteMetrics;
use crate::upstream::{UpstreamChoice, UpstreamTarget};
use bytes::Bytes;
use gatehouse_plugins::auth::Authenticator;
use gatehouse_plugins::rate_limit::shared::LimitStore;
use gatehouse_plugins::registry::{self, BuildError, Resources, UpstreamSender};
use gatehouse_plugins::{LocalAnswer, Plugin, PluginChain};
use http::{HeaderName, HeaderValue, StatusCode};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// What a matched route does with a request.
#[derive(Debug)]
pub enum Action {
    Proxy(UpstreamChoice),
    /// `direct_response`, ready to write: the same answer a plugin gives instead of proxying.
    Respond(LocalAnswer),
}

/// `rewrite`, applied to the path sent upstream.
#[derive(Debug, Clone, Default)]
pub struct PathRewrite {
    pub strip_prefix: usize,
    pub path: Option<String>,
}

impl PathRewrite {
    /// The upstream path and query for a client path and query.
    pub fn apply(&self, path: &str, query: Option<&str>) -> String {
        let mut out = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
        match &self.path {
            Some(fixed) => out.push_str(fixed),
            None => {
                let mut rest = path;
                for _ in 0..self.strip_prefix {
                    let trimmed = rest.strip_prefix('/').unwrap_or(rest);
                    rest = match trimmed.find('/') {
                        Some(i) => &trimmed[i..],
                        None => "",
                    };
                }
                if rest.is_empty() {
                    out.push('/');
                } else {
                    out.push_str(rest);
                }
            }
        }
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RouteTimeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    /// A WebSocket tunnel's longest silence.
    pub idle: Duration,
}

/// A route ready to serve: everything a request needs is resolved and parsed.
#[derive(Debug)]
pub struct CompiledRoute {
    pub id: Arc<str>,
    pub spec: Arc<Route>,
    pub matcher: RouteMatcher,
    pub action: Action,
    pub rewrite: Option<PathRewrite>,
    pub plugins: PluginChain,
    /// The route's own plugins, one per entry of [`entries`] in its order: the next version
    /// of the route keeps each whose entry is unchanged, with whatever state it holds (a
    /// limiter's buckets, a Wasm plugin's instances).
    pub own: Vec<Arc<dyn Plugin>>,
    /// The global rules' plugins this route's chain starts with.
    pub globals: GlobalPlugins,
    /// The route's auth policy, shared with the other routes that name it.
    pub auth: Option<Arc<Authenticator>>,
    pub timeouts: RouteTimeouts,
    pub retries: u32,
    /// The path pattern reported as `http.route` in traces: the route's first path.
    pub pattern: Option<Arc<str>>,
    pub metrics: RouteMetrics,
    /// REST calls made gRPC calls (SPEC §9), when the route has `grpc_transcode`.
    pub transcoder: Option<Arc<Transcoder>>,
    /// The upstreams the route's plugins send to (a mirror's).
    pub followed: Vec<Arc<UpstreamTarget>>,
    /// `fallback`, if set.
    pub fallback: Option<Box<super::FallbackAnswer>>,
}

impl CompiledRoute {
    /// Compiles `spec` against the compiled upstreams. References were resolved by admission,
    /// so a missing one here is a bug reported as an error, not a panic. The chain starts
    /// with `globals`, so within a stage they run before the route's own plugins.
    pub fn compile(
        spec: Arc<Route>,
        upstreams: &HashMap<String, Arc<UpstreamTarget>>,
        policies: &HashMap<String, CompiledPolicy>,
        globals: &GlobalPlugins,
        previous: Option<&CompiledRoute>,
    ) -> Result<CompiledRoute, String> {
        let action = match (&spec.direct_response, &spec.upstream) {
            (Some(direct), _) => Action::Respond(direct_reply(direct)?),
            (None, _) => Action::Proxy(UpstreamChoice::compile(&spec, upstreams)?),
        };
        let rewrite = spec.rewrite.as_ref().map(|r| PathRewrite {
            strip_prefix: r.strip_prefix.unwrap_or(0),
            path: r.path.clone(),
        });
        let auth = match &spec.auth {
            Some(id) => match policies.get(id).map(|p| &p.auth) {
                Some(Ok(auth)) => Some(auth.clone()),
                Some(Err(_)) => return Err(format!("auth: policy `{id}` was refused")),
                None => return Err(format!("auth: no policy `{id}`")),
            },
            None => None,
        };
        let transcoder = match &spec.grpc_transcode {
            Some(t) => Some(Arc::new(transcoder(t, &action, previous)?)),
            None => None,
        };
        let compiled = Compiled {
            route: &spec.id,
            policies,
            upstreams,
        };
        let own = own_plugins(&spec, previous, &compiled)?;
        // The upstreams the route's plugins send to: a change of one compiles the route
        // again, so its plugins send to the version in force.
        let followed = spec
            .upstream_refs()
            .filter_map(|(field, id)| match field {
                RefField::Plugin(..) => upstreams.get(&*id).cloned(),
                _ => None,
            })
            .collect();
        let mut plugins: Vec<Box<dyn Plugin>> = globals.entries().collect();
        plugins.extend(own.iter().map(|p| Box::new(p.clone()) as Box<dyn Plugin>));
        let t = spec.timeouts.unwrap_or_default();
        let m = &spec.matcher;
        let headers: Vec<(&str, &str)> = m
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let query: Vec<(&str, &str)> = m
            .query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let matcher = RouteMatcher::compile(RouteSpec {
            priority: spec.priority,
            paths: &m.paths,
            hosts: &m.hosts,
            methods: &m.methods,
            headers: &headers,
            query: &query,
            case_insensitive: m.case_insensitive,
        })
        .map_err(|e| format!("match: {e}"))?;
        let fallback = match &spec.fallback {
            Some(f) => Some(Box::new(super::FallbackAnswer::compile(&spec.id, f)?)),
            None => None,
        };
        let id: Arc<str> = spec.id.as_str().into();
        Ok(CompiledRoute {
            fallback,
            metrics: RouteMetrics::new(id.clone()),
            pattern: spec.matcher.paths.first().map(|p| Arc::from(p.as_str())),
            id,
            matcher,
            action,
            rewrite,
            plugins: PluginChain::new(plugins),
            own,
            globals: globals.clone(),
            auth,
            timeouts: RouteTimeouts {
                connect: t.connect.0,
                read: t.read.0,
                write: t.write.0,
                idle: t.idle.0,
            },
            retries: spec.retries.unwrap_or(0),
            transcoder,
            followed,
            spec,
        })
    }

    /// Every upstream this route may proxy to.
    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<UpstreamTarget>> {
        match &self.action {
            Action::Proxy(choice) => Some(choice.targets()),
            Action::Respond(_) => None,
        }
        .into_iter()
        .flatten()
    }
}

/// One plugin of a route: a registry entry, and where its errors are reported.
struct Entry {
    plugin: PluginUse,
    /// The route field it comes from (`rate_limit`), or `plugins[i]`.
    field: Field,
    /// Whether the next version of the route may keep the plugin while the entry is the
    /// same. Not for one that follows another resource (an auth policy), which may change
    /// under an unchanged entry.
    keep: bool,
}

#[derive(Clone, Copy)]
enum Field {
    Auth,
    RateLimit,
    Headers,
    Listed(usize),
}

impl Field {
    /// The route field an error of the plugin's config field `inner` is about.
    fn name(self, inner: &str) -> String {
        let join = |outer: &str| {
            if inner.is_empty() {
                outer.to_string()
            } else {
                format!("{outer}.{inner}")
            }
        };
        match self {
            Field::Auth => "auth".into(),
            Field::RateLimit => join("rate_limit"),
            Field::Headers => match inner.split_once('.') {
                Some((side, rest)) => format!("{side}_headers.{rest}"),
                None => format!("{inner}_headers"),
            },
            Field::Listed(at) => join(&format!("plugins[{at}].config")),
        }
    }
}

/// Every plugin a route runs of its own, as registry entries: its fixed fields first
/// (`auth`, `rate_limit`, `request_headers`/`response_headers` are the registry's `auth`,
/// `rate_limit` and `header_rewrite`), then its `plugins:` list.
fn entries(spec: &Route) -> Vec<Entry> {
    let entry = |name: &str, config: serde_json::Value, field, keep| Entry {
        plugin: PluginUse {
            name: name.into(),
            config,
        },
        field,
        keep,
    };
    let mut out = Vec::with_capacity(3 + spec.plugins.len());
    if let Some(policy) = &spec.auth {
        out.push(entry(
            "auth",
            serde_json::json!({ "policy": policy }),
            Field::Auth,
            false,
        ));
    }
    if let Some(limit) = &spec.rate_limit {
        let config = serde_json::to_value(limit).unwrap_or_default();
        out.push(entry("rate_limit", config, Field::RateLimit, true));
    }
    if spec.request_headers.is_some() || spec.response_headers.is_some() {
        let config = serde_json::json!({
            "request": spec.request_headers,
            "response": spec.response_headers,
        });
        let config = strip_nulls(config);
        out.push(entry("header_rewrite", config, Field::Headers, true));
    }
    for (at, plugin) in spec.plugins.iter().enumerate() {
        // A plugin that names other resources follows them: built again with the route.
        let follows = !registry::global()
            .references(&plugin.name, &plugin.config)
            .is_empty();
        out.push(Entry {
            plugin: plugin.clone(),
            field: Field::Listed(at),
            keep: !follows,
        });
    }
    out
}

/// A missing side of the header rules is no rules at all.
/// The route's transcoding, which only a gRPC upstream can answer.
fn transcoder(
    spec: &GrpcTranscode,
    action: &Action,
    previous: Option<&CompiledRoute>,
) -> Result<Transcoder, String> {
    if let Action::Proxy(choice) = action {
        if let Some(other) = choice.targets().find(|t| !t.spec.scheme.grpc()) {
            return Err(format!(
                "grpc_transcode: upstream `{}` must have scheme grpc or grpcs",
                other.id
            ));
        }
    }
    let previous = previous.and_then(|p| p.transcoder.as_deref());
    Transcoder::compile(spec, previous).map_err(|errors| {
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        errors.join("; ")
    })
}

fn strip_nulls(mut value: serde_json::Value) -> serde_json::Value {
    if let Some(map) = value.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    value
}

/// The compiled auth policies and upstreams, as the registry's plugins see them.
struct Compiled<'a> {
    route: &'a str,
    policies: &'a HashMap<String, CompiledPolicy>,
    upstreams: &'a HashMap<String, Arc<UpstreamTarget>>,
}

impl Resources for Compiled<'_> {
    fn auth_policy(&self, id: &str) -> Option<Arc<Authenticator>> {
        self.policies.get(id)?.auth.as_ref().ok().cloned()
    }

    fn upstream(&self, id: &str) -> Option<Arc<dyn UpstreamSender>> {
        let target = self.upstreams.get(id)?.clone();
        Some(Arc::new(crate::upstream::Sender(target)))
    }

    fn route(&self) -> Option<&str> {
        Some(self.route)
    }

    fn limit_store(&self) -> Option<Arc<dyn LimitStore>> {
        crate::fleet::limits::shared_store()
    }
}

/// Builds the route's own plugins through the registry, keeping the previous version's
/// plugin for every entry that may be kept and did not change (each at most once: two
/// equal entries are two plugins).
fn own_plugins(
    spec: &Route,
    previous: Option<&CompiledRoute>,
    resources: &dyn Resources,
) -> Result<Vec<Arc<dyn Plugin>>, String> {
    let old_entries = previous.map(|old| entries(&old.spec)).unwrap_or_default();
    let mut reusable: Vec<Option<(&Entry, &Arc<dyn Plugin>)>> = match previous {
        Some(old) => old_entries.iter().zip(&old.own).map(Some).collect(),
        None => Vec::new(),
    };
    let wanted = entries(spec);
    let mut own = Vec::with_capacity(wanted.len());
    for entry in &wanted {
        let kept = reusable
            .iter_mut()
            .find(|slot| {
                slot.is_some_and(|(old, _)| old.keep && entry.keep && old.plugin == entry.plugin)
            })
            .and_then(Option::take)
            .map(|(_, plugin)| plugin.clone());
        let plugin = match kept {
            Some(plugin) => plugin,
            None => Arc::from(build(entry, resources)?),
        };
        own.push(plugin);
    }
    Ok(own)
}

fn build(entry: &Entry, resources: &dyn Resources) -> Result<Box<dyn Plugin>, String> {
    registry::global()
        .build_with(&entry.plugin.name, &entry.plugin.config, resources)
        .map_err(|e| match (e, entry.field) {
            (e @ BuildError::Unknown(..), Field::Listed(at)) => format!("plugins[{at}].name: {e}"),
            (BuildError::Config(c), field) => format!("{}: {}", field.name(&c.field), c.message),
            (e, field) => format!("{}: {e}", field.name("")),
        })
}

fn direct_reply(direct: &DirectResponse) -> Result<LocalAnswer, String> {
    let mut headers = Vec::with_capacity(direct.headers.len());
    for (name, value) in &direct.headers {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| format!("direct_response.headers.{name}: {e}"))?;
        let value = HeaderValue::from_str(value.as_str())
            .map_err(|e| format!("direct_response.headers.{name}: {e}"))?;
        headers.push((header, value));
    }
    let status =
        StatusCode::from_u16(direct.status).map_err(|e| format!("direct_response.status: {e}"))?;
    Ok(LocalAnswer {
        status,
        body: Bytes::from(direct.body.clone()),
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_prefix_drops_whole_segments_and_keeps_the_query() {
        let r = PathRewrite {
            strip_prefix: 2,
            path: None,
        };
        assert_eq!(r.apply("/api/v1/users/7", Some("a=1")), "/users/7?a=1");
        assert_eq!(r.apply("/api/v1", None), "/");
        assert_eq!(r.apply("/api", None), "/");
        assert_eq!(r.apply("/api/v1/", None), "/");
    }

    #[test]
    fn path_replacement_keeps_the_query() {
        let r = PathRewrite {
            strip_prefix: 0,
            path: Some("/v2/users".into()),
        };
        assert_eq!(r.apply("/anything/here", Some("q=x")), "/v2/users?q=x");
        assert_eq!(r.apply("/anything", None), "/v2/users");
    }
}
