//! Prometheus metrics (issue 14): `/metrics` parses with a Prometheus text parser, its
//! counters keep growing across a worker kill, a frozen worker cannot hold a scrape up, and
//! request latencies land in the histogram.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use prometheus_parse::{Scrape, Value};

/// Starts `herd serve --metrics 127.0.0.1:0` and returns it with the metrics address.
fn start(args: &[&str]) -> (Server, SocketAddr) {
    let mut all = vec!["--metrics", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let server = Server::start(&all);
    let line = server.wait_log("metrics at http://", DEADLINE);
    let addr = line
        .rsplit("http://")
        .next()
        .and_then(|r| r.trim().strip_suffix("/metrics"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("metrics address in {line:?}"));
    (server, addr)
}

/// `GET /metrics`: the body, checked line by line against what the parser understood.
fn scrape(addr: SocketAddr) -> Scrape {
    let r = get(addr, "/metrics").expect("scrape");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text();
    let lines: Vec<std::io::Result<String>> = text.lines().map(|l| Ok(l.to_string())).collect();
    let parsed = Scrape::parse(lines.into_iter()).expect("the exposition parses");
    // The parser skips what it cannot read: every sample line must have become a sample
    // (histogram lines are folded into one sample per series, so count the others).
    let plain = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains("_bucket{"))
        .count();
    let hist_series = parsed
        .samples
        .iter()
        .filter(|s| matches!(s.value, Value::Histogram(_)))
        .count();
    assert_eq!(parsed.samples.len(), plain + hist_series, "{text}");
    parsed
}

/// Every counter series (name and `worker` label) and its value.
fn counters(s: &Scrape) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for sample in &s.samples {
        let key = format!(
            "{}{{{}}}",
            sample.metric,
            sample.labels.get("worker").unwrap_or("")
        );
        match &sample.value {
            Value::Counter(v) => {
                out.insert(key, *v);
            }
            Value::Histogram(buckets) => {
                for b in buckets {
                    out.insert(format!("{key}le{}", b.less_than), b.count);
                }
            }
            _ if sample.metric.ends_with("_count") || sample.metric.ends_with("_sum") => {
                out.insert(key, value_of(&sample.value));
            }
            _ => {}
        }
    }
    out
}

fn value_of(v: &Value) -> f64 {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => *x,
        _ => f64::NAN,
    }
}

fn find(s: &Scrape, metric: &str, worker: Option<&str>) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && x.labels.get("worker") == worker)
        .map(|x| value_of(&x.value))
}

#[test]
fn metrics_parse_and_name_every_family() {
    let (server, metrics) = start(&["--workers", "2"]);
    for _ in 0..20 {
        assert_eq!(get(server.addr(), "/").unwrap().status, 200);
    }
    let s = wait_for("the workers' counts", DEADLINE, || {
        let s = scrape(metrics);
        let sum: f64 = ["1", "2"]
            .iter()
            .filter_map(|w| find(&s, "herd_requests_total", Some(w)))
            .sum();
        (sum == 20.0).then_some(s)
    });
    for w in ["1", "2"] {
        for m in [
            "herd_connections_total",
            "herd_requests_total",
            "herd_worker_restarts_total",
            "herd_cpu_seconds_total",
        ] {
            let sample = s
                .samples
                .iter()
                .find(|x| x.metric == m && x.labels.get("worker") == Some(w));
            assert!(
                matches!(sample.map(|x| &x.value), Some(Value::Counter(_))),
                "{m} {w}"
            );
        }
        for m in [
            "herd_open_connections",
            "herd_resident_memory_bytes",
            "herd_report_age_seconds",
        ] {
            assert!(find(&s, m, Some(w)).is_some(), "{m} {w}");
        }
        assert!(find(&s, "herd_resident_memory_bytes", Some(w)).unwrap() > 0.0);
    }
    assert_eq!(
        find(&s, "herd_accepted_connections_total", None),
        Some(20.0)
    );
    assert_eq!(find(&s, "herd_pending_connections", None), Some(0.0));
    assert_eq!(find(&s, "herd_workers", None), Some(2.0));
    let count: f64 = ["1", "2"]
        .iter()
        .filter_map(|w| find(&s, "herd_request_duration_seconds_count", Some(w)))
        .sum();
    assert_eq!(count, 20.0);
    let other = get(metrics, "/").unwrap();
    assert_eq!(other.status, 404);
}

