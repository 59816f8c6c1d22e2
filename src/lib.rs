//! gatehouse: a programmable API gateway on Pingora.
//!
//! A configuration change flows provider → resource (parse, validate) → admission →
//! snapshot (compile) → one atomic swap; a request flows router → plugins → upstream
//! picker → Pingora. See `docs/architecture.md`.

pub mod admin;
pub mod apply;
pub mod bootstrap;
pub mod cli;
pub mod demo;
pub mod edge;
pub mod etcd;
pub mod fleet;
pub mod import;
pub mod interpolate;
pub mod provider;
pub mod proxy;
pub mod resource;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod transcode;
/// The plugin contract, the registry and the built-in plugins (SPEC §12).
pub use gatehouse_plugins as plugins;
/// Durations and sizes as written in config files (shared with plugins).
pub use gatehouse_plugins::units;
pub mod upstream;
pub mod wire;
