//! Request latency as fixed histogram buckets: what a worker counts, reports to the primary
//! in its statistics (a bounded, fixed-size message) and the primary exposes as
//! `herd_request_duration_seconds`.

use std::time::Duration;

/// Upper bounds of the buckets, in seconds (one more bucket holds everything slower).
pub const BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Number of buckets, the last one unbounded.
pub const BUCKETS: usize = BOUNDS.len() + 1;

/// Counts of requests per latency bucket (not cumulative) and their summed duration.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    /// Requests per bucket; `counts[i]` took at most `BOUNDS[i]` and more than the bound
    /// before; the last bucket took more than every bound.
    pub counts: [u64; BUCKETS],
    /// Total time of the counted requests, in microseconds.
    pub sum_us: u64,
}

impl Latency {
    /// Counts one request that took `took`.
    pub fn record(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = BOUNDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BOUNDS.len());
        self.counts[i] = self.counts[i].saturating_add(1);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Latency) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    /// Requests counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// Total time, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_us as f64 / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_by_upper_bound() {
        let mut l = Latency::default();
        l.record(Duration::from_micros(500));
        l.record(Duration::from_millis(3));
        l.record(Duration::from_secs(10));
        assert_eq!((l.counts[0], l.counts[3], l.counts[BUCKETS - 1]), (1, 1, 1));
        assert_eq!(l.count(), 3);
        let mut m = l;
        m.add(&l);
        assert_eq!((m.count(), m.sum_us), (6, 2 * 10_003_500));
    }
}
