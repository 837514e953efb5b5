//! Telling the service manager how the primary is doing (`sd_notify(3)` through the `sd-notify`
//! crate): `READY=1` once every worker is online, `RELOADING=1` with `MONOTONIC_USEC` during a
//! rolling reload, `STOPPING=1` on shutdown, `STATUS=` kept current, `WATCHDOG=1` at half of
//! `WATCHDOG_USEC` from the primary's loop (so only while the loop turns), and `MAINPID=` when
//! an upgrade hands the service to a new primary. Without `NOTIFY_SOCKET` every call is a no-op.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// How often `STATUS=` is refreshed while notifications are on.
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// The primary's notifications, with the watchdog and status timers.
#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
    /// Says nothing for now: a new primary before it takes over (the old one is the service
    /// until then), or an old one after it handed over.
    quiet: bool,
    /// Handed over for good: quiet whatever comes.
    retired: bool,
    /// `RELOADING=1` was sent and no `READY=1` since.
    reloading: bool,
    /// Half of `WATCHDOG_USEC`, when the watchdog is on for this process.
    ping_every: Option<Duration>,
    next_ping: Option<Instant>,
    next_status: Option<Instant>,
    last_status: String,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (the watchdog is on when
    /// `WATCHDOG_PID` is this process or unset).
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let ping_every = sd_notify::watchdog_enabled()
            .filter(|d| enabled && !d.is_zero())
            .map(|d| d / 2);
        let now = Instant::now();
        Notifier {
            enabled,
            quiet: false,
            retired: false,
            reloading: false,
            ping_every,
            next_ping: ping_every.map(|d| now + d),
            next_status: enabled.then(|| now + STATUS_EVERY),
            last_status: String::new(),
        }
    }

    /// True when a service manager listens.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Says nothing until [`Notifier::ready`] (a new primary waiting to take over).
    pub fn quiet_until_ready(&mut self) {
        self.quiet = true;
    }

    /// Says nothing more, watchdog pings included (a primary that handed the service over).
    pub fn retire(&mut self) {
        self.quiet = true;
        self.retired = true;
        self.ping_every = None;
        self.next_ping = None;
        self.next_status = None;
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled || self.quiet {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            log::warn!("cannot notify the service manager: {e}");
        }
    }

    /// `READY=1` with a status line (and an end to [`Notifier::quiet_until_ready`]).
    pub fn ready(&mut self, status: &str) {
        self.quiet = self.retired;
        self.reloading = false;
        self.last_status = status.to_string();
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// True between [`Notifier::reloading`] and the next [`Notifier::ready`].
    pub fn is_reloading(&self) -> bool {
        self.reloading
    }

    /// `RELOADING=1` with the current `MONOTONIC_USEC` (systemd requires both).
    pub fn reloading(&mut self) {
        self.reloading = true;
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading workers"),
            ]),
            Err(e) => log::warn!("cannot read the monotonic clock: {e}"),
        }
    }

    /// `STOPPING=1`.
    pub fn stopping(&mut self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// `MAINPID=pid` and `READY=1`: the service is now the new primary `pid`.
    pub fn main_pid(&mut self, pid: u32) {
        let status = format!("upgraded: primary {pid} took over");
        self.send(&[
            NotifyState::MainPid(pid),
            NotifyState::Ready,
            NotifyState::Status(&status),
        ]);
    }

    /// `STATUS=status`, if it changed.
    pub fn status(&mut self, status: &str) {
        if self.enabled && status != self.last_status {
            self.last_status = status.to_string();
            self.send(&[NotifyState::Status(status)]);
        }
    }

    /// When the next watchdog ping or status refresh is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.next_ping.into_iter().chain(self.next_status).min()
    }

    /// Sends a watchdog ping and refreshes the status when they are due; `status` is asked for
    /// only then.
    pub fn tick(&mut self, now: Instant, status: impl FnOnce() -> String) {
        if let (Some(at), Some(every)) = (self.next_ping, self.ping_every) {
            if at <= now {
                self.send(&[NotifyState::Watchdog]);
                self.next_ping = Some(now + every);
            }
        }
        if self.next_status.is_some_and(|t| t <= now) {
            self.next_status = Some(now + STATUS_EVERY);
            self.status(&status());
        }
    }
}
