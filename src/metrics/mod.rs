//! Prometheus metrics of a cluster (`--metrics ADDR`): a [`Snapshot`] of what the primary
//! last heard, encoded with the official `prometheus-client` crate in the Prometheus text
//! format, and the small HTTP endpoint on the primary's loop that serves it ([`endpoint`]).
//!
//! Counters are kept per worker slot (label `worker`) and never go backwards: a slot's totals
//! include the processes that lived in it before. Every worker metric comes with
//! `herd_report_age_seconds`, the age of the report it is built from: a scrape never waits
//! on a worker, so a frozen worker shows old numbers and a growing age.

/// The HTTP endpoint serving `/metrics`.
pub mod endpoint;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::latency::{Latency, BOUNDS};

/// One worker slot's numbers.
#[derive(Debug, Clone, Default)]
pub struct SlotMetrics {
    /// The worker id (the `worker` label).
    pub worker: usize,
    /// Connections it took, over every process that served the slot.
    pub connections: u64,
    /// Requests it served, likewise.
    pub requests: u64,
    /// Connections open now.
    pub open: u64,
    /// Replacements after an unexpected exit.
    pub restarts: u64,
    /// CPU seconds used, likewise.
    pub cpu_seconds: f64,
    /// Resident memory of its current process (0 without one).
    pub rss_bytes: u64,
    /// Seconds since its current process last reported (`None`: no report yet or no process).
    pub report_age_seconds: Option<f64>,
    /// Request latencies, likewise.
    pub latency: Latency,
}

/// What a scrape shows: every slot, and the primary's own numbers.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// One entry per worker slot ever used.
    pub slots: Vec<SlotMetrics>,
    /// Workers the cluster runs now.
    pub workers: u64,
    /// Connections accepted in total (by the primary, or by the workers for the
    /// workers-accept policies).
    pub accepted: u64,
    /// Accepted connections waiting for a worker.
    pub pending: u64,
}

impl Snapshot {
    /// The exposition, in the Prometheus text format (version 0.0.4).
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
            log::error!("metrics: cannot encode: {e}");
        }
        out
    }
}

type Labels = [(&'static str, String); 1];

fn labels(worker: usize) -> Labels {
    [("worker", worker.to_string())]
}

/// Encodes one metric per slot (`value` gives it; `None` leaves the slot out).
fn per_slot<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    slots: &[SlotMetrics],
    name: &str,
    help: &str,
    kind: MetricType,
    value: impl Fn(&SlotMetrics) -> Option<M>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for s in slots {
        if let Some(m) = value(s) {
            let l = labels(s.worker);
            m.encode(family.encode_family(&l)?)?;
        }
    }
    Ok(())
}

fn one<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    m: M,
) -> Result<(), std::fmt::Error> {
    let kind = m.metric_type();
    m.encode(encoder.encode_descriptor(name, help, None, kind)?)
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let s = &self.slots;
        let count =
            |f: fn(&SlotMetrics) -> u64| move |m: &SlotMetrics| Some(ConstCounter::new(f(m)));
        per_slot(
            &mut e,
            s,
            "herd_connections",
            "Connections a worker slot took.",
            Counter,
            count(|m| m.connections),
        )?;
        per_slot(
            &mut e,
            s,
            "herd_requests",
            "Requests a worker slot served.",
            Counter,
            count(|m| m.requests),
        )?;
        per_slot(
            &mut e,
            s,
            "herd_worker_restarts",
            "Times a worker slot's worker was replaced after an unexpected exit.",
            Counter,
            count(|m| m.restarts),
        )?;
        per_slot(
            &mut e,
            s,
            "herd_open_connections",
            "Connections a worker slot serves now.",
            Gauge,
            |m| Some(ConstGauge::new(m.open as i64)),
        )?;
        per_slot(
            &mut e,
            s,
            "herd_cpu_seconds",
            "CPU time a worker slot's processes used.",
            Counter,
            |m| Some(ConstCounter::new(m.cpu_seconds)),
        )?;
        per_slot(
            &mut e,
            s,
            "herd_resident_memory_bytes",
            "Resident memory of a worker slot's current process.",
            Gauge,
            |m| Some(ConstGauge::new(m.rss_bytes as i64)),
        )?;
        per_slot(
            &mut e,
            s,
            "herd_report_age_seconds",
            "Seconds since a worker last reported the numbers shown.",
            Gauge,
            |m| m.report_age_seconds.map(ConstGauge::new),
        )?;
        {
            let mut family = e.encode_descriptor(
                "herd_request_duration_seconds",
                "Time from a request's first byte to its answer.",
                None,
                MetricType::Histogram,
            )?;
            for m in s {
                let mut buckets: Vec<(f64, u64)> = BOUNDS
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .zip(m.latency.counts)
                    .collect();
                buckets.truncate(BOUNDS.len() + 1);
                let l = labels(m.worker);
                family
                    .encode_family(&l)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        m.latency.sum_seconds(),
                        m.latency.count(),
                        &buckets,
                        None,
                    )?;
            }
        }
        one(
            &mut e,
            "herd_workers",
            "Workers the cluster runs now.",
            ConstGauge::new(self.workers as i64),
        )?;
        one(
            &mut e,
            "herd_accepted_connections",
            "Connections accepted in total.",
            ConstCounter::new(self.accepted),
        )?;
        one(
            &mut e,
            "herd_pending_connections",
            "Accepted connections waiting for a worker.",
            ConstGauge::new(self.pending as i64),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let mut latency = Latency::default();
        latency.record(std::time::Duration::from_millis(2));
        let text = Snapshot {
            slots: vec![SlotMetrics {
                worker: 1,
                requests: 5,
                latency,
                report_age_seconds: Some(0.5),
                ..Default::default()
            }],
            workers: 1,
            accepted: 7,
            pending: 0,
        }
        .render();
        for needle in [
            "herd_requests_total{worker=\"1\"} 5",
            "herd_request_duration_seconds_bucket{worker=\"1\",le=\"+Inf\"} 1",
            "herd_request_duration_seconds_count{worker=\"1\"} 1",
            "herd_accepted_connections_total 7",
            "herd_report_age_seconds{worker=\"1\"} 0.5",
        ] {
            assert!(text.contains(needle), "{needle} in\n{text}");
        }
    }
}
