//! What a worker lets in: the listeners it accepts on (shared and reuseport), and the limit on
//! connections served at once. At the limit, handed-over connections are held unacked (the
//! primary still owns them and routes new ones elsewhere once this worker's window fills) and
//! listeners are left alone (the kernel's queue keeps what waits).

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use crate::ipc::ConnId;

/// The first listener's token; the channel and the signals come before.
const FIRST_LISTENER: usize = 3;
/// Most listeners a worker takes (tokens up to the first connection's).
const MAX_LISTENERS: usize = super::table::FIRST_CONN_TOKEN - FIRST_LISTENER;

/// A listener's place in the worker's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerIndex(usize);

impl ListenerIndex {
    /// The listener a token names, if it names one.
    pub fn from_token(t: Token) -> Option<ListenerIndex> {
        let i = t.0.checked_sub(FIRST_LISTENER)?;
        (i < MAX_LISTENERS).then_some(ListenerIndex(i))
    }
}

/// The worker's listeners and connection limit.
#[derive(Debug)]
pub struct Admission {
    listeners: Vec<TcpListener>,
    /// Received while at the limit: not acked yet (acked when taken, as connections close;
    /// with whether the primary asked for an ack).
    held: VecDeque<(ConnId, bool, TcpStream)>,
    /// Most connections served at once (`usize::MAX`: no limit).
    max: usize,
    /// Listeners are not being drained because the worker is at its limit.
    paused: bool,
}

/// What one accept call gave.
#[derive(Debug)]
pub enum Accepted {
    /// A connection.
    Conn(TcpStream),
    /// Nothing more now (empty queue, at the limit, or an error that was logged).
    Done,
}

impl Admission {
    /// No listeners; at most `max` connections at once (0: no limit).
    pub fn new(max: usize) -> Admission {
        Admission {
            listeners: Vec::new(),
            held: VecDeque::new(),
            max: if max == 0 { usize::MAX } else { max },
            paused: false,
        }
    }

    /// True when serving one more connection (with `open` served now) would pass the limit.
    pub fn full(&self, open: usize) -> bool {
        open >= self.max
    }

    /// Holds a handed-over connection until there is room.
    pub fn hold(&mut self, id: ConnId, wants_ack: bool, stream: TcpStream) {
        self.held.push_back((id, wants_ack, stream));
    }

    /// The oldest held connection, if there is room for it (`open` served now).
    pub fn unhold(&mut self, open: usize, draining: bool) -> Option<(ConnId, bool, TcpStream)> {
        if self.full(open) && !draining {
            return None;
        }
        self.held.pop_front()
    }

    /// Connections held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// True when connections are held.
    pub fn holds_any(&self) -> bool {
        !self.held.is_empty()
    }

    /// True when accepting was paused at the limit and there is room again.
    pub fn should_resume(&mut self, open: usize) -> bool {
        if self.paused && !self.full(open) {
            self.paused = false;
            return true;
        }
        false
    }

    /// True when accepting is paused at the limit.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Adds a listening socket from the primary; `false` if it was not taken.
    pub fn add_listener(&mut self, fd: OwnedFd, registry: &Registry) -> bool {
        if self.listeners.len() >= MAX_LISTENERS {
            log::error!("more than {MAX_LISTENERS} listeners; ignoring one");
            return false;
        }
        let mut l = TcpListener::from_std(std::net::TcpListener::from(fd));
        let token = Token(FIRST_LISTENER + self.listeners.len());
        match registry.register(&mut l, token, Interest::READABLE) {
            Ok(()) => {
                self.listeners.push(l);
                true
            }
            Err(e) => {
                log::error!("cannot register listener: {e}");
                false
            }
        }
    }

    /// Number of listeners.
    pub fn listener_count(&self) -> usize {
        self.listeners.len()
    }

    /// The index of listener `i` (0-based).
    pub fn listener(&self, i: usize) -> ListenerIndex {
        ListenerIndex(i)
    }

    /// Accepts one connection from listener `index` if there is room (`open` served now).
    pub fn accept(&mut self, index: ListenerIndex, open: usize) -> Accepted {
        if self.full(open) {
            // Leave the rest in the kernel's queue (other workers, or us later, take them).
            self.paused = true;
            return Accepted::Done;
        }
        let Some(l) = self.listeners.get(index.0) else {
            return Accepted::Done;
        };
        loop {
            match l.accept() {
                Ok((stream, _)) => return Accepted::Conn(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Accepted::Done,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ECONNABORTED, EMFILE, ...: log and retry on the next readiness event.
                    log::warn!("accept: {e}");
                    return Accepted::Done;
                }
            }
        }
    }

    /// Stops accepting for good (the worker drains); what the kernel queued stays for others.
    pub fn close_listeners(&mut self, registry: &Registry) {
        for mut l in self.listeners.drain(..) {
            let _ = registry.deregister(&mut l);
        }
    }
}
