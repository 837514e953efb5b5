//! The typed channel endpoint both loops use: it owns the socket, the queue of messages the
//! kernel has not taken yet, and the writable interest, and it is a `mio` event source.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use mio::event::Source;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::channel::Channel;
use super::lanes::Lanes;
use super::wire::{Incoming, Outgoing, MAX_PACKET};
use super::IpcError;

/// A queued message and the descriptors that travel with it (in order).
#[derive(Debug)]
pub struct Envelope<Tx> {
    /// The message.
    pub msg: Tx,
    /// Its descriptors; they are closed once the kernel has taken the packet, unless the
    /// caller keeps them from [`Endpoint::flush`]'s callback.
    pub fds: Vec<OwnedFd>,
}

/// A received message.
#[derive(Debug)]
pub struct Delivery<Rx> {
    /// The message.
    pub msg: Rx,
    /// Descriptors that came with it.
    pub fds: Vec<OwnedFd>,
    /// Some of its descriptors were dropped by the kernel (this process is out of them).
    pub fds_truncated: bool,
}

/// One end of a channel that sends `Tx` and receives `Rx`.
///
/// Nothing is sent at [`Endpoint::queue`]; [`Endpoint::flush`] sends what the socket takes,
/// keeps the rest in order, and asks the loop for writable events only while something waits
/// (on a Unix socket every packet the peer consumes would otherwise wake this loop).
#[derive(Debug)]
pub struct Endpoint<Tx, Rx> {
    channel: Channel,
    queue: Lanes<Tx>,
    scratch: Vec<u8>,
    inbox: Vec<u8>,
    /// The token and whether writable interest is on, once registered.
    registered: Option<(Token, bool)>,
    /// Keep writable interest on even with nothing queued: on a Unix socket the peer's every
    /// read then wakes this loop (how the primary learns that a worker read what it was given
    /// while connections wait for room, with no ack).
    watch_reads: bool,
    _rx: PhantomData<fn() -> Rx>,
}

impl<Tx: Outgoing, Rx: Incoming> Endpoint<Tx, Rx> {
    /// Wraps one end of a channel.
    pub fn new(channel: Channel) -> Self {
        Endpoint {
            channel,
            queue: Lanes::default(),
            scratch: Vec::new(),
            inbox: vec![0; MAX_PACKET],
            registered: None,
            watch_reads: false,
            _rx: PhantomData,
        }
    }

    /// Queues `msg` with `fds` behind what already waits in its lane, folding it into the
    /// lane's last message when both fit in one packet (see [`Outgoing::merge`]). The control
    /// lane leaves before the ordered one (see [`super::lanes`]).
    pub fn queue(&mut self, msg: Tx, fds: Vec<OwnedFd>) {
        self.queue.push(msg, fds);
    }

    /// Messages not yet taken by the kernel, control lane first.
    pub fn queued(&self) -> impl Iterator<Item = &Envelope<Tx>> {
        self.queue.iter()
    }

    /// Messages and payload bytes waiting in the ordered lane (user messages).
    pub fn ordered_load(&self) -> (usize, usize) {
        self.queue.ordered_load()
    }

    /// True when nothing waits to be sent.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }

    /// Removes the queued messages `pick` selects and returns them; the others keep their
    /// order.
    pub fn unqueue(&mut self, pick: impl FnMut(&Tx) -> bool) -> Vec<Envelope<Tx>> {
        self.queue.unqueue(pick)
    }

    /// Puts messages back at the front of the queue, in the order given (they were read back
    /// from a peer that never took them, and are sent again first).
    pub fn requeue_front(&mut self, envelopes: Vec<Envelope<Tx>>) {
        self.queue.requeue_front(envelopes);
    }

