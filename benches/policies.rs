//! `cargo bench`: the standard policy comparison behind the README's table.
//!
//! Runs `herd bench` (the release binary cargo just built) over all four policies with
//! 2 workers and 50 connections, once with the `keepalive` workload and once with `close`,
//! and prints its tables. JSON and SVG files land in cargo's target tmp directory.
//!
//! Knobs (environment): `HERD_BENCH_DURATION` (default `3s` per policy), `HERD_BENCH_WARMUP`
//! (default `1s`),
//! `HERD_BENCH_REPEAT` (runs per policy, median reported; default 1),
//! `HERD_BENCH_WORKLOADS` (default `keepalive,close`; `mixed` is the third),
//! `HERD_BENCH_CONNECTIONS` (default 50), `HERD_BENCH_WORKERS` (default 2).

use std::path::Path;
use std::process::{Command, ExitCode};

fn knob(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() -> ExitCode {
    // cargo passes `--bench` (and any filter); the comparison has nothing to filter.
    let herd = env!("CARGO_BIN_EXE_herd");
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let duration = knob("HERD_BENCH_DURATION", "3s");
    let warmup = knob("HERD_BENCH_WARMUP", "1s");
    let repeat = knob("HERD_BENCH_REPEAT", "1");
    let connections = knob("HERD_BENCH_CONNECTIONS", "50");
    let workers = knob("HERD_BENCH_WORKERS", "2");
    for workload in knob("HERD_BENCH_WORKLOADS", "keepalive,close").split(',') {
        let json = out_dir.join(format!("herd-bench-{workload}.json"));
        let svg = out_dir.join(format!("herd-bench-{workload}.svg"));
        let status = Command::new(herd)
            .arg("bench")
            .args([
                "--policies",
                "round-robin,least-connections,shared,reuseport",
            ])
            .args(["--workers", &workers, "--connections", &connections])
            .args([
                "--duration",
                &duration,
                "--warmup",
                &warmup,
                "--repeat",
                &repeat,
            ])
            .args(["--workload", workload.trim()])
            .arg("--json")
            .arg(&json)
            .arg("--svg")
            .arg(&svg)
            .status();
        match status {
            Ok(s) if s.success() => println!(),
            Ok(s) => {
                eprintln!("herd bench ({workload}) failed: {s}");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("cannot run {herd}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
