//! How a worker's life ends, the same in both of its loops (herd's mio runtime and the async
//! intake): what each signal asks for, and the grace a worker whose primary is gone gets.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::Context;
use crate::worker_env::WorkerEnv;

/// The signals' meaning and the orphan's deadline.
#[derive(Debug)]
pub(super) struct Ending {
    /// With a drain delay, SIGTERM only marks the host as leaving (the primary decides when
    /// to stop).
    leave_on_term: bool,
    /// Once the primary is gone, the time left to finish what is in flight.
    orphan_grace: Duration,
    orphan_deadline: Option<Instant>,
}

impl Ending {
    /// The contract the primary gave this worker.
    pub(super) fn new(env: &WorkerEnv) -> Ending {
        Ending {
            leave_on_term: env.leave_on_term,
            orphan_grace: env.orphan_grace,
            orphan_deadline: None,
        }
    }

    /// Acts on the signals that came; `true` when one of them asks the worker to drain now.
    pub(super) fn drains_on(&self, signals: Vec<Signal>, ctx: &mut Context) -> bool {
        let mut drain = false;
        for sig in signals {
            match sig {
                // A terminal's Ctrl-C reaches the whole process group; the primary coordinates.
                Signal::SIGINT | Signal::SIGHUP => {}
                // systemd signals the whole group: with a drain delay, the primary decides when
                // to stop; until then, keep serving as a leaving host.
                Signal::SIGTERM if self.leave_on_term => {
                    if !ctx.leaving {
                        log::info!("worker {}: host leaving (SIGTERM)", std::process::id());
                        ctx.leaving = true;
                    }
                }
                _ => drain = true,
            }
        }
        drain
    }

    /// The primary is gone: the grace starts now (once).
    pub(super) fn orphaned(&mut self) {
        if self.orphan_deadline.is_none() {
            log::info!(
                "worker {}: primary went away; draining (at most {:?})",
                std::process::id(),
                self.orphan_grace
            );
            self.orphan_deadline = Some(crate::deadline_after(self.orphan_grace));
        }
    }

    /// When an orphan must exit, if the primary is gone.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.orphan_deadline
    }

    /// The grace an orphan gets.
    pub(super) fn grace(&self) -> Duration {
        self.orphan_grace
    }
}
