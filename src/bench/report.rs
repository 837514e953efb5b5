//! The results of a comparison: one [`PolicyResult`] per policy, rendered as a text table
//! (policies as rows) or as JSON (one object per policy).

use std::fmt::Write;
use std::time::Duration;

use super::cluster::{ProcUsage, Sample};
use super::load::Stats;

/// What was measured and how: the header of the table and of the JSON.
#[derive(Debug, Clone)]
pub struct Meta {
    /// Workload name (`keepalive`, `close`, `mixed`).
    pub workload: String,
    /// Workers per cluster (0 when an external target was measured).
    pub workers: u16,
    /// Concurrent connections.
    pub connections: usize,
    /// Load-generator threads.
    pub threads: usize,
    /// Measured window of one run.
    pub duration: Duration,
    /// Warm-up before each window.
    pub warmup: Duration,
    /// Runs per policy (the reported one is the median by requests per second).
    pub repeat: usize,
    /// The external server measured instead of a herd cluster, if any.
    pub target: Option<String>,
    /// The `mixed` workload's costs (`--work`), when that is the workload.
    pub work: Option<String>,
}

/// The measurements of one policy (the median run when repeated).
#[derive(Debug, Clone)]
pub struct PolicyResult {
    /// Policy name (or a label for an external target).
    pub name: String,
    /// What the load generator saw.
    pub stats: Stats,
    /// Worker pids of the cluster (empty when unknown).
    pub workers: Vec<u32>,
    /// CPU and context switches of the server's processes during the window, when known.
    pub server: Option<Sample>,
    /// CPU the load generator used during the window.
    pub client: ProcUsage,
    /// Requests per second of every run of this policy, in the order they ran.
    pub runs: Vec<f64>,
    /// p99 latency (microseconds) of every run, in the order they ran.
    pub runs_p99_us: Vec<u64>,
}

impl PolicyResult {
    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.stats.rate()
    }

    /// A latency quantile in microseconds (0 when nothing was recorded).
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.stats.latency.is_empty() {
            0
        } else {
            self.stats.latency.value_at_quantile(q)
        }
    }

    /// Largest latency in microseconds.
    pub fn max_us(&self) -> u64 {
        self.stats.latency.max()
    }

    /// Successful requests per worker pid: every known worker (even one that served nothing),
    /// then any other pid seen, in pid order.
    pub fn per_worker(&self) -> Vec<(u32, u64)> {
        let mut pids: Vec<u32> = self.workers.clone();
        pids.extend(self.stats.per_pid.keys().copied());
        pids.sort_unstable();
        pids.dedup();
        pids.into_iter()
            .map(|p| (p, self.stats.per_pid.get(&p).copied().unwrap_or(0)))
            .collect()
    }

    /// Jain's fairness index of the per-worker request counts: 1 when every worker served the
    /// same number, 1/n when one served everything. `None` when no response named a worker.
    pub fn jain(&self) -> Option<f64> {
        jain(
            &self
                .per_worker()
                .iter()
                .map(|w| w.1 as f64)
                .collect::<Vec<_>>(),
        )
    }

    /// The primary's CPU time per 1,000 connections opened, in milliseconds.
    pub fn primary_ms_per_1k_conns(&self) -> Option<f64> {
        let s = self.server?;
        (self.stats.connects > 0)
            .then(|| s.primary.cpu.as_secs_f64() * 1e3 * 1e3 / self.stats.connects as f64)
    }

    /// A process's CPU as a share of one core over the window.
    fn core_share(&self, u: ProcUsage) -> f64 {
        let w = self.stats.window.as_secs_f64();
        if w > 0.0 {
            u.cpu.as_secs_f64() / w
        } else {
            0.0
        }
    }
}

/// Jain's fairness index: (sum x)^2 / (n * sum x^2); `None` for no values or all zero.
pub fn jain(xs: &[f64]) -> Option<f64> {
    let sum: f64 = xs.iter().sum();
    let squares: f64 = xs.iter().map(|x| x * x).sum();
    (!xs.is_empty() && squares > 0.0).then(|| sum * sum / (xs.len() as f64 * squares))
}

