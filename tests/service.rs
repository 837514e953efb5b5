//! Running herd as a system service (issue 15): socket activation through
//! `systemd-socket-activate` for every policy, `sd_notify` messages read from a test-owned
//! `NOTIFY_SOCKET`, the pid file, and `--user` on a privileged port.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use common::*;
use nix::sys::signal::Signal;

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herd-service-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// `systemd-socket-activate -l 127.0.0.1:PORT herd serve ARGS`: the tool binds, and execs herd
/// (keeping its pid) on the first connection.
fn activated(port: u16, args: &[&str]) -> Launch {
    let listen = format!("127.0.0.1:{port}");
    let mut all = vec![
        "-l",
        listen.as_str(),
        "--fdname=web",
        "-E",
        "RUST_LOG=info",
        herd_bin(),
        "serve",
    ];
    all.extend_from_slice(args);
    Launch::herd(&[])
        .program(PathBuf::from("systemd-socket-activate"))
        .replace_args(&all)
}

#[test]
fn socket_activation_serves_on_the_inherited_socket_for_every_policy() {
    for (policy, workers) in [
        ("round-robin", "2"),
        ("least-connections", "2"),
        ("shared", "2"),
        ("reuseport", "1"),
        ("idle-first", "2"),
    ] {
        let port = unused_port();
        let mut server = activated(port, &["--policy", policy, "--workers", workers]).spawn();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // The first connection is what makes the tool exec herd; it is answered once herd runs.
        let first = wait_for("the activated server to answer", DEADLINE, || {
            get(addr, "/").ok()
        });
        assert_eq!(first.status, 200, "{policy}");
        server.wait_listening();
        assert_eq!(server.port, port, "{policy}: serves on the inherited port");
        let text = server.log_text();
        assert!(
            text.contains("socket activation: 1 inherited socket (web)"),
            "{policy}:\n{text}"
        );
        let pids: std::collections::HashSet<u32> = (0..20)
            .map(|_| get(addr, "/").expect("request").pid())
            .collect();
        assert!(
            pids.iter().all(|p| server.workers().contains(p)),
            "{policy}: served by herd's workers"
        );
        server.signal(Signal::SIGTERM);
        assert!(server.wait_exit(DEADLINE).success(), "{policy}");
    }
}

#[test]
fn reuseport_takes_one_inherited_socket_per_worker() {
    // systemd-socket-activate makes no SO_REUSEPORT sockets, so the two sockets listen on two
    // addresses; what is checked is the layout: each worker accepts on its own socket.
    let port = unused_port();
    let mut all = vec!["-l".to_string(), format!("127.0.0.1:{port}")];
    all.extend(["-l".to_string(), format!("127.0.0.2:{port}")]);
    let rest = [
        "-E",
        "RUST_LOG=info",
        herd_bin(),
        "serve",
        "--policy",
        "reuseport",
        "--workers",
        "2",
    ];
    all.extend(rest.iter().map(|a| a.to_string()));
    let args: Vec<&str> = all.iter().map(String::as_str).collect();
    let mut server = Launch::herd(&[])
        .program(PathBuf::from("systemd-socket-activate"))
        .replace_args(&args)
        .spawn();
    let one = SocketAddr::from(([127, 0, 0, 1], port));
    let two = SocketAddr::from(([127, 0, 0, 2], port));
    wait_for("the activated server to answer", DEADLINE, || {
        get(one, "/").ok()
    });
    server.wait_listening();
    let first = get(one, "/").expect("first socket").pid();
    let second = get(two, "/").expect("second socket").pid();
    let workers = server.workers();
    assert!(workers.contains(&first) && workers.contains(&second));
    assert_ne!(first, second, "one socket per worker");
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(DEADLINE).success());
}

#[test]
fn reuseport_says_how_many_inherited_sockets_it_needs() {
    let port = unused_port();
    let mut server = activated(port, &["--policy", "reuseport", "--workers", "3"]).spawn();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Trigger the exec (once the tool listens); herd then refuses, and the connection is
    // closed unanswered.
    let _conn = wait_for("the tool to listen", DEADLINE, || {
        std::net::TcpStream::connect(addr).ok()
    });
    let status = server.wait_exit(DEADLINE);
    assert!(!status.success());
    let line = server
        .find_log("error:")
        .unwrap_or_else(|| panic!("no error line:\n{}", server.log_text()));
    assert!(
        line.contains(
            "reuseport policy needs 3 inherited listening sockets (one per worker); got 1"
        ),
        "{line}"
    );
}

#[test]
fn an_inherited_descriptor_that_is_not_a_socket_is_a_one_line_error() {
    // `exec` keeps the shell's pid, so LISTEN_PID=$$ names herd; fd 3 is /dev/null.
    let script = format!(
        "LISTEN_PID=$$ LISTEN_FDS=1 exec \"{}\" serve --port 0 3</dev/null",
        herd_bin()
    );
    let mut server = Launch::herd(&[])
        .program(PathBuf::from("sh"))
        .replace_args(&["-c", &script])
        .spawn();
    assert!(!server.wait_exit(DEADLINE).success());
    let errors = server.log_lines("error:");
    assert_eq!(errors.len(), 1, "{}", server.log_text());
    assert!(
        errors[0].contains("inherited socket 'fd 3': fd 3 is not a socket"),
        "{}",
        errors[0]
    );
}

