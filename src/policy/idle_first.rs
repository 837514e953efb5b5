//! `idle-first`: the next connection goes to a worker that is idle right now, in rotation among
//! the idle ones; when none is, to the one with the fewest connections waiting for it (handed
//! and not yet read) plus the ones it serves, ties in rotation. Counting the ones it serves
//! too keeps a worker that reads its channel quickly from collecting most of a burst of
//! keep-alive connections (fewest waiting alone favours it every time), and still avoids a
//! worker stuck in a long request (its connections do not finish).
//!
//! Idle means both: the worker's loop is waiting for events (not running a handler), and it has
//! read everything the primary sent it. Herd's workers publish both in a page of memory shared
//! with the primary ([`crate::ipc::StatusPage`]), so the primary knows at once, with no message
//! and no syscall: a worker that took a 1 s request a moment ago is busy although its channel is
//! empty. This is what the shared listener gets from the kernel (a busy worker does not call
//! `accept`), without its unevenness on keep-alive connections.

use super::{Balancer, Load};

/// Idle workers first, in rotation; otherwise the shortest wait.
#[derive(Debug, Default)]
pub struct IdleFirst {
    next: usize,
}

impl Balancer for IdleFirst {
    fn pick(&mut self, workers: &[Option<Load>]) -> Option<usize> {
        let n = workers.len();
        let order = (0..n).map(|k| (self.next + k) % n);
        let live = || order.clone().filter_map(|i| workers[i].map(|l| (i, l)));
        let chosen = match live().find(|(_, l)| l.idle) {
            Some((i, _)) => i,
            None => {
                live()
                    .min_by_key(|(_, l)| l.waiting.saturating_add(l.serving))?
                    .0
            }
        };
        self.next = chosen + 1;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle() -> Option<Load> {
        Some(Load {
            open: 0,
            idle: true,
            waiting: 0,
            serving: 0,
        })
    }

    fn busy(waiting: u64) -> Option<Load> {
        Some(Load {
            open: 0,
            idle: false,
            waiting,
            serving: 1,
        })
    }

    #[test]
    fn idle_ones_in_rotation_then_the_shortest_wait() {
        let mut p = IdleFirst::default();
        assert_eq!(p.pick(&[busy(0), idle(), idle()]), Some(1));
        assert_eq!(p.pick(&[busy(0), idle(), idle()]), Some(2));
        assert_eq!(
            p.pick(&[busy(0), idle(), idle()]),
            Some(1),
            "skips the busy one"
        );
        assert_eq!(p.pick(&[busy(3), busy(1), busy(2)]), Some(1));
        assert_eq!(p.pick(&[busy(1), busy(1), None]), Some(0), "ties rotate");
        assert_eq!(p.pick(&[busy(1), busy(1), None]), Some(1));
        assert_eq!(p.pick(&[None, None]), None);
    }
}
