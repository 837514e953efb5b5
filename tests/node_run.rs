//! `herd run -- node app.js`: unmodified Node.js cluster apps under herd's primary, with real
//! `node` processes.

mod common;
use common::*;

use std::collections::HashMap;

/// Pids of `n` new connections, counted.
fn spread(addr: std::net::SocketAddr, n: usize) -> HashMap<u32, usize> {
    let mut by_pid = HashMap::new();
    for _ in 0..n {
        *by_pid.entry(serving_pid(addr)).or_default() += 1;
    }
    by_pid
}

#[test]
fn the_seed_program_verbatim_gets_10_10_10() {
    let seed = seed_app();
    let mut s = Launch::herd_run(&["--workers", "3"], &["node", &seed]).start();
    let by_pid = spread(s.addr(), 30);
    let mut counts: Vec<usize> = by_pid.values().copied().collect();
    counts.sort();
    assert_eq!(counts, [10, 10, 10], "{by_pid:?}\n{}", s.log_text());
    let workers = s.workers();
    assert!(
        by_pid.keys().all(|p| workers.contains(p)),
        "served by herd's workers"
    );
    assert_eq!(
        s.count_log("Worker "),
        3,
        "each worker ran the seed's worker branch"
    );
    assert_eq!(s.count_log("listening on http://"), 1);
}

#[test]
fn the_listening_line_waits_for_every_worker_to_listen() {
    let s = Launch::herd_run(&["--workers", "2"], &["node", &node_fixture("hello.js")]).start();
    let line = s
        .find_log("listening on http://127.0.0.1:")
        .expect("the line");
    assert!(line.ends_with(&format!(":{}", s.port)), "{line}");
    let r = get(s.addr(), "/").expect("served");
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with("Hello World! "), "{}", r.text());
}

#[test]
fn several_servers_per_worker_each_answered_as_node_would() {
    // On another loopback address: even if herd's own ephemeral port turns out the same, this
    // is another server.
    let extra = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let extra_port = extra.local_addr().unwrap().port();
    drop(extra); // herd binds it when the workers ask
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port().to_string();
    let dir = std::env::temp_dir().join(format!("herd-node-pipe-{}", std::process::id()));
    let s = Launch::herd_run(&["--workers", "2"], &["node", &node_fixture("servers.js")])
        .env("EXTRA_PORT", &extra_port.to_string())
        .env("BUSY_PORT", &busy_port)
        .env("PIPE", &dir.to_string_lossy())
        .env("RUST_LOG", "debug")
        .start();
    for w in [1, 2] {
        s.wait_log(
            &format!(r#"{{"worker":{w},"busy":"EADDRINUSE"}}"#),
            DEADLINE,
        );
        s.wait_log(
            &format!(r#"{{"worker":{w},"extra":{extra_port}}}"#),
            DEADLINE,
        );
        s.wait_log(&format!(r#"{{"worker":{w},"pipe":"ENOTSUP"}}"#), DEADLINE);
        s.wait_log(&format!(r#"{{"worker":{w},"zero":"#), DEADLINE);
    }
    assert_eq!(
        s.count_log("cannot bind"),
        1,
        "logged once: {}",
        s.log_text()
    );
    assert_eq!(s.count_log("pipes and UDP are not served"), 1);
    // Both workers share the port-0 server: one port, reported by both.
    let zero: Vec<String> = s.log_lines(r#""zero":"#);
    let port_of = |l: &str| {
        l.rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches('}')
            .to_string()
    };
    assert_eq!(port_of(&zero[0]), port_of(&zero[1]), "{zero:?}");
    let extra_addr = std::net::SocketAddr::from(([127, 0, 0, 2], extra_port));
    let r = get(extra_addr, "/").expect("the extra server answers");
    assert!(r.text().starts_with("extra "), "{}", r.text());
    let r = get(s.addr(), "/").expect("the main server answers");
    assert!(
        r.text().starts_with("main "),
        "{}\n{}",
        r.text(),
        s.log_text()
    );
    drop(busy);
}