/// A latency for people: `812us`, `1.23ms`, `2.50s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

/// A count with thousands separators: `123,456`.
pub fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The per-worker shares as percentages: `50.1/49.9`, or `-` when unknown.
pub fn fmt_shares(r: &PolicyResult) -> String {
    let per = r.per_worker();
    let total: u64 = per.iter().map(|w| w.1).sum();
    if total == 0 {
        return "-".into();
    }
    per.iter()
        .map(|w| format!("{:.1}", w.1 as f64 * 100.0 / total as f64))
        .collect::<Vec<_>>()
        .join("/")
}

/// One line describing the run.
pub fn title(m: &Meta) -> String {
    let against = match &m.target {
        Some(t) => format!("target {t}"),
        None => format!("{} workers", m.workers),
    };
    let repeat = if m.repeat > 1 {
        format!(", median of {} runs", m.repeat)
    } else {
        String::new()
    };
    let workload = match &m.work {
        Some(w) => format!("{} ({w})", m.workload),
        None => m.workload.clone(),
    };
    format!(
        "herd bench: {workload} workload, {against}, {} connections, {} load thread{}, {} measured after {} warm-up{repeat}",
        m.connections,
        m.threads,
        if m.threads == 1 { "" } else { "s" },
        humantime::format_duration(m.duration),
        humantime::format_duration(m.warmup),
    )
}

/// The comparison as a text table, policies as rows.
pub fn table(meta: &Meta, results: &[PolicyResult]) -> String {
    let mut out = title(meta);
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<18} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7}  {:<17} {:>6} {:>8} {:>13} {:>7}",
        "policy",
        "req/s",
        "p50",
        "p99",
        "p99.9",
        "max",
        "errors",
        "per-worker %",
        "jain",
        "primary",
        "primary/1k c",
        "client"
    );
    for r in results {
        let cpu = |u: Option<ProcUsage>| {
            u.map_or("-".to_string(), |u| {
                format!("{:.0}%", r.core_share(u) * 100.0)
            })
        };
        let _ = writeln!(
            out,
            "{:<18} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7}  {:<17} {:>6} {:>8} {:>13} {:>7}",
            r.name,
            fmt_count(r.rate().round() as u64),
            fmt_us(r.quantile_us(0.5)),
            fmt_us(r.quantile_us(0.99)),
            fmt_us(r.quantile_us(0.999)),
            fmt_us(r.max_us()),
            r.stats.errors.total(),
            fmt_shares(r),
            r.jain().map_or("-".into(), |j| format!("{j:.3}")),
            cpu(r.server.map(|s| s.primary)),
            r.primary_ms_per_1k_conns()
                .map_or("-".into(), |ms| format!("{ms:.1} ms")),
            cpu(Some(r.client)),
        );
    }
    out.push_str(
        "primary, client: CPU as a share of one core; primary/1k c: primary CPU per 1,000 new connections",
    );
    out
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number (`null` when not finite).
fn json_f64(x: f64) -> String {
    if x.is_finite() {
        format!("{}", (x * 1000.0).round() / 1000.0)
    } else {
        "null".into()
    }
}

fn json_opt(x: Option<f64>) -> String {
    x.map_or("null".into(), json_f64)
}

