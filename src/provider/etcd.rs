//! The etcd provider: everything under the prefix at revision R, then a watch from R+1.
//!
//! Each watch response (a batch of events) re-reads only the keys it names and applies the
//! result with one snapshot swap. A compacted watch revision means events were lost: the
//! provider reads everything again. A lost connection leaves the snapshot in force as it is
//! while the provider reconnects with exponential backoff and jitter, then reads everything
//! again; until the first read succeeds, `/readyz` says 503.
//!
//! Every read is judged against what was accepted before ([`Trust`]): an etcd whose cluster
//! id changed or whose revision went back is not applied. The snapshot in force stays and
//! the source reports why, until `POST /admin/resync` or a restart accepts the store.

use super::source::SourceKind;
use super::Ingest;
use crate::bootstrap::EtcdProvider as EtcdSettings;
use crate::resource::Document;
use crate::store::{document_of, Store, StoreError};
use async_trait::async_trait;
use etcd_client::{EventType, WatchOptions, WatchResponse};
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

/// What the provider has accepted from etcd: the cluster that answered and the newest
/// revision in force. A store that contradicts it (another cluster, or an older revision:
/// etcd restarted empty, or restored from a backup) is not trusted, because applying it
/// would silently swap the configuration in force for an older or empty one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trust {
    pub cluster_id: u64,
    pub revision: i64,
}

/// Why what etcd holds now is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Distrust {
    #[error(
        "etcd's cluster id changed from {was:x} to {now:x}; the snapshot in force stays until \
         POST /admin/resync or a restart accepts the new cluster"
    )]
    ClusterChanged { was: u64, now: u64 },
    #[error(
        "etcd's revision went back from {was} to {now} (restarted empty or restored from a \
         backup?); the snapshot in force stays until POST /admin/resync or a restart accepts it"
    )]
    RevisionWentBack { was: i64, now: i64 },
}

impl Trust {
    /// Judges what a read saw against what was accepted before; with nothing accepted yet
    /// (a fresh start, or a resync), anything is.
    pub fn check(accepted: Option<Trust>, seen: Trust) -> Result<(), Distrust> {
        let Some(accepted) = accepted else {
            return Ok(());
        };
        if seen.cluster_id != accepted.cluster_id {
            return Err(Distrust::ClusterChanged {
                was: accepted.cluster_id,
                now: seen.cluster_id,
            });
        }
        if seen.revision < accepted.revision {
            return Err(Distrust::RevisionWentBack {
                was: accepted.revision,
                now: seen.revision,
            });
        }
        Ok(())
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
    /// etcd answers, but with a store the provider does not accept.
    Untrusted(Distrust),
    /// An operator asked for everything to be read again and accepted.
    Resync(u64),
}

/// What one provider carries from session to session.
#[derive(Default)]
struct Memory {
    /// What was last accepted; `None` until the first read and after a resync request.
    trust: Option<Trust>,
    /// The resync request a coming read carries out.
    resync: Option<u64>,
}

impl EtcdProvider {
    pub fn new(settings: EtcdSettings, ingest: Ingest) -> EtcdProvider {
        ingest.source().set_kind(SourceKind::Etcd);
        EtcdProvider { settings, ingest }
    }

    /// Applies the documents off the async runtime (admission, compilation and the name
    /// lookups of static nodes block), handing the mirror back.
    async fn apply(
        &self,
        mirror: BTreeMap<String, Document>,
        revision: Option<u64>,
    ) -> Result<BTreeMap<String, Document>, StoreError> {
        let ingest = self.ingest.clone();
        tokio::task::spawn_blocking(move || {
            ingest.apply(mirror.values(), revision);
            mirror
        })
        .await
        .map_err(|e| StoreError::Invalid(format!("applying a change failed: {e}")))
    }

    /// One connection's life: read everything, watch, read everything again after a
    /// compaction; returns when the connection fails, etcd is not trusted, a resync is asked
    /// for, or the process stops.
    async fn session(
        &self,
        shutdown: &mut ShutdownWatch,
        backoff: &mut Backoff,
        memory: &mut Memory,
    ) -> Ended {
        let health = self.ingest.source();
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
            let seen = Trust {
                cluster_id: contents.cluster_id,
                revision: contents.revision,
            };
            if let Err(distrust) = Trust::check(memory.trust, seen) {
                return Ended::Untrusted(distrust);
            }
            // The documents of the store by etcd key, each parsed once.
            let mut mirror: BTreeMap<String, Document> = BTreeMap::new();
            for (key, value) in &contents.entries {
                mirror.insert(key.clone(), document_of(&prefix, key, value));
            }
            mirror = match self.apply(mirror, Some(contents.revision as u64)).await {
                Ok(mirror) => mirror,
                Err(e) => return Ended::Failed(e),
            };
            memory.trust = Some(seen);
            health.healthy();
            if let Some(ticket) = memory.resync.take() {
                health.resync_done(ticket);
                tracing::info!(revision = contents.revision, "etcd: resync accepted");
            }
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
            'watch: loop {
                let message = tokio::select! {
                    _ = shutdown.changed() => return Ended::Shutdown,
                    ticket = health.resync_requested() => return Ended::Resync(ticket),
                    m = stream.message() => m,
                };
                let mut revision = None;
                let mut changed = false;
                let mut next = Some(message);
                // A burst of changes is applied as one snapshot: responses already waiting
                // are folded in before compiling (up to a bound, so a flood still shows
                // progress), rather than compiling the whole configuration once per write.
                let mut folded = 0;
                while let Some(message) = next.take() {
                    match fold(message, &prefix, &mut mirror, memory.trust.as_ref()) {
                        Folded::Changes(at) => {
                            changed = true;
                            revision = at.or(revision);
                        }
                        Folded::Nothing => {}
                        Folded::ReadAgain => break 'watch,
                        Folded::End(ended) => return ended,
                    }
                    folded += 1;
                    if folded < MAX_FOLDED {
                        next = tokio::time::timeout(Duration::ZERO, stream.message())
                            .await
                            .ok();
                    }
                }
                if !changed {
                    continue;
                }
                mirror = match self.apply(mirror, revision.map(|r| r as u64)).await {
                    Ok(mirror) => mirror,
                    Err(e) => return Ended::Failed(e),
                };
                if let (Some(trust), Some(revision)) = (memory.trust.as_mut(), revision) {
                    trust.revision = trust.revision.max(revision);
                }
            }
        }
    }
}

