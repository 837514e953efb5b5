//! The primary blocks the signals it reads through its signalfd only while it runs: a library
//! user's process must react to Ctrl-C again after a failed start or a finished cluster.

mod common;

use std::time::Duration;

use common::*;
use herd::Cluster;
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};

/// The signals the primary handles.
const HANDLED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCHLD,
];

fn this_thread_mask() -> SigSet {
    let mut m = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, None, Some(&mut m)).expect("read the mask");
    m
}

#[test]
fn a_port_in_use_leaves_the_signal_mask_alone() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let before = this_thread_mask();
    let err = Cluster::new()
        .workers(1)
        .addr(taken.local_addr().expect("addr"))
        .events()
        .expect_err("the port is in use");
    assert!(err.to_string().contains("in use"), "{err}");
    let after = this_thread_mask();
    for s in HANDLED {
        assert_eq!(after.contains(s), before.contains(s), "{s} changed");
    }
}

#[test]
fn a_finished_cluster_unblocks_its_signals() {
    let out = run_example("compute", &["2"], Duration::from_secs(60));
    assert!(out.status.success(), "{}", out.stderr.join("\n"));
    let line = out
        .stdout
        .iter()
        .find(|l| l.starts_with("blocked signals after the cluster: "))
        .unwrap_or_else(|| panic!("no mask line:\n{}", out.stdout.join("\n")));
    let hex = line.rsplit("0x").next().unwrap_or_default();
    let mask = u64::from_str_radix(hex, 16).expect("a hex mask");
    for s in HANDLED {
        assert_eq!(mask & (1 << (s as i32 - 1)), 0, "{s} still blocked: {line}");
    }
}
