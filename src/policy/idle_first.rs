//! `idle-first`: the next connection goes to a worker that is idle right now, in rotation among
//! the idle ones; when none is, with herd's own workers, to the overflow queue that every worker
//! takes from, one connection at a time, as soon as it is done with what it has
//! ([`crate::ipc::Overflow`]: the kernel's shared accept queue gets the tail right for the same
//! reason). Otherwise (Node workers, or the overflow queue is full) to the one with the fewest
//! connections waiting for it (handed and not yet read) plus the ones it serves, ties in
//! rotation; a worker that has been on one connection's step for [`STUCK_AFTER`] (inside a long
//! request) comes last. Counting the ones it serves too keeps a worker that reads its channel
//! quickly from collecting most of a burst of keep-alive connections (fewest waiting alone
//! favours it every time). This balancer is that per-worker pick; the primary decides before
//! asking it whether the overflow queue takes the connection instead.
//!
//! Idle means both: the worker's loop is waiting for events (not running a handler), and it has
//! read everything the primary sent it. Herd's workers publish both in a page of memory shared
//! with the primary ([`crate::ipc::StatusPage`]), so the primary knows at once, with no message
//! and no syscall: a worker that took a 1 s request a moment ago is busy although its channel is
//! empty. This is what the shared listener gets from the kernel (a busy worker does not call
//! `accept`), without its unevenness on keep-alive connections.
//!
//! The page also says since when a worker works on the step of a connection it is in (stamped
//! as each step starts, so a turn of many short requests is not one long stretch). That
//! matters when every worker is busy and the overflow queue cannot be used: counts alone split the
//! waiting connections evenly, so a worker inside a 5 ms request collects as many as one that
//! finishes a request every few microseconds, and they all wait the 5 ms. A worker on one step
//! for [`STUCK_AFTER`] is inside a long request (or was preempted): the connections go to the
//! others while any is not, and what already waits unread in its channel is taken back for
//! them (the primary reads it back from its copy of the worker's end, as for a frozen worker).

use std::time::Duration;

use super::{Balancer, Load};

/// A worker that has been on one connection's step this long is inside a long request: it gets
/// connections only when every worker is. Longer than a fast request takes, short next to the
/// requests that make a tail (and than the queueing they cause).
pub const STUCK_AFTER: Duration = Duration::from_micros(500);

/// An idle worker that has this many connections (waiting and served) more than the least
/// loaded worker does not count as idle, and the overflow queue is not used while the spread is
/// wider: the least loaded worker gets the next connection. Idle is a moment's state, and a
/// worker that keeps winning it (it runs while the other waits for a core) would collect a burst
/// of new keep-alive connections for good; short connections (the heavy-tail case) keep the
/// counts within this anyway.
pub const SPREAD: u64 = 4;

/// Connections waiting for a worker and served by it.
fn count(l: &Load) -> u64 {
    l.waiting.saturating_add(l.serving)
}

/// The fewest and the most connections of a live worker.
fn range(workers: &[Option<Load>]) -> Option<(u64, u64)> {
    let counts = workers.iter().flatten().map(count);
    Some((counts.clone().min()?, counts.max()?))
}

/// Idle, and not ahead of the least loaded worker by more than [`SPREAD`].
fn available(l: &Load, least: u64) -> bool {
    l.idle && count(l) <= least.saturating_add(SPREAD)
}

/// Idle workers first, in rotation; otherwise the shortest wait, long-busy ones last.
#[derive(Debug, Default)]
pub struct IdleFirst {
    next: usize,
}

impl Balancer for IdleFirst {
    fn pick(&mut self, workers: &[Option<Load>]) -> Option<usize> {
        let n = workers.len();
        let order = (0..n).map(|k| (self.next + k) % n);
        let live = || order.clone().filter_map(|i| workers[i].map(|l| (i, l)));
        let (least, _) = range(workers)?;
        let chosen = match live().find(|(_, l)| available(l, least)) {
            Some((i, _)) => i,
            None => {
                live()
                    .min_by_key(|(_, l)| {
                        (
                            l.busy_for >= STUCK_AFTER,
                            l.waiting.saturating_add(l.serving),
                        )
                    })?
                    .0
            }
        };
        self.next = chosen + 1;
        Some(chosen)
    }

    fn rescue_after(&self) -> Option<Duration> {
        Some(STUCK_AFTER)
    }

    fn overflow(&self) -> bool {
        true
    }

    fn to_overflow(&self, workers: &[Option<Load>]) -> bool {
        range(workers).is_some_and(|(least, most)| {
            most - least <= SPREAD && !workers.iter().flatten().any(|l| available(l, least))
        })
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
            busy_for: Duration::ZERO,
        })
    }

    fn busy(waiting: u64) -> Option<Load> {
        Some(Load {
            open: 0,
            idle: false,
            waiting,
            serving: 1,
            busy_for: Duration::from_micros(20),
        })
    }

    fn stuck(waiting: u64) -> Option<Load> {
        busy(waiting).map(|l| Load {
            busy_for: STUCK_AFTER * 4,
            ..l
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

    fn serving(l: Option<Load>, n: u64) -> Option<Load> {
        l.map(|l| Load { serving: n, ..l })
    }

    #[test]
    fn the_overflow_queue_when_none_is_idle_and_the_counts_are_close() {
        let p = IdleFirst::default();
        assert!(p.to_overflow(&[busy(0), stuck(0)]));
        assert!(!p.to_overflow(&[busy(0), idle()]), "an idle one takes it");
        assert!(!p.to_overflow(&[None, None]), "no live worker");
        let lopsided = [serving(busy(0), 1 + SPREAD + 1), busy(0)];
        assert!(!p.to_overflow(&lopsided), "the least loaded one takes it");
    }

    #[test]
    fn an_idle_worker_far_ahead_does_not_count_as_idle() {
        let mut p = IdleFirst::default();
        // The busy one serves one connection.
        let ahead = [serving(idle(), 1 + SPREAD + 1), busy(0)];
        assert_eq!(p.pick(&ahead), Some(1));
        let close = [serving(idle(), 1 + SPREAD), busy(0)];
        assert_eq!(p.pick(&close), Some(0));
    }

    #[test]
    fn a_worker_inside_a_long_request_comes_last() {
        let mut p = IdleFirst::default();
        assert_eq!(
            p.pick(&[stuck(0), busy(5)]),
            Some(1),
            "even with more waiting"
        );
        assert_eq!(p.pick(&[stuck(0), busy(5)]), Some(1));
        assert_eq!(p.pick(&[stuck(2), stuck(1)]), Some(1), "all stuck: counts");
        assert_eq!(p.pick(&[stuck(0), idle()]), Some(1));
    }
}
