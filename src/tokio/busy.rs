//! The worker's busy flag on its status page, for a tokio runtime: the runtime's threads park
//! when they have nothing to run (waiting in `epoll_wait`, as the worker's own loop does) and
//! unpark when work comes, so tokio's park hooks flip the flag exactly where the worker's own
//! loop does around its wait: busy while handling, idle while waiting. The primary's
//! `idle-first` policy then prefers this worker while it waits.
//!
//! With several threads (a multi-thread runtime), the worker is idle while at least one of
//! them is parked: that one can take a connection at once.
//!
//! The park hook also decides whether to yield the CPU before the thread sleeps (see
//! [`YieldBeforePark`]).

use std::cell::Cell;
use std::sync::{Arc, Mutex};

use crate::ipc::{monotonic_ns, StatusPage};

/// Yield before sleeping only with at least this many connections open: with one, the next
/// event is that one client's next request, and a yield only adds a syscall to its round trip.
const YIELD_WITH_OPEN: u64 = 2;

/// ... and only while the thread's last sleep was this short (ns): events come faster than a
/// sleep and a wake-up cost, so the worker is under load. A worker that slept longer (light
/// load) goes straight to sleep, and a worker sharing its core with CPU-bound work is not held
/// behind that work's time slice when its traffic is light.
const YIELD_IF_SLEPT_UNDER: u64 = 200_000;

/// When to give the CPU away before a runtime thread sleeps.
///
/// A current-thread runtime with many connections runs dry every few requests under load: it
/// has answered what was ready, its clients have not written the next requests yet, and it
/// sleeps in `epoll_wait` to be woken a few microseconds later (a context switch each way;
/// measured: 0.44-0.50 sleeps per request for two such workers with 25 keep-alive connections
/// each, against 0.13-0.19 for one 2-thread runtime). Yielding once first lets whatever is
/// runnable on this core run (on a loaded machine: clients, the other worker, the primary);
/// then the wait usually finds events ready and does not sleep at all.
#[derive(Debug, Default)]
struct YieldBeforePark {
    /// When this thread parked last ([`monotonic_ns`]), 0 before its first park.
    parked_at: Cell<u64>,
    /// How long its last sleep lasted (ns).
    slept: Cell<u64>,
}

impl YieldBeforePark {
    /// The thread is about to park with `open` connections served by the worker.
    fn park(&self, open: u64) {
        if self.should_yield(open) {
            std::thread::yield_now();
        }
        self.parked_at.set(monotonic_ns());
    }

    /// Under load (its last sleep was brief) with several connections open.
    fn should_yield(&self, open: u64) -> bool {
        open >= YIELD_WITH_OPEN
            && self.parked_at.get() != 0
            && self.slept.get() < YIELD_IF_SLEPT_UNDER
    }

    /// The thread wakes up.
    fn unpark(&self) {
        let at = self.parked_at.get();
        if at != 0 {
            self.slept.set(monotonic_ns().saturating_sub(at));
        }
    }
}

thread_local! {
    static YIELDING: YieldBeforePark = YieldBeforePark::default();
}

/// Installs the park hooks on `runtime` (replacing any set before).
pub(crate) fn flip_on_park(runtime: &mut ::tokio::runtime::Builder, page: Arc<StatusPage>) {
    let parked = Arc::new(Mutex::new(0usize));
    let (page2, parked2) = (page.clone(), parked.clone());
    runtime
        .on_thread_park(move || {
            YIELDING.with(|y| y.park(page.read().open));
            // The lock orders the flips of several threads: the last word is the right one.
            let mut n = parked.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            page.set_busy(false);
        })
        .on_thread_unpark(move || {
            YIELDING.with(YieldBeforePark::unpark);
            let mut n = parked2.lock().unwrap_or_else(|e| e.into_inner());
            *n = n.saturating_sub(1);
            if *n == 0 {
                page2.set_busy(true);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yields_only_under_load_with_several_connections() {
        let y = YieldBeforePark::default();
        assert!(!y.should_yield(10), "not before the first sleep");
        y.park(10);
        y.unpark();
        assert!(y.slept.get() < YIELD_IF_SLEPT_UNDER, "a brief park");
        assert!(y.should_yield(10), "brief sleeps, many connections");
        assert!(
            !y.should_yield(1),
            "one connection: its client's next request is the event"
        );
        y.slept.set(YIELD_IF_SLEPT_UNDER);
        assert!(
            !y.should_yield(10),
            "a long sleep: light load, go straight to sleep"
        );
    }
}
