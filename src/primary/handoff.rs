//! Handing accepted connections to workers: the policy picks a worker for each waiting
//! connection, and each worker's share of a burst leaves in as few packets as possible.

use std::time::Instant;

use super::workers::{ProcKey, SlotIndex};
use super::Primary;

impl Primary {
    /// Hands waiting connections to the workers the policy picks, until none waits or no
    /// worker can take more; then resumes the listener if the queue has room again.
    pub(super) fn dispatch(&mut self) {
        let stopping = self.stopping();
        let window = if stopping {
            usize::MAX
        } else {
            self.config.handoff_window
        };
        let now = Instant::now();
        let Primary {
            balancer,
            loads,
            workers,
            acceptor,
            ..
        } = self;
        // Queue the whole burst first, then flush each worker once.
        let mut touched: Vec<ProcKey> = Vec::new();
        while acceptor.waiting() > 0 {
            loads.clear();
            loads.extend(workers.slots().iter().map(|s| {
                s.current
                    .and_then(|k| workers.get(k))
                    .and_then(|p| p.load(window, stopping, now))
            }));
            let Some(i) = balancer.pick(loads) else {
                break;
            };
            let Some(key) = workers.slot(SlotIndex(i)).current else {
                break;
            };
            let (Some(p), Some((id, socket))) = (workers.get_mut(key), acceptor.pop()) else {
                break;
            };
            p.link.hand(id, socket);
            p.open += 1;
            p.handed += 1;
            if !touched.contains(&key) {
                touched.push(key);
            }
        }
        for key in touched {
            self.flush(key);
        }
        if !self.stopping() {
            self.acceptor.maybe_resume(self.poll.registry());
        }
    }
}
