//! The metrics endpoint on the primary's loop (`--metrics ADDR`): while it is on, the
//! primary asks the workers for their counters and samples their CPU and memory every
//! [`REFRESH`], and a scrape is answered at once from what it last heard (a frozen worker
//! cannot hold a scrape up).

use std::time::{Duration, Instant};

use mio::Token;

use super::Primary;
use crate::metrics::endpoint::MetricsServer;
use crate::metrics::{SlotMetrics, Snapshot};

/// Tokens of the metrics endpoint (listener, then its clients).
const METRICS_BASE: usize = usize::MAX / 8;
/// How often counters are asked for while metrics are served.
const REFRESH: Duration = Duration::from_secs(1);

impl Primary {
    /// Opens the metrics endpoint if one is configured.
    pub(super) fn open_metrics(&mut self) -> Result<(), super::PrimaryError> {
        let Some(addr) = self.config.metrics else {
            return Ok(());
        };
        let server = MetricsServer::bind(addr, self.poll.registry(), METRICS_BASE)?;
        let bound = server.local_addr().unwrap_or(addr);
        log::info!("metrics at http://{bound}/metrics");
        self.admin.metrics = Some(server);
        self.admin.next_refresh = Some(Instant::now());
        Ok(())
    }

    /// True when `token` belongs to the metrics endpoint.
    pub(super) fn metrics_owns(&self, token: Token) -> bool {
        self.admin.metrics.as_ref().is_some_and(|m| m.owns(token))
    }

    /// Readiness on the metrics endpoint.
    pub(super) fn on_metrics(&mut self, token: Token) {
        let Some(mut server) = self.admin.metrics.take() else {
            return;
        };
        server.ready(token, self.poll.registry(), || self.snapshot().render());
        self.admin.metrics = Some(server);
    }

    /// Every [`REFRESH`] while metrics are on: ask for counters, sample CPU and memory.
    pub(super) fn refresh_due(&mut self, now: Instant) {
        if self.admin.next_refresh.is_none_or(|t| t > now) {
            return;
        }
        self.admin.next_refresh = Some(now + REFRESH);
        self.refresh_stats();
        for (_, p) in self.workers.procs_mut() {
            p.usage.sample(p.pid, p.started);
        }
    }

    /// What a scrape shows now.
    pub(super) fn snapshot(&self) -> Snapshot {
        let rows = super::report::rows(&self.workers, self.config.policy.needs_close_reports());
        let now = Instant::now();
        let slots: Vec<SlotMetrics> = rows
            .iter()
            .zip(self.workers.slots())
            .enumerate()
            .map(|(i, (row, slot))| {
                let mut latency = slot.past.latency;
                let mut ticks = slot.past_cpu_ticks;
                for (_, p) in self.workers.procs().filter(|(_, p)| p.slot.0 == i) {
                    latency.add(&p.stats.latency);
                    ticks += p.usage.cpu_ticks;
                }
                let current = slot.current.and_then(|k| self.workers.get(k));
                SlotMetrics {
                    worker: row.id,
                    connections: row.connections,
                    requests: row.requests,
                    open: row.open,
                    restarts: u64::from(row.restarts),
                    cpu_seconds: ticks as f64 / 100.0,
                    rss_bytes: current.map_or(0, |p| p.usage.rss_bytes),
                    report_age_seconds: current
                        .and_then(|p| p.stats_at)
                        .map(|t| now.saturating_duration_since(t).as_secs_f64()),
                    latency,
                }
            })
            .collect();
        let accepted = if self.config.policy.balancer().is_some() {
            self.acceptor.accepted()
        } else {
            slots.iter().map(|s| s.connections).sum()
        };
        Snapshot {
            slots,
            workers: self.workers.active() as u64,
            accepted,
            pending: self.acceptor.waiting() as u64,
        }
    }
}
