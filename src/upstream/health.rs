//! What the gateway knows about a node's health, from the traffic it sends (passive) and
//! from probes (active). Lock-free: a request reads two atomics to know whether a node may
//! take it.
//!
//! Passive ejection follows nginx's `max_fails`/`fail_timeout`: `max_fails` failures within
//! `fail_timeout` take the node out for `fail_timeout`; it comes back by itself when that
//! has passed (and is ejected again at once if it keeps failing). A failure is a connection
//! failure, a timeout, or a 502/503/504 answer from the node.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds on a monotonic clock private to the process.
pub fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// `health_check.passive`, compiled.
#[derive(Debug, Clone, Copy)]
pub struct PassivePolicy {
    pub max_fails: u32,
    pub fail_timeout: Duration,
}

/// One node's health.
#[derive(Debug)]
pub struct NodeHealth {
    /// Failures counted in the current window.
    fails: AtomicU32,
    /// Start of the current failure window (ms).
    window_start: AtomicU64,
    /// Ejected by passive checks until then (ms); 0 = not ejected.
    ejected_until: AtomicU64,
    /// The active checks' verdict; true until they say otherwise.
    probed_up: AtomicBool,
    /// Consecutive probe results, for the active thresholds.
    probe_streak_ok: AtomicU32,
    probe_streak_failed: AtomicU32,
    /// When the next probe is due (ms).
    next_probe: AtomicU64,
}

impl Default for NodeHealth {
    fn default() -> Self {
        NodeHealth {
            fails: AtomicU32::new(0),
            window_start: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            probed_up: AtomicBool::new(true),
            probe_streak_ok: AtomicU32::new(0),
            probe_streak_failed: AtomicU32::new(0),
            next_probe: AtomicU64::new(0),
        }
    }
}

impl NodeHealth {
    /// Whether the node may take a request now.
    pub fn is_up(&self, now: u64) -> bool {
        self.probed_up.load(Ordering::Relaxed) && self.ejected_until.load(Ordering::Relaxed) <= now
    }

    /// Counts a failed request; ejects the node when the policy says so.
    pub fn failed(&self, policy: Option<&PassivePolicy>, now: u64) {
        let Some(policy) = policy else { return };
        let window = policy.fail_timeout.as_millis() as u64;
        let start = self.window_start.load(Ordering::Relaxed);
        let fails = if now.saturating_sub(start) > window {
            self.window_start.store(now, Ordering::Relaxed);
            self.fails.store(1, Ordering::Relaxed);
            1
        } else {
            self.fails.fetch_add(1, Ordering::Relaxed) + 1
        };
        if fails >= policy.max_fails {
            self.ejected_until.store(now + window, Ordering::Relaxed);
            self.fails.store(0, Ordering::Relaxed);
            self.window_start.store(now, Ordering::Relaxed);
        }
    }

    /// Whether a probe is due at `now`; if so, the next one is scheduled `interval` later.
    pub fn probe_due(&self, now: u64, interval: u64) -> bool {
        claim_due(&self.next_probe, now, interval)
    }

    /// Records one probe; returns the new verdict when it changed.
    pub fn probed(&self, ok: bool, healthy: u32, unhealthy: u32) -> Option<bool> {
        if ok {
            self.probe_streak_failed.store(0, Ordering::Relaxed);
            let streak = self.probe_streak_ok.fetch_add(1, Ordering::Relaxed) + 1;
            if streak >= healthy && !self.probed_up.swap(true, Ordering::Relaxed) {
                return Some(true);
            }
        } else {
            self.probe_streak_ok.store(0, Ordering::Relaxed);
            let streak = self.probe_streak_failed.fetch_add(1, Ordering::Relaxed) + 1;
            if streak >= unhealthy && self.probed_up.swap(false, Ordering::Relaxed) {
                return Some(false);
            }
        }
        None
    }
}

/// Whether the deadline in `next` (ms) has come at `now`; if so, moves it `every` later. Of
/// several callers at the same moment only one gets `true`.
pub(crate) fn claim_due(next: &AtomicU64, now: u64, every: u64) -> bool {
    let due = next.load(Ordering::Relaxed);
    now >= due
        && next
            .compare_exchange(due, now + every, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_fails_within_fail_timeout_eject_for_fail_timeout() {
        let h = NodeHealth::default();
        let p = PassivePolicy {
            max_fails: 3,
            fail_timeout: Duration::from_secs(10),
        };
        h.failed(Some(&p), 1_000);
        h.failed(Some(&p), 2_000);
        assert!(h.is_up(2_000));
        // The window restarted: old failures no longer count.
        h.failed(Some(&p), 20_000);
        h.failed(Some(&p), 21_000);
        assert!(h.is_up(21_000));
        h.failed(Some(&p), 22_000);
        assert!(!h.is_up(22_000));
        assert!(!h.is_up(31_999));
        assert!(h.is_up(32_000));
        // Without a policy, failures change nothing.
        let h = NodeHealth::default();
        for t in 0..10 {
            h.failed(None, t);
        }
        assert!(h.is_up(10));
    }

    #[test]
    fn probes_need_consecutive_results_to_change_the_verdict() {
        let h = NodeHealth::default();
        assert_eq!(h.probed(false, 2, 3), None);
        assert_eq!(h.probed(false, 2, 3), None);
        assert_eq!(h.probed(true, 2, 3), None);
        assert_eq!(h.probed(false, 2, 3), None);
        assert_eq!(h.probed(false, 2, 3), None);
        assert_eq!(h.probed(false, 2, 3), Some(false));
        assert!(!h.is_up(0));
        assert_eq!(h.probed(true, 2, 3), None);
        assert_eq!(h.probed(true, 2, 3), Some(true));
        assert!(h.is_up(0));
    }
}