/// One policy as a JSON object.
fn json_result(r: &PolicyResult) -> String {
    let e = r.stats.errors;
    let total: u64 = r.per_worker().iter().map(|w| w.1).sum();
    let workers: Vec<String> = r
        .per_worker()
        .iter()
        .map(|&(pid, n)| {
            let share = if total > 0 {
                n as f64 / total as f64
            } else {
                0.0
            };
            format!(
                "{{\"pid\": {pid}, \"requests\": {n}, \"share\": {}}}",
                json_f64(share)
            )
        })
        .collect();
    let runs: Vec<String> = r.runs.iter().map(|&x| json_f64(x)).collect();
    let p99s: Vec<String> = r.runs_p99_us.iter().map(|x| x.to_string()).collect();
    fn ms(d: Duration) -> String {
        json_f64(d.as_secs_f64() * 1e3)
    }
    let server = |f: fn(&Sample) -> String| r.server.as_ref().map_or("null".into(), f);
    let mut o = String::from("    {\n");
    let mut field = |k: &str, v: String| {
        let _ = writeln!(o, "      {}: {v},", json_str(k));
    };
    field("policy", json_str(&r.name));
    field("requests", r.stats.requests.to_string());
    field("duration_s", json_f64(r.stats.window.as_secs_f64()));
    field("requests_per_sec", json_f64(r.rate()));
    field("runs_requests_per_sec", format!("[{}]", runs.join(", ")));
    field("runs_p99_us", format!("[{}]", p99s.join(", ")));
    field("p50_us", r.quantile_us(0.5).to_string());
    field("p90_us", r.quantile_us(0.9).to_string());
    field("p99_us", r.quantile_us(0.99).to_string());
    field("p999_us", r.quantile_us(0.999).to_string());
    field("max_us", r.max_us().to_string());
    field("mean_us", json_f64(r.stats.latency.mean()));
    field("errors", e.total().to_string());
    field(
        "errors_by_kind",
        format!(
            "{{\"connect\": {}, \"io\": {}, \"status\": {}, \"timeout\": {}, \"parse\": {}}}",
            e.connect, e.io, e.status, e.timeout, e.parse
        ),
    );
    field("per_worker", format!("[{}]", workers.join(", ")));
    field("unattributed", r.stats.unattributed.to_string());
    field("jain", json_opt(r.jain()));
    field("connections_opened", r.stats.connects.to_string());
    field("primary_cpu_ms", server(|s| ms(s.primary.cpu)));
    field(
        "primary_context_switches",
        server(|s| s.primary.switches.to_string()),
    );
    field("workers_cpu_ms", server(|s| ms(s.workers.cpu)));
    field(
        "workers_context_switches",
        server(|s| s.workers.switches.to_string()),
    );
    field(
        "primary_cpu_per_1k_conns_ms",
        json_opt(r.primary_ms_per_1k_conns()),
    );
    let _ = write!(o, "      \"client_cpu_ms\": {}\n    }}", ms(r.client.cpu));
    o
}

/// The comparison as JSON: the run's settings and one object per policy under `results`.
pub fn json(meta: &Meta, results: &[PolicyResult]) -> String {
    let objects: Vec<String> = results.iter().map(json_result).collect();
    format!(
        "{{\n  \"tool\": \"herd bench\",\n  \"workload\": {},\n  \"workers\": {},\n  \"connections\": {},\n  \"threads\": {},\n  \"duration_s\": {},\n  \"warmup_s\": {},\n  \"repeat\": {},\n  \"target\": {},\n  \"work\": {},\n  \"results\": [\n{}\n  ]\n}}\n",
        json_str(&meta.workload),
        meta.workers,
        meta.connections,
        meta.threads,
        json_f64(meta.duration.as_secs_f64()),
        json_f64(meta.warmup.as_secs_f64()),
        meta.repeat,
        meta.target.as_deref().map_or("null".into(), json_str),
        meta.work.as_deref().map_or("null".into(), json_str),
        objects.join(",\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_index_bounds() {
        assert_eq!(jain(&[5.0, 5.0, 5.0]), Some(1.0));
        assert_eq!(jain(&[10.0, 0.0]), Some(0.5));
        assert_eq!(jain(&[]), None);
        assert_eq!(jain(&[0.0, 0.0]), None);
        let j = jain(&[60.0, 40.0]).unwrap();
        assert!((j - 0.9615).abs() < 1e-3, "{j}");
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_us(812), "812us");
        assert_eq!(fmt_us(1234), "1.23ms");
        assert_eq!(fmt_us(2_500_000), "2.50s");
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(1234567), "1,234,567");
        assert_eq!(fmt_count(123456), "123,456");
        assert_eq!(json_str("a\"b\\\n"), "\"a\\\"b\\\\\\n\"");
        assert_eq!(json_f64(f64::NAN), "null");
        assert_eq!(json_f64(1.23456), "1.235");
    }
}
