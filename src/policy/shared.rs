//! `shared`: every worker accepts on the one listening socket the primary created (Node's
//! `SCHED_NONE`). The kernel wakes the workers waiting in `epoll`; whoever accepts first wins, so
//! the split follows which worker is idle (or just luckiest), not a rotation.

use super::ListenerPlan;

/// One listener, passed to every worker.
pub(super) const PLAN: ListenerPlan = ListenerPlan::Shared;
