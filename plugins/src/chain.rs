use crate::{Access, Exchange, Flow, Plugin};
use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use std::fmt;
use std::sync::Arc;

/// A route's plugins, sorted by stage when the route is compiled.
#[derive(Clone, Default)]
pub struct PluginChain {
    plugins: Arc<[Box<dyn Plugin>]>,
    /// Some plugin reads the request body: only then is it shown to the chain.
    wants_request_body: bool,
}

impl PluginChain {
    pub fn new(mut plugins: Vec<Box<dyn Plugin>>) -> Self {
        // Stable: plugins of one stage keep the order they were given in.
        plugins.sort_by_key(|p| p.stage());
        PluginChain {
            wants_request_body: plugins.iter().any(|p| p.wants_request_body()),
            plugins: plugins.into(),
        }
    }

    pub fn wants_request_body(&self) -> bool {
        self.wants_request_body
    }

    /// Shows a piece of the request body to every plugin that reads it; the first refusal
    /// stops the chain.
    pub fn request_body(&self, chunk: Option<&Bytes>, end: bool, ex: &mut Exchange) -> Flow {
        for plugin in self.plugins.iter().filter(|p| p.wants_request_body()) {
            let flow = plugin.request_body(chunk, end, ex);
            if !matches!(flow, Flow::Continue) {
                return flow;
            }
        }
        Flow::Continue
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
                Access::Wait(pending) => pending.await,
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

    pub fn response(&self, resp: &mut ResponseHeader, ex: &Exchange) {
        for plugin in self.plugins.iter() {
            plugin.response(resp, ex);
        }
    }
}

impl fmt::Debug for PluginChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}
