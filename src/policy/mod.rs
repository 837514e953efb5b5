//! Scheduling policies: who accepts a connection, and which worker gets it.
//!
//! Two families, one enum. In the *primary-accepts* family (`round-robin`, `least-connections`,
//! `idle-first`)
//! the primary accepts every connection and asks a [`Balancer`] which worker gets it. In the
//! *workers-accept* family (`shared`, `reuseport`) the primary only creates the listening sockets
//! (so a port conflict fails once, early) and passes them to the workers, described by a
//! [`ListenerPlan`]. Each policy lives in its own file; a new one implements [`Balancer`] (or
//! returns a [`ListenerPlan`]) without touching the others.

mod idle_first;
mod least_connections;
mod reuseport;
mod round_robin;
mod shared;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use idle_first::{IdleFirst, SPREAD};
pub use least_connections::LeastConnections;
pub use round_robin::RoundRobin;

/// What the primary knows about a worker when it picks one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Connections handed to the worker and not yet reported closed.
    pub open: u64,
    /// Its loop waits for events and it has read everything handed to it.
    pub idle: bool,
    /// Connections handed to it that it has not read yet (or holds unserved).
    pub waiting: u64,
    /// Connections it serves now, as it last published (else as the primary counts them).
    pub serving: u64,
    /// How long it has been on its current piece of work (the step of one connection, or a
    /// turn of its loop; zero when it waits, or publishes nothing): a long one is a long
    /// request.
    pub busy_for: Duration,
}

/// Chooses a worker for each connection the primary accepted.
///
/// `workers` has one entry per worker slot, in slot order; `None` marks a slot that cannot take a
/// connection now (dead, starting, draining, or its handoff window is full). Return the index of
/// the chosen slot, or `None` to keep the connection waiting until a slot frees up.
pub trait Balancer: Send {
    /// Picks a slot for the next connection.
    fn pick(&mut self, workers: &[Option<Load>]) -> Option<usize>;

    /// How long a worker may be busy on one step (inside one request) before the primary
    /// takes back what waits unread in its channel, for the others; `None`: never.
    fn rescue_after(&self) -> Option<Duration> {
        None
    }

    /// Whether the primary keeps a queue every (herd) worker takes from when it is done with
    /// what it has, for connections that find no worker idle.
    fn overflow(&self) -> bool {
        false
    }

    /// Whether the next connection goes to that queue rather than to the pick's worker.
    fn to_overflow(&self, _workers: &[Option<Load>]) -> bool {
        false
    }
}

/// How the listening sockets are laid out when workers accept for themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerPlan {
    /// One listening socket, shared by every worker (Node's `SCHED_NONE`).
    Shared,
    /// One `SO_REUSEPORT` listening socket per worker slot; the kernel spreads connections.
    PerWorker,
}

/// A scheduling policy, chosen at start (`--policy`, `HERD_POLICY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// The primary accepts; workers get connections in strict rotation (Node's `SCHED_RR`).
    #[default]
    RoundRobin,
    /// The primary accepts; the worker with the fewest open connections gets the next one.
    LeastConnections,
    /// Every worker accepts on one shared listening socket (Node's `SCHED_NONE`).
    Shared,
    /// Every worker accepts on its own `SO_REUSEPORT` socket.
    ReusePort,
    /// The primary accepts; an idle worker gets the next one (in rotation), else the one with
    /// the fewest connections waiting for it.
    IdleFirst,
}

impl Policy {
    /// Every policy, in the order the docs list them.
    pub const ALL: [Policy; 5] = [
        Policy::RoundRobin,
        Policy::LeastConnections,
        Policy::Shared,
        Policy::ReusePort,
        Policy::IdleFirst,
    ];

    /// The canonical name (`round-robin`, `least-connections`, `shared`, `reuseport`,
    /// `idle-first`).
    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round-robin",
            Policy::LeastConnections => "least-connections",
            Policy::Shared => "shared",
            Policy::ReusePort => "reuseport",
            Policy::IdleFirst => "idle-first",
        }
    }

    /// The balancer for primary-accepts policies; `None` when workers accept themselves.
    pub fn balancer(self) -> Option<Box<dyn Balancer>> {
        match self {
            Policy::RoundRobin => Some(Box::new(RoundRobin::default())),
            Policy::LeastConnections => Some(Box::new(LeastConnections::default())),
            Policy::IdleFirst => Some(Box::new(IdleFirst::default())),
            Policy::Shared | Policy::ReusePort => None,
        }
    }

    /// The listener layout for workers-accept policies; `None` when the primary accepts.
    pub fn listener_plan(self) -> Option<ListenerPlan> {
        match self {
            Policy::Shared => Some(shared::PLAN),
            Policy::ReusePort => Some(reuseport::PLAN),
            Policy::RoundRobin | Policy::LeastConnections | Policy::IdleFirst => None,
        }
    }

    /// Whether workers must report closed connections promptly (the balancer counts them).
    pub fn needs_close_reports(self) -> bool {
        matches!(self, Policy::LeastConnections)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown policy name.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "unknown policy '{0}' (valid: round-robin (rr), least-connections, shared (none), reuseport, idle-first)"
)]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;

    /// Accepts the canonical names and Node's `NODE_CLUSTER_SCHED_POLICY` names (`rr`, `none`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "round-robin" | "roundrobin" | "rr" => Ok(Policy::RoundRobin),
            "least-connections" | "leastconn" | "lc" => Ok(Policy::LeastConnections),
            "shared" | "none" => Ok(Policy::Shared),
            "reuseport" | "reuse-port" => Ok(Policy::ReusePort),
            "idle-first" | "idlefirst" => Ok(Policy::IdleFirst),
            _ => Err(UnknownPolicy(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_both_ways() {
        for p in Policy::ALL {
            assert_eq!(p.name().parse::<Policy>().unwrap(), p);
        }
        assert_eq!("rr".parse::<Policy>().unwrap(), Policy::RoundRobin);
        assert_eq!("none".parse::<Policy>().unwrap(), Policy::Shared);
        let e = "fastest".parse::<Policy>().unwrap_err().to_string();
        assert!(e.contains("round-robin") && e.contains("reuseport"), "{e}");
    }
}
