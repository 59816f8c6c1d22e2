//! Verdicts remembered per token, so a token seen before costs a hash lookup instead of a
//! signature check or an introspection call.
//!
//! Two caches, so that a flood of refused tokens never pushes out the tokens in use:
//!
//! - [`VerdictCache`]: tokens found valid, keyed by the token itself: a digest would save
//!   memory but a collision would hand one caller another's identity. The identity provider
//!   issued these tokens, so their size is its choice, not a client's.
//! - [`RefusalCache`]: tokens introspection refused, keyed by a digest of the token and never
//!   the token itself, so a client sending large made-up tokens pins 16 bytes per token, not
//!   the token. A collision here could only refuse a valid token for `negative_ttl`, and the
//!   keyed 128-bit digest makes even that out of reach.
//!
//! Memory is bounded by the entry count (each cache evicts with S3-FIFO, keeping the entries in
//! use), and every entry carries the millisecond it stops being true, checked on each read:
//! a one-second `cache_ttl` means one second, not up to two.

use super::identity::Identity;
use super::Failure;
use crate::digest::Digester;
use quick_cache::sync::Cache;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// What a token was found to be.
pub type Outcome = Result<Arc<Identity>, Failure>;

#[derive(Clone)]
struct Entry {
    outcome: Outcome,
    /// Unix millisecond after which the entry is stale.
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

    /// The remembered outcome for `token`, unless it is stale at `now` (Unix milliseconds).
    pub fn get(&self, token: &str, now: u64) -> Option<Outcome> {
        let entry = self.entries.get(token)?;
        if now > entry.until {
            self.entries.remove(token);
            return None;
        }
        Some(entry.outcome)
    }

    /// Remembers `outcome` for `token` until `until` (Unix milliseconds).
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

/// A token's stand-in in the [`RefusalCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest(u128);

#[derive(Clone, Copy)]
struct Refusal {
    failure: Failure,
    /// Unix millisecond after which the entry is stale.
    until: u64,
}

/// Refused tokens, by digest.
pub struct RefusalCache {
    entries: Cache<TokenDigest, Refusal>,
    digester: Digester,
}

impl RefusalCache {
    pub fn new(capacity: usize) -> RefusalCache {
        RefusalCache {
            entries: Cache::new(capacity),
            digester: Digester::new(),
        }
    }

    pub fn digest(&self, token: &str) -> TokenDigest {
        TokenDigest(self.digester.digest(token.as_bytes()))
    }

    /// Why the token with this digest was refused, unless that is stale at `now`.
    pub fn get(&self, token: TokenDigest, now: u64) -> Option<Failure> {
        let refusal = self.entries.get(&token)?;
        if now > refusal.until {
            self.entries.remove(&token);
            return None;
        }
        Some(refusal.failure)
    }

    pub fn put(&self, token: TokenDigest, failure: Failure, until: u64) {
        self.entries.insert(token, Refusal { failure, until });
    }
}

/// Seconds since the Unix epoch, the unit of `exp` and `nbf`.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch, the unit of cache deadlines.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_go_stale_to_the_millisecond() {
        let cache = VerdictCache::new(10);
        let identity = Arc::new(Identity {
            consumer: None,
            authorized: true,
            forward: vec![],
        });
        // Put at 10.900 s with a 1 s lifetime: gone after 11.900 s, not at the end of 12.
        cache.put("t", Ok(identity), 11_900);
        assert!(cache.get("t", 11_900).is_some());
        assert!(cache.get("t", 11_901).is_none());
        assert!(cache.is_empty(), "a stale entry is dropped when found");
    }

    #[test]
    fn refusals_are_kept_by_digest_only() {
        let cache = RefusalCache::new(10);
        let token = "x".repeat(30 * 1024);
        let digest = cache.digest(&token);
        cache.put(digest, Failure::InvalidToken("inactive_token"), 5_000);
        assert_eq!(
            cache.get(cache.digest(&token), 5_000),
            Some(Failure::InvalidToken("inactive_token"))
        );
        assert_eq!(cache.get(cache.digest("another"), 5_000), None);
        // What is stored for a 30 KB token is its digest and the verdict: a few bytes.
        assert!(std::mem::size_of::<(TokenDigest, Refusal)>() <= 48);
        assert_eq!(cache.get(digest, 5_001), None);
        assert!(
            cache.entries.is_empty(),
            "a stale entry is dropped when found"
        );
    }
}
