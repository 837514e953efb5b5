//! The primary's end of one worker's channel, with what it handed over and has not yet seen
//! taken.
//!
//! A connection is handed over in one of two ways, chosen per connection by [`WorkerLink::hand`]:
//!
//! - **kept until acked** ([`ToWorker::Conn`]): the primary keeps its copy of the socket until
//!   the worker acks it; a worker that dies (or refuses) first loses nothing:
//!   [`WorkerLink::reclaim`] gives the copies back. Any worker that speaks the protocol gets
//!   this; it costs the primary the `close()` of its copy late (often the last reference, so the
//!   TCP teardown) and a wake-up per ack.
//! - **given** ([`ToWorker::Give`]): the primary closes its copy right after `sendmsg` and the
//!   worker sends no ack. Only workers that opt in get this: herd's own, which publish a
//!   [`StatusPage`] ([`WorkerLink::published`]) and are not close to their descriptor limit
//!   (where the kernel could drop a packet's sockets).
//!
//! Either way nothing the worker has not read is lost: the link holds a second handle on the
//! *worker's* end of the channel, and [`WorkerLink::read_back`] receives from it what the worker
//! never read (a frozen or dead worker). Each packet is received by one reader only, so a
//! connection either reached the worker or comes back, never both. What a worker has read is
//! its own, as the connections it is serving are.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::time::Duration;

use mio::event::Source;
use mio::{Interest, Registry, Token};

use super::endpoint::{Delivery, Endpoint, Envelope};
use super::status::{Status, StatusPage};
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
    /// What the worker publishes, if it does (herd's own workers): then connections are given.
    status: Option<StatusPage>,
    /// Connections sent in total, minus those read back (compared with the worker's count).
    sent_conns: u64,
    /// Connections sent before the newest other message (a control or user message) left.
    message_after: Option<u64>,
}

impl WorkerLink {
    /// Wraps the primary's end of a fresh channel; `worker_end`, a handle on the other end,
    /// makes [`WorkerLink::read_back`] possible. Connections are kept until acked.
    pub fn new(channel: Channel, worker_end: Option<Channel>) -> WorkerLink {
        WorkerLink {
            endpoint: Endpoint::new(channel),
            worker_end: worker_end.map(Endpoint::new),
            in_flight: HashMap::new(),
            queued_conns: 0,
            status: None,
            sent_conns: 0,
            message_after: None,
        }
    }

    /// The worker publishes `page` (a herd worker): the policy sees whether it is idle, and
    /// connections are given (closed here right after `sendmsg`, never acked) while the worker
    /// is not close to its descriptor limit and the link can read back what it leaves unread.
    pub fn published(mut self, page: StatusPage) -> WorkerLink {
        self.status = Some(page);
        self
    }

    /// Queues a connection for the worker (sent at the next [`WorkerLink::flush`], batched with
    /// the others queued in the same turn), given or kept until acked (see the module docs).
    pub fn hand(&mut self, id: ConnId, socket: OwnedFd) {
        self.queued_conns += 1;
        let give =
            self.worker_end.is_some() && self.status.as_ref().is_some_and(|s| !s.read().tight);
        let ids = vec![id];
        let msg = if give {
            ToWorker::Give { ids }
        } else {
            ToWorker::Conn { ids }
        };
        self.endpoint.queue(msg, vec![socket]);
    }

    /// What the worker published last, if it publishes.
    pub fn status(&self) -> Option<Status> {
        self.status.as_ref().map(StatusPage::read)
    }

    /// Connections handed to the worker that it has not started serving: queued here, unread
    /// in its channel, or held by it at its connection limit. Without a status page, the ones
    /// not acked yet. Read from the page alone: no syscall.
    pub fn waiting(&self) -> u64 {
        (self.queued_conns as u64).saturating_add(self.untaken())
    }

