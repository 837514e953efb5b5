//! The primary's end of one worker's channel, with the connections handed over and not yet
//! acknowledged: the primary keeps its copy of each socket until the worker's ack, so a worker
//! that dies (or refuses) first loses nothing: [`WorkerLink::reclaim`] gives them back.
//!
//! The link also holds a second handle on the *worker's* end of the channel. With it the
//! primary can read back what a frozen worker never read ([`WorkerLink::read_back`]): each
//! packet is received by one reader only, so a connection either reached the worker or comes
//! back, never both.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use mio::event::Source;
use mio::{Interest, Registry, Token};

use super::endpoint::{Delivery, Endpoint};
use super::wire::{ConnId, ToPrimary, ToWorker};
use super::{Channel, IpcError};

/// The primary's end of a worker's channel.
#[derive(Debug)]
pub struct WorkerLink {
    endpoint: Endpoint<ToWorker, ToPrimary>,
    /// The worker's end, to read back what it left unread.
    worker_end: Option<Endpoint<ToPrimary, ToWorker>>,
    /// Connections sent and not yet acked: the primary's copies.
    in_flight: HashMap<ConnId, OwnedFd>,
    /// Connections queued and not yet sent.
    queued_conns: usize,
}

impl WorkerLink {
    /// Wraps the primary's end of a fresh channel; `worker_end`, a handle on the other end,
    /// makes [`WorkerLink::read_back`] possible.
    pub fn new(channel: Channel, worker_end: Option<Channel>) -> WorkerLink {
        WorkerLink {
            endpoint: Endpoint::new(channel),
            worker_end: worker_end.map(Endpoint::new),
            in_flight: HashMap::new(),
            queued_conns: 0,
        }
    }

    /// Queues a connection for the worker (sent at the next [`WorkerLink::flush`], batched with
    /// the others queued in the same turn).
    pub fn hand(&mut self, id: ConnId, socket: OwnedFd) {
        self.queued_conns += 1;
        self.endpoint
            .queue(ToWorker::Conn { ids: vec![id] }, vec![socket]);
    }

    /// Queues a control or user message.
    pub fn send(&mut self, msg: ToWorker) {
        self.endpoint.queue(msg, Vec::new());
    }

    /// Queues a listening socket for the worker to accept on.
    pub fn listen(&mut self, listener: OwnedFd) {
        self.endpoint.queue(ToWorker::Listen, vec![listener]);
    }

    /// Connections handed over (queued or sent) and not yet acked.
    pub fn unacked(&self) -> usize {
        self.in_flight.len() + self.queued_conns
    }

    /// True when nothing waits to be sent.
    pub fn is_idle(&self) -> bool {
        self.endpoint.is_idle()
    }

    /// Sends what the socket takes; a sent connection's socket is kept until its ack. `Err`
    /// means the worker's end is gone.
    pub fn flush(&mut self, registry: &Registry) -> Result<(), IpcError> {
        let (in_flight, queued) = (&mut self.in_flight, &mut self.queued_conns);
        self.endpoint.flush(registry, |sent| {
            if let ToWorker::Conn { ids } = sent.msg {
                *queued -= ids.len();
                in_flight.extend(ids.into_iter().zip(sent.fds));
            }
        })
    }

    /// Receives one message from the worker (see [`Endpoint::recv`]).
    pub fn recv(&mut self) -> Result<Option<Delivery<ToPrimary>>, IpcError> {
        self.endpoint.recv()
    }

    /// The worker took these: close the primary's copies. Returns how many were known.
    pub fn ack(&mut self, ids: &[ConnId]) -> usize {
        ids.iter()
            .filter(|id| self.in_flight.remove(id).is_some())
            .count()
    }

    /// The worker refused these (sent, but their sockets never reached it): they come back,
    /// in id order, for another worker.
    pub fn refused(&mut self, ids: &[ConnId]) -> Vec<(ConnId, OwnedFd)> {
        let mut back: Vec<_> = ids
            .iter()
            .filter_map(|id| self.in_flight.remove_entry(id))
            .collect();
        back.sort_by_key(|(id, _)| *id);
        back
    }

