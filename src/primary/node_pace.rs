//! Pacing the loop for Node workers (`herd run`): as few wake-ups per new connection as the
//! protocol allows.
//!
//! A Node worker answers every connection with two lines (`NODE_HANDLE_ACK` from its channel
//! code, then `{ack, accepted}` from the cluster code), written moments apart; and without a
//! pause, every connection wakes the loop on its own. Each wake-up costs the primary more than
//! the rest of its work for that connection, so:
//!
//! - **Lingering channels.** A channel that owes only answers to connections (nothing waits
//!   on them) leaves the poll and is read once after every wait instead: the two lines of each
//!   connection come in with the next accept. Its connections stay the primary's until the
//!   worker's `{ack, accepted}`, as before, so a refusal or a death loses nothing; the wait
//!   is bounded ([`LINGER`]), and a channel stops lingering at the first turn without a new
//!   connection, when a connection waits for room, when its worker is no longer online, or
//!   while the primary stops.
//! - **A resting listener.** While new connections stream in (two or more in one turn, or
//!   one less than [`REST`] after the last), each would otherwise wake the loop on its own:
//!   the listener rests for [`REST`] and what gathered in the kernel's queue is accepted and
//!   handed together (one wake-up, one read of each channel, each worker's share in one
//!   burst, which its loop reads in one go). A connection waits at most [`REST`] for it, and
//!   only under such a stream; at the first turn that finds fewer, the listener wakes the loop
//!   for each connection again. Measured on 2 cores with `node:http` workers: the primary's
//!   CPU per connection about 11 us instead of about 16 us with lingering channels alone,
//!   and the same requests per second and latency.

use std::time::{Duration, Instant};

use super::workers::{ProcKey, State};
use super::Primary;

/// Longest a lingering channel goes unread when nothing else wakes the loop.
const LINGER: Duration = Duration::from_millis(10);
/// How long the listener rests while connections stream in.
const REST: Duration = Duration::from_millis(1);

/// The pacing state.
#[derive(Debug, Default)]
pub(super) struct Pace {
    /// Workers whose channel lingers this turn (read once after the wait).
    lingering: Vec<ProcKey>,
    /// Connections accepted in total at the last look.
    accepted: u64,
    /// The listener rests until then.
    rest_until: Option<Instant>,
    /// When the last turn that accepted connections ran.
    last_accept: Option<Instant>,
}

impl Primary {
    /// Before the loop waits: decides which channels linger and whether the listener rests.
    /// Returns when the loop must look again at the latest.
    pub(super) fn pace_before_poll(&mut self) -> Option<Instant> {
        let urgent = self.acceptor.waiting() > 0 || self.stopping();
        let accepted = self.acceptor.accepted();
        let new = accepted - std::mem::replace(&mut self.node.pace.accepted, accepted);
        let now = Instant::now();
        let gap = match new {
            0 => None,
            _ => self.node.pace.last_accept.replace(now).map(|t| now - t),
        };
        let streaming = new >= 2 || gap.is_some_and(|g| g < REST);
        self.rest_listener(urgent, streaming);
        let registry = self.poll.registry();
        let pace = &mut self.node.pace;
        pace.lingering.clear();
        for (key, p) in self.workers.procs_mut() {
            if p.channel_closed {
                continue;
            }
            let online = p.state == State::Online;
            let Some(l) = p.link.node_mut() else {
                continue;
            };
            let on = !urgent && online && (l.may_linger() || (new > 0 && l.lingering()));
            if on != l.lingering() {
                if let Err(e) = l.linger(registry, on) {
                    log::debug!("worker {} channel: {e}", p.pid);
                    continue;
                }
            }
            if on {
                pace.lingering.push(key);
            }
        }
        let linger = (!pace.lingering.is_empty()).then(|| Instant::now() + LINGER);
        linger.into_iter().chain(pace.rest_until).min()
    }

    /// After the loop's wait: takes what gathered while the listener rested (if its rest is
    /// over) and reads every lingering channel once.
    pub(super) fn pace_after_poll(&mut self) {
        if self
            .node
            .pace
            .rest_until
            .is_some_and(|t| Instant::now() >= t)
        {
            self.node.pace.rest_until = None;
            self.acceptor.accept(self.poll.registry());
        }
        let mut keys = std::mem::take(&mut self.node.pace.lingering);
        for &key in &keys {
            self.read_worker(key);
        }
        keys.clear();
        self.node.pace.lingering = keys;
    }

    /// Rests the listener while connections stream in to Node workers; ends the rest when
    /// something is urgent or when the stream stops (a rest under way otherwise runs to its
    /// end).
    fn rest_listener(&mut self, urgent: bool, streaming: bool) {
        let registry = self.poll.registry();
        let pace = &mut self.node.pace;
        if urgent {
            pace.rest_until = None;
        }
        if pace.rest_until.is_some() {
            return;
        }
        if streaming && !urgent && self.workers.procs().any(|(_, p)| p.link.is_node()) {
            pace.rest_until = Some(Instant::now() + REST);
            if !self.acceptor.resting() {
                self.acceptor.rest(registry);
            }
        } else if self.acceptor.resting() {
            self.acceptor.end_rest(registry);
        }
    }
}
