//! The primary's side of the workers' channels: reading what they say, sending what waits,
//! and giving up on a channel (which hands its unacked connections to others).

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::workers::{ProcKey, State};
use super::Primary;
use crate::event::Event;
use crate::ipc::{Inbound, IpcError, ToPrimary};
use crate::policy::ListenerPlan;

/// How long a worker that refused connections (out of descriptors) gets none.
const REFUSAL_COOLDOWN: Duration = Duration::from_secs(1);

impl Primary {
    /// Reads every waiting message from worker `key`.
    pub(super) fn read_worker(&mut self, key: ProcKey) {
        loop {
            let Some(p) = self.workers.get_mut(key) else {
                return;
            };
            if p.channel_closed {
                return;
            }
            match p.link.recv() {
                Ok(Some(Inbound::Herd(msg))) => self.on_message(key, msg),
                Ok(Some(Inbound::Node(msg))) => self.on_node_message(key, *msg),
                Ok(None) => return,
                Err(IpcError::Malformed(why)) => {
                    self.give_up(key, why);
                    return;
                }
                Err(e) => {
                    log::debug!("worker {} channel: {e}", p.pid);
                    self.channel_closed(key);
                    return;
                }
            }
        }
    }

    /// The worker sent something this version cannot read: its channel cannot be trusted, so
    /// the worker is killed (and replaced, as a crash) and its connections go elsewhere.
    fn give_up(&mut self, key: ProcKey, why: &str) {
        if let Some(p) = self.workers.get_mut(key) {
            log::error!(
                "worker {} sent a malformed message ({why}); killing and replacing it",
                p.pid
            );
            let _ = p.child.kill();
        }
        self.channel_closed(key);
    }

    fn on_message(&mut self, key: ProcKey, msg: ToPrimary) {
        let Some((id, pid)) = self.workers.who(key) else {
            return;
        };
        let Some(p) = self.workers.get_mut(key) else {
            return;
        };
        p.watch.last_heard = Some(Instant::now());
        match msg {
            ToPrimary::Ack(ids) => {
                // Dropping our copies closes them: the worker has its own now.
                p.link.ack(&ids);
            }
            ToPrimary::Refused(ids) => {
                let back = p.link.refused(&ids);
                p.open = p.open.saturating_sub(back.len() as u64);
                p.cool_until = Some(Instant::now() + REFUSAL_COOLDOWN);
                log::warn!(
                    "worker {pid} could not take {} connections; handing them to others",
                    back.len()
                );
                self.acceptor.put_back(back);
                self.dispatch();
            }
            ToPrimary::Closed(n) => p.open = p.open.saturating_sub(u64::from(n)),
            ToPrimary::Online => {
                if p.state == State::Starting {
                    p.state = State::Online;
                }
                let listener = match self.config.policy.listener_plan() {
                    Some(ListenerPlan::Shared) => self.listeners_for_workers.first(),
                    Some(ListenerPlan::PerWorker) => self.listeners_for_workers.get(p.slot.0),
                    None => None,
                };
                match listener.map(|l| l.try_clone().map(OwnedFd::from)) {
                    Some(Ok(fd)) => p.link.listen(fd),
                    Some(Err(e)) => log::error!("cannot share the listener with {pid}: {e}"),
                    None => {}
                }
                match self.overflow.as_ref().map(crate::ipc::Overflow::reader) {
                    Some(Ok(fd)) => p.link.share_overflow(fd),
                    Some(Err(e)) => log::error!("cannot share the overflow queue with {pid}: {e}"),
                    None => {}
                }
                let slot = p.slot;
                self.flush(key);
                if self.workers.slot(slot).current == Some(key) {
                    self.release(slot);
                }
                self.emit(Event::Online { id, pid });
                self.maybe_announce();
            }
            ToPrimary::Listening => {
                let addr = self.local_addr;
                self.emit(Event::Listening { id, pid, addr });
            }
            ToPrimary::Stats(s) => {
                p.stats = s;
                p.stats_fresh = true;
                p.stats_pending = false;
                p.stats_at = Some(Instant::now());
                self.report_if_complete();
                self.answer_status_if_fresh();
            }
            ToPrimary::Message(payload) => self.emit(Event::Message { id, pid, payload }),
            ToPrimary::Recycle => self.recycle(key),
        }
    }

    /// Logs the `listening on` line once every worker is online for the first time.
    pub(super) fn maybe_announce(&mut self) {
        if self.phase.announced || self.stopping() || !self.workers.all_online() {
            return;
        }
        self.phase.announced = true;
        self.announce();
    }

    /// Sends what waits for worker `key`; a failure means its channel is gone.
    pub(super) fn flush(&mut self, key: ProcKey) {
        let registry = self.poll.registry();
        let Some(p) = self.workers.get_mut(key) else {
            return;
        };
        if p.channel_closed {
            return;
        }
        if let Err(e) = p.link.flush(registry) {
            log::debug!("worker {} channel: {e}", p.pid);
            self.read_worker(key);
            self.channel_closed(key);
        }
    }

    /// The worker's channel closed, so it cannot take or ack anything more. Every message it
    /// sent before closing has been read (acks included), so what is still unacked was never
    /// touched by it: hand those connections to other workers.
    pub(super) fn channel_closed(&mut self, key: ProcKey) {
        let registry = self.poll.registry();
        let Some(p) = self.workers.get_mut(key) else {
            return;
        };
        if p.channel_closed {
            return;
        }
        p.channel_closed = true;
        let _ = registry.deregister(&mut p.link);
        let back = p.link.reclaim();
        p.open = p.open.saturating_sub(back.len() as u64);
        if !back.is_empty() {
            log::warn!(
                "worker {} left {} connections unacked; handing them to others",
                p.pid,
                back.len()
            );
        }
        self.acceptor.put_back(back);
        if let Some((id, pid)) = self.workers.who(key) {
            self.emit(Event::Disconnect { id, pid });
        }
        self.dispatch();
        self.drop_unservable();
    }
}
