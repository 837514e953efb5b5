//! The primary's link to one worker, whichever protocol the worker speaks: herd's own
//! ([`WorkerLink`]) or Node's cluster protocol ([`NodeLink`], for `herd run`). Supervision,
//! policies, reload, shutdown and statistics use this and do not care which.

use std::os::fd::OwnedFd;
use std::time::Duration;

use mio::event::Source;
use mio::{Interest, Registry, Token};

use super::node::{codec::DecodeError, FromNode, NodeLink};
use super::{ConnId, IpcError, Status, ToPrimary, ToWorker, WorkerLink};

/// A message read from a worker.
#[derive(Debug)]
pub enum Inbound {
    /// From a herd worker.
    Herd(ToPrimary),
    /// From a Node worker (or a line it sent that is not JSON).
    Node(Box<Result<FromNode, DecodeError>>),
}

/// The primary's end of a worker's channel.
#[derive(Debug)]
pub enum Link {
    /// A herd worker.
    Herd(WorkerLink),
    /// A Node worker.
    Node(NodeLink),
}

impl Link {
    /// The Node link, if the worker speaks Node's protocol.
    pub fn node_mut(&mut self) -> Option<&mut NodeLink> {
        match self {
            Link::Node(n) => Some(n),
            Link::Herd(_) => None,
        }
    }

    /// True for a Node worker.
    pub fn is_node(&self) -> bool {
        matches!(self, Link::Node(_))
    }

    /// Queues a connection for the worker.
    pub fn hand(&mut self, id: ConnId, socket: OwnedFd) {
        match self {
            Link::Herd(l) => l.hand(id, socket),
            Link::Node(l) => l.hand(id, socket),
        }
    }

    /// Queues a message: a user message, a disconnect or a statistics request (which a Node
    /// worker cannot answer: it is not sent).
    pub fn send(&mut self, msg: ToWorker) {
        match (self, msg) {
            (Link::Herd(l), msg) => l.send(msg),
            (Link::Node(l), ToWorker::Message(payload)) => l.send_user(&payload),
            (Link::Node(l), ToWorker::Disconnect) => l.disconnect(),
            (Link::Node(_), _) => {}
        }
    }

    /// Queues a listening socket (herd workers; Node workers ask with `queryServer`).
    pub fn listen(&mut self, listener: OwnedFd) {
        if let Link::Herd(l) = self {
            l.listen(listener);
        }
    }

    /// Queues the overflow queue's reading end (herd workers; Node workers cannot read it).
    pub fn share_overflow(&mut self, reader: OwnedFd) {
        if let Link::Herd(l) = self {
            l.share_overflow(reader);
        }
    }

    /// Connections handed over and not yet acked.
    pub fn unacked(&self) -> usize {
        match self {
            Link::Herd(l) => l.unacked(),
            Link::Node(l) => l.unacked(),
        }
    }

    /// What the worker published last: herd workers with a status page. A Node worker
    /// publishes nothing.
    pub fn status(&self) -> Option<Status> {
        match self {
            Link::Herd(l) => l.status(),
            Link::Node(_) => None,
        }
    }

    /// Connections handed to the worker that it has not started serving. A Node worker: the
    /// ones queued or sent and not yet acked (Node acks a `newconn` as soon as its loop reads
    /// it, so this is what its channel holds unread).
    pub fn waiting(&self) -> u64 {
        match self {
            Link::Herd(l) => l.waiting(),
            Link::Node(l) => l.unacked() as u64,
        }
    }

    /// True when the worker has taken everything handed to it and (herd workers, from the
    /// page) its loop waits for events. A Node worker has no page: it counts as idle when the
    /// primary knows of nothing it has not taken (no connection unacked). A Node loop stuck
    /// in a long synchronous request reads nothing, so connections handed to it stay
    /// unacked and it stops counting as idle; one that is merely serving (asynchronously)
    /// still does.
    pub fn idle(&self) -> bool {
        match self {
            Link::Herd(l) => l.idle(),
            Link::Node(l) => l.unacked() == 0,
        }
    }

    /// How long a herd worker has been on its current piece of work (from its page); zero for
    /// a Node worker, which publishes nothing (a stuck Node loop shows as unacked instead).
    pub fn busy_for(&self, now_ns: u64) -> Duration {
        match self {
            Link::Herd(l) => l.busy_for(now_ns),
            Link::Node(_) => Duration::ZERO,
        }
    }

