//! A JWKS endpoint's keys, kept fresh in the background and refetched when a token names a
//! key not seen yet (key rotation), at most once per [`MIN_REFETCH`] so a stream of tokens
//! with made-up `kid`s cannot hammer the identity provider.

use super::cache::VerdictCache;
use super::keys::KeyRing;
use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The shortest time between two fetches caused by unknown keys.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// How often the key set is refetched anyway, so a key the provider withdrew stops being
/// trusted.
pub const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// How long one fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Jwks {
    uri: String,
    http: reqwest::Client,
    ring: ArcSwap<KeyRing>,
    /// When the last fetch started; `None` before the first.
    last_attempt: Mutex<Option<Instant>>,
    /// Serializes fetches: requests that find an unknown key together wait for one fetch.
    fetching: tokio::sync::Mutex<()>,
    /// Verdicts to forget when a key disappears.
    verdicts: Arc<VerdictCache>,
}

impl Jwks {
    pub fn new(uri: String, http: reqwest::Client, verdicts: Arc<VerdictCache>) -> Arc<Jwks> {
        Arc::new(Jwks {
            uri,
            http,
            ring: ArcSwap::from_pointee(KeyRing::default()),
            last_attempt: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            verdicts,
        })
    }

    /// Starts the background refresh on the current Tokio runtime, if there is one; it ends
    /// when the policy is dropped. Without a runtime the keys are fetched by the first
    /// request that needs them.
    pub fn start(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Jwks> = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                let Some(jwks) = weak.upgrade() else { return };
                jwks.fetch().await;
                drop(jwks);
                tokio::time::sleep(REFRESH_EVERY).await;
            }
        });
    }

    /// The keys in force.
    pub fn keys(&self) -> Arc<KeyRing> {
        self.ring.load_full()
    }

    /// Whether a token with an unknown key may cause a fetch now.
    pub fn may_refetch(&self) -> bool {
        let last = *self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
        last.is_none_or(|t| t.elapsed() >= MIN_REFETCH)
    }

    /// Refetches for an unknown key unless a fetch ran within [`MIN_REFETCH`]; waits for a
    /// fetch already under way instead of starting another.
    pub async fn refetch(&self) {
        let _one_at_a_time = self.fetching.lock().await;
        if self.may_refetch() {
            self.fetch_now().await;
        }
    }

    async fn fetch(&self) {
        let _one_at_a_time = self.fetching.lock().await;
        self.fetch_now().await;
    }

    async fn fetch_now(&self) {
        *self.last_attempt.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        match self.download().await {
            Ok(ring) => {
                let old = self.ring.load();
                let withdrawn = old
                    .keys
                    .iter()
                    .any(|k| !ring.keys.iter().any(|n| n.kid == k.kid && n.alg == k.alg));
                if withdrawn {
                    self.verdicts.clear();
                }
                tracing::debug!(uri = %self.uri, keys = ring.keys.len(), "JWKS fetched");
                self.ring.store(Arc::new(ring));
            }
            // The keys in force stay until a fetch succeeds.
            Err(error) => tracing::warn!(uri = %self.uri, %error, "JWKS fetch failed"),
        }
    }

    async fn download(&self) -> Result<KeyRing, String> {
        let response = self
            .http
            .get(&self.uri)
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        KeyRing::from_jwks(&body)
    }
}
