//! Verdicts remembered per token, so a token seen before costs a hash lookup instead of a
//! signature check or an introspection call.
//!
//! Keyed by the token itself: a digest would save memory but a collision would hand one
//! caller another's identity. Memory is bounded by the entry count (the cache evicts with
//! S3-FIFO, keeping the tokens in use), and every entry carries the second it stops being
//! true, checked on each read.

use super::identity::Identity;
use super::Failure;
use quick_cache::sync::Cache;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// What a token was found to be.
pub type Outcome = Result<Arc<Identity>, Failure>;

#[derive(Clone)]
struct Entry {
    outcome: Outcome,
    /// Unix second after which the entry is stale.
    until: u64,
}

pub struct VerdictCache {
    entries: Cache<Box<str>, Entry>,
}

impl VerdictCache {
    pub fn new(capacity: usize) -> VerdictCache {
        VerdictCache {
            entries: Cache::new(capacity),
        }
    }

    /// The remembered outcome for `token`, unless it is stale at `now`.
    pub fn get(&self, token: &str, now: u64) -> Option<Outcome> {
        let entry = self.entries.get(token)?;
        if now > entry.until {
            self.entries.remove(token);
            return None;
        }
        Some(entry.outcome)
    }

    pub fn put(&self, token: &str, outcome: Outcome, until: u64) {
        self.entries.insert(token.into(), Entry { outcome, until });
    }

    /// Forgets everything (a key left the JWKS: what it signed is no longer trusted).
    pub fn clear(&self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Seconds since the Unix epoch, the unit of `exp` and `nbf`.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
