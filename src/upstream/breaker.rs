//! The circuit breaker of an upstream (`circuit_breaker`): when too many of its recent
//! requests fail, stop sending it any for a while, then let one probe decide.
//!
//! Per upstream, not per node: a node that fails alone is ejected by health checks, while
//! the breaker protects an upstream that fails as a whole (an overloaded service, a bad
//! deploy) and its callers. Errors are 5xx answers and connection failures or timeouts;
//! with `slow_call`, calls slower than its threshold open the circuit too when they are
//! that share of the window (as Sentinel's slow-call ratio does), and a slow probe keeps it
//! open. The window is a ring of ten buckets of atomic counters, so recording a request
//! takes no lock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

const BUCKETS: u64 = 10;
const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// `circuit_breaker`, compiled.
#[derive(Debug, Clone, Copy)]
pub struct BreakerPolicy {
    pub error_rate: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub open_for: Duration,
    /// `slow_call`, if set.
    pub slow: Option<SlowPolicy>,
}

/// `circuit_breaker.slow_call`, compiled.
#[derive(Debug, Clone, Copy)]
pub struct SlowPolicy {
    /// A call that took longer than this is slow (µs).
    pub threshold_us: u64,
    pub ratio: f64,
}

/// How a call went, as the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    /// How long the call took (µs): from sending it to its answer's head, or to its failure.
    pub took_us: u64,
}

#[derive(Debug, Default)]
struct Bucket {
    /// Which slice of time the counts belong to.
    slice: AtomicU64,
    requests: AtomicU32,
    errors: AtomicU32,
    slow: AtomicU32,
}

/// How a request got through the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The circuit is closed.
    Normal,
    /// The circuit was open long enough: this request decides whether it closes.
    Probe,
}

#[derive(Debug, Default)]
struct Totals {
    requests: u32,
    errors: u32,
    slow: u32,
}

