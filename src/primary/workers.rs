//! The worker table: one slot per worker id, and every live worker process (current, retired
//! or being started by a reload) with the primary's bookkeeping for it.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use mio::Token;
use slab::Slab;

use crate::event::WorkerId;
use crate::ipc::{Link, WorkerStats};
use crate::policy::Load;

/// Tokens below this are the listener and the signals.
const FIRST_WORKER_TOKEN: usize = 2;

/// A slot's place in the table (0-based; the worker id is one more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotIndex(pub usize);

/// A live process's key in the table; also its channel's `mio` token, offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcKey(usize);

impl ProcKey {
    /// The key a token names, if it names a worker's channel.
    pub fn from_token(t: Token) -> Option<ProcKey> {
        t.0.checked_sub(FIRST_WORKER_TOKEN).map(ProcKey)
    }

    /// The token its channel is registered under.
    pub fn token(self) -> Token {
        Token(FIRST_WORKER_TOKEN + self.0)
    }
}

/// Where a worker is in its life (Node's vocabulary: fork, online, disconnect, exit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Forked, not yet online.
    Starting,
    /// Online: takes connections.
    Online,
    /// Told to finish and exit; takes nothing new.
    Disconnecting,
}

/// A live worker process and the primary's bookkeeping for it.
#[derive(Debug)]
pub struct Proc {
    /// The child process (reaped through it).
    pub child: Child,
    /// Its pid.
    pub pid: u32,
    /// The primary's end of its channel, with the connections it has not acked.
    pub link: Link,
    /// Lifecycle state.
    pub state: State,
    /// Connections handed over and not reported closed.
    pub open: u64,
    /// Connections handed over in total (primary-accepts policies).
    pub handed: u64,
    /// The counters the worker last reported.
    pub stats: WorkerStats,
    /// When it was started.
    pub started: Instant,
    /// Whether the channel is closed (the process is gone or going).
    pub channel_closed: bool,
    /// Whether it was told to disconnect (Node's `exitedAfterDisconnect`).
    pub disconnect_sent: bool,
    /// The slot it serves (or served, or is about to serve after a reload).
    pub slot: SlotIndex,
    /// Whether it answered the latest stats request.
    pub stats_fresh: bool,
    /// It refused connections (out of descriptors): none until then.
    pub cool_until: Option<Instant>,
    /// What the watchdog knows of it.
    pub watch: super::watchdog::Watch,
    /// A statistics request is outstanding (at most one is sent at a time).
    pub stats_pending: bool,
    /// When it last reported its counters.
    pub stats_at: Option<Instant>,
    /// CPU and memory, as last sampled.
    pub usage: super::operate::Usage,
    /// It was reported for not coming online within the start timeout.
    pub slow_start_reported: bool,
}

impl Proc {
    /// Wraps a freshly spawned child.
    pub fn new(child: Child, link: Link, slot: SlotIndex) -> Proc {
        Proc {
            pid: child.id(),
            child,
            link,
            state: State::Starting,
            open: 0,
            handed: 0,
            stats: WorkerStats::default(),
            started: Instant::now(),
            channel_closed: false,
            disconnect_sent: false,
            slot,
            stats_fresh: false,
            cool_until: None,
            watch: Default::default(),
            stats_pending: false,
            stats_at: None,
            usage: Default::default(),
            slow_start_reported: false,
        }
    }

    /// Its load, if it can take another connection now under a handoff window of `window`.
    /// During a shutdown (`stopping`) a disconnecting worker still takes connections: they
    /// are the last ones, and nobody else will serve them.
    pub fn load(&self, window: usize, stopping: bool, now: Instant, now_ns: u64) -> Option<Load> {
        let takes = match self.state {
            State::Online => true,
            State::Disconnecting => stopping,
            State::Starting => false,
        };
        let cooling = self.cool_until.is_some_and(|t| now < t) || self.watch.unresponsive();
        (takes && !cooling && !self.channel_closed && self.link.outstanding() < window).then(|| {
            Load {
                open: self.open,
                idle: self.link.idle(),
                waiting: self.link.waiting(),
                serving: self.link.status().map_or(self.open, |s| s.open),
                busy_for: self.link.busy_for(now_ns),
            }
        })
    }
}

/// One worker slot: keeps its id across respawns.
#[derive(Debug)]
pub struct Slot {
    /// The worker id.
    pub id: WorkerId,
    /// The process serving this slot, if any.
    pub current: Option<ProcKey>,
    /// Pid of the last process that served it (kept after it exits, for the statistics).
    pub last_pid: Option<u32>,
    /// Times this slot's worker was replaced after an unexpected exit.
    pub restarts: u32,
    /// Deaths in a row without a healthy uptime (for backoff and crash-loop reports).
    pub quick_deaths: u32,
    /// When to start a replacement, if one is due.
    pub respawn_at: Option<Instant>,
    /// Counters of workers that lived in this slot before.
    pub past: WorkerStats,
    /// Connections handed to earlier workers in this slot.
    pub past_handed: u64,
    /// CPU ticks used by earlier workers in this slot (as last sampled).
    pub past_cpu_ticks: u64,
}

/// Every slot and every live process. Slots past `active` were given up by a scale-down:
/// they keep their counters (and may still hold a draining worker) and are reused first when
/// the cluster grows again.
#[derive(Debug)]
pub struct Workers {
    slots: Vec<Slot>,
    active: usize,
    procs: Slab<Proc>,
}

