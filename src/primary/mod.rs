//! The primary process: owns the listening socket(s), the worker table, the policy and the
//! signals. It never parses HTTP.
//!
//! Its loop: accept until `WouldBlock`, ask the policy for a worker, queue the socket on that
//! worker's channel and send it, read acks and messages, reap children, respawn with backoff,
//! handle signals (`SIGTERM`/`SIGINT` graceful stop, `SIGHUP` rolling reload, `SIGUSR2` stats).

mod report;
mod slot;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;
use slab::Slab;

use crate::event::{Event, WorkerInfo, WorkerState};
use crate::ipc::{IpcError, ToPrimary, ToWorker};
use crate::listen::{self, ListenError};
use crate::policy::{Balancer, ListenerPlan, Load, Policy};
use crate::signals::{self, Signals};
pub use slot::{backoff, Spawner};
use slot::{Out, Proc, Slot, State};

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const FIRST_WORKER: usize = 2;
/// How long a new worker may take to come online during a reload.
const RELOAD_ONLINE_DEADLINE: Duration = Duration::from_secs(10);
/// How long the listener rests after an accept error such as EMFILE.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Consecutive quick deaths after which a slot is reported as crash-looping.
const CRASH_LOOP: u32 = 5;

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
    /// Accept a connection only once the client has sent data, waiting at most about this
    /// long (`TCP_DEFER_ACCEPT`).
    pub defer_accept: Option<Duration>,
    /// How workers are started.
    pub spawner: Spawner,
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
}

/// Called for every lifecycle event; may queue messages and commands through [`Control`].
pub type EventHook = Box<dyn FnMut(&Event, &mut Control)>;

/// One command given through [`Control`], carried out in the order given.
#[derive(Debug)]
enum Command {
    /// An encoded [`ToWorker::Message`] packet for worker `id`.
    Send(usize, Vec<u8>),
    Disconnect(usize),
    Kill(usize, Signal),
    Shutdown,
}

/// Commands an event hook gives the primary, and a view of the workers as of the event.
///
/// Commands are carried out in the order given, right after the hook (or, with
/// [`crate::event::Events`], before the loop waits again).
#[derive(Debug, Default)]
pub struct Control {
    commands: Vec<Command>,
    workers: Vec<WorkerInfo>,
}

impl Control {
    /// Sends `payload` to worker `id`, where it arrives as `Handler::message`, in order and in
    /// one piece (Node's `worker.send`).
    ///
    /// A payload larger than [`crate::ipc::MAX_MESSAGE`] is refused with
    /// [`IpcError::TooLarge`] and nothing is sent. A message for a worker that is dead by the
    /// time it is carried out is dropped (and logged): watch for `exit` events, or
    /// [`Control::is_dead`].
    pub fn send(&mut self, id: usize, payload: impl Into<Vec<u8>>) -> Result<(), IpcError> {
        let packet = ToWorker::Message(payload.into()).encode()?;
        self.commands.push(Command::Send(id, packet));
        Ok(())
    }

    /// Asks worker `id` to finish its work and exit; it is not replaced, and its `exit` event
    /// has `exited_after_disconnect: true` (Node's `worker.disconnect()`).
    pub fn disconnect(&mut self, id: usize) {
        self.commands.push(Command::Disconnect(id));
    }

    /// Sends `signal` to worker `id`'s process (Node's `worker.process.kill(signal)`).
    ///
    /// If the signal ends it, that counts as a crash (`exited_after_disconnect: false`) and the
    /// worker is replaced. For Node's `worker.kill()`, call [`Control::disconnect`] first.
    pub fn kill(&mut self, id: usize, signal: Signal) {
        self.commands.push(Command::Kill(id, signal));
    }

    /// Stops the whole cluster gracefully, as `SIGTERM` does: every worker is disconnected and
    /// the primary returns once they have exited (Node's `cluster.disconnect()`). Asking again
    /// while the cluster is stopping changes nothing.
    pub fn shutdown(&mut self) {
        self.commands.push(Command::Shutdown);
    }

    /// Every worker slot, in id order, as of the current event.
    pub fn workers(&self) -> &[WorkerInfo] {
        &self.workers
    }

