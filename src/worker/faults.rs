//! Testing switches a worker reads from its environment: crash in chosen ways so that the
//! primary's recovery can be tested end to end. They are inherited from the primary's
//! environment (the tests set them on `herd serve`).

use crate::event::WorkerId;

/// Testing only: `N` or `ID:N`. Once it has taken N-1 connections, the worker (or only worker
/// `ID`) reads nothing more from its channel, and exits with status 86 once the connections it
/// took are finished and more wait unread: a crash with connections handed to it that it never
/// took, without collateral losses.
pub const ENV_FAULT_EXIT_AFTER: &str = "HERD_FAULT_EXIT_AFTER";
/// Testing only: exit with status 3 at start, before coming online: `1` always, or a path (it
/// starts with `/`) while that file exists, so a test can make only later replacements fail.
pub const ENV_FAULT_FAIL_START: &str = "HERD_FAULT_FAIL_START";
/// Testing only: `1` makes a worker send one packet the primary cannot decode right after it
/// comes online (the primary must replace it, not stall).
pub const ENV_FAULT_GARBAGE: &str = "HERD_FAULT_GARBAGE";

/// Exits with status 3 if `HERD_FAULT_FAIL_START` says so.
pub fn fail_start_if_asked() {
    let fail = std::env::var(ENV_FAULT_FAIL_START)
        .is_ok_and(|v| v == "1" || (v.starts_with('/') && std::path::Path::new(&v).exists()));
    if fail {
        log::error!(
            "worker {} failing at start ({ENV_FAULT_FAIL_START})",
            std::process::id()
        );
        std::process::exit(3);
    }
}

/// The exit-after-N switch, armed or not.
#[derive(Debug, Default)]
pub struct Faults {
    exit_after: Option<u64>,
    received: u64,
    /// The channel was readable after the fault tripped: connections wait there unread.
    left_unread: bool,
    /// Send one undecodable packet after coming online.
    pub garbage: bool,
}

impl Faults {
    /// Reads `HERD_FAULT_EXIT_AFTER` (`N` for every worker, `ID:N` for one).
    pub fn from_env(id: WorkerId) -> Faults {
        let exit_after =
            std::env::var(ENV_FAULT_EXIT_AFTER)
                .ok()
                .and_then(|v| match v.split_once(':') {
                    Some((who, n)) => (who.parse::<usize>().ok()? == id.get())
                        .then(|| n.parse().ok())
                        .flatten(),
                    None => v.parse().ok(),
                });
        Faults {
            exit_after,
            garbage: std::env::var(ENV_FAULT_GARBAGE).is_ok_and(|v| v == "1"),
            ..Faults::default()
        }
    }

    /// Counts `n` received connections.
    pub fn count(&mut self, n: usize) {
        self.received += n as u64;
    }

    /// True once the worker must read nothing more from its channel.
    pub fn tripped(&self) -> bool {
        self.exit_after.is_some_and(|n| self.received + 1 >= n)
    }

    /// The channel is readable while tripped: something waits there unread.
    pub fn left_unread(&mut self) {
        self.left_unread = true;
    }

    /// Exits with status 86 once the fault has tripped, something waits unread, and the worker
    /// has nothing else to do.
    pub fn exit_if_tripped(&self, idle: bool) {
        if self.tripped() && self.left_unread && idle {
            log::warn!(
                "worker {} exiting on purpose with connections unread ({ENV_FAULT_EXIT_AFTER})",
                std::process::id()
            );
            std::process::exit(86);
        }
    }
}
