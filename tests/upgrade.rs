//! Upgrading the primary itself (`SIGUSR1`, issue 15): three upgrades in a row under `wrk`
//! load (a new connection per request, and keep-alive) with no failed request, every pid new
//! afterwards, no process left behind and no descriptor gained; every policy; the connections
//! waiting in the old primary; `MAINPID=` told to systemd; a socket-activated primary. How an
//! upgrade fails is in `upgrade_outcomes.rs`.
//!
//! Each test runs its own link to the herd binary (`common::Scratch`), so that it can replace
//! it on disk.

mod common;

use std::collections::HashSet;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::*;
use nix::sys::signal::Signal;

/// What `wrk` reported.
#[derive(Debug, Default)]
struct WrkResult {
    requests: u64,
    errors: u64,
    non_2xx: u64,
    text: String,
}

/// Starts `wrk` with 50 connections on one thread, for at most a minute.
fn start_wrk(addr: std::net::SocketAddr, close: bool) -> Child {
    let url = format!("http://{addr}/");
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c50", "-d60s", "--timeout", "10s"]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wrk (.ci/run installs it)")
}

/// Stops `wrk` (`SIGINT` makes it print its summary) and reads its numbers.
fn stop_wrk(wrk: Child) -> WrkResult {
    send_signal(wrk.id(), Signal::SIGINT).expect("signal wrk");
    let out = wrk.wait_with_output().expect("wrk output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let number_after = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| {
                let at = l.find(key)? + key.len();
                l[at..]
                    .split_whitespace()
                    .next()?
                    .trim_matches(',')
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let errors = ["connect ", "read ", "write ", "timeout "]
        .iter()
        .map(|k| number_after(k))
        .sum();
    WrkResult {
        requests,
        errors,
        non_2xx: number_after("Non-2xx or 3xx responses: "),
        text,
    }
}

/// Three upgrades under `wrk` load; every check of the issue.
fn three_upgrades_under_load(name: &str, close: bool, policy: &str) {
    let s = Scratch::new(name);
    let mut server = s.start(&["--policy", policy]);
    let first = server.pid();
    let fds_before = fd_count(first);
    let mut seen: HashSet<u32> = server.workers().into_iter().collect();
    seen.insert(first);
    let wrk = start_wrk(server.addr(), close);
    // Let the load reach every worker before the first upgrade.
    wait_for("requests to flow", DEADLINE, || {
        (serving_pid(server.addr()) != 0).then_some(())
    });
    let mut primaries = vec![first];
    for _ in 0..3 {
        let new = upgrade(&s, &server);
        let workers = children(new);
        // Keep the load on this generation for a while (and check it serves) before the next.
        for _ in 0..200 {
            let r = get(server.addr(), "/").expect("served between upgrades");
            assert_eq!(r.status, 200);
        }
        seen.extend(primaries.iter().copied());
        seen.extend(workers.iter().copied());
        primaries.push(new);
    }
    let result = stop_wrk(wrk);
    eprintln!(
        "wrk ({name}, {policy}) across three upgrades:\n{}",
        result.text
    );
    assert!(result.requests > 0, "{}", result.text);
    assert_eq!(result.errors, 0, "socket errors:\n{}", result.text);
    assert_eq!(result.non_2xx, 0, "non-2xx:\n{}", result.text);
    let last = *primaries.last().expect("a primary");
    // All pids new: the last primary and its workers were never seen before it.
    let workers = wait_for("the last primary's two workers", DEADLINE, || {
        let w = children(last);
        (w.len() == 2).then_some(w)
    });
    for (i, p) in primaries.iter().enumerate() {
        assert_eq!(
            primaries.iter().filter(|q| *q == p).count(),
            1,
            "primary {i} reused a pid"
        );
    }
    let earlier: HashSet<u32> = seen
        .iter()
        .copied()
        .filter(|p| *p != last && !workers.contains(p))
        .collect();
    for w in &workers {
        assert!(!earlier.contains(w), "worker {w} is not new");
    }
    // No orphans: every earlier primary and worker is gone.
    wait_for("every earlier process to exit", DEADLINE * 2, || {
        earlier.iter().all(|&p| !alive(p)).then_some(())
    });
    // No descriptor left behind: the last primary holds what the first one did.
    wait_for("the last primary's descriptors to settle", DEADLINE, || {
        (fd_count(last) == fds_before).then_some(())
    });
    // And it serves.
    let r = get(server.addr(), "/").expect("served after three upgrades");
    assert!(workers.contains(&r.pid()), "{}", r.text());
    server.child.wait().expect("the first primary was reaped");
    send_signal(last, Signal::SIGTERM).expect("stop the last primary");
    wait_for("the last primary to exit", DEADLINE, || {
        (!alive(last)).then_some(())
    });
    assert!(
        !s.pid_file().exists(),
        "the last primary removed its pid file"
    );
}

#[test]
fn three_upgrades_under_close_load_fail_no_request() {
    three_upgrades_under_load("close", true, "round-robin");
}

#[test]
fn three_upgrades_under_keepalive_load_fail_no_request() {
    three_upgrades_under_load("keepalive", false, "round-robin");
}

#[test]
fn upgrades_work_for_the_other_policies() {
    for policy in ["least-connections", "shared", "reuseport", "idle-first"] {
        let s = Scratch::new(policy);
        let mut server = s.start(&["--policy", policy]);
        let new = upgrade(&s, &server);
        let workers = wait_for("the new primary's workers", DEADLINE, || {
            let w = children(new);
            (w.len() == 2).then_some(w)
        });
        let pids: HashSet<u32> = (0..20)
            .map(|_| get(server.addr(), "/").expect("served").pid())
            .collect();
        assert!(
            pids.iter().all(|p| workers.contains(p)),
            "{policy}: {pids:?}"
        );
        let _ = server.child.wait();
        send_signal(new, Signal::SIGTERM).expect("stop");
        wait_for("the new primary to exit", DEADLINE, || {
            (!alive(new)).then_some(())
        });
    }
}

/// One notification: who sent it (`SCM_CREDENTIALS`) and its lines.
fn recv_notification(sock: &UnixDatagram) -> Option<(u32, Vec<String>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
    let msg = recvmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT,
    )
    .ok()?;
    let pid = msg.cmsgs().ok()?.find_map(|c| match c {
        ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid() as u32),
        _ => None,
    })?;
    let n = msg.bytes;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    Some((pid, text.lines().map(str::to_string).collect()))
}

