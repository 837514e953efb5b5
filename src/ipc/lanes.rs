//! An endpoint's send queue in two lanes: the control lane (connections, acks, listeners,
//! statistics) always leaves first, so handoffs never wait behind user messages; the ordered
//! lane (user messages, and a `Disconnect` that must follow them) keeps its order and is
//! bounded by what its sender may pile up ([`MAX_QUEUED_MESSAGES`], [`MAX_QUEUED_BYTES`]).

use std::collections::VecDeque;

use super::endpoint::Envelope;
use super::wire::Outgoing;

/// Most messages waiting in one endpoint's ordered lane; a send beyond it is refused with
/// [`super::IpcError::QueueFull`].
pub const MAX_QUEUED_MESSAGES: usize = 65_536;
/// Most payload bytes waiting in one endpoint's ordered lane.
pub const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;

/// The two lanes.
#[derive(Debug)]
pub struct Lanes<Tx> {
    control: VecDeque<Envelope<Tx>>,
    ordered: VecDeque<Envelope<Tx>>,
    ordered_bytes: usize,
}

impl<Tx> Default for Lanes<Tx> {
    fn default() -> Self {
        Lanes {
            control: VecDeque::new(),
            ordered: VecDeque::new(),
            ordered_bytes: 0,
        }
    }
}

impl<Tx> Lanes<Tx> {
    /// True when both lanes are empty.
    pub fn is_empty(&self) -> bool {
        self.control.is_empty() && self.ordered.is_empty()
    }
}

impl<Tx: Outgoing> Lanes<Tx> {
    fn lane(&mut self, msg: &Tx) -> &mut VecDeque<Envelope<Tx>> {
        if msg.ordered() {
            &mut self.ordered
        } else {
            &mut self.control
        }
    }

    /// Queues behind its lane, folding into the lane's last message where it fits (user
    /// messages never fold, so the ordered lane's count stays exact).
    pub fn push(&mut self, msg: Tx, fds: Vec<std::os::fd::OwnedFd>) {
        if msg.ordered() {
            self.ordered_bytes += msg.weight();
        }
        let lane = self.lane(&msg);
        let msg = match lane.back_mut() {
            Some(back) => match back.msg.merge(msg) {
                Ok(()) => {
                    back.fds.extend(fds);
                    return;
                }
                Err(msg) => msg,
            },
            None => msg,
        };
        lane.push_back(Envelope { msg, fds });
    }

    /// The next message to send: the control lane's first, else the ordered lane's.
    pub fn front(&self) -> Option<&Envelope<Tx>> {
        self.control.front().or_else(|| self.ordered.front())
    }

    /// Removes what [`Lanes::front`] showed.
    pub fn pop_front(&mut self) -> Option<Envelope<Tx>> {
        if let Some(e) = self.control.pop_front() {
            return Some(e);
        }
        let e = self.ordered.pop_front()?;
        self.ordered_bytes = self.ordered_bytes.saturating_sub(e.msg.weight());
        Some(e)
    }

    /// Everything queued, control lane first.
    pub fn iter(&self) -> impl Iterator<Item = &Envelope<Tx>> {
        self.control.iter().chain(self.ordered.iter())
    }

    /// Messages and payload bytes waiting in the ordered lane.
    pub fn ordered_load(&self) -> (usize, usize) {
        (self.ordered.len(), self.ordered_bytes)
    }

    /// Removes the messages `pick` selects, oldest first per lane (control lane first).
    pub fn unqueue(&mut self, mut pick: impl FnMut(&Tx) -> bool) -> Vec<Envelope<Tx>> {
        let mut taken = Vec::new();
        for lane in [&mut self.control, &mut self.ordered] {
            let (t, kept): (VecDeque<_>, VecDeque<_>) = lane.drain(..).partition(|e| pick(&e.msg));
            *lane = kept;
            taken.extend(t);
        }
        self.ordered_bytes = self.ordered.iter().map(|e| e.msg.weight()).sum();
        taken
    }

    /// Puts messages back at the front of their lanes, in the order given.
    pub fn requeue_front(&mut self, envelopes: Vec<Envelope<Tx>>) {
        for e in envelopes.into_iter().rev() {
            if e.msg.ordered() {
                self.ordered_bytes += e.msg.weight();
            }
            self.lane(&e.msg).push_front(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::{ConnId, ToWorker};

    #[test]
    fn control_leaves_first_and_messages_keep_their_order() {
        let mut l = Lanes::default();
        l.push(ToWorker::Message(b"one".to_vec()), Vec::new());
        l.push(ToWorker::Disconnect, Vec::new());
        l.push(
            ToWorker::Conn {
                ids: vec![ConnId(1)],
            },
            Vec::new(),
        );
        l.push(ToWorker::Message(b"two".to_vec()), Vec::new());
        assert_eq!(l.ordered_load(), (3, 6));
        let order: Vec<_> = std::iter::from_fn(|| l.pop_front().map(|e| e.msg)).collect();
        assert_eq!(
            order,
            [
                ToWorker::Conn {
                    ids: vec![ConnId(1)]
                },
                ToWorker::Message(b"one".to_vec()),
                ToWorker::Disconnect,
                ToWorker::Message(b"two".to_vec()),
            ]
        );
        assert_eq!(l.ordered_load(), (0, 0));
    }
}
