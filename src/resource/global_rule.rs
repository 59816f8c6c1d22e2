//! The `GlobalRule` resource: registry plugins that run on every route, before the route's
//! own (SPEC §12).

use super::fields::Problems;
use super::route::{check_plugins, PluginUse};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalRule {
    pub id: String,
    /// Plugins from the registry, run in this order on every route. Several rules run in
    /// the order of their ids.
    pub plugins: Vec<PluginUse>,
}

impl GlobalRule {
    /// Field checks: each plugin's `config` by its factory, errors named
    /// `plugins[i].config.field`, as for a route.
    pub(super) fn check(&self, p: &mut Problems) {
        check_plugins(&self.plugins, p);
    }
}
