//! What user code can ask of the primary ([`Control`]: messages, disconnect, kill, shutdown),
//! and the emission of lifecycle events to the user's hook.

use nix::sys::signal::Signal;

use super::workers::State;
use super::Primary;
use crate::event::{Event, WorkerId, WorkerInfo, WorkerState};
use crate::ipc::{IpcError, ToWorker};

/// Called for every lifecycle event; may queue messages and commands through [`Control`].
pub type EventHook = Box<dyn FnMut(&Event, &mut Control)>;

/// One command given through [`Control`], carried out in the order given.
#[derive(Debug)]
enum Command {
    /// A user message (already checked for size) for a worker.
    Send(WorkerId, Vec<u8>),
    Disconnect(WorkerId),
    Kill(WorkerId, Signal),
    Shutdown,
    Upgrade,
}

/// Commands an event hook gives the primary, and a view of the workers as of the event.
///
/// Commands are carried out in the order given, right after the hook (or, with
/// [`crate::Events`], before the loop waits again).
#[derive(Debug, Default)]
pub struct Control {
    commands: Vec<Command>,
    workers: Vec<WorkerInfo>,
    /// Per slot: user messages (and bytes) waiting to be sent, as of the view.
    waiting: Vec<(usize, usize)>,
    /// Per slot: what the commands not yet carried out add to that.
    pending: Vec<(usize, usize)>,
}

impl Control {
    /// Sends `payload` to worker `id`, where it arrives as `Handler::message`, in order and in
    /// one piece (Node's `worker.send`).
    ///
    /// A payload larger than [`crate::ipc::MAX_MESSAGE`] is refused with
    /// [`IpcError::TooLarge`], and one that would pile up more than
    /// [`crate::ipc::MAX_QUEUED_MESSAGES`] messages or [`crate::ipc::MAX_QUEUED_BYTES`] for a
    /// worker that does not read them with [`IpcError::QueueFull`]; nothing is sent then. A
    /// message for a worker that is dead by the time it is carried out is dropped (and
    /// logged): watch for `exit` events, or [`Control::is_dead`].
    pub fn send(&mut self, id: WorkerId, payload: impl Into<Vec<u8>>) -> Result<(), IpcError> {
        let payload = payload.into();
        if payload.len() > crate::ipc::MAX_MESSAGE {
            return Err(IpcError::TooLarge(payload.len()));
        }
        let i = id.index();
        if self.pending.len() <= i {
            self.pending.resize(i + 1, (0, 0));
        }
        let (waiting, bytes) = self.waiting.get(i).copied().unwrap_or_default();
        let (messages, bytes) = (waiting + self.pending[i].0, bytes + self.pending[i].1);
        if messages >= crate::ipc::MAX_QUEUED_MESSAGES
            || bytes + payload.len() > crate::ipc::MAX_QUEUED_BYTES
        {
            return Err(IpcError::QueueFull { messages, bytes });
        }
        self.pending[i].0 += 1;
        self.pending[i].1 += payload.len();
        self.commands.push(Command::Send(id, payload));
        Ok(())
    }

    /// Asks worker `id` to finish its work and exit; it is not replaced, and its `exit` event
    /// has `exited_after_disconnect: true` (Node's `worker.disconnect()`).
    pub fn disconnect(&mut self, id: WorkerId) {
        self.commands.push(Command::Disconnect(id));
    }

    /// Sends `signal` to worker `id`'s process (Node's `worker.process.kill(signal)`).
    ///
    /// If the signal ends it, that counts as a crash (`exited_after_disconnect: false`) and the
    /// worker is replaced. For Node's `worker.kill()`, call [`Control::disconnect`] first.
    pub fn kill(&mut self, id: WorkerId, signal: Signal) {
        self.commands.push(Command::Kill(id, signal));
    }

    /// Stops the whole cluster gracefully, as `SIGTERM` does: every worker is disconnected and
    /// the primary returns once they have exited (Node's `cluster.disconnect()`). Asking again
    /// while the cluster is stopping changes nothing.
    pub fn shutdown(&mut self) {
        self.commands.push(Command::Shutdown);
    }

    /// Replaces the primary itself with a fresh start of its binary, as `SIGUSR1` does: the new
    /// primary inherits the listening sockets, and once its workers are online this one hands
    /// over and drains; if it does not come up, this one keeps serving (and logs why).
    pub fn upgrade(&mut self) {
        self.commands.push(Command::Upgrade);
    }

