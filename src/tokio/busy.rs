//! The worker's busy flag on its status page, for a tokio runtime: the runtime's threads park
//! when they have nothing to run (waiting in `epoll_wait`, as the worker's own loop does) and
//! unpark when work comes, so tokio's park hooks flip the flag exactly where the worker's own
//! loop does around its wait: busy while handling, idle while waiting. The primary's
//! `idle-first` policy then prefers this worker while it waits.
//!
//! With several threads (a multi-thread runtime), the worker is idle while at least one of
//! them is parked: that one can take a connection at once.

use std::sync::{Arc, Mutex};

use crate::ipc::StatusPage;

/// Installs the park hooks on `runtime` (replacing any set before).
pub(crate) fn flip_on_park(runtime: &mut ::tokio::runtime::Builder, page: Arc<StatusPage>) {
    let parked = Arc::new(Mutex::new(0usize));
    let (page2, parked2) = (page.clone(), parked.clone());
    runtime
        .on_thread_park(move || {
            // The lock orders the flips of several threads: the last word is the right one.
            let mut n = parked.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            page.set_busy(false);
        })
        .on_thread_unpark(move || {
            let mut n = parked2.lock().unwrap_or_else(|e| e.into_inner());
            *n = n.saturating_sub(1);
            if *n == 0 {
                page2.set_busy(true);
            }
        });
}
