//! Supervision: starting workers, reaping them, restarting the ones that die with backoff,
//! disconnecting them, and the graceful shutdown.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Instant;

use mio::Interest;

use super::workers::{backoff, describe, Proc, ProcKey, SlotIndex, State};
use super::Primary;
use crate::event::Event;
use crate::ipc::ToWorker;

/// Consecutive quick deaths after which a slot is reported as crash-looping.
const CRASH_LOOP: u32 = 5;

impl Primary {
    /// Starts a worker for slot `i`; returns its key. On failure schedules a retry with the
    /// slot's backoff, unless the slot still has a live worker (a reload's replacement failed:
    /// the caller keeps the old one).
    pub(super) fn spawn(&mut self, i: SlotIndex) -> Option<ProcKey> {
        let slot = self.workers.slot_mut(i);
        slot.respawn_at = None;
        let id = slot.id;
        let spawned = match self.config.spawner.spawn(id) {
            Ok(x) => x,
            Err(e) => {
                let has_live = slot.current.is_some();
                slot.quick_deaths += 1;
                let delay = backoff::delay(slot.quick_deaths);
                if has_live {
                    log::error!("cannot start a new worker {id}: {e}");
                } else {
                    log::error!("cannot start worker {id}: {e}; retrying in {delay:?}");
                    slot.respawn_at = Some(Instant::now() + delay);
                }
                return None;
            }
        };
        let key = self
            .workers
            .insert(Proc::new(spawned.child, spawned.link, i));
        let registry = self.poll.registry();
        let p = self.workers.get_mut(key)?;
        let pid = p.pid;
        if let Err(e) = registry.register(&mut p.link, key.token(), Interest::READABLE) {
            log::error!("cannot watch worker {pid}: {e}; stopping it");
            let _ = p.child.kill();
        }
        self.emit(Event::Fork { id, pid });
        self.tell_leaving(key);
        Some(key)
    }

    /// Reaps every worker that exited.
    pub(super) fn reap(&mut self) {
        let exited: Vec<(ProcKey, ExitStatus)> = self
            .workers
            .procs_mut()
            .filter_map(|(k, p)| match p.child.try_wait() {
                Ok(Some(status)) => Some((k, status)),
                _ => None,
            })
            .collect();
        for (key, status) in exited {
            self.exited(key, status);
        }
    }

    fn exited(&mut self, key: ProcKey, status: ExitStatus) {
        self.read_worker(key);
        self.channel_closed(key);
        let stopping = self.stopping();
        let Some(p) = self.workers.remove(key) else {
            return;
        };
        let slot = self.workers.slot_mut(p.slot);
        let (id, pid) = (slot.id, p.pid);
        slot.past.absorb(&p.stats);
        slot.past_cpu_ticks += p.usage.cpu_ticks;
        slot.past_handed += p.handed;
        let was_current = slot.current == Some(key);
        if was_current {
            slot.current = None;
            slot.last_pid = Some(pid);
        }
        let slot_index = p.slot;
        let expected = p.disconnect_sent || stopping;
        let how = describe(status);
        if expected || !was_current {
            log::info!("worker {pid} exited ({how})");
        } else {
            let uptime = p.started.elapsed();
            slot.quick_deaths = if uptime < backoff::HEALTHY {
                slot.quick_deaths + 1
            } else {
                1
            };
            let delay = backoff::delay(slot.quick_deaths);
            let when = if p.state == State::Starting {
                " before coming online"
            } else {
                ""
            };
            if slot.quick_deaths >= CRASH_LOOP {
                log::error!(
                    "worker {pid} died ({how}){when}; worker {id} is crash-looping: {} quick deaths in a row, next restart in {delay:?}",
                    slot.quick_deaths
                );
            } else {
                log::warn!("worker {pid} died ({how}){when}; restarting in {delay:?}");
            }
            slot.restarts += 1;
            slot.respawn_at = Some(Instant::now() + delay);
        }
        if was_current && !stopping {
            self.adopt(slot_index);
        }
        self.emit(Event::Exit {
            id,
            pid,
            code: status.code(),
            signal: status.signal(),
            exited_after_disconnect: expected,
        });
        self.report_if_complete();
    }

