//! One registry of named plugin factories (SPEC §12): every plugin a route's `plugins:`
//! list may name, built-in or registered by a program that embeds the gateway.
//!
//! A factory checks a plugin's `config` and builds the plugin once, when configuration is
//! compiled; requests only run what was built. Errors name the field under `config`
//! (`max_body`), and the gateway prefixes where the plugin sits (`plugins[2].config.`).
//!
//! The registry is filled before the gateway starts and only read afterwards, so it is a
//! process-wide value without a lock: [`install`] once (a program with its own plugins), or
//! the built-ins by default.

use crate::Plugin;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

/// A plugin's `config` as written: any YAML/JSON value.
pub type Config = serde_json::Value;

/// What is wrong with a plugin's `config`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
pub struct ConfigError {
    /// The field under `config` (`allow_origins[1]`), empty for the whole config.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why a plugin could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("no plugin is named `{0}` (known: {1})")]
    Unknown(String, String),
    #[error("{0}")]
    Config(#[from] ConfigError),
}

/// Builds one kind of plugin from its configuration.
pub trait PluginFactory: Send + Sync {
    /// The name a route's `plugins:` list uses.
    fn name(&self) -> &'static str;

    /// Checks `config` and builds the plugin.
    fn build(&self, config: &Config) -> Result<Box<dyn Plugin>, ConfigError>;

    /// Builds the plugin with the compiled resources it may refer to by id (an auth
    /// policy). Most plugins need none, and keep this default.
    fn build_with(
        &self,
        config: &Config,
        _resources: &dyn Resources,
    ) -> Result<Box<dyn Plugin>, ConfigError> {
        self.build(config)
    }

    /// The resources `config` names (an upstream a mirror sends to), so admission checks
    /// they exist, keeps them while the route uses them, and compiles the route again when
    /// they change. A plugin that names any is built again with every compile of its route.
    fn references(&self, _config: &Config) -> Vec<Reference> {
        Vec::new()
    }
}

/// A resource a plugin's configuration names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// An upstream, by id; `field` is where the config names it (`upstream`).
    Upstream { field: String, id: String },
}

/// The compiled resources a plugin may refer to by id when it is built.
pub trait Resources {
    /// The auth policy `id`, compiled; `None` when there is none (or it was refused).
    fn auth_policy(&self, id: &str) -> Option<Arc<crate::auth::Authenticator>>;

    /// The upstream `id`, as a plugin may send to it off the request path.
    fn upstream(&self, _id: &str) -> Option<Arc<dyn UpstreamSender>> {
        None
    }

    /// The id of the route the plugin is built for, when it is a route's: state a plugin
    /// keeps per route across its rebuilds is found by it.
    fn route(&self) -> Option<&str> {
        None
    }

    /// The id of the global rule the plugin is built for, when it is a global rule's.
    fn global_rule(&self) -> Option<&str> {
        None
    }

    /// The store the fleet shares rate limit buckets in (`rate_limit.scope: cluster`), when
    /// the gateway has one.
    fn limit_store(&self) -> Option<Arc<dyn crate::rate_limit::shared::LimitStore>> {
        None
    }
}

/// An upstream a plugin sends requests of its own to (a mirror's copies): the gateway
/// picks a healthy node, connects as it does for proxied requests (TLS, pools, timeouts),
/// and reads the answer to its end.
pub trait UpstreamSender: Send + Sync {
    /// Sends `head` and `body`; the answer's status, or why there is none. Bounded by
    /// `timeout` as a whole.
    fn send(
        &self,
        head: pingora_http::RequestHeader,
        body: bytes::Bytes,
        timeout: std::time::Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u16, String>> + Send>>;
}

/// No resources: what a plugin listed in `plugins:` is checked against at admission.
pub struct NoResources;

impl Resources for NoResources {
    fn auth_policy(&self, _id: &str) -> Option<Arc<crate::auth::Authenticator>> {
        None
    }
}

/// The plugins a route may name.
#[derive(Clone)]
pub struct Registry {
    factories: BTreeMap<&'static str, Arc<dyn PluginFactory>>,
}

impl Registry {
    /// The built-in plugins.
    pub fn builtin() -> Registry {
        let mut registry = Registry {
            factories: BTreeMap::new(),
        };
        registry.add(crate::auth::Factory);
        registry.add(crate::cors::Factory);
        registry.add(crate::fault::Factory);
        registry.add(crate::mirror::Factory);
        registry.add(crate::headers::Factory);
        registry.add(crate::ip_restriction::Factory);
        registry.add(crate::rate_limit::Factory);
        registry.add(crate::size_limit::Factory);
        registry.add(crate::wasm::Factory);
        registry
    }

