//! What the driver and the user's tasks share: the worker's [`Intake`] behind one lock, and
//! the wakers of the tasks that wait on it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use crate::worker::intake::Intake;

/// The intake and its waiters.
#[derive(Debug)]
pub(crate) struct State {
    pub intake: Intake,
    /// The task waiting for a connection.
    pub accept: Option<Waker>,
    /// Tasks waiting for a message from the primary.
    pub message: Vec<Waker>,
    /// Tasks waiting for the stream of connections to end.
    pub stop: Vec<Waker>,
    /// The driver, while it waits for readiness.
    pub driver: Option<Waker>,
    /// Something changed that the driver must act on (a close to report, a message to send).
    pub kicked: bool,
    /// Connections given out that nothing has been read from yet. A stop waits for them
    /// (for a while): hyper's graceful shutdown closes a connection whose request it has not
    /// read yet as if it were idle, and that client would see its request fail.
    pub fresh: usize,
}

impl State {
    /// A fresh connection has been read from (or closed).
    pub fn read_once(&mut self) {
        self.fresh = self.fresh.saturating_sub(1);
        if self.fresh == 0 && self.intake.ended() {
            self.stop.drain(..).for_each(Waker::wake);
        }
    }

    /// True once the worker's stream of connections has ended and no connection given out
    /// still waits for its first bytes.
    pub fn stopped(&self) -> bool {
        self.intake.ended() && self.fresh == 0
    }

    /// Asks the driver for a turn.
    pub fn kick(&mut self) {
        self.kicked = true;
        if let Some(w) = self.driver.take() {
            w.wake();
        }
    }

    /// Wakes whoever can make progress after a turn.
    pub fn wake_waiters(&mut self) {
        let ended = self.intake.ended();
        if self.intake.has_ready() || ended {
            if let Some(w) = self.accept.take() {
                w.wake();
            }
        }
        if ended {
            self.stop.drain(..).for_each(Waker::wake);
        }
        // Dropped wakers of tasks that went away are harmless to wake.
        self.message.drain(..).for_each(Waker::wake);
    }
}

/// The shared state.
#[derive(Debug, Clone)]
pub(crate) struct Shared(Arc<Mutex<State>>);

impl Shared {
    pub fn new(intake: Intake) -> Shared {
        Shared(Arc::new(Mutex::new(State {
            intake,
            accept: None,
            message: Vec::new(),
            stop: Vec::new(),
            driver: None,
            kicked: false,
            fresh: 0,
        })))
    }

    /// Locks the state. Nothing panics while holding it except a bug; a poisoned lock still
    /// holds a usable intake, so it is taken anyway.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Registers `w` in `slot` unless the same task is already there.
pub(crate) fn set_waker(slot: &mut Option<Waker>, w: &Waker) {
    match slot {
        Some(old) if old.will_wake(w) => {}
        _ => *slot = Some(w.clone()),
    }
}

/// Adds `w` to `list` unless the same task is already there.
pub(crate) fn add_waker(list: &mut Vec<Waker>, w: &Waker) {
    if !list.iter().any(|o| o.will_wake(w)) {
        list.push(w.clone());
    }
}
