//! The primary -> worker environment contract, in one place: [`WorkerEnv::apply`] writes it
//! on the worker's command, [`WorkerEnv::get`] reads it once in the worker and removes the
//! variables, so that the worker's own child processes do not inherit them and take themselves
//! for herd workers (Node deletes `NODE_UNIQUE_ID` the same way).
//!
//! The names start with `HERD_WORKER_` and are internal: none is also a user-facing setting
//! (the user's `HERD_MAX_CONNECTIONS` is a flag's environment form, read by the primary's CLI).

use std::os::fd::RawFd;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::event::WorkerId;

/// The worker's id (its presence marks a worker, like `NODE_UNIQUE_ID`).
const ID: &str = "HERD_WORKER_ID";
/// The inherited channel descriptor number.
const CHANNEL_FD: &str = "HERD_WORKER_CHANNEL_FD";
/// `1`: report closed connections promptly (least-connections counts them).
const REPORT_CLOSES: &str = "HERD_WORKER_REPORT_CLOSES";
/// Most connections served at once (0: no limit).
const MAX_CONNECTIONS: &str = "HERD_WORKER_MAX_CONNECTIONS";
/// Milliseconds a worker whose primary is gone may take to finish before it exits.
const ORPHAN_GRACE_MS: &str = "HERD_WORKER_ORPHAN_GRACE_MS";
/// Present: every connection starts with a PROXY protocol header, due within this many
/// milliseconds.
const PROXY_HEADER_MS: &str = "HERD_WORKER_PROXY_HEADER_MS";
/// The inherited descriptor of the worker's status page (absent: the worker publishes none).
const STATUS_FD: &str = "HERD_WORKER_STATUS_FD";
/// `1`: the cluster has a drain delay; a `SIGTERM` sent to the whole process group (systemd's
/// default) only marks the worker as leaving, and the primary says when to stop.
const LEAVE_ON_TERM: &str = "HERD_WORKER_LEAVE_ON_TERM";
/// Requests after which the worker asks to be replaced (0: never).
const MAX_REQUESTS: &str = "HERD_WORKER_MAX_REQUESTS";
/// Every variable of the contract, for removal.
const ALL: [&str; 9] = [
    ID,
    CHANNEL_FD,
    REPORT_CLOSES,
    MAX_CONNECTIONS,
    ORPHAN_GRACE_MS,
    PROXY_HEADER_MS,
    LEAVE_ON_TERM,
    MAX_REQUESTS,
    STATUS_FD,
];
/// The grace when the variable is absent (the primary's default shutdown timeout).
const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(30);

/// What a primary tells a worker it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEnv {
    /// The worker's id.
    pub id: WorkerId,
    /// The descriptor number of the worker's end of its channel.
    pub channel_fd: RawFd,
    /// Report closed connections promptly.
    pub report_closes: bool,
    /// Most connections served at once (0: no limit).
    pub max_connections: usize,
    /// Once its primary is gone, the time a worker may take to finish what it serves before
    /// it exits anyway (the primary's shutdown timeout): no orphan outlives it.
    pub orphan_grace: Duration,
    /// `Some(t)`: every connection starts with a PROXY protocol header, due within `t`.
    pub proxy_header: Option<Duration>,
    /// The cluster has a drain delay: on `SIGTERM` only leave (the primary coordinates).
    pub leave_on_term: bool,
    /// Requests after which the worker asks to be replaced (0: never; the primary has
    /// already added this worker's share of the jitter).
    pub max_requests: u64,
    /// The descriptor number of the worker's status page ([`crate::ipc::StatusPage`]), if any.
    pub status_fd: Option<RawFd>,
}

