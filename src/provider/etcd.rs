//! The etcd provider: everything under the prefix at revision R, then a watch from R+1.
//!
//! Following the prefix (connection, compaction, reconnection with backoff) is
//! [`PrefixWatch`]'s job; this module decides what etcd's answers mean. A full read
//! replaces the documents held, each parsed once; a batch of changes re-parses only the keys
//! it names, and either is applied with one snapshot swap. A lost connection leaves the
//! snapshot in force as it is until the watch reads everything again; until the first read
//! succeeds, `/readyz` says 503.
//!
//! Every read is judged against what was accepted before ([`Trust`]): an etcd whose cluster
//! id changed or whose revision went back is not applied. The snapshot in force stays and
//! the source reports why, until `POST /admin/resync` or a restart accepts the store.
//!
//! With `cache`, every applied snapshot is also written to the last-known-good cache
//! ([`super::cache`]); an instance whose first connection to etcd fails serves from it
//! (`from_cache`), trusting it as a read of that cluster at that revision, until etcd
//! answers and its contents replace it in one swap.

use super::cache::{self, CacheWriter, Saved};
use super::Ingest;
use crate::etcd::EtcdSettings;
use crate::etcd::{Change, Entry, PrefixWatch, WatchEvent};
use crate::fleet::is_instance_key;
use crate::resource::Document;
use crate::snapshot::SourceKind;
use crate::store::document_of;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::BTreeMap;

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

