//! Lifecycle events in the primary, with Node's `cluster` vocabulary, delivered to a callback
//! ([`crate::Cluster::on_event`]) or an iterator ([`crate::Cluster::events`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;

use crate::primary::{Control, Primary, PrimaryError};

/// Something that happened to a worker, as seen by the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A worker process was started (Node's `fork`).
    Fork {
        /// Worker id (1-based slot number).
        id: usize,
        /// Its process id.
        pid: u32,
    },
    /// The worker set itself up and takes connections (`online`).
    Online {
        /// Worker id.
        id: usize,
        /// Its process id.
        pid: u32,
    },
    /// The worker accepts on a listener it was given (`listening`; shared and reuseport).
    Listening {
        /// Worker id.
        id: usize,
        /// Its process id.
        pid: u32,
        /// The address it listens on.
        addr: SocketAddr,
    },
    /// The worker sent a message (`message`).
    Message {
        /// Worker id.
        id: usize,
        /// Its process id.
        pid: u32,
        /// The bytes it sent.
        payload: Vec<u8>,
    },
    /// The worker's channel closed (`disconnect`).
    Disconnect {
        /// Worker id.
        id: usize,
        /// Its process id.
        pid: u32,
    },
    /// The worker process ended (`exit`).
    Exit {
        /// Worker id.
        id: usize,
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
    pub fn id(&self) -> usize {
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
    pub id: usize,
    /// Pid of the process serving the slot, if any.
    pub pid: Option<u32>,
    /// Lifecycle state.
    pub state: WorkerState,
    /// Whether its channel is open (Node's `worker.isConnected()`).
    pub connected: bool,
}

/// The primary's events as an iterator, from [`crate::Cluster::events`].
///
/// The primary's loop runs inside [`Iterator::next`], on the calling thread: there is no
/// background thread, so the signals the primary blocked for its `signalfd` stay blocked on the
/// thread that reads them (which is why `Events` is neither `Send` nor `Sync`). Between two
/// events, [`Events::control`] sends messages and disconnects, kills or stops workers; the
/// commands are carried out when `next` is called again. Handle each event promptly: while the
/// caller is busy, the primary does not hand out connections.
///
/// The iterator ends (`None`) after a graceful shutdown has completed (`SIGTERM`, `SIGINT` or
/// [`crate::Control::shutdown`]); an `Err` item means the loop failed, and is the last item.
/// Dropping it early stops the cluster gracefully and waits for the workers to exit.
///
/// ```no_run
/// use herd::{Cluster, Event, http::HttpHandler};
///
/// fn main() -> Result<(), herd::Error> {
///     let cluster = Cluster::new().workers(2).port(0);
///     if herd::is_worker() {
///         return cluster.run(HttpHandler::default);
///     }
///     let mut events = cluster.events()?;
///     println!("listening on {}", events.local_addr());
///     while let Some(event) = events.next() {
///         match event? {
///             Event::Online { id, .. } => events.control().send(id, "hello")?,
///             Event::Message { id, payload, .. } => {
///                 println!("worker {id} says {}", String::from_utf8_lossy(&payload));
///             }
///             Event::Exit { id, exited_after_disconnect: false, .. } => {
///                 println!("worker {id} crashed; it will be replaced");
///             }
///             _ => {}
///         }
///     }
///     Ok(())
/// }
/// ```
pub struct Events {
    primary: Primary,
    queue: Rc<RefCell<VecDeque<Event>>>,
    buf: mio::Events,
    started: bool,
    finished: bool,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("local_addr", &self.primary.local_addr())
            .field("queued", &self.queue.borrow().len())
            .field("started", &self.started)
            .field("finished", &self.finished)
            .finish()
    }
}

impl Events {
    /// Wraps a primary whose event hook pushes every event onto `queue`.
    pub(crate) fn new(primary: Primary, queue: Rc<RefCell<VecDeque<Event>>>) -> Events {
        Events {
            primary,
            queue,
            buf: mio::Events::with_capacity(1024),
            started: false,
            finished: false,
        }
    }

    /// The address actually bound (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.primary.local_addr()
    }

    /// Commands for the workers, and a view of them as of now.
    pub fn control(&mut self) -> &mut Control {
        self.primary.control()
    }
}

impl Iterator for Events {
    type Item = Result<Event, PrimaryError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(event) = self.queue.borrow_mut().pop_front() {
                return Some(Ok(event));
            }
            if self.finished {
                return None;
            }
            if !self.started {
                self.started = true;
                self.primary.start();
                continue;
            }
            match self.primary.turn(&mut self.buf) {
                Ok(false) => {}
                Ok(true) => {
                    self.finished = true;
                    self.primary.finish();
                }
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        if !self.started || self.finished {
            return;
        }
        self.primary.control().shutdown();
        for item in self.by_ref() {
            if let Err(e) = item {
                log::error!("stopping the cluster: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_and_display() {
        let m = Event::Message {
            id: 2,
            pid: 7,
            payload: b"done 42".to_vec(),
        };
        assert_eq!((m.name(), m.id(), m.pid()), ("message", 2, 7));
        assert_eq!(m.text(), Some("done 42"));
        assert_eq!(m.to_string(), "message id=2 pid=7 len=7");
        let bad = Event::Message {
            id: 1,
            pid: 1,
            payload: vec![0xff],
        };
        assert_eq!(bad.text(), None);
        assert_eq!(bad.payload(), Some(&[0xff][..]));
        let exit = Event::Exit {
            id: 3,
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