impl Workers {
    /// `n` empty slots.
    pub fn new(n: usize) -> Workers {
        let mut w = Workers {
            slots: Vec::with_capacity(n),
            active: n,
            procs: Slab::new(),
        };
        for _ in 0..n {
            w.add_slot();
        }
        w
    }

    /// Adds an empty slot after the last one (not yet in use: see [`Workers::set_active`]).
    pub fn add_slot(&mut self) {
        self.slots.push(Slot {
            id: WorkerId::from_index(self.slots.len()),
            current: None,
            last_pid: None,
            restarts: 0,
            quick_deaths: 0,
            respawn_at: None,
            past: WorkerStats::default(),
            past_handed: 0,
            past_cpu_ticks: 0,
        });
    }

    /// Slots in use: the first `active` ones.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Uses the first `n` slots (at most as many as exist).
    pub fn set_active(&mut self, n: usize) {
        self.active = n.min(self.slots.len());
    }

    /// The slots, in id order.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Every slot index in use, in id order.
    pub fn indices(&self) -> impl Iterator<Item = SlotIndex> {
        (0..self.active).map(SlotIndex)
    }

    /// Slot `i`.
    pub fn slot(&self, i: SlotIndex) -> &Slot {
        &self.slots[i.0]
    }

    /// Slot `i`, to change.
    pub fn slot_mut(&mut self, i: SlotIndex) -> &mut Slot {
        &mut self.slots[i.0]
    }

    /// The process serving worker `id`, if any.
    pub fn current(&self, id: WorkerId) -> Option<ProcKey> {
        self.slots.get(id.index())?.current
    }

    /// Process `key`, if it is alive.
    pub fn get(&self, key: ProcKey) -> Option<&Proc> {
        self.procs.get(key.0)
    }

    /// Process `key`, to change.
    pub fn get_mut(&mut self, key: ProcKey) -> Option<&mut Proc> {
        self.procs.get_mut(key.0)
    }

    /// Adds a process.
    pub fn insert(&mut self, p: Proc) -> ProcKey {
        ProcKey(self.procs.insert(p))
    }

    /// Removes a process that exited.
    pub fn remove(&mut self, key: ProcKey) -> Option<Proc> {
        self.procs.try_remove(key.0)
    }

    /// Every live process.
    pub fn procs(&self) -> impl Iterator<Item = (ProcKey, &Proc)> {
        self.procs.iter().map(|(k, p)| (ProcKey(k), p))
    }

    /// Every live process, to change.
    pub fn procs_mut(&mut self) -> impl Iterator<Item = (ProcKey, &mut Proc)> {
        self.procs.iter_mut().map(|(k, p)| (ProcKey(k), p))
    }

    /// The keys of every live process.
    pub fn keys(&self) -> Vec<ProcKey> {
        self.procs.iter().map(|(k, _)| ProcKey(k)).collect()
    }

    /// True when no process is alive.
    pub fn no_procs(&self) -> bool {
        self.procs.is_empty()
    }

    /// The id and pid of process `key`.
    pub fn who(&self, key: ProcKey) -> Option<(WorkerId, u32)> {
        let p = self.get(key)?;
        Some((self.slot(p.slot).id, p.pid))
    }

    /// True when every slot in use has its current process online.
    pub fn all_online(&self) -> bool {
        self.slots[..self.active].iter().all(|s| {
            s.current
                .and_then(|k| self.get(k))
                .is_some_and(|p| p.state == State::Online)
        })
    }
}

/// Exponential backoff between quick successive deaths (PM2's numbers), computed here only.
pub mod backoff {
    use super::Duration;

    /// First delay.
    pub const START: Duration = Duration::from_millis(100);
    /// Largest delay.
    pub const CAP: Duration = Duration::from_secs(15);
    /// Uptime after which a worker counts as healthy and the backoff resets.
    pub const HEALTHY: Duration = Duration::from_secs(30);

    /// The delay before restart number `deaths` (1-based) in a row.
    pub fn delay(deaths: u32) -> Duration {
        let mut d = START.as_secs_f64();
        for _ in 1..deaths {
            d *= 1.5;
            if d >= CAP.as_secs_f64() {
                return CAP;
            }
        }
        Duration::from_secs_f64(d).min(CAP)
    }
}

/// How a worker ended, for logs: `exit code 3`, `signal 9 (SIGKILL)`.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => {
            let name = nix::sys::signal::Signal::try_from(s)
                .map(|s| s.as_str())
                .unwrap_or("?");
            format!("signal {s} ({name})")
        }
        _ => "unknown status".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff::delay(1), Duration::from_millis(100));
        assert_eq!(backoff::delay(2), Duration::from_millis(150));
        assert_eq!(backoff::delay(50), backoff::CAP);
    }

    #[test]
    fn tokens_and_ids_do_not_mix() {
        let w = Workers::new(3);
        assert_eq!(w.slot(SlotIndex(2)).id.get(), 3);
        assert_eq!(ProcKey::from_token(ProcKey(5).token()), Some(ProcKey(5)));
        assert_eq!(ProcKey::from_token(Token(1)), None);
        assert_eq!(w.current(WorkerId::new(9).unwrap()), None);
    }
}