    /// Worker `id` as of the current event, if there is such a slot.
    pub fn worker(&self, id: usize) -> Option<&WorkerInfo> {
        self.workers.iter().find(|w| w.id == id)
    }

    /// True when worker `id` has no live process (Node's `worker.isDead()`); also true for an
    /// id that names no slot.
    pub fn is_dead(&self, id: usize) -> bool {
        self.worker(id).is_none_or(|w| w.state == WorkerState::Dead)
    }
}

/// A rolling reload in progress: slots still to replace, and the replacement being started.
#[derive(Debug)]
struct Reload {
    todo: VecDeque<usize>,
    /// Slot being replaced, the new process's key, and its online deadline.
    current: Option<(usize, usize, Instant)>,
}

/// The primary process's state.
pub struct Primary {
    poll: Poll,
    signals: Signals,
    config: Config,
    balancer: Option<Box<dyn Balancer>>,
    listener: Option<TcpListener>,
    /// Listeners handed to workers (workers-accept policies); the primary keeps them open.
    held: Vec<std::net::TcpListener>,
    listener_paused: bool,
    /// After an accept error (EMFILE, ENOBUFS, ...): do not try again before this.
    accept_retry_at: Option<Instant>,
    backlog: VecDeque<(u64, TcpStream)>,
    next_conn: u64,
    slots: Vec<Slot>,
    /// Every worker process alive (current, retired, or being started by a reload).
    procs: Slab<Proc>,
    loads: Vec<Option<Load>>,
    local_addr: SocketAddr,
    announced: bool,
    shutdown_deadline: Option<Instant>,
    reload: Option<Reload>,
    stats_wanted: bool,
    hook: Option<EventHook>,
    control: Control,
}

