//! The static process settings of `config/gatehouse.yaml` (SPEC §2). Read once at startup; a
//! key gatehouse does not know, or a value of the wrong type, stops the process with a message
//! naming the key, so it never runs on a half-understood config.

pub use crate::etcd::{EtcdSettings, EtcdTls, RegistryEtcd};
pub use crate::interpolate::{interpolate, InterpolationError};

use crate::edge::{PathPolicy, Underscores};
use crate::units::{ByteSize, Span};
use ipnet::IpNet;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why the bootstrap config was refused.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Interpolation {
        path: String,
        source: InterpolationError,
    },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    #[serde(default = "default_listen")]
    pub listen: Vec<Listener>,
    #[serde(default = "default_threads")]
    pub threads: usize,
    #[serde(default)]
    pub http: HttpLimits,
    #[serde(default)]
    pub shutdown: Shutdown,
    #[serde(default)]
    pub admin: Admin,
    pub provider: Provider,
    #[serde(default)]
    pub registry: Option<Registry>,
    /// Who this instance is in the fleet (SPEC §13).
    #[serde(default)]
    pub instance: InstanceSettings,
    /// Where `rate_limit.scope: cluster` limits keep their buckets (SPEC §13).
    #[serde(default)]
    pub redis: Option<RedisSettings>,
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    #[serde(default)]
    pub telemetry: TelemetrySettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub addr: SocketAddr,
    #[serde(default)]
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    pub max_header_size: ByteSize,
    pub header_timeout: Span,
    pub keepalive_timeout: Span,
    /// Open client connections across the process (SPEC §8).
    pub max_connections: usize,
    /// Open client connections from one client address; 0 = no cap.
    pub max_connections_per_ip: usize,
    pub underscores_in_headers: Underscores,
    /// How request paths are normalized before routing.
    pub path: PathPolicy,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_header_size: ByteSize(32 * 1024),
            header_timeout: Span::secs(10),
            keepalive_timeout: Span::secs(60),
            max_connections: 100_000,
            max_connections_per_ip: 0,
            underscores_in_headers: Underscores::Drop,
            path: PathPolicy::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shutdown {
    pub grace: Span,
    pub timeout: Span,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            grace: Span::secs(0),
            timeout: Span::secs(30),
        }
    }
}

/// `instance`: the id the instance registers under in etcd.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSettings {
    /// Default: the host name and the port of the first listener (`web-1:8080`).
    #[serde(default)]
    pub id: Option<String>,
}

/// `redis`: the store the fleet's shared rate limits live in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port/db`.
    pub url: String,
    /// The longest a request waits for its limiter step; past it, `on_store_error` decides.
    #[serde(default = "redis_timeout")]
    pub timeout: Span,
}

fn redis_timeout() -> Span {
    Span(std::time::Duration::from_millis(50))
}

impl Bootstrap {
    /// The instance's id in the fleet.
    pub fn instance_id(&self) -> String {
        if let Some(id) = &self.instance.id {
            return id.clone();
        }
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "gatehouse".into());
        let port = self.listen.first().map_or(0, |l| l.addr.port());
        format!("{host}:{port}")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    pub listen: SocketAddr,
    pub api_key: String,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: SocketAddr::from(([127, 0, 0, 1], 9180)),
            api_key: String::new(),
        }
    }
}

/// Where resources come from: exactly one of `file` or `etcd`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    #[serde(default)]
    pub file: Option<FileSettings>,
    #[serde(default)]
    pub etcd: Option<EtcdSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub paths: Vec<PathBuf>,
    #[serde(default = "yes")]
    pub watch: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    pub etcd: RegistryEtcd,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    pub otlp: Otlp,
    pub access_log: AccessLog,
    /// A request without its own `X-Request-Id` gets its trace id as request id, so logs,
    /// traces and the client's copy name a request alike. `false`: a random id instead.
    pub trace_id_as_request_id: bool,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            otlp: Otlp::default(),
            access_log: AccessLog::default(),
            trace_id_as_request_id: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Otlp {
    pub endpoint: String,
    pub service_name: String,
    pub sample_ratio: f64,
}

