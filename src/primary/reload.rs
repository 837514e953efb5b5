//! The rolling reload (`SIGHUP`): each slot in turn gets a new process; the old one keeps
//! serving (and stays in the rotation) until its replacement is online, then drains.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::workers::{ProcKey, SlotIndex, State};
use super::Primary;

/// How long a new worker may take to come online during a reload.
const ONLINE_DEADLINE: Duration = Duration::from_secs(10);

/// A rolling reload in progress.
#[derive(Debug)]
pub(super) struct Reload {
    /// Slots still to replace.
    todo: VecDeque<SlotIndex>,
    /// The replacement being started: its slot, its key and its online deadline.
    current: Option<(SlotIndex, ProcKey, Instant)>,
    /// Only workers that reached their request limit are being replaced (no one waits for
    /// the end, and a reload asked meanwhile widens it to every worker).
    recycle: bool,
}

impl Reload {
    /// When the replacement being started must be online.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.current.map(|c| c.2)
    }
}

impl Primary {
    /// Starts a rolling reload, unless one runs or the cluster is stopping.
    pub(super) fn begin_reload(&mut self) {
        if self.stopping() {
            return;
        }
        let all: Vec<SlotIndex> = self.workers.indices().collect();
        if let Some(r) = self.phase.reload.as_mut() {
            if !r.recycle {
                log::warn!("a reload is already in progress; this request joins it");
                return;
            }
            // Workers are being recycled: the reload takes over and replaces every one.
            r.recycle = false;
            let busy = r.current.map(|c| c.0);
            for i in all {
                if !r.todo.contains(&i) && busy != Some(i) {
                    r.todo.push_back(i);
                }
            }
            log::info!("reloading {} workers one at a time", self.workers.active());
            self.notifier.reloading();
            return;
        }
        log::info!("reloading {} workers one at a time", self.workers.active());
        self.notifier.reloading();
        self.phase.reload = Some(Reload {
            todo: all.into(),
            current: None,
            recycle: false,
        });
        self.step_reload(Instant::now());
    }

    /// Advances the reload: swaps in a replacement that came online, gives up on one that did
    /// not (keeping the old worker), starts the next one.
    pub(super) fn step_reload(&mut self, now: Instant) {
        let Some(mut r) = self.phase.reload.take() else {
            return;
        };
        if let Some((i, new, deadline)) = r.current.take() {
            let state = self.workers.get(new).map(|p| (p.state, p.channel_closed));
            match state {
                // The slot was given up (scaled down) meanwhile: the new worker goes too.
                Some((State::Online, false)) if i.0 >= self.workers.active() => {
                    self.disconnect(new)
                }
                Some((State::Online, false)) => self.swap_in(i, new),
                Some((State::Starting, false)) if now < deadline => {
                    r.current = Some((i, new, deadline));
                    self.phase.reload = Some(r);
                    return;
                }
                _ => {
                    log::error!(
                        "reload failed: the replacement for worker {} did not come online; keeping the old one and stopping the reload",
                        self.workers.slot(i).id
                    );
                    if let Some(p) = self.workers.get_mut(new) {
                        p.disconnect_sent = true;
                        let _ = p.child.kill();
                    }
                    let id = self.workers.slot(i).id;
                    self.reload_finished(Err(format!(
                        "reload failed: the new worker {id} did not come online (it exited, or took over {ONLINE_DEADLINE:?}); the old workers keep serving"
                    )));
                    return;
                }
            }
        }
        while let Some(i) = r.todo.pop_front() {
            if i.0 >= self.workers.active() || self.workers.slot(i).current.is_none() {
                continue; // dead slot: its respawn brings the new code anyway
            }
            match self.spawn(i) {
                Some(new) => {
                    r.current = Some((i, new, now + ONLINE_DEADLINE));
                    self.phase.reload = Some(r);
                    return;
                }
                None => {
                    let id = self.workers.slot(i).id;
                    log::error!(
                        "reload failed: cannot start a new worker {id}; keeping the old workers"
                    );
                    self.reload_finished(Err(format!(
                        "reload failed: cannot start a new worker {id}; the old workers keep serving"
                    )));
                    return;
                }
            }
        }
        if r.recycle {
            log::info!("recycling complete");
        } else {
            log::info!("reload complete");
        }
        self.reload_finished(Ok("reload complete".into()));
    }

    /// Worker `key` served its request limit: replace it the way a reload does (its
    /// replacement first, then it drains), one worker at a time.
    pub(super) fn recycle(&mut self, key: ProcKey) {
        let Some(p) = self.workers.get(key) else {
            return;
        };
        let (i, pid) = (p.slot, p.pid);
        let current = self.workers.slot(i).current == Some(key);
        if self.stopping() || !current || i.0 >= self.workers.active() {
            return;
        }
        log::info!("worker {pid} reached its request limit: replacing it");
        match self.phase.reload.as_mut() {
            Some(r) => {
                if !r.todo.contains(&i) && r.current.map(|c| c.0) != Some(i) {
                    r.todo.push_back(i);
                }
            }
            None => {
                self.phase.reload = Some(Reload {
                    todo: [i].into(),
                    current: None,
                    recycle: true,
                });
                self.step_reload(Instant::now());
            }
        }
    }

    /// The replacement `new` is online: it takes slot `i`, and the old worker drains.
    fn swap_in(&mut self, i: SlotIndex, new: ProcKey) {
        let old = self.workers.slot_mut(i).current.replace(new);
        if let Some(old) = old {
            if let (Some(o), Some(n)) = (self.workers.get(old), self.workers.get(new)) {
                log::info!("worker {} replaced by {}", o.pid, n.pid);
            }
            self.disconnect(old);
        }
    }
}