#[test]
fn an_upgrade_tells_systemd_the_new_main_pid_and_one_primary_speaks_at_a_time() {
    let s = Scratch::new("mainpid");
    let sock_path = s.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::PassCred, &true)
        .expect("SO_PASSCRED");
    let pid_file = s.pid_file();
    let mut server = Launch::herd(&["--workers", "1", "--pid-file"])
        .args(&[pid_file.to_str().expect("utf-8 path")])
        .env("NOTIFY_SOCKET", sock_path.to_str().expect("utf-8 path"))
        .env("WATCHDOG_USEC", "200000")
        .program(s.bin())
        .start();
    let old = server.pid();
    let new = upgrade(&s, &server);
    let main_pid = format!("MAINPID={new}");
    // (sender, line) in arrival order, until the new primary has pinged the watchdog.
    let mut seen: Vec<(u32, String)> = Vec::new();
    wait_for("a watchdog ping from the new primary", DEADLINE, || {
        while let Some((pid, lines)) = recv_notification(&sock) {
            seen.extend(lines.into_iter().map(|l| (pid, l)));
        }
        seen.iter()
            .any(|(p, l)| *p == new && l == "WATCHDOG=1")
            .then_some(())
    });
    let at = seen
        .iter()
        .position(|(_, l)| *l == main_pid)
        .unwrap_or_else(|| panic!("no {main_pid}: {seen:?}"));
    assert_eq!(
        seen[at].0, old,
        "the main pid of the moment announces its successor"
    );
    assert!(
        seen[..at].iter().all(|(p, _)| *p == old),
        "the new primary spoke before it took over: {seen:?}"
    );
    assert!(
        seen[at..]
            .iter()
            .skip_while(|(p, _)| *p == old)
            .all(|(p, _)| *p == new),
        "the old primary spoke after it handed over: {seen:?}"
    );
    assert!(
        seen.iter().any(|(p, l)| *p == new && l == "READY=1"),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|(_, l)| l == "STOPPING=1"),
        "the old primary leaving is not the service stopping: {seen:?}"
    );
    let _ = server.child.wait();
    send_signal(new, Signal::SIGTERM).expect("stop");
    wait_for("the new primary to exit", DEADLINE, || {
        (!alive(new)).then_some(())
    });
}

/// Sends the first line of a request (an incomplete head: the connection is accepted, and
/// waits for the rest).
fn half_request(addr: std::net::SocketAddr) -> std::net::TcpStream {
    use std::io::Write;
    let mut c = connect(addr);
    c.write_all(b"GET / HTTP/1.1\r\n")
        .expect("send the request line");
    c
}

/// Sends the rest of the head and reads the answer; returns the pid that served it.
fn finish_request(mut c: std::net::TcpStream) -> u32 {
    use std::io::Write;
    c.write_all(b"Host: x\r\nConnection: close\r\n\r\n")
        .expect("send the rest");
    c.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let r = read_response(&mut std::io::BufReader::new(c), false).expect("an answer");
    assert_eq!(r.status, 200);
    r.pid()
}

