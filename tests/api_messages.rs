//! Messages between the primary and its workers (issue 7): in order and complete under load and
//! backpressure, and a clear error (never a crash) for a message over the size bound.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use herd::{Control, IpcError, WorkerId, MAX_MESSAGE};
use nix::sys::signal::Signal;

#[test]
fn control_send_refuses_an_oversized_payload() {
    let mut control = Control::default();
    let one = WorkerId::new(1).unwrap();
    match control.send(one, vec![0; MAX_MESSAGE + 1]) {
        Err(IpcError::TooLarge(n)) => assert_eq!(n, MAX_MESSAGE + 1),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(control.send(one, vec![0; MAX_MESSAGE]).is_ok());
    assert!(control.send(one, "text works too").is_ok());
    assert!(control.is_dead(one), "no such worker: dead");
    assert!(control.workers().is_empty());
}

/// Sends `GET /` on new connections from `threads` threads until `stop`; counts answers and
/// failures.
fn hammer(
    server: &Server,
    threads: usize,
    stop: &Arc<AtomicBool>,
) -> (
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Vec<std::thread::JoinHandle<()>>,
) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let handles = (0..threads)
        .map(|_| {
            let (addr, stop, ok, failed) =
                (server.addr(), stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match get(addr, "/") {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    (ok, failed, handles)
}

#[test]
fn ten_thousand_messages_each_way_stay_in_order_while_connections_flow() {
    // Every connection a worker takes releases the next 500 messages to it: the exchange only
    // advances while connections are handed out, through the same channel.
    let mut server = Server::start_example("relay", &["0", "10000", "500"]);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, handles) = hammer(&server, 2, &stop);
    let done = wait_for("relay done", Duration::from_secs(90), || {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("relay exited ({status}):\n{}", server.log_text());
        }
        server.find_log("relay done")
    });
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let log = server.log_text();
    assert_eq!(done, "relay done: 20000 messages each way", "{log}");
    for id in [1, 2] {
        assert!(
            server
                .find_log(&format!(
                    "worker {id}: 10000 messages round-tripped in order"
                ))
                .is_some(),
            "{log}"
        );
    }
    assert!(server.find_log("out of order").is_none(), "{log}");
    assert!(server.find_log("event exit").is_none(), "{log}");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests");
    // 10000 / 500 = 20 connections per worker at least released the batches.
    assert!(
        ok.load(Ordering::Relaxed) >= 40,
        "{}",
        ok.load(Ordering::Relaxed)
    );
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(DEADLINE).success(), "{log}");
}

#[test]
fn too_large_messages_are_refused_on_both_sides_without_a_crash() {
    let mut server = Server::start_example("relay", &["0", "10", "10"]);
    for id in [1, 2] {
        let refused = "refused: message of 65537 bytes is larger than the limit of 65536 bytes";
        server.wait_log(&format!("primary to worker {id}: {refused}"), DEADLINE);
        server.wait_log(&format!("worker {id}: {refused}"), DEADLINE);
        server.wait_log(
            &format!("worker {id}: max-size message came back (intact: true)"),
            DEADLINE,
        );
    }
    // Both sides carry on: the workers serve, the exchange runs, nothing died.
    for _ in 0..4 {
        assert_eq!(get(server.addr(), "/").expect("served").status, 200);
    }
    server.wait_log("relay done: 20 messages each way", DEADLINE);
    assert_eq!(
        server.log_lines("event fork").len(),
        2,
        "{}",
        server.log_text()
    );
    assert!(
        server.find_log("event exit").is_none(),
        "{}",
        server.log_text()
    );
    assert!(server.find_log("died").is_none(), "{}", server.log_text());
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(DEADLINE).success());
}

/// A flood of messages for one worker is bounded: past herd::MAX_QUEUED_MESSAGES the sender
/// gets QueueFull (before: an unbounded queue that grew the primary by hundreds of MB and made
/// handoffs wait behind it), and connections keep flowing.
#[test]
fn a_message_flood_is_refused_past_the_bound_and_handoffs_go_first() {
    let flood = (herd::ipc::MAX_QUEUED_MESSAGES + 5000).to_string();
    let mut server = Server::start_example("relay", &["0", &flood, &flood]);
    // The first connection makes the primary send the whole flood to one worker at once.
    assert_eq!(get(server.addr(), "/").expect("served").status, 200);
    let line = server.wait_log("cannot send:", DEADLINE);
    assert!(line.contains("not queued"), "{line}");
    // Connections are handed out while the flood drains.
    for i in 0..20 {
        let r = get(server.addr(), "/").unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200);
    }
    let rss = herd::procfs::Stat::read(server.pid())
        .expect("the primary's stat")
        .rss_bytes();
    assert!(rss < 100 << 20, "primary RSS {rss} bytes");
    assert!(server.find_log("died").is_none(), "{}", server.log_text());
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(DEADLINE).success());
}
