//! The library's examples, run as a user would (issue 7): the seed program, a custom TCP
//! protocol on the worker's loop, and a primary that distributes work and collects results.
//! `cargo test` builds the examples before it runs these.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

#[test]
fn hello_answers_with_worker_pids_and_stops_on_sigterm() {
    let mut server = Server::start_example("hello", &["0"]);
    let workers = server.workers();
    assert!(!workers.is_empty());
    assert!(
        server
            .find_log(&format!("Master {} is running", server.pid()))
            .is_some(),
        "{}",
        server.log_text()
    );
    for id in 1..=workers.len() {
        server.wait_log(&format!("(id {id}) started"), DEADLINE);
    }
    for _ in 0..2 * workers.len() {
        let r = get(server.addr(), "/").expect("request");
        assert_eq!(r.status, 200);
        assert!(r.text().starts_with("Hello World! "), "{}", r.text());
        assert!(workers.contains(&r.pid()), "{} {workers:?}", r.pid());
    }
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(DEADLINE).success());
}

#[test]
fn echo_greets_with_its_pid_and_echoes() {
    let mut server = Server::start_example("echo", &["0"]);
    let workers = server.workers();
    let s = connect(server.addr());
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let pid: u32 = line
        .trim()
        .strip_prefix("echo from worker ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("greeting: {line:?}"));
    assert!(workers.contains(&pid), "{pid} {workers:?}");
    for text in ["ping", "second line"] {
        writeln!(w, "{text}").unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(line.trim_end(), text);
    }
    drop((w, r));
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(DEADLINE).success());
}

fn count_primes(limit: usize) -> u64 {
    (2..limit)
        .filter(|&n| (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
        .count() as u64
}

#[test]
fn compute_collects_every_result_then_stops() {
    let tasks = 12;
    let out = run_example("compute", &[&tasks.to_string()], Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}\n{}",
        out.stdout.join("\n"),
        out.stderr.join("\n")
    );
    let mut total = 0;
    for n in 1..=tasks {
        let expect = count_primes(n * 1000);
        total += expect;
        let prefix = format!("task {n}: {expect} primes below {} ", n * 1000);
        let lines = out.stdout.iter().filter(|l| l.starts_with(&prefix)).count();
        assert_eq!(lines, 1, "task {n}:\n{}", out.stdout.join("\n"));
    }
    let done = format!("all {tasks} tasks done: {total} primes in total");
    assert!(
        out.stdout.contains(&done),
        "{done}:\n{}",
        out.stdout.join("\n")
    );
}