    /// Sent and not taken (unread or held); without a status page, not acked.
    fn untaken(&self) -> u64 {
        let Some(s) = self.status() else {
            return self.in_flight.len() as u64;
        };
        self.sent_conns
            .saturating_sub(s.received)
            .saturating_add(s.held)
    }

    /// The worker has read everything (the kernel says so) but its page does not say so yet:
    /// it counts what it read a moment after the kernel lets the primary know (with a writable
    /// event), so the page is about to change with no further event. Costs a syscall only
    /// when the page shows unread connections.
    pub fn page_lags(&self) -> bool {
        self.status()
            .is_some_and(|s| self.sent_conns > s.received && self.unread() == 0)
    }

    /// How long the worker has been on its current piece of work (since its loop stopped
    /// waiting, or since the step of a connection it is in began), at `now_ns`
    /// ([`super::monotonic_ns`]): zero when it waits, or publishes nothing.
    pub fn busy_for(&self, now_ns: u64) -> Duration {
        self.status()
            .filter(|s| s.busy)
            .map_or(Duration::ZERO, |s| {
                Duration::from_nanos(now_ns.saturating_sub(s.busy_since))
            })
    }

    /// True when the worker's loop waits for events and it has read everything handed to it.
    /// Without a status page: nothing handed is unacked.
    pub fn idle(&self) -> bool {
        self.waiting() == 0 && !self.status().is_some_and(|s| s.busy)
    }

    /// Connections handed over and not yet taken: queued, unread, held, or kept until an ack
    /// (what the handoff window bounds).
    pub fn outstanding(&self) -> usize {
        let untaken = usize::try_from(self.untaken()).unwrap_or(usize::MAX);
        self.queued_conns + self.in_flight.len().max(untaken)
    }

    /// Queues a control or user message.
    pub fn send(&mut self, msg: ToWorker) {
        self.endpoint.queue(msg, Vec::new());
    }

    /// Queues a listening socket for the worker to accept on.
    pub fn listen(&mut self, listener: OwnedFd) {
        self.endpoint.queue(ToWorker::Listen, vec![listener]);
    }

    /// Queues the reading end of idle-first's overflow queue.
    pub fn share_overflow(&mut self, reader: OwnedFd) {
        self.endpoint.queue(ToWorker::Overflow, vec![reader]);
    }

    /// Connections handed over (queued or sent) and not yet acked.
    pub fn unacked(&self) -> usize {
        self.in_flight.len() + self.queued_conns
    }

    /// True when nothing waits to be sent.
    pub fn is_idle(&self) -> bool {
        self.endpoint.is_idle()
    }

    /// Sends what the socket takes: a given connection's socket is closed now, a kept one is
    /// kept until its ack. `Err` means the worker's end is gone.
    pub fn flush(&mut self, registry: &Registry) -> Result<(), IpcError> {
        let (in_flight, queued, sent_conns, message_after) = (
            &mut self.in_flight,
            &mut self.queued_conns,
            &mut self.sent_conns,
            &mut self.message_after,
        );
        self.endpoint.flush(registry, |sent| match sent.msg {
            ToWorker::Conn { ids } => {
                *queued -= ids.len();
                *sent_conns += ids.len() as u64;
                in_flight.extend(ids.into_iter().zip(sent.fds));
            }
            ToWorker::Give { ids } => {
                *queued -= ids.len();
                *sent_conns += ids.len() as u64;
                // `sent.fds` drops here: the worker's copy is the only one now.
            }
            _ => *message_after = Some(*sent_conns),
        })
    }

    /// While connections wait for room in the workers' windows, wakes the loop each time the
    /// worker reads (given connections bring no ack that would); see [`Endpoint::watch_reads`].
    pub fn watch_reads(&mut self, registry: &Registry, on: bool) -> std::io::Result<()> {
        self.endpoint.watch_reads(registry, on)
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
            .unqueue(|m| matches!(m, ToWorker::Conn { .. } | ToWorker::Give { .. }));
        self.queued_conns = 0;
        envelopes.into_iter().flat_map(conns_of).collect()
    }

