//! The worker's side of its channel: what it owes the primary (acks, refusals, close counts,
//! messages) and whether the primary is still there.

use std::os::fd::OwnedFd;

use mio::{Interest, Registry, Token};

use super::Context;
use crate::ipc::{Channel, ConnId, Delivery, Endpoint, IpcError, ToPrimary, ToWorker};

/// The channel's token in the worker's loop.
pub const CHANNEL: Token = Token(0);
/// The overflow queue's token (idle-first, [`crate::ipc::OverflowReader`]); 1 is the signals'.
pub const OVERFLOW: Token = Token(2);

/// What one read of the channel gave.
#[derive(Debug)]
pub enum Inbound {
    /// A message (with its descriptors).
    Message(Delivery<ToWorker>),
    /// Nothing more waits now.
    Empty,
    /// The primary closed its end, or is gone.
    Gone,
}

/// The worker's end of the channel.
#[derive(Debug)]
pub struct Uplink {
    endpoint: Endpoint<ToPrimary, ToWorker>,
    gone: bool,
    /// Connections taken this turn: acked together at the end of it.
    acks: Vec<ConnId>,
    /// Connections whose sockets did not arrive: the primary hands them elsewhere.
    refused: Vec<ConnId>,
    closed_unreported: u32,
    report_closes: bool,
}

impl Uplink {
    /// Registers the worker's end of its channel with the loop.
    pub fn new(
        channel: Channel,
        registry: &Registry,
        report_closes: bool,
    ) -> std::io::Result<Self> {
        let mut endpoint = Endpoint::new(channel);
        registry.register(&mut endpoint, CHANNEL, Interest::READABLE)?;
        Ok(Uplink {
            endpoint,
            gone: false,
            acks: Vec::new(),
            refused: Vec::new(),
            closed_unreported: 0,
            report_closes,
        })
    }

    /// True once the primary's end is closed.
    pub fn gone(&self) -> bool {
        self.gone
    }

    /// Reads one message. A malformed one is logged and skipped: the primary is our own
    /// binary, so it means a bug, and dropping the channel would lose every connection.
    pub fn recv(&mut self, registry: &Registry) -> Inbound {
        if self.gone {
            return Inbound::Gone;
        }
        loop {
            match self.endpoint.recv() {
                Ok(Some(d)) => return Inbound::Message(d),
                Ok(None) => return Inbound::Empty,
                Err(IpcError::Malformed(why)) => {
                    log::error!("worker {}: {why}; skipped", std::process::id());
                }
                Err(e) => {
                    log::info!("worker {}: primary went away ({e})", std::process::id());
                    self.close(registry);
                    return Inbound::Gone;
                }
            }
        }
    }

    /// Acks `id` at the end of this turn.
    pub fn ack(&mut self, id: ConnId) {
        self.acks.push(id);
    }

    /// Tells the primary at the end of this turn that `id` never arrived.
    pub fn refuse(&mut self, id: ConnId) {
        self.refused.push(id);
    }

    /// Pairs the ids of a packet of connections with the sockets that came with it. The kernel
    /// installs a packet's descriptors in order and drops the rest when this process is out of
    /// them, so the ids past the sockets that arrived are refused: the primary, if it kept
    /// copies (it does while this worker says it is tight), hands them elsewhere.
    pub fn pair_up(&mut self, ids: Vec<ConnId>, fds: Vec<OwnedFd>) -> Vec<(ConnId, OwnedFd)> {
        if ids.len() > fds.len() {
            log::error!(
                "worker {}: {} of {} connections arrived without their sockets (out of file \
                 descriptors?); returning them to the primary",
                std::process::id(),
                ids.len() - fds.len(),
                ids.len()
            );
            for &id in &ids[fds.len()..] {
                self.refuse(id);
            }
        }
        ids.into_iter().zip(fds).collect()
    }

    /// Counts a closed connection for the next close report (least-connections).
    pub fn closed(&mut self) {
        self.closed_unreported += 1;
    }

