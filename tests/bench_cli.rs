//! `herd bench` (issue 6) end to end: real clusters, real sockets, short runs.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Runs `herd bench ARGS` to completion (each run is bounded by its --duration).
fn bench(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(herd_bin());
    cmd.arg("bench").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run herd bench")
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("herd-bench-{}-{name}", std::process::id()))
}

fn read_json(path: &PathBuf) -> Value {
    let text = std::fs::read_to_string(path).expect("json file");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("invalid JSON ({e}):\n{text}"))
}

fn results(v: &Value) -> &Vec<Value> {
    v["results"].as_array().expect("results array")
}

/// Checks the invariants every clean run must keep; returns the total requests.
fn check_clean(r: &Value) -> u64 {
    let name = r["policy"].as_str().unwrap_or("?");
    assert!(r["requests_per_sec"].as_f64().unwrap() > 0.0, "{name}: {r}");
    assert_eq!(r["errors"].as_u64(), Some(0), "{name}: {r}");
    let requests = r["requests"].as_u64().unwrap();
    let per_worker = r["per_worker"].as_array().unwrap();
    let sum: u64 = per_worker
        .iter()
        .map(|w| w["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, requests, "{name}: per_worker must add up: {r}");
    let jain = r["jain"].as_f64().unwrap();
    assert!(jain > 0.0 && jain <= 1.0, "{name}: jain {jain}");
    let (p50, p99, max) = (
        r["p50_us"].as_u64().unwrap(),
        r["p99_us"].as_u64().unwrap(),
        r["max_us"].as_u64().unwrap(),
    );
    assert!(p50 > 0 && p50 <= p99 && p99 <= max, "{name}: {r}");
    requests
}

#[test]
fn keepalive_comparison_writes_table_json_and_svg() {
    let (json, svg) = (temp("ka.json"), temp("ka.svg"));
    let out = bench(
        &[
            "--duration",
            "2s",
            "--warmup",
            "0s",
            "--workers",
            "2",
            "--connections",
            "8",
            "--policies",
            "round-robin,reuseport",
            "--workload",
            "keepalive",
            "--json",
            json.to_str().unwrap(),
            "--svg",
            svg.to_str().unwrap(),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("round-robin") && table.contains("reuseport"),
        "{table}"
    );
    assert!(table.contains("p99.9") && table.contains("jain"), "{table}");
    assert!(stderr.contains("req/s"), "no progress line: {stderr}");

    let v = read_json(&json);
    assert_eq!(v["workload"], "keepalive");
    let rs = results(&v);
    let names: Vec<&str> = rs.iter().map(|r| r["policy"].as_str().unwrap()).collect();
    assert_eq!(names, ["round-robin", "reuseport"]);
    for r in rs {
        check_clean(r);
        assert_eq!(r["per_worker"].as_array().unwrap().len(), 2, "{r}");
    }
    let drawing = std::fs::read_to_string(&svg).expect("svg file");
    assert!(
        drawing.starts_with("<svg"),
        "{}",
        &drawing[..drawing.len().min(80)]
    );
    assert!(drawing.trim_end().ends_with("</svg>"));
    let _ = std::fs::remove_file(json);
    let _ = std::fs::remove_file(svg);
}

#[test]
fn close_workload_opens_a_connection_per_request_and_costs_the_primary() {
    let json = temp("close.json");
    let out = bench(
        &[
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--workers",
            "2",
            "--connections",
            "4",
            "--policies",
            "round-robin",
            "--workload",
            "close",
            "--json",
            json.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = read_json(&json);
    let r = &results(&v)[0];
    let requests = check_clean(r);
    let opened = r["connections_opened"].as_u64().unwrap();
    assert!(opened >= requests && opened <= requests + 4, "{r}");
    assert!(r["primary_cpu_per_1k_conns_ms"].is_number(), "{r}");
    // Round-robin over 2 workers with one request per connection: an exact split, give or
    // take the requests in flight when the window closed.
    let per: Vec<u64> = r["per_worker"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["requests"].as_u64().unwrap())
        .collect();
    assert!(per[0].abs_diff(per[1]) <= 4, "{per:?}");
    let _ = std::fs::remove_file(json);
}

#[test]
fn mixed_workload_against_a_running_target() {
    let server = Server::start(&["--workers", "2"]);
    let json = temp("target.json");
    let url = format!("http://127.0.0.1:{}", server.port);
    let out = bench(
        &[
            "--target",
            &url,
            "--label",
            "herd",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--connections",
            "4",
            "--workload",
            "mixed",
            "--json",
            json.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = read_json(&json);
    let r = &results(&v)[0];
    assert_eq!(r["policy"], "herd");
    check_clean(r);
    assert!(r["primary_cpu_ms"].is_null(), "{r}");
    let _ = std::fs::remove_file(json);
}

/// A one-thread server that answers `Hello World!` (no pid) to every request, chunked, on
/// keep-alive connections: what a peer such as nginx looks like to the generator.
fn pidless_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(64) {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                let mut line = String::new();
                loop {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => {
                            let body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nHello \r\n6\r\nWorld!\r\n0\r\n\r\n";
                            if w.write_all(body).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    port
}

#[test]
fn a_target_without_pids_has_unknown_shares() {
    let port = pidless_server();
    let json = temp("pidless.json");
    let url = format!("http://127.0.0.1:{port}/");
    let out = bench(
        &[
            "--target",
            &url,
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--connections",
            "2",
            "--json",
            json.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = read_json(&json);
    let r = &results(&v)[0];
    assert!(r["requests"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["errors"].as_u64(), Some(0), "{r}");
    assert_eq!(r["unattributed"], r["requests"], "{r}");
    assert!(
        r["jain"].is_null() && r["per_worker"].as_array().unwrap().is_empty(),
        "{r}"
    );
    let _ = std::fs::remove_file(json);
}

fn assert_one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains(needle), "{stderr}");
}

#[test]
fn a_bad_flag_is_a_one_line_error() {
    let out = bench(&["--workload", "nope"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    assert_one_line_error(&out, "nope");
    assert_one_line_error(&bench(&["--policies", "fastest"], &[]), "fastest");
}

#[test]
fn a_cluster_that_does_not_come_up_is_a_clear_error() {
    // A handoff window of 0 is refused by `herd serve` at start.
    let out = bench(
        &[
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--policies",
            "round-robin",
            "--serve-arg=--handoff-window=0",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_one_line_error(&out, "did not come up");
}

/// `--work` (issue 13): the mixed workload's costs, run with 2 and with 4 workers; each
/// request's cost comes from the spec (a `/work` answer names the microseconds it burned).
#[test]
fn mixed_work_spec_runs_with_two_and_four_workers() {
    for workers in ["2", "4"] {
        let json = temp(&format!("work-{workers}.json"));
        let out = bench(
            &[
                "--workload",
                "mixed",
                "--work",
                "50:10us,50:100us",
                "--workers",
                workers,
                "--policies",
                "idle-first,shared",
                "--duration",
                "500ms",
                "--warmup",
                "0s",
                "--connections",
                "8",
                "--json",
                json.to_str().unwrap(),
            ],
            &[],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v = read_json(&json);
        assert_eq!(v["work"], "50:10us,50:100us");
        assert_eq!(v["workers"].as_u64(), Some(workers.parse().unwrap()));
        let rs = results(&v);
        assert_eq!(rs.len(), 2);
        for r in rs {
            check_clean(r);
            assert_eq!(
                r["per_worker"].as_array().map(Vec::len),
                Some(workers.parse().unwrap())
            );
        }
        let _ = std::fs::remove_file(json);
    }
}

#[test]
fn a_bad_work_spec_is_a_one_line_error() {
    let out = bench(&["--work", "90:10us,9:200us"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_one_line_error(&out, "add up to 99, not 100");
    assert_one_line_error(&bench(&["--work", "90:10"], &[]), "bad cost");
    assert_one_line_error(&bench(&["--work", "lots"], &[]), "PERCENT:COST");
}
