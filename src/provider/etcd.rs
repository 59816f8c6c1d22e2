//! The etcd provider: everything under the prefix at revision R, then a watch from R+1.
//!
//! Each watch response (a batch of events) re-reads only the keys it names and applies the
//! result with one snapshot swap. A compacted watch revision means events were lost: the
//! provider reads everything again. A lost connection leaves the snapshot in force as it is
//! while the provider reconnects with exponential backoff and jitter, then reads everything
//! again; until the first read succeeds, `/readyz` says 503.

use super::Ingest;
use crate::bootstrap::EtcdProvider as EtcdSettings;
use crate::resource::Document;
use crate::store::{document_of, Store, StoreError};
use async_trait::async_trait;
use etcd_client::{EventType, WatchOptions};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::BTreeMap;
use std::time::Duration;

/// Reconnection delays: doubling from the first to the cap, each with ±50 % jitter so many
/// gateways do not reconnect in step.
pub struct Backoff {
    next: Duration,
    first: Duration,
    cap: Duration,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            next: first,
            first,
            cap,
        }
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.cap);
        base.mul_f64(0.5 + fastrand::f64())
    }
}

pub struct EtcdProvider {
    settings: EtcdSettings,
    ingest: Ingest,
}

/// Why a session with etcd ended.
enum Ended {
    Shutdown,
    Failed(StoreError),
}

impl EtcdProvider {
    pub fn new(settings: EtcdSettings, ingest: Ingest) -> EtcdProvider {
        EtcdProvider { settings, ingest }
    }

    /// One connection's life: read everything, watch, read everything again after a
    /// compaction; returns when the connection fails or the process stops.
    async fn session(&self, shutdown: &mut ShutdownWatch, backoff: &mut Backoff) -> Ended {
        let mut store = match Store::open(&self.settings).await {
            Ok(store) => store,
            Err(e) => return Ended::Failed(e),
        };
        let prefix = self.settings.prefix.clone();
        loop {
            let contents = match store.contents().await {
                Ok(c) => c,
                Err(e) => return Ended::Failed(e),
            };
            // The documents of the store by etcd key, each parsed once.
            let mut mirror: BTreeMap<String, Document> = BTreeMap::new();
            for (key, value) in &contents.entries {
                mirror.insert(key.clone(), document_of(&prefix, key, value));
            }
            self.ingest
                .apply(mirror.values(), Some(contents.revision as u64));
            backoff.reset();
            tracing::info!(
                revision = contents.revision,
                keys = contents.entries.len(),
                "etcd: loaded"
            );

            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(contents.revision + 1);
            let mut stream = match store
                .client
                .watch(format!("{prefix}/"), Some(options))
                .await
            {
                Ok(stream) => stream,
                Err(e) => return Ended::Failed(e.into()),
            };
            loop {
                let message = tokio::select! {
                    _ = shutdown.changed() => return Ended::Shutdown,
                    m = stream.message() => m,
                };
                let response = match message {
                    Ok(Some(response)) => response,
                    Ok(None) => {
                        return Ended::Failed(StoreError::Invalid("the watch stream ended".into()))
                    }
                    Err(e) => return Ended::Failed(e.into()),
                };
                if response.compact_revision() > 0 {
                    tracing::warn!(
                        compacted = response.compact_revision(),
                        "etcd: the watched revision was compacted; reading everything again"
                    );
                    break;
                }
                if response.canceled() {
                    tracing::warn!(
                        reason = response.cancel_reason(),
                        "etcd: watch canceled; reading everything again"
                    );
                    break;
                }
                if response.events().is_empty() {
                    continue;
                }
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    match event.event_type() {
                        EventType::Put => {
                            mirror.insert(key.clone(), document_of(&prefix, &key, kv.value()));
                        }
                        EventType::Delete => {
                            mirror.remove(&key);
                        }
                    }
                }
                let revision = response.header().map(|h| h.revision() as u64);
                self.ingest.apply(mirror.values(), revision);
            }
        }
    }
}

#[async_trait]
impl BackgroundService for EtcdProvider {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match self.session(&mut shutdown, &mut backoff).await {
                Ended::Shutdown => return,
                Ended::Failed(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        retry_in_ms = delay.as_millis() as u64,
                        "etcd unavailable, serving the last snapshot: {e}"
                    );
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let delays: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        for (d, base) in delays.iter().zip([100u64, 200, 400, 800, 800, 800]) {
            let base = Duration::from_millis(base);
            assert!(
                *d >= base / 2 && *d <= base * 3 / 2,
                "{d:?} around {base:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(150));
    }
}
