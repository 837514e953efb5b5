//! Operating a running server (issue 14): `herd status / reload / scale / stop` over the
//! control socket, `SIGTTIN`/`SIGTTOU`, and what the socket does with bad or foreign clients.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use nix::sys::signal::Signal;

/// What a finished `herd` client command said.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `herd ARGS` to completion (killed past `DEADLINE`, which fails the test).
fn herd(args: &[&str]) -> Ran {
    herd_as(args, None)
}

fn herd_as(args: &[&str], uid: Option<u32>) -> Ran {
    let mut cmd = match uid {
        None => Command::new(herd_bin()),
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg(herd_bin());
            c
        }
    };
    let mut child = cmd
        .args(args)
        .env_remove("PORT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start herd client");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let mut stderr = String::new();
    let _ = err.read_to_string(&mut stderr);
    let status = poll(DEADLINE, || child.try_wait().ok().flatten());
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("herd {args:?} did not finish");
    };
    Ran {
        code: status.code(),
        stdout: reader.join().unwrap(),
        stderr,
    }
}

fn port_arg(server: &Server) -> String {
    server.port.to_string()
}

fn status_json(server: &Server) -> serde_json::Value {
    let port = port_arg(server);
    let r = herd(&["status", "--port", &port, "--json"]);
    assert_eq!(r.code, Some(0), "status: {}", r.stderr);
    serde_json::from_str(r.stdout.trim()).expect("status --json is one JSON object")
}

fn pids_of(v: &serde_json::Value) -> Vec<u32> {
    let mut p: Vec<u32> = v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["pid"].as_u64().map(|p| p as u32))
        .collect();
    p.sort();
    p
}

/// A fresh directory for one test's control socket, removed when the test is done.
struct ScratchDir(PathBuf);

