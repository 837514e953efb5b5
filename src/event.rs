//! Lifecycle events in the primary, with Node's `cluster` vocabulary, delivered to a callback
//! ([`crate::Cluster::on_event`]) or an iterator ([`crate::Cluster::events`]), and the worker
//! ids they name. Plain data: nothing here knows how the primary works.

use std::fmt;
use std::net::SocketAddr;

/// A worker's id: its 1-based slot number, kept by the replacements of a worker that died or
/// was reloaded (Node's `worker.id`, which is never reused; here a slot is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(std::num::NonZeroUsize);

impl WorkerId {
    /// The id `n`; `None` for 0 (ids start at 1).
    pub fn new(n: usize) -> Option<WorkerId> {
        std::num::NonZeroUsize::new(n).map(WorkerId)
    }

    /// The id of the worker in slot `index` (0-based).
    pub fn from_index(index: usize) -> WorkerId {
        WorkerId(std::num::NonZeroUsize::MIN.saturating_add(index))
    }

    /// The number (1-based).
    pub fn get(self) -> usize {
        self.0.get()
    }

    /// The 0-based slot index.
    pub fn index(self) -> usize {
        self.0.get() - 1
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl PartialEq<usize> for WorkerId {
    fn eq(&self, other: &usize) -> bool {
        self.get() == *other
    }
}

impl std::str::FromStr for WorkerId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<usize>()
            .ok()
            .and_then(WorkerId::new)
            .ok_or_else(|| format!("'{s}' is not a worker id (1, 2, ...)"))
    }
}

/// Something that happened to a worker, as seen by the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A worker process was started (Node's `fork`).
    Fork {
        /// Worker id (1-based slot number).
        id: WorkerId,
        /// Its process id.
        pid: u32,
    },
    /// The worker set itself up and takes connections (`online`).
    Online {
        /// Worker id.
        id: WorkerId,
        /// Its process id.
        pid: u32,
    },
    /// The worker accepts on a listener it was given (`listening`; shared and reuseport).
    Listening {
        /// Worker id.
        id: WorkerId,
        /// Its process id.
        pid: u32,
        /// The address it listens on.
        addr: SocketAddr,
    },
    /// The worker sent a message (`message`).
    Message {
        /// Worker id.
        id: WorkerId,
        /// Its process id.
        pid: u32,
        /// The bytes it sent.
        payload: Vec<u8>,
    },
    /// The worker's channel closed (`disconnect`).
    Disconnect {
        /// Worker id.
        id: WorkerId,
        /// Its process id.
        pid: u32,
    },
    /// The worker process ended (`exit`).
    Exit {
        /// Worker id.
        id: WorkerId,
        /// Its process id.
        pid: u32,
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal number, if a signal ended it.
        signal: Option<i32>,
        /// True if it was told to disconnect (or the cluster was stopping) before it exited.
        exited_after_disconnect: bool,
    },
}

impl Event {
    /// Node's name for the event: `fork`, `online`, `listening`, `message`, `disconnect` or
    /// `exit`.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Fork { .. } => "fork",
            Event::Online { .. } => "online",
            Event::Listening { .. } => "listening",
            Event::Message { .. } => "message",
            Event::Disconnect { .. } => "disconnect",
            Event::Exit { .. } => "exit",
        }
    }

    /// The id of the worker the event is about.
    pub fn id(&self) -> WorkerId {
        match *self {
            Event::Fork { id, .. }
            | Event::Online { id, .. }
            | Event::Listening { id, .. }
            | Event::Message { id, .. }
            | Event::Disconnect { id, .. }
            | Event::Exit { id, .. } => id,
        }
    }

    /// The process id of the worker the event is about.
    pub fn pid(&self) -> u32 {
        match *self {
            Event::Fork { pid, .. }
            | Event::Online { pid, .. }
            | Event::Listening { pid, .. }
            | Event::Message { pid, .. }
            | Event::Disconnect { pid, .. }
            | Event::Exit { pid, .. } => pid,
        }
    }

    /// The bytes of a `message` event; `None` for other events.
    pub fn payload(&self) -> Option<&[u8]> {
        match self {
            Event::Message { payload, .. } => Some(payload),
            _ => None,
        }
    }

    /// The payload of a `message` event as UTF-8 text; `None` for other events or when the
    /// bytes are not valid UTF-8 (use [`Event::payload`] for those).
    pub fn text(&self) -> Option<&str> {
        self.payload().and_then(|p| std::str::from_utf8(p).ok())
    }
}

/// One line per event, for logs: `exit id=2 pid=4242 code=70 exited_after_disconnect=false`.
///
/// A message shows its length, not its bytes.
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} id={} pid={}", self.name(), self.id(), self.pid())?;
        match self {
            Event::Listening { addr, .. } => write!(f, " addr={addr}"),
            Event::Message { payload, .. } => write!(f, " len={}", payload.len()),
            Event::Exit {
                code,
                signal,
                exited_after_disconnect,
                ..
            } => {
                match (code, signal) {
                    (Some(c), _) => write!(f, " code={c}")?,
                    (None, Some(s)) => write!(f, " signal={s}")?,
                    (None, None) => write!(f, " status=unknown")?,
                }
                write!(f, " exited_after_disconnect={exited_after_disconnect}")
            }
            _ => Ok(()),
        }
    }
}

/// Where a worker is in its life, as [`crate::Control::workers`] shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Forked, not yet online.
    Starting,
    /// Online: takes connections and messages.
    Online,
    /// Told to finish and exit (disconnected, or the cluster is stopping).
    Disconnecting,
    /// No process: it exited and is not (yet) replaced.
    Dead,
}

/// A worker slot as the primary sees it (Node's `cluster.workers[id]`, read-only).
///
/// Ids are slots: a worker that is replaced after a crash keeps its id, with a new pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Worker id (1-based slot number).
    pub id: WorkerId,
    /// Pid of the process serving the slot, if any.
    pub pid: Option<u32>,
    /// Lifecycle state.
    pub state: WorkerState,
    /// Whether its channel is open (Node's `worker.isConnected()`).
    pub connected: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_and_display() {
        let w = |n| WorkerId::new(n).unwrap();
        let m = Event::Message {
            id: w(2),
            pid: 7,
            payload: b"done 42".to_vec(),
        };
        assert_eq!((m.name(), m.id().get(), m.pid()), ("message", 2, 7));
        assert_eq!(WorkerId::from_index(0), w(1));
        assert_eq!((w(3).index(), w(3).to_string()), (2, "3".to_string()));
        assert!(WorkerId::new(0).is_none() && "0".parse::<WorkerId>().is_err());
        assert_eq!(m.text(), Some("done 42"));
        assert_eq!(m.to_string(), "message id=2 pid=7 len=7");
        let bad = Event::Message {
            id: w(1),
            pid: 1,
            payload: vec![0xff],
        };
        assert_eq!(bad.text(), None);
        assert_eq!(bad.payload(), Some(&[0xff][..]));
        let exit = Event::Exit {
            id: w(3),
            pid: 9,
            code: None,
            signal: Some(9),
            exited_after_disconnect: false,
        };
        assert_eq!(exit.text(), None);
        assert_eq!(
            exit.to_string(),
            "exit id=3 pid=9 signal=9 exited_after_disconnect=false"
        );
    }
}
