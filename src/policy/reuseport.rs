//! `reuseport`: one `SO_REUSEPORT` listening socket per worker slot (nginx's `reuseport`). The
//! kernel hashes each new connection's 4-tuple onto one socket's accept queue, so there is no
//! thundering herd and no handoff, but also no regard for how busy a worker is.

use super::ListenerPlan;

/// One listener per worker slot, all bound to the same address.
pub(super) const PLAN: ListenerPlan = ListenerPlan::PerWorker;
