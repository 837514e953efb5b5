//! The worker process: its own `mio` loop, its side of the channel, and the connections it serves.
//!
//! A worker reads its channel, takes each socket the primary passes (or accepts on the listeners
//! it was given, for `shared` and `reuseport`), acks what it took in one batch per loop turn
//! *before* reading a byte from those sockets, and drives each connection through a [`Handler`].

use std::collections::VecDeque;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;
use slab::Slab;

use crate::ipc::{Channel, IpcError, Outbox, ToPrimary, ToWorker, WorkerStats, MAX_ACK_IDS};
use crate::signals::{self, Signals};

/// Environment variable holding the worker's id (1-based slot number), like `NODE_UNIQUE_ID`.
pub const ENV_WORKER_ID: &str = "HERD_WORKER_ID";
/// Environment variable holding the inherited channel descriptor number.
pub const ENV_CHANNEL_FD: &str = "HERD_CHANNEL_FD";
/// Environment variable: report closed connections promptly (set for least-connections).
pub const ENV_REPORT_CLOSES: &str = "HERD_REPORT_CLOSES";
/// Environment variable: most connections a worker serves at once (0 or unset: no limit).
pub const ENV_MAX_CONNECTIONS: &str = "HERD_MAX_CONNECTIONS";
/// Testing only: `N` or `ID:N`. From its Nth received connection on, the worker (or only worker
/// `ID`) acks nothing more, and exits with status 86 once the connections it did ack are
/// finished: a crash between receiving sockets and acking them, without collateral losses.
pub const ENV_FAULT_EXIT_AFTER: &str = "HERD_FAULT_EXIT_AFTER";
/// Testing only: exit with status 3 at start, before coming online.
pub const ENV_FAULT_FAIL_START: &str = "HERD_FAULT_FAIL_START";

const CHANNEL: Token = Token(0);
const SIGNALS: Token = Token(1);
const FIRST_LISTENER: usize = 2;
const MAX_LISTENERS: usize = 62;
const FIRST_CONN: usize = FIRST_LISTENER + MAX_LISTENERS;
/// How often idle connections are checked against their deadlines.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// What a connection wants after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Keep the connection; wait for the next readiness event.
    Open,
    /// Close the connection now.
    Close,
    /// Not done, but this connection has had its share of the turn: call
    /// [`Connection::ready`] again on the next turn, without waiting for an event (the socket
    /// is edge-triggered, so none may come).
    Yield,
}

/// Per-worker state shared with handlers: counters, the channel to the primary, the clock.
#[derive(Debug)]
pub struct Context {
    id: usize,
    requests: u64,
    draining: bool,
    now: Instant,
    outbox: Outbox,
}

impl Context {
    /// This worker's id (1-based slot number; a respawned worker keeps its slot's id).
    pub fn worker_id(&self) -> usize {
        self.id
    }

    /// Counts one served request (or unit of work) in the worker's statistics.
    pub fn count_request(&mut self) {
        self.requests += 1;
    }

    /// True once the worker is shutting down: finish the request in flight, then close.
    pub fn draining(&self) -> bool {
        self.draining
    }

    /// The time the current loop turn started.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Sends a message to the primary, where it arrives as a `message` event (Node's
    /// `process.send`). Ordered and framed: one call, one event. A payload larger than
    /// [`crate::ipc::MAX_MESSAGE`] is refused with [`IpcError::TooLarge`] and nothing is sent.
    /// The message leaves at the end of the loop turn; if the channel is full it waits, in
    /// order, in the worker's outbox.
    pub fn send(&mut self, payload: impl Into<Vec<u8>>) -> Result<(), IpcError> {
        let bytes = ToPrimary::Message(payload.into()).encode()?;
        self.outbox.push(bytes);
        Ok(())
    }
}

/// One connection's state, driven by readiness events from the worker's loop.
///
/// The socket is registered edge-triggered for both reading and writing, so [`Connection::ready`]
/// must read and write until the OS says `WouldBlock` (or the connection is done).
pub trait Connection {
    /// The socket, so the loop can register and deregister it.
    fn stream(&mut self) -> &mut TcpStream;

