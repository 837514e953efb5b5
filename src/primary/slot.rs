//! The worker table: one slot per worker, the process in it, its channel and what it owes us.

use mio::net::TcpStream;
use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::ipc::{Channel, ToWorker, WorkerStats, MAX_CONN_BATCH};
use crate::policy::Load;
use crate::worker::{ENV_CHANNEL_FD, ENV_MAX_CONNECTIONS, ENV_REPORT_CLOSES, ENV_WORKER_ID};

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

/// A packet waiting for a worker's channel to become writable.
#[derive(Debug)]
pub enum Out {
    /// The connection with this id, whose socket is in `unacked`.
    Conn(u64),
    /// Listener number `n` of the primary's listeners, for the worker to accept on.
    Listen(usize),
    /// A control or user message.
    Packet(Vec<u8>),
}

/// How to start a worker process.
#[derive(Debug, Clone)]
pub struct Spawner {
    /// The program (the primary's own executable, resolved at start).
    pub exe: PathBuf,
    /// Its arguments (the primary's own, unless the builder set others).
    pub args: Vec<OsString>,
    /// Extra environment for workers.
    pub env: Vec<(OsString, OsString)>,
    /// Whether workers report closed connections promptly.
    pub report_closes: bool,
    /// Most connections one worker serves at once (0: no limit).
    pub max_connections: usize,
}

impl Spawner {
    /// Starts the worker for slot `id` with its end of a fresh channel.
    pub fn spawn(&self, id: usize) -> io::Result<(Child, Channel)> {
        let (mine, theirs) = Channel::pair()?;
        let fd = theirs.as_fd().as_raw_fd();
        let mut cmd = Command::new(&self.exe);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(ENV_WORKER_ID, id.to_string())
            .env(ENV_CHANNEL_FD, fd.to_string())
            .env(
                ENV_REPORT_CLOSES,
                if self.report_closes { "1" } else { "0" },
            )
            .env(ENV_MAX_CONNECTIONS, self.max_connections.to_string())
            .stdin(Stdio::null());
        // SAFETY: between fork and exec we only call fcntl, which is async-signal-safe. It
        // clears close-on-exec on the worker's end of the channel so that it survives exec.
        unsafe {
            cmd.pre_exec(move || {
                if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(theirs);
        Ok((child, mine))
    }
}

/// A live worker process and the primary's bookkeeping for it.
#[derive(Debug)]
pub struct Proc {
    /// The child process (reaped through it).
    pub child: Child,
    /// Its pid.
    pub pid: u32,
    /// The primary's end of its channel.
    pub channel: Channel,
    /// Packets not yet taken by the kernel.
    pub out: VecDeque<Out>,
    /// Connections handed to it (queued or sent) and not yet acked: the primary's copies.
    pub unacked: HashMap<u64, TcpStream>,
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
    /// Index of the slot it serves (or served, or is about to serve after a reload).
    pub slot: usize,
    /// Whether it answered the latest stats request.
    pub stats_fresh: bool,
    /// Whether its channel is registered for writable events (only while `out` is backed up).
    pub want_writable: bool,
}

impl Proc {
    /// Wraps a freshly spawned child.
    pub fn new(child: Child, channel: Channel, slot: usize) -> Proc {
        Proc {
            slot,
            stats_fresh: false,
            want_writable: false,
            pid: child.id(),
            child,
            channel,
            out: VecDeque::new(),
            unacked: HashMap::new(),
            state: State::Starting,
            open: 0,
            handed: 0,
            stats: WorkerStats::default(),
            started: Instant::now(),
            channel_closed: false,
            disconnect_sent: false,
        }
    }

    /// Its load, if it can take another connection under a handoff window of `window`.
    pub fn load(&self, window: usize) -> Option<Load> {
        (self.state == State::Online && !self.channel_closed && self.unacked.len() < window)
            .then_some(Load { open: self.open })
    }

    /// Queues a control message.
    pub fn push(&mut self, msg: &ToWorker) {
        match msg.encode() {
            Ok(b) => self.out.push_back(Out::Packet(b)),
            Err(e) => log::error!("cannot encode message for worker {}: {e}", self.pid),
        }
    }

    /// Sends what the channel takes. `Err` means the worker's end is gone.
    pub fn flush(&mut self, listeners: &[std::net::TcpListener]) -> io::Result<()> {
        let mut packet = Vec::new();
        while let Some(front) = self.out.front() {
            let (sent, covered) = match front {
                Out::Conn(_) => self.send_conns(&mut packet),
                Out::Listen(n) => match listeners.get(*n) {
                    Some(l) => (self.channel.send(&[ToWorker::LISTEN_TAG], &[l.as_fd()]), 1),
                    None => (Ok(()), 1),
                },
                Out::Packet(bytes) => (self.channel.send(bytes, &[]), 1),
            };
            match sent {
                Ok(()) => {
                    self.out.drain(..covered);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends the connections queued at the front, up to [`MAX_CONN_BATCH`], in one packet: one
    /// `sendmsg` and one wake-up of the worker for a burst of accepts. Returns the result and
    /// how many queue entries the packet covered.
    fn send_conns(&self, packet: &mut Vec<u8>) -> (io::Result<()>, usize) {
        let mut ids = Vec::with_capacity(MAX_CONN_BATCH);
        let mut fds = Vec::with_capacity(MAX_CONN_BATCH);
        let mut covered = 0;
        for out in self.out.iter() {
            let Out::Conn(id) = out else { break };
            if ids.len() == MAX_CONN_BATCH {
                break;
            }
            covered += 1;
            // A connection reclaimed meanwhile has nothing to send.
            if let Some(s) = self.unacked.get(id) {
                ids.push(*id);
                fds.push(s.as_fd());
            }
        }
        if ids.is_empty() {
            return (Ok(()), covered);
        }
        ToWorker::conn_packet(&ids, packet);
        (self.channel.send(packet, &fds), covered)
    }

    /// Takes back every connection the worker has not acked (it died or disconnected).
    pub fn reclaim(&mut self) -> Vec<(u64, TcpStream)> {
        self.out.retain(|o| !matches!(o, Out::Conn(_)));
        let mut v: Vec<_> = self.unacked.drain().collect();
        v.sort_by_key(|(id, _)| *id);
        self.open = self.open.saturating_sub(v.len() as u64);
        v
    }
}

/// One worker slot: keeps its id across respawns.
#[derive(Debug)]
pub struct Slot {
    /// 1-based worker id.
    pub id: usize,
    /// Key (in the primary's process table) of the process serving this slot, if any.
    pub current: Option<usize>,
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
}

impl Slot {
    /// An empty slot.
    pub fn new(id: usize) -> Slot {
        Slot {
            id,
            current: None,
            restarts: 0,
            quick_deaths: 0,
            respawn_at: None,
            past: WorkerStats::default(),
            past_handed: 0,
        }
    }
}

/// Exponential backoff between quick successive deaths (PM2's numbers).
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

/// How a worker ended, for the `exit` event.
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
}
