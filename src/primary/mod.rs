//! The primary process: owns the listening socket(s), the worker table, the policy and the
//! signals. It never parses HTTP.
//!
//! This file is the loop: wait for readiness or a timer, and pass each event to the part that
//! owns it:
//! - [`accept`]: the listener and the connections waiting for a worker;
//! - `handoff`: the policy's pick and the handoff of waiting connections;
//! - `adopt`: under `reuseport`, accepting on a dead worker's socket until it is back;
//! - `messages`: what workers say on their channels, and what is sent to them;
//! - `supervise`: spawning, reaping, restarting with backoff, disconnecting, shutdown;
//! - `reload`: the rolling reload on `SIGHUP`;
//! - `upgrade`: replacing the primary itself on `SIGUSR1`;
//! - `service`: the pid file and service-manager notifications;
//! - `watchdog`: workers that leave their channel unread (`--worker-timeout`);
//! - `report`: the statistics table (`SIGUSR2`, and at exit);
//! - `control`: what user code asks through [`Control`], and the events it is told;
//! - `operate`: the control socket's requests (`herd status / reload / scale / stop`);
//! - `observe`: the metrics endpoint (`--metrics`) and the counters it shows;
//! - `scale`: changing the number of workers at runtime;
//! - `workers`: the worker table; `spawn`: how a worker process is started.

mod accept;
mod adopt;
mod control;
mod events;
mod handoff;
mod leave;
mod messages;
mod node;
mod node_pace;
mod observe;
mod operate;
mod reload;
mod report;
mod scale;
mod service;
mod spawn;
mod supervise;
mod upgrade;
mod watchdog;
mod workers;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Poll, Token};
use nix::sys::signal::Signal;

use crate::activation::InheritError;
use crate::listen::ListenError;
use crate::notify::Notifier;
use crate::pidfile::PidFileError;
use crate::policy::{Balancer, Load, Policy};
use crate::privilege::{Credentials, PrivilegeError};
use crate::signals::Signals;
use accept::{Acceptor, LISTENER};
pub use control::{Control, EventHook};
pub use events::Events;
pub use spawn::{NodeCommand, Spawner, WorkerSched};
use workers::{ProcKey, Workers};

const SIGNALS: Token = Token(1);

/// Everything the primary needs to run a cluster.
#[derive(Debug, Clone)]
pub struct Config {
    /// Number of worker processes.
    pub workers: usize,
    /// Address to listen on (port 0: an ephemeral port).
    pub addr: SocketAddr,
    /// Scheduling policy.
    pub policy: Policy,
    /// Time workers get to finish in-flight requests on shutdown before they are killed.
    pub shutdown_timeout: Duration,
    /// Connections a worker may hold unacked (primary-accepts policies).
    pub handoff_window: usize,
    /// Accepted connections waiting for a worker before the primary stops accepting.
    pub max_pending: usize,
    /// A worker that leaves its channel unread this long gets nothing new (and what it never
    /// read goes to the others); after six times as long it is killed and replaced.
    pub worker_timeout: Duration,
    /// Accept a connection only once the client has sent data, waiting at most about this
    /// long (`TCP_DEFER_ACCEPT`).
    pub defer_accept: Option<Duration>,
    /// On `SIGTERM`, the time the host goes on serving while it tells health checks it leaves.
    pub drain_delay: Duration,
    /// How workers are started.
    pub spawner: Spawner,
    /// The control socket (`herd status / reload / scale / stop`).
    pub control: crate::admin::ControlSocket,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics: Option<SocketAddr>,
    /// A worker not online this long after it started is reported (once).
    pub start_timeout: Duration,
    /// Run as this user (and group) once the listeners are bound.
    pub credentials: Option<Credentials>,
    /// Where to write the primary's pid once it listens.
    pub pid_file: Option<std::path::PathBuf>,
    /// The primary's own arguments, for the new primary an upgrade starts.
    pub primary_args: Vec<std::ffi::OsString>,
    /// How long the new primary of an upgrade may take to have every worker online.
    pub upgrade_timeout: Duration,
}

