//! `--worker-sched`: workers run under the policy asked for (herd's own and Node's), from the
//! first one to the ones that replace them; the primary keeps the default policy.

mod common;

use common::*;
use nix::sys::signal::Signal;

/// `SCHED_OTHER` and `SCHED_BATCH` as the kernel numbers them (`sched(7)`).
const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;

/// The scheduling policy of `pid`.
fn sched_policy(pid: u32) -> u32 {
    herd::procfs::Stat::read(pid)
        .expect("a live process")
        .policy
}

#[test]
fn workers_run_under_the_default_policy_unless_asked() {
    let mut s = Server::start(&["--workers", "2"]);
    let workers = s.workers();
    assert_eq!(workers.len(), 2);
    for &w in &workers {
        assert_eq!(sched_policy(w), SCHED_OTHER, "worker {w}");
    }
    assert_eq!(sched_policy(s.pid()), SCHED_OTHER);
}

#[test]
fn batch_workers_serve_and_their_replacements_are_batch_too() {
    let mut s = Server::start(&["--workers", "2", "--worker-sched", "batch"]);
    let workers = s.workers();
    assert_eq!(workers.len(), 2);
    for &w in &workers {
        assert_eq!(sched_policy(w), SCHED_BATCH, "worker {w}");
    }
    assert_eq!(
        sched_policy(s.pid()),
        SCHED_OTHER,
        "the primary keeps its policy"
    );
    let served: Vec<u32> = (0..4)
        .map(|_| get(s.addr(), "/").expect("served").pid())
        .collect();
    for w in &workers {
        assert!(served.contains(w), "worker {w} served none of {served:?}");
    }
    send_signal(workers[0], Signal::SIGKILL).expect("kill a worker");
    let fresh = wait_for("a replacement worker", DEADLINE, || {
        let now = s.workers();
        now.iter()
            .copied()
            .find(|p| !workers.contains(p) && alive(*p))
            .filter(|_| now.len() == 2)
    });
    assert_eq!(sched_policy(fresh), SCHED_BATCH, "replacement {fresh}");
}

#[test]
fn node_workers_run_under_batch_when_asked() {
    let mut s = Launch::herd_run(
        &["--workers", "2", "--worker-sched", "batch"],
        &["node", &node_fixture("hello.js")],
    )
    .start();
    let workers = s.workers();
    assert_eq!(workers.len(), 2);
    for &w in &workers {
        assert_eq!(sched_policy(w), SCHED_BATCH, "node worker {w}");
    }
    let r = get(s.addr(), "/").expect("served");
    assert_eq!(r.status, 200);
    assert!(workers.contains(&r.pid()), "{}", r.text());
}

#[test]
fn an_unknown_worker_sched_is_one_line_and_a_failure() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["serve", "--port", "0", "--worker-sched", "fifo"])
        .output()
        .expect("run herd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--worker-sched"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
