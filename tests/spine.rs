//! The spine (issue 2): round-robin handoff over SCM_RIGHTS, keep-alive, pipelining, worker
//! death, graceful stop, orphan-free SIGKILL, and clear start-up errors.

mod common;

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

#[test]
fn round_robin_is_exact_over_three_workers() {
    let server = Server::start(&["--workers", "3"]);
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for _ in 0..30 {
        let r = get(server.addr(), "/").expect("request");
        assert_eq!(r.status, 200);
        assert!(r.text().starts_with("Hello World! "), "{}", r.text());
        assert_eq!(r.header("connection"), Some("close"));
        *counts.entry(r.pid()).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n == 10), "{counts:?}");
}

#[test]
fn keep_alive_stays_on_one_worker_and_pipelining_keeps_order() {
    let server = Server::start(&["--workers", "2"]);
    let s = connect(server.addr());
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut pids = Vec::new();
    for _ in 0..20 {
        write!(w, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let resp = read_response(&mut r, false).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("connection"), Some("keep-alive"));
        pids.push(resp.pid());
    }
    assert!(pids.iter().all(|&p| p == pids[0] && p != 0), "{pids:?}");

    // Pipelined: all four written at once, answered in order.
    w.write_all(
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\n\
          HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET /bytes?n=3 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    let a = read_response(&mut r, false).unwrap();
    let b = read_response(&mut r, false).unwrap();
    let c = read_response(&mut r, true).unwrap();
    let d = read_response(&mut r, false).unwrap();
    assert_eq!(
        (a.status, b.status, c.status, d.status),
        (200, 404, 200, 200)
    );
    assert_eq!(a.pid(), pids[0]);
    assert_eq!(
        c.header("content-length"),
        a.header("content-length"),
        "HEAD keeps the length"
    );
    assert_eq!(d.body, b"xxx");
}

#[test]
fn http10_closes_unless_asked_and_garbage_gets_400() {
    let server = Server::start(&["--workers", "1"]);
    let out = raw(server.addr(), b"GET / HTTP/1.0\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("Connection: close"), "{out}");
    let out = raw(server.addr(), b"NOT HTTP AT ALL\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // The worker is still fine.
    assert_eq!(get(server.addr(), "/").unwrap().status, 200);
}

#[test]
fn killing_a_worker_leaves_the_others_serving() {
    let mut server = Server::start(&["--workers", "3"]);
    let workers = server.workers();
    assert_eq!(workers.len(), 3, "{workers:?}");
    let victim = workers[0];
    send_signal(victim, Signal::SIGKILL).unwrap();
    server.wait_log(&format!("worker {victim} died (signal 9"), DEADLINE);
    for _ in 0..20 {
        let r = get(server.addr(), "/").expect("served after a worker died");
        assert_eq!(r.status, 200);
        assert_ne!(r.pid(), victim);
    }
    assert!(alive(server.pid()), "primary survives");
}

#[test]
fn sigterm_stops_every_worker_and_frees_the_port() {
    let mut server = Server::start(&["--workers", "2"]);
    let workers = server.workers();
    assert_eq!(workers.len(), 2);
    assert_eq!(get(server.addr(), "/").unwrap().status, 200);
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "primary exits 0 on SIGTERM: {status}");
    wait_for("workers to exit", Duration::from_secs(5), || {
        workers.iter().all(|&p| !alive(p)).then_some(())
    });
    wait_for("the port to be free", Duration::from_secs(5), || {
        port_free(server.port).then_some(())
    });
}

#[test]
fn sigkill_of_the_primary_leaves_no_orphans() {
    let mut server = Server::start(&["--workers", "2"]);
    let workers = server.workers();
    assert_eq!(workers.len(), 2);
    server.signal(Signal::SIGKILL);
    server.wait_exit(Duration::from_secs(5));
    wait_for("orphaned workers to exit", Duration::from_secs(5), || {
        workers.iter().all(|&p| !alive(p)).then_some(())
    });
}

fn run_herd(args: &[&str]) -> (i32, String) {
    let out = Command::new(herd_bin())
        .args(args)
        .output()
        .expect("run herd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn port_in_use_is_one_line_and_nonzero() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, err) = run_herd(&["--host", "127.0.0.1", "--port", &port, "--workers", "1"]);
    assert_ne!(code, 0);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("in use") && errors[0].contains(&port),
        "{err}"
    );
}

#[test]
fn bad_flags_are_one_line_and_nonzero() {
    for args in [
        &["--workers", "0"][..],
        &["--bogus"][..],
        &["--port", "99999"][..],
        &["--policy", "fastest"][..],
        &["--max-head-bytes", "0"][..],
        &["--header-timeout", "0s"][..],
        &["--keepalive-timeout", "0"][..],
        &["--shutdown-timeout", "soon"][..],
    ] {
        let (code, err) = run_herd(args);
        assert_ne!(code, 0, "{args:?}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error:"), "{args:?}: {err}");
    }
    let help = Command::new(herd_bin()).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--workers"));
}

#[test]
fn a_long_pipeline_is_answered_in_full_across_loop_turns() {
    // More requests than one connection may process per turn: it yields and resumes.
    let server = Server::start(&["--workers", "1"]);
    let s = connect(server.addr());
    let mut w = s.try_clone().unwrap();
    let burst: Vec<u8> = (0..500)
        .flat_map(|i| format!("GET /bytes?n={} HTTP/1.1\r\nHost: t\r\n\r\n", i % 7).into_bytes())
        .collect();
    let writer = std::thread::spawn(move || w.write_all(&burst));
    let mut r = BufReader::new(s);
    for i in 0..500 {
        let resp = read_response(&mut r, false).expect("every pipelined request is answered");
        assert_eq!(
            (resp.status, resp.body.len()),
            (200, i % 7),
            "response {i} in order"
        );
    }
    writer.join().unwrap().unwrap();
    // Meanwhile the worker served others too.
    assert_eq!(get(server.addr(), "/").unwrap().status, 200);
}