impl Default for Otlp {
    fn default() -> Self {
        Otlp {
            endpoint: String::new(),
            service_name: "gatehouse".into(),
            sample_ratio: 1.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLog {
    /// `stdout`, `off`, or a file path.
    pub target: String,
    pub format: AccessLogFormat,
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog {
            target: "stdout".into(),
            format: AccessLogFormat::Json,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    Json,
}

fn default_listen() -> Vec<Listener> {
    vec![Listener {
        addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
        tls: None,
    }]
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn yes() -> bool {
    true
}

impl Bootstrap {
    /// Reads, interpolates and checks the bootstrap config at `path`. Relative resource paths
    /// are kept as written: they are relative to the working directory, like every CLI path.
    pub fn load(path: &Path) -> Result<Bootstrap, BootstrapError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| BootstrapError::Read {
            path: shown.clone(),
            source,
        })?;
        Bootstrap::parse(&shown, &text, |name| std::env::var(name).ok())
    }

    pub fn parse(
        path: &str,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Bootstrap, BootstrapError> {
        let text = interpolate(text, env).map_err(|source| BootstrapError::Interpolation {
            path: path.to_string(),
            source,
        })?;
        let invalid = |key: String, message: String| BootstrapError::Invalid {
            path: path.to_string(),
            key,
            message,
        };
        let de = serde_yaml::Deserializer::from_str(&text);
        let config: Bootstrap = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." {
                "(top level)".to_string()
            } else {
                key
            };
            invalid(key, e.into_inner().to_string())
        })?;
        config
            .check()
            .map_err(|(key, message)| invalid(key.into(), message))?;
        Ok(config)
    }

    /// Rules serde cannot express.
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.listen.is_empty() {
            return Err(("listen", "at least one listener is required".into()));
        }
        if self.threads == 0 {
            return Err(("threads", "must be at least 1".into()));
        }
        if self.http.max_header_size.0 < 1024 {
            return Err(("http.max_header_size", "must be at least 1KiB".into()));
        }
        if self.http.header_timeout.0.is_zero() {
            return Err(("http.header_timeout", "must be more than 0s".into()));
        }
        if self.http.max_connections == 0 {
            return Err(("http.max_connections", "must be at least 1".into()));
        }
        match (&self.provider.file, &self.provider.etcd) {
            (Some(_), Some(_)) => {
                return Err((
                    "provider",
                    "give exactly one of `file` or `etcd`, not both".into(),
                ))
            }
            (None, None) => return Err(("provider", "give one of `file` or `etcd`".into())),
            (Some(file), None) if file.paths.is_empty() => {
                return Err((
                    "provider.file.paths",
                    "at least one path is required".into(),
                ))
            }
            (None, Some(etcd)) if etcd.endpoints.is_empty() => {
                return Err((
                    "provider.etcd.endpoints",
                    "at least one endpoint is required".into(),
                ))
            }
            (None, Some(etcd)) if !etcd.prefix.starts_with('/') || etcd.prefix.ends_with('/') => {
                return Err((
                    "provider.etcd.prefix",
                    "must start with `/` and not end with one".into(),
                ))
            }
            _ => {}
        }
        if let Some(cache) = self.provider.etcd.as_ref().and_then(|e| e.cache.as_ref()) {
            let dir = cache.parent().filter(|d| !d.as_os_str().is_empty());
            if cache.file_name().is_none() || dir.is_some_and(|d| !d.is_dir()) {
                return Err((
                    "provider.etcd.cache",
                    format!(
                        "`{}` must name a file in an existing directory",
                        cache.display()
                    ),
                ));
            }
        }
        // The key travels in an `Authorization` header, which a browser (the dashboard)
        // can only send in Latin-1: printable ASCII is what every client sends alike.
        if !self.admin.api_key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err((
                "admin.api_key",
                "must be printable ASCII without spaces".into(),
            ));
        }
        if let Some(redis) = &self.redis {
            if let Err(e) = redis::Client::open(redis.url.as_str()) {
                return Err(("redis.url", e.to_string()));
            }
            if redis.timeout.0.is_zero() {
                return Err(("redis.timeout", "must be more than 0s".into()));
            }
        }
        if let Some(id) = &self.instance.id {
            if id.is_empty()
                || id.len() > 128
                || id.contains(['/', ' '])
                || id.chars().any(char::is_control)
            {
                return Err((
                    "instance.id",
                    "must be 1 to 128 characters, without `/`, spaces or control characters".into(),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.telemetry.otlp.sample_ratio) {
            return Err((
                "telemetry.otlp.sample_ratio",
                "must be between 0.0 and 1.0".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Bootstrap, BootstrapError> {
        Bootstrap::parse("gw.yaml", text, |name| match name {
            "GW_PORT" => Some("8181".into()),
            _ => None,
        })
    }

    const MINIMAL: &str = "provider:\n  file: { paths: [routes/] }\n";

    #[test]
    fn defaults_fill_everything_but_the_provider() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.listen[0].addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.http.max_header_size, ByteSize(32 * 1024));
        assert_eq!(c.admin.listen, "127.0.0.1:9180".parse().unwrap());
        assert_eq!(c.shutdown.timeout, Span::secs(30));
        assert!(c.provider.file.unwrap().watch);
    }

    #[test]
    fn the_sample_config_parses() {
        let text = include_str!("../../config/gatehouse.yaml");
        Bootstrap::parse("config/gatehouse.yaml", text, |_| None).unwrap();
    }

    #[test]
    fn environment_variables_are_interpolated() {
        let c = parse("listen: [{ addr: \"127.0.0.1:${GW_PORT}\" }]\nthreads: ${GW_THREADS:-3}\nprovider: { file: { paths: [r] } }\n").unwrap();
        assert_eq!(c.listen[0].addr.port(), 8181);
        assert_eq!(c.threads, 3);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse("provider: { file: { paths: [r] } }\nhttp: { max_header_sise: 1KiB }\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("http"), "{err}");
        assert!(err.contains("max_header_sise"), "{err}");
    }

    #[test]
    fn wrong_types_are_named() {
        let err = parse("threads: many\nprovider: { file: { paths: [r] } }\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("gw.yaml: threads:"), "{err}");
        let err = parse("shutdown: { timeout: 30 }\nprovider: { file: { paths: [r] } }\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("shutdown.timeout"), "{err}");
    }

    #[test]
    fn exactly_one_provider() {
        let err = parse("provider: {}\n").unwrap_err().to_string();
        assert!(err.contains("provider"), "{err}");
        let both = "provider: { file: { paths: [r] }, etcd: { endpoints: [http://x:2379] } }\n";
        assert!(parse(both).unwrap_err().to_string().contains("not both"));
    }

    #[test]
    fn trusted_proxies_are_cidrs() {
        let c = parse(
            "trusted_proxies: [10.0.0.0/8, \"::1/128\"]\nprovider: { file: { paths: [r] } }\n",
        )
        .unwrap();
        assert_eq!(c.trusted_proxies.len(), 2);
        let err = parse("trusted_proxies: [nonsense]\nprovider: { file: { paths: [r] } }\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("trusted_proxies"), "{err}");
    }
}
