//! The [`Cluster`] builder: one call that supervises in the primary and serves in a worker.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use crate::{admin, primary, privilege, worker};
use crate::{
    is_worker, Control, Error, Event, Events, Handler, Policy, PrimaryError, WorkerSched,
    DEFAULT_HANDOFF_WINDOW, DEFAULT_MAX_PENDING, DEFAULT_START_TIMEOUT, DEFAULT_UPGRADE_TIMEOUT,
    DEFAULT_WORKER_TIMEOUT,
};

/// Builds and runs a cluster: the same call supervises in the primary and serves in a worker.
pub struct Cluster {
    workers: usize,
    addr: SocketAddr,
    policy: Policy,
    shutdown_timeout: Duration,
    handoff_window: usize,
    max_pending: usize,
    worker_timeout: Duration,
    defer_accept: Option<Duration>,
    max_connections: usize,
    proxy_header: Option<Duration>,
    drain_delay: Duration,
    args: Option<Vec<OsString>>,
    env: Vec<(OsString, OsString)>,
    hook: Option<primary::EventHook>,
    control: admin::ControlSocket,
    metrics: Option<SocketAddr>,
    max_requests: (u64, u64),
    node: Option<primary::NodeCommand>,
    start_timeout: Duration,
    service: Service,
    worker_sched: WorkerSched,
}