/// The most watch responses folded into one snapshot.
const MAX_FOLDED: usize = 1024;

/// What one watch response did to the mirror of etcd's keys.
enum Folded {
    /// Keys changed; the revision the response was sent at.
    Changes(Option<i64>),
    /// Nothing to apply (a progress notification).
    Nothing,
    /// The watch cannot go on (compacted, canceled): read everything again.
    ReadAgain,
    /// The session ends.
    End(Ended),
}

/// Folds one watch response into `mirror`.
fn fold(
    message: Result<Option<WatchResponse>, etcd_client::Error>,
    prefix: &str,
    mirror: &mut BTreeMap<String, Document>,
    trust: Option<&Trust>,
) -> Folded {
    let response = match message {
        Ok(Some(response)) => response,
        Ok(None) => {
            return Folded::End(Ended::Failed(StoreError::Invalid(
                "the watch stream ended".into(),
            )))
        }
        Err(e) => return Folded::End(Ended::Failed(e.into())),
    };
    if let (Some(header), Some(trust)) = (response.header(), trust) {
        if header.cluster_id() != trust.cluster_id {
            return Folded::End(Ended::Untrusted(Distrust::ClusterChanged {
                was: trust.cluster_id,
                now: header.cluster_id(),
            }));
        }
    }
    if response.compact_revision() > 0 {
        tracing::warn!(
            compacted = response.compact_revision(),
            "etcd: the watched revision was compacted; reading everything again"
        );
        return Folded::ReadAgain;
    }
    if response.canceled() {
        tracing::warn!(
            reason = response.cancel_reason(),
            "etcd: watch canceled; reading everything again"
        );
        return Folded::ReadAgain;
    }
    if response.events().is_empty() {
        return Folded::Nothing;
    }
    for event in response.events() {
        let Some(kv) = event.kv() else { continue };
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        match event.event_type() {
            EventType::Put => {
                mirror.insert(key.clone(), document_of(prefix, &key, kv.value()));
            }
            EventType::Delete => {
                mirror.remove(&key);
            }
        }
    }
    Folded::Changes(response.header().map(|h| h.revision()))
}

#[async_trait]
impl BackgroundService for EtcdProvider {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let health = self.ingest.source();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut memory = Memory::default();
        loop {
            match self.session(&mut shutdown, &mut backoff, &mut memory).await {
                Ended::Shutdown => return,
                Ended::Resync(ticket) => {
                    tracing::info!("etcd: resync requested; reading everything again");
                    memory.trust = None;
                    memory.resync = Some(ticket);
                }
                Ended::Untrusted(distrust) => {
                    tracing::error!("etcd not trusted, serving the last snapshot: {distrust}");
                    health.untrusted(distrust.to_string());
                    // Only an operator (or a restart) accepts it: a store that comes back
                    // with a plausible revision later is still not the one in force.
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        ticket = health.resync_requested() => {
                            tracing::info!("etcd: resync requested; accepting what etcd holds");
                            memory.trust = None;
                            memory.resync = Some(ticket);
                        }
                    }
                }
                Ended::Failed(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        retry_in_ms = delay.as_millis() as u64,
                        "etcd unavailable, serving the last snapshot: {e}"
                    );
                    health.lost(e.to_string());
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(delay) => {}
                        ticket = health.resync_requested() => {
                            memory.trust = None;
                            memory.resync = Some(ticket);
                        }
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
    fn only_the_same_cluster_at_the_same_or_a_later_revision_is_trusted() {
        let accepted = Trust {
            cluster_id: 7,
            revision: 304,
        };
        let seen = |cluster_id, revision| Trust {
            cluster_id,
            revision,
        };
        assert_eq!(
            Trust::check(None, seen(9, 1)),
            Ok(()),
            "a first read is taken"
        );
        assert_eq!(Trust::check(Some(accepted), seen(7, 304)), Ok(()));
        assert_eq!(Trust::check(Some(accepted), seen(7, 400)), Ok(()));
        assert_eq!(
            Trust::check(Some(accepted), seen(7, 1)),
            Err(Distrust::RevisionWentBack { was: 304, now: 1 })
        );
        let changed = Trust::check(Some(accepted), seen(8, 500)).unwrap_err();
        assert_eq!(changed, Distrust::ClusterChanged { was: 7, now: 8 });
        assert!(changed.to_string().contains("POST /admin/resync"));
    }

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
