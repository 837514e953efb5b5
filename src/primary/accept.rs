//! The primary's accepting side (primary-accepts policies): the listener, pausing it while too
//! many connections wait for a worker, resting it after an accept error, and the pending queue
//! of accepted connections with their ids.
//!
//! Two queues hold connections before a worker has them: the kernel's accept queue (the
//! listen backlog, [`crate::listen::BACKLOG`]) and this pending queue (`max_pending`). While the
//! pending queue is full the listener is paused and the kernel's queue holds what comes.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Interest, Registry, Token};

use crate::ipc::ConnId;

/// The listener's token.
pub const LISTENER: Token = Token(0);
/// How long the listener rests after an accept error such as EMFILE.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The listener and the connections accepted but not yet handed to a worker.
#[derive(Debug)]
pub struct Acceptor {
    listener: Option<TcpListener>,
    paused: bool,
    /// Not accepting until told (a primary started by an upgrade, until the old one hands over).
    held: bool,
    /// Resting: not woken by each connection; the caller takes what gathered, then ends it.
    resting: bool,
    /// After an accept error (EMFILE, ENOBUFS, ...): do not try again before this.
    retry_at: Option<Instant>,
    pending: VecDeque<(ConnId, OwnedFd)>,
    next_id: u64,
    max_pending: usize,
}

impl Acceptor {
    /// Accepts on `listener` (if any; workers-accept policies have none), keeping at most
    /// `max_pending` (at least 1) connections waiting.
    pub fn new(
        listener: Option<std::net::TcpListener>,
        max_pending: usize,
        registry: &Registry,
    ) -> io::Result<Acceptor> {
        let mut listener = listener.map(TcpListener::from_std);
        if let Some(l) = listener.as_mut() {
            registry.register(l, LISTENER, Interest::READABLE)?;
        }
        Ok(Acceptor {
            listener,
            paused: false,
            held: false,
            resting: false,
            retry_at: None,
            pending: VecDeque::new(),
            next_id: 0,
            max_pending: max_pending.max(1),
        })
    }

    /// Accepts until the kernel's queue is empty or the pending queue is full (then pauses).
    pub fn accept(&mut self, registry: &Registry) {
        if self.held {
            return;
        }
        while self.pending.len() < self.max_pending {
            let Some(l) = self.listener.as_ref() else {
                return;
            };
            match l.accept() {
                Ok((stream, _)) => self.push(stream.into()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // EMFILE and friends: retrying at once would spin. Pause, retry later.
                    log::error!("accept: {e}; pausing the listener for {ACCEPT_RETRY:?}");
                    self.retry_at = Some(Instant::now() + ACCEPT_RETRY);
                    self.pause(registry);
                    break;
                }
            }
        }
        if self.pending.len() >= self.max_pending {
            self.pause(registry);
        }
    }

    /// Queues a connection accepted elsewhere (on a dead worker's socket) for a worker.
    pub fn adopt(&mut self, socket: OwnedFd) {
        self.push(socket);
    }

    fn push(&mut self, socket: OwnedFd) {
        self.next_id += 1;
        self.pending.push_back((ConnId(self.next_id), socket));
    }

    /// The oldest waiting connection.
    pub fn pop(&mut self) -> Option<(ConnId, OwnedFd)> {
        self.pending.pop_front()
    }

    /// Puts connections back at the front, in the order given (a worker gave them back, or
    /// the pick found nobody).
    pub fn put_back(&mut self, back: Vec<(ConnId, OwnedFd)>) {
        for c in back.into_iter().rev() {
            self.pending.push_front(c);
        }
    }

    /// Connections accepted (or adopted) in total.
    pub fn accepted(&self) -> u64 {
        self.next_id
    }

    /// Connections waiting for a worker.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// Closes every waiting connection; returns how many there were.
    pub fn drop_waiting(&mut self) -> usize {
        let n = self.pending.len();
        self.pending.clear();
        n
    }

    fn pause(&mut self, registry: &Registry) {
        if let (Some(l), false) = (self.listener.as_mut(), self.paused) {
            let _ = registry.deregister(l);
            self.paused = true;
            log::debug!(
                "listener paused: {} connections wait for a worker",
                self.pending.len()
            );
        }
    }