    /// When the next worker still starting reaches the start timeout.
    pub(super) fn next_start_check(&self) -> Option<Instant> {
        self.workers
            .procs()
            .filter(|(_, p)| p.state == State::Starting && !p.slow_start_reported)
            .filter_map(|(_, p)| p.started.checked_add(self.config.start_timeout))
            .min()
    }

    /// Reports (once each) the workers that have not come online within the start timeout:
    /// a Node app that never listens, a worker stuck in its set-up.
    pub(super) fn report_slow_starts(&mut self, now: Instant) {
        let timeout = self.config.start_timeout;
        for (_, p) in self.workers.procs_mut() {
            if p.state == State::Starting
                && !p.slow_start_reported
                && p.started.checked_add(timeout).is_some_and(|t| now >= t)
            {
                p.slow_start_reported = true;
                let what = if p.link.is_node() {
                    "has not listened on a server"
                } else {
                    "has not come online"
                };
                log::error!("worker {} {what} within {timeout:?} of starting", p.pid);
            }
        }
    }

    /// Starts the replacements that are due.
    pub(super) fn respawn_due(&mut self, now: Instant) {
        if self.stopping() {
            return;
        }
        let due: Vec<SlotIndex> = self
            .workers
            .indices()
            .filter(|&i| {
                let s = self.workers.slot(i);
                s.current.is_none() && s.respawn_at.is_some_and(|t| t <= now)
            })
            .collect();
        for i in due {
            let key = self.spawn(i);
            self.workers.slot_mut(i).current = key;
        }
    }

    /// Tells a worker to finish and exit. Outside a shutdown, connections not yet sent to it
    /// go to the others; during one they stay queued ahead of the `Disconnect`, so it serves
    /// them (nobody else would).
    pub(super) fn disconnect(&mut self, key: ProcKey) {
        let stopping = self.stopping();
        let Some(p) = self.workers.get_mut(key) else {
            return;
        };
        if p.disconnect_sent {
            return;
        }
        p.disconnect_sent = true;
        p.state = State::Disconnecting;
        let back = if stopping {
            Vec::new()
        } else {
            p.link.unsend()
        };
        p.open = p.open.saturating_sub(back.len() as u64);
        p.link.send(ToWorker::Disconnect);
        self.acceptor.put_back(back);
        self.flush(key);
    }

    pub(super) fn kill_all(&mut self, why: &str) {
        for (_, p) in self.workers.procs_mut() {
            log::warn!("killing worker {}: {why}", p.pid);
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        self.reap();
    }

    /// `SIGTERM`, `SIGINT` or [`super::Control::shutdown`]: stop accepting, let every worker
    /// finish, kill what is left after the shutdown timeout. Asked twice: kill at once.
    pub(super) fn begin_shutdown(&mut self) {
        if self.stopping() {
            self.kill_all("asked twice to stop");
            return;
        }
        self.abandon_upgrade("the primary is stopping");
        log::info!(
            "shutting down: draining workers (timeout {:?})",
            self.config.shutdown_timeout
        );
        self.notify_stopping();
        self.phase.shutdown_deadline = Some(crate::deadline_after(self.config.shutdown_timeout));
        if self.phase.reload.take().is_some() {
            self.reload_finished(Err("the server is shutting down".into()));
        }
        self.acceptor.close(self.poll.registry());
        self.release_all();
        self.listeners_for_workers.clear();
        self.dispatch();
        for i in self.workers.indices().collect::<Vec<_>>() {
            self.workers.slot_mut(i).respawn_at = None;
        }
        for key in self.workers.keys() {
            self.disconnect(key);
        }
        self.drop_unservable();
    }

    /// During a shutdown, connections that no worker can take any more are closed, and said.
    pub(super) fn drop_unservable(&mut self) {
        let any_open = self.workers.procs().any(|(_, p)| !p.channel_closed);
        if self.stopping() && !any_open {
            let n = self.acceptor.drop_waiting();
            if n > 0 {
                log::warn!(
                    "shutdown: {n} accepted connections had no worker left to serve them; closed"
                );
            }
        }
    }
}
