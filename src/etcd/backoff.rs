//! Delays between reconnection attempts.

use std::time::Duration;

/// The first delay after a connection to etcd fails.
pub const RECONNECT_FIRST: Duration = Duration::from_millis(100);
/// The longest delay: an etcd that comes back is noticed within this.
pub const RECONNECT_CAP: Duration = Duration::from_secs(5);

/// Reconnection delays: doubling from the first to the cap, each with ±50 % jitter so many
/// gateways do not reconnect in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    first: Duration,
    cap: Duration,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            next: first,
            first,
            cap,
        }
    }

    /// The delays every etcd connection of the gateway uses.
    pub fn reconnect() -> Backoff {
        Backoff::new(RECONNECT_FIRST, RECONNECT_CAP)
    }

    /// Starts again from the first delay (once a connection has proved itself).
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.cap);
        base.mul_f64(0.5 + fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let delays: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        for (d, base) in delays.iter().zip([100u64, 200, 400, 800, 800, 800]) {
            let base = Duration::from_millis(base);
            assert!(
                *d >= base / 2 && *d <= base * 3 / 2,
                "{d:?} around {base:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(150));
    }
}