    /// Connections handed over and not yet taken (what the handoff window bounds). A Node
    /// worker: not acked.
    pub fn outstanding(&self) -> usize {
        match self {
            Link::Herd(l) => l.outstanding(),
            Link::Node(l) => l.unacked(),
        }
    }

    /// The worker has read everything but its page does not say so yet (herd workers only:
    /// a Node worker's acks are events).
    pub fn page_lags(&self) -> bool {
        match self {
            Link::Herd(l) => l.page_lags(),
            Link::Node(_) => false,
        }
    }

    /// While connections wait for room, wakes the loop each time a herd worker reads its
    /// channel (given connections bring no ack). A Node worker acks every connection, which
    /// wakes the loop already: nothing to do.
    pub fn watch_reads(&mut self, registry: &Registry, on: bool) -> std::io::Result<()> {
        match self {
            Link::Herd(l) => l.watch_reads(registry, on),
            Link::Node(_) => Ok(()),
        }
    }

    /// True when nothing waits to be sent.
    pub fn is_idle(&self) -> bool {
        match self {
            Link::Herd(l) => l.is_idle(),
            Link::Node(l) => l.is_idle(),
        }
    }

    /// Sends what the socket takes. `Err`: the worker's end is gone.
    pub fn flush(&mut self, registry: &Registry) -> Result<(), IpcError> {
        match self {
            Link::Herd(l) => l.flush(registry),
            Link::Node(l) => l.flush(registry),
        }
    }

    /// Receives one message.
    pub fn recv(&mut self) -> Result<Option<Inbound>, IpcError> {
        match self {
            Link::Herd(l) => Ok(l.recv()?.map(|d| Inbound::Herd(d.msg))),
            Link::Node(l) => Ok(l.recv()?.map(|m| Inbound::Node(Box::new(m)))),
        }
    }

    /// The worker took these (herd's batched acks).
    pub fn ack(&mut self, ids: &[ConnId]) -> usize {
        match self {
            Link::Herd(l) => l.ack(ids),
            Link::Node(_) => 0,
        }
    }

    /// The worker refused these (herd workers out of descriptors).
    pub fn refused(&mut self, ids: &[ConnId]) -> Vec<(ConnId, OwnedFd)> {
        match self {
            Link::Herd(l) => l.refused(ids),
            Link::Node(_) => Vec::new(),
        }
    }

    /// Takes back the connections not yet sent.
    pub fn unsend(&mut self) -> Vec<(ConnId, OwnedFd)> {
        match self {
            Link::Herd(l) => l.unsend(),
            Link::Node(l) => l.unsend(),
        }
    }

    /// Takes back every connection the worker has not acked.
    pub fn reclaim(&mut self) -> Vec<(ConnId, OwnedFd)> {
        match self {
            Link::Herd(l) => l.reclaim(),
            Link::Node(l) => l.reclaim(),
        }
    }

    /// Reads back what a frozen worker never read (herd workers; a Node worker's stream
    /// cannot be read back in pieces, so its connections wait for its ack or its death).
    pub fn read_back(&mut self) -> Vec<(ConnId, OwnedFd)> {
        match self {
            Link::Herd(l) => l.read_back(),
            Link::Node(_) => Vec::new(),
        }
    }

    /// Takes back what waits unread for a herd worker inside a long request (see
    /// [`WorkerLink::rescue_unread`]); a Node worker's stream cannot be read back in pieces.
    pub fn rescue_unread(&mut self) -> Vec<(ConnId, OwnedFd)> {
        match self {
            Link::Herd(l) => l.rescue_unread(),
            Link::Node(_) => Vec::new(),
        }
    }

    /// User messages (and payload bytes) waiting to be sent.
    pub fn ordered_load(&self) -> (usize, usize) {
        match self {
            Link::Herd(l) => l.ordered_load(),
            Link::Node(l) => l.ordered_load(),
        }
    }

    /// Bytes sent that the worker has not read yet.
    pub fn unread(&self) -> usize {
        match self {
            Link::Herd(l) => l.unread(),
            Link::Node(l) => l.unread(),
        }
    }
}

impl Source for Link {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> std::io::Result<()> {
        match self {
            Link::Herd(l) => l.register(r, t, i),
            Link::Node(l) => l.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> std::io::Result<()> {
        match self {
            Link::Herd(l) => l.reregister(r, t, i),
            Link::Node(l) => l.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &Registry) -> std::io::Result<()> {
        match self {
            Link::Herd(l) => l.deregister(r),
            Link::Node(l) => l.deregister(r),
        }
    }
}
