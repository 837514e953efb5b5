//! Shared helpers for the integration tests: start a real `herd` ([`server`]) or an example
//! ([`example`]), talk HTTP over real sockets ([`http`]), put concurrent load on it ([`load`]),
//! and inspect processes through the crate's own `herd::procfs`. Every wait polls a condition
//! with a deadline ([`wait_for`]).
#![allow(dead_code)]

mod example;
mod http;
mod load;
mod node;
mod scratch;
mod server;

// Each test file (`mod common; use common::*;`) uses some of these, none uses all of them.
#[allow(unused_imports)]
pub use {
    example::*,
    herd::procfs::{alive, children, fd_count},
    http::*,
    load::*,
    node::*,
    scratch::*,
    server::*,
};

use std::time::{Duration, Instant};

use herd::procfs::Stat;
use nix::sys::signal::Signal;

/// How long any single wait in the tests may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `f` until it returns `Some`, or panics with `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll(limit, f).unwrap_or_else(|| panic!("timed out after {limit:?} waiting for {what}"))
}

/// Polls `f` until it returns `Some`, or gives up (`None`) after `limit`: for a wait whose
/// timeout is not a failure, or that fails with more to say than [`wait_for`] does.
pub fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(pause); // poll interval of a deadline-bounded wait
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// CPU time (user + system, in clock ticks) `pid` has used; 0 once it is gone.
pub fn cpu_ticks(pid: u32) -> u64 {
    Stat::read(pid).map_or(0, |s| s.cpu_ticks)
}

/// Sends `sig` to process `pid` (the tests keep pids as `u32`, like `herd::procfs`).
pub fn send_signal(pid: u32, sig: Signal) -> nix::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
}

/// Waits until `pid` sleeps: a worker whose loop (or parked runtime) waits for events is idle.
pub fn wait_idle(pid: u32) {
    wait_for(&format!("worker {pid} to be idle"), DEADLINE, || {
        Stat::read(pid)
            .is_some_and(|s| s.state == 'S')
            .then_some(())
    });
}

/// Lowest port a test hands out with [`unused_port`].
const FIRST_FIXED_PORT: u16 = 10_000;

/// A port on 127.0.0.1 that nothing listens on now, for a test whose server is told its port
/// in advance (socket activation, HAProxy, a metrics address). It lies below the kernel's
/// ephemeral range, so neither a client's connection (its source port) nor a server bound to
/// port 0 can take it between this check and the bind: a port merely bound and released
/// (`bind(":0")`) was taken that way once by another test's load. Ports are handed out in
/// turn, from a start that differs per test process.
pub fn unused_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768)
        .max(FIRST_FIXED_PORT + 1_000);
    let span = u32::from(low - FIRST_FIXED_PORT);
    let start = std::process::id() * 97;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = FIRST_FIXED_PORT + (start.wrapping_add(n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {FIRST_FIXED_PORT} and {low}");
}
