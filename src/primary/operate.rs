//! The primary's side of operating it from outside: the control socket's requests
//! (`status`, `reload`, `scale`, `stop`) carried out on the loop, the answers that wait for
//! something (a reload to finish, fresh worker counters, the exit), and the `status` JSON.
//! Nothing here waits on a worker: an answer that wants fresh counters waits at most
//! [`STATUS_PATIENCE`], on the loop's timer.

use std::time::{Duration, Instant};

use mio::Token;
use serde_json::{json, Value};

use super::workers::{Proc, State};
use super::Primary;
use crate::admin::conns::ConnId;
use crate::admin::server::ControlServer;
use crate::admin::{ControlSocket, Request};
use crate::ipc::ToWorker;
use crate::procfs::Stat;

/// Tokens of the control socket (listener, then its clients).
const CONTROL_BASE: usize = usize::MAX / 4;
/// How long `status` waits for workers to report fresh counters before answering anyway.
const STATUS_PATIENCE: Duration = Duration::from_millis(250);

/// The control socket and the answers that wait.
#[derive(Debug, Default)]
pub(super) struct Admin {
    control: Option<ControlServer>,
    /// Clients waiting for the running reload to end.
    reload_waiters: Vec<ConnId>,
    /// Clients waiting for fresh counters, and when they get an answer anyway.
    status_waiters: Vec<ConnId>,
    status_deadline: Option<Instant>,
    /// When the primary started.
    started: Option<Instant>,
    /// The metrics endpoint (`src/primary/observe.rs`).
    pub(super) metrics: Option<crate::metrics::endpoint::MetricsServer>,
    /// When counters are next asked for (while metrics are served).
    pub(super) next_refresh: Option<Instant>,
}

/// CPU and memory of a worker process, sampled from `/proc`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    /// The previous sample: when, and the CPU ticks then.
    last: Option<(Instant, u64)>,
    /// CPU use between the last two samples (100: one core).
    pub cpu_percent: f64,
    /// CPU ticks used in total, at the last sample.
    pub cpu_ticks: u64,
    /// Resident memory at the last sample.
    pub rss_bytes: u64,
}

impl Usage {
    /// Samples `pid` now (a process that is gone keeps its last values).
    pub fn sample(&mut self, pid: u32, started: Instant) {
        let Some(stat) = Stat::read(pid) else {
            return;
        };
        let now = Instant::now();
        let (since, before) = self.last.unwrap_or((started, 0));
        let wall = now.saturating_duration_since(since).as_secs_f64();
        if wall > 0.0 {
            let used = stat.cpu_ticks.saturating_sub(before) as f64 / 100.0;
            self.cpu_percent = (used / wall * 100.0).max(0.0);
        }
        self.last = Some((now, stat.cpu_ticks));
        self.cpu_ticks = stat.cpu_ticks;
        self.rss_bytes = stat.rss_bytes();
    }
}

impl Primary {
    /// Opens the control socket the configuration asks for (an explicit path that fails is
    /// an error; the default one only a warning).
    pub(super) fn open_admin(&mut self) -> Result<(), super::PrimaryError> {
        self.admin.started = Some(Instant::now());
        self.open_metrics()?;
        let (path, explicit) = match &self.config.control {
            ControlSocket::Off => return Ok(()),
            ControlSocket::Default => (crate::admin::socket_path(self.local_addr.port()), false),
            ControlSocket::At(p) => (p.clone(), true),
        };
        match ControlServer::bind(&path, self.poll.registry(), CONTROL_BASE, !explicit) {
            Ok(c) => {
                log::info!("control socket at {}", path.display());
                self.admin.control = Some(c);
            }
            Err(e) if explicit => return Err(e.into()),
            Err(e) => log::warn!("{e}; running without one"),
        }
        Ok(())
    }

    /// True when `token` belongs to the control socket or the metrics endpoint.
    pub(super) fn admin_owns(&self, token: Token) -> bool {
        self.admin.control.as_ref().is_some_and(|c| c.owns(token)) || self.metrics_owns(token)
    }

    /// Readiness on the control socket or the metrics endpoint.
    pub(super) fn on_admin(&mut self, token: Token) {
        if self.metrics_owns(token) {
            return self.on_metrics(token);
        }
        let Some(control) = self.admin.control.as_mut() else {
            return;
        };
        for asked in control.ready(token, self.poll.registry()) {
            log::info!("control: {}", asked.request.line());
            self.on_request(asked.client, asked.request);
        }
    }

    pub(super) fn answer(&mut self, client: ConnId, reply: Result<String, String>) {
        if let Some(c) = self.admin.control.as_mut() {
            c.answer(client, reply, self.poll.registry());
        }
    }

