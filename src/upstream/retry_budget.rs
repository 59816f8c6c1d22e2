//! `retry_budget`: retries of an upstream stay under a share of its requests (SPEC §11).
//!
//! `retries` bounds the attempts of one request; it does not bound what a failing upstream
//! receives from all of them: with `retries: 3`, every request becomes four the moment the
//! upstream fails, and the retries keep it down. The budget, as Linkerd's and Finagle's,
//! allows retries up to `ratio` of the requests of the last ten seconds, plus
//! `min_per_second` over those ten seconds so an upstream with little traffic can still be
//! retried. The window is a ring of ten one-second buckets of atomic counters.

use prometheus::IntCounter;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const BUCKETS: u64 = 10;
const SLICE_MS: u64 = 1_000;

#[derive(Debug, Default)]
struct Bucket {
    /// Which second the counts belong to.
    slice: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

/// One upstream's budget. Shared with the next version of the upstream while
/// `retry_budget` does not change.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    /// Retries the window allows whatever the requests (`min_per_second` × its seconds).
    floor: f64,
    buckets: [Bucket; BUCKETS as usize],
    /// `gatehouse_retry_budget_exhausted_total{upstream}`.
    exhausted: IntCounter,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: u32, exhausted: IntCounter) -> RetryBudget {
        RetryBudget {
            ratio,
            floor: f64::from(min_per_second) * BUCKETS as f64,
            buckets: Default::default(),
            exhausted,
        }
    }

    /// Counts a request (its first attempt).
    pub fn request(&self, now: u64) {
        self.bucket(now).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether one more retry fits the budget; if so, it is counted.
    pub fn try_retry(&self, now: u64) -> bool {
        let (requests, retries) = self.totals(now / SLICE_MS);
        if f64::from(retries) + 1.0 > self.ratio * f64::from(requests) + self.floor {
            self.exhausted.inc();
            return false;
        }
        self.bucket(now).retries.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The bucket of `now`, started over when it held an older second.
    fn bucket(&self, now: u64) -> &Bucket {
        let slice = now / SLICE_MS;
        let bucket = &self.buckets[(slice % BUCKETS) as usize];
        if bucket.slice.load(Ordering::Acquire) != slice
            && bucket.slice.swap(slice, Ordering::AcqRel) != slice
        {
            bucket.requests.store(0, Ordering::Relaxed);
            bucket.retries.store(0, Ordering::Relaxed);
        }
        bucket
    }

    /// Requests and retries within the ten seconds ending at `slice`.
    fn totals(&self, slice: u64) -> (u32, u32) {
        self.buckets
            .iter()
            .filter(|b| slice.saturating_sub(b.slice.load(Ordering::Acquire)) < BUCKETS)
            .fold((0, 0), |(r, t), b| {
                (
                    r + b.requests.load(Ordering::Relaxed),
                    t + b.retries.load(Ordering::Relaxed),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(
            ratio,
            min_per_second,
            IntCounter::new("exhausted", "exhausted").unwrap(),
        )
    }

    #[test]
    fn retries_stay_under_the_ratio_of_requests() {
        let b = budget(0.2, 0);
        let now = 50_000;
        for _ in 0..100 {
            b.request(now);
        }
        let allowed = (0..100).filter(|_| b.try_retry(now)).count();
        assert_eq!(allowed, 20);
        assert_eq!(b.exhausted.get(), 80);
    }

    #[test]
    fn min_per_second_allows_retries_of_a_quiet_upstream() {
        let b = budget(0.2, 1);
        let now = 50_000;
        b.request(now);
        // Ten seconds at one retry a second: ten retries, whatever the one request.
        let allowed = (0..30).filter(|_| b.try_retry(now)).count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn requests_and_retries_leave_the_window_after_ten_seconds() {
        let b = budget(0.5, 0);
        for _ in 0..10 {
            b.request(0);
        }
        assert_eq!((0..10).filter(|_| b.try_retry(0)).count(), 5);
        // Ten seconds later the old requests no longer pay for retries.
        assert!(!b.try_retry(10_000));
        b.request(10_000);
        b.request(10_000);
        assert!(b.try_retry(10_500));
        assert!(!b.try_retry(10_500));
    }
}
