//! herd: Node's `cluster` module rebuilt in Rust, as a real multi-process server.
//!
//! One program is both roles. Started normally it is the **primary**: it binds the listening
//! socket, starts one worker process per core by re-executing itself, accepts every connection
//! on its `mio` loop and hands each socket to a worker over a Unix-domain channel
//! (`SCM_RIGHTS`), round-robin by default. Started by a primary it is a **worker**: it runs its
//! own `mio` loop and serves the sockets it receives with a [`Handler`].
//!
//! ```no_run
//! use herd::{Cluster, http::HttpHandler};
//!
//! fn main() -> Result<(), herd::Error> {
//!     // In the primary this supervises the workers; in a worker it serves connections.
//!     Cluster::new().workers(2).port(3000).run(HttpHandler::default)
//! }
//! ```
//!
//! The pieces of Node's `cluster` API and where they are here:
//!
//! | Node | herd |
//! |---|---|
//! | `cluster.isPrimary`, `cluster.isWorker`, `cluster.worker.id` | [`is_primary`], [`is_worker`], [`worker_id`] |
//! | `cluster.setupPrimary({ args, env })`, `cluster.fork()` | [`Cluster`] builder |
//! | `cluster.on('fork' / 'online' / 'listening' / 'message' / 'disconnect' / 'exit')` | [`Cluster::on_event`] or [`Cluster::events`], with [`Event`] |
//! | `worker.send(msg)` in the primary | [`Control::send`] |
//! | `process.send(msg)` in a worker, `process.on('message')` | [`Context::send`], [`Handler::message`] |
//! | `worker.disconnect()`, `worker.process.kill(sig)`, `worker.isDead()` | [`Control::disconnect`], [`Control::kill`], [`Control::is_dead`] |
//! | `cluster.disconnect()` | [`Control::shutdown`] |
//! | `http.createServer((req, res) => ...)` | [`http::HttpHandler`], your own [`Handler`], or [`blocking::serve`] |

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod activation;
pub mod admin;
#[cfg(feature = "axum")]
pub mod axum;
#[cfg(feature = "cli")]
pub mod bench;
pub mod blocking;
mod cluster;
pub mod event;
pub mod http;
pub mod ipc;
pub mod latency;
pub mod listen;
pub mod metrics;
pub mod notify;
pub mod pidfile;
pub mod policy;
pub mod primary;
pub mod privilege;
pub mod procfs;
pub mod proxy_protocol;
pub mod signals;
mod sys;
#[cfg(feature = "tokio")]
pub mod tokio;
pub mod worker;
pub mod worker_env;

use std::time::Duration;

pub use cluster::Cluster;
pub use event::{Event, WorkerId, WorkerInfo, WorkerState};
pub use ipc::{IpcError, MAX_MESSAGE};
/// Signals for [`Control::kill`] (re-exported from `nix`).
pub use nix::sys::signal::Signal;
pub use policy::Policy;
pub use primary::{Control, Events, PrimaryError, WorkerSched};
pub use worker::{worker_id, Connection, Context, Handler, Status, WorkerError};

/// Default handoff window: connections a worker may hold unacked.
pub const DEFAULT_HANDOFF_WINDOW: usize = 64;
/// Default bound on accepted connections waiting for a worker.
pub const DEFAULT_MAX_PENDING: usize = 4096;
/// Default time a worker may leave its channel unread before it is marked unresponsive.
pub const DEFAULT_WORKER_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time the new primary of an upgrade gets to have every worker online.
pub const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);

/// Default time a worker may take to come online (a Node worker: to listen) before it is
/// reported.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// `now + d`, or a time centuries away when that cannot be represented: a timeout too large
/// for the clock means no timeout, never a panic.
pub(crate) fn deadline_after(d: Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(1 << 32)))
        .unwrap_or(now)
}

/// True when this process was started by a herd primary (`cluster.isWorker`).
pub fn is_worker() -> bool {
    worker::worker_id().is_some()
}

/// True when this process is not a worker (`cluster.isPrimary`).
pub fn is_primary() -> bool {
    !is_worker()
}

/// Why a cluster could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The primary failed (listening socket, signals, event loop).
    #[error(transparent)]
    Primary(#[from] PrimaryError),
    /// The worker failed.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// A message could not be sent (for example [`IpcError::TooLarge`]).
    #[error(transparent)]
    Ipc(#[from] IpcError),
    /// A setting was invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A primary-only call ([`Cluster::events`], [`Cluster::bind`]) was made in a worker.
    #[error("this is a herd worker; only the primary can do that (use Cluster::run)")]
    NotPrimary,
}
