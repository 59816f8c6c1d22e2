//! `pool.max_idle`: how many connections to one node an upstream keeps open for reuse.
//!
//! Pingora keeps idle upstream connections in one process-wide pool and decides, when a
//! response ends, whether the connection goes back into it; there is no hook at that moment.
//! So the cap is enforced at the other end, when a request is sent. Each node counts the
//! connections its upstream keeps: `busy` ones carry a request and will be handed back,
//! `idle` ones were handed back and not taken since. A request takes an idle one when there
//! is one, or a new one while `idle + busy` is under the cap; otherwise it gets a one-shot
//! connection (`Connection: close`, under a pool key of its own), which neither takes a kept
//! connection nor leaves one behind.
//!
//! `idle` is an upper bound, never an undercount: a kept connection that the node closes,
//! that times out or that fails is still counted until a request takes its place, and the
//! request that does so then opens a fresh connection in the same slot. So the connections
//! really idle in the pool never exceed the cap, and a stale count never refuses a slot.

use std::sync::atomic::{AtomicU64, Ordering};

/// One node's kept connections, `idle` in the high half and `busy` in the low half, so both
/// change in one atomic step.
#[derive(Debug, Default)]
pub struct KeptConnections(AtomicU64);

const IDLE: u64 = 1 << 32;
const BUSY: u64 = 1;

impl KeptConnections {
    /// Takes a kept connection for one request, if the cap allows: `true` when the request
    /// may use (and afterwards hand back) a kept connection, `false` when it must use a
    /// one-shot connection.
    pub fn take(&self, cap: u32) -> bool {
        let mut state = self.0.load(Ordering::Relaxed);
        loop {
            let (idle, busy) = (state >> 32, state & 0xffff_ffff);
            let next = if idle > 0 {
                // Reuse: one idle connection becomes busy.
                state - IDLE + BUSY
            } else if busy < u64::from(cap) {
                // Nothing idle: a new connection, within the cap.
                state + BUSY
            } else {
                return false;
            };
            match self
                .0
                .compare_exchange_weak(state, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => state = now,
            }
        }
    }

    /// The request that took a kept connection is done: the connection is idle again (or,
    /// if it was closed meanwhile, its slot is counted idle until someone takes it).
    pub fn hand_back(&self) {
        // idle + 1 and busy - 1 at once; busy >= 1 because this request took a slot.
        self.0.fetch_add(IDLE - BUSY, Ordering::Relaxed);
    }

    /// Connections counted idle and busy.
    pub fn counts(&self) -> (u32, u32) {
        let state = self.0.load(Ordering::Relaxed);
        ((state >> 32) as u32, state as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_kept_connections_and_reuses_idle_ones() {
        let kept = KeptConnections::default();
        assert!(kept.take(2));
        assert!(kept.take(2));
        assert!(
            !kept.take(2),
            "a third concurrent request gets a one-shot connection"
        );
        assert_eq!(kept.counts(), (0, 2));
        kept.hand_back();
        assert_eq!(kept.counts(), (1, 1));
        assert!(kept.take(2), "an idle connection is taken");
        assert_eq!(kept.counts(), (0, 2));
        kept.hand_back();
        kept.hand_back();
        assert_eq!(kept.counts(), (2, 0));
        // Both idle ones may be taken, no more: idle + busy never exceeds the cap.
        assert!(kept.take(2));
        assert!(kept.take(2));
        assert!(!kept.take(2));
    }

    #[test]
    fn never_exceeds_the_cap_across_threads() {
        let kept = std::sync::Arc::new(KeptConnections::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let kept = kept.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if kept.take(3) {
                            let (idle, busy) = kept.counts();
                            assert!(idle + busy <= 3, "{idle} + {busy}");
                            kept.hand_back();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (idle, busy) = kept.counts();
        assert_eq!(busy, 0);
        assert!(idle <= 3);
    }
}
