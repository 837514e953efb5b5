//! The worker's loop: reads the channel, takes and serves connections, acks, drains.

use super::ending::Ending;
use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;

use super::admission::{Admission, ListenerIndex};
use super::faults::Faults;
use super::preface::{PrefaceKey, Prefaces};
use super::publish::Publisher;
use super::table::{ConnKey, Table};
use super::uplink::{self, Inbound, Uplink, CHANNEL, OVERFLOW};
use super::{Connection, Context, Handler, WorkerError};
use crate::ipc::{Channel, ConnId, Delivery, OverflowReader, ToPrimary, ToWorker, WorkerStats};
use crate::signals::Signals;
use crate::worker_env::WorkerEnv;

mod serve;

const SIGNALS: Token = Token(1);
/// A worker serving fewer connections than this takes from the overflow queue in any turn that
/// brought nothing new from the primary; one serving more, only in a turn with no other event.
const OVERFLOW_EAGER_BELOW: usize = crate::policy::SPREAD as usize;
/// How often idle connections are checked against their deadlines.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// A running worker.
pub struct Runtime<H: Handler> {
    poll: Poll,
    signals: Signals,
    uplink: Uplink,
    handler: H,
    ctx: Context,
    table: Table<H::Conn>,
    admission: Admission,
    /// Connections whose PROXY header is awaited (`None`: the cluster expects none).
    prefaces: Option<Prefaces>,
    /// Taken in this turn from the primary (which may still hold a copy of each), registered
    /// once their acks have left.
    taken: Vec<TcpStream>,
    /// Connections taken in total.
    connections: u64,
    faults: Faults,
    next_sweep: Instant,
    /// How long to go on once the primary is gone, and the time that ends then.
    ending: Ending,
    /// Requests after which the primary is asked for a replacement (once; 0: never).
    recycle_after: u64,
    /// What this worker publishes to the primary (busy or idle, connections read).
    publish: Publisher,
    /// idle-first's queue shared by the workers, read when this one has nothing else to do.
    overflow: OverflowReader,
    /// The last wait gave no event but the overflow queue's.
    quiet: bool,
}

impl<H: Handler> Runtime<H> {
    /// Sets up the loop around the inherited channel.
    pub fn new(env: &WorkerEnv, handler: H) -> Result<Self, WorkerError> {
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
        let now = Instant::now();
        Ok(Runtime {
            poll,
            signals,
            uplink,
            handler,
            ctx: Context::new(env.id, now),
            table: Table::default(),
            admission: Admission::new(env.max_connections),
            prefaces: env.proxy_header.map(Prefaces::new),
            taken: Vec::new(),
            connections: 0,
            faults: Faults::from_env(env.id),
            next_sweep: now + SWEEP_EVERY,
            ending: Ending::new(env),
            recycle_after: env.max_requests,
            publish: Publisher::from_env(env),
            overflow: OverflowReader::default(),
            quiet: false,
        })
    }