/// Why the environment did not describe a worker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is missing or not valid")]
pub struct BadWorkerEnv(pub &'static str);

impl WorkerEnv {
    /// Sets the variables on `cmd`.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env(ID, self.id.to_string())
            .env(CHANNEL_FD, self.channel_fd.to_string())
            .env(REPORT_CLOSES, if self.report_closes { "1" } else { "0" })
            .env(MAX_CONNECTIONS, self.max_connections.to_string())
            .env(ORPHAN_GRACE_MS, self.orphan_grace.as_millis().to_string())
            .env(MAX_REQUESTS, self.max_requests.to_string());
        if self.leave_on_term {
            cmd.env(LEAVE_ON_TERM, "1");
        }
        if let Some(t) = self.proxy_header {
            cmd.env(PROXY_HEADER_MS, t.as_millis().to_string());
        }
        if let Some(fd) = self.status_fd {
            cmd.env(STATUS_FD, fd.to_string());
        }
    }

    /// This process's contract, read on first use and then removed from the environment.
    /// `None` in a primary (no `HERD_WORKER_ID`); `Some(Err)` when a primary's variables are
    /// there but broken.
    ///
    /// The first call should come from `main` before other threads start (as
    /// [`crate::Cluster::run`] and [`crate::is_worker`] do), since it changes the environment.
    pub fn get() -> Option<&'static Result<WorkerEnv, BadWorkerEnv>> {
        static ENV: OnceLock<Option<Result<WorkerEnv, BadWorkerEnv>>> = OnceLock::new();
        ENV.get_or_init(|| {
            let read = WorkerEnv::from_vars(|k| std::env::var(k).ok());
            if read.is_some() {
                for k in ALL {
                    std::env::remove_var(k);
                }
            }
            read
        })
        .as_ref()
    }

    /// Parses the contract from a variable lookup.
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<Result<WorkerEnv, BadWorkerEnv>> {
        let id = var(ID)?;
        let parse = || -> Result<WorkerEnv, BadWorkerEnv> {
            Ok(WorkerEnv {
                id: id.parse().map_err(|_| BadWorkerEnv(ID))?,
                channel_fd: var(CHANNEL_FD)
                    .and_then(|v| v.parse().ok())
                    .ok_or(BadWorkerEnv(CHANNEL_FD))?,
                report_closes: var(REPORT_CLOSES).is_some_and(|v| v == "1"),
                max_connections: match var(MAX_CONNECTIONS) {
                    None => 0,
                    Some(v) => v.parse().map_err(|_| BadWorkerEnv(MAX_CONNECTIONS))?,
                },
                max_requests: match var(MAX_REQUESTS) {
                    None => 0,
                    Some(v) => v.parse().map_err(|_| BadWorkerEnv(MAX_REQUESTS))?,
                },
                orphan_grace: match var(ORPHAN_GRACE_MS) {
                    None => DEFAULT_ORPHAN_GRACE,
                    Some(v) => {
                        Duration::from_millis(v.parse().map_err(|_| BadWorkerEnv(ORPHAN_GRACE_MS))?)
                    }
                },
                leave_on_term: var(LEAVE_ON_TERM).is_some_and(|v| v == "1"),
                proxy_header: match var(PROXY_HEADER_MS) {
                    None => None,
                    Some(v) => Some(Duration::from_millis(
                        v.parse().map_err(|_| BadWorkerEnv(PROXY_HEADER_MS))?,
                    )),
                },
                status_fd: match var(STATUS_FD) {
                    None => None,
                    Some(v) => Some(v.parse().map_err(|_| BadWorkerEnv(STATUS_FD))?),
                },
            })
        };
        Some(parse())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn what_apply_writes_parses_back() {
        let env = WorkerEnv {
            id: WorkerId::new(3).unwrap(),
            channel_fd: 7,
            report_closes: true,
            max_connections: 9,
            orphan_grace: Duration::from_millis(1500),
            proxy_header: Some(Duration::from_millis(2500)),
            leave_on_term: true,
            max_requests: 12,
            status_fd: Some(8),
        };
        let mut cmd = Command::new("true");
        env.apply(&mut cmd);
        let vars: HashMap<String, String> = cmd
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.into(), v?.to_str()?.into())))
            .collect();
        assert_eq!(vars.len(), ALL.len());
        let back = WorkerEnv::from_vars(|k| vars.get(k).cloned());
        assert_eq!(back, Some(Ok(env)));
    }

    #[test]
    fn absent_is_a_primary_and_broken_is_an_error() {
        assert_eq!(WorkerEnv::from_vars(|_| None), None);
        let only_id = |k: &str| (k == ID).then(|| "2".to_string());
        assert_eq!(
            WorkerEnv::from_vars(only_id),
            Some(Err(BadWorkerEnv(CHANNEL_FD)))
        );
        let zero = |k: &str| (k == ID).then(|| "0".to_string());
        assert_eq!(WorkerEnv::from_vars(zero), Some(Err(BadWorkerEnv(ID))));
    }
}