#[test]
fn slow_requests_land_in_the_histogram() {
    let (server, metrics) = start(&["--workers", "1"]);
    for _ in 0..5 {
        let r = get(server.addr(), "/work?us=30000").unwrap();
        assert_eq!(r.status, 200);
    }
    let s = wait_for("the histogram", DEADLINE, || {
        let s = scrape(metrics);
        (find(&s, "herd_request_duration_seconds_count", Some("1")) == Some(5.0)).then_some(s)
    });
    let sum = find(&s, "herd_request_duration_seconds_sum", Some("1")).unwrap();
    assert!(sum >= 5.0 * 0.03, "30 ms each at least: {sum}");
    let h = s
        .samples
        .iter()
        .find(|x| {
            x.metric == "herd_request_duration_seconds" && x.labels.get("worker") == Some("1")
        })
        .expect("histogram series");
    let Value::Histogram(buckets) = &h.value else {
        panic!("not a histogram")
    };
    let under = |le: f64| buckets.iter().find(|b| b.less_than == le).unwrap().count;
    assert_eq!(under(0.025), 0.0, "none under 25 ms");
    assert_eq!(under(f64::INFINITY), 5.0);
}

#[test]
fn counters_keep_growing_across_a_worker_kill() {
    let (mut server, metrics) = start(&["--workers", "2"]);
    let before = server.workers();
    for _ in 0..40 {
        assert_eq!(get(server.addr(), "/").unwrap().status, 200);
    }
    let first = wait_for("counts from both workers", DEADLINE, || {
        let s = scrape(metrics);
        let both = ["1", "2"]
            .iter()
            .all(|w| find(&s, "herd_requests_total", Some(w)).is_some_and(|v| v > 0.0));
        both.then_some(s)
    });
    let mut last = counters(&first);
    send_signal(before[0], Signal::SIGKILL).unwrap();
    let check = |now: &HashMap<String, f64>, last: &HashMap<String, f64>| {
        for (k, v) in last {
            let n = now.get(k).copied().unwrap_or(f64::NAN);
            assert!(n >= *v, "{k} went from {v} to {n}");
        }
    };
    // Scrape all through the death and the restart: nothing ever goes down.
    wait_for("a replacement", DEADLINE, || {
        let now = counters(&scrape(metrics));
        check(&now, &last);
        last = now;
        let w = server.workers();
        (w.len() == 2 && !w.contains(&before[0])).then_some(())
    });
    let total =
        |c: &HashMap<String, f64>| c["herd_requests_total{1}"] + c["herd_requests_total{2}"];
    let before_more = total(&last);
    for _ in 0..40 {
        assert_eq!(get(server.addr(), "/").unwrap().status, 200);
    }
    let s = wait_for("the new counts", DEADLINE, || {
        let s = scrape(metrics);
        let now = counters(&s);
        check(&now, &last);
        (total(&now) >= before_more + 40.0).then_some(s)
    });
    let restarts: f64 = ["1", "2"]
        .iter()
        .filter_map(|w| find(&s, "herd_worker_restarts_total", Some(w)))
        .sum();
    assert_eq!(restarts, 1.0);
}

#[test]
fn a_frozen_worker_does_not_hold_up_a_scrape() {
    let (mut server, metrics) = start(&["--workers", "2"]);
    let workers = server.workers();
    wait_for("first reports", DEADLINE, || {
        let s = scrape(metrics);
        ["1", "2"]
            .iter()
            .all(|w| find(&s, "herd_report_age_seconds", Some(w)).is_some())
            .then_some(())
    });
    send_signal(workers[0], Signal::SIGSTOP).unwrap();
    // The frozen worker's report only gets older; the scrapes keep coming at once.
    let mut slowest = Duration::ZERO;
    wait_for("the frozen worker's report to age", DEADLINE, || {
        let t = Instant::now();
        let mut s = TcpStream::connect(metrics).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut r = BufReader::new(s);
        let mut status = String::new();
        r.read_line(&mut status).expect("an answer within 2 s");
        let _ = read_to_close(r.get_mut(), Duration::from_secs(2));
        slowest = slowest.max(t.elapsed());
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let s = scrape(metrics);
        let frozen = find(&s, "herd_report_age_seconds", Some("1"))?;
        let live = find(&s, "herd_report_age_seconds", Some("2"))?;
        (frozen > 2.5 && live < frozen).then_some(())
    });
    eprintln!("slowest scrape with a frozen worker: {slowest:?}");
    send_signal(workers[0], Signal::SIGCONT).unwrap();
}
