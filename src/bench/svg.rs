//! The comparison as a hand-written SVG chart: throughput bars, the share of requests each
//! worker served (with the fair share marked), and latency percentiles on a log scale.

use std::fmt::Write;

use super::report::{fmt_count, fmt_us, title, Meta, PolicyResult};

const WIDTH: f64 = 960.0;
const LABEL_W: f64 = 170.0;
const LEFT: f64 = 20.0 + LABEL_W;
const PLOT_W: f64 = 600.0;
const ROW: f64 = 34.0;
const BAR: f64 = 22.0;
const PANEL_GAP: f64 = 56.0;
/// Bar colours, one per policy row.
const POLICY_COLOURS: [&str; 6] = [
    "#3b6fb6", "#6a9fd8", "#e07b39", "#f2b134", "#5b9e5b", "#9b6fb6",
];
/// Segment colours, one per worker.
const WORKER_COLOURS: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f",
];

/// Text with `&`, `<` and `>` escaped.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn text(out: &mut String, x: f64, y: f64, attrs: &str, s: &str) {
    let _ = writeln!(
        out,
        r#"<text x="{x:.1}" y="{y:.1}" {attrs}>{}</text>"#,
        esc(s)
    );
}

fn rect(out: &mut String, x: f64, y: f64, w: f64, h: f64, fill: &str) {
    let _ = writeln!(
        out,
        r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{fill}"/>"#,
        w.max(0.0)
    );
}

fn line(out: &mut String, x1: f64, y1: f64, x2: f64, y2: f64, style: &str) {
    let _ = writeln!(
        out,
        r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" {style}/>"#
    );
}

fn heading(out: &mut String, y: f64, s: &str) {
    text(out, 20.0, y, r#"font-size="15" font-weight="bold""#, s);
}

fn row_label(out: &mut String, y: f64, name: &str) {
    text(
        out,
        LEFT - 10.0,
        y + BAR / 2.0 + 4.0,
        r#"text-anchor="end" font-size="13""#,
        name,
    );
}

/// Throughput bars, one per policy; returns the y below the panel.
fn throughput(out: &mut String, mut y: f64, results: &[PolicyResult]) -> f64 {
    heading(out, y, "Throughput (requests/s, higher is better)");
    y += 14.0;
    let max = results.iter().map(|r| r.rate()).fold(0.0, f64::max);
    for (i, r) in results.iter().enumerate() {
        let w = if max > 0.0 {
            PLOT_W * r.rate() / max
        } else {
            0.0
        };
        row_label(out, y, &r.name);
        rect(
            out,
            LEFT,
            y,
            w,
            BAR,
            POLICY_COLOURS[i % POLICY_COLOURS.len()],
        );
        let errors = r.stats.errors.total();
        let note = if errors > 0 {
            format!(
                "{} req/s, {} errors",
                fmt_count(r.rate().round() as u64),
                errors
            )
        } else {
            format!("{} req/s", fmt_count(r.rate().round() as u64))
        };
        text(
            out,
            LEFT + w + 6.0,
            y + BAR / 2.0 + 4.0,
            r#"font-size="12""#,
            &note,
        );
        y += ROW;
    }
    y
}

/// Per-worker shares as 100% stacked bars with the fair split dashed; returns the y below.
fn shares(out: &mut String, mut y: f64, results: &[PolicyResult]) -> f64 {
    heading(
        out,
        y,
        "Share of requests per worker (dashed: a fair split; Jain's index at the right)",
    );
    y += 14.0;
    for r in results {
        row_label(out, y, &r.name);
        let per = r.per_worker();
        let total: u64 = per.iter().map(|w| w.1).sum();
        if total == 0 {
            rect(out, LEFT, y, PLOT_W, BAR, "#dddddd");
            text(
                out,
                LEFT + 8.0,
                y + BAR / 2.0 + 4.0,
                r#"font-size="12""#,
                "unknown (no pid in the responses)",
            );
            y += ROW;
            continue;
        }
        let mut x = LEFT;
        for (k, &(pid, n)) in per.iter().enumerate() {
            let w = PLOT_W * n as f64 / total as f64;
            rect(out, x, y, w, BAR, WORKER_COLOURS[k % WORKER_COLOURS.len()]);
            let _ = writeln!(out, "<title>pid {pid}: {n} requests</title>");
            if w > 44.0 {
                let pct = format!("{:.1}%", n as f64 * 100.0 / total as f64);
                text(
                    out,
                    x + w / 2.0,
                    y + BAR / 2.0 + 4.0,
                    r##"text-anchor="middle" font-size="11" fill="#ffffff""##,
                    &pct,
                );
            }
            x += w;
        }
        for k in 1..per.len() {
            let fx = LEFT + PLOT_W * k as f64 / per.len() as f64;
            line(
                out,
                fx,
                y - 3.0,
                fx,
                y + BAR + 3.0,
                r##"stroke="#222222" stroke-width="1.5" stroke-dasharray="4,3""##,
            );
        }
        let jain = r.jain().map_or("-".into(), |j| format!("Jain {j:.3}"));
        text(
            out,
            LEFT + PLOT_W + 8.0,
            y + BAR / 2.0 + 4.0,
            r#"font-size="12""#,
            &jain,
        );
        y += ROW;
    }
    y
}

/// A logarithmic latency axis over whole decades of microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LogAxis {
    /// log10 of the lowest and highest microseconds shown.
    lo: f64,
    hi: f64,
}