/// Applying a change did not finish (the compilation panicked).
#[derive(Debug, thiserror::Error)]
#[error("applying a change failed: {0}")]
struct ApplyFailed(#[from] tokio::task::JoinError);

/// What handling one event of the watch leaves for the loop to do.
enum Handled {
    /// Applied, or nothing to apply: on to the next event.
    Done,
    /// etcd answers with a store the provider does not accept.
    Untrusted(Distrust),
    /// What etcd sent could not be applied.
    Failed(ApplyFailed),
}

/// What the provider carries from event to event.
#[derive(Default)]
struct Memory {
    /// The documents of the store by etcd key, each parsed once.
    mirror: BTreeMap<String, Document>,
    /// What was last accepted; `None` until the first read and after a resync request.
    trust: Option<Trust>,
    /// The resync request a coming read carries out.
    resync: Option<u64>,
    /// The values of the store by key, as stored, for the last-known-good cache (kept only
    /// with a cache).
    raw: BTreeMap<String, (Bytes, i64)>,
    /// The last-known-good cache was tried (once, at the first lost connection).
    cache_tried: bool,
    /// Why the cache was refused, said with every lost connection until etcd answers.
    cache_refused: Option<String>,
}

impl Memory {
    /// An operator asked for what etcd holds to be read and accepted, whatever it is.
    fn accept_next(&mut self, ticket: u64) {
        self.trust = None;
        self.resync = Some(ticket);
    }
}

impl EtcdProvider {
    pub fn new(settings: EtcdSettings, ingest: Ingest) -> EtcdProvider {
        ingest.source().set_kind(SourceKind::Etcd);
        EtcdProvider { settings, ingest }
    }

    /// Applies the documents off the async runtime (admission, compilation and the name
    /// lookups of static nodes block), handing the mirror back.
    /// `read_at` as for [`Ingest::apply`].
    async fn apply(
        &self,
        mirror: BTreeMap<String, Document>,
        revision: Option<u64>,
        read_at: Option<u64>,
    ) -> Result<BTreeMap<String, Document>, ApplyFailed> {
        let ingest = self.ingest.clone();
        Ok(tokio::task::spawn_blocking(move || {
            ingest.apply(mirror.values(), revision, read_at);
            mirror
        })
        .await?)
    }

    /// Everything etcd holds: applied in place of what was held, if etcd is trusted.
    async fn loaded(
        &self,
        memory: &mut Memory,
        cache: Option<&CacheWriter>,
        revision: i64,
        cluster_id: u64,
        entries: Vec<Entry>,
    ) -> Handled {
        let seen = Trust {
            cluster_id,
            revision,
        };
        if let Err(distrust) = Trust::check(memory.trust, seen) {
            return Handled::Untrusted(distrust);
        }
        let prefix = &self.settings.prefix;
        // The fleet's records share the prefix but are not resources.
        let entries: Vec<Entry> = entries
            .into_iter()
            .filter(|e| !is_instance_key(prefix, &e.key))
            .collect();
        let mirror = entries
            .iter()
            .map(|e| (e.key.clone(), document_of(prefix, &e.key, &e.value)))
            .collect();
        let in_force = Some(in_force(&entries, revision));
        let read_at = Some(revision.max(0) as u64);
        memory.mirror = match self.apply(mirror, in_force, read_at).await {
            Ok(mirror) => mirror,
            Err(e) => return Handled::Failed(e),
        };
        memory.trust = Some(seen);
        memory.cache_refused = None;
        let health = self.ingest.source();
        health.healthy();
        health.set_from_cache(false);
        if let Some(writer) = cache {
            memory.raw = entries
                .iter()
                .map(|e| {
                    let value = Bytes::copy_from_slice(&e.value);
                    (e.key.clone(), (value, e.mod_revision))
                })
                .collect();
            self.save(writer, memory);
        }
        if let Some(ticket) = memory.resync.take() {
            health.resync_done(ticket);
            tracing::info!(revision, "etcd: resync accepted");
        }
        tracing::info!(revision, keys = entries.len(), "etcd: loaded");
        Handled::Done
    }

    /// A batch of changes: only the keys it names are parsed again.
    async fn changed(
        &self,
        memory: &mut Memory,
        cache: Option<&CacheWriter>,
        revision: Option<i64>,
        changes: Vec<Change>,
    ) -> Handled {
        let prefix = &self.settings.prefix;
        // An instance's record coming or going changes no resource: nothing to apply.
        let changes: Vec<Change> = changes
            .into_iter()
            .filter(|c| !is_instance_key(prefix, c.key()))
            .collect();
        if changes.is_empty() {
            return Handled::Done;
        }
        // The snapshot is that of its newest change: every instance applying these changes
        // reports the same revision, whatever else was written around them (instances'
        // records) and however the responses were folded.
        let applied = changes.iter().map(Change::revision).max().or(revision);
        let mut mirror = std::mem::take(&mut memory.mirror);
        for change in changes {
            match change {
                Change::Put(Entry {
                    key,
                    value,
                    mod_revision,
                }) => {
                    let document = document_of(prefix, &key, &value);
                    if cache.is_some() {
                        memory
                            .raw
                            .insert(key.clone(), (Bytes::from(value.clone()), mod_revision));
                    }
                    mirror.insert(key, document);
                }
                Change::Delete { key, .. } => {
                    memory.raw.remove(&key);
                    mirror.remove(&key);
                }
            }
        }
        memory.mirror = match self.apply(mirror, applied.map(|r| r as u64), None).await {
            Ok(mirror) => mirror,
            Err(e) => return Handled::Failed(e),
        };
        if let (Some(trust), Some(revision)) = (memory.trust.as_mut(), revision) {
            trust.revision = trust.revision.max(revision);
        }
        if let Some(writer) = cache {
            self.save(writer, memory);
        }
        Handled::Done
    }

    /// Hands what is in force to the cache writer.
    fn save(&self, writer: &CacheWriter, memory: &Memory) {
        if let Some(trust) = memory.trust {
            writer.save(Saved {
                prefix: self.settings.prefix.clone(),
                cluster_id: trust.cluster_id,
                revision: trust.revision,
                entries: memory.raw.clone(),
            });
        }
    }

    /// etcd could not be reached before anything was read from it: the last-known-good
    /// cache, if there is one and it holds up, is applied and trusted as a read of its
    /// cluster at its revision. Tried once; a refusal is remembered, and the instance waits
    /// for etcd (not ready).
    async fn serve_cache(&self, memory: &mut Memory) {
        let Some(path) = self.settings.cache.clone() else {
            return;
        };
        if memory.cache_tried || memory.trust.is_some() {
            return;
        }
        memory.cache_tried = true;
        let prefix = self.settings.prefix.clone();
        let read = tokio::task::spawn_blocking(move || cache::read(&path, &prefix)).await;
        let last = match read {
            Ok(Ok(last)) => last,
            Ok(Err(e)) => {
                tracing::error!("etcd: the last-known-good cache is refused: {e}");
                memory.cache_refused = Some(e.to_string());
                return;
            }
            Err(e) => {
                memory.cache_refused = Some(e.to_string());
                return;
            }
        };
        let prefix = &self.settings.prefix;
        let mirror = last
            .entries
            .iter()
            .map(|e| (e.key.clone(), document_of(prefix, &e.key, &e.value)))
            .collect();
        match self
            .apply(mirror, Some(in_force(&last.entries, last.revision)), None)
            .await
        {
            Ok(mirror) => memory.mirror = mirror,
            Err(e) => {
                memory.cache_refused = Some(e.to_string());
                return;
            }
        }
        memory.trust = Some(Trust {
            cluster_id: last.cluster_id,
            revision: last.revision,
        });
        self.ingest.source().set_from_cache(true);
        tracing::warn!(
            revision = last.revision,
            keys = last.entries.len(),
            "etcd unreachable at start: serving the last-known-good cache until it answers"
        );
    }
}

/// The revision a full read is in force as: that of the newest change among its resources
/// (`read_at`, the revision it was read at, when there is none), so instances holding the
/// same resources say the same revision however many records of instances were written
/// around them.
fn in_force(entries: &[Entry], read_at: i64) -> u64 {
    entries
        .iter()
        .map(|e| e.mod_revision)
        .max()
        .unwrap_or(read_at)
        .max(0) as u64
}

#[async_trait]
impl BackgroundService for EtcdProvider {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let health = self.ingest.source();
        let mut watch = PrefixWatch::new(
            self.settings.clone(),
            format!("{}/", self.settings.prefix),
            "etcd",
        );
        let mut memory = Memory::default();
        let cache = self.settings.cache.clone().map(CacheWriter::start);
        loop {
            let event = tokio::select! {
                _ = shutdown.changed() => return,
                ticket = health.resync_requested() => {
                    tracing::info!("etcd: resync requested; reading everything again");
                    memory.accept_next(ticket);
                    watch.restart();
                    continue;
                }
                event = watch.next() => event,
            };
            let handled = match event {
                WatchEvent::Loaded {
                    revision,
                    cluster_id,
                    entries,
                } => {
                    self.loaded(&mut memory, cache.as_ref(), revision, cluster_id, entries)
                        .await
                }
                WatchEvent::Changed { revision, changes } => {
                    self.changed(&mut memory, cache.as_ref(), revision, changes)
                        .await
                }
                WatchEvent::Lost { error, retry_in } => {
                    tracing::warn!(
                        retry_in_ms = retry_in.as_millis() as u64,
                        "etcd unavailable, serving the last snapshot: {error}"
                    );
                    self.serve_cache(&mut memory).await;
                    match &memory.cache_refused {
                        Some(refused) => health.lost(format!(
                            "{error}; the last-known-good cache is refused: {refused}"
                        )),
                        None => health.lost(error.to_string()),
                    }
                    continue;
                }
            };
            match handled {
                Handled::Done => {}
                Handled::Failed(e) => {
                    let retry_in = watch.back_off();
                    tracing::warn!(
                        retry_in_ms = retry_in.as_millis() as u64,
                        "etcd unavailable, serving the last snapshot: {e}"
                    );
                    health.lost(e.to_string());
                }
                Handled::Untrusted(distrust) => {
                    tracing::error!("etcd not trusted, serving the last snapshot: {distrust}");
                    health.untrusted(distrust.to_string());
                    // Only an operator (or a restart) accepts it: a store that comes back
                    // with a plausible revision later is still not the one in force. Nothing
                    // is read meanwhile.
                    watch.restart();
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        ticket = health.resync_requested() => {
                            tracing::info!("etcd: resync requested; accepting what etcd holds");
                            memory.accept_next(ticket);
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
}
