//! `least-connections`: the available worker with the fewest open connections (HAProxy's
//! `leastconn`); ties are broken in rotation so equal workers still share evenly.

use super::{Balancer, Load};

/// Fewest open connections first, rotation among equals.
#[derive(Debug, Default)]
pub struct LeastConnections {
    next: usize,
}

impl Balancer for LeastConnections {
    fn pick(&mut self, workers: &[Option<Load>]) -> Option<usize> {
        let n = workers.len();
        let mut best: Option<(usize, u64)> = None;
        for i in (0..n).map(|k| (self.next + k) % n) {
            if let Some(load) = workers[i] {
                if best.is_none_or(|(_, open)| load.open < open) {
                    best = Some((i, load.open));
                }
            }
        }
        let (chosen, _) = best?;
        self.next = chosen + 1;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn l(open: u64) -> Option<Load> {
        Some(Load {
            open,
            idle: true,
            waiting: 0,
            serving: 0,
            busy_for: Duration::ZERO,
        })
    }

    #[test]
    fn fewest_open_wins_ties_rotate() {
        let mut lc = LeastConnections::default();
        assert_eq!(lc.pick(&[l(5), l(1), l(3)]), Some(1));
        assert_eq!(lc.pick(&[l(0), l(0), l(0)]), Some(2));
        assert_eq!(lc.pick(&[l(0), l(0), l(0)]), Some(0));
        assert_eq!(lc.pick(&[l(0), None, l(4)]), Some(0));
        assert_eq!(lc.pick(&[None, None]), None);
    }
}
