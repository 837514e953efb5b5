//! The worker's intake, for an event loop other than the worker's own: the control half of
//! [`super::runtime`] (channel, signals, listeners, acks, the connection limit, drain) without
//! the connection table. It gives the connections it takes to the caller instead of serving
//! them, and the caller tells it when each one closes.
//!
//! Its `mio` loop is driven a turn at a time ([`Intake::turn`]) by the caller, who watches the
//! loop's own epoll descriptor ([`Intake::poll_fd`]) with its reactor (tokio's, through
//! `AsyncFd`): an epoll descriptor is readable while any of its sources is ready. So the
//! channel, acks, close reports, statistics and messages are the same code as for a
//! [`super::Handler`], and only the serving of connections moves to the other loop.

use super::ending::Ending;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;

use super::admission::{Admission, ListenerIndex};
use super::faults::Faults;
use super::preface::{PrefaceKey, Prefaces};
use super::publish::Publisher;
use super::uplink::{Inbound, Uplink, CHANNEL, OVERFLOW};
use super::{Context, WorkerError};
use crate::event::WorkerId;
use crate::ipc::{
    Channel, Delivery, IpcError, OverflowReader, StatusPage, ToPrimary, ToWorker, WorkerStats,
};
use crate::signals::Signals;
use crate::worker_env::WorkerEnv;

mod handout;
mod receive;

const SIGNALS: Token = Token(1);
/// Events read per turn; a full batch means more may wait (see [`Intake::turn`]).
const EVENTS: usize = 256;

/// How often late PROXY headers are looked for.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// A connection the intake took, for the caller to serve.
#[derive(Debug)]
pub struct Taken {
    /// The socket (non-blocking).
    pub stream: std::net::TcpStream,
    /// Handed over by the primary (which may hold a copy until it reads the ack), rather than
    /// accepted on a listener of this worker.
    pub handed: bool,
    /// The client its PROXY header named (`--proxy-protocol`), if any.
    pub peer: Option<SocketAddr>,
}

/// The worker's side of the channel and its listeners, driven from outside.
pub struct Intake {
    poll: Poll,
    events: Events,
    /// The events of a turn, copied out of `events` (kept to reuse its allocation).
    tokens: Vec<(Token, bool)>,
    signals: Signals,
    uplink: Uplink,
    admission: Admission,
    faults: Faults,
    ctx: Context,
    /// Taken this turn (and whether the primary may still hold a copy); given out once
    /// their acks have left.
    taken: Vec<(TcpStream, bool)>,
    /// Ready for the caller.
    ready: VecDeque<Taken>,
    /// With `--proxy-protocol`: connections whose PROXY header has not fully arrived.
    prefaces: Option<Prefaces>,
    /// When late PROXY headers are next looked for.
    next_sweep: Instant,
    /// Given to the caller and not yet closed.
    out: usize,
    /// Connections taken in total.
    connections: u64,
    /// Requests counted by the caller (added to the context's own count).
    requests: u64,
    /// Messages from the primary, for the caller.
    inbox: VecDeque<Vec<u8>>,
    /// The caller takes no more connections: handed ones are refused (the primary hands
    /// them to another worker) and listeners are closed.
    closed: bool,
    ending: Ending,
    /// What this worker publishes to the primary (connections read, held, served; busy or
    /// idle is the async runtime's to flip, see [`Intake::status_page`]).
    publish: Publisher,
    /// idle-first's queue shared by the workers.
    overflow: OverflowReader,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("ready", &self.ready.len())
            .field("out", &self.out)
            .field("draining", &self.ctx.draining)
            .finish_non_exhaustive()
    }
}