    /// Serves until told to stop (or the primary is gone) and every connection is finished.
    pub fn run(mut self) -> Result<(), WorkerError> {
        log::info!("worker {} started", std::process::id());
        self.ctx.outgoing.push_back(ToPrimary::Online);
        self.uplink.flush(self.poll.registry(), &mut self.ctx);
        if self.faults.garbage {
            log::warn!("worker {}: sending garbage on purpose", std::process::id());
            self.uplink.send_garbage();
        }
        let mut events = Events::with_capacity(1024);
        loop {
            let room_for_held = self.admission.holds_any()
                && (self.ctx.draining || !self.admission.full(self.open()));
            let timeout = if self.table.has_yielded() || room_for_held || self.overflow_waits() {
                Some(Duration::ZERO)
            } else if self.table.is_empty() && self.prefaces.as_ref().is_none_or(Prefaces::is_empty)
            {
                None
            } else {
                Some(SWEEP_EVERY)
            };
            let timeout = match self.ending.deadline() {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    Some(timeout.map_or(left, |t| t.min(left)))
                }
                None => timeout,
            };
            let waits = timeout != Some(Duration::ZERO);
            if waits {
                self.publish.busy(false);
            }
            let polled = self.poll.poll(&mut events, timeout);
            if waits {
                self.publish.busy(true);
            }
            if let Err(e) = polled {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
            self.ctx.now = Instant::now();
            self.quiet = events.iter().all(|e| e.token() == OVERFLOW);
            for ev in events.iter() {
                self.on_event(ev.token(), ev.is_readable() || ev.is_read_closed());
            }
            for key in self.table.take_yielded() {
                self.conn_ready(key);
            }
            self.finish_turn();
            if self.ctx.draining && self.open() == 0 && !self.admission.holds_any() {
                break;
            }
            if self.ending.deadline().is_some_and(|d| self.ctx.now >= d) {
                log::warn!(
                    "worker {}: primary gone for {:?}; exiting with {} connections unfinished",
                    std::process::id(),
                    self.ending.grace(),
                    self.open()
                );
                break;
            }
        }
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
        log::debug!("worker {} drained, exiting", std::process::id());
        Ok(())
    }

    fn on_event(&mut self, token: Token, readable: bool) {
        if token == CHANNEL {
            if readable {
                self.read_channel();
            }
        } else if token == OVERFLOW {
            self.overflow.readable();
        } else if token == SIGNALS {
            self.on_signals();
        } else if let Some(i) = ListenerIndex::from_token(token) {
            self.accept_all(i);
        } else if let Some(key) = PrefaceKey::from_token(token) {
            self.preface_ready(key);
        } else if let Some(key) = ConnKey::from_token(token) {
            self.conn_ready(key);
        }
    }

    /// Connections served now, counting those taken this turn.
    fn open(&self) -> usize {
        self.table.len() + self.taken.len() + self.prefaces.as_ref().map_or(0, Prefaces::len)
    }

    fn stats(&self) -> WorkerStats {
        WorkerStats {
            connections: self.connections,
            open: self.table.len() as u64,
            requests: self.ctx.requests,
            latency: self.ctx.latency,
        }
    }

    /// Acks what this turn took, registers it once the ack has left, reports, sweeps.
    fn finish_turn(&mut self) {
        if self.recycle_after > 0 && self.ctx.requests >= self.recycle_after {
            log::info!(
                "worker {} served {} requests: asking to be replaced",
                std::process::id(),
                self.ctx.requests
            );
            self.recycle_after = 0;
            self.ctx.outgoing.push_back(ToPrimary::Recycle);
        }
        self.take_from_overflow();
        self.take_in();
        self.faults.exit_if_tripped(self.open() == 0);
        if self.ctx.now >= self.next_sweep {
            self.next_sweep = self.ctx.now + SWEEP_EVERY;
            self.sweep();
        }
        // Serving the new connections and the sweep may have queued messages (a handler's
        // Context::send, a close count): send them now, not whenever the next event comes,
        // which for a worker with no open connection may be never.
        if !self.ctx.outgoing.is_empty() || self.uplink.owes_reports() {
            self.uplink.flush(self.poll.registry(), &mut self.ctx);
        }
    }