    /// True when acks, refusals or a close count wait to be queued.
    pub fn owes_reports(&self) -> bool {
        !self.acks.is_empty()
            || !self.refused.is_empty()
            || (self.report_closes && self.closed_unreported > 0)
    }

    /// Sends what this turn owes: acks and refusals first (the primary's bookkeeping never
    /// waits behind user messages), the close count, then the context's messages in order.
    /// Returns `true` when everything has left (or the primary is gone).
    pub fn flush(&mut self, registry: &Registry, ctx: &mut Context) -> bool {
        if !self.acks.is_empty() {
            let ids = std::mem::take(&mut self.acks);
            for chunk in ids.chunks(crate::ipc::MAX_ACK_IDS) {
                self.endpoint
                    .queue(ToPrimary::Ack(chunk.to_vec()), Vec::new());
            }
        }
        if !self.refused.is_empty() {
            let ids = std::mem::take(&mut self.refused);
            for chunk in ids.chunks(crate::ipc::MAX_ACK_IDS) {
                self.endpoint
                    .queue(ToPrimary::Refused(chunk.to_vec()), Vec::new());
            }
        }
        if self.report_closes && self.closed_unreported > 0 {
            let n = std::mem::take(&mut self.closed_unreported);
            self.endpoint.queue(ToPrimary::Closed(n), Vec::new());
        }
        for msg in ctx.outgoing.drain(..) {
            self.endpoint.queue(msg, Vec::new());
        }
        let done = self.gone || self.send_queued(registry);
        // What still waits bounds the next sends (Context::send); what left no longer counts.
        ctx.user_queued = self.endpoint.ordered_load();
        done
    }

    /// Sends what the channel takes; `true` when nothing waits (or the primary is gone).
    fn send_queued(&mut self, registry: &Registry) -> bool {
        match self
            .endpoint
            .flush(registry, drop::<crate::ipc::Envelope<ToPrimary>>)
        {
            Ok(()) => self.endpoint.is_idle(),
            Err(e) => {
                log::debug!(
                    "worker {}: channel to primary closed: {e}",
                    std::process::id()
                );
                self.close(registry);
                true
            }
        }
    }

    /// Testing only ([`super::faults::ENV_FAULT_GARBAGE`]): sends bytes that are no message.
    pub fn send_garbage(&self) {
        if let Err(e) = self.endpoint.channel().send(&[0xEE, 0xEE], &[]) {
            log::warn!("garbage fault: {e}");
        }
    }

    fn close(&mut self, registry: &Registry) {
        if !self.gone {
            self.gone = true;
            let _ = registry.deregister(&mut self.endpoint);
        }
    }
}

/// A socket the primary sent, turned into the loop's stream type.
pub fn stream(fd: OwnedFd) -> mio::net::TcpStream {
    mio::net::TcpStream::from_std(std::net::TcpStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::WorkerId;
    use crate::ipc::{Endpoint, MAX_QUEUED_MESSAGES};
    use std::time::Instant;

    #[test]
    fn sent_messages_stop_counting_against_the_bound() {
        let (worker_end, primary_end) = Channel::pair().unwrap();
        let poll = mio::Poll::new().unwrap();
        let mut uplink = Uplink::new(worker_end, poll.registry(), false).unwrap();
        let mut primary: Endpoint<ToWorker, ToPrimary> = Endpoint::new(primary_end);
        let mut ctx = Context::new(WorkerId::new(1).unwrap(), Instant::now());
        let total = MAX_QUEUED_MESSAGES + 100;
        let mut received = 0;
        for i in 0..total {
            ctx.send(vec![1u8])
                .unwrap_or_else(|e| panic!("message {i}: {e}"));
            if i % 64 == 0 {
                uplink.flush(poll.registry(), &mut ctx);
                while let Ok(Some(_)) = primary.recv() {
                    received += 1;
                }
            }
        }
        while !uplink.flush(poll.registry(), &mut ctx) {
            while let Ok(Some(_)) = primary.recv() {
                received += 1;
            }
        }
        while let Ok(Some(_)) = primary.recv() {
            received += 1;
        }
        assert_eq!(received, total, "every message arrived, none was refused");
    }
}
