//! Handing accepted connections to workers: the policy picks a worker for each waiting
//! connection, and each worker's share of a burst leaves in as few packets as possible.

use std::time::Instant;

use std::time::Duration;

use super::workers::{ProcKey, SlotIndex, State};
use super::Primary;
use crate::ipc::monotonic_ns;

/// How soon to look again at a worker that has read what it was given but not yet said so in
/// its page (a matter of microseconds).
const ROOM_RETRY: Duration = Duration::from_millis(1);

impl Primary {
    /// Hands waiting connections to the workers the policy picks, until none waits or no
    /// worker can take more; then resumes the listener if the queue has room again.
    pub(super) fn dispatch(&mut self) {
        let stopping = self.stopping();
        if stopping || self.phase.handed_over {
            self.take_back_overflow();
        }
        // Handed over to a new primary (upgrade): what waits is the new one's.
        self.pass_back_to_successor();
        let window = if stopping {
            usize::MAX
        } else {
            self.config.handoff_window
        };
        let now = Instant::now();
        let now_ns = monotonic_ns();
        if let Some(after) = self.balancer.rescue_after() {
            self.rescue_from_long_requests(after, window, now, now_ns);
        }
        let Primary {
            balancer,
            loads,
            workers,
            acceptor,
            overflow,
            ..
        } = self;
        // The overflow queue, while the primary is not stopping and it has room.
        let mut overflow = overflow.as_mut().filter(|_| !stopping);
        // Queue the whole burst first, then flush each worker once.
        let mut touched: Vec<ProcKey> = Vec::new();
        while acceptor.waiting() > 0 {
            loads.clear();
            loads.extend(workers.slots().iter().map(|s| {
                s.current
                    .and_then(|k| workers.get(k))
                    .and_then(|p| p.load(window, stopping, now, now_ns))
            }));
            if overflow.is_some() && balancer.to_overflow(loads) {
                if let (Some(q), Some((id, socket))) = (overflow.as_mut(), acceptor.pop()) {
                    match q.give(id, socket) {
                        Ok(()) => continue,
                        Err(back) => {
                            acceptor.put_back(vec![back]);
                            overflow = None;
                        }
                    }
                }
            }
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
        self.watch_for_room(window);
        if !self.stopping() {
            self.acceptor.maybe_resume(self.poll.registry());
        }
    }

    /// Before the loop waits (for `timeout`): if this turn accepted connections, no worker is
    /// idle and the overflow queue still holds connections, let others run first (one
    /// `sched_yield`). A connection accepted now would only queue behind those, so nothing
    /// waits longer for a worker; meanwhile the workers get the core, and the wait that follows
    /// usually finds several connections at once instead of sleeping and being woken for each
    /// (on 2 cores, herd bench mixed: the primary's CPU per connection 12.5 -> 7.8 us, and the
    /// workers' throughput +4%).
    pub(super) fn make_way(&mut self, timeout: Option<Duration>) {
        let accepted = self.acceptor.accepted();
        let fresh = std::mem::replace(&mut self.phase.accepted_at_wait, accepted) != accepted;
        if !fresh || timeout == Some(Duration::ZERO) {
            return;
        }
        let Some(q) = self.overflow.as_ref() else {
            return;
        };
        let none_idle = self
            .workers
            .procs()
            .all(|(_, p)| p.state != State::Online || !p.link.idle());
        if none_idle && q.holds_any() {
            std::thread::yield_now();
        }
    }

    /// Takes back what waits in the overflow queue (stopping: the workers no longer read it;
    /// handed over: what waits is the new primary's), for the workers' own channels or the
    /// new primary.
    fn take_back_overflow(&mut self) {
        let Some(q) = self.overflow.as_mut() else {
            return;
        };
        let back = q.take_back();
        if !back.is_empty() {
            log::debug!(
                "{} connections taken back from the overflow queue",
                back.len()
            );
            self.acceptor.put_back(back);
        }
    }

    /// Connections handed to a worker that has since spent `after` on one request wait for
    /// the whole request in its channel: while another worker is not inside one, take them
    /// back (a syscall per packet, only then) for the policy to place again.
    fn rescue_from_long_requests(
        &mut self,
        after: Duration,
        window: usize,
        now: Instant,
        now_ns: u64,
    ) {
        let stopping = self.stopping();
        let free = self.workers.procs_mut().any(|(_, p)| {
            p.load(window, stopping, now, now_ns)
                .is_some_and(|l| l.busy_for < after)
        });
        if !free {
            return;
        }
        let mut rescued = Vec::new();
        for (_, p) in self.workers.procs_mut() {
            if p.channel_closed || p.link.busy_for(now_ns) < after {
                continue;
            }
            let back = p.link.rescue_unread();
            if !back.is_empty() {
                log::debug!("worker {} is inside a long request: {} connections it had not read go to the others", p.pid, back.len());
                p.open = p.open.saturating_sub(back.len() as u64);
                rescued.extend(back);
            }
        }
        if !rescued.is_empty() {
            rescued.sort_by_key(|(id, _)| *id);
            self.acceptor.put_back(rescued);
        }
    }

    /// Connections still wait when every worker's window is full: given connections bring no
    /// ack, so ask to be woken when a worker reads from its channel (that makes room); stop
    /// asking once nothing waits. A worker whose page lags behind its read is looked at again
    /// in a moment ([`ROOM_RETRY`]): its page changes with no event.
    ///
    /// A page can also change between the policy's pick and this look: the worker's read
    /// woke the primary, which saw the page from before the worker published it. If a worker
    /// has room by now, no later event would say so: look again in a moment too.
    fn watch_for_room(&mut self, window: usize) {
        let waiting = self.acceptor.waiting() > 0;
        self.phase.room_retry = None;
        if !waiting && !self.phase.watching_reads {
            return;
        }
        self.phase.watching_reads = waiting;
        let registry = self.poll.registry();
        let stopping = self.phase.shutdown_deadline.is_some();
        let now = Instant::now();
        let now_ns = monotonic_ns();
        let mut lags = false;
        for (_, p) in self.workers.procs_mut() {
            if !p.channel_closed {
                if let Err(e) = p.link.watch_reads(registry, waiting) {
                    log::debug!("worker {} channel: {e}", p.pid);
                }
                lags |= waiting
                    && (p.link.page_lags() || p.load(window, stopping, now, now_ns).is_some());
            }
        }
        if lags {
            self.phase.room_retry = Some(Instant::now() + ROOM_RETRY);
        }
    }
}
