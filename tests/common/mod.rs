//! Shared helpers for the integration tests: start a real `herd`, talk HTTP over real sockets,
//! inspect processes through `/proc`. Every wait polls a condition with a deadline.
#![allow(dead_code)]

mod example;
mod http;
mod load;
mod server;

// Each test file (`mod common; use common::*;`) uses some of these, none uses all of them.
#[allow(unused_imports)]
pub use {example::*, http::*, load::*, server::*};

use std::time::{Duration, Instant};

/// How long any single wait in the tests may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `f` until it returns `Some`, or panics with `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(pause); // poll interval of a deadline-bounded wait
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Pids whose parent is `ppid` (from /proc), excluding zombies.
pub fn children(ppid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some((state, parent)) = stat(pid) {
            if parent == ppid && state != 'Z' {
                out.push(pid);
            }
        }
    }
    out.sort();
    out
}

/// (state, ppid) of a process, from /proc/<pid>/stat.
pub fn stat(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|(s, _)| s != 'Z')
}

/// CPU time (user + system, in clock ticks) a process has used.
pub fn cpu_ticks(pid: i32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(close) = s.rfind(')') else { return 0 };
    let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    t(11) + t(12)
}

/// Number of open file descriptors of `pid`.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}