/// Why the primary could not run.
#[derive(Debug, thiserror::Error)]
pub enum PrimaryError {
    /// The listening socket could not be created.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The event loop, signals or process management failed.
    #[error("primary: {0}")]
    Io(#[from] io::Error),
    /// The control socket asked for could not be opened.
    #[error(transparent)]
    Control(#[from] crate::admin::server::ControlError),
    /// The metrics endpoint could not be opened.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::endpoint::MetricsError),
    /// Inherited listening sockets (socket activation, upgrade) cannot be used.
    #[error(transparent)]
    Inherit(#[from] InheritError),
    /// The user or group to run as cannot be used.
    #[error(transparent)]
    Privilege(#[from] PrivilegeError),
    /// The pid file cannot be written.
    #[error(transparent)]
    PidFile(#[from] PidFileError),
}

/// Where the cluster is in its life, beyond the workers themselves.
#[derive(Debug, Default)]
struct Phase {
    /// The `listening on` line was printed.
    announced: bool,
    /// A graceful shutdown is running; workers are killed at this time.
    shutdown_deadline: Option<Instant>,
    reload: Option<reload::Reload>,
    /// A statistics table was asked for and is not printed yet: it is printed once every
    /// worker answered, or at this time with what came.
    stats_wanted: Option<Instant>,
    /// When the watchdog last looked.
    last_watch: Option<Instant>,
    /// The host is leaving (drain delay); the shutdown starts at this time.
    leave_at: Option<Instant>,
    /// Connections wait for room in the workers' windows: their reads wake the loop.
    watching_reads: bool,
    /// When to look again at workers whose page lags behind what they read.
    room_retry: Option<Instant>,
    /// An upgrade of the primary in progress (this is the old primary).
    upgrade: Option<upgrade::Upgrade>,
    /// This primary handed the service to a new one and is draining.
    handed_over: bool,
    /// The new primary, once it took over (a child of this process until it exits), with the
    /// link that passes it the connections that come back here while this one drains.
    successor: Option<upgrade::Successor>,
    /// Connections accepted at the last status line, and when.
    last_rate: Option<(u64, Instant)>,
    /// Connections accepted in total when the loop last went to wait.
    accepted_at_wait: u64,
}

/// The primary process's state.
pub struct Primary {
    poll: Poll,
    config: Config,
    acceptor: Acceptor,
    /// Listeners handed to workers (workers-accept policies); the primary keeps them open.
    listeners_for_workers: Vec<std::net::TcpListener>,
    /// Picks a worker for each connection the primary accepted (for workers-accept policies,
    /// the ones it accepts on a dead worker's socket: round-robin).
    balancer: Box<dyn Balancer>,
    /// Slots whose listener the primary accepts on while they have no worker (reuseport).
    adopted: Vec<workers::SlotIndex>,
    /// Scratch space for the balancer's view of the workers.
    loads: Vec<Option<Load>>,
    workers: Workers,
    local_addr: SocketAddr,
    phase: Phase,
    hooks: control::Hooks,
    /// The control socket and the answers that wait.
    admin: operate::Admin,
    /// The servers Node workers asked for (`herd run`).
    node: node::Servers,
    /// Blocks the handled signals while the primary runs; `None` once it has finished, which
    /// restores the thread's previous mask.
    signals: Option<Signals>,
    /// Service-manager notifications (`NOTIFY_SOCKET`).
    notifier: Notifier,
    /// Set when this primary was started by an upgrade: the link to the one it replaces.
    predecessor: Option<upgrade::Predecessor>,
    /// idle-first with herd's own workers: the queue every worker takes from when none is
    /// idle.
    overflow: Option<crate::ipc::Overflow>,
}

impl Primary {
    /// Binds the listener(s) (or takes inherited ones), drops privileges if asked, and prepares
    /// the loop; no worker is started yet. Binding comes first: a port in use fails before
    /// anything about the process (its signal mask) changes.
    pub fn new(mut config: Config, hook: Option<EventHook>) -> Result<Primary, PrimaryError> {
        let (bound, link) = service::listeners(&config)?;
        if config.spawner.node.is_some() {
            // Node apps find their port in PORT (herd's, the real one when 0 was asked for).
            let port = bound.local_addr.port().to_string();
            config.spawner.env.push(("PORT".into(), port.into()));
        }
        let poll = Poll::new()?;
        let mut acceptor = Acceptor::new(bound.accept, config.max_pending, poll.registry())?;
        let predecessor = match link {
            Some(link) => {
                acceptor.hold(poll.registry());
                Some(upgrade::Predecessor::new(link, poll.registry())?)
            }
            None => None,
        };
        crate::sys::ignore_sigpipe();
        let signals = Signals::new(&[
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
            Signal::SIGCHLD,
            Signal::SIGTTIN,
            Signal::SIGTTOU,
        ])?;
        poll.registry().register(
            &mut SourceFd(&signals.raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;
        let balancer = config
            .policy
            .balancer()
            .unwrap_or_else(|| Box::new(crate::policy::RoundRobin::default()));
        let overflow = (balancer.overflow() && config.spawner.node.is_none())
            .then(crate::ipc::Overflow::new)
            .transpose()?;
        let mut primary = Primary {
            poll,
            acceptor,
            listeners_for_workers: bound.handed,
            balancer,
            adopted: Vec::new(),
            loads: Vec::with_capacity(config.workers),
            workers: Workers::new(config.workers),
            local_addr: bound.local_addr,
            phase: Phase::default(),
            hooks: control::Hooks {
                hook,
                control: Control::default(),
            },
            admin: operate::Admin::default(),
            node: node::Servers::default(),
            signals: Some(signals),
            notifier: {
                let mut n = Notifier::from_env();
                if predecessor.is_some() {
                    n.quiet_until_ready();
                }
                n
            },
            predecessor,
            overflow,
            config,
        };
        // A new primary of an upgrade opens its control socket and metrics endpoint when it
        // takes over: until then the old primary has them.
        if primary.predecessor.is_none() {
            primary.open_admin()?;
        }
        Ok(primary)
    }

    /// The address actually bound (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts the workers and runs until a graceful shutdown completes.
    pub fn run(mut self) -> Result<(), PrimaryError> {
        self.start();
        let mut events = mio::Events::with_capacity(1024);
        while !self.turn(&mut events)? {}
        self.finish();
        Ok(())
    }

    /// Starts every worker.
    pub(crate) fn start(&mut self) {
        log::info!(
            "primary {} is running ({} policy)",
            std::process::id(),
            self.config.policy
        );
        for i in self.workers.indices().collect::<Vec<_>>() {
            let key = self.spawn(i);
            self.workers.slot_mut(i).current = key;
        }
    }

    /// One turn of the loop: carries out pending commands, waits for readiness or a timer and
    /// handles what came. Returns `true` once a graceful shutdown has completed.
    pub(crate) fn turn(&mut self, events: &mut mio::Events) -> Result<bool, PrimaryError> {
        self.apply_control();
        if self.finished() {
            return Ok(true);
        }
        let pace = self.pace_before_poll();
        let timeout = self
            .next_timer()
            .into_iter()
            .chain(pace)
            .min()
            .map(|t| t.saturating_duration_since(Instant::now()));
        self.make_way(timeout);
        if let Err(e) = self.poll.poll(events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e.into());
            }
        }
        for ev in events.iter() {
            match ev.token() {
                LISTENER => self.acceptor.accept(self.poll.registry()),
                SIGNALS => self.on_signals(),
                token if self.admin_owns(token) => self.on_admin(token),
                upgrade::SUCCESSOR => self.read_successor(),
                upgrade::PREDECESSOR => self.read_predecessor(),
                token if adopt::slot_of(token, self.workers.slots().len()).is_some() => {
                    if let Some(i) = adopt::slot_of(token, self.workers.slots().len()) {
                        self.accept_adopted(i);
                    }
                }
                token => {
                    let Some(key) = ProcKey::from_token(token) else {
                        continue;
                    };
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        self.read_worker(key);
                    }
                    if ev.is_writable() {
                        self.flush(key);
                    }
                }
            }
        }
        self.pace_after_poll();
        self.dispatch();
        self.timers();
        self.apply_control();
        Ok(self.finished())
    }

    /// True while a graceful shutdown runs.
    fn stopping(&self) -> bool {
        self.phase.shutdown_deadline.is_some()
    }

    fn finished(&self) -> bool {
        self.stopping() && self.workers.no_procs()
    }

    /// Logs the final statistics and restores the signal mask.
    pub(crate) fn finish(&mut self) {
        let unserved = self.acceptor.drop_waiting();
        if unserved > 0 {
            log::warn!("{unserved} accepted connections were closed unserved at exit");
        }
        log::info!("{}", report::table(&self.workers, self.config.policy));
        log::info!("primary {} exiting", std::process::id());
        self.close_admin();
        self.remove_pid_file();
        self.signals = None;
    }

    fn next_timer(&self) -> Option<Instant> {
        let respawns = self.workers.slots().iter().filter_map(|s| s.respawn_at);
        let cooling = self.workers.procs().filter_map(|(_, p)| p.cool_until);
        let reload = self.phase.reload.as_ref().and_then(|r| r.deadline());
        respawns
            .chain(cooling)
            .chain(self.next_watch())
            .chain(self.phase.stats_wanted)
            .chain(self.phase.shutdown_deadline)
            .chain(self.phase.leave_at)
            .chain(reload)
            .chain(self.admin_timer())
            .chain(self.next_start_check())
            .chain(self.phase.upgrade.as_ref().map(|u| u.deadline()))
            .chain(self.notifier.next_due())
            .chain(self.acceptor.retry_at())
            .chain(self.phase.room_retry)
            .min()
    }

    fn timers(&mut self) {
        let now = Instant::now();
        self.respawn_due(now);
        let mut cooled = false;
        for (_, p) in self.workers.procs_mut() {
            if p.cool_until.is_some_and(|t| t <= now) {
                p.cool_until = None;
                cooled = true;
            }
        }
        let room = self.phase.room_retry.is_some_and(|t| t <= now);
        if self.acceptor.retry_due(now) || cooled || room {
            self.dispatch();
        }
        self.step_reload(now);
        self.leave_due(now);
        self.report_slow_starts(now);
        self.watch_upgrade(now);
        self.service_tick(now);
        self.watch(now);
        if self.phase.stats_wanted.is_some_and(|t| t <= now) {
            self.print_report();
        }
        self.admin_due(now);
        if self.phase.shutdown_deadline.is_some_and(|d| d <= now) {
            self.kill_all("the shutdown timeout passed");
        }
    }

    fn on_signals(&mut self) {
        let pending = match self.signals.as_mut() {
            Some(s) => s.pending(),
            None => return,
        };
        for sig in pending {
            match sig {
                Signal::SIGCHLD => {
                    self.reap();
                    self.watch_upgrade(Instant::now());
                }
                Signal::SIGINT | Signal::SIGTERM => self.stop_signal(),
                Signal::SIGHUP => self.begin_reload(),
                Signal::SIGUSR1 => self.begin_upgrade(),
                Signal::SIGUSR2 => self.request_stats(),
                Signal::SIGTTIN => self.scale_by_signal(crate::admin::Scale::Up(1)),
                Signal::SIGTTOU => self.scale_by_signal(crate::admin::Scale::Down(1)),
                _ => {}
            }
        }
    }
}
