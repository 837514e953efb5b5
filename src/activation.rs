//! Listening sockets a primary inherits instead of binding: from systemd socket activation
//! (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`, read with the `sd-notify` crate), or from the
//! herd primary it replaces in an upgrade (`HERD_UPGRADE_*`, see `primary::upgrade`).
//!
//! Every inherited number is checked (open, a socket, TCP, listening) before it is used, and the
//! variables are removed once read, so the workers this primary starts do not see them.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, RawFd};
use std::time::Duration;

use crate::ipc::Channel;
use crate::listen::{self, Bound};
use crate::policy::{ListenerPlan, Policy};

/// The listening descriptors an upgrading primary passes to its successor, comma-separated.
pub const UPGRADE_LISTEN_FDS: &str = "HERD_UPGRADE_LISTEN_FDS";
/// The successor's end of the channel to the primary it replaces.
pub const UPGRADE_CHANNEL_FD: &str = "HERD_UPGRADE_CHANNEL_FD";
/// systemd's variables (`sd_listen_fds(3)`).
const SYSTEMD_VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// Where the inherited sockets came from.
#[derive(Debug)]
pub enum Source {
    /// systemd (or `systemd-socket-activate`), with the names from `LISTEN_FDNAMES`.
    Systemd {
        /// One name per socket (`unknown` when none were given).
        names: Vec<String>,
    },
    /// The primary this one replaces; `link` reaches it.
    Upgrade {
        /// The channel to the old primary.
        link: Channel,
    },
}

/// Listening sockets this process was given, in the order given.
#[derive(Debug)]
pub struct Inherited {
    /// The sockets, checked, non-blocking and close-on-exec.
    pub listeners: Vec<TcpListener>,
    /// Who passed them.
    pub source: Source,
}

/// Why inherited sockets cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InheritError {
    /// `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES` could not be read.
    #[error("socket activation: {0}")]
    Systemd(io::Error),
    /// A passed descriptor is not a listening TCP socket.
    #[error("inherited socket '{name}': {source}")]
    NotAListener {
        /// Its name (from `LISTEN_FDNAMES`) or number.
        name: String,
        /// Which check failed.
        #[source]
        source: io::Error,
    },
    /// The upgrade variables are malformed.
    #[error("upgrade: {0}")]
    Upgrade(String),
    /// The policy needs a different number of sockets than were passed.
    #[error("the {policy} policy needs {needed} inherited listening socket{s} ({why}); got {got}", s = if *.needed == 1 { "" } else { "s" })]
    Count {
        /// The policy.
        policy: Policy,
        /// How many it needs.
        needed: usize,
        /// How many were passed.
        got: usize,
        /// Why that many.
        why: &'static str,
    },
}

/// Takes the sockets this process inherited, if any: an upgrade's first, else systemd's (only
/// when `LISTEN_PID` is this process). Call once, before starting threads; the variables are
/// removed.
pub fn take() -> Result<Option<Inherited>, InheritError> {
    if let Some(inherited) = take_upgrade()? {
        return Ok(Some(inherited));
    }
    let passed = sd_notify::listen_fds_with_names().map_err(InheritError::Systemd);
    for var in SYSTEMD_VARS {
        std::env::remove_var(var);
    }
    let passed: Vec<(RawFd, String)> = passed?.collect();
    if passed.is_empty() {
        return Ok(None);
    }
    let mut listeners = Vec::with_capacity(passed.len());
    let mut names = Vec::with_capacity(passed.len());
    for (fd, name) in passed {
        let shown = if name == "unknown" || name.is_empty() {
            format!("fd {fd}")
        } else {
            name.clone()
        };
        let l = crate::sys::own_inherited_listener(fd).map_err(|source| {
            InheritError::NotAListener {
                name: shown,
                source,
            }
        })?;
        listeners.push(l);
        names.push(name);
    }
    log::info!(
        "socket activation: {} inherited socket{} ({})",
        listeners.len(),
        if listeners.len() == 1 { "" } else { "s" },
        names.join(", ")
    );
    Ok(Some(Inherited {
        listeners,
        source: Source::Systemd { names },
    }))
}

