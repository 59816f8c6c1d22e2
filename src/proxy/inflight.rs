//! Counts requests in flight, so a graceful shutdown can end as soon as the last one is done.

use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

const SHARDS: usize = 16;

/// One counter per cache line, so threads do not fight over a single hot counter.
#[repr(align(128))]
#[derive(Default)]
struct Shard(AtomicIsize);

/// A request counter sharded by thread.
#[derive(Default)]
pub struct InFlight {
    shards: [Shard; SHARDS],
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
        self.counter.shards[self.shard]
            .0
            .fetch_sub(1, Ordering::Relaxed);
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
}
