//! The blocking adapter (issue 7): connections as `std::net::TcpStream` on threads inside the
//! worker, while the worker's loop still counts them and drains them on shutdown.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use common::*;
use nix::sys::signal::Signal;

/// A line-oriented client of the blocking example.
struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    /// Connects and reads the greeting; returns the worker pid it names.
    fn open(server: &Server) -> (Client, u32) {
        let s = connect(server.addr());
        let mut c = Client {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        };
        let greeting = c.line();
        let pid = greeting
            .strip_prefix("hello from worker ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("greeting: {greeting:?}"));
        (c, pid)
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("a line");
        line.trim_end().to_string()
    }

    fn ask(&mut self, text: &str) -> String {
        writeln!(self.w, "{text}").unwrap();
        self.line()
    }
}

#[test]
fn each_connection_gets_a_thread_of_its_own() {
    let mut server = Server::start_example("blocking", &["0", "1"]);
    let workers = server.workers();
    // Both held open at once by the single worker: neither waits for the other.
    let (mut a, pid_a) = Client::open(&server);
    let (mut b, pid_b) = Client::open(&server);
    assert_eq!((pid_a, pid_b), (workers[0], workers[0]));
    assert_eq!(b.ask("from b"), "from b");
    assert_eq!(a.ask("from a"), "from a");
}

#[test]
fn closed_connections_are_counted_by_the_worker() {
    let server = Server::start_example("blocking", &["0", "1"]);
    for i in 0..5 {
        let (mut c, _) = Client::open(&server);
        assert_eq!(c.ask(&format!("n{i}")), format!("n{i}"));
    }
    // SIGUSR2 asks the workers for their counters; once every function returned, none is open.
    wait_for("stats with 5 connections, none open", DEADLINE, || {
        server.signal(Signal::SIGUSR2);
        let rows = wait_for("a statistics table", DEADLINE, || {
            let rows = server.last_stats();
            (!rows.is_empty()).then_some(rows)
        });
        let row = rows[0];
        // (worker, pid, handed, connections, open, requests, restarts)
        (row[3] == 5 && row[4] == 0).then_some(())
    });
}

#[test]
fn shutdown_finishes_the_request_in_flight_then_exits() {
    let mut server = Server::start_example("blocking", &["0", "1"]);
    let workers = server.workers();
    let (mut c, _) = Client::open(&server);
    writeln!(c.w, "wait 700").unwrap();
    server.signal(Signal::SIGTERM);
    assert_eq!(c.line(), "waited 700", "the request in flight is answered");
    let mut rest = String::new();
    assert_eq!(
        c.r.read_line(&mut rest).unwrap_or(0),
        0,
        "then closed: {rest:?}"
    );
    assert!(
        server.wait_exit(DEADLINE).success(),
        "{}",
        server.log_text()
    );
    assert!(workers.iter().all(|&p| !alive(p)));
}
