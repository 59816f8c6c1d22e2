//! `concurrency`: how many requests may be in flight to an upstream at once (SPEC §11).
//!
//! Past the limit a request is refused at once (503 `overloaded`) instead of joining a
//! queue at the upstream: the requests admitted keep their latency while the upstream is
//! saturated, where an unbounded queue would make every request slow.
//!
//! The limit is fixed (`max`), or found from latency (`adaptive`), with the gradient
//! method of Envoy's adaptive concurrency filter: the upstream's round-trip time without
//! load (`min_rtt`) is measured with the limit pinned to `min`, then at every window the
//! limit is scaled by `min_rtt × (1 + BUFFER) / sampled_rtt` (between 0.5 and 2) and given
//! a headroom of its square root. While the upstream answers as fast as unloaded the limit
//! grows; as a queue forms there, its latency rises and the limit falls back to what the
//! upstream serves without queueing. `min_rtt` is measured again every
//! [`MIN_RTT_INTERVAL`] (with jitter), so a change of the upstream's speed is followed.
//!
//! The request path takes a permit with one atomic add and gives a latency sample with
//! two more; the limit is worked out again by whichever request ends a window, under a
//! per-upstream lock it only tries (a request never waits for it).

use prometheus::IntCounter;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// How much slower than unloaded the sampled latency may be before the limit shrinks.
const BUFFER: f64 = 0.1;
/// The shortest window of latency samples (a window lasts at least `min_rtt` too, so a
/// slow upstream's answers reflect the limit they were sent under).
const MIN_WINDOW: Duration = Duration::from_millis(100);
/// Samples `min_rtt` is taken from.
const MIN_RTT_SAMPLES: u32 = 25;
/// How often `min_rtt` is measured again (plus up to 15 % of jitter, so a fleet of
/// gateways does not pin every upstream's limit at once).
pub const MIN_RTT_INTERVAL: Duration = Duration::from_secs(30);

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn micros(at: Instant) -> u64 {
    at.saturating_duration_since(*EPOCH).as_micros() as u64
}

/// The limit of requests in flight to one upstream. Shared with the next version of the
/// upstream while `concurrency` does not change.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    inflight: AtomicU32,
    limit: AtomicU32,
    adaptive: Option<Gradient>,
    /// `gatehouse_overloaded_total{upstream}`.
    refused: IntCounter,
}

/// A request's place among the requests in flight; given back when dropped.
#[derive(Debug)]
pub struct Permit {
    limit: Arc<ConcurrencyLimit>,
    /// Which `min_rtt` measurement the request was admitted under.
    epoch: u32,
}

impl ConcurrencyLimit {
    /// A fixed cap of `max` requests.
    pub fn fixed(max: u32, refused: IntCounter) -> ConcurrencyLimit {
        ConcurrencyLimit {
            inflight: AtomicU32::new(0),
            limit: AtomicU32::new(max),
            adaptive: None,
            refused,
        }
    }

    /// A limit between `min` and `max` found from latency; it starts at `min`, measuring
    /// the upstream's latency without load.
    pub fn adaptive(min: u32, max: u32, now: Instant, refused: IntCounter) -> ConcurrencyLimit {
        ConcurrencyLimit {
            inflight: AtomicU32::new(0),
            limit: AtomicU32::new(min),
            adaptive: Some(Gradient::new(min, max, now)),
            refused,
        }
    }

    /// A place for one more request, or `None` past the limit (counted as a refusal).
    pub fn acquire(self: &Arc<Self>) -> Option<Permit> {
        self.acquire_at(Instant::now)
    }

