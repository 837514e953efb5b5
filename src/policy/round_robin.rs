//! `round-robin`: the next available worker in slot order (Node's `SCHED_RR`).

use super::{Balancer, Load};

/// Strict rotation over the worker slots, skipping the ones that cannot take a connection.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: usize,
}

impl Balancer for RoundRobin {
    fn pick(&mut self, workers: &[Option<Load>]) -> Option<usize> {
        let n = workers.len();
        let chosen = (0..n)
            .map(|k| (self.next + k) % n)
            .find(|&i| workers[i].is_some())?;
        self.next = chosen + 1;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rotates_and_skips_unavailable() {
        let l = Some(Load {
            open: 0,
            idle: true,
            waiting: 0,
            serving: 0,
            busy_for: Duration::ZERO,
        });
        let mut rr = RoundRobin::default();
        let picks: Vec<_> = (0..6).map(|_| rr.pick(&[l, l, l]).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_eq!(rr.pick(&[l, None, l]), Some(0));
        assert_eq!(rr.pick(&[l, None, l]), Some(2));
        assert_eq!(rr.pick(&[None, None, None]), None);
    }
}
