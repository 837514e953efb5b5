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

#![warn(missing_docs)]

pub mod bench;
pub mod event;
pub mod http;
pub mod ipc;
pub mod listen;
pub mod policy;
pub mod primary;
pub mod signals;
pub mod worker;

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use event::Event;
pub use policy::Policy;
pub use primary::{Control, PrimaryError};
pub use worker::{Connection, Context, Handler, Status, WorkerError};

/// Default handoff window: connections a worker may hold unacked.
pub const DEFAULT_HANDOFF_WINDOW: usize = 64;
/// Default bound on accepted connections waiting for a worker.
pub const DEFAULT_MAX_PENDING: usize = 4096;

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
    /// A setting was invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Builds and runs a cluster: the same call supervises in the primary and serves in a worker.
pub struct Cluster {
    workers: usize,
    addr: SocketAddr,
    policy: Policy,
    shutdown_timeout: Duration,
    handoff_window: usize,
    max_pending: usize,
    args: Option<Vec<OsString>>,
    env: Vec<(OsString, OsString)>,
    hook: Option<primary::EventHook>,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::new()
    }
}

impl Cluster {
    /// One worker per core on `0.0.0.0:3000`, round-robin, 30 s shutdown timeout.
    pub fn new() -> Cluster {
        Cluster {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 3000),
            policy: Policy::default(),
            shutdown_timeout: Duration::from_secs(30),
            handoff_window: DEFAULT_HANDOFF_WINDOW,
            max_pending: DEFAULT_MAX_PENDING,
            args: None,
            env: Vec::new(),
            hook: None,
        }
    }

    /// Number of worker processes (at least 1).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Address to listen on.
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Port to listen on, keeping the host (0: an ephemeral port).
    pub fn port(mut self, port: u16) -> Self {
        self.addr.set_port(port);
        self
    }

    /// Scheduling policy.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Time workers get to finish on shutdown before they are killed.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// Connections a worker may hold unacked (1 is Node's behaviour).
    pub fn handoff_window(mut self, n: usize) -> Self {
        self.handoff_window = n;
        self
    }

    /// Accepted connections that may wait for a worker before the primary stops accepting.
    pub fn max_pending(mut self, n: usize) -> Self {
        self.max_pending = n;
        self
    }

    /// Arguments for the worker processes (like Node's `setupPrimary({ args })`); by default
    /// the primary's own.
    pub fn worker_args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// An extra environment variable for the worker processes.
    pub fn worker_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Calls `hook` in the primary for every lifecycle event; it can send messages to workers,
    /// disconnect or kill them, or stop the cluster through [`Control`].
    pub fn on_event(mut self, hook: impl FnMut(&Event, &mut Control) + 'static) -> Self {
        self.hook = Some(Box::new(hook));
        self
    }

    /// Runs the cluster. In the primary: binds, starts the workers and supervises them until a
    /// graceful shutdown (`SIGTERM`/`SIGINT`). In a worker: serves connections with the handler
    /// `make` builds, until told to stop. Returns when this process should exit (status 0).
    pub fn run<H: Handler>(self, make: impl FnOnce() -> H) -> Result<(), Error> {
        if is_worker() {
            return Ok(worker::run(make())?);
        }
        let config = self.into_config()?;
        primary::Primary::new(config.0, config.1)?.run()?;
        Ok(())
    }

    /// Binds and prepares the primary without running it, so the caller can learn the bound
    /// address first (`Primary::local_addr`). Only meaningful in the primary.
    pub fn bind(self) -> Result<primary::Primary, Error> {
        let (config, hook) = self.into_config()?;
        Ok(primary::Primary::new(config, hook)?)
    }

    fn into_config(self) -> Result<(primary::Config, Option<primary::EventHook>), Error> {
        if self.workers == 0 {
            return Err(Error::Config("workers must be at least 1".into()));
        }
        if self.handoff_window == 0 {
            return Err(Error::Config("handoff window must be at least 1".into()));
        }
        let exe = std::env::current_exe()
            .map_err(|e| Error::Config(format!("cannot find own executable: {e}")))?;
        let args = self
            .args
            .unwrap_or_else(|| std::env::args_os().skip(1).collect());
        let spawner = primary::Spawner {
            exe,
            args,
            env: self.env,
            report_closes: self.policy.needs_close_reports(),
        };
        let config = primary::Config {
            workers: self.workers,
            addr: self.addr,
            policy: self.policy,
            shutdown_timeout: self.shutdown_timeout,
            handoff_window: self.handoff_window,
            max_pending: self.max_pending.max(1),
            spawner,
        };
        Ok((config, self.hook))
    }
}