    /// Carries out one request.
    fn on_request(&mut self, client: ConnId, request: Request) {
        match request {
            Request::Status => {
                self.admin.status_waiters.push(client);
                self.admin
                    .status_deadline
                    .get_or_insert(Instant::now() + STATUS_PATIENCE);
                self.refresh_stats();
                self.answer_status_if_fresh();
            }
            Request::Reload if self.stopping() => {
                self.answer(client, Err("the server is shutting down".into()))
            }
            Request::Reload => {
                // Joins a reload that runs; widens a recycling to every worker.
                self.admin.reload_waiters.push(client);
                self.begin_reload();
            }
            Request::Scale(s) => {
                let reply = self.scale(s);
                self.answer(client, reply);
            }
            Request::Upgrade => self.upgrade_requested(client),
            Request::Stop => {
                let pid = std::process::id();
                if let Some(c) = self.admin.control.as_mut() {
                    c.answer_and_hold(
                        client,
                        Ok(format!("stopping pid {pid}")),
                        self.poll.registry(),
                    );
                }
                // As SIGTERM: the drain delay first, if there is one.
                if !self.stopping() {
                    self.stop_signal();
                }
            }
        }
    }

    /// The running reload ended (or was abandoned): answers whoever waits for it.
    pub(super) fn reload_finished(&mut self, outcome: Result<String, String>) {
        self.ready_again();
        for client in std::mem::take(&mut self.admin.reload_waiters) {
            self.answer(client, outcome.clone());
        }
    }

    /// Asks every live worker that has no request outstanding for its counters.
    pub(super) fn refresh_stats(&mut self) {
        for key in self.workers.keys() {
            let Some(p) = self.workers.get_mut(key) else {
                continue;
            };
            if p.channel_closed || p.stats_pending || p.watch.unresponsive() {
                continue;
            }
            // A Node worker has no counters to send: nothing is owed.
            p.stats_pending = !p.link.is_node();
            p.link.send(ToWorker::StatsRequest);
            self.flush(key);
        }
    }

    /// Counters arrived: answers waiting `status` requests once nobody owes any.
    pub(super) fn answer_status_if_fresh(&mut self) {
        if self.admin.status_waiters.is_empty() {
            return;
        }
        let owed = self
            .workers
            .procs()
            .any(|(_, p)| p.stats_pending && !p.channel_closed && !p.watch.unresponsive());
        let late = self
            .admin
            .status_deadline
            .is_some_and(|d| d <= Instant::now());
        if owed && !late {
            return;
        }
        self.admin.status_deadline = None;
        let status = self.status_json().to_string();
        for client in std::mem::take(&mut self.admin.status_waiters) {
            self.answer(client, Ok(status.clone()));
        }
    }

    /// When a waiting answer is due anyway, or counters are to be asked for.
    pub(super) fn admin_timer(&self) -> Option<Instant> {
        let control = self.admin.control.as_ref().and_then(|c| c.next_timeout());
        let metrics = self.admin.metrics.as_ref().and_then(|m| m.next_timeout());
        [
            self.admin.status_deadline,
            self.admin.next_refresh,
            control,
            metrics,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The control socket's and the metrics endpoint's timers.
    pub(super) fn admin_due(&mut self, now: Instant) {
        if let Some(c) = self.admin.control.as_mut() {
            c.expire(now, self.poll.registry());
        }
        if let Some(m) = self.admin.metrics.as_mut() {
            m.expire(now, self.poll.registry());
        }
        self.refresh_due(now);
        self.answer_status_if_fresh();
    }

    /// Closes the control socket (its waiting `stop` clients see it close as the primary
    /// exits) and removes its file.
    pub(super) fn close_admin(&mut self) {
        self.reload_finished(Err("the server is shutting down".into()));
        self.admin.control = None;
        self.admin.metrics = None;
        self.admin.next_refresh = None;
    }

    /// The `status` answer: the summary and one object per worker slot in use (and per
    /// surplus slot still draining).
    pub(super) fn status_json(&mut self) -> Value {
        let primary_counts = self.config.policy.needs_close_reports();
        let rows = super::report::rows(&self.workers, primary_counts);
        let active = self.workers.active();
        let mut workers = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let slot = &self.workers.slots()[i];
            let proc_key = slot.current.filter(|&k| self.workers.get(k).is_some());
            if i >= active && proc_key.is_none() {
                continue;
            }
            let (state, pid, uptime, usage) = match proc_key.and_then(|k| self.workers.get(k)) {
                Some(p) => {
                    let mut usage = p.usage;
                    usage.sample(p.pid, p.started);
                    (
                        state_name(p),
                        Some(p.pid),
                        p.started.elapsed().as_secs(),
                        usage,
                    )
                }
                None => ("dead", None, 0, Usage::default()),
            };
            if let Some(p) = proc_key.and_then(|k| self.workers.get_mut(k)) {
                p.usage = usage;
            }
            workers.push(json!({
                "id": row.id,
                "pid": pid,
                "state": state,
                "uptime_s": uptime,
                "restarts": row.restarts,
                "connections": row.connections,
                "open": row.open,
                "requests": row.requests,
                "cpu_percent": (usage.cpu_percent * 10.0).round() / 10.0,
                "rss_bytes": usage.rss_bytes,
            }));
        }
        json!({
            "primary_pid": std::process::id(),
            "policy": self.config.policy.name(),
            "address": self.local_addr.to_string(),
            "pending": self.acceptor.waiting(),
            "uptime_s": self.admin.started.map_or(0, |t| t.elapsed().as_secs()),
            "workers": workers,
        })
    }
}

fn state_name(p: &Proc) -> &'static str {
    if p.watch.unresponsive() {
        return "unresponsive";
    }
    match p.state {
        State::Starting => "starting",
        State::Online => "online",
        State::Disconnecting => "draining",
    }
}