/// Reads notifications until `want` is among those from index `from` on (or the deadline
/// passes); returns its index.
fn read_after(sock: &UnixDatagram, seen: &mut Vec<String>, from: usize, want: &str) -> usize {
    let mut buf = [0u8; 4096];
    wait_for(&format!("notification {want}"), DEADLINE, || {
        while let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            seen.extend(msg.lines().map(str::to_string));
        }
        seen.iter()
            .skip(from)
            .position(|l| l == want)
            .map(|i| from + i)
    })
}

/// Reads notifications until `want` is among them.
fn read_until(sock: &UnixDatagram, seen: &mut Vec<String>, want: &str) -> usize {
    read_after(sock, seen, 0, want)
}

#[test]
fn notify_says_ready_reloading_watchdog_and_stopping_in_order() {
    let dir = scratch("notify");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    sock.set_nonblocking(true).expect("non-blocking");
    let mut server = Launch::herd(&["--workers", "2"])
        .env("NOTIFY_SOCKET", path.to_str().expect("utf-8 path"))
        .env("WATCHDOG_USEC", "300000")
        .start();
    let mut seen = Vec::new();
    let ready = read_until(&sock, &mut seen, "READY=1");
    // The primary's loop keeps pinging the watchdog once the service is ready.
    read_after(&sock, &mut seen, ready, "WATCHDOG=1");
    let before_reload = seen.len();
    server.signal(Signal::SIGHUP);
    server.wait_log("reload complete", DEADLINE);
    let reloading = read_after(&sock, &mut seen, before_reload, "RELOADING=1");
    read_after(&sock, &mut seen, reloading, "READY=1");
    server.signal(Signal::SIGTERM);
    read_until(&sock, &mut seen, "STOPPING=1");
    assert!(server.wait_exit(DEADLINE).success());
    let states: Vec<&str> = seen
        .iter()
        .map(String::as_str)
        .filter(|l| ["READY=1", "RELOADING=1", "STOPPING=1"].contains(l))
        .collect();
    assert_eq!(
        states,
        ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"],
        "{seen:?}"
    );
    assert!(
        seen[reloading + 1].starts_with("MONOTONIC_USEC="),
        "RELOADING=1 comes with MONOTONIC_USEC: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with("STATUS=2/2 workers online")),
        "{seen:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_pid_file_names_the_primary_while_it_runs() {
    let dir = scratch("pidfile");
    let pid_file = dir.join("herd.pid");
    let mut server = Launch::herd(&["--workers", "1", "--pid-file"])
        .args(&[pid_file.to_str().expect("utf-8 path")])
        .start();
    let written = std::fs::read_to_string(&pid_file).expect("pid file written by then");
    assert_eq!(written.trim(), server.pid().to_string());
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(DEADLINE).success());
    assert!(!pid_file.exists(), "removed on exit");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A privileged port (below 1024) nothing listens on.
fn free_privileged_port() -> u16 {
    (900..1024)
        .find(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port below 1024")
}

/// The real user id of `pid`, from `/proc/<pid>/status`.
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn user_nobody_on_a_privileged_port_leaves_no_process_as_root() {
    assert_eq!(nix::unistd::geteuid().as_raw(), 0, "the tests run as root");
    let port = free_privileged_port();
    let port_arg = port.to_string();
    let mut server = Launch::herd(&[])
        .replace_args(&["serve", "--host", "127.0.0.1", "--port", &port_arg])
        .args(&["--workers", "2", "--user", "nobody"])
        .start();
    assert_eq!(server.port, port);
    let r = get(server.addr(), "/").expect("served");
    assert_eq!(r.status, 200);
    let mut all = server.workers();
    assert_eq!(all.len(), 2);
    all.push(server.pid());
    for pid in all {
        let uid = uid_of(pid).expect("a live process");
        assert_eq!(uid, 65534, "process {pid} runs as uid {uid}");
    }
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(DEADLINE).success());
}

#[test]
fn an_unknown_user_is_a_one_line_error_before_anything_is_bound() {
    let port = free_privileged_port();
    let port_arg = port.to_string();
    let mut server = Launch::herd(&[])
        .replace_args(&["serve", "--host", "127.0.0.1", "--port", &port_arg])
        .args(&["--user", "no-such-user-herd"])
        .spawn();
    assert!(!server.wait_exit(DEADLINE).success());
    assert_eq!(server.log_text(), "error: unknown user 'no-such-user-herd'");
    assert!(port_free(port));
}

/// `STATUS=` says how many connections per second come in, whoever accepts them.
fn status_counts_connections(policy: &str) {
    let dir = scratch(&format!("status-{policy}"));
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    sock.set_nonblocking(true).expect("non-blocking");
    let server = Launch::herd(&["--workers", "2", "--policy", policy])
        .env("NOTIFY_SOCKET", path.to_str().expect("utf-8 path"))
        .start();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = load_until(server.addr(), 2, usize::MAX, false, stop.clone());
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let busy = wait_for("a STATUS line with connections coming in", DEADLINE, || {
        while let Ok(n) = sock.recv(&mut buf) {
            seen.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_string),
            );
        }
        seen.iter()
            .filter_map(|l| l.strip_prefix("STATUS=2/2 workers online, "))
            .find(|rest| !rest.starts_with("0 "))
            .map(str::to_string)
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let total = merge(clients);
    assert_eq!(total.failed, 0, "{:?}", total.errors);
    assert!(busy.ends_with(" connections/s"), "{busy}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn status_counts_connections_the_primary_accepts() {
    status_counts_connections("round-robin");
}

#[test]
fn status_counts_connections_the_workers_accept() {
    status_counts_connections("shared");
}
