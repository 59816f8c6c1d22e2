//! A JWKS endpoint's keys, kept fresh in the background and refetched when a token names a
//! key not seen yet (key rotation), at most once per [`MIN_REFETCH`] so a stream of tokens
//! with made-up `kid`s cannot hammer the identity provider.
//!
//! The background refresh needs a Tokio runtime, and a policy may be compiled where there is
//! none (a file-mode gateway compiles its first snapshot before it starts serving) or on one
//! that later stops. So the refresh also starts from the request path: every request of a
//! JWKS policy makes one atomic load to see that the refresh runs, and the first one that
//! finds it stopped starts it on the runtime serving it.

use super::cache::VerdictCache;
use super::keys::KeyRing;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Time between two background fetches.
    refresh: Duration,
    /// Whether the background refresh task is alive.
    refreshing: AtomicBool,
}

impl Jwks {
    pub fn new(
        uri: String,
        http: reqwest::Client,
        verdicts: Arc<VerdictCache>,
        refresh: Duration,
    ) -> Arc<Jwks> {
        Arc::new(Jwks {
            uri,
            http,
            ring: ArcSwap::from_pointee(KeyRing::default()),
            last_attempt: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            verdicts,
            refresh,
            refreshing: AtomicBool::new(false),
        })
    }

    /// Makes sure the background refresh runs; the request path calls this, and pays one
    /// atomic load once it does.
    #[inline]
    pub fn keep_refreshing(self: &Arc<Self>) {
        if !self.refreshing.load(Ordering::Acquire) {
            self.start();
        }
    }

    /// Whether the background refresh task is alive.
    pub fn is_refreshing(&self) -> bool {
        self.refreshing.load(Ordering::Acquire)
    }

    /// Starts the background refresh on the current Tokio runtime, unless it runs already or
    /// there is no runtime here. It fetches at once, then every `refresh`; it ends when the
    /// policy is dropped, and if its runtime stops first, the next request starts it again.
    pub fn start(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Jwks> = Arc::downgrade(self);
        runtime.spawn(async move {
            let _stopped = Stopped(weak.clone());
            loop {
                let Some(jwks) = weak.upgrade() else { return };
                jwks.fetch().await;
                let refresh = jwks.refresh;
                drop(jwks);
                tokio::time::sleep(refresh).await;
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

    /// Whether a fetch is under way now (the background refresh's first one, say): a token
    /// with an unknown key waits for it rather than being refused before the keys arrive.
    pub fn is_fetching(&self) -> bool {
        self.fetching.try_lock().is_err()
    }

    /// Refetches for an unknown key unless a fetch ran within [`MIN_REFETCH`]; waits for a
    /// fetch already under way instead of starting another.
    ///
    /// The fetch runs as a task of its own: the request that asked for it may be dropped
    /// (its client left), and a download cut short after stamping `last_attempt` would hold
    /// every refetch off for [`MIN_REFETCH`] with nothing fetched.
    pub async fn refetch(self: &Arc<Self>) {
        let jwks = self.clone();
        let fetch = tokio::spawn(async move {
            let _one_at_a_time = jwks.fetching.lock().await;
            if jwks.may_refetch() {
                jwks.fetch_now().await;
            }
        });
        // A fetch that panicked is a fetch that failed: the keys in force stay.
        let _ = fetch.await;
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

/// Marks the refresh stopped when its task ends, however it ends (the policy dropped, the
/// runtime shut down).
struct Stopped(Weak<Jwks>);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(jwks) = self.0.upgrade() {
            jwks.refreshing.store(false, Ordering::Release);
        }
    }
}
