//! The worker process: its own `mio` loop, its side of the channel, and the connections it serves.
//!
//! A worker reads its channel, takes each socket the primary passes (or accepts on the listeners
//! it was given, for `shared` and `reuseport`), acks what it took in one batch per loop turn
//! *before* reading a byte from those sockets, and drives each connection through a [`Handler`].
//!
//! This file is the public face ([`Handler`], [`Connection`], [`Context`], [`Status`]); the
//! runtime is in parts: [`runtime`] (the loop), `uplink` (the channel to the primary),
//! `admission` (listeners and the connection limit), `publish` (the status page the primary
//! reads), `table` (the connection slab) and
//! `faults` (testing switches).

mod admission;
mod ending;
mod faults;
#[cfg(feature = "tokio")]
pub(crate) mod intake;
mod preface;
mod publish;
mod runtime;
mod table;
mod uplink;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;

use crate::event::WorkerId;
use crate::ipc::{IpcError, Outgoing, ToPrimary, MAX_QUEUED_BYTES, MAX_QUEUED_MESSAGES};
use crate::latency::Latency;
use crate::worker_env::{BadWorkerEnv, WorkerEnv};

pub use faults::{ENV_FAULT_EXIT_AFTER, ENV_FAULT_FAIL_START, ENV_FAULT_GARBAGE};

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

impl Context {
    fn new(id: WorkerId, now: Instant) -> Context {
        Context {
            id,
            requests: 0,
            draining: false,
            leaving: false,
            peer: None,
            now,
            outgoing: VecDeque::new(),
            user_queued: (0, 0),
            latency: Latency::default(),
        }
    }
}

/// Per-worker state shared with handlers: counters, the channel to the primary, the clock.
#[derive(Debug)]
pub struct Context {
    id: WorkerId,
    requests: u64,
    draining: bool,
    leaving: bool,
    /// The client address the PROXY header of the connection being served named.
    peer: Option<SocketAddr>,
    now: Instant,
    /// Messages for the primary, in order; the uplink sends them at the end of the turn.
    outgoing: VecDeque<ToPrimary>,
    /// User messages (and bytes) among `outgoing`, plus those still waiting in the uplink.
    user_queued: (usize, usize),
    /// How long the timed requests took.
    latency: Latency,
}

impl Context {
    /// This worker's id (1-based slot number; a respawned worker keeps its slot's id).
    pub fn worker_id(&self) -> WorkerId {
        self.id
    }

    /// Counts one served request (or unit of work) in the worker's statistics.
    pub fn count_request(&mut self) {
        self.requests += 1;
    }

    /// Counts one served request that took `took` (from its first byte to its answer), for
    /// the primary's `herd_request_duration_seconds` histogram.
    pub fn record_request(&mut self, took: std::time::Duration) {
        self.count_request();
        self.latency.record(took);
    }

    /// True once the worker is shutting down: finish the request in flight, then close.
    pub fn draining(&self) -> bool {
        self.draining
    }

    /// True once the host is leaving: from a `SIGTERM` with a drain delay (see
    /// [`crate::Cluster::drain_delay`]) through the shutdown that follows. New connections still
    /// come while the delay lasts; answer them, but tell health checks the host is going (the
    /// default server's `/healthz` answers `503`) and close connections after each answer.
    pub fn leaving(&self) -> bool {
        self.leaving || self.draining
    }

    /// The client of the connection being served (the one whose [`Handler::connect`],
    /// [`Connection::ready`], [`Connection::timed_out`] or [`Connection::drain`] is running):
    /// the address its PROXY protocol header named, when the cluster expects one
    /// ([`crate::Cluster::proxy_protocol`]) and the header named one; otherwise the socket's
    /// own peer, `stream`.
    pub fn peer_addr(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        match self.peer {
            Some(a) => Ok(a),
            None => stream.peer_addr(),
        }
    }

    /// The address the PROXY protocol header of the connection being served named, if any
    /// (`None` without `--proxy-protocol`, and for a balancer's own `LOCAL` health checks).
    pub fn proxied_addr(&self) -> Option<SocketAddr> {
        self.peer
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
        let payload = payload.into();
        let (messages, bytes) = self.user_queued;
        if messages >= MAX_QUEUED_MESSAGES || bytes + payload.len() > MAX_QUEUED_BYTES {
            return Err(IpcError::QueueFull { messages, bytes });
        }
        let msg = ToPrimary::Message(payload);
        msg.encode(&mut Vec::new())?; // refuse what cannot travel now, not at the end of the turn
        self.user_queued = (messages + 1, bytes + msg.weight());
        self.outgoing.push_back(msg);
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
    /// The process was not started by a herd primary, or its environment is broken.
    #[error("not a herd worker: {0}")]
    NotAWorker(#[from] BadWorkerEnv),
    /// The event loop or channel failed.
    #[error("worker i/o: {0}")]
    Io(#[from] io::Error),
    /// The channel carried something unexpected.
    #[error(transparent)]
    Ipc(#[from] IpcError),
}

/// This process's worker id, if it was started by a herd primary (`cluster.worker.id`).
pub fn worker_id() -> Option<WorkerId> {
    WorkerEnv::get()?.as_ref().ok().map(|e| e.id)
}

/// Runs this process as a worker until it is told to stop (or its primary goes away).
///
/// Returns when the worker has drained; the caller exits the process.
pub fn run<H: Handler>(handler: H) -> Result<(), WorkerError> {
    let env = match WorkerEnv::get() {
        None => return Err(BadWorkerEnv("HERD_WORKER_ID").into()),
        Some(Err(e)) => return Err(e.clone().into()),
        Some(Ok(env)) => env,
    };
    faults::fail_start_if_asked();
    runtime::Runtime::new(env, handler)?.run()
}