#[test]
fn connections_waiting_in_the_old_primary_are_passed_to_the_new_one() {
    let s = Scratch::new("waiting");
    // One worker that serves one connection at a time and holds one more (given to it, so it
    // is the worker's): the third and fourth connections wait in the primary's queue.
    let mut server = s.start_with(&[
        "--workers",
        "1",
        "--max-connections",
        "1",
        "--handoff-window",
        "1",
    ]);
    let old = server.pid();
    let old_worker = server.workers()[0];
    let base = fd_count(old);
    let a = half_request(server.addr());
    let b = half_request(server.addr());
    let c = half_request(server.addr());
    let d = half_request(server.addr());
    // C and D are held by the primary (B is the full worker's, held there untaken).
    wait_for("the primary to hold two connections", DEADLINE, || {
        (fd_count(old) == base + 2).then_some(())
    });
    server.signal(Signal::SIGUSR1);
    let line = server.wait_log("waiting connections passed", DEADLINE);
    assert!(
        line.contains("(2 waiting connections passed to it)"),
        "{line}"
    );
    let new = s.primary().expect("pid file");
    assert_ne!(new, old);
    let new_workers = children(new);
    // The passed connections are the new workers' to serve; the old worker finishes its own.
    assert!(new_workers.contains(&finish_request(c)), "C");
    assert!(new_workers.contains(&finish_request(d)), "D");
    assert_eq!(finish_request(a), old_worker, "A");
    assert_eq!(finish_request(b), old_worker, "B");
    assert!(server.wait_exit(DEADLINE).success());
    send_signal(new, Signal::SIGTERM).expect("stop");
    wait_for("the new primary to exit", DEADLINE, || {
        (!alive(new)).then_some(())
    });
}

#[test]
fn a_socket_activated_primary_upgrades_too() {
    let s = Scratch::new("activated");
    let port = unused_port();
    let listen = format!("127.0.0.1:{port}");
    let bin = s.bin();
    let pid_file = s.pid_file();
    let mut server = Launch::herd(&[])
        .program(PathBuf::from("systemd-socket-activate"))
        .replace_args(&[
            "-l",
            &listen,
            "-E",
            "RUST_LOG=info",
            bin.to_str().expect("utf-8 path"),
            "serve",
            "--workers",
            "2",
            "--pid-file",
            pid_file.to_str().expect("utf-8 path"),
        ])
        .spawn();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_for("the activated server to answer", DEADLINE, || {
        get(addr, "/").ok()
    });
    server.wait_listening();
    let new = upgrade(&s, &server);
    let workers = wait_for("the new primary's workers", DEADLINE, || {
        let w = children(new);
        (w.len() == 2).then_some(w)
    });
    let r = get(addr, "/").expect("served by the new primary");
    assert!(workers.contains(&r.pid()));
    assert!(server.wait_exit(DEADLINE).success());
    send_signal(new, Signal::SIGTERM).expect("stop");
    wait_for("the new primary to exit", DEADLINE, || {
        (!alive(new)).then_some(())
    });
}

/// The given handoff (issue 13) meets the upgrade: connections given to an old worker that
/// froze sit unread in its channel, and only there. They are the worker's while it may still
/// read them; once it is killed during the old primary's drain, the old primary reads them back
/// and passes them to the new primary (its listener is gone, and so is its queue's future),
/// whose workers serve every one.
#[test]
fn connections_read_back_from_a_dead_old_worker_go_to_the_new_primary() {
    use std::io::{BufReader, Write};
    const CLIENTS: usize = 10;
    let s = Scratch::new("read-back");
    // Round-robin keeps handing the frozen worker its share; the watchdog stays out of it.
    let mut server = s.start(&["--worker-timeout", "60s"]);
    let old = server.pid();
    let frozen = server.workers()[0];
    send_signal(frozen, Signal::SIGSTOP).expect("freeze a worker");
    let answers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let mut c = connect(server.addr());
            c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .expect("send");
            std::thread::spawn(move || {
                c.set_read_timeout(Some(DEADLINE * 2)).expect("timeout");
                read_response(&mut BufReader::new(c), false)
            })
        })
        .collect();
    wait_for("the live worker's share to be answered", DEADLINE, || {
        (answers.iter().filter(|h| h.is_finished()).count() >= CLIENTS / 2).then_some(())
    });
    assert!(
        answers.iter().any(|h| !h.is_finished()),
        "some wait in the frozen worker's channel"
    );
    send_signal(old, Signal::SIGUSR1).expect("upgrade");
    let new = wait_for("a new primary in the pid file", DEADLINE, || {
        s.primary().filter(|&p| p != old)
    });
    server.wait_log(&format!("upgrade: primary {new} took over"), DEADLINE);
    let new_workers = wait_for("the new primary's workers", DEADLINE, || {
        let w = children(new);
        (w.len() == 2).then_some(w)
    });
    assert!(alive(old), "the old primary drains its frozen worker");
    send_signal(frozen, Signal::SIGKILL).expect("kill the frozen worker");
    let mut by_new = 0;
    for (i, h) in answers.into_iter().enumerate() {
        let r = h
            .join()
            .expect("reader thread")
            .unwrap_or_else(|e| panic!("connection {i} was lost: {e}\n{}", server.log_text()));
        assert_eq!(r.status, 200);
        assert_ne!(r.pid(), frozen);
        by_new += usize::from(new_workers.contains(&r.pid()));
    }
    assert!(by_new > 0, "the new workers served the frozen one's share");
    server.wait_log(
        "connections old workers never took passed to the new primary",
        DEADLINE,
    );
    assert!(server.wait_exit(DEADLINE).success());
    send_signal(new, Signal::SIGTERM).expect("stop");
    wait_for("the new primary to exit", DEADLINE, || {
        (!alive(new)).then_some(())
    });
}
