//! Where resources come from, and how a change becomes the snapshot in force.

pub mod cache;
pub mod etcd;
pub mod file;

use crate::resource::{admit, Document};
use crate::snapshot::SourceHealth;
use crate::snapshot::{Live, Snapshot};
use std::sync::Arc;
use std::time::Instant;

/// Turns what a source holds now into the snapshot in force: admission, compilation, one
/// atomic swap. A provider owns one and is its only caller, so changes never interleave (a
/// clone only ever runs the provider's own change, off the async runtime, while the
/// provider waits for it).
#[derive(Clone)]
pub struct Ingest {
    live: Arc<Live>,
}

impl Ingest {
    pub fn new(live: Arc<Live>) -> Ingest {
        Ingest { live }
    }

    /// Where the provider reports how its source is doing.
    pub fn source(&self) -> &SourceHealth {
        self.live.source()
    }

    /// True once a snapshot from the source is in force.
    pub fn has_snapshot(&self) -> bool {
        self.live.is_ready()
    }

    /// Applies the full current content of the source. `revision` is the source's own
    /// (etcd's); without one, the snapshot counts changes. `read_at`, for what a full read
    /// of etcd at that revision found: the snapshot says it has seen every change up to it
    /// (`Snapshot::seen`), once it is in force and not before.
    pub fn apply<'d>(
        &self,
        docs: impl IntoIterator<Item = &'d Document>,
        revision: Option<u64>,
        read_at: Option<u64>,
    ) {
        let started = Instant::now();
        let current = self.live.load();
        let revision = revision.unwrap_or(current.revision + 1);
        let (catalog, rejected) = admit(docs, &current.catalog);
        for rejection in &rejected {
            tracing::warn!(key = %rejection.key, "rejected: {}", rejection.error);
        }
        let mut snapshot = Snapshot::compile(catalog, rejected, &current, revision);
        if let Some(read_at) = read_at {
            snapshot.seen = read_at;
        }
        tracing::info!(
            revision = snapshot.revision,
            routes = snapshot.routes.len(),
            upstreams = snapshot.upstreams.len(),
            rejected = snapshot.rejected.len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "configuration applied"
        );
        let metrics = &crate::telemetry::metrics::METRICS;
        metrics.config_revision.set(snapshot.revision as i64);
        metrics.config_rejected.set(snapshot.rejected.len() as i64);
        metrics.config_reloads.inc();
        self.live.store(snapshot);
    }
}
