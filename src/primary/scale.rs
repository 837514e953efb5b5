//! Changing the number of workers at runtime (`herd scale`, `SIGTTIN`/`SIGTTOU`): new slots
//! get a worker at once; surplus slots, the highest ids first, are drained gracefully (their
//! worker finishes what it serves and is not replaced). A slot that is given up keeps its
//! counters, and comes back with them when the cluster grows again. Never below one worker,
//! nor while the cluster stops. During a reload, a replacement that comes online for a slot
//! given up meanwhile is drained too (see `reload`), and new slots start on the new code.

use std::os::fd::AsFd;

use super::workers::SlotIndex;
use super::Primary;
use crate::admin::Scale;
use crate::policy::ListenerPlan;

impl Primary {
    /// Scales to what `s` asks; returns the answer for the client (or the log).
    pub(super) fn scale(&mut self, s: Scale) -> Result<String, String> {
        if self.stopping() {
            return Err("the server is shutting down".into());
        }
        let now = self.workers.active();
        let target = s.target(now)?;
        if target > now {
            self.grow(now, target)?;
        } else if target < now {
            self.shrink(now, target);
        }
        let noun = if target == 1 { "worker" } else { "workers" };
        let said = format!("scaled from {now} to {target} {noun}");
        log::info!("{said}");
        Ok(said)
    }

    /// `SIGTTIN` / `SIGTTOU`: one more or one fewer, as in gunicorn.
    pub(super) fn scale_by_signal(&mut self, s: Scale) {
        if let Err(e) = self.scale(s) {
            log::warn!("scale {s}: {e}");
        }
    }

    fn grow(&mut self, now: usize, target: usize) -> Result<(), String> {
        while self.workers.slots().len() < target {
            if self.config.policy.listener_plan() == Some(ListenerPlan::PerWorker) {
                self.add_reuseport_listener()?;
            }
            self.workers.add_slot();
        }
        self.workers.set_active(target);
        for i in (now..target).map(SlotIndex) {
            // A worker still draining from an earlier shrink is no longer the slot's.
            self.workers.slot_mut(i).current = None;
            let key = self.spawn(i);
            self.workers.slot_mut(i).current = key;
        }
        Ok(())
    }

    fn shrink(&mut self, now: usize, target: usize) {
        self.workers.set_active(target);
        for i in (target..now).rev().map(SlotIndex) {
            let slot = self.workers.slot_mut(i);
            slot.respawn_at = None;
            if let Some(key) = slot.current {
                self.disconnect(key);
            }
            // Under reuseport the kernel keeps hashing connections onto the slot's socket,
            // which its draining worker no longer accepts on: the primary takes them over.
            self.adopt(i);
        }
        self.dispatch();
    }

    /// One more `SO_REUSEPORT` socket on the bound address for a new slot.
    fn add_reuseport_listener(&mut self) -> Result<(), String> {
        let l = crate::listen::bind_listener(self.local_addr, true).map_err(|e| e.to_string())?;
        if let Some(within) = self.config.defer_accept {
            if let Err(e) = crate::listen::defer_accept(l.as_fd(), within) {
                log::warn!("TCP_DEFER_ACCEPT not available: {e}");
            }
        }
        self.listeners_for_workers.push(l);
        Ok(())
    }
}
