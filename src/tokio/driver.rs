//! The task that runs the worker's intake on tokio: it waits for the intake's epoll
//! descriptor (through `AsyncFd`) or for a kick from the user's side, runs a turn, and wakes
//! the tasks that can go on.

use std::future::poll_fn;
use std::os::fd::OwnedFd;
use std::task::{Context, Poll};

use ::tokio::io::unix::AsyncFd;

use super::shared::{set_waker, Shared};

/// A duplicate of the intake's epoll descriptor (the same epoll instance), owned by tokio's
/// registration.
pub(crate) type EpollFd = AsyncFd<OwnedFd>;

/// Runs turns until the primary has been gone for its grace period (then returns); otherwise
/// forever: the user's future decides when the worker is done.
pub(crate) async fn drive(shared: Shared, fd: &EpollFd) {
    loop {
        let (wake_at, orphan) = {
            let st = shared.lock();
            (st.intake.wake_at(), st.intake.orphan_deadline())
        };
        if orphan.is_some_and(|d| std::time::Instant::now() >= d) {
            return;
        }
        let turn = poll_fn(|cx| poll_turn(&shared, fd, cx));
        match wake_at {
            None => turn.await,
            Some(at) => {
                if ::tokio::time::timeout_at(at.into(), turn).await.is_err() {
                    // A timed turn: late PROXY headers, or the end of the orphan's grace.
                    shared.lock().kick();
                }
            }
        }
    }
}

/// One turn when the descriptor is readable or the driver was kicked; `Pending` otherwise.
fn poll_turn(shared: &Shared, fd: &EpollFd, cx: &mut Context<'_>) -> Poll<()> {
    let guard = match fd.poll_read_ready(cx) {
        Poll::Ready(Ok(g)) => Some(g),
        Poll::Ready(Err(e)) => {
            log::error!("worker {}: readiness: {e}", std::process::id());
            None
        }
        Poll::Pending => None,
    };
    let mut st = shared.lock();
    if guard.is_none() && !st.kicked {
        set_waker(&mut st.driver, cx.waker());
        return Poll::Pending;
    }
    st.kicked = false;
    let more = st.intake.turn();
    st.wake_waiters();
    drop(st);
    if let Some(mut g) = guard {
        if !more {
            g.clear_ready();
        }
    }
    Poll::Ready(())
}
