use crate::{Abort, Access, Exchange, Flow, Plugin};
use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use std::fmt;
use std::sync::Arc;

/// A route's plugins, sorted by stage when the route is compiled.
#[derive(Clone, Default)]
pub struct PluginChain {
    plugins: Arc<[Box<dyn Plugin>]>,
    /// Some plugin's access phase may wait (a delay, a call).
    may_wait: bool,
    /// Some plugin reads the request body: only then is it shown to the chain.
    wants_request_body: bool,
    /// Some plugin reads the response body: likewise.
    wants_response_body: bool,
}

impl PluginChain {
    pub fn new(mut plugins: Vec<Box<dyn Plugin>>) -> Self {
        // Stable: plugins of one stage keep the order they were given in.
        plugins.sort_by_key(|p| p.stage());
        PluginChain {
            may_wait: plugins.iter().any(|p| p.may_wait()),
            wants_request_body: plugins.iter().any(|p| p.wants_request_body()),
            wants_response_body: plugins.iter().any(|p| p.wants_response_body()),
            plugins: plugins.into(),
        }
    }

    /// Whether [`PluginChain::access`] may wait: see [`Plugin::may_wait`].
    pub fn may_wait(&self) -> bool {
        self.may_wait
    }

    pub fn wants_request_body(&self) -> bool {
        self.wants_request_body
    }

    pub fn wants_response_body(&self) -> bool {
        self.wants_response_body
    }

    /// Shows a piece of the request body to every plugin that reads it, in order, each
    /// seeing what the one before handed on; the first refusal stops the chain.
    pub fn request_body(&self, body: &mut Option<Bytes>, end: bool, ex: &mut Exchange) -> Flow {
        for plugin in self.plugins.iter().filter(|p| p.wants_request_body()) {
            let flow = plugin.request_body(body, end, ex);
            if !matches!(flow, Flow::Continue) {
                return flow;
            }
        }
        Flow::Continue
    }

    /// Shows a piece of the response body to every plugin that reads it, in order.
    pub fn response_body(
        &self,
        body: &mut Option<Bytes>,
        end: bool,
        ex: &mut Exchange,
    ) -> Result<(), Abort> {
        for plugin in self.plugins.iter().filter(|p| p.wants_response_body()) {
            plugin.response_body(body, end, ex)?;
        }
        Ok(())
    }

    /// The exchange is over: every plugin may release what it held for it.
    pub fn log(&self, ex: &mut Exchange) {
        for plugin in self.plugins.iter() {
            plugin.log(ex);
        }
    }

    /// Upkeep of every plugin, off the request path.
    pub fn housekeep(&self) {
        for plugin in self.plugins.iter() {
            plugin.housekeep();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.plugins.iter().map(|p| p.name())
    }

    /// Runs the access phase of every plugin in order; the first reply stops the chain.
    pub async fn access(&self, req: &mut RequestHeader, ex: &mut Exchange) -> Flow {
        for plugin in self.plugins.iter() {
            let flow = match plugin.access(req, ex) {
                Access::Now(flow) => flow,
                Access::Wait(pending) => {
                    // A wait the chain was not told of goes unwatched: the client could leave
                    // and the upstream still be asked.
                    debug_assert!(
                        self.may_wait,
                        "{} waited but says it never does",
                        plugin.name()
                    );
                    pending.await
                }
            };
            if !matches!(flow, Flow::Continue) {
                return flow;
            }
        }
        Flow::Continue
    }

    pub fn upstream_request(&self, req: &mut RequestHeader, ex: &Exchange) {
        for plugin in self.plugins.iter() {
            plugin.upstream_request(req, ex);
        }
    }

    /// Runs the response phase of every plugin in order; the first that replaces the
    /// response stops the chain.
    pub fn response(&self, resp: &mut ResponseHeader, ex: &mut Exchange) -> Flow {
        for plugin in self.plugins.iter() {
            let flow = plugin.response(resp, ex);
            if !matches!(flow, Flow::Continue) {
                return flow;
            }
        }
        Flow::Continue
    }
}

impl fmt::Debug for PluginChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use serde_json::json;

    #[test]
    fn a_chain_may_wait_only_with_a_plugin_that_may() {
        let registry = Registry::builtin();
        let chain = |plugins: &[(&str, serde_json::Value)]| {
            let built = plugins
                .iter()
                .map(|(name, config)| registry.build(name, config).unwrap())
                .collect();
            PluginChain::new(built)
        };
        let cors = ("cors", json!({ "allow_origins": ["https://a.example"] }));
        let abort = ("fault", json!({ "abort": { "status": 503, "percent": 1 } }));
        let delay = (
            "fault",
            json!({ "delay": { "duration": "1s", "percent": 1 } }),
        );
        let limit = ("rate_limit", json!({ "rate": 5, "per": "1s" }));
        assert!(!chain(&[]).may_wait());
        assert!(!chain(&[cors.clone(), abort, limit]).may_wait());
        assert!(chain(&[cors, delay]).may_wait());
    }
}
