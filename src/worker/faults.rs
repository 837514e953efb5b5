//! Testing switches a worker reads from its environment: crash in chosen ways so that the
//! primary's recovery can be tested end to end. They are inherited from the primary's
//! environment (the tests set them on `herd serve`).

use std::os::fd::OwnedFd;

use crate::event::WorkerId;

/// Testing only: `N` or `ID:N`. From its Nth received connection on, the worker (or only worker
/// `ID`) acks nothing more, and exits with status 86 once the connections it did ack are
/// finished: a crash between receiving sockets and acking them, without collateral losses.
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
    /// Sockets received after the fault tripped: never acked, never served.
    swallowed: Vec<OwnedFd>,
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

    /// Counts a received connection; keeps it (unacked, unserved) once the fault has tripped,
    /// else gives it back.
    pub fn screen(&mut self, fd: OwnedFd) -> Option<OwnedFd> {
        self.received += 1;
        if self.exit_after.is_some_and(|n| self.received >= n) {
            self.swallowed.push(fd);
            return None;
        }
        Some(fd)
    }

    /// Exits with status 86 once the fault has tripped and the worker has nothing else to do.
    pub fn exit_if_tripped(&self, idle: bool) {
        if !self.swallowed.is_empty() && idle {
            log::warn!(
                "worker {} exiting on purpose with {} connections unacked ({ENV_FAULT_EXIT_AFTER})",
                std::process::id(),
                self.swallowed.len()
            );
            std::process::exit(86);
        }
    }
}
