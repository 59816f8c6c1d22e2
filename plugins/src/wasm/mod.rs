//! `wasm`: plugins written for the proxy-wasm ABI 0.2.1 (SPEC §12), the one Envoy, Istio,
//! APISIX and Kong load, so a plugin built with a proxy-wasm SDK runs here unchanged.
//!
//! A module is compiled once per change ([`module`]) and instantiated lazily on each worker
//! thread ([`workers`]): a request uses its thread's instance, behind a lock that only the
//! requests of that thread ever take, for the length of one callback. Every callback is
//! bounded by `timeout` and `max_memory`; a fault ends the request with 500 `plugin_error`
//! (or lets it pass, `fail_open: true`), is counted in `gatehouse_plugin_errors_total
//! {plugin}`, and drops that instance: the next request on the worker starts a fresh one,
//! and a request whose context the dropped instance held fails the same way.

mod abi;
mod callout;
mod engine;
mod host;
mod lend;
mod module;
mod plugin;
mod vm;
mod workers;

pub use plugin::WasmPlugin;
pub use workers::set_worker_threads;

use crate::registry::{self, Config, ConfigError, PluginFactory, Resources};
use crate::units::{ByteSize, Span};
use crate::Plugin;
use module::{SharedData, Source};
use serde::Deserialize;
use std::sync::Arc;
use vm::Fault;

/// What the plugin's instances know of it.
pub struct PluginInfo {
    /// `plugin_name`, and the `plugin` label of its error count.
    pub name: Arc<str>,
    /// The plugin configuration (`proxy_on_configure` reads it).
    pub config: Vec<u8>,
    /// The VM configuration (`proxy_on_vm_start` reads it).
    pub vm_config: Vec<u8>,
    pub max_memory: usize,
    /// Shared data (`proxy_get/set_shared_data`): one table per plugin name, as Envoy has
    /// one per VM id, so it outlives a rebuild of the plugin.
    pub shared: Arc<SharedData>,
    /// The `host:port`s `proxy_http_call` may reach; any when `None`.
    pub call_upstreams: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    module: Source,
    /// Handed to `proxy_on_configure`: a string as it is, anything else as JSON.
    #[serde(default)]
    config: Config,
    #[serde(default)]
    vm_config: Config,
    /// The plugin's name (`plugin_name`, the metric label); the module's file name by default.
    name: Option<String>,
    #[serde(default = "default_timeout")]
    timeout: Span,
    #[serde(default = "default_memory")]
    max_memory: ByteSize,
    #[serde(default)]
    fail_open: bool,
    /// The `host:port`s the plugin may call (`proxy_http_call`); any when left out.
    http_call_upstreams: Option<Vec<String>>,
}

fn default_timeout() -> Span {
    Span::millis(10)
}

fn default_memory() -> ByteSize {
    ByteSize(16 << 20)
}

/// The smallest memory a module can have: one Wasm page.
const PAGE: usize = 64 << 10;

fn bytes_of(value: &Config) -> Vec<u8> {
    match value {
        Config::Null => Vec::new(),
        Config::String(s) => s.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

pub struct Factory;

impl Factory {
    /// Checks the settings and loads and compiles the module: what admission needs to
    /// refuse a plugin that cannot work.
    fn make(&self, config: &Config) -> Result<WasmPlugin, ConfigError> {
        let settings: Settings = registry::decode(config)?;
        if settings.max_memory.0 < PAGE {
            return Err(ConfigError::new(
                "max_memory",
                "must be at least 64KiB, one Wasm page",
            ));
        }
        if settings.timeout.0.is_zero() {
            return Err(ConfigError::new("timeout", "must be more than zero"));
        }
        if let Some(list) = &settings.http_call_upstreams {
            for (at, upstream) in list.iter().enumerate() {
                if upstream.parse::<std::net::SocketAddr>().is_err()
                    && upstream
                        .rsplit_once(':')
                        .is_none_or(|(_, port)| port.parse::<u16>().is_err())
                {
                    return Err(ConfigError::new(
                        format!("http_call_upstreams[{at}]"),
                        format!("`{upstream}` is not host:port"),
                    ));
                }
            }
        }
        let compiled = module::load(&settings.module)?;
        let name = settings
            .name
            .clone()
            .unwrap_or_else(|| match &settings.module {
                Source::Path(path) => std::path::Path::new(path)
                    .file_stem()
                    .map_or_else(|| "wasm".to_string(), |s| s.to_string_lossy().into_owned()),
                Source::Remote { url, .. } => url.rsplit('/').next().unwrap_or("wasm").to_string(),
            });
        let info = Arc::new(PluginInfo {
            shared: module::shared_data(&name),
            name: name.into(),
            config: bytes_of(&settings.config),
            vm_config: bytes_of(&settings.vm_config),
            max_memory: settings.max_memory.0,
            call_upstreams: settings.http_call_upstreams,
        });
        Ok(WasmPlugin::new(
            info,
            compiled,
            settings.timeout.0,
            settings.fail_open,
        ))
    }
}

impl PluginFactory for Factory {
    fn name(&self) -> &'static str {
        "wasm"
    }

    /// What admission checks: starting the plugin waits for [`PluginFactory::build_with`].
    fn build(&self, config: &Config) -> Result<Box<dyn Plugin>, ConfigError> {
        Ok(Box::new(self.make(config)?))
    }

    /// Builds the plugin for serving, and starts one instance to check that the plugin
    /// accepts its configuration, so one that would refuse it is refused here, with its
    /// route alone, before any request meets it.
    fn build_with(
        &self,
        config: &Config,
        _resources: &dyn Resources,
    ) -> Result<Box<dyn Plugin>, ConfigError> {
        let plugin = self.make(config)?;
        plugin.probe().map_err(|fault| match fault {
            Fault::Refused(_) => ConfigError::new("config", fault.to_string()),
            other => ConfigError::new("module", other.to_string()),
        })?;
        Ok(Box::new(plugin))
    }
}

#[cfg(test)]
mod tests;