/// Settings for running as a system service (issue 15).
#[derive(Debug, Default)]
struct Service {
    user: Option<String>,
    group: Option<String>,
    pid_file: Option<std::path::PathBuf>,
    upgrade_timeout: Option<Duration>,
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
            worker_timeout: DEFAULT_WORKER_TIMEOUT,
            defer_accept: None,
            max_connections: 0,
            proxy_header: None,
            drain_delay: Duration::ZERO,
            args: None,
            env: Vec::new(),
            hook: None,
            control: admin::ControlSocket::Off,
            metrics: None,
            max_requests: (0, 0),
            node: None,
            start_timeout: DEFAULT_START_TIMEOUT,
            service: Service::default(),
            worker_sched: WorkerSched::Normal,
        }
    }

    /// Replaces a worker gracefully (as a reload does, with no failed request) after it has
    /// served `n` requests plus a random `0..=jitter` more, so that a leak in user code stays
    /// bounded and workers are not all replaced at once (gunicorn's `max_requests` and
    /// `max_requests_jitter`). `0`: never (the default).
    pub fn max_requests_per_worker(mut self, n: u64, jitter: u64) -> Self {
        self.max_requests = (n, jitter);
        self
    }

    /// Serves Prometheus metrics (`GET /metrics`) on `addr` from the primary (off by
    /// default); see [`crate::metrics`] for what it shows.
    pub fn metrics(mut self, addr: Option<SocketAddr>) -> Self {
        self.metrics = addr;
        self
    }

    /// The control socket that `herd status / reload / scale / stop` talk to (off by
    /// default in the library; `herd serve` opens it at [`admin::socket_path`]).
    pub fn control_socket(mut self, at: admin::ControlSocket) -> Self {
        self.control = at;
        self
    }

    /// How the kernel schedules the workers (default [`WorkerSched::Normal`]); the primary's
    /// own policy is left as it is.
    pub fn worker_sched(mut self, sched: WorkerSched) -> Self {
        self.worker_sched = sched;
        self
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

    /// A worker that leaves what it was sent unread this long (stopped, deadlocked, stuck in a
    /// handler) is marked unresponsive: it gets no new connections, and the ones it never read
    /// go to the others. After six times as long it is killed and replaced. Default 5 s.
    pub fn worker_timeout(mut self, d: Duration) -> Self {
        self.worker_timeout = d;
        self
    }

    /// Hand a connection over only once the client has sent its first bytes, waiting at most
    /// about `within` (`TCP_DEFER_ACCEPT`, nginx's `deferred`; the kernel rounds up to its
    /// SYN-ACK retransmission times). Right for HTTP, where the client speaks first: the worker
    /// finds the request waiting and serves it in the turn it takes the socket, and silent
    /// connections never reach a worker. Wrong for protocols where the server speaks first.
    /// Off (`None`) by default; `herd serve` uses its header timeout.
    pub fn defer_accept(mut self, within: Option<Duration>) -> Self {
        self.defer_accept = within;
        self
    }

    /// Most connections one worker serves at once (0: no limit). A worker at its limit takes
    /// nothing new: the primary routes connections to other workers, or the kernel's backlog
    /// holds them; none is accepted and dropped.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Expect every connection to open with a PROXY protocol header (v1 or v2, as HAProxy's
    /// `send-proxy` / `send-proxy-v2` send), complete within `within` of its arrival. The
    /// worker reads it before the handler sees the connection, and the client it names is what
    /// [`crate::Context::peer_addr`] returns. A connection without a valid header in time is closed
    /// without a byte sent and counted, never served as if it were direct. `None` (the
    /// default): no header is expected.
    pub fn proxy_protocol(mut self, within: Option<Duration>) -> Self {
        self.proxy_header = within;
        self
    }

    /// On `SIGTERM` (or `SIGINT`), first tell the workers the host is leaving
    /// ([`crate::Context::leaving`]: `/healthz` answers `503`, answers say `Connection: close`) and go on
    /// accepting and serving for `delay`, so that a balancer's health checks see it go before
    /// it stops accepting; then shut down as usual. A second signal skips what is left of the
    /// delay. Default zero: shut down at once.
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
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

    /// Workers are `program args...` speaking Node's cluster protocol (an unmodified Node.js
    /// app on `node:cluster`, as `herd run` starts them) instead of this program: each starts
    /// with its channel at fd 3, `NODE_UNIQUE_ID`, `NODE_CHANNEL_FD=3`,
    /// `NODE_CHANNEL_SERIALIZATION_MODE=json` and `PORT` (the port bound). Its
    /// `process.send(msg)` arrives as [`Event::Message`] (the JSON text), and
    /// [`Control::send`] of JSON text arrives as `process.on('message')`. Run such a cluster
    /// with [`Cluster::bind`] and `run`, or [`Cluster::events`].
    ///
    /// ```no_run
    /// fn main() -> Result<(), herd::Error> {
    ///     herd::Cluster::new().workers(2).port(3000).node_workers("node", ["app.js"]).bind()?.run()?;
    ///     Ok(())
    /// }
    /// ```
    pub fn node_workers<I: IntoIterator<Item = S>, S: Into<OsString>>(
        mut self,
        program: impl Into<OsString>,
        args: I,
    ) -> Self {
        self.node = Some(primary::NodeCommand {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
        });
        self
    }

    /// A worker that has not come online (a Node worker: not sent `listening`) this long after
    /// it started is reported at error level, once. Default 30 s.
    pub fn start_timeout(mut self, d: Duration) -> Self {
        self.start_timeout = d;
        self
    }

    /// Runs every process as `user` once the listeners are bound (bind port 80 as root, then
    /// serve as `user`); its primary group unless [`Cluster::group`] names one. An unknown user
    /// is an error before anything is bound.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.service.user = Some(user.into());
        self
    }

    /// The group to run as, with [`Cluster::user`].
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.service.group = Some(group.into());
        self
    }

    /// Writes the primary's pid to `path` once it listens (a new primary rewrites it after an
    /// upgrade) and removes it on exit.
    pub fn pid_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.service.pid_file = Some(path.into());
        self
    }

    /// How long the new primary of an upgrade (`SIGUSR1`, [`Control::upgrade`]) may take to
    /// have every worker online before the old one gives up on it and keeps serving (30 s).
    pub fn upgrade_timeout(mut self, d: Duration) -> Self {
        self.service.upgrade_timeout = Some(d);
        self
    }

    /// Calls `hook` in the primary for every lifecycle event; it can send messages to workers,
    /// disconnect or kill them, or stop the cluster through [`Control`].
    ///
    /// The hook runs on the primary's loop: keep it short.
    ///
    /// ```no_run
    /// use herd::{Cluster, Event, http::HttpHandler};
    ///
    /// fn main() -> Result<(), herd::Error> {
    ///     Cluster::new()
    ///         .workers(2)
    ///         .on_event(|event, control| {
    ///             println!("{event}");
    ///             if let Event::Online { id, .. } = event {
    ///                 if let Err(e) = control.send(*id, "hello") {
    ///                     eprintln!("{e}");
    ///                 }
    ///             }
    ///         })
    ///         .run(HttpHandler::default)
    /// }
    /// ```
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
    /// address first (`Primary::local_addr`). In a worker: [`Error::NotPrimary`].
    pub fn bind(self) -> Result<primary::Primary, Error> {
        if is_worker() {
            return Err(Error::NotPrimary);
        }
        let (config, hook) = self.into_config()?;
        Ok(primary::Primary::new(config, hook)?)
    }

    /// Binds and returns the primary's events as an iterator; the cluster runs while it is
    /// iterated (see [`Events`]). A hook set with [`Cluster::on_event`] still sees every event
    /// first. In a worker: [`Error::NotPrimary`]; workers call [`Cluster::run`], as in Node's
    /// `if (cluster.isPrimary) { ... } else { ... }`.
    ///
    /// Call it from `main` before starting other threads: the primary blocks the signals it
    /// handles (`SIGINT`, `SIGTERM`, `SIGHUP`, `SIGUSR1`, `SIGUSR2`, `SIGCHLD`, and
    /// `SIGTTIN`/`SIGTTOU`, which add or remove a worker) on this thread, and only threads
    /// started afterwards inherit that.
    pub fn events(mut self) -> Result<Events, Error> {
        let queue: Rc<RefCell<VecDeque<Event>>> = Rc::default();
        let sink = queue.clone();
        let mut user = self.hook.take();
        self.hook = Some(Box::new(move |event: &Event, control: &mut Control| {
            if let Some(hook) = user.as_mut() {
                hook(event, control);
            }
            sink.borrow_mut().push_back(event.clone());
        }));
        Ok(Events::new(self.bind()?, queue))
    }

    pub(crate) fn into_config(
        self,
    ) -> Result<(primary::Config, Option<primary::EventHook>), Error> {
        if self.workers == 0 {
            return Err(Error::Config("workers must be at least 1".into()));
        }
        if self.handoff_window == 0 {
            return Err(Error::Config("handoff window must be at least 1".into()));
        }
        let exe = std::env::current_exe()
            .map_err(|e| Error::Config(format!("cannot find own executable: {e}")))?;
        let primary_args: Vec<OsString> = std::env::args_os().skip(1).collect();
        let args = self.args.unwrap_or_else(|| primary_args.clone());
        let credentials = match (&self.service.user, &self.service.group) {
            (Some(u), g) => {
                Some(privilege::Credentials::resolve(u, g.as_deref()).map_err(PrimaryError::from)?)
            }
            (None, Some(_)) => return Err(Error::Config("a group needs a user (--user)".into())),
            (None, None) => None,
        };
        let spawner = primary::Spawner {
            exe,
            args,
            env: self.env,
            report_closes: self.policy.needs_close_reports(),
            orphan_grace: self.shutdown_timeout,
            max_connections: self.max_connections,
            proxy_header: self.proxy_header,
            leave_on_term: !self.drain_delay.is_zero(),
            max_requests: self.max_requests.0,
            max_requests_jitter: self.max_requests.1,
            node: self.node,
            sched: self.worker_sched,
        };
        let config = primary::Config {
            workers: self.workers,
            addr: self.addr,
            policy: self.policy,
            shutdown_timeout: self.shutdown_timeout,
            handoff_window: self.handoff_window,
            max_pending: self.max_pending.max(1),
            worker_timeout: self.worker_timeout.max(Duration::from_millis(1)),
            start_timeout: self.start_timeout,
            defer_accept: self.defer_accept,
            drain_delay: self.drain_delay,
            spawner,
            control: self.control,
            metrics: self.metrics,
            credentials,
            pid_file: self.service.pid_file,
            primary_args,
            upgrade_timeout: self
                .service
                .upgrade_timeout
                .unwrap_or(DEFAULT_UPGRADE_TIMEOUT),
        };
        Ok((config, self.hook))
    }
}
