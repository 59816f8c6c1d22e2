//! How to reach etcd (`provider.etcd` and `registry.etcd` in the bootstrap config, and the
//! command line's `--etcd`): endpoints, the key prefix, credentials, TLS. Defined here
//! rather than with the bootstrap config so that everything that talks to etcd depends on
//! this module alone.

use crate::units::Span;
use serde::Deserialize;
use std::path::PathBuf;

/// How to reach etcd, and the prefix under which the resources are (`provider.etcd`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default = "default_etcd_timeout")]
    pub timeout: Span,
    /// For `https://` endpoints: a CA to trust instead of the system's, and a client
    /// certificate when etcd asks for one.
    #[serde(default)]
    pub tls: Option<EtcdTls>,
    /// The last-known-good cache (SPEC §13): every applied snapshot is written there, and
    /// an instance that starts while etcd is unreachable serves from it.
    #[serde(default)]
    pub cache: Option<PathBuf>,
}

impl EtcdSettings {
    /// Connection settings for the given endpoints with everything else at its default,
    /// for the command line and the service registry.
    pub fn with_endpoints(endpoints: Vec<String>, prefix: String) -> EtcdSettings {
        EtcdSettings {
            endpoints,
            prefix,
            username: None,
            password: None,
            timeout: default_etcd_timeout(),
            tls: None,
            cache: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// Where the service registry is (`registry.etcd`): the endpoints and the prefix under
/// which instances register.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryEtcd {
    pub endpoints: Vec<String>,
    #[serde(default = "default_registry_prefix")]
    pub prefix: String,
}

fn default_registry_prefix() -> String {
    "/microservices".into()
}

fn default_prefix() -> String {
    "/gatehouse".into()
}

fn default_etcd_timeout() -> Span {
    Span::secs(3)
}
