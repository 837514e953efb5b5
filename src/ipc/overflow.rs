//! idle-first's overflow: one queue of connections that every herd worker reads from, one
//! connection at a time, whenever it has nothing else to do.
//!
//! While some worker is idle, idle-first hands each connection to one of them on its own
//! channel. When none is (every worker inside a request), a connection handed to one of them
//! waits for that worker, however long its current request takes: the primary cannot know
//! which worker will be free first. The kernel's shared accept queue gets this right (the first
//! worker to call `accept` takes the next connection), and so does this queue: the primary
//! puts the connection here, and the first worker done with what it has takes it. Each packet
//! holds one connection, so a worker takes no more than it is about to serve.
//!
//! It is a `SOCK_SEQPACKET` pair: the primary sends on one end; every worker has a copy of the
//! other end (sent as [`ToWorker::Overflow`]); the kernel gives each packet to one reader. The
//! primary keeps the reading end too, to take back what no worker took (at shutdown, or before
//! handing the waiting connections to a new primary). The socket buffer bounds the queue: a
//! full queue refuses the packet, and the connection goes to a worker's own channel instead.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use mio::{Interest, Registry, Token};

use super::{Channel, ConnId, Delivery, Endpoint, IpcError, Outgoing, ToPrimary, ToWorker};

/// The primary's side of the overflow queue.
#[derive(Debug)]
pub struct Overflow {
    tx: Channel,
    /// The reading end, for the workers' copies and for taking back.
    rx: Endpoint<ToPrimary, ToWorker>,
    /// Bytes of the packet being encoded.
    scratch: Vec<u8>,
    /// Connections sent in total.
    sent: u64,
}

impl Overflow {
    /// Creates an empty queue.
    pub fn new() -> io::Result<Overflow> {
        let (tx, rx) = Channel::pair()?;
        Ok(Overflow {
            tx,
            rx: Endpoint::new(rx),
            scratch: Vec::new(),
            sent: 0,
        })
    }

    /// A copy of the reading end, for a worker ([`ToWorker::Overflow`]).
    pub fn reader(&self) -> io::Result<OwnedFd> {
        self.rx.channel().as_fd().try_clone_to_owned()
    }

    /// Connections put in the queue so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// True when connections wait in the queue (one syscall).
    pub fn holds_any(&self) -> bool {
        self.tx.unread_by_peer().is_ok_and(|n| n > 0)
    }

    /// Puts one connection in the queue, or gives its socket back when the queue is full (or
    /// broken: logged). The primary's copy is closed once it is in: the queue holds it now.
    pub fn give(&mut self, id: ConnId, socket: OwnedFd) -> Result<(), (ConnId, OwnedFd)> {
        self.scratch.clear();
        let msg = ToWorker::Give { ids: vec![id] };
        if let Err(e) = msg.encode(&mut self.scratch) {
            log::error!("overflow: {e}");
            return Err((id, socket));
        }
        match self.tx.send(&self.scratch, &[socket.as_fd()]) {
            Ok(()) => {
                self.sent += 1;
                Ok(())
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::WouldBlock {
                    log::error!("overflow queue: {e}");
                }
                Err((id, socket))
            }
        }
    }

    /// Takes back every connection no worker has taken, in the order they were put in.
    pub fn take_back(&mut self) -> Vec<(ConnId, OwnedFd)> {
        let mut back = Vec::new();
        loop {
            match self.rx.recv() {
                Ok(Some(Delivery {
                    msg: ToWorker::Give { ids } | ToWorker::Conn { ids },
                    fds,
                    ..
                })) => back.extend(ids.into_iter().zip(fds)),
                Ok(Some(_)) => {}
                Ok(None) => return back,
                Err(e) => {
                    log::error!("overflow queue: taking back: {e}");
                    return back;
                }
            }
        }
    }
}

/// A worker's side of the overflow queue: whether something may wait there, and taking one.
#[derive(Debug, Default)]
pub struct OverflowReader {
    queue: Option<Endpoint<ToPrimary, ToWorker>>,
    /// The queue was readable and has not been found empty since.
    maybe_more: bool,
}

impl OverflowReader {
    /// Starts reading the queue whose reading end the primary sent; replaces one read before.
    pub fn adopt(&mut self, fd: OwnedFd, registry: &Registry, token: Token) -> io::Result<()> {
        self.stop(registry);
        let mut queue = Endpoint::new(Channel::from_owned(fd)?);
        registry.register(&mut queue, token, Interest::READABLE)?;
        self.queue = Some(queue);
        self.maybe_more = true;
        Ok(())
    }

    /// The queue was readable.
    pub fn readable(&mut self) {
        self.maybe_more = self.queue.is_some();
    }

    /// True when a connection may wait in the queue (the loop should not sleep).
    pub fn maybe_more(&self) -> bool {
        self.maybe_more
    }

    /// Takes one connection, if one waits: `Some((ids, fds))` (one id, normally).
    pub fn take_one(&mut self, registry: &Registry) -> Option<(Vec<ConnId>, Vec<OwnedFd>)> {
        if !self.maybe_more {
            return None;
        }
        let queue = self.queue.as_mut()?;
        loop {
            match queue.recv() {
                Ok(Some(Delivery {
                    msg: ToWorker::Give { ids },
                    fds,
                    ..
                })) => return Some((ids, fds)),
                Ok(Some(_)) => log::error!("overflow queue: not a connection; skipped"),
                Ok(None) => {
                    self.maybe_more = false;
                    return None;
                }
                Err(IpcError::Malformed(why)) => log::error!("overflow queue: {why}; skipped"),
                Err(e) => {
                    log::debug!("overflow queue closed: {e}");
                    self.stop(registry);
                    return None;
                }
            }
        }
    }

    /// Stops reading the queue (draining: what waits there is for the other workers).
    pub fn stop(&mut self, registry: &Registry) {
        if let Some(mut q) = self.queue.take() {
            let _ = registry.deregister(&mut q);
        }
        self.maybe_more = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Any descriptor stands in for a client socket.
    fn socket() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn a_reader_takes_one_at_a_time_and_the_rest_comes_back_in_order() {
        let mut q = Overflow::new().unwrap();
        for id in 1..=3 {
            q.give(ConnId(id), socket()).unwrap();
        }
        assert_eq!(q.sent(), 3);
        let poll = mio::Poll::new().unwrap();
        let mut reader = OverflowReader::default();
        assert!(!reader.maybe_more(), "nothing adopted yet");
        reader
            .adopt(q.reader().unwrap(), poll.registry(), Token(2))
            .unwrap();
        let (ids, fds) = reader.take_one(poll.registry()).expect("one waits");
        assert_eq!((ids, fds.len()), (vec![ConnId(1)], 1));
        assert!(fds[0].as_raw_fd() >= 0);
        let back: Vec<ConnId> = q.take_back().into_iter().map(|(id, _)| id).collect();
        assert_eq!(back, [ConnId(2), ConnId(3)]);
        assert!(reader.take_one(poll.registry()).is_none());
        assert!(!reader.maybe_more(), "found empty");
    }

    #[test]
    fn a_full_queue_gives_the_socket_back() {
        let mut q = Overflow::new().unwrap();
        let refused = (0..100_000u64).find_map(|id| q.give(ConnId(id), socket()).err());
        let (id, _socket) = refused.expect("the socket buffer fills up");
        assert_eq!(id.0, q.sent(), "the first one that did not fit");
        assert_eq!(q.take_back().len() as u64, q.sent(), "nothing lost");
    }
}