    /// Resumes a paused listener once the pending queue has room again (at most half full,
    /// which for a limit of 1 means empty) and no accept error is resting it.
    pub fn maybe_resume(&mut self, registry: &Registry) {
        let room = self.pending.len() <= self.max_pending / 2;
        if !self.paused || self.held || self.resting || self.retry_at.is_some() || !room {
            return;
        }
        if let Some(l) = self.listener.as_mut() {
            // Registering reports the listener readable again if the kernel queue holds any.
            match registry.register(l, LISTENER, Interest::READABLE) {
                Ok(()) => self.paused = false,
                Err(e) => log::error!("cannot resume listener: {e}"),
            }
        }
    }

    /// Stops being woken by each new connection until [`Acceptor::end_rest`]: connections
    /// gather in the kernel's queue and the caller takes them together with
    /// [`Acceptor::accept`].
    pub fn rest(&mut self, registry: &Registry) {
        self.resting = true;
        self.pause(registry);
    }

    /// Ends [`Acceptor::rest`]: woken by each new connection again.
    pub fn end_rest(&mut self, registry: &Registry) {
        if std::mem::take(&mut self.resting) {
            self.maybe_resume(registry);
        }
    }

    /// True while resting.
    pub fn resting(&self) -> bool {
        self.resting
    }

    /// Stops accepting until [`Acceptor::unhold`] (the kernel's queue keeps what comes).
    pub fn hold(&mut self, registry: &Registry) {
        self.pause(registry);
        self.held = true;
    }

    /// Accepts again after [`Acceptor::hold`].
    pub fn unhold(&mut self, registry: &Registry) {
        self.held = false;
        self.maybe_resume(registry);
    }

    /// The listening socket's descriptor, while there is one.
    pub fn listener_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.listener.as_ref().map(|l| l.as_raw_fd())
    }

    /// Stops accepting and closes this process's copy of the listener without taking what the
    /// kernel queued: another process (an upgrade's new primary) holds the same socket and
    /// accepts it.
    pub fn let_go(&mut self, registry: &Registry) {
        if let Some(mut l) = self.listener.take() {
            if !self.paused {
                let _ = registry.deregister(&mut l);
            }
        }
    }

    /// When the rest after an accept error ends, if one is running.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Ends the rest after an accept error if it is over; `true` if it just ended.
    pub fn retry_due(&mut self, now: Instant) -> bool {
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            return true;
        }
        false
    }

    /// Stops accepting for good: the connections the kernel already queued are taken into
    /// the pending queue (they are still ours to serve), then the listener is closed.
    pub fn close(&mut self, registry: &Registry) {
        let Some(mut l) = self.listener.take() else {
            return;
        };
        if !self.paused {
            let _ = registry.deregister(&mut l);
        }
        while let Ok((stream, _)) = l.accept() {
            self.push(stream.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn a_limit_of_one_pauses_and_resumes() {
        let poll = mio::Poll::new().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let mut a = Acceptor::new(Some(l), 1, poll.registry()).unwrap();
        let _c1 = TcpStream::connect(addr).unwrap();
        let _c2 = TcpStream::connect(addr).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while a.waiting() == 0 && Instant::now() < deadline {
            a.accept(poll.registry());
        }
        assert_eq!(a.waiting(), 1, "stops at the limit");
        assert!(a.paused);
        let (first, _) = a.pop().unwrap();
        a.maybe_resume(poll.registry());
        assert!(!a.paused, "an empty queue resumes a limit of 1");
        while a.waiting() == 0 && Instant::now() < deadline {
            a.accept(poll.registry());
        }
        let (second, _) = a.pop().unwrap();
        assert!(second > first, "ids grow");
    }

    #[test]
    fn a_resting_listener_stays_paused_until_the_rest_ends() {
        let poll = mio::Poll::new().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let mut a = Acceptor::new(Some(l), 16, poll.registry()).unwrap();
        a.rest(poll.registry());
        assert!(a.paused && a.resting());
        a.maybe_resume(poll.registry());
        assert!(a.paused, "a rest is not ended by room in the queue");
        // What comes while it rests gathers in the kernel's queue and is taken in one go.
        let _c: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while a.waiting() < 3 && Instant::now() < deadline {
            a.accept(poll.registry());
        }
        assert_eq!(a.waiting(), 3);
        a.end_rest(poll.registry());
        assert!(!a.paused && !a.resting());
    }
}