    /// Adds a factory; one with the same name is replaced, so a program may swap a built-in.
    pub fn add(&mut self, factory: impl PluginFactory + 'static) {
        self.factories.insert(factory.name(), Arc::new(factory));
    }

    /// Builds the plugin `name` from `config` alone, as admission checks it: a plugin that
    /// names other resources is checked without them (they are checked as references).
    pub fn build(&self, name: &str, config: &Config) -> Result<Box<dyn Plugin>, BuildError> {
        Ok(self.factory(name)?.build(config)?)
    }

    fn factory(&self, name: &str) -> Result<&Arc<dyn PluginFactory>, BuildError> {
        self.factories.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.factories.keys().copied().collect();
            BuildError::Unknown(name.to_string(), known.join(", "))
        })
    }

    /// Builds the plugin `name` from `config`, with compiled resources in reach.
    pub fn build_with(
        &self,
        name: &str,
        config: &Config,
        resources: &dyn Resources,
    ) -> Result<Box<dyn Plugin>, BuildError> {
        Ok(self.factory(name)?.build_with(config, resources)?)
    }

    /// The resources the plugin `name`'s `config` names (none for an unknown plugin).
    pub fn references(&self, name: &str, config: &Config) -> Vec<Reference> {
        self.factories
            .get(name)
            .map(|f| f.references(config))
            .unwrap_or_default()
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.factories.keys().copied()
    }
}

static GLOBAL: OnceLock<Registry> = OnceLock::new();

/// Makes `registry` the one every route is compiled against. Done once, before the gateway
/// starts; gives the registry back if one is already in force.
pub fn install(registry: Registry) -> Result<(), Registry> {
    GLOBAL.set(registry)
}

/// The registry in force: the one installed, or the built-ins.
pub fn global() -> &'static Registry {
    GLOBAL.get_or_init(Registry::builtin)
}

/// Reads a typed configuration, naming the field at fault (`allow_origins[1]`).
pub fn decode<T: DeserializeOwned>(config: &Config) -> Result<T, ConfigError> {
    // A plugin without settings may leave `config` out.
    let config = match config {
        Config::Null => &Config::Object(Default::default()),
        other => other,
    };
    serde_path_to_error::deserialize(config).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        ConfigError::new(field, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_unknown_name_lists_the_known_ones() {
        let err = Registry::builtin()
            .build("corz", &json!({}))
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "no plugin is named `corz` (known: auth, cors, fault, header_rewrite, ip_restriction, \
             mirror, rate_limit, request_size_limit, wasm)"
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = Registry::builtin()
            .build("request_size_limit", &json!({ "max_body": "lots" }))
            .err()
            .unwrap();
        let BuildError::Config(err) = err else {
            panic!("{err}")
        };
        assert_eq!(err.field, "max_body");
    }

    #[test]
    fn a_program_may_add_its_own_and_replace_a_builtin() {
        struct Mine;
        impl PluginFactory for Mine {
            fn name(&self) -> &'static str {
                "cors"
            }
            fn build(&self, _: &Config) -> Result<Box<dyn Plugin>, ConfigError> {
                Err(ConfigError::new("", "mine"))
            }
        }
        let mut registry = Registry::builtin();
        registry.add(Mine);
        let err = registry.build("cors", &json!({})).err().unwrap();
        assert_eq!(err.to_string(), "mine");
    }
}