    /// Every worker slot, in id order, as of the current event.
    pub fn workers(&self) -> &[WorkerInfo] {
        &self.workers
    }

    /// Worker `id` as of the current event, if there is such a slot.
    pub fn worker(&self, id: WorkerId) -> Option<&WorkerInfo> {
        self.workers.iter().find(|w| w.id == id)
    }

    /// True when worker `id` has no live process (Node's `worker.isDead()`); also true for an
    /// id that names no slot.
    pub fn is_dead(&self, id: WorkerId) -> bool {
        self.worker(id).is_none_or(|w| w.state == WorkerState::Dead)
    }
}

impl Primary {
    /// The commands queue, with its view of the workers brought up to date.
    pub(crate) fn control(&mut self) -> &mut Control {
        self.refresh_view();
        &mut self.hooks.control
    }

    /// Tells the user's hook (if any) about `event`.
    pub(super) fn emit(&mut self, event: Event) {
        log::debug!("event: {event}");
        if self.hooks.hook.is_none() {
            return;
        }
        self.refresh_view();
        if let Some(hook) = self.hooks.hook.as_mut() {
            hook(&event, &mut self.hooks.control);
        }
    }

    /// Rebuilds the workers' view that [`Control`] shows.
    fn refresh_view(&mut self) {
        let workers = &self.workers;
        let waiting = &mut self.hooks.control.waiting;
        waiting.clear();
        waiting.extend(workers.slots().iter().map(|slot| {
            slot.current
                .and_then(|k| workers.get(k))
                .map_or((0, 0), |p| p.link.ordered_load())
        }));
        let view = &mut self.hooks.control.workers;
        view.clear();
        view.extend(workers.slots().iter().map(|slot| {
            match slot.current.and_then(|k| workers.get(k)) {
                Some(p) => WorkerInfo {
                    id: slot.id,
                    pid: Some(p.pid),
                    state: match p.state {
                        State::Starting => WorkerState::Starting,
                        State::Online => WorkerState::Online,
                        State::Disconnecting => WorkerState::Disconnecting,
                    },
                    connected: !p.channel_closed,
                },
                None => WorkerInfo {
                    id: slot.id,
                    pid: None,
                    state: WorkerState::Dead,
                    connected: false,
                },
            }
        }));
    }

    /// Carries out what the event hook asked for, in order, including what it asks while
    /// these commands run (they can cause events too).
    pub(super) fn apply_control(&mut self) {
        loop {
            let commands = std::mem::take(&mut self.hooks.control.commands);
            if commands.is_empty() {
                return;
            }
            self.hooks.control.pending.clear();
            for c in commands {
                self.apply(c);
            }
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Send(id, payload) => match self.workers.current(id) {
                Some(key) => {
                    if let Some(p) = self.workers.get_mut(key) {
                        p.link.send(ToWorker::Message(payload));
                    }
                    self.flush(key);
                }
                None => log::warn!("message for worker {id} dropped: it is not running"),
            },
            Command::Disconnect(id) => {
                if let Some(key) = self.workers.current(id) {
                    self.disconnect(key);
                }
            }
            Command::Kill(id, sig) => {
                if let Some(p) = self.workers.current(id).and_then(|k| self.workers.get(k)) {
                    let pid = nix::unistd::Pid::from_raw(p.pid as i32);
                    let _ = nix::sys::signal::kill(pid, sig);
                }
            }
            Command::Shutdown => {
                if !self.stopping() {
                    self.begin_shutdown();
                }
            }
            Command::Upgrade => self.begin_upgrade(),
        }
    }
}

/// The user's hook and the commands it gave.
#[derive(Default)]
pub(super) struct Hooks {
    pub hook: Option<EventHook>,
    pub control: Control,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_past_the_bound_are_refused() {
        let mut c = Control::default();
        let id = WorkerId::new(2).unwrap();
        for _ in 0..crate::ipc::MAX_QUEUED_MESSAGES {
            c.send(id, "x").unwrap();
        }
        assert!(matches!(c.send(id, "x"), Err(IpcError::QueueFull { .. })));
        assert!(c.send(WorkerId::new(1).unwrap(), "x").is_ok(), "per worker");
    }
}
