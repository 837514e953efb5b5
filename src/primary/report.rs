//! The per-worker statistics table (printed on `SIGUSR2` and at shutdown).

use std::fmt::Write;

use slab::Slab;

use super::slot::{Proc, Slot};
use crate::policy::Policy;

/// One row of the table: a worker slot's counters, over every process that lived in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Row {
    /// Worker id.
    pub id: usize,
    /// Pid of the current process (0 if none).
    pub pid: u32,
    /// Connections the primary handed to it.
    pub handed: u64,
    /// Connections it took (handed or accepted itself), as it reported.
    pub connections: u64,
    /// Connections open at its last report.
    pub open: u64,
    /// Requests it served, as it reported.
    pub requests: u64,
    /// Times the slot's worker was replaced after an unexpected exit.
    pub restarts: u32,
}

/// Collects one row per slot. `primary_counts`: workers report closes to the primary (the
/// least-connections policy decides on that count), so the primary's own count of open
/// connections is the freshest; otherwise the worker's last report is.
pub fn rows(slots: &[Slot], procs: &Slab<Proc>, primary_counts: bool) -> Vec<Row> {
    slots
        .iter()
        .map(|s| {
            let mut row = Row {
                id: s.id,
                handed: s.past_handed,
                connections: s.past.connections,
                requests: s.past.requests,
                restarts: s.restarts,
                ..Row::default()
            };
            for (key, p) in procs.iter().filter(|(_, p)| p.slot == s.id - 1) {
                if s.current == Some(key) {
                    row.pid = p.pid;
                }
                row.handed += p.handed;
                row.connections += p.stats.connections;
                row.open += if primary_counts { p.open } else { p.stats.open };
                row.requests += p.stats.requests;
            }
            row
        })
        .collect()
}

/// Renders the table as text, one line per worker and a total.
pub fn table(slots: &[Slot], procs: &Slab<Proc>, policy: Policy) -> String {
    let rows = rows(slots, procs, policy.needs_close_reports());
    for r in &rows {
        log::debug!("worker stats: {r:?}");
    }
    let mut out = format!("worker statistics ({policy}):\n");
    let _ = writeln!(
        out,
        "{:>6} {:>8} {:>10} {:>12} {:>6} {:>10} {:>8}",
        "worker", "pid", "handed", "connections", "open", "requests", "restarts"
    );
    let mut total = Row::default();
    for r in &rows {
        let _ = writeln!(
            out,
            "{:>6} {:>8} {:>10} {:>12} {:>6} {:>10} {:>8}",
            r.id, r.pid, r.handed, r.connections, r.open, r.requests, r.restarts
        );
        total.handed += r.handed;
        total.connections += r.connections;
        total.open += r.open;
        total.requests += r.requests;
        total.restarts += r.restarts;
    }
    let _ = write!(
        out,
        "{:>6} {:>8} {:>10} {:>12} {:>6} {:>10} {:>8}",
        "total", "-", total.handed, total.connections, total.open, total.requests, total.restarts
    );
    out
}
