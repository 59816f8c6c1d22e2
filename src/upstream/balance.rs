//! Choosing among weighted members: nodes of an upstream (and, later, upstreams of a split).

use std::sync::atomic::{AtomicUsize, Ordering};

/// The longest schedule kept; larger weight sums are scaled down to fit.
const MAX_SCHEDULE: u64 = 1 << 16;

/// Smooth weighted round robin (nginx's algorithm), laid out once as a schedule of member
/// indexes. Walking it with an atomic cursor gives exact shares over every full turn, spreads
/// each member's turns evenly, and takes no lock.
pub fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let weights = reduce(weights);
    let total: i64 = weights.iter().map(|w| *w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule
}

/// Divides by the common divisor, then scales down to fit [`MAX_SCHEDULE`], keeping every
/// positive weight at least 1.
fn reduce(weights: &[u32]) -> Vec<u32> {
    let g = weights
        .iter()
        .copied()
        .filter(|w| *w > 0)
        .fold(0, gcd)
        .max(1);
    let mut reduced: Vec<u32> = weights.iter().map(|w| w / g).collect();
    let total: u64 = reduced.iter().map(|w| *w as u64).sum();
    if total > MAX_SCHEDULE {
        for w in &mut reduced {
            if *w > 0 {
                *w = ((*w as u64 * MAX_SCHEDULE / total) as u32).max(1);
            }
        }
    }
    reduced
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Picks a member index per request.
#[derive(Debug)]
pub enum Picker {
    RoundRobin {
        schedule: Box<[u32]>,
        cursor: AtomicUsize,
    },
    Random {
        /// Running sums of the weights; a uniform draw below the total lands in one.
        cumulative: Box<[u64]>,
    },
}

impl Picker {
    pub fn round_robin(weights: &[u32]) -> Picker {
        Picker::RoundRobin {
            schedule: smooth_schedule(weights).into(),
            // Start each new picker at a random point so that gateways (and reloads) do not
            // all send their first requests to the same member.
            cursor: AtomicUsize::new(fastrand::usize(..1 << 20)),
        }
    }

    pub fn random(weights: &[u32]) -> Picker {
        let mut sum = 0u64;
        let cumulative = weights
            .iter()
            .map(|w| {
                sum += *w as u64;
                sum
            })
            .collect();
        Picker::Random { cumulative }
    }

    /// The index of the chosen member, or `None` when there is none with weight.
    pub fn pick(&self) -> Option<usize> {
        match self {
            Picker::RoundRobin { schedule, cursor } => {
                if schedule.is_empty() {
                    return None;
                }
                let turn = cursor.fetch_add(1, Ordering::Relaxed);
                Some(schedule[turn % schedule.len()] as usize)
            }
            Picker::Random { cumulative } => {
                let total = *cumulative.last()?;
                if total == 0 {
                    return None;
                }
                let draw = fastrand::u64(..total);
                Some(cumulative.partition_point(|c| *c <= draw))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_smooth_and_exact() {
        // nginx's documented sequence for weights 5, 1, 1: a a b a c a a
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        let s = smooth_schedule(&[90, 10]);
        assert_eq!(s.len(), 10, "weights are reduced by their common divisor");
        assert_eq!(s.iter().filter(|i| **i == 1).count(), 1);
    }

    #[test]
    fn zero_weights_never_get_a_turn() {
        let s = smooth_schedule(&[0, 3]);
        assert!(s.iter().all(|i| *i == 1));
    }

    #[test]
    fn huge_weight_sums_are_scaled() {
        let weights: Vec<u32> = (0..100).map(|i| 10_000 - i).collect();
        let s = smooth_schedule(&weights);
        assert!(s.len() as u64 <= MAX_SCHEDULE + 100);
        for i in 0..100u32 {
            assert!(s.contains(&i), "every member keeps a turn");
        }
    }

    #[test]
    fn round_robin_shares_are_exact_over_a_turn() {
        let picker = Picker::round_robin(&[3, 1]);
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[picker.pick().unwrap()] += 1;
        }
        assert_eq!(counts, [300, 100]);
    }

    #[test]
    fn random_follows_weights() {
        let picker = Picker::random(&[1, 0, 3]);
        let mut counts = [0; 3];
        for _ in 0..40_000 {
            counts[picker.pick().unwrap()] += 1;
        }
        assert_eq!(counts[1], 0);
        // Expected 10_000 and 30_000; six standard deviations (~520) of slack.
        assert!((counts[0] as i64 - 10_000).abs() < 520, "{counts:?}");
    }

    #[test]
    fn nothing_to_pick() {
        assert_eq!(Picker::round_robin(&[]).pick(), None);
        assert_eq!(Picker::random(&[0]).pick(), None);
    }
}
