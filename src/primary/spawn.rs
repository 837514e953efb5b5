//! Starting a worker process: the program, its arguments and environment, and its end of a
//! fresh channel kept open across `exec`. A herd worker is this program again with herd's
//! channel; a foreign (Node) worker is the user's command with Node's (`herd run`).

use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::event::WorkerId;
use crate::ipc::node::{self, NodeLink};
use crate::ipc::{Channel, Link, StatusPage, WorkerLink};
use crate::worker_env::WorkerEnv;

/// A worker just started, and the primary's link to it.
///
/// A herd worker's link ([`Link::Herd`]) holds a second handle on the worker's end of the
/// channel (close-on-exec, so only the worker has it otherwise) for reading back what the
/// worker leaves unread, and the [`StatusPage`] the worker publishes in, when one could be
/// created ([`WorkerLink::published`]: then connections are given). Without a page (its
/// creation failed) connections are kept until acked. A Node worker's link ([`Link::Node`])
/// has neither: Node's protocol acks every connection.
#[derive(Debug)]
pub struct Spawned {
    /// The child process.
    pub child: Child,
    /// The primary's end of its channel, in the worker's protocol.
    pub link: Link,
}

/// How the kernel schedules worker processes (`--worker-sched`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WorkerSched {
    /// The primary's own policy, inherited (normally `SCHED_OTHER`): a worker that wakes up
    /// may preempt what runs on its core, the primary and the other workers included.
    #[default]
    Normal,
    /// `SCHED_BATCH`: a waking worker does not preempt; it runs on an idle core or when the
    /// running task's slice ends. The primary is no longer preempted by the worker it has
    /// just handed a connection to, and workers sharing a core switch less often: more
    /// throughput on busy cores, at the cost of tail latency when cores are contended.
    Batch,
}

/// How to start a worker.
#[derive(Debug, Clone)]
pub struct Spawner {
    /// The program (the primary's own executable, resolved at start).
    pub exe: PathBuf,
    /// Its arguments (the primary's own, unless the builder set others).
    pub args: Vec<OsString>,
    /// Extra environment for workers.
    pub env: Vec<(OsString, OsString)>,
    /// Whether workers report closed connections promptly.
    pub report_closes: bool,
    /// Most connections one worker serves at once (0: no limit).
    pub max_connections: usize,
    /// How long a worker whose primary is gone may take to finish (the shutdown timeout).
    pub orphan_grace: std::time::Duration,
    /// `Some(t)`: connections start with a PROXY protocol header, due within `t`.
    pub proxy_header: Option<std::time::Duration>,
    /// The cluster has a drain delay (workers leave on `SIGTERM`, the primary coordinates).
    pub leave_on_term: bool,
    /// Requests after which a worker is replaced (0: never), plus a random share of
    /// `max_requests_jitter` per worker so that they are not all replaced at once.
    pub max_requests: u64,
    /// Most extra requests a worker's limit gets (gunicorn's `max_requests_jitter`).
    pub max_requests_jitter: u64,
    /// Workers are this foreign command speaking Node's cluster protocol instead (`herd run`).
    pub node: Option<NodeCommand>,
    /// How the kernel schedules the workers.
    pub sched: WorkerSched,
}

/// A command whose processes are Node.js cluster workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCommand {
    /// The program (`node`), looked up in `PATH`.
    pub program: OsString,
    /// Its arguments (`app.js ...`).
    pub args: Vec<OsString>,
}

impl Spawner {
    /// One worker's request limit: `max_requests` plus a random 0..=`max_requests_jitter`.
    fn request_limit(&self) -> u64 {
        if self.max_requests == 0 {
            return 0;
        }
        use std::hash::BuildHasher;
        // Each RandomState has fresh keys: a cheap random number, no dependency.
        let r = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        let jitter = r % self.max_requests_jitter.saturating_add(1).max(1);
        self.max_requests.saturating_add(jitter)
    }

    fn apply_sched(&self, cmd: &mut Command) {
        if self.sched == WorkerSched::Batch {
            crate::sys::batch_scheduling_in_child(cmd);
        }
    }

    /// Starts worker `id` with its end of a fresh channel; returns the child and the
    /// primary's link to it (see [`Spawned`]).
    pub fn spawn(&self, id: WorkerId) -> io::Result<Spawned> {
        match &self.node {
            Some(command) => self.spawn_node(command, id),
            None => self.spawn_herd(id),
        }
    }

    /// A herd worker, with its status page when one can be created.
    fn spawn_herd(&self, id: WorkerId) -> io::Result<Spawned> {
        let (mine, theirs) = Channel::pair()?;
        let worker_end = theirs.try_clone()?;
        let fd = theirs.raw_fd();
        let (status, status_fd) = match StatusPage::create() {
            Ok((page, fd)) => (Some(page), Some(fd)),
            Err(e) => {
                log::warn!("cannot create worker {id}'s status page: {e}");
                (None, None)
            }
        };
        let mut cmd = Command::new(&self.exe);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        WorkerEnv {
            id,
            channel_fd: fd,
            report_closes: self.report_closes,
            max_connections: self.max_connections,
            orphan_grace: self.orphan_grace,
            proxy_header: self.proxy_header,
            leave_on_term: self.leave_on_term,
            max_requests: self.request_limit(),
            status_fd: status_fd.as_ref().map(|f| f.as_raw_fd()),
        }
        .apply(&mut cmd);
        crate::sys::keep_open_across_exec(&mut cmd, fd);
        self.apply_sched(&mut cmd);
        if let Some(f) = &status_fd {
            crate::sys::keep_open_across_exec(&mut cmd, f.as_raw_fd());
        }
        let child = cmd.spawn()?;
        drop(theirs);
        drop(status_fd);
        let mut link = WorkerLink::new(mine, Some(worker_end));
        if let Some(page) = status {
            link = link.published(page);
        }
        Ok(Spawned {
            child,
            link: Link::Herd(link),
        })
    }

    /// A Node worker: the command with the channel at fd 3 and Node's environment, as
    /// `cluster.fork()` starts one. The primary keeps no handle on the worker's end, so the
    /// worker sees end of file on fd 3 as soon as the primary is gone (and exits), and the
    /// primary sees it as soon as the worker disconnects.
    fn spawn_node(&self, command: &NodeCommand, id: WorkerId) -> io::Result<Spawned> {
        let (mine, theirs) = node::Stream::pair()?;
        let mut cmd = Command::new(&command.program);
        cmd.args(&command.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(node::env::UNIQUE_ID, id.to_string())
            .env(node::env::CHANNEL_FD, node::env::FD.to_string())
            .env(node::env::SERIALIZATION, "json")
            .stdin(Stdio::null());
        crate::sys::install_fd_in_child(&mut cmd, theirs.as_raw_fd(), node::env::FD);
        self.apply_sched(&mut cmd);
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run {}: {e}", command.program.to_string_lossy()),
            )
        })?;
        drop(theirs);
        Ok(Spawned {
            child,
            link: Link::Node(NodeLink::new(mine)),
        })
    }
}