    /// Takes held connections while there is room and starts serving what this turn took.
    /// A new connection is served at once, before it is registered, and may finish (a
    /// `Connection: close` request): that makes room again, which no later event would tell,
    /// so go round until nothing more is taken.
    fn take_in(&mut self) {
        loop {
            if self.admission.holds_any() || self.admission.paused() {
                self.refill();
            }
            let all_sent = self.uplink.flush(self.poll.registry(), &mut self.ctx);
            if self.uplink.gone() {
                self.orphaned();
            }
            if !all_sent || self.taken.is_empty() {
                return;
            }
            for stream in std::mem::take(&mut self.taken) {
                self.add_conn(stream, true);
            }
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
                Some(fd) if !self.ctx.draining => {
                    if self.admission.add_listener(fd, self.poll.registry()) {
                        self.ctx.outgoing.push_back(ToPrimary::Listening);
                    }
                }
                Some(_) => {}
                None => log::error!("listen message arrived without its socket"),
            },
            ToWorker::Overflow => match d.fds.into_iter().next() {
                Some(fd) if !self.ctx.draining => {
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
            ToWorker::Message(payload) => self.handler.message(payload, &mut self.ctx),
        }
    }

    /// Connections handed over in one packet (to ack, or given); see [`Uplink::pair_up`].
    fn receive_all(&mut self, ids: Vec<ConnId>, fds: Vec<OwnedFd>, ack: bool) {
        let count = ids.len() as u64;
        self.receive_packet(ids, fds, ack);
        // Counted once the taken and held ones are published: the primary never sees them
        // neither unread nor held nor served.
        self.publish.received(count);
    }

    fn receive_packet(&mut self, ids: Vec<ConnId>, fds: Vec<OwnedFd>, ack: bool) {
        self.faults.count(ids.len());
        self.publish.arrived(&fds);
        for (id, fd) in self.uplink.pair_up(ids, fds) {
            self.receive(id, ack, fd);
        }
        self.publish.open(self.open());
    }

    /// Whether the overflow queue may hold a connection this worker would take now.
    fn overflow_waits(&self) -> bool {
        self.overflow.maybe_more() && !self.ctx.draining && !self.admission.full(self.open())
    }

    /// With nothing new from the primary this turn, takes one connection from the overflow
    /// queue (one: the next may be for a worker that is done sooner).
    fn take_from_overflow(&mut self) {
        if !self.taken.is_empty() || !self.overflow_waits() {
            return;
        }
        // A worker with several connections takes only in a turn in which none of them had
        // anything: a worker that happens to run while the other waits for a core would
        // otherwise take most of a burst of new keep-alive connections for good.
        if self.open() >= OVERFLOW_EAGER_BELOW && !self.quiet {
            return;
        }
        if let Some((ids, fds)) = self.overflow.take_one(self.poll.registry()) {
            self.receive_packet(ids, fds, false);
        }
    }

    /// One connection handed over by the primary (`ack`: it wants an ack): serve it now, or
    /// hold it at capacity (published, so that the primary counts it as waiting).
    fn receive(&mut self, id: ConnId, ack: bool, fd: OwnedFd) {
        let stream = uplink::stream(fd);
        if self.admission.full(self.open()) && !self.ctx.draining {
            self.admission.hold(id, ack, stream);
            self.publish.held(self.admission.held());
        } else {
            self.take(id, ack, stream);
        }
    }

    /// Takes a handed-over connection: ack it this turn if the primary wants an ack, serve it
    /// once the ack has left.
    fn take(&mut self, id: ConnId, ack: bool, stream: TcpStream) {
        if ack {
            self.uplink.ack(id);
        }
        self.taken.push(stream);
    }

    /// Below the limit again: take held connections, resume accepting.
    fn refill(&mut self) {
        let mut took = false;
        while let Some((id, _, stream)) = self.admission.unhold(self.open(), self.ctx.draining) {
            // Acked even if given: the ack wakes the primary, which may hold connections back
            // for want of room here (the primary ignores the id).
            self.uplink.ack(id);
            self.taken.push(stream);
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

    fn on_signals(&mut self) {
        if self.ending.drains_on(self.signals.pending(), &mut self.ctx) {
            self.start_drain();
        }
    }

    /// The primary is gone: finish what is in flight, within the grace it gave us.
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
        for key in self.table.keys() {
            if let Some(entry) = self.table.get_mut(key) {
                self.ctx.peer = entry.peer;
                let status = entry.conn.drain(&mut self.ctx);
                self.apply(key, status);
            }
        }
    }
}