impl Intake {
    /// Takes this process's channel (see [`WorkerEnv`]), blocks the worker's signals on this
    /// thread (threads started afterwards inherit that), and tells the primary it is online.
    pub fn new() -> Result<Intake, WorkerError> {
        let env = match WorkerEnv::get() {
            None => return Err(crate::worker_env::BadWorkerEnv("HERD_WORKER_ID").into()),
            Some(Err(e)) => return Err(e.clone().into()),
            Some(Ok(env)) => env,
        };
        super::faults::fail_start_if_asked();
        crate::sys::ignore_sigpipe();
        let channel = Channel::from_inherited(env.channel_fd)?;
        let signals = Signals::new(&[Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP])?;
        let poll = Poll::new()?;
        let uplink = Uplink::new(channel, poll.registry(), env.report_closes)?;
        poll.registry().register(
            &mut mio::unix::SourceFd(&signals.raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;
        let mut intake = Intake {
            poll,
            events: Events::with_capacity(EVENTS),
            tokens: Vec::with_capacity(EVENTS),
            signals,
            uplink,
            admission: Admission::new(env.max_connections),
            faults: Faults::from_env(env.id),
            ctx: Context::new(env.id, Instant::now()),
            taken: Vec::new(),
            ready: VecDeque::new(),
            prefaces: env.proxy_header.map(Prefaces::new),
            next_sweep: Instant::now() + SWEEP_EVERY,
            out: 0,
            connections: 0,
            requests: 0,
            inbox: VecDeque::new(),
            closed: false,
            ending: Ending::new(env),
            publish: Publisher::from_env(env),
            overflow: OverflowReader::default(),
        };
        log::info!("worker {} started", std::process::id());
        intake.ctx.outgoing.push_back(ToPrimary::Online);
        intake.uplink.flush(intake.poll.registry(), &mut intake.ctx);
        Ok(intake)
    }

    /// The loop's epoll descriptor: readable when [`Intake::turn`] has something to do.
    pub fn poll_fd(&self) -> BorrowedFd<'_> {
        self.poll.registry().as_fd()
    }

    /// The worker's status page, if the primary gave it one: whoever runs the loop flips its
    /// busy flag (set while handling, cleared while waiting for events), as the worker's own
    /// loop does around `epoll_wait`.
    pub fn status_page(&self) -> Option<Arc<StatusPage>> {
        self.publish.page()
    }

    /// This worker's id.
    pub fn worker_id(&self) -> WorkerId {
        self.ctx.id
    }

    /// Handles what is ready now, without waiting. Returns `true` when more events may wait
    /// than one turn reads (call again before waiting for readiness).
    pub fn turn(&mut self) -> bool {
        if let Err(e) = self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
            if e.kind() != io::ErrorKind::Interrupted {
                log::error!("worker {}: poll: {e}", std::process::id());
            }
            return true;
        }
        self.ctx.now = Instant::now();
        let mut tokens = std::mem::take(&mut self.tokens);
        tokens.extend(
            self.events
                .iter()
                .map(|e| (e.token(), e.is_readable() || e.is_read_closed())),
        );
        let full = tokens.len() >= EVENTS;
        for &(token, readable) in &tokens {
            if let Some(key) = PrefaceKey::from_token(token) {
                self.preface_ready(key);
            } else if token == CHANNEL {
                if readable {
                    self.read_channel();
                }
            } else if token == SIGNALS {
                self.on_signals();
            } else if token == OVERFLOW {
                self.overflow.readable();
            } else if let Some(i) = ListenerIndex::from_token(token) {
                self.accept_all(i);
            }
        }
        tokens.clear();
        self.tokens = tokens;
        let full = self.take_from_overflow() || full;
        if self.ctx.now >= self.next_sweep {
            self.next_sweep = self.ctx.now + SWEEP_EVERY;
            self.sweep();
        }
        self.finish_turn();
        full
    }