    /// The socket became readable and/or writable: make progress. Also called once right after
    /// [`Handler::connect`], and possibly spuriously: `WouldBlock` is a normal answer.
    fn ready(&mut self, ctx: &mut Context) -> Status;

    /// When this connection should be timed out, if ever (checked a few times a second).
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// The deadline passed: answer (for example `408`) or close.
    fn timed_out(&mut self, _ctx: &mut Context) -> Status {
        Status::Close
    }

    /// The worker is shutting down: close if idle, else finish the request in flight and close.
    fn drain(&mut self, _ctx: &mut Context) -> Status {
        Status::Close
    }
}

/// What a worker runs: makes a [`Connection`] for every socket it is given.
pub trait Handler {
    /// The per-connection state.
    type Conn: Connection;

    /// A new connection arrived (already non-blocking; not yet registered).
    fn connect(&mut self, stream: TcpStream, ctx: &mut Context) -> Self::Conn;

    /// A message from the primary (`Control::send` there), in the order sent.
    fn message(&mut self, _payload: Vec<u8>, _ctx: &mut Context) {}
}

/// Errors that end a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The process was not started by a herd primary.
    #[error("not a herd worker: {0} is not set or not valid")]
    NotAWorker(&'static str),
    /// The event loop or channel failed.
    #[error("worker i/o: {0}")]
    Io(#[from] io::Error),
    /// The channel carried something unexpected.
    #[error(transparent)]
    Ipc(#[from] IpcError),
}

/// This process's worker id, if it was started by a herd primary.
pub fn worker_id() -> Option<usize> {
    std::env::var(ENV_WORKER_ID).ok()?.parse().ok()
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// Reads `HERD_FAULT_EXIT_AFTER` (`N` for every worker, `ID:N` for one).
fn fault_exit_after(id: usize) -> Option<u64> {
    let v = std::env::var(ENV_FAULT_EXIT_AFTER).ok()?;
    match v.split_once(':') {
        Some((who, n)) => (who.parse::<usize>().ok()? == id).then(|| n.parse().ok())?,
        None => v.parse().ok(),
    }
}

/// Runs this process as a worker until it is told to stop (or its primary goes away).
///
/// Returns when the worker has drained; the caller exits the process.
pub fn run<H: Handler>(handler: H) -> Result<(), WorkerError> {
    let id = worker_id().ok_or(WorkerError::NotAWorker(ENV_WORKER_ID))?;
    let fd: RawFd = std::env::var(ENV_CHANNEL_FD)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or(WorkerError::NotAWorker(ENV_CHANNEL_FD))?;
    if env_flag(ENV_FAULT_FAIL_START) {
        log::error!(
            "worker {} failing at start ({ENV_FAULT_FAIL_START})",
            std::process::id()
        );
        std::process::exit(3);
    }
    // SAFETY: the primary passed this descriptor to us, open, under this number; we are its
    // only owner in this process.
    let channel = Channel::from_inherited(unsafe { OwnedFd::from_raw_fd(fd) })?;
    Runtime::new(id, channel, handler)?.run()
}

struct Runtime<H: Handler> {
    poll: Poll,
    channel: Channel,
    signals: Signals,
    handler: H,
    ctx: Context,
    conns: Slab<H::Conn>,
    /// Connections that yielded: run again next turn without waiting for an event.
    again: Vec<usize>,
    /// By slab key: the connection was handed over by the primary, which may still hold a copy.
    handed: Vec<bool>,
    listeners: Vec<TcpListener>,
    /// Taken in this turn, registered once their ack has left.
    taken: Vec<TcpStream>,
    /// Received while at the connection limit: not acked (the primary still owns them and
    /// routes new ones elsewhere once our window fills); taken as connections close.
    held: VecDeque<(u64, TcpStream)>,
    /// Most connections served at once (`usize::MAX`: no limit).
    max_conns: usize,
    /// Listeners are not being drained because the worker is at its limit.
    accept_paused: bool,
    acks: Vec<u64>,
    received: u64,
    connections: u64,
    closed_unreported: u32,
    report_closes: bool,
    fault_exit_after: Option<u64>,
    /// Sockets received after the fault tripped: never acked, never served.
    fault_unacked: Vec<OwnedFd>,
    primary_gone: bool,
    /// Whether the channel is registered for writable events.
    want_writable: bool,
    next_sweep: Instant,
}

impl<H: Handler> Runtime<H> {
    fn new(id: usize, channel: Channel, handler: H) -> io::Result<Self> {
        signals::ignore_sigpipe();
        let signals = Signals::new(&[Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP])?;
        let poll = Poll::new()?;
        poll.registry().register(
            &mut SourceFd(&channel.raw_fd()),
            CHANNEL,
            Interest::READABLE,
        )?;
        poll.registry().register(
            &mut SourceFd(&signals.raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;
        let now = Instant::now();
        Ok(Runtime {
            poll,
            channel,
            signals,
            handler,
            ctx: Context {
                id,
                requests: 0,
                draining: false,
                now,
                outbox: Outbox::default(),
            },
            conns: Slab::new(),
            again: Vec::new(),
            handed: Vec::new(),
            listeners: Vec::new(),
            taken: Vec::new(),
            held: VecDeque::new(),
            max_conns: match env_number(ENV_MAX_CONNECTIONS) {
                Some(n) if n > 0 => n as usize,
                _ => usize::MAX,
            },
            accept_paused: false,
            acks: Vec::new(),
            received: 0,
            connections: 0,
            closed_unreported: 0,
            report_closes: env_flag(ENV_REPORT_CLOSES),
            fault_exit_after: fault_exit_after(id),
            fault_unacked: Vec::new(),
            primary_gone: false,
            want_writable: false,
            next_sweep: now + SWEEP_EVERY,
        })
    }

    fn run(mut self) -> Result<(), WorkerError> {
        log::info!("worker {} started", std::process::id());
        self.push(ToPrimary::Online)?;
        self.flush();
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = if !self.again.is_empty() {
                Some(Duration::ZERO)
            } else if self.conns.is_empty() {
                None
            } else {
                Some(SWEEP_EVERY)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
            self.ctx.now = Instant::now();
            for ev in events.iter() {
                match ev.token() {
                    CHANNEL => {
                        if ev.is_readable() || ev.is_read_closed() {
                            self.read_channel()?;
                        }
                    }
                    SIGNALS => self.on_signals(),
                    Token(t) if t < FIRST_CONN => self.accept(t - FIRST_LISTENER),
                    Token(t) => self.conn_ready(t - FIRST_CONN),
                }
            }
            for key in std::mem::take(&mut self.again) {
                self.conn_ready(key);
            }
            self.finish_turn()?;
            if self.ctx.draining
                && self.conns.is_empty()
                && self.taken.is_empty()
                && self.held.is_empty()
            {
                break;
            }
        }
        self.push(ToPrimary::Stats(self.stats()))?;
        self.flush();
        log::debug!("worker {} drained, exiting", std::process::id());
        Ok(())
    }

    fn push(&mut self, msg: ToPrimary) -> Result<(), IpcError> {
        let bytes = msg.encode()?;
        self.ctx.outbox.push(bytes);
        Ok(())
    }

    fn flush(&mut self) {
        if self.primary_gone {
            return;
        }
        match self.ctx.outbox.flush(&self.channel) {
            Ok(done) => self.want_writable(!done),
            Err(e) => {
                log::debug!(
                    "worker {}: channel to primary closed: {e}",
                    std::process::id()
                );
                self.primary_gone();
            }
        }
    }

    /// Registers for writable edges only while the outbox is backed up: on a Unix socket every
    /// packet the primary consumes would otherwise wake this loop.
    fn want_writable(&mut self, want: bool) {
        if want == self.want_writable {
            return;
        }
        self.want_writable = want;
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let fd = self.channel.raw_fd();
        if let Err(e) = self
            .poll
            .registry()
            .reregister(&mut SourceFd(&fd), CHANNEL, interest)
        {
            log::error!("worker {}: cannot watch channel: {e}", std::process::id());
        }
    }

    fn primary_gone(&mut self) {
        self.primary_gone = true;
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&self.channel.raw_fd()));
        self.start_drain();
    }

    fn stats(&self) -> WorkerStats {
        WorkerStats {
            connections: self.connections,
            open: self.conns.len() as u64,
            requests: self.ctx.requests,
        }
    }

    /// Acks what this turn took, registers it once the ack has left, reports closes, sweeps.
    fn finish_turn(&mut self) -> Result<(), WorkerError> {
        if !self.held.is_empty() || self.accept_paused {
            self.refill();
        }
        for chunk in self.acks.chunks(MAX_ACK_IDS) {
            let bytes = ToPrimary::Ack(chunk.to_vec()).encode()?;
            self.ctx.outbox.push(bytes);
        }
        self.acks.clear();
        if self.report_closes && self.closed_unreported > 0 {
            let n = std::mem::take(&mut self.closed_unreported);
            self.push(ToPrimary::Closed(n))?;
        }
        self.flush();
        if self.ctx.outbox.is_empty() || self.primary_gone {
            for stream in std::mem::take(&mut self.taken) {
                self.add_conn(stream, true);
            }
        }
        if !self.fault_unacked.is_empty() && self.conns.is_empty() && self.taken.is_empty() {
            log::warn!(
                "worker {} exiting on purpose with {} connections unacked ({ENV_FAULT_EXIT_AFTER})",
                std::process::id(),
                self.fault_unacked.len()
            );
            std::process::exit(86);
        }
        if self.ctx.now >= self.next_sweep {
            self.next_sweep = self.ctx.now + SWEEP_EVERY;
            self.sweep();
        }
        Ok(())
    }

    fn read_channel(&mut self) -> Result<(), WorkerError> {
        loop {
            let msg = match self.channel.recv() {
                Ok(Some(p)) => {
                    let msg = ToWorker::decode(p.bytes)?;
                    (msg, p.fds)
                }
                Ok(None) => {
                    log::info!("worker {}: primary went away; draining", std::process::id());
                    self.primary_gone();
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            self.on_message(msg.0, msg.1);
        }
    }

    fn on_message(&mut self, msg: ToWorker, fds: Vec<OwnedFd>) {
        match msg {
            ToWorker::Conn { ids } => {
                if ids.len() != fds.len() {
                    log::error!(
                        "{} connections arrived with {} sockets; the unpaired ones are dropped",
                        ids.len(),
                        fds.len()
                    );
                }
                for (id, fd) in ids.into_iter().zip(fds) {
                    self.receive(id, fd);
                }
            }
            ToWorker::Listen => {
                let Some(fd) = fds.into_iter().next() else {
                    log::error!("listen message arrived without its socket");
                    return;
                };
                self.add_listener(fd);
            }
            ToWorker::Disconnect => self.start_drain(),
            ToWorker::StatsRequest => {
                let s = self.stats();
                if let Err(e) = self.push(ToPrimary::Stats(s)) {
                    log::error!("stats report: {e}");
                }
            }
            ToWorker::Message(payload) => self.handler.message(payload, &mut self.ctx),
        }
    }

    /// One connection handed over by the primary: serve it now, or hold it at capacity.
    fn receive(&mut self, id: u64, fd: OwnedFd) {
        self.received += 1;
        if self.fault_exit_after.is_some_and(|n| self.received >= n) {
            self.fault_unacked.push(fd);
            return;
        }
        let stream = TcpStream::from_std(std::net::TcpStream::from(fd));
        if self.at_capacity() && !self.ctx.draining {
            self.held.push_back((id, stream));
        } else {
            self.take(id, stream);
        }
    }

    /// True when serving one more connection would pass the limit.
    fn at_capacity(&self) -> bool {
        self.conns.len() + self.taken.len() >= self.max_conns
    }

    /// Takes a handed-over connection: ack it this turn, serve it once the ack has left.
    fn take(&mut self, id: u64, stream: TcpStream) {
        self.acks.push(id);
        self.taken.push(stream);
    }

    /// Below the limit again: take held connections, resume accepting.
    fn refill(&mut self) {
        while !self.at_capacity() || self.ctx.draining {
            let Some((id, stream)) = self.held.pop_front() else {
                break;
            };
            self.take(id, stream);
        }
        if self.accept_paused && !self.at_capacity() {
            self.accept_paused = false;
            for i in 0..self.listeners.len() {
                self.accept(i);
            }
        }
    }

    fn add_listener(&mut self, fd: OwnedFd) {
        if self.ctx.draining || self.listeners.len() >= MAX_LISTENERS {
            return;
        }
        let mut l = TcpListener::from_std(std::net::TcpListener::from(fd));
        let token = Token(FIRST_LISTENER + self.listeners.len());
        match self
            .poll
            .registry()
            .register(&mut l, token, Interest::READABLE)
        {
            Ok(()) => {
                self.listeners.push(l);
                if let Err(e) = self.push(ToPrimary::Listening) {
                    log::error!("listening report: {e}");
                }
            }
            Err(e) => log::error!("cannot register listener: {e}"),
        }
    }

    fn accept(&mut self, index: usize) {
        loop {
            if self.at_capacity() {
                // Leave the rest in the kernel's queue (other workers, or us later, take them).
                self.accept_paused = true;
                return;
            }
            let Some(l) = self.listeners.get(index) else {
                return;
            };
            match l.accept() {
                Ok((stream, _)) => self.add_conn(stream, false),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ECONNABORTED, EMFILE, ...: log and retry on the next readiness event.
                    log::warn!("accept: {e}");
                    return;
                }
            }
        }
    }

    fn add_conn(&mut self, stream: TcpStream, handed: bool) {
        self.connections += 1;
        let conn = self.handler.connect(stream, &mut self.ctx);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if self.handed.len() <= key {
            self.handed.resize(key + 1, false);
        }
        self.handed[key] = handed;
        let token = Token(FIRST_CONN + key);
        let conn = entry.insert(conn);
        if let Err(e) = self.poll.registry().register(
            conn.stream(),
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("cannot register connection: {e}");
            self.close(token.0 - FIRST_CONN);
            return;
        }
        // The request is often already here (always, with TCP_DEFER_ACCEPT): serve it now
        // rather than after another trip through epoll.
        self.conn_ready(token.0 - FIRST_CONN);
    }

    fn conn_ready(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let status = conn.ready(&mut self.ctx);
        self.apply(key, status);
    }

    /// Acts on what a connection said it wants.
    fn apply(&mut self, key: usize, status: Status) {
        match status {
            Status::Close => self.close(key),
            Status::Yield => self.again.push(key),
            Status::Open => {}
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(mut conn) = self.conns.try_remove(key) {
            let _ = self.poll.registry().deregister(conn.stream());
            if self.handed.get(key).copied().unwrap_or(false) {
                // The primary may not have read our ack yet and still hold a copy: closing ours
                // would then leave the FIN (and the teardown work) to it, later. Send it now.
                let _ = conn.stream().shutdown(std::net::Shutdown::Write);
            }
            self.closed_unreported += 1;
        }
    }

    fn sweep(&mut self) {
        let now = self.ctx.now;
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline().is_some_and(|d| d <= now))
            .map(|(k, _)| k)
            .collect();
        for key in expired {
            if let Some(conn) = self.conns.get_mut(key) {
                let status = conn.timed_out(&mut self.ctx);
                self.apply(key, status);
            }
        }
    }

    fn on_signals(&mut self) {
        for sig in self.signals.pending() {
            match sig {
                // A terminal's Ctrl-C reaches the whole process group; the primary coordinates.
                Signal::SIGINT | Signal::SIGHUP => {}
                _ => self.start_drain(),
            }
        }
    }

    fn start_drain(&mut self) {
        if self.ctx.draining {
            return;
        }
        self.ctx.draining = true;
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(conn) = self.conns.get_mut(key) {
                let status = conn.drain(&mut self.ctx);
                self.apply(key, status);
            }
        }
    }
}