    /// Takes back the connections not yet sent (the worker is told to stop, so they go
    /// elsewhere), oldest first.
    pub fn unsend(&mut self) -> Vec<(ConnId, OwnedFd)> {
        let envelopes = self
            .endpoint
            .unqueue(|m| matches!(m, ToWorker::Conn { .. }));
        self.queued_conns = 0;
        envelopes
            .into_iter()
            .flat_map(|e| match e.msg {
                ToWorker::Conn { ids } => ids.into_iter().zip(e.fds).collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    /// Takes back every connection the worker has not acked (it died or its channel closed),
    /// in id order.
    pub fn reclaim(&mut self) -> Vec<(ConnId, OwnedFd)> {
        let mut back = self.unsend();
        back.extend(self.in_flight.drain());
        back.sort_by_key(|(id, _)| *id);
        back
    }

    /// Reads back every packet the worker has not read: their connections are returned (in id
    /// order, for another worker); any other message is queued again, first, in its order, so
    /// it still reaches the worker if it wakes up.
    pub fn read_back(&mut self) -> Vec<(ConnId, OwnedFd)> {
        let Some(peer) = self.worker_end.as_mut() else {
            return Vec::new();
        };
        let mut back = Vec::new();
        let mut again = Vec::new();
        loop {
            match peer.recv() {
                Ok(Some(d)) => match d.msg {
                    ToWorker::Conn { ids } => {
                        for (id, fd) in ids.into_iter().zip(d.fds) {
                            back.push((id, fd));
                        }
                    }
                    msg => again.push(super::Envelope { msg, fds: d.fds }),
                },
                Ok(None) => break,
                Err(e) => {
                    log::error!("reading back a worker's channel: {e}");
                    break;
                }
            }
        }
        // They are no longer in flight: drop the primary's other copies.
        for (id, _) in &back {
            self.in_flight.remove(id);
        }
        self.endpoint.requeue_front(again);
        back.sort_by_key(|(id, _)| *id);
        back
    }

    /// User messages (and payload bytes) waiting to be sent to the worker.
    pub fn ordered_load(&self) -> (usize, usize) {
        self.endpoint.ordered_load()
    }

    /// Bytes sent that the worker has not read yet.
    pub fn unread(&self) -> usize {
        self.endpoint.channel().unread_by_peer().unwrap_or(0)
    }

    /// The channel underneath.
    pub fn channel(&self) -> &Channel {
        self.endpoint.channel()
    }
}

impl Source for WorkerLink {
    fn register(&mut self, registry: &Registry, token: Token, i: Interest) -> std::io::Result<()> {
        self.endpoint.register(registry, token, i)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        i: Interest,
    ) -> std::io::Result<()> {
        self.endpoint.reregister(registry, token, i)
    }

    fn deregister(&mut self, registry: &Registry) -> std::io::Result<()> {
        self.endpoint.deregister(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn sock() -> OwnedFd {
        UnixStream::pair().unwrap().0.into()
    }

    #[test]
    fn unacked_connections_come_back_in_order() {
        let (a, _b) = Channel::pair().unwrap();
        let mut link = WorkerLink::new(a, None);
        let poll = mio::Poll::new().unwrap();
        for i in [3, 1, 2] {
            link.hand(ConnId(i), sock());
        }
        link.flush(poll.registry()).unwrap();
        link.hand(ConnId(4), sock());
        assert_eq!(link.unacked(), 4);
        assert_eq!(link.ack(&[ConnId(1), ConnId(99)]), 1);
        let back: Vec<_> = link.reclaim().into_iter().map(|(id, _)| id.0).collect();
        assert_eq!(back, [2, 3, 4]);
        assert_eq!(link.unacked(), 0);
    }

    #[test]
    fn unsend_keeps_messages_and_refused_returns_sockets() {
        let (a, _b) = Channel::pair().unwrap();
        let mut link = WorkerLink::new(a, None);
        let poll = mio::Poll::new().unwrap();
        link.hand(ConnId(1), sock());
        link.flush(poll.registry()).unwrap();
        link.hand(ConnId(2), sock());
        link.send(ToWorker::Disconnect);
        let back: Vec<_> = link.unsend().into_iter().map(|(id, _)| id.0).collect();
        assert_eq!(back, [2]);
        assert!(!link.is_idle(), "the disconnect still waits");
        assert_eq!(link.refused(&[ConnId(1)]).len(), 1);
        assert_eq!(link.unacked(), 0);
    }

    #[test]
    fn what_a_frozen_worker_never_read_comes_back_once() {
        let (a, b) = Channel::pair().unwrap();
        let mut link = WorkerLink::new(a, Some(b.try_clone().unwrap()));
        let mut worker: Endpoint<ToPrimary, ToWorker> = Endpoint::new(b);
        let poll = mio::Poll::new().unwrap();
        link.hand(ConnId(1), sock());
        link.flush(poll.registry()).unwrap();
        // The worker reads the first packet, then freezes.
        assert!(worker.recv().unwrap().is_some());
        link.send(ToWorker::Message(b"hi".to_vec()));
        link.hand(ConnId(2), sock());
        link.hand(ConnId(3), sock());
        link.flush(poll.registry()).unwrap();
        assert!(link.unread() > 0);
        let back: Vec<_> = link.read_back().into_iter().map(|(id, _)| id.0).collect();
        assert_eq!(back, [2, 3], "only what the worker never read");
        assert_eq!(link.unread(), 0);
        assert_eq!(
            link.unacked(),
            1,
            "#1 is the worker's: still awaiting its ack"
        );
        link.flush(poll.registry()).unwrap();
        assert_eq!(
            worker.recv().unwrap().unwrap().msg,
            ToWorker::Message(b"hi".to_vec()),
            "the message goes out again"
        );
    }
}