#[derive(Debug)]
pub struct Breaker {
    policy: BreakerPolicy,
    slice_ms: u64,
    buckets: [Bucket; BUCKETS as usize],
    state: AtomicU8,
    /// When the circuit opened, or when the current probe was let through (ms).
    since: AtomicU64,
    probing: AtomicBool,
}

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Breaker {
        Breaker {
            slice_ms: (policy.window.as_millis() as u64 / BUCKETS).max(1),
            policy,
            buckets: Default::default(),
            state: AtomicU8::new(CLOSED),
            since: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    /// Whether a request may go to the upstream now; `None` while the circuit is open.
    pub fn admit(&self, now: u64) -> Option<Pass> {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Some(Pass::Normal),
            state => {
                let open_for = self.policy.open_for.as_millis() as u64;
                let since = self.since.load(Ordering::Acquire);
                // Open long enough, or a probe that never reported back (its client left):
                // one request becomes the probe.
                let due = now >= since + open_for;
                if due
                    && (state == OPEN || self.probing.load(Ordering::Acquire))
                    && self
                        .since
                        .compare_exchange(since, now, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                {
                    self.state.store(HALF_OPEN, Ordering::Release);
                    self.probing.store(true, Ordering::Release);
                    return Some(Pass::Probe);
                }
                None
            }
        }
    }

    /// Records the outcome of a request that was let through.
    /// Gives back a pass whose request said nothing of the upstream (the client left): a
    /// probe may be sent again.
    pub fn release(&self, pass: Pass) {
        if pass == Pass::Probe {
            self.probing.store(false, Ordering::Release);
        }
    }

    pub fn record(&self, pass: Pass, outcome: Outcome, now: u64) {
        let slow = self
            .policy
            .slow
            .is_some_and(|s| outcome.took_us > s.threshold_us);
        if pass == Pass::Probe {
            self.probing.store(false, Ordering::Release);
            if outcome.ok && !slow {
                self.reset();
                self.state.store(CLOSED, Ordering::Release);
            } else {
                self.since.store(now, Ordering::Release);
                self.state.store(OPEN, Ordering::Release);
            }
            return;
        }
        let slice = now / self.slice_ms;
        let bucket = &self.buckets[(slice % BUCKETS) as usize];
        if bucket.slice.swap(slice, Ordering::AcqRel) != slice {
            // A bucket from an older lap of the ring: start it over.
            bucket.requests.store(0, Ordering::Relaxed);
            bucket.errors.store(0, Ordering::Relaxed);
            bucket.slow.store(0, Ordering::Relaxed);
        }
        bucket.requests.fetch_add(1, Ordering::Relaxed);
        if outcome.ok && !slow {
            return;
        }
        if !outcome.ok {
            bucket.errors.fetch_add(1, Ordering::Relaxed);
        }
        if slow {
            bucket.slow.fetch_add(1, Ordering::Relaxed);
        }
        if self.state.load(Ordering::Acquire) != CLOSED {
            return;
        }
        let t = self.totals(slice);
        if t.requests < self.policy.min_requests {
            return;
        }
        let requests = f64::from(t.requests);
        let erring = f64::from(t.errors) > self.policy.error_rate * requests;
        let slowing = self
            .policy
            .slow
            .is_some_and(|s| f64::from(t.slow) >= s.ratio * requests);
        if erring || slowing {
            self.since.store(now, Ordering::Release);
            self.state.store(OPEN, Ordering::Release);
            tracing::warn!(
                requests = t.requests,
                errors = t.errors,
                slow = t.slow,
                "circuit opened"
            );
        }
    }

    /// Requests, errors and slow calls within the window ending at `slice`.
    fn totals(&self, slice: u64) -> Totals {
        self.buckets
            .iter()
            .filter(|b| slice.saturating_sub(b.slice.load(Ordering::Acquire)) < BUCKETS)
            .fold(Totals::default(), |t, b| Totals {
                requests: t.requests + b.requests.load(Ordering::Relaxed),
                errors: t.errors + b.errors.load(Ordering::Relaxed),
                slow: t.slow + b.slow.load(Ordering::Relaxed),
            })
    }

    fn reset(&self) {
        for b in &self.buckets {
            b.requests.store(0, Ordering::Relaxed);
            b.errors.store(0, Ordering::Relaxed);
            b.slow.store(0, Ordering::Relaxed);
        }
    }

    pub fn is_open(&self) -> bool {
        self.state.load(Ordering::Acquire) != CLOSED
    }

    /// The state by name, for operators: `closed`, `open` or `half_open` (a probe is out).
    pub fn state_name(&self) -> &'static str {
        match self.state.load(Ordering::Acquire) {
            CLOSED => "closed",
            OPEN => "open",
            _ => "half_open",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerPolicy {
            error_rate: 0.5,
            min_requests: 4,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            slow: None,
        })
    }

    const OK: Outcome = Outcome {
        ok: true,
        took_us: 1_000,
    };
    const ERROR: Outcome = Outcome {
        ok: false,
        took_us: 1_000,
    };

    fn outcome(ok: bool) -> Outcome {
        if ok {
            OK
        } else {
            ERROR
        }
    }

    #[test]
    fn opens_over_the_error_rate_with_enough_requests_then_one_probe_decides() {
        let b = breaker();
        let t = 100_000;
        for ok in [false, false, false] {
            assert_eq!(b.admit(t), Some(Pass::Normal));
            b.record(Pass::Normal, outcome(ok), t);
        }
        assert!(!b.is_open(), "fewer than min_requests");
        b.record(Pass::Normal, OK, t);
        assert!(
            !b.is_open(),
            "3 of 4 is over 0.5 only once the 4th error arrives"
        );
        b.record(Pass::Normal, ERROR, t);
        assert!(b.is_open());
        assert_eq!(b.admit(t + 4_999), None);
        assert_eq!(b.admit(t + 5_000), Some(Pass::Probe));
        assert_eq!(b.admit(t + 5_001), None, "one probe at a time");
        b.record(Pass::Probe, ERROR, t + 5_100);
        assert_eq!(b.admit(t + 6_000), None, "a failed probe opens it again");
        assert_eq!(b.admit(t + 10_100), Some(Pass::Probe));
        b.record(Pass::Probe, OK, t + 10_200);
        assert_eq!(b.admit(t + 10_201), Some(Pass::Normal));
    }

    #[test]
    fn old_errors_leave_the_window() {
        let b = breaker();
        for _ in 0..3 {
            b.record(Pass::Normal, ERROR, 0);
        }
        // 20 s later the old errors are outside the 10 s window.
        for _ in 0..3 {
            b.record(Pass::Normal, OK, 20_000);
        }
        b.record(Pass::Normal, ERROR, 20_000);
        assert!(!b.is_open());
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced() {
        let b = breaker();
        for _ in 0..4 {
            b.record(Pass::Normal, ERROR, 0);
        }
        assert_eq!(b.admit(5_000), Some(Pass::Probe));
        assert_eq!(b.admit(9_999), None);
        assert_eq!(b.admit(10_000), Some(Pass::Probe));
    }

    #[test]
    fn slow_calls_open_it_at_their_ratio_and_a_slow_probe_keeps_it_open() {
        let b = Breaker::new(BreakerPolicy {
            slow: Some(SlowPolicy {
                threshold_us: 800_000,
                ratio: 0.5,
            }),
            ..breaker().policy
        });
        let slow = Outcome {
            ok: true,
            took_us: 800_001,
        };
        let at_threshold = Outcome {
            ok: true,
            took_us: 800_000,
        };
        let t = 100_000;
        b.record(Pass::Normal, slow, t);
        b.record(Pass::Normal, at_threshold, t);
        b.record(Pass::Normal, OK, t);
        assert!(!b.is_open(), "fewer than min_requests");
        b.record(Pass::Normal, OK, t);
        assert!(!b.is_open(), "one slow call in four is under half");
        b.record(Pass::Normal, slow, t);
        assert!(
            !b.is_open(),
            "a slow call that succeeds is no error: 2 of 5 slow"
        );
        b.record(Pass::Normal, slow, t);
        assert!(b.is_open(), "3 of 6 calls slow: half");
        assert_eq!(b.admit(t + 5_000), Some(Pass::Probe));
        b.record(Pass::Probe, slow, t + 5_900);
        assert_eq!(b.admit(t + 6_000), None, "a slow probe opens it again");
        assert_eq!(b.admit(t + 10_900), Some(Pass::Probe));
        b.record(Pass::Probe, OK, t + 10_950);
        assert_eq!(b.admit(t + 10_951), Some(Pass::Normal));
    }

    #[test]
    fn without_slow_call_a_slow_success_is_a_success() {
        let b = breaker();
        for _ in 0..10 {
            b.record(
                Pass::Normal,
                Outcome {
                    ok: true,
                    took_us: 60_000_000,
                },
                0,
            );
        }
        assert!(!b.is_open());
    }
}
