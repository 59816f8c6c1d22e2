//! A route compiled for the request path.

use super::{CompiledPolicy, GlobalPlugins};
use crate::resource::{DirectResponse, Route};
use crate::router::{RouteMatcher, RouteSpec};
use crate::telemetry::metrics::RouteMetrics;
use crate::upstream::{UpstreamChoice, UpstreamTarget};
use bytes::Bytes;
use gatehouse_plugins::auth::{Authenticate, Authenticator};
use gatehouse_plugins::headers::{HeaderEdits, HeaderRewrite};
use gatehouse_plugins::rate_limit::{RateLimitPlugin, RateLimitState, KEY_FORMS};
use gatehouse_plugins::template::Template;
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
    /// The plugins built from the route's `plugins:` list, in its order: the next version
    /// of the route keeps each whose entry is unchanged, with whatever state it holds.
    pub listed: Vec<Arc<dyn Plugin>>,
    /// The global rules' plugins this route's chain starts with.
    pub globals: GlobalPlugins,
    /// The route's limiter state, shared with its rate-limit plugin; carried over to the
    /// next version of the route while `rate_limit` does not change.
    pub limiter: Option<Arc<RateLimitState>>,
    /// The route's auth policy, shared with the other routes that name it.
    pub auth: Option<Arc<Authenticator>>,
    pub timeouts: RouteTimeouts,
    pub retries: u32,
    /// The path pattern reported as `http.route` in traces: the route's first path.
    pub pattern: Option<Arc<str>>,
    pub metrics: RouteMetrics,
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
        let mut plugins: Vec<Box<dyn Plugin>> = globals.entries().collect();
        let auth = match &spec.auth {
            Some(id) => match policies.get(id).map(|p| &p.auth) {
                Some(Ok(auth)) => Some(auth.clone()),
                Some(Err(_)) => return Err(format!("auth: policy `{id}` was refused")),
                None => return Err(format!("auth: no policy `{id}`")),
            },
            None => None,
        };
        if let Some(auth) = &auth {
            plugins.push(Box::new(Authenticate { auth: auth.clone() }));
        }
        let mut limiter = None;
        if let Some(limit) = &spec.rate_limit {
            let kept = previous
                .filter(|old| old.spec.rate_limit.as_ref() == Some(limit))
                .and_then(|old| old.limiter.clone());
            let state = match kept {
                Some(state) => state,
                None => Arc::new(
                    RateLimitState::new(
                        limit.rate,
                        limit.per.0,
                        limit.burst.unwrap_or(limit.rate),
                        limit.max_keys as usize,
                    )
                    .ok_or("rate_limit: rate, per, burst and max_keys must be positive")?,
                ),
            };
            let key = limit
                .key
                .selector(KEY_FORMS)
                .map_err(|e| format!("rate_limit.key: {e}"))?
                .clone();
            plugins.push(Box::new(RateLimitPlugin {
                state: state.clone(),
                key,
            }));
            limiter = Some(state);
        }
        let listed = listed_plugins(&spec, previous)?;
        plugins.extend(
            listed
                .iter()
                .map(|p| Box::new(p.clone()) as Box<dyn Plugin>),
        );
        let headers = HeaderRewrite {
            request: edits("request_headers", spec.request_headers.as_ref())?,
            response: edits("response_headers", spec.response_headers.as_ref())?,
        };
        if !headers.request.is_empty() || !headers.response.is_empty() {
            plugins.push(Box::new(headers));
        }
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
        let id: Arc<str> = spec.id.as_str().into();
        Ok(CompiledRoute {
            metrics: RouteMetrics::new(id.clone()),
            pattern: spec.matcher.paths.first().map(|p| Arc::from(p.as_str())),
            id,
            matcher,
            action,
            rewrite,
            plugins: PluginChain::new(plugins),
            listed,
            globals: globals.clone(),
            limiter,
            auth,
            timeouts: RouteTimeouts {
                connect: t.connect.0,
                read: t.read.0,
                write: t.write.0,
            },
            retries: spec.retries.unwrap_or(0),
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

/// Builds the route's `plugins:` list, keeping the previous version's plugin for every entry
/// that did not change (each at most once: two equal entries are two plugins).
fn listed_plugins(
    spec: &Route,
    previous: Option<&CompiledRoute>,
) -> Result<Vec<Arc<dyn Plugin>>, String> {
    let mut reusable: Vec<Option<(&crate::resource::PluginUse, &Arc<dyn Plugin>)>> = previous
        .map(|old| old.spec.plugins.iter().zip(&old.listed).map(Some).collect())
        .unwrap_or_default();
    let mut listed = Vec::with_capacity(spec.plugins.len());
    for (at, entry) in spec.plugins.iter().enumerate() {
        let kept = reusable
            .iter_mut()
            .find(|slot| slot.is_some_and(|(old, _)| old == entry))
            .and_then(Option::take)
            .map(|(_, plugin)| plugin.clone());
        let plugin = match kept {
            Some(plugin) => plugin,
            None => Arc::from(
                entry
                    .build(at)
                    .map_err(|(field, e)| format!("{field}: {e}"))?,
            ),
        };
        listed.push(plugin);
    }
    Ok(listed)
}

fn edits(side: &str, rules: Option<&crate::resource::HeaderRules>) -> Result<HeaderEdits, String> {
    let mut out = HeaderEdits::default();
    let Some(rules) = rules else {
        return Ok(out);
    };
    for (name, value) in &rules.set {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| format!("{side}.set.{name}: {e}"))?;
        let template =
            Template::parse(value.as_str()).map_err(|e| format!("{side}.set.{name}: {e}"))?;
        out.set.push((header, template));
    }
    for name in &rules.remove {
        out.remove.push(
            HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("{side}.remove: {e}"))?,
        );
    }
    Ok(out)
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