impl std::ops::Deref for ScratchDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for ScratchDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch_dir(name: &str) -> ScratchDir {
    let d = std::env::temp_dir().join(format!("herd-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    ScratchDir(d)
}

#[test]
fn status_rows_match_the_running_workers() {
    let mut server = Server::start(&["--workers", "3"]);
    for _ in 0..10 {
        assert_eq!(get(server.addr(), "/").unwrap().status, 200);
    }
    // Counters are as fresh as the workers' last answer: wait for all ten requests.
    let v = wait_for("the ten requests in the counters", DEADLINE, || {
        let v = status_json(&server);
        let served: u64 = v["workers"]
            .as_array()?
            .iter()
            .filter_map(|w| w["requests"].as_u64())
            .sum();
        (served == 10).then_some(v)
    });
    assert_eq!(v["primary_pid"].as_u64(), Some(server.pid() as u64));
    assert_eq!(v["policy"], "round-robin");
    assert_eq!(v["pending"].as_u64(), Some(0));
    let workers = v["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3);
    for (i, w) in workers.iter().enumerate() {
        assert_eq!(w["id"].as_u64(), Some(i as u64 + 1));
        assert_eq!(w["state"], "online");
        for key in [
            "uptime_s",
            "restarts",
            "connections",
            "open",
            "requests",
            "rss_bytes",
        ] {
            assert!(w[key].is_u64(), "{key} in {w}");
        }
        assert!(
            w["cpu_percent"].is_f64() || w["cpu_percent"].is_u64(),
            "{w}"
        );
        assert!(w["rss_bytes"].as_u64().unwrap() > 0);
    }
    assert_eq!(pids_of(&v), server.workers(), "the pids /proc shows");
    let table = herd(&["status", "--port", &port_arg(&server)]);
    assert_eq!(table.code, Some(0));
    for pid in server.workers() {
        assert!(table.stdout.contains(&pid.to_string()), "{}", table.stdout);
    }
    assert!(table
        .stdout
        .contains(&format!("primary pid {}", server.pid())));
}

#[test]
fn no_server_is_one_line_naming_the_path_and_exit_1() {
    let r = herd(&["status", "--control", "/nonexistent/herd/x.sock"]);
    assert_eq!(r.code, Some(1));
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("/nonexistent/herd/x.sock"),
        "{}",
        r.stderr
    );
    let r = herd(&["reload", "--port", "1"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("1.sock"), "{}", r.stderr);
    let r = herd(&["scale", "x", "--port", "1"]);
    assert_eq!(
        r.code,
        Some(2),
        "a bad count is a usage error: {}",
        r.stderr
    );
}

/// Sends raw bytes on the control socket and reads the answer until the server closes.
fn raw_control(path: &std::path::Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(path).expect("connect to the control socket");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = s.write_all(bytes);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn malformed_and_oversized_lines_get_an_error_line() {
    let dir = scratch_dir("malformed");
    let sock = dir.join("c.sock");
    let mut server = Server::start(&["--workers", "1", "--control", sock.to_str().unwrap()]);
    for bad in [
        &b"bogus\n"[..],
        b"scale\n",
        b"scale -x\n",
        b"\xff\xfe\n",
        b"status now\n",
    ] {
        let answer = raw_control(&sock, bad);
        assert!(answer.starts_with("error "), "{bad:?}: {answer:?}");
        assert_eq!(answer.lines().count(), 1);
    }
    let long = vec![b'a'; 10_000];
    assert!(raw_control(&sock, &long).starts_with("error line longer"));
    // A client that says nothing and one that leaves mid-line change nothing.
    let _silent = UnixStream::connect(&sock).unwrap();
    drop(UnixStream::connect(&sock).map(|mut s| s.write_all(b"sta")));
    assert!(raw_control(&sock, b"status\n").starts_with("ok {"));
    assert_eq!(server.workers().len(), 1);
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the primary lives"
    );
}

#[test]
fn another_uid_is_refused_and_logged() {
    let dir = scratch_dir("uid");
    let sock = dir.join("c.sock");
    let server = Server::start(&["--workers", "1", "--control", sock.to_str().unwrap()]);
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&sock), 0o600, "the socket is the owner's only");
    // The file mode already keeps other users out; open it up to reach the peer check.
    let r = herd_as(
        &["status", "--control", sock.to_str().unwrap()],
        Some(65534),
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = herd_as(
        &["status", "--control", sock.to_str().unwrap()],
        Some(65534),
    );
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("permission denied"), "{}", r.stderr);
    server.wait_log("control socket: refused a client: uid 65534", DEADLINE);
    assert_eq!(
        herd(&["status", "--control", sock.to_str().unwrap()]).code,
        Some(0)
    );
}

/// The control socket a server opened at its default path, as it logged it.
fn default_socket(server: &Server) -> PathBuf {
    let line = server.wait_log("control socket at ", DEADLINE);
    PathBuf::from(line.rsplit("control socket at ").next().unwrap().trim())
}

#[test]
fn the_default_socket_lives_in_a_private_directory() {
    let server = Server::start(&["--workers", "1"]);
    let path = default_socket(&server);
    assert!(path.ends_with(format!("{}.sock", server.port)), "{path:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the directory is private: {mode:o}");
}

#[test]
fn stop_waits_for_the_primary_to_exit() {
    let mut server = Server::start(&["--workers", "2"]);
    let workers = server.workers();
    let r = herd(&["stop", "--port", &port_arg(&server)]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "stopped");
    // The primary had exited by the time `stop` returned (a zombie until we reap it).
    assert!(!alive(server.pid()), "the primary is gone");
    assert!(server.wait_exit(DEADLINE).success());
    assert!(workers.iter().all(|&w| !alive(w)));
}

/// Starts keep-alive and new-connection clients; returns them and their stop switch.
fn start_load(server: &Server) -> (Vec<std::thread::JoinHandle<LoadResult>>, Arc<AtomicBool>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = load_until(server.addr(), 2, 1_000_000, true, stop.clone());
    clients.extend(load_until(server.addr(), 2, 1_000_000, false, stop.clone()));
    (clients, stop)
}

#[test]
fn reload_over_the_socket_under_load_fails_no_request() {
    let mut server = Server::start(&["--workers", "2"]);
    let before = server.workers();
    let (clients, stop) = start_load(&server);
    wait_for("traffic to flow", DEADLINE, || {
        (cpu_ticks(before[0]) > 1).then_some(())
    });
    let r = herd(&["reload", "--port", &port_arg(&server)]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "reload complete");
    let after = wait_for("old workers to exit", DEADLINE, || {
        let now = server.workers();
        (now.len() == 2 && now.iter().all(|p| !before.contains(p))).then_some(now)
    });
    wait_for("new workers to serve", DEADLINE, || {
        after.iter().all(|&p| cpu_ticks(p) > 1).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let r = merge(clients);
    assert_eq!(r.failed, 0, "no failed request: {:?}", r.errors);
    assert!(after.iter().all(|p| r.by_pid.contains_key(p)));
}

#[test]
fn a_reload_whose_new_worker_fails_exits_non_zero_with_the_reason() {
    let dir = scratch_dir("reload-fail");
    let flag = dir.join("fail");
    let mut server = Launch::herd(&["--workers", "2"])
        .env("HERD_FAULT_FAIL_START", flag.to_str().unwrap())
        .start();
    let before = server.workers();
    std::fs::write(&flag, "").unwrap();
    let r = herd(&["reload", "--port", &port_arg(&server)]);
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert!(r.stderr.contains("did not come online"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1);
    assert_eq!(server.workers(), before, "the old workers keep serving");
    assert_eq!(get(server.addr(), "/").unwrap().status, 200);
}

fn wait_workers(server: &mut Server, n: usize) -> Vec<u32> {
    wait_for(&format!("{n} workers"), DEADLINE, || {
        let w = server.workers();
        let v = status_json(server);
        let online = v["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == "online")
            .count();
        (w.len() == n && online == n && pids_of(&v) == w).then_some(w)
    })
}

#[test]
fn scale_up_and_down_under_load_fails_no_request() {
    let mut server = Server::start(&["--workers", "2"]);
    let (clients, stop) = start_load(&server);
    let port = port_arg(&server);
    let r = herd(&["scale", "4", "--port", &port]);
    assert_eq!(
        (r.code, r.stdout.trim()),
        (Some(0), "scaled from 2 to 4 workers")
    );
    let four = wait_workers(&mut server, 4);
    wait_for("every worker to serve", DEADLINE, || {
        four.iter().all(|&p| cpu_ticks(p) > 1).then_some(())
    });
    let r = herd(&["scale", "-3", "--port", &port]);
    assert_eq!(
        (r.code, r.stdout.trim()),
        (Some(0), "scaled from 4 to 1 worker")
    );
    let one = wait_workers(&mut server, 1);
    assert!(four.contains(&one[0]));
    let ids: Vec<u64> = status_json(&server)["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["id"].as_u64())
        .collect();
    assert_eq!(ids, [1], "the surplus goes from the highest ids");
    let r = herd(&["scale", "-1", "--port", &port]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("at least 1"), "{}", r.stderr);
    server.signal(Signal::SIGTTIN);
    let two = wait_workers(&mut server, 2);
    server.signal(Signal::SIGTTOU);
    assert_eq!(wait_workers(&mut server, 1), one);
    let r = herd(&["scale", "+1", "--port", &port]);
    assert_eq!(r.code, Some(0));
    wait_workers(&mut server, 2);
    stop.store(true, Ordering::Relaxed);
    let r = merge(clients);
    assert_eq!(r.failed, 0, "no failed request: {:?}", r.errors);
    assert!(r.ok > 100, "load ran: {}", r.ok);
    let _ = two;
}

#[test]
fn scale_works_for_every_policy() {
    for policy in ["least-connections", "shared", "reuseport"] {
        let mut server = Server::start(&["--workers", "1", "--policy", policy]);
        let port = port_arg(&server);
        assert_eq!(herd(&["scale", "3", "--port", &port]).code, Some(0));
        let three = wait_workers(&mut server, 3);
        let seen: std::collections::HashSet<u32> =
            (0..200).map(|_| serving_pid(server.addr())).collect();
        assert!(
            seen.len() >= 2,
            "{policy}: new workers serve: {seen:?} of {three:?}"
        );
        assert_eq!(herd(&["scale", "1", "--port", &port]).code, Some(0));
        wait_workers(&mut server, 1);
        for _ in 0..20 {
            assert_eq!(get(server.addr(), "/").unwrap().status, 200, "{policy}");
        }
    }
}

#[test]
fn a_waiting_stop_client_sees_the_socket_close() {
    let dir = scratch_dir("stop-raw");
    let sock = dir.join("c.sock");
    let mut server = Server::start(&["--workers", "1", "--control", sock.to_str().unwrap()]);
    let s = UnixStream::connect(&sock).unwrap();
    (&s).write_all(b"stop\n").unwrap();
    let mut lines = BufReader::new(s).lines();
    let first = lines.next().unwrap().unwrap();
    assert_eq!(first, format!("ok stopping pid {}", server.pid()));
    assert!(lines.next().is_none(), "closed as the primary exits");
    assert!(server.wait_exit(DEADLINE).success());
    assert!(!sock.exists(), "the socket file is removed");
}

#[test]
fn workers_are_recycled_after_their_request_limit_with_no_failed_request() {
    let mut server = Server::start(&[
        "--workers",
        "2",
        "--max-requests-per-worker",
        "60",
        "--max-requests-jitter",
        "20",
    ]);
    let first = server.workers();
    let (clients, stop) = start_load(&server);
    wait_for("four workers recycled", DEADLINE, || {
        server.workers();
        (server.count_log("reached its request limit: replacing it") >= 4).then_some(())
    });
    // A reload asked while workers are recycled replaces every worker and answers.
    let reload = herd(&["reload", "--port", &port_arg(&server)]);
    assert_eq!(reload.code, Some(0), "{}", reload.stderr);
    stop.store(true, Ordering::Relaxed);
    let r = merge(clients);
    assert_eq!(r.failed, 0, "no failed request: {:?}", r.errors);
    let now = wait_workers(&mut server, 2);
    assert!(now.iter().all(|p| !first.contains(p)), "{now:?} {first:?}");
    let recycled: Vec<u32> = server
        .log_lines("reached its request limit: replacing it")
        .iter()
        .filter_map(|l| l.split("worker ").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    assert!(recycled.len() >= 4, "{recycled:?}");
    for pid in recycled {
        let served = r.by_pid.get(&pid).copied().unwrap_or(0);
        assert!(
            served >= 60,
            "worker {pid} was replaced after only {served} requests"
        );
    }
}

#[test]
fn scaling_down_during_a_reload_leaves_exactly_the_asked_workers() {
    let mut server = Server::start(&["--workers", "4"]);
    let sock = default_socket(&server);
    let (clients, stop) = start_load(&server);
    // Ask for a reload without waiting for it, then scale down while it (likely) runs.
    let reload = UnixStream::connect(&sock).unwrap();
    (&reload).write_all(b"reload\n").unwrap();
    assert!(raw_control(&sock, b"scale 1\n").starts_with("ok scaled from 4 to 1"));
    let mut answer = String::new();
    BufReader::new(reload).read_line(&mut answer).unwrap();
    assert_eq!(answer.trim(), "ok reload complete");
    let one = wait_workers(&mut server, 1);
    assert!(raw_control(&sock, b"scale 3\n").starts_with("ok scaled from 1 to 3"));
    let three = wait_workers(&mut server, 3);
    assert!(three.contains(&one[0]));
    stop.store(true, Ordering::Relaxed);
    let r = merge(clients);
    assert_eq!(r.failed, 0, "no failed request: {:?}", r.errors);
}

#[test]
fn a_default_directory_open_to_others_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let runtime = scratch_dir("xdg");
    let dir = runtime.join("herd");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let server = Launch::herd(&["--workers", "1"])
        .env("XDG_RUNTIME_DIR", runtime.to_str().unwrap())
        .start();
    server.wait_log("is open to other users", DEADLINE);
    assert!(server.find_log("running without one").is_some());
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "no socket there"
    );
    assert_eq!(
        get(server.addr(), "/").unwrap().status,
        200,
        "it serves anyway"
    );
}

#[test]
fn stop_honours_the_drain_delay_as_sigterm_does() {
    let mut server = Server::start(&["--workers", "1", "--drain-delay", "300ms"]);
    let r = herd(&["stop", "--port", &port_arg(&server)]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(server.wait_exit(DEADLINE).success());
    server.wait_log("leaving: health checks fail", DEADLINE);
    server.wait_log("drain delay over", DEADLINE);
}