    /// [`ConcurrencyLimit::acquire`], reading the clock (only on a refusal) with `clock`.
    fn acquire_at(self: &Arc<Self>, clock: impl FnOnce() -> Instant) -> Option<Permit> {
        let Some(gradient) = &self.adaptive else {
            if !self.admit() {
                self.refused.inc();
                return None;
            }
            return Some(Permit {
                limit: self.clone(),
                epoch: 0,
            });
        };
        let epoch = gradient.epoch.load(Ordering::Acquire);
        let admitted = if gradient.measuring.load(Ordering::Acquire) {
            // Measuring `min_rtt`: at most `min` requests of this measurement at once,
            // whatever older requests (a tunnel, a long poll) still hold their places.
            let fresh = gradient.fresh.fetch_add(1, Ordering::AcqRel);
            if fresh >= gradient.min {
                gradient.fresh.fetch_sub(1, Ordering::AcqRel);
                false
            } else {
                self.inflight.fetch_add(1, Ordering::AcqRel);
                true
            }
        } else if self.admit() {
            gradient.fresh.fetch_add(1, Ordering::AcqRel);
            true
        } else {
            false
        };
        if !admitted {
            self.refused.inc();
            gradient.stalled(clock(), self);
            return None;
        }
        gradient
            .peak
            .fetch_max(self.inflight.load(Ordering::Relaxed), Ordering::Relaxed);
        Some(Permit {
            limit: self.clone(),
            epoch,
        })
    }

    /// Takes a place under `limit`, or leaves everything as it was.
    fn admit(&self) -> bool {
        let before = self.inflight.fetch_add(1, Ordering::AcqRel);
        if before >= self.limit.load(Ordering::Acquire) {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// The limit in force (read by `/metrics` when scraped).
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Acquire)
    }
}

impl Permit {
    /// The upstream answered the request well after `took`: a latency sample for an
    /// adaptive limit. Failures are not samples (a quick error is no sign of spare room).
    pub fn answered(&self, took: Duration, now: Instant) {
        let Some(gradient) = &self.limit.adaptive else {
            return;
        };
        if self.epoch != gradient.epoch.load(Ordering::Acquire) {
            // Sent under the limit before a measurement of `min_rtt` began: its latency
            // says nothing of the upstream without load.
            return;
        }
        gradient.sample(took, now, &self.limit);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limit.inflight.fetch_sub(1, Ordering::AcqRel);
        if let Some(gradient) = &self.limit.adaptive {
            if self.epoch == gradient.epoch.load(Ordering::Acquire) {
                // Counted among this measurement's requests (a newer measurement started
                // its count from zero).
                let _ = gradient
                    .fresh
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            }
        }
    }
}

/// How long past its end a window may go without a sample while requests are refused
/// before the limit is raised anyway: every place held by requests that do not end soon
/// (tunnels, long polls) would otherwise freeze it.
const STALL: Duration = Duration::from_secs(1);

/// The adaptive limit's controller.
#[derive(Debug)]
struct Gradient {
    min: u32,
    max: u32,
    /// The current window's samples: their sum (µs) and count.
    sum: AtomicU64,
    count: AtomicU64,
    /// The most requests in flight seen in the current window: a limit the traffic never
    /// came near is not raised (it would let a burst through whole after a quiet spell).
    peak: AtomicU32,
    /// When the current window ends (µs since `EPOCH`).
    window_end: AtomicU64,
    /// Bumped when a measurement of `min_rtt` begins.
    epoch: AtomicU32,
    /// `min_rtt` is being measured.
    measuring: AtomicBool,
    /// Requests in flight admitted since the current measurement began.
    fresh: AtomicU32,
    control: Mutex<Control>,
}

#[derive(Debug)]
struct Control {
    /// The limit, unrounded.
    limit: f64,
    /// The upstream's latency without load (µs); `None` until first measured.
    min_rtt: Option<f64>,
    /// While measuring `min_rtt`: the limit to go back to, and the samples so far.
    measuring: Option<Measuring>,
    /// When `min_rtt` is measured again (µs since `EPOCH`).
    next_measure: u64,
}

#[derive(Debug)]
struct Measuring {
    resume: f64,
    sum: u64,
    count: u64,
}

impl Gradient {
    fn new(min: u32, max: u32, now: Instant) -> Gradient {
        let now = micros(now);
        Gradient {
            min,
            max,
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
            peak: AtomicU32::new(0),
            window_end: AtomicU64::new(now + MIN_WINDOW.as_micros() as u64),
            epoch: AtomicU32::new(0),
            measuring: AtomicBool::new(true),
            fresh: AtomicU32::new(0),
            control: Mutex::new(Control {
                limit: f64::from(min),
                min_rtt: None,
                measuring: Some(Measuring {
                    resume: f64::from(min),
                    sum: 0,
                    count: 0,
                }),
                next_measure: u64::MAX,
            }),
        }
    }