    /// When the caller should run a turn even if nothing is ready: to look for late PROXY
    /// headers, or to give up once the primary has been gone for its grace period.
    pub fn wake_at(&self) -> Option<Instant> {
        let sweep = self
            .prefaces
            .as_ref()
            .filter(|p| !p.is_empty())
            .map(|_| self.next_sweep);
        match (sweep, self.ending.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next connection for the caller, if one is ready.
    pub fn next(&mut self) -> Option<Taken> {
        let t = self.ready.pop_front()?;
        self.out += 1;
        Some(t)
    }

    /// True when a connection is ready for the caller.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// A connection the caller was given has closed. Returns `true` when a turn should run
    /// soon (a close report is owed, or connections wait for room).
    pub fn closed(&mut self) -> bool {
        self.out = self.out.saturating_sub(1);
        self.uplink.closed();
        self.publish.open(self.open());
        self.uplink.owes_reports() || self.admission.holds_any() || self.admission.paused()
    }

    /// Counts `n` served requests in the worker's statistics.
    pub fn count_requests(&mut self, n: u64) {
        self.requests += n;
    }

    /// Counts one served request that took `took` (for the primary's latency histogram).
    pub fn record_request(&mut self, took: Duration) {
        self.ctx.record_request(took);
    }

    /// True once the worker is told to stop (shutdown, reload, scale down, `SIGTERM`, or the
    /// primary is gone).
    pub fn draining(&self) -> bool {
        self.ctx.draining
    }

    /// True once the host is leaving (a `SIGTERM` with a drain delay) or the worker drains:
    /// fail health checks, close connections after each answer (see [`Context::leaving`]).
    pub fn leaving(&self) -> bool {
        self.ctx.leaving()
    }

    /// True once the worker is draining and every connection it took has been given out: the
    /// caller's stream of connections has ended.
    pub fn ended(&self) -> bool {
        self.closed
            || (self.ctx.draining
                && self.ready.is_empty()
                && self.taken.is_empty()
                && !self.admission.holds_any()
                && self.prefaces.as_ref().is_none_or(Prefaces::is_empty))
    }

    /// The caller takes no more connections (its stream ended or was dropped): what is ready
    /// now is closed, and connections handed over from now on are refused, so the primary
    /// gives them to another worker.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        // Connections still handed over are refused: the primary must keep its copies.
        self.publish.stay_tight();
        self.admission.close_listeners(self.poll.registry());
        self.overflow.stop(self.poll.registry());
        let dropped = self.ready.len();
        if dropped > 0 {
            log::warn!(
                "worker {}: {dropped} connections taken but never accepted; closing them",
                std::process::id()
            );
        }
        self.ready.clear();
        self.finish_turn();
    }

    /// The next message from the primary, if one waits.
    pub fn message(&mut self) -> Option<Vec<u8>> {
        self.inbox.pop_front()
    }

    /// True once the primary is gone (no message will come any more).
    pub fn primary_gone(&self) -> bool {
        self.uplink.gone()
    }

    /// Queues a message for the primary (see [`Context::send`]); it leaves on the next turn.
    pub fn send(&mut self, payload: Vec<u8>) -> Result<(), IpcError> {
        self.ctx.send(payload)
    }

    /// The time past which an orphaned worker stops waiting for its connections.
    pub fn orphan_deadline(&self) -> Option<Instant> {
        self.ending.deadline()
    }

    /// Sends the final statistics (the caller is done).
    pub fn finish(&mut self) {
        if let Some(p) = self.prefaces.as_ref().filter(|p| p.refused > 0) {
            log::info!(
                "worker {}: closed {} connections without a valid PROXY header",
                std::process::id(),
                p.refused
            );
        }
        let stats = self.stats();
        self.ctx.outgoing.push_back(ToPrimary::Stats(stats));
        self.uplink.flush(self.poll.registry(), &mut self.ctx);
        log::debug!("worker {} done, exiting", std::process::id());
    }

    fn open(&self) -> usize {
        self.out
            + self.ready.len()
            + self.taken.len()
            + self.prefaces.as_ref().map_or(0, Prefaces::len)
    }

    fn stats(&self) -> WorkerStats {
        WorkerStats {
            connections: self.connections,
            open: self.out as u64,
            requests: self.ctx.requests + self.requests,
            latency: self.ctx.latency,
        }
    }

    fn finish_turn(&mut self) {
        if self.admission.holds_any() || self.admission.paused() {
            self.refill();
        }
        let all_sent = self.uplink.flush(self.poll.registry(), &mut self.ctx);
        if self.uplink.gone() {
            self.orphaned();
        }
        if all_sent {
            for (stream, copied) in std::mem::take(&mut self.taken) {
                self.give(stream, copied);
            }
        }
        self.publish.open(self.open());
        self.faults.exit_if_tripped(self.open() == 0);
        if !self.ctx.outgoing.is_empty() || self.uplink.owes_reports() {
            self.uplink.flush(self.poll.registry(), &mut self.ctx);
        }
    }

    fn read_channel(&mut self) {
        if self.faults.tripped() {
            self.faults.left_unread();
            return;
        }
        loop {
            if self.faults.tripped() {
                return;
            }
            match self.uplink.recv(self.poll.registry()) {
                Inbound::Message(d) => self.on_message(d),
                Inbound::Empty => return,
                Inbound::Gone => {
                    self.orphaned();
                    return;
                }
            }
        }
    }

    fn on_message(&mut self, d: Delivery<ToWorker>) {
        match d.msg {
            ToWorker::Conn { ids } => self.receive_all(ids, d.fds, true),
            ToWorker::Give { ids } => self.receive_all(ids, d.fds, false),
            ToWorker::Listen => match d.fds.into_iter().next() {
                Some(fd) if !self.ctx.draining && !self.closed => {
                    if self.admission.add_listener(fd, self.poll.registry()) {
                        self.ctx.outgoing.push_back(ToPrimary::Listening);
                    }
                }
                Some(_) => {}
                None => log::error!("listen message arrived without its socket"),
            },
            ToWorker::Overflow => match d.fds.into_iter().next() {
                Some(fd) if !self.ctx.draining && !self.closed => {
                    if let Err(e) = self.overflow.adopt(fd, self.poll.registry(), OVERFLOW) {
                        log::error!("worker {}: overflow queue: {e}", std::process::id());
                    }
                }
                Some(_) => {}
                None => log::error!("overflow message arrived without its socket"),
            },
            ToWorker::Disconnect => self.start_drain(),
            ToWorker::Leaving => {
                log::info!("worker {}: host leaving", std::process::id());
                self.ctx.leaving = true;
            }
            ToWorker::StatsRequest => {
                let s = self.stats();
                self.ctx.outgoing.push_back(ToPrimary::Stats(s));
            }
            ToWorker::Message(payload) => self.inbox.push_back(payload),
        }
    }

    fn on_signals(&mut self) {
        if self.ending.drains_on(self.signals.pending(), &mut self.ctx) {
            self.start_drain();
        }
    }

    fn orphaned(&mut self) {
        self.ending.orphaned();
        self.start_drain();
    }

    fn start_drain(&mut self) {
        if self.ctx.draining {
            return;
        }
        self.ctx.draining = true;
        self.admission.close_listeners(self.poll.registry());
        self.overflow.stop(self.poll.registry());
    }
}