fn take_upgrade() -> Result<Option<Inherited>, InheritError> {
    let (Some(fds), Some(link)) = (
        std::env::var_os(UPGRADE_LISTEN_FDS),
        std::env::var_os(UPGRADE_CHANNEL_FD),
    ) else {
        return Ok(None);
    };
    std::env::remove_var(UPGRADE_LISTEN_FDS);
    std::env::remove_var(UPGRADE_CHANNEL_FD);
    let number = |s: &str| {
        s.trim()
            .parse::<RawFd>()
            .map_err(|_| InheritError::Upgrade(format!("'{s}' is not a descriptor number")))
    };
    let link = number(&link.to_string_lossy())?;
    let link = Channel::from_inherited(link)
        .map_err(|e| InheritError::Upgrade(format!("channel fd {link}: {e}")))?;
    let mut listeners = Vec::new();
    for part in fds.to_string_lossy().split(',').filter(|p| !p.is_empty()) {
        let fd = number(part)?;
        let l = crate::sys::own_inherited_listener(fd).map_err(|source| {
            InheritError::NotAListener {
                name: format!("fd {fd}"),
                source,
            }
        })?;
        listeners.push(l);
    }
    Ok(Some(Inherited {
        listeners,
        source: Source::Upgrade { link },
    }))
}

/// Lays inherited sockets out as `policy` needs them for `workers` workers: one socket for the
/// primary to accept on, one shared by the workers, or (reuseport) one per worker. With
/// `TCP_DEFER_ACCEPT` when `defer` is set.
pub fn arrange(
    policy: Policy,
    listeners: Vec<TcpListener>,
    workers: usize,
    defer: Option<Duration>,
) -> Result<Bound, InheritError> {
    let got = listeners.len();
    let (needed, why) = match policy.listener_plan() {
        None => (1, "the primary accepts on it"),
        Some(ListenerPlan::Shared) => (1, "every worker accepts on it"),
        Some(ListenerPlan::PerWorker) => (workers, "one per worker"),
    };
    if got != needed {
        return Err(InheritError::Count {
            policy,
            needed,
            got,
            why,
        });
    }
    let local_addr = listeners[0]
        .local_addr()
        .map_err(|source| InheritError::NotAListener {
            name: "first".into(),
            source,
        })?;
    if let Some(within) = defer {
        for l in &listeners {
            if let Err(e) = listen::defer_accept(l.as_fd(), within) {
                log::warn!("TCP_DEFER_ACCEPT not available: {e}");
            }
        }
    }
    let mut listeners = listeners;
    let accept = match policy.listener_plan() {
        None => listeners.pop(),
        Some(_) => None,
    };
    Ok(Bound {
        accept,
        handed: listeners,
        local_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listeners(n: usize) -> Vec<TcpListener> {
        (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect()
    }

    #[test]
    fn each_policy_gets_its_layout() {
        let b = arrange(Policy::RoundRobin, listeners(1), 4, None).unwrap();
        assert!(b.accept.is_some() && b.handed.is_empty());
        let b = arrange(Policy::Shared, listeners(1), 4, None).unwrap();
        assert!(b.accept.is_none() && b.handed.len() == 1);
        let b = arrange(Policy::ReusePort, listeners(3), 3, None).unwrap();
        assert_eq!(b.handed.len(), 3);
    }

    #[test]
    fn a_wrong_count_says_how_many() {
        let e = arrange(Policy::ReusePort, listeners(1), 4, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 4") && e.contains("got 1"), "{e}");
        let e = arrange(Policy::RoundRobin, listeners(2), 4, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 1 inherited listening socket ("), "{e}");
    }
}