    fn sample(&self, took: Duration, now: Instant, limit: &ConcurrencyLimit) {
        self.sum
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let now = micros(now);
        if now < self.window_end.load(Ordering::Acquire) {
            return;
        }
        // Whoever ends the window works out the limit; the others go on.
        let Ok(mut control) = self.control.try_lock() else {
            return;
        };
        if now < self.window_end.load(Ordering::Acquire) {
            return;
        }
        let sum = self.sum.swap(0, Ordering::AcqRel);
        let count = self.count.swap(0, Ordering::AcqRel);
        let peak = self.peak.swap(0, Ordering::AcqRel);
        let next = self.update(&mut control, sum, count, peak, now);
        self.next_window(&control, now);
        limit.limit.store(next, Ordering::Release);
    }

    fn next_window(&self, control: &Control, now: u64) {
        let window = control.min_rtt.map_or(MIN_WINDOW, |rtt| {
            Duration::from_micros(rtt as u64).max(MIN_WINDOW)
        });
        self.window_end
            .store(now + window.as_micros() as u64, Ordering::Release);
    }

    /// A request was refused: if no answer has ended a window for [`STALL`], the places
    /// are held by requests that do not end, and the limit moves without samples. A
    /// measurement of `min_rtt` that cannot finish is given up (the last `min_rtt` stays);
    /// otherwise the limit gets its headroom, as after a window at unloaded latency.
    fn stalled(&self, now: Instant, limit: &ConcurrencyLimit) {
        let now = micros(now);
        if now < self.window_end.load(Ordering::Acquire) + STALL.as_micros() as u64 {
            return;
        }
        let Ok(mut c) = self.control.try_lock() else {
            return;
        };
        if now < self.window_end.load(Ordering::Acquire) + STALL.as_micros() as u64 {
            return;
        }
        if let Some((resume, sum, count)) = c.measuring.as_ref().map(|m| (m.resume, m.sum, m.count))
        {
            if c.min_rtt.is_none() && count > 0 {
                // The first measurement: what it has is better than nothing.
                c.min_rtt = Some(sum as f64 / count as f64);
            }
            if c.min_rtt.is_some() {
                c.limit = resume;
                self.end_measuring(&mut c, now);
            }
        } else {
            c.limit = (c.limit + c.limit.sqrt()).min(f64::from(self.max));
        }
        self.next_window(&c, now);
        limit.limit.store(c.limit.round() as u32, Ordering::Release);
    }

    fn end_measuring(&self, c: &mut Control, now: u64) {
        c.measuring = None;
        self.measuring.store(false, Ordering::Release);
        let jitter = 1.0 + fastrand::f64() * 0.15;
        c.next_measure = now + (MIN_RTT_INTERVAL.as_micros() as f64 * jitter) as u64;
    }

