//! The per-worker statistics table: asked of the workers on `SIGUSR2` and printed once they
//! have all answered, and printed at shutdown.

use std::fmt::Write;
use std::time::{Duration, Instant};

use super::workers::Workers;
use super::Primary;
use crate::ipc::ToWorker;
use crate::policy::Policy;

/// One row of the table: a worker slot's counters, over every process that lived in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Row {
    /// Worker id.
    pub id: usize,
    /// Pid of the current process, or of the last one if the slot is empty (0 if never).
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
    /// What is wrong with the current worker, if anything: `unresponsive` (the watchdog
    /// marked it), `no answer` (its counters are older than this request).
    pub note: &'static str,
}

/// Collects one row per slot. `primary_counts`: workers report closes to the primary (the
/// least-connections policy decides on that count), so the primary's own count of open
/// connections is the freshest; otherwise the worker's last report is.
pub fn rows(workers: &Workers, primary_counts: bool) -> Vec<Row> {
    workers
        .slots()
        .iter()
        .map(|s| {
            let mut row = Row {
                id: s.id.get(),
                pid: s.last_pid.unwrap_or(0),
                handed: s.past_handed,
                connections: s.past.connections,
                requests: s.past.requests,
                restarts: s.restarts,
                ..Row::default()
            };
            for (key, p) in workers.procs().filter(|(_, p)| p.slot.0 == s.id.index()) {
                if s.current == Some(key) {
                    row.pid = p.pid;
                    row.note = if p.watch.unresponsive() {
                        "unresponsive"
                    } else if !p.stats_fresh {
                        "no answer"
                    } else {
                        ""
                    };
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
pub fn table(workers: &Workers, policy: Policy) -> String {
    let rows = rows(workers, policy.needs_close_reports());
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
        let _ = write!(
            out,
            "{:>6} {:>8} {:>10} {:>12} {:>6} {:>10} {:>8}",
            r.id, r.pid, r.handed, r.connections, r.open, r.requests, r.restarts
        );
        if !r.note.is_empty() {
            let _ = write!(out, "  {}", r.note);
        }
        out.push('\n');
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

/// How long a statistics request waits for slow workers before printing what it has.
const STATS_PATIENCE: Duration = Duration::from_secs(1);

impl Primary {
    /// `SIGUSR2`: asks every worker for its counters; the table is printed once all answered.
    pub(super) fn request_stats(&mut self) {
        self.phase.stats_wanted = Some(Instant::now() + STATS_PATIENCE);
        for key in self.workers.keys() {
            let Some(p) = self.workers.get_mut(key) else {
                continue;
            };
            if !p.channel_closed {
                // A Node worker has no statistics to send: the primary's counts are its row.
                p.stats_fresh = p.link.is_node();
                p.link.send(ToWorker::StatsRequest);
                self.flush(key);
            }
        }
        self.report_if_complete();
    }

    /// Prints the table if one was asked for and every live, responsive worker has answered.
    pub(super) fn report_if_complete(&mut self) {
        if self.phase.stats_wanted.is_none() {
            return;
        }
        let waiting = self
            .workers
            .procs()
            .any(|(_, p)| !p.channel_closed && !p.stats_fresh && !p.watch.unresponsive());
        if !waiting {
            self.print_report();
        }
    }

    /// Prints the table with what the workers last said (a row whose worker did not answer
    /// says so).
    pub(super) fn print_report(&mut self) {
        self.phase.stats_wanted = None;
        log::info!("{}", table(&self.workers, self.config.policy));
    }
}
