//! The primary under a service manager: the pid file, and the notifications that follow the
//! cluster's life (ready, reloading, stopping, status, watchdog; see [`crate::notify`]).

use std::time::Instant;

use super::workers::State;
use super::{Config, Primary, PrimaryError};
use crate::activation::{self, Source};
use crate::ipc::Channel;
use crate::listen::{self, Bound};

/// The listening sockets: inherited (socket activation, or the old primary of an upgrade,
/// whose link comes back too) or bound here. Then the pid file (except in an upgrade's new
/// primary, which writes it when it takes over) and the drop to `--user`.
pub(super) fn listeners(config: &Config) -> Result<(Bound, Option<Channel>), PrimaryError> {
    let (bound, link) = match activation::take()? {
        None => {
            let plan = config.policy.listener_plan();
            let bound = listen::bind(plan, config.addr, config.workers, config.defer_accept)?;
            (bound, None)
        }
        Some(inherited) => {
            let bound = activation::arrange(
                config.policy,
                inherited.listeners,
                config.workers,
                config.defer_accept,
            )?;
            let link = match inherited.source {
                Source::Upgrade { link } => Some(link),
                Source::Systemd { .. } => None,
            };
            (bound, link)
        }
    };
    if link.is_none() {
        if let Some(path) = &config.pid_file {
            crate::pidfile::write(path, config.credentials.as_ref())?;
        }
    }
    if let Some(c) = &config.credentials {
        if let Err(e) = c.apply() {
            if let Some(path) = &config.pid_file {
                crate::pidfile::remove_if_ours(path);
            }
            return Err(e.into());
        }
    }
    Ok((bound, link))
}

impl Primary {
    /// Every worker is online for the first time: say so (the log line scripts wait for, and
    /// `READY=1`), or, in a primary started by an upgrade, tell the old one instead.
    pub(super) fn announce(&mut self) {
        if self.announce_ready_to_predecessor() {
            return;
        }
        log::info!("listening on http://{}", self.local_addr);
        let status = self.status_line();
        self.notifier.ready(&status);
    }

    /// `READY=1` again after a reload (done or given up); nothing if no `RELOADING=1` was
    /// sent (a worker recycled at its request limit is no reload for the service manager).
    pub(super) fn ready_again(&mut self) {
        if !self.notifier.is_reloading() {
            return;
        }
        let status = self.status_line();
        self.notifier.ready(&status);
    }

    /// `STOPPING=1`, unless this primary is only leaving because a new one took over.
    pub(super) fn notify_stopping(&mut self) {
        if !self.phase.handed_over {
            self.notifier.stopping();
        }
    }

    /// One line for `STATUS=`: workers online, and connections per second since the last line
    /// (counted by the primary where it accepts; where workers accept, from their counters,
    /// which [`Primary::service_tick`] asks for, so a tick late).
    pub(super) fn status_line(&mut self) -> String {
        let total = self.workers.slots().len();
        let online = self
            .workers
            .slots()
            .iter()
            .filter(|s| {
                s.current
                    .and_then(|k| self.workers.get(k))
                    .is_some_and(|p| p.state == State::Online && !p.channel_closed)
            })
            .count();
        let now = Instant::now();
        let count = self.connections_seen();
        let rate = match self.phase.last_rate.replace((count, now)) {
            Some((before, at)) if now > at => {
                (count.saturating_sub(before)) as f64 / (now - at).as_secs_f64()
            }
            _ => 0.0,
        };
        format!("{online}/{total} workers online, {rate:.0} connections/s")
    }

    /// Connections taken so far: accepted by the primary, or (workers-accept policies) as the
    /// workers last reported.
    fn connections_seen(&self) -> u64 {
        if self.config.policy.listener_plan().is_none() {
            return self.acceptor.accepted();
        }
        let past: u64 = self
            .workers
            .slots()
            .iter()
            .map(|s| s.past.connections)
            .sum();
        let live: u64 = self.workers.procs().map(|(_, p)| p.stats.connections).sum();
        past + live
    }

    /// Where workers accept, asks them for their counters (which only updates them).
    fn refresh_worker_counts(&mut self) {
        if self.config.policy.listener_plan().is_some() {
            self.refresh_stats();
        }
    }

    /// Watchdog ping and status refresh, when due.
    pub(super) fn service_tick(&mut self, now: Instant) {
        if self.notifier.next_due().is_some_and(|t| t <= now) {
            self.refresh_worker_counts();
            let status = self.status_line();
            self.notifier.tick(now, || status);
        }
    }

    /// Writes the pid file, if one was asked for (a new primary, when it takes over).
    pub(super) fn write_pid_file(&mut self) {
        if let Some(path) = &self.config.pid_file {
            if let Err(e) = crate::pidfile::write(path, None) {
                log::error!("{e}");
            }
        }
    }

    /// Removes the pid file at exit, unless a new primary took over (it is the successor's).
    pub(super) fn remove_pid_file(&mut self) {
        if self.phase.handed_over {
            return;
        }
        if let Some(path) = &self.config.pid_file {
            crate::pidfile::remove_if_ours(path);
        }
    }
}