impl LogAxis {
    /// Decades covering every p50 and max in `results` (at least two).
    fn fit(results: &[PolicyResult]) -> LogAxis {
        let low = results
            .iter()
            .map(|r| r.quantile_us(0.5))
            .min()
            .unwrap_or(100);
        let high = results.iter().map(|r| r.max_us()).max().unwrap_or(10_000);
        let lo = (low.max(1) as f64).log10().floor().max(0.0);
        let hi = (high.max(1) as f64).log10().ceil().max(lo + 2.0);
        LogAxis { lo, hi }
    }

    /// x position of a latency.
    fn x(self, us: u64) -> f64 {
        let v = (us.max(1) as f64).log10().clamp(self.lo, self.hi);
        LEFT + PLOT_W * (v - self.lo) / (self.hi - self.lo)
    }

    /// The decades, as (microseconds, label).
    fn ticks(self) -> Vec<(u64, String)> {
        (self.lo as u32..=self.hi as u32)
            .map(|d| 10u64.pow(d))
            .map(|us| (us, fmt_us(us).replace(".00", "")))
            .collect()
    }
}

/// Latency percentiles on a log axis; returns the y below the panel.
fn latency(out: &mut String, mut y: f64, results: &[PolicyResult]) -> f64 {
    heading(out, y, "Latency (log scale, lower is better)");
    y += 14.0;
    let top = y;
    let axis = LogAxis::fit(results);
    let marks = [
        (0.5, "#4e79a7", "p50"),
        (0.99, "#f28e2b", "p99"),
        (0.999, "#e15759", "p99.9"),
    ];
    for r in results {
        row_label(out, y, &r.name);
        let mid = y + BAR / 2.0;
        let (a, b) = (axis.x(r.quantile_us(0.5)), axis.x(r.max_us()));
        line(
            out,
            a,
            mid,
            b,
            mid,
            r##"stroke="#999999" stroke-width="2""##,
        );
        line(
            out,
            b,
            mid - 6.0,
            b,
            mid + 6.0,
            r##"stroke="#555555" stroke-width="2""##,
        );
        for (q, colour, name) in marks {
            let us = r.quantile_us(q);
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{mid:.1}" r="5.5" fill="{colour}"><title>{name} {}</title></circle>"#,
                axis.x(us),
                fmt_us(us)
            );
        }
        let note = format!("p99 {}", fmt_us(r.quantile_us(0.99)));
        text(
            out,
            LEFT + PLOT_W + 8.0,
            mid + 4.0,
            r#"font-size="12""#,
            &note,
        );
        y += ROW;
    }
    for (us, label) in axis.ticks() {
        let x = axis.x(us);
        line(
            out,
            x,
            top - 4.0,
            x,
            y - 8.0,
            r##"stroke="#cccccc" stroke-width="1""##,
        );
        text(
            out,
            x,
            y + 6.0,
            r##"text-anchor="middle" font-size="11" fill="#555555""##,
            &label,
        );
    }
    let mut lx = LEFT;
    y += 26.0;
    for (_, colour, name) in marks {
        let _ = writeln!(
            out,
            r#"<circle cx="{:.1}" cy="{:.1}" r="5.5" fill="{colour}"/>"#,
            lx + 6.0,
            y - 4.0
        );
        text(out, lx + 16.0, y, r#"font-size="12""#, name);
        lx += 70.0;
    }
    line(
        out,
        lx + 6.0,
        y - 10.0,
        lx + 6.0,
        y + 2.0,
        r##"stroke="#555555" stroke-width="2""##,
    );
    text(out, lx + 14.0, y, r#"font-size="12""#, "max");
    y + 10.0
}

/// The whole chart as an SVG document.
pub fn render(meta: &Meta, results: &[PolicyResult]) -> String {
    let mut body = String::new();
    text(
        &mut body,
        20.0,
        30.0,
        r#"font-size="19" font-weight="bold""#,
        "herd: scheduling policies side by side",
    );
    text(
        &mut body,
        20.0,
        50.0,
        r##"font-size="12" fill="#444444""##,
        &title(meta),
    );
    let mut y = 88.0;
    y = throughput(&mut body, y, results) + PANEL_GAP - 20.0;
    y = shares(&mut body, y, results) + PANEL_GAP - 20.0;
    let height = (latency(&mut body, y, results) + 10.0).round();
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif">"#
    );
    out.push('\n');
    rect(&mut out, 0.0, 0.0, WIDTH, height, "#ffffff");
    out.push_str(&body);
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axis_is_monotonic_and_clamped() {
        let axis = LogAxis { lo: 1.0, hi: 7.0 };
        assert!(axis.x(100) < axis.x(1000));
        assert_eq!(axis.x(1), LEFT);
        assert_eq!(axis.x(u64::MAX), LEFT + PLOT_W);
        assert_eq!(axis.ticks().len(), 7);
        assert_eq!(axis.ticks()[2].1, "1ms");
        assert_eq!(LogAxis::fit(&[]), LogAxis { lo: 2.0, hi: 4.0 });
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("a<b & c>"), "a&lt;b &amp; c&gt;");
    }
}