    /// Takes back every connection the worker did not take (it died or its channel closed):
    /// the ones never sent, the ones it never read, the ones it read and did not ack; in id
    /// order.
    pub fn reclaim(&mut self) -> Vec<(ConnId, OwnedFd)> {
        let mut back = self.read_back();
        back.extend(self.unsend());
        back.extend(self.in_flight.drain());
        back.sort_by_key(|(id, _)| *id);
        back
    }

    /// Takes back the connections waiting unread in the channel of a worker that is alive
    /// but busy (inside a long request), for another worker; nothing when none waits there
    /// by its page, or when a control or user message may still wait unread among them
    /// (reading it back would let the worker read a later one first).
    pub fn rescue_unread(&mut self) -> Vec<(ConnId, OwnedFd)> {
        let Some(s) = self.status() else {
            return Vec::new();
        };
        let messages_read = self.message_after.is_none_or(|m| s.received > m);
        if self.sent_conns <= s.received || !messages_read {
            return Vec::new();
        }
        self.read_back()
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
                    msg @ (ToWorker::Conn { .. } | ToWorker::Give { .. }) => {
                        back.extend(conns_of(Envelope { msg, fds: d.fds }));
                    }
                    msg => again.push(Envelope { msg, fds: d.fds }),
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
        self.sent_conns = self.sent_conns.saturating_sub(back.len() as u64);
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

/// The connections a handoff packet carries, with their sockets.
fn conns_of(e: Envelope<ToWorker>) -> Vec<(ConnId, OwnedFd)> {
    match e.msg {
        ToWorker::Conn { ids } | ToWorker::Give { ids } => ids.into_iter().zip(e.fds).collect(),
        _ => Vec::new(),
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

    #[test]
    fn what_waits_behind_a_long_request_is_rescued_unless_a_message_may_be_unread() {
        let (a, b) = Channel::pair().unwrap();
        let (page, page_fd) = StatusPage::create().unwrap();
        let worker_page = StatusPage::open(&page_fd).unwrap();
        let mut link = WorkerLink::new(a, Some(b.try_clone().unwrap())).published(page);
        let mut worker: Endpoint<ToPrimary, ToWorker> = Endpoint::new(b);
        let poll = mio::Poll::new().unwrap();
        let ids = |v: Vec<(ConnId, OwnedFd)>| v.into_iter().map(|(id, _)| id.0).collect::<Vec<_>>();
        link.hand(ConnId(1), sock());
        link.flush(poll.registry()).unwrap();
        assert!(worker.recv().unwrap().is_some());
        worker_page.add_received(1);
        assert!(ids(link.rescue_unread()).is_empty(), "nothing waits unread");
        link.hand(ConnId(2), sock());
        link.hand(ConnId(3), sock());
        link.flush(poll.registry()).unwrap();
        assert_eq!(ids(link.rescue_unread()), [2, 3]);
        assert_eq!(link.waiting(), 0);
        link.send(ToWorker::Message(b"hi".to_vec()));
        link.hand(ConnId(4), sock());
        link.flush(poll.registry()).unwrap();
        assert!(
            ids(link.rescue_unread()).is_empty(),
            "the message may be unread: reading it back would reorder it"
        );
        // Handoffs leave before user messages: #4 first, then the message.
        assert!(worker.recv().unwrap().is_some(), "#4");
        assert!(worker.recv().unwrap().is_some(), "the message");
        worker_page.add_received(1);
        link.hand(ConnId(5), sock());
        link.flush(poll.registry()).unwrap();
        assert!(
            ids(link.rescue_unread()).is_empty(),
            "no handoff read after the message yet: it may still be unread"
        );
        assert!(worker.recv().unwrap().is_some(), "#5");
        worker_page.add_received(1);
        link.hand(ConnId(6), sock());
        link.flush(poll.registry()).unwrap();
        assert_eq!(
            ids(link.rescue_unread()),
            [6],
            "the message was read: safe again"
        );
    }
}