    /// Sends queued messages until the socket is full or the queue is empty, handing each sent
    /// envelope to `sent` (which may keep its descriptors). Turns writable interest on while
    /// something still waits, off once nothing does.
    ///
    /// A message that cannot be encoded (a bug: user payloads are checked when queued) is
    /// logged and dropped. `Err` means the peer is gone.
    pub fn flush(
        &mut self,
        registry: &Registry,
        mut sent: impl FnMut(Envelope<Tx>),
    ) -> Result<(), IpcError> {
        while let Some(front) = self.queue.front() {
            self.scratch.clear();
            if let Err(e) = front.msg.encode(&mut self.scratch) {
                log::error!("channel: dropping a message that cannot be encoded: {e}");
                self.queue.pop_front();
                continue;
            }
            let fds: Vec<BorrowedFd<'_>> = front.fds.iter().map(|f| f.as_fd()).collect();
            match self.channel.send(&self.scratch, &fds) {
                Ok(()) => {
                    if let Some(done) = self.queue.pop_front() {
                        sent(done);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(IpcError::Io(e)),
            }
        }
        self.set_writable(registry, !self.queue.is_empty())
            .map_err(IpcError::Io)
    }

    /// Asks for (or stops asking for) a wake-up each time the peer reads, even with nothing
    /// queued here.
    pub fn watch_reads(&mut self, registry: &Registry, on: bool) -> io::Result<()> {
        self.watch_reads = on;
        self.set_writable(registry, !self.queue.is_empty())
    }

    /// Receives one message. `Ok(None)`: nothing waits now. [`IpcError::Closed`]: the peer
    /// closed its end. [`IpcError::Malformed`]: it sent something this version does not
    /// understand (the packet is consumed; its descriptors are closed).
    pub fn recv(&mut self) -> Result<Option<Delivery<Rx>>, IpcError> {
        let packet = match self.channel.recv(&mut self.inbox) {
            Ok(Some(p)) => p,
            Ok(None) => return Err(IpcError::Closed),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(IpcError::Malformed("empty or oversized packet"))
            }
            Err(e) => return Err(IpcError::Io(e)),
        };
        let msg = Rx::decode(&self.inbox[..packet.len])?;
        Ok(Some(Delivery {
            msg,
            fds: packet.fds,
            fds_truncated: packet.fds_truncated,
        }))
    }

    /// The channel underneath.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    fn set_writable(&mut self, registry: &Registry, want: bool) -> io::Result<()> {
        let want = want || self.watch_reads;
        match self.registered {
            Some((token, on)) if on != want => {
                let fd = self.channel.raw_fd();
                registry.reregister(&mut SourceFd(&fd), token, interest(want))?;
                self.registered = Some((token, want));
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn interest(writable: bool) -> Interest {
    if writable {
        Interest::READABLE | Interest::WRITABLE
    } else {
        Interest::READABLE
    }
}

/// Registering asks for readable events, and writable ones while messages wait.
impl<Tx, Rx> Source for Endpoint<Tx, Rx> {
    fn register(&mut self, registry: &Registry, token: Token, _: Interest) -> io::Result<()> {
        let want = !self.queue.is_empty() || self.watch_reads;
        SourceFd(&self.channel.raw_fd()).register(registry, token, interest(want))?;
        self.registered = Some((token, want));
        Ok(())
    }

    fn reregister(&mut self, registry: &Registry, token: Token, _: Interest) -> io::Result<()> {
        let want = !self.queue.is_empty() || self.watch_reads;
        SourceFd(&self.channel.raw_fd()).reregister(registry, token, interest(want))?;
        self.registered = Some((token, want));
        Ok(())
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.registered = None;
        SourceFd(&self.channel.raw_fd()).deregister(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::{ConnId, ToPrimary, ToWorker, MAX_CONN_BATCH};
    use std::os::unix::net::UnixStream;

    type PrimaryEnd = Endpoint<ToWorker, ToPrimary>;
    type WorkerEnd = Endpoint<ToPrimary, ToWorker>;

    #[test]
    fn a_burst_leaves_in_one_packet_and_arrives_in_order() {
        let (a, b) = Channel::pair().unwrap();
        let (mut primary, mut worker) = (PrimaryEnd::new(a), WorkerEnd::new(b));
        let poll = mio::Poll::new().unwrap();
        let mut keep = Vec::new();
        for i in 0..MAX_CONN_BATCH as u64 + 1 {
            let (mine, theirs) = UnixStream::pair().unwrap();
            keep.push(mine);
            primary.queue(
                ToWorker::Conn {
                    ids: vec![ConnId(i)],
                },
                vec![theirs.into()],
            );
        }
        primary.queue(ToWorker::Message(b"after".to_vec()), Vec::new());
        assert_eq!(
            primary.queued().count(),
            3,
            "16 merged, 1 more, then the message"
        );
        let mut packets = 0;
        primary.flush(poll.registry(), |_| packets += 1).unwrap();
        assert_eq!(packets, 3);
        let first = worker.recv().unwrap().unwrap();
        let ToWorker::Conn { ids } = first.msg else {
            panic!("conns first")
        };
        assert_eq!(ids.len(), MAX_CONN_BATCH);
        assert_eq!(first.fds.len(), MAX_CONN_BATCH);
        assert!(matches!(
            worker.recv().unwrap().unwrap().msg,
            ToWorker::Conn { .. }
        ));
        assert_eq!(
            worker.recv().unwrap().unwrap().msg,
            ToWorker::Message(b"after".to_vec())
        );
        assert!(worker.recv().unwrap().is_none());
        drop(primary);
        assert!(matches!(worker.recv(), Err(IpcError::Closed)));
    }

    #[test]
    fn garbage_is_malformed_not_a_crash() {
        let (a, b) = Channel::pair().unwrap();
        let mut primary = PrimaryEnd::new(b);
        a.send(&[250, 1, 2], &[]).unwrap();
        assert!(matches!(primary.recv(), Err(IpcError::Malformed(_))));
        assert!(primary.recv().unwrap().is_none(), "the next read goes on");
    }
}
