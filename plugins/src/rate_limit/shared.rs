//! `rate_limit.scope: cluster` (SPEC §13): the limiter's state kept in a store every instance
//! of the fleet shares, so the fleet as a whole admits the limit plus `burst`.
//!
//! The plugin knows the store only by [`LimitStore`]: one GCRA step per request, which the
//! store makes atomic and bounds by its own timeout. The gateway provides the store (Redis)
//! through the registry's resources; when it fails, the route's `on_store_error` decides.

use crate::selector::Selected;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// What one bucket allows: one request every `interval`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub interval: Duration,
    pub burst: u32,
}

/// The store's decision on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub admitted: bool,
    /// Requests the bucket still admits at once.
    pub remaining: u32,
    /// For a refusal, how long until the next request is admitted.
    pub wait: Duration,
    /// How long until the bucket is full again.
    pub reset: Duration,
}

/// Why the store gave no decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No connection to the store at the moment (it is being opened again).
    #[error("the limit store is not connected")]
    Unavailable,
    #[error("the limit store did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("the limit store failed: {0}")]
    Failed(String),
}

/// A step of one request, pending.
pub type PendingStep = Pin<Box<dyn Future<Output = Result<Verdict, StoreError>> + Send>>;

/// Where `scope: cluster` limits keep their buckets.
pub trait LimitStore: Send + Sync {
    /// One atomic GCRA step on the bucket `key`: admit the request and count it, or refuse
    /// it. Finished (with [`StoreError::TimedOut`] at worst) within the store's timeout.
    fn step(&self, key: Vec<u8>, quota: Quota) -> PendingStep;
}

/// `rate_limit.on_store_error`: what a request gets when the store gives no decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// The instance's own limiter decides, as with `scope: local`.
    #[default]
    Local,
    /// Admitted.
    Allow,
    /// Refused with 429.
    Deny,
}

/// `rate_limit.scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Each instance counts on its own.
    #[default]
    Local,
    /// The fleet counts together, in the shared store.
    Cluster,
}

/// A route's shared limit: the store, where its buckets live in it, and its policy.
pub struct SharedLimit {
    pub(super) store: Arc<dyn LimitStore>,
    /// The start of every key of this limit: whose limit it is and its settings, so two
    /// routes (or one route's limit before and after a change) never share a bucket.
    namespace: Box<[u8]>,
    pub(super) quota: Quota,
    pub(super) on_error: OnStoreError,
}

impl SharedLimit {
    /// `owner` names the route or global rule; `settings` says how the limit counts (rate,
    /// period, burst, key), so a changed limit starts fresh buckets as a local one does.
    pub fn new(
        store: Arc<dyn LimitStore>,
        owner: &str,
        settings: &str,
        quota: Quota,
        on_error: OnStoreError,
    ) -> SharedLimit {
        let settings = hex::encode(&Sha256::digest(settings.as_bytes())[..6]);
        let namespace = format!("gatehouse:rl:{owner}:{settings}:").into_bytes();
        SharedLimit {
            store,
            namespace: namespace.into(),
            quota,
            on_error,
        }
    }

    /// The store's key for a request's bucket. A key a client writes (a header's value, a
    /// consumer id) is kept as a 128-bit SHA-256 digest, the same on every instance (the
    /// local limiter's digest is keyed per process): whatever a client sends, a bucket's key
    /// has one size, and no caller's id is written to Redis as sent. Each kind of key has
    /// its own tag, so a header value cannot pose as a client address.
    pub(super) fn key(&self, selected: &Selected<'_>) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.namespace.len() + 40);
        key.extend_from_slice(&self.namespace);
        match selected {
            Selected::ClientIp(ip) => {
                key.extend_from_slice(b"ip:");
                key.extend_from_slice(ip.to_string().as_bytes());
            }
            Selected::Route(_) => key.extend_from_slice(b"route"),
            Selected::Text(text) => {
                key.extend_from_slice(b"k:");
                key.extend_from_slice(hex::encode(&Sha256::digest(text)[..16]).as_bytes());
            }
        }
        key
    }
}

impl std::fmt::Debug for SharedLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimit")
            .field("namespace", &String::from_utf8_lossy(&self.namespace))
            .field("quota", &self.quota)
            .field("on_error", &self.on_error)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Never;

    impl LimitStore for Never {
        fn step(&self, _key: Vec<u8>, _quota: Quota) -> PendingStep {
            Box::pin(std::future::ready(Err(StoreError::Unavailable)))
        }
    }

    fn limit(owner: &str, settings: &str) -> SharedLimit {
        let quota = Quota {
            interval: Duration::from_millis(50),
            burst: 10,
        };
        SharedLimit::new(Arc::new(Never), owner, settings, quota, OnStoreError::Local)
    }

    #[test]
    fn keys_are_tagged_by_kind_and_client_written_ones_kept_as_a_stable_digest() {
        let a = limit("route:r", "20/1000000000/10/client_ip");
        let text = |t: &[u8]| a.key(&Selected::Text(t));
        let ip = a.key(&Selected::ClientIp("10.0.0.1".parse().unwrap()));
        assert!(
            ip.ends_with(b":ip:10.0.0.1"),
            "{}",
            String::from_utf8_lossy(&ip)
        );
        assert_ne!(
            ip,
            text(b"10.0.0.1"),
            "a header value cannot pose as an address"
        );
        assert!(a.key(&Selected::Route("r")).ends_with(b":route"));

        // Whatever its length, a written key is a digest of one size, the same in another
        // process (a fresh limit), distinct per key, and not the key as sent.
        let long = vec![b'x'; 30 * 1024];
        assert_eq!(text(b"alice").len(), text(&long).len());
        assert!(!String::from_utf8_lossy(&text(b"alice")).contains("alice"));
        assert_eq!(
            text(&long),
            limit("route:r", "20/1000000000/10/client_ip").key(&Selected::Text(&long))
        );
        assert_ne!(text(&long), text(&vec![b'y'; 30 * 1024]));

        // Another owner or other counting: other buckets.
        let route = |l: &SharedLimit| l.key(&Selected::Route("r"));
        assert_ne!(
            route(&limit("route:s", "20/1000000000/10/client_ip")),
            route(&a)
        );
        assert_ne!(
            route(&limit("route:r", "21/1000000000/10/client_ip")),
            route(&a)
        );
    }
}