impl Primary {
    /// Binds the listener(s) and prepares the loop; no worker is started yet.
    pub fn new(config: Config, hook: Option<EventHook>) -> Result<Primary, PrimaryError> {
        signals::ignore_sigpipe();
        let poll = Poll::new()?;
        let signals = Signals::new(&[
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGUSR2,
            Signal::SIGCHLD,
        ])?;
        poll.registry().register(
            &mut SourceFd(&signals.raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;
        let (listener, held) = match config.policy.listener_plan() {
            None => {
                let std_l = listen::bind_listener(config.addr, false)?;
                let mut l = TcpListener::from_std(std_l);
                poll.registry()
                    .register(&mut l, LISTENER, Interest::READABLE)?;
                (Some(l), Vec::new())
            }
            Some(ListenerPlan::Shared) => (None, vec![listen::bind_listener(config.addr, false)?]),
            Some(ListenerPlan::PerWorker) => {
                (None, listen::bind_group(config.addr, config.workers)?)
            }
        };
        if let Some(within) = config.defer_accept {
            let secs = within.as_secs_f64().ceil().clamp(1.0, i32::MAX as f64) as i32;
            use std::os::fd::AsFd;
            let fds = listener
                .iter()
                .map(|l| l.as_fd())
                .chain(held.iter().map(|l| l.as_fd()));
            for fd in fds {
                if let Err(e) = listen::defer_accept(fd, secs) {
                    log::warn!("TCP_DEFER_ACCEPT not available: {e}");
                }
            }
        }
        let local_addr = match (&listener, held.first()) {
            (Some(l), _) => l.local_addr()?,
            (None, Some(l)) => l.local_addr()?,
            (None, None) => config.addr,
        };
        Ok(Primary {
            poll,
            signals,
            balancer: config.policy.balancer(),
            listener,
            held,
            listener_paused: false,
            accept_retry_at: None,
            backlog: VecDeque::new(),
            next_conn: 0,
            slots: (1..=config.workers).map(Slot::new).collect(),
            procs: Slab::new(),
            loads: Vec::with_capacity(config.workers),
            local_addr,
            announced: false,
            shutdown_deadline: None,
            reload: None,
            stats_wanted: false,
            hook,
            control: Control::default(),
            config,
        })
    }

    /// The address actually bound (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts the workers and runs until a graceful shutdown completes.
    pub fn run(mut self) -> Result<(), PrimaryError> {
        self.start();
        let mut events = Events::with_capacity(1024);
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
        for i in 0..self.slots.len() {
            if let Some(key) = self.spawn(i) {
                self.slots[i].current = Some(key);
            }
        }
    }

    /// One turn of the loop: carries out pending commands, waits for readiness or a timer and
    /// handles what came. Returns `true` once a graceful shutdown has completed.
    pub(crate) fn turn(&mut self, events: &mut Events) -> Result<bool, PrimaryError> {
        self.apply_control();
        if self.finished() {
            return Ok(true);
        }
        let timeout = self
            .next_timer()
            .map(|t| t.saturating_duration_since(Instant::now()));
        if let Err(e) = self.poll.poll(events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e.into());
            }
        }
        for ev in events.iter() {
            match ev.token() {
                LISTENER => self.accept(),
                SIGNALS => self.on_signals(),
                Token(t) => {
                    let key = t - FIRST_WORKER;
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        self.read_worker(key);
                    }
                    if ev.is_writable() {
                        self.flush(key);
                    }
                }
            }
        }
        self.dispatch();
        self.timers();
        self.apply_control();
        Ok(self.finished())
    }

    fn finished(&self) -> bool {
        self.shutdown_deadline.is_some() && self.procs.is_empty()
    }

    /// Logs the final statistics.
    pub(crate) fn finish(&mut self) {
        log::info!(
            "{}",
            report::table(&self.slots, &self.procs, self.config.policy)
        );
        log::info!("primary {} exiting", std::process::id());
    }

    /// The commands queue, with its view of the workers brought up to date.
    pub(crate) fn control(&mut self) -> &mut Control {
        self.refresh_view();
        &mut self.control
    }

    fn next_timer(&self) -> Option<Instant> {
        let respawns = self.slots.iter().filter_map(|s| s.respawn_at);
        let reload = self.reload.as_ref().and_then(|r| r.current.map(|c| c.2));
        respawns
            .chain(self.shutdown_deadline)
            .chain(reload)
            .chain(self.accept_retry_at)
            .min()
    }

    fn emit(&mut self, event: Event) {
        log::debug!("event: {event}");
        if self.hook.is_some() {
            self.refresh_view();
        }
        if let Some(hook) = self.hook.as_mut() {
            hook(&event, &mut self.control);
        }
    }

    /// Rebuilds the workers' view that [`Control`] shows.
    fn refresh_view(&mut self) {
        let view = &mut self.control.workers;
        view.clear();
        view.extend(self.slots.iter().map(
            |slot| match slot.current.and_then(|k| self.procs.get(k)) {
                Some(p) => WorkerInfo {
                    id: slot.id,
                    pid: Some(p.pid),
                    state: match p.state {
                        State::Starting => WorkerState::Starting,
                        State::Online => WorkerState::Online,
                        State::Disconnecting => WorkerState::Disconnecting,
                    },
                    connected: !p.channel_closed,
                },
                None => WorkerInfo {
                    id: slot.id,
                    pid: None,
                    state: WorkerState::Dead,
                    connected: false,
                },
            },
        ));
    }

    /// Carries out what the event hook asked for, in order, including what it asks while
    /// these commands run (they can cause events too).
    fn apply_control(&mut self) {
        loop {
            let commands = std::mem::take(&mut self.control.commands);
            if commands.is_empty() {
                return;
            }
            for c in commands {
                match c {
                    Command::Send(id, packet) => match self.current(id) {
                        Some(key) => {
                            let p = &mut self.procs[key];
                            let idle = p.out.is_empty();
                            p.out.push_back(Out::Packet(packet));
                            // Something already waiting means the channel is full: the
                            // writable event flushes, and trying now would only fail again.
                            if idle {
                                self.flush(key);
                            }
                        }
                        None => log::warn!("message for worker {id} dropped: it is not running"),
                    },
                    Command::Disconnect(id) => {
                        if let Some(key) = self.current(id) {
                            self.disconnect(key);
                        }
                    }
                    Command::Kill(id, sig) => {
                        if let Some(key) = self.current(id) {
                            let pid = nix::unistd::Pid::from_raw(self.procs[key].pid as i32);
                            let _ = nix::sys::signal::kill(pid, sig);
                        }
                    }
                    Command::Shutdown => {
                        if self.shutdown_deadline.is_none() {
                            self.begin_shutdown();
                        }
                    }
                }
            }
        }
    }

    /// The process key serving worker `id` (1-based).
    fn current(&self, id: usize) -> Option<usize> {
        self.slots.get(id.checked_sub(1)?)?.current
    }

    // ---- workers: start, read, flush, exit ----

    /// Starts a worker for slot `i`; returns its key. On failure schedules a retry.
    fn spawn(&mut self, i: usize) -> Option<usize> {
        self.slots[i].respawn_at = None;
        let id = self.slots[i].id;
        let (child, channel) = match self.config.spawner.spawn(id) {
            Ok(x) => x,
            Err(e) => {
                let slot = &mut self.slots[i];
                slot.quick_deaths += 1;
                let delay = backoff::delay(slot.quick_deaths);
                log::error!("cannot start worker {id}: {e}; retrying in {delay:?}");
                slot.respawn_at = Some(Instant::now() + delay);
                return None;
            }
        };
        let entry = self.procs.vacant_entry();
        let key = entry.key();
        let p = entry.insert(Proc::new(child, channel, i));
        let pid = p.pid;
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&p.channel.raw_fd()),
            Token(FIRST_WORKER + key),
            Interest::READABLE,
        ) {
            log::error!("cannot watch worker {pid}: {e}; stopping it");
            let _ = p.child.kill();
        }
        self.emit(Event::Fork { id, pid });
        Some(key)
    }

    /// Reads every waiting message; `true` if the channel is closed.
    fn drain_channel(&mut self, key: usize) -> (Vec<ToPrimary>, bool) {
        let mut msgs = Vec::new();
        let Some(p) = self.procs.get_mut(key) else {
            return (msgs, true);
        };
        if p.channel_closed {
            return (msgs, true);
        }
        loop {
            match p.channel.recv() {
                Ok(Some(pkt)) => match ToPrimary::decode(pkt.bytes) {
                    Ok(m) => msgs.push(m),
                    Err(e) => log::error!("worker {}: {e}", p.pid),
                },
                Ok(None) => return (msgs, true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (msgs, false),
                Err(e) => {
                    log::debug!("worker {} channel: {e}", p.pid);
                    return (msgs, true);
                }
            }
        }
    }

    fn read_worker(&mut self, key: usize) {
        let (msgs, closed) = self.drain_channel(key);
        for m in msgs {
            self.on_message(key, m);
        }
        if closed {
            self.channel_closed(key);
        }
    }

    fn on_message(&mut self, key: usize, msg: ToPrimary) {
        let Some(p) = self.procs.get_mut(key) else {
            return;
        };
        let (id, pid) = (self.slots[p.slot].id, p.pid);
        match msg {
            ToPrimary::Ack(ids) => {
                for cid in ids {
                    // Dropping our copy closes it: the worker has its own now.
                    p.unacked.remove(&cid);
                }
            }
            ToPrimary::Closed(n) => p.open = p.open.saturating_sub(n as u64),
            ToPrimary::Online => {
                if p.state == State::Starting {
                    p.state = State::Online;
                }
                match self.config.policy.listener_plan() {
                    Some(ListenerPlan::Shared) => p.out.push_back(Out::Listen(0)),
                    Some(ListenerPlan::PerWorker) => p.out.push_back(Out::Listen(p.slot)),
                    None => {}
                }
                self.flush(key);
                self.emit(Event::Online { id, pid });
                self.maybe_announce();
            }
            ToPrimary::Listening => {
                self.emit(Event::Listening {
                    id,
                    pid,
                    addr: self.local_addr,
                });
            }
            ToPrimary::Stats(s) => {
                p.stats = s;
                p.stats_fresh = true;
                if self.stats_wanted {
                    self.maybe_print_stats();
                }
            }
            ToPrimary::Message(payload) => self.emit(Event::Message { id, pid, payload }),
        }
    }

    fn maybe_announce(&mut self) {
        if self.announced || self.shutdown_deadline.is_some() {
            return;
        }
        let online = |s: &Slot| {
            s.current
                .is_some_and(|k| self.procs.get(k).is_some_and(|p| p.state == State::Online))
        };
        if self.slots.iter().all(online) {
            self.announced = true;
            log::info!("listening on http://{}", self.local_addr);
        }
    }

    fn flush(&mut self, key: usize) {
        let Some(p) = self.procs.get_mut(key) else {
            return;
        };
        if p.channel_closed {
            return;
        }
        match p.flush(&self.held) {
            Ok(()) => {
                // Ask for writable edges only while packets wait: on a Unix socket every packet
                // the worker consumes would otherwise wake this loop.
                let backed_up = !p.out.is_empty();
                if backed_up != p.want_writable {
                    p.want_writable = backed_up;
                    let interest = if backed_up {
                        Interest::READABLE | Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    let fd = p.channel.raw_fd();
                    let token = Token(FIRST_WORKER + key);
                    if let Err(e) =
                        self.poll
                            .registry()
                            .reregister(&mut SourceFd(&fd), token, interest)
                    {
                        log::error!("cannot watch worker {}: {e}", p.pid);
                    }
                }
            }
            Err(e) => {
                log::debug!("worker {} channel: {e}", p.pid);
                self.read_worker(key);
                self.channel_closed(key);
            }
        }
    }

    /// The worker's channel closed, so it cannot take or ack anything more. Every message it
    /// sent before closing has been read (acks included), so what is still unacked was never
    /// touched by it: hand those connections to other workers.
    fn channel_closed(&mut self, key: usize) {
        let Some(p) = self.procs.get_mut(key) else {
            return;
        };
        if p.channel_closed {
            return;
        }
        p.channel_closed = true;
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&p.channel.raw_fd()));
        let back = p.reclaim();
        let (id, pid) = (self.slots[p.slot].id, p.pid);
        if !back.is_empty() {
            log::warn!(
                "worker {pid} left {} connections unacked; handing them to others",
                back.len()
            );
        }
        for c in back.into_iter().rev() {
            self.backlog.push_front(c);
        }
        self.emit(Event::Disconnect { id, pid });
        self.dispatch();
    }

    fn reap(&mut self) {
        let exited: Vec<(usize, ExitStatus)> = self
            .procs
            .iter_mut()
            .filter_map(|(k, p)| match p.child.try_wait() {
                Ok(Some(status)) => Some((k, status)),
                _ => None,
            })
            .collect();
        for (key, status) in exited {
            self.exited(key, status);
        }
    }

    fn exited(&mut self, key: usize, status: ExitStatus) {
        self.read_worker(key);
        self.channel_closed(key);
        let p = self.procs.remove(key);
        let slot = &mut self.slots[p.slot];
        let (id, pid) = (slot.id, p.pid);
        slot.past.connections += p.stats.connections;
        slot.past.requests += p.stats.requests;
        slot.past_handed += p.handed;
        let was_current = slot.current == Some(key);
        if was_current {
            slot.current = None;
        }
        let expected = p.disconnect_sent || self.shutdown_deadline.is_some();
        let how = slot::describe(status);
        if expected || !was_current {
            log::info!("worker {pid} died ({how})");
        } else {
            let uptime = p.started.elapsed();
            slot.quick_deaths = if uptime < backoff::HEALTHY {
                slot.quick_deaths + 1
            } else {
                1
            };
            let delay = backoff::delay(slot.quick_deaths);
            let when = if p.state == State::Starting {
                " before coming online"
            } else {
                ""
            };
            if slot.quick_deaths >= CRASH_LOOP {
                log::error!(
                    "worker {pid} died ({how}){when}; worker {id} is crash-looping: {} quick deaths in a row, next restart in {delay:?}",
                    slot.quick_deaths
                );
            } else {
                log::warn!("worker {pid} died ({how}){when}; restarting in {delay:?}");
            }
            slot.restarts += 1;
            slot.respawn_at = Some(Instant::now() + delay);
        }
        self.emit(Event::Exit {
            id,
            pid,
            code: status.code(),
            signal: status.signal(),
            exited_after_disconnect: expected,
        });
        if self.stats_wanted {
            self.maybe_print_stats();
        }
    }

    /// Tells a worker to finish and exit; connections not yet sent to it go elsewhere.
    fn disconnect(&mut self, key: usize) {
        let Some(p) = self.procs.get_mut(key) else {
            return;
        };
        if p.disconnect_sent {
            return;
        }
        p.disconnect_sent = true;
        p.state = State::Disconnecting;
        let queued: Vec<u64> = p
            .out
            .iter()
            .filter_map(|o| {
                if let Out::Conn(id) = o {
                    Some(*id)
                } else {
                    None
                }
            })
            .collect();
        p.out.retain(|o| !matches!(o, Out::Conn(_)));
        let back: Vec<_> = queued
            .iter()
            .filter_map(|id| p.unacked.remove_entry(id))
            .collect();
        p.open = p.open.saturating_sub(back.len() as u64);
        p.push(&ToWorker::Disconnect);
        for c in back.into_iter().rev() {
            self.backlog.push_front(c);
        }
        self.flush(key);
    }

    // ---- accepting and dispatching ----

    fn accept(&mut self) {
        let Some(l) = self.listener.as_ref() else {
            return;
        };
        while self.backlog.len() < self.config.max_pending {
            match l.accept() {
                Ok((stream, _)) => {
                    self.next_conn += 1;
                    self.backlog.push_back((self.next_conn, stream));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // EMFILE and friends: retrying at once would spin. Pause, retry later.
                    log::error!("accept: {e}; pausing the listener for {ACCEPT_RETRY:?}");
                    self.accept_retry_at = Some(Instant::now() + ACCEPT_RETRY);
                    self.pause_listener();
                    break;
                }
            }
        }
        if self.backlog.len() >= self.config.max_pending {
            self.pause_listener();
        }
        self.dispatch();
    }

    fn pause_listener(&mut self) {
        if let (Some(l), false) = (self.listener.as_mut(), self.listener_paused) {
            let _ = self.poll.registry().deregister(l);
            self.listener_paused = true;
            log::debug!(
                "listener paused: {} connections wait for a worker",
                self.backlog.len()
            );
        }
    }

    fn resume_listener(&mut self) {
        if let (Some(l), true) = (self.listener.as_mut(), self.listener_paused) {
            // Registering reports the listener readable again if the kernel queue holds any.
            match self
                .poll
                .registry()
                .register(l, LISTENER, Interest::READABLE)
            {
                Ok(()) => self.listener_paused = false,
                Err(e) => log::error!("cannot resume listener: {e}"),
            }
        }
    }

    fn dispatch(&mut self) {
        let window = if self.shutdown_deadline.is_some() {
            usize::MAX
        } else {
            self.config.handoff_window
        };
        if self.balancer.is_none() {
            return;
        }
        // Queue the whole burst first, then flush each worker once: its share goes out in as
        // few packets as possible.
        let mut touched: Vec<usize> = Vec::new();
        while !self.backlog.is_empty() {
            self.loads.clear();
            let procs = &self.procs;
            self.loads.extend(self.slots.iter().map(|s| {
                s.current
                    .and_then(|k| procs.get(k))
                    .and_then(|p| p.load(window))
            }));
            let Some(i) = self.balancer.as_mut().and_then(|b| b.pick(&self.loads)) else {
                break;
            };
            let (Some(key), Some((id, stream))) = (self.slots[i].current, self.backlog.pop_front())
            else {
                break;
            };
            let p = &mut self.procs[key];
            p.unacked.insert(id, stream);
            p.out.push_back(Out::Conn(id));
            p.open += 1;
            p.handed += 1;
            if !touched.contains(&key) {
                touched.push(key);
            }
        }
        for key in touched {
            self.flush(key);
        }
        if self.listener_paused
            && self.shutdown_deadline.is_none()
            && self.accept_retry_at.is_none()
            && self.backlog.len() < self.config.max_pending / 2
        {
            self.resume_listener();
        }
    }

    // ---- timers: respawn, reload, shutdown ----

    fn timers(&mut self) {
        let now = Instant::now();
        if self.shutdown_deadline.is_none() {
            for i in 0..self.slots.len() {
                let slot = &self.slots[i];
                if slot.current.is_none() && slot.respawn_at.is_some_and(|t| t <= now) {
                    self.slots[i].current = self.spawn(i);
                }
            }
        }
        if self.accept_retry_at.is_some_and(|t| t <= now) {
            self.accept_retry_at = None;
            self.dispatch();
        }
        self.step_reload(now);
        if self.shutdown_deadline.is_some_and(|d| d <= now) {
            self.kill_all("the shutdown timeout passed");
        }
    }

    fn kill_all(&mut self, why: &str) {
        for (_, p) in self.procs.iter_mut() {
            log::warn!("killing worker {}: {why}", p.pid);
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        self.reap();
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            self.kill_all("asked twice to stop");
            return;
        }
        log::info!(
            "shutting down: draining workers (timeout {:?})",
            self.config.shutdown_timeout
        );
        self.shutdown_deadline = Some(Instant::now() + self.config.shutdown_timeout);
        if let Some(r) = self.reload.as_mut() {
            r.todo.clear();
        }
        if let Some(mut l) = self.listener.take() {
            if !self.listener_paused {
                let _ = self.poll.registry().deregister(&mut l);
            }
            // Connections the kernel already queued are still ours to serve.
            while let Ok((stream, _)) = l.accept() {
                self.next_conn += 1;
                self.backlog.push_back((self.next_conn, stream));
            }
        }
        self.held.clear();
        self.dispatch();
        if !self.backlog.is_empty() {
            log::warn!("{} connections had no worker to go to", self.backlog.len());
            self.backlog.clear();
        }
        for slot in self.slots.iter_mut() {
            slot.respawn_at = None;
        }
        let keys: Vec<usize> = self.procs.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.disconnect(key);
        }
    }

    fn on_signals(&mut self) {
        for sig in self.signals.pending() {
            match sig {
                Signal::SIGCHLD => self.reap(),
                Signal::SIGINT | Signal::SIGTERM => self.begin_shutdown(),
                Signal::SIGHUP => self.begin_reload(),
                Signal::SIGUSR2 => self.request_stats(),
                _ => {}
            }
        }
    }

    // ---- statistics ----

    fn request_stats(&mut self) {
        self.stats_wanted = true;
        let keys: Vec<usize> = self.procs.iter().map(|(k, _)| k).collect();
        for key in keys {
            let p = &mut self.procs[key];
            if !p.channel_closed {
                p.stats_fresh = false;
                p.push(&ToWorker::StatsRequest);
                self.flush(key);
            }
        }
        self.maybe_print_stats();
    }

    fn maybe_print_stats(&mut self) {
        let waiting = self
            .procs
            .iter()
            .any(|(_, p)| !p.channel_closed && !p.stats_fresh);
        if !waiting {
            self.stats_wanted = false;
            log::info!(
                "{}",
                report::table(&self.slots, &self.procs, self.config.policy)
            );
        }
    }

    // ---- rolling reload ----

    fn begin_reload(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        if self.reload.is_some() {
            log::warn!("reload already in progress; ignoring SIGHUP");
            return;
        }
        log::info!("reloading {} workers one at a time", self.slots.len());
        self.reload = Some(Reload {
            todo: (0..self.slots.len()).collect(),
            current: None,
        });
        self.step_reload(Instant::now());
    }

    /// Advances the reload. The old worker keeps serving (and stays in the rotation) until its
    /// replacement is online; then the two swap and the old one drains.
    fn step_reload(&mut self, now: Instant) {
        let Some(mut r) = self.reload.take() else {
            return;
        };
        if let Some((i, new, deadline)) = r.current.take() {
            let state = self.procs.get(new).map(|p| (p.state, p.channel_closed));
            match state {
                Some((State::Online, false)) => {
                    let old = self.slots[i].current.replace(new);
                    if let Some(old) = old {
                        log::info!(
                            "worker {} replaced by {}",
                            self.procs[old].pid,
                            self.procs[new].pid
                        );
                        self.disconnect(old);
                    }
                }
                Some((State::Starting, false)) if now < deadline => {
                    r.current = Some((i, new, deadline));
                    self.reload = Some(r);
                    return;
                }
                _ => {
                    log::error!(
                        "reload: the replacement for worker {} did not come online; keeping the old one and stopping the reload",
                        self.slots[i].id
                    );
                    if let Some(p) = self.procs.get_mut(new) {
                        p.disconnect_sent = true;
                        let _ = p.child.kill();
                    }
                    return;
                }
            }
        }
        while let Some(i) = r.todo.pop_front() {
            if self.slots[i].current.is_none() {
                continue; // dead slot: its respawn brings the new code anyway
            }
            if let Some(new) = self.spawn(i) {
                r.current = Some((i, new, now + RELOAD_ONLINE_DEADLINE));
                self.reload = Some(r);
                return;
            }
        }
        log::info!("reload complete");
    }
}
