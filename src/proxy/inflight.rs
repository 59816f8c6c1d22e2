//! Counts requests in flight, so a graceful shutdown can end as soon as the last one is done.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

const SHARDS: usize = 16;

/// One counter per cache line, so threads do not fight over a single hot counter.
#[repr(align(128))]
#[derive(Default)]
struct Shard(AtomicIsize);

/// A request counter sharded by thread.
#[derive(Default)]
pub struct InFlight {
    shards: [Shard; SHARDS],
    /// Someone waits for the count to reach zero (a drain): finishing requests then check
    /// for it. Until then a request pays one load of this flag.
    awaited: AtomicBool,
    settled: Notify,
}

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn shard_index() -> usize {
    SHARD.with(|s| {
        if s.get() == usize::MAX {
            s.set(fastrand::usize(..SHARDS));
        }
        s.get()
    })
}

impl InFlight {
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        let shard = shard_index();
        self.shards[shard].0.fetch_add(1, Ordering::Relaxed);
        InFlightGuard {
            counter: self.clone(),
            shard,
        }
    }

    /// Waits until no request is in flight.
    pub async fn settled(&self) {
        // Sequentially consistent with the check in `InFlightGuard::drop`: either the
        // finishing request sees the flag, or this sees its count.
        self.awaited.store(true, Ordering::SeqCst);
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() <= 0 {
                return;
            }
            notified.await;
        }
    }

    /// Requests started and not yet finished.
    pub fn count(&self) -> isize {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// Marks one request in flight until dropped (a guard may be dropped on another thread).
pub struct InFlightGuard {
    counter: Arc<InFlight>,
    shard: usize,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let counter = &self.counter;
        counter.shards[self.shard].0.fetch_sub(1, Ordering::SeqCst);
        if counter.awaited.load(Ordering::SeqCst) && counter.count() <= 0 {
            counter.settled.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_across_threads() {
        let inflight = Arc::new(InFlight::default());
        let guards: Vec<_> = (0..8)
            .map(|_| {
                let c = inflight.clone();
                std::thread::spawn(move || c.enter()).join().unwrap()
            })
            .collect();
        assert_eq!(inflight.count(), 8);
        drop(guards);
        assert_eq!(inflight.count(), 0);
    }

    #[tokio::test]
    async fn a_wait_for_none_in_flight_ends_with_the_last_request() {
        let inflight = Arc::new(InFlight::default());
        let guards: Vec<_> = (0..3).map(|_| inflight.enter()).collect();
        let waiter = tokio::spawn({
            let inflight = inflight.clone();
            async move { inflight.settled().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let ended = std::thread::spawn(move || drop(guards));
        ended.join().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the wait ends once the count is zero")
            .unwrap();
        // Nothing in flight: the wait ends at once.
        inflight.settled().await;
    }
}
