//! The drain delay (`--drain-delay`): on `SIGTERM`, the host first tells its workers it is
//! leaving (their health checks fail, their answers close connections) and goes on accepting
//! and serving for the delay, so a balancer in front sees it go and stops sending it work before
//! it stops accepting. Then the shutdown runs as without a delay.

use std::time::Instant;

use super::workers::ProcKey;
use super::Primary;
use crate::ipc::ToWorker;

impl Primary {
    /// `SIGTERM` or `SIGINT`: leave first if there is a drain delay, else shut down. A second
    /// signal while leaving starts the shutdown at once (and a third kills, as before).
    pub(super) fn stop_signal(&mut self) {
        if self.stopping() || self.config.drain_delay.is_zero() {
            return self.begin_shutdown();
        }
        if self.phase.leave_at.is_some() {
            log::info!("asked again to stop: the drain delay is cut short");
            self.phase.leave_at = None;
            return self.begin_shutdown();
        }
        log::info!(
            "leaving: health checks fail from now; still serving for the drain delay ({:?})",
            self.config.drain_delay
        );
        self.phase.leave_at = Some(crate::deadline_after(self.config.drain_delay));
        for key in self.workers.keys() {
            self.tell_leaving(key);
        }
    }

    /// Tells worker `key` the host is leaving, if it is (also a worker started meanwhile).
    pub(super) fn tell_leaving(&mut self, key: ProcKey) {
        if self.phase.leave_at.is_none() {
            return;
        }
        if let Some(p) = self.workers.get_mut(key) {
            p.link.send(ToWorker::Leaving);
            self.flush(key);
        }
    }

    /// The drain delay is over: shut down.
    pub(super) fn leave_due(&mut self, now: Instant) {
        if self.phase.leave_at.is_some_and(|t| t <= now) {
            self.phase.leave_at = None;
            log::info!("drain delay over");
            self.begin_shutdown();
        }
    }
}