    /// The limit after a window of `count` samples summing to `sum` µs, in which at most
    /// `peak` requests were in flight.
    fn update(&self, c: &mut Control, sum: u64, count: u64, peak: u32, now: u64) -> u32 {
        let (min, max) = (f64::from(self.min), f64::from(self.max));
        if let Some(m) = &mut c.measuring {
            m.sum += sum;
            m.count += count;
            if m.count < u64::from(MIN_RTT_SAMPLES) {
                return self.min;
            }
            c.min_rtt = Some(m.sum as f64 / m.count as f64);
            c.limit = m.resume;
            self.end_measuring(c, now);
            return c.limit.round() as u32;
        }
        if let (Some(min_rtt), true) = (c.min_rtt, count > 0) {
            let sampled = (sum as f64 / count as f64).max(1.0);
            let gradient = (min_rtt * (1.0 + BUFFER) / sampled).clamp(0.5, 2.0);
            let scaled = c.limit * gradient;
            let mut next = scaled + scaled.sqrt();
            if f64::from(peak) * 2.0 < c.limit {
                // The traffic came nowhere near the limit: no sign it may grow.
                next = next.min(c.limit);
            }
            c.limit = next.clamp(min, max);
        }
        if now >= c.next_measure {
            // Measure `min_rtt` again: at most `min` of the requests sent from now.
            c.measuring = Some(Measuring {
                resume: c.limit,
                sum: 0,
                count: 0,
            });
            self.epoch.fetch_add(1, Ordering::AcqRel);
            self.fresh.store(0, Ordering::Release);
            self.measuring.store(true, Ordering::Release);
            return self.min;
        }
        c.limit.round() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adaptive(min: u32, max: u32, now: Instant) -> Arc<ConcurrencyLimit> {
        Arc::new(ConcurrencyLimit::adaptive(
            min,
            max,
            now,
            IntCounter::new("refused", "refused").unwrap(),
        ))
    }

    #[test]
    fn a_fixed_limit_refuses_past_max_and_takes_requests_again_as_permits_return() {
        let limit = Arc::new(ConcurrencyLimit::fixed(
            2,
            IntCounter::new("refused", "refused").unwrap(),
        ));
        let a = limit.acquire().unwrap();
        let _b = limit.acquire().unwrap();
        assert!(limit.acquire().is_none());
        assert_eq!(limit.refused.get(), 1);
        assert_eq!(limit.inflight(), 2, "a refusal holds no place");
        drop(a);
        assert!(limit.acquire().is_some());
    }

    /// Drives the limit against a model upstream serving `capacity` requests at a time in
    /// `service` each, queueing the rest: at a full offered load, latency is
    /// `service × max(1, limit / capacity)`. Returns the limit after `windows` windows.
    fn settle(
        limit: &Arc<ConcurrencyLimit>,
        capacity: f64,
        service: Duration,
        start: Instant,
        windows: u32,
    ) -> (Instant, u32) {
        let mut now = start;
        for _ in 0..windows {
            let l = f64::from(limit.limit());
            let latency = service.mul_f64((l / capacity).max(1.0));
            now += latency.max(MIN_WINDOW) + Duration::from_millis(1);
            // A full load: the limit's worth in flight at once, then their answers.
            let permits: Vec<Permit> = (0..limit.limit())
                .map(|_| limit.acquire().unwrap())
                .collect();
            for permit in &permits {
                permit.answered(latency, now);
            }
        }
        (now, limit.limit())
    }

    #[test]
    fn the_limit_is_pinned_at_min_until_min_rtt_is_measured_then_grows() {
        let start = Instant::now();
        let limit = adaptive(5, 1000, start);
        assert_eq!(limit.limit(), 5);
        // 24 samples: not yet enough.
        for _ in 0..24 {
            limit
                .acquire()
                .unwrap()
                .answered(Duration::from_millis(10), start + Duration::from_secs(1));
        }
        assert_eq!(limit.limit(), 5);
        let (_, l) = settle(
            &limit,
            1e9,
            Duration::from_millis(10),
            start + Duration::from_secs(1),
            1,
        );
        assert_eq!(l, 5, "min_rtt measured: the limit resumes where it was");
        let (_, l) = settle(
            &limit,
            1e9,
            Duration::from_millis(10),
            start + Duration::from_secs(2),
            5,
        );
        assert!(
            l > 20,
            "an upstream as fast as unloaded lets the limit grow: {l}"
        );
    }

    #[test]
    fn the_limit_settles_near_the_capacity_of_a_queueing_upstream() {
        let start = Instant::now();
        let limit = adaptive(5, 1000, start);
        let (now, l) = settle(&limit, 50.0, Duration::from_millis(250), start, 40);
        // The fixed point: limit × gradient = capacity × 1.1, plus its square root: about
        // 62 for a capacity of 50, a queue of a fifth of it at the upstream.
        assert!((50..=80).contains(&l), "settled at {l}");
        // The upstream slows down for good (a bad deploy): the limit falls to its floor.
        let (_, slower) = settle(&limit, 5.0, Duration::from_millis(250), now, 20);
        assert!(slower <= 10, "fell to {slower}");
    }

    #[test]
    fn the_limit_stays_within_its_bounds() {
        let start = Instant::now();
        let limit = adaptive(5, 30, start);
        let (_, l) = settle(&limit, 1e9, Duration::from_millis(1), start, 60);
        assert_eq!(l, 30);
        let limit = adaptive(5, 30, start);
        let (now, _) = settle(&limit, 1e9, Duration::from_millis(1), start, 3);
        let (_, l) = settle(&limit, 0.5, Duration::from_millis(1), now, 30);
        assert_eq!(l, 5);
    }

    #[test]
    fn min_rtt_is_measured_again_with_only_requests_sent_after_the_measurement_began() {
        let start = Instant::now();
        let limit = adaptive(5, 1000, start);
        let (now, _) = settle(&limit, 1e9, Duration::from_millis(10), start, 10);
        let before = limit.acquire().unwrap();
        let later = now + MIN_RTT_INTERVAL.mul_f64(1.2);
        limit
            .acquire()
            .unwrap()
            .answered(Duration::from_millis(10), later);
        assert_eq!(limit.limit(), 5, "measuring again: pinned at min");
        // An answer to a request admitted before is not a sample of the measurement.
        for _ in 0..100 {
            before.answered(Duration::from_secs(5), later + Duration::from_secs(1));
        }
        let c = limit.adaptive.as_ref().unwrap().control.lock().unwrap();
        assert!(c.measuring.as_ref().is_some_and(|m| m.count <= 1));
    }

    #[test]
    fn a_limit_the_traffic_never_comes_near_does_not_grow() {
        let start = Instant::now();
        let limit = adaptive(5, 1000, start);
        let (mut now, _) = settle(&limit, 1e9, Duration::from_millis(10), start, 5);
        let before = limit.limit();
        // One request at a time, answered as fast as unloaded, for many windows.
        for _ in 0..200 {
            now += Duration::from_millis(20);
            limit
                .acquire()
                .unwrap()
                .answered(Duration::from_millis(10), now);
        }
        assert!(
            limit.limit() <= before,
            "{} grew from {before}",
            limit.limit()
        );
    }

    #[test]
    fn requests_that_never_end_hold_neither_a_measurement_nor_the_limit() {
        let start = Instant::now();
        let limit = adaptive(2, 1000, start);
        let (now, settled) = settle(&limit, 1e9, Duration::from_millis(10), start, 30);
        assert!(settled > 10);
        // `settled` long requests (tunnels) take every place, then min_rtt is measured again.
        let tunnels: Vec<Permit> = (0..settled).map(|_| limit.acquire().unwrap()).collect();
        let later = now + MIN_RTT_INTERVAL.mul_f64(1.2);
        tunnels[0].answered(Duration::from_millis(10), later);
        assert_eq!(limit.limit(), 2, "measuring");
        // The measurement takes `min` requests of its own, whatever the tunnels hold.
        let fresh: Vec<Permit> = (0..2).map(|_| limit.acquire().unwrap()).collect();
        assert!(limit.acquire_at(|| later).is_none(), "past min of its own");
        // Its requests never answer either: a second later the measurement is given up
        // and the limit it had comes back.
        let stalled = later + STALL + Duration::from_millis(200);
        assert!(limit.acquire_at(|| stalled).is_none());
        assert!(
            limit.limit() >= settled,
            "back to the limit before the measurement: {} for {settled}",
            limit.limit()
        );
        drop(fresh);
        drop(tunnels);
        assert!(limit.acquire().is_some());
    }

    #[test]
    fn a_limit_held_by_requests_that_never_end_is_raised_after_a_stall() {
        let start = Instant::now();
        let limit = adaptive(2, 1000, start);
        let (now, _) = settle(&limit, 2.0, Duration::from_millis(10), start, 30);
        let held = limit.limit();
        let long: Vec<Permit> = (0..held).map(|_| limit.acquire().unwrap()).collect();
        assert!(limit.acquire_at(|| now).is_none());
        let stalled = now + STALL + Duration::from_secs(1);
        assert!(limit.acquire_at(|| stalled).is_none());
        assert!(
            limit.limit() > held,
            "raised past {held}: {}",
            limit.limit()
        );
        assert!(limit.acquire().is_some());
        drop(long);
    }
}
