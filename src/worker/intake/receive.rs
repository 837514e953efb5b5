//! How the intake takes connections: handed over by the primary (to ack, or given), held at
//! the connection limit, or accepted on its own listeners; the same steps as the worker's own
//! loop (`worker::runtime`), publishing the same counts on the status page.

use std::os::fd::OwnedFd;

use super::Intake;
use crate::ipc::ConnId;
use crate::worker::admission::{Accepted, ListenerIndex};
use crate::worker::uplink;

impl Intake {
    /// Connections handed over in one packet (`ack`: the primary wants acks; else they were
    /// given). Once the caller takes no more connections, they are refused: the primary, told
    /// the worker is tight since then, keeps copies of what it hands over and gives them to
    /// another worker.
    pub(super) fn receive_all(&mut self, ids: Vec<ConnId>, fds: Vec<OwnedFd>, ack: bool) {
        let count = ids.len() as u64;
        self.receive_packet(ids, fds, ack);
        // Counted once the taken and held ones are published: the primary never sees them
        // neither unread nor held nor served.
        self.publish.received(count);
    }

    /// Takes what waits in the overflow queue, up to a turn's worth (the async runtime
    /// serves them all at once: there is no reason to leave them for another worker); returns
    /// `true` when more may wait.
    pub(super) fn take_from_overflow(&mut self) -> bool {
        for _ in 0..super::EVENTS {
            if self.closed || self.ctx.draining || self.admission.full(self.open()) {
                return false;
            }
            match self.overflow.take_one(self.poll.registry()) {
                Some((ids, fds)) => self.receive_packet(ids, fds, false),
                None => return false,
            }
        }
        self.overflow.maybe_more()
    }

    fn receive_packet(&mut self, ids: Vec<ConnId>, fds: Vec<OwnedFd>, ack: bool) {
        self.faults.count(ids.len());
        self.publish.arrived(&fds);
        for (id, fd) in self.uplink.pair_up(ids, fds) {
            if self.closed {
                if !ack {
                    log::warn!(
                        "worker {}: a connection was given after the worker stopped taking \
                         any; closing it",
                        std::process::id()
                    );
                }
                self.uplink.refuse(id);
            } else {
                self.receive(id, ack, fd);
            }
        }
        self.publish.open(self.open());
    }

    /// One connection handed over: take it now, or hold it at capacity (published, so that
    /// the primary counts it as waiting).
    fn receive(&mut self, id: ConnId, ack: bool, fd: OwnedFd) {
        let stream = uplink::stream(fd);
        if self.admission.full(self.open()) && !self.ctx.draining {
            self.admission.hold(id, ack, stream);
            self.publish.held(self.admission.held());
        } else {
            if ack {
                self.uplink.ack(id);
            }
            self.taken.push((stream, ack));
        }
    }

    /// Below the limit again: take held connections, resume accepting.
    pub(super) fn refill(&mut self) {
        let mut took = false;
        while let Some((id, ack, stream)) = self.admission.unhold(self.open(), self.ctx.draining) {
            // Acked even if given: the ack wakes the primary, which may hold connections back
            // for want of room here (the primary ignores the id).
            self.uplink.ack(id);
            self.taken.push((stream, ack));
            took = true;
        }
        if took {
            self.publish.held(self.admission.held());
        }
        if self.admission.should_resume(self.open()) {
            for i in 0..self.admission.listener_count() {
                self.accept_all(self.admission.listener(i));
            }
        }
    }

    /// Accepts what listener `index` has, while there is room.
    pub(super) fn accept_all(&mut self, index: ListenerIndex) {
        while let Accepted::Conn(stream) = self.admission.accept(index, self.open()) {
            self.give(stream, false);
        }
    }
}
