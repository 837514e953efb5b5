//! Covering for a dead worker under `reuseport`: the kernel keeps hashing new connections onto
//! the dead worker's own listening socket, where they would wait out its restart backoff (for a
//! crash-looping worker, up to 15 s). While a slot has no live worker, the primary accepts on
//! that slot's socket itself and hands what it accepts to the live workers; once the slot's
//! worker is online again, the socket is its own again.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::workers::SlotIndex;
use super::Primary;
use crate::policy::ListenerPlan;

/// Tokens from here down name adopted listeners (slot 0 is `ADOPTED - 0`).
const ADOPTED: usize = usize::MAX;

/// The slot whose adopted listener a token names.
pub fn slot_of(token: Token, slots: usize) -> Option<SlotIndex> {
    let i = ADOPTED.checked_sub(token.0)?;
    (i < slots).then_some(SlotIndex(i))
}

impl Primary {
    /// True for policies where a dead slot's listener needs covering.
    fn per_worker_listeners(&self) -> bool {
        self.config.policy.listener_plan() == Some(ListenerPlan::PerWorker)
    }

    /// Slot `i` has no live worker: accept on its listener until it has one again.
    pub(super) fn adopt(&mut self, i: SlotIndex) {
        if !self.per_worker_listeners() || self.stopping() || self.adopted.contains(&i) {
            return;
        }
        let Some(l) = self.listeners_for_workers.get(i.0) else {
            return;
        };
        let fd = l.as_raw_fd();
        let token = Token(ADOPTED - i.0);
        match self
            .poll
            .registry()
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
        {
            Ok(()) => {
                log::info!(
                    "worker {} is down: the primary accepts on its socket meanwhile",
                    self.workers.slot(i).id
                );
                self.adopted.push(i);
                self.accept_adopted(i);
            }
            Err(e) => log::error!("cannot cover for worker {}: {e}", self.workers.slot(i).id),
        }
    }

    /// Slot `i`'s worker is online: its socket is its own again.
    pub(super) fn release(&mut self, i: SlotIndex) {
        let Some(at) = self.adopted.iter().position(|&s| s == i) else {
            return;
        };
        self.adopted.swap_remove(at);
        if let Some(l) = self.listeners_for_workers.get(i.0) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&l.as_raw_fd()));
        }
    }

    /// Accepts everything waiting on slot `i`'s socket and hands it to the live workers.
    pub(super) fn accept_adopted(&mut self, i: SlotIndex) {
        let Some(l) = self.listeners_for_workers.get(i.0) else {
            return;
        };
        let mut taken = Vec::new();
        loop {
            match l.accept() {
                Ok((s, _)) => {
                    if let Err(e) = s.set_nonblocking(true) {
                        log::warn!("adopted connection: {e}");
                        continue;
                    }
                    taken.push(OwnedFd::from(s));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::warn!("accepting for worker {}: {e}", self.workers.slot(i).id);
                    break;
                }
            }
        }
        for s in taken {
            self.acceptor.adopt(s);
        }
        self.dispatch();
    }

    /// Stops covering for every slot (shutdown).
    pub(super) fn release_all(&mut self) {
        for i in self.adopted.clone() {
            self.release(i);
        }
    }
}
