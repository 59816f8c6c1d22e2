//! etcd as the gateway reads it: how to connect, how to back off, and one loop that follows
//! a key prefix (get at R, watch from R+1, read again when the watch loses its place,
//! reconnect when the connection fails).
//!
//! The configuration provider and the service registry both follow a prefix and need the
//! same care: notice a dead connection while nothing changes, reconnect without every
//! gateway doing so in step, never miss a change to a compaction, and take a burst of
//! changes as one. Kept here once, so the two cannot drift apart; what the keys *mean*
//! stays with each caller.
//!
//! This module knows etcd and its connection settings, nothing of resources, snapshots,
//! upstreams or the rest of the bootstrap config.

mod backoff;
mod connect;
mod settings;
mod watch;

pub use backoff::Backoff;
pub use connect::{connect, connect_member, KEEPALIVE_INTERVAL};
pub use settings::{EtcdSettings, EtcdTls, RegistryEtcd};
pub use watch::{Change, Entry, PrefixWatch, WatchEvent, MAX_FOLDED};

/// Why talking to etcd failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A TLS file named in the settings could not be read.
    #[error("{path}: {source}")]
    Tls {
        path: String,
        source: std::io::Error,
    },
    /// etcd closed the watch without an error (the connection is no longer usable).
    #[error("the watch stream ended")]
    WatchEnded,
    /// A broken watch could not be opened again on any member.
    #[error("the watch broke and could not be opened again: {0}")]
    Resume(String),
}
