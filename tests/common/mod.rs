//! Shared helpers for the integration tests: start a real `herd`, talk HTTP over real sockets,
//! inspect processes through `/proc`. Every wait polls a condition with a deadline.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long any single wait in the tests may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `f` until it returns `Some`, or panics with `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(pause); // poll interval of a deadline-bounded wait
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A running herd primary with its stderr captured.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Set once the captured output reached end of file (every writer closed it).
    pub log_done: Arc<std::sync::atomic::AtomicBool>,
    seen_pids: Vec<i32>,
}

/// The herd binary under test.
pub fn herd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_herd")
}

impl Server {
    /// Starts `herd serve` on 127.0.0.1 with an ephemeral port and waits for "listening on".
    pub fn start(args: &[&str]) -> Server {
        Server::start_env(args, &[])
    }

    /// Like [`Server::start`] with extra environment variables.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut server = Server::launch(args, env);
        let port = wait_for("the listening line", DEADLINE, || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("herd exited early ({status}):\n{}", server.log_text());
            }
            server.find_log("listening on http://").and_then(|l| {
                l.rsplit(':')
                    .next()
                    .and_then(|p| p.trim().parse::<u16>().ok())
            })
        });
        server.port = port;
        server.remember_workers();
        server
    }

    /// Starts `herd serve` without waiting for it to come up.
    pub fn launch(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::launch_with(Command::new(herd_bin()), args, env)
    }

    /// Starts `herd serve` with an open-file limit of `nofile` (through the shell's `ulimit`,
    /// which then execs herd, so the pid is herd's) and waits for it to come up.
    pub fn start_with_nofile(nofile: u32, args: &[&str]) -> Server {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(herd_bin());
        let mut server = Server::launch_with(cmd, args, &[]);
        server.port = wait_for("the listening line", DEADLINE, || {
            server
                .find_log("listening on http://")
                .and_then(|l| l.rsplit(':').next()?.trim().parse().ok())
        });
        server.remember_workers();
        server
    }

    fn launch_with(mut cmd: Command, args: &[&str], env: &[(&str, &str)]) -> Server {
        cmd.args(["serve", "--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start herd");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let log_done = collect_lines(stderr, log.clone());
        Server {
            child,
            port: 0,
            log,
            log_done,
            seen_pids: Vec::new(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn find_log(&self, needle: &str) -> Option<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> String {
        wait_for(&format!("log line '{needle}'"), limit, || {
            self.find_log(needle)
        })
    }

    /// The live worker processes (children of the primary).
    pub fn workers(&mut self) -> Vec<i32> {
        let w = children(self.pid());
        self.seen_pids.extend(w.iter().copied());
        self.seen_pids.sort();
        self.seen_pids.dedup();
        w
    }

    /// Records the current workers so that Drop can clean them up.
    pub fn remember_workers(&mut self) -> Vec<i32> {
        self.workers()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig)
            .expect("signal primary");
    }

    /// Waits for the primary to exit and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let status = wait_for("the primary to exit", limit, || {
            self.child.try_wait().ok().flatten()
        });
        // Its last lines may still be in the pipe: read to the end (workers that outlive a
        // killed primary hold the pipe open, so this wait is bounded, not asserted).
        let start = std::time::Instant::now();
        while !self.log_done.load(std::sync::atomic::Ordering::SeqCst)
            && start.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(5)); // poll until EOF, bounded by a deadline
        }
        status
    }

    /// Parses the last statistics table in the log into rows of
    /// (worker, pid, handed, connections, open, requests, restarts).
    pub fn last_stats(&self) -> Vec<[u64; 7]> {
        let log = self.log.lock().unwrap();
        let Some(start) = log.iter().rposition(|l| l.contains("worker statistics")) else {
            return Vec::new();
        };
        log[start + 2..]
            .iter()
            .map_while(|l| {
                let f: Vec<u64> = l
                    .split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect();
                (f.len() == 7).then(|| [f[0], f[1], f[2], f[3], f[4], f[5], f[6]])
            })
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let mut pids = self.seen_pids.clone();
        pids.extend(children(self.pid()));
        let _ = self.child.kill();
        let _ = self.child.wait();
        for p in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Pids whose parent is `ppid` (from /proc), excluding zombies.
pub fn children(ppid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some((state, parent)) = stat(pid) {
            if parent == ppid && state != 'Z' {
                out.push(pid);
            }
        }
    }
    out.sort();
    out
}

/// (state, ppid) of a process, from /proc/<pid>/stat.
pub fn stat(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|(s, _)| s != 'Z')
}

/// CPU time (user + system, in clock ticks) a process has used.
pub fn cpu_ticks(pid: i32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(close) = s.rfind(')') else { return 0 };
    let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    t(11) + t(12)
}

/// Number of open file descriptors of `pid`.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// True when a fresh listener can bind the port (nothing holds it any more).
pub fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The worker pid in a `Hello World! <pid>` body.
    pub fn pid(&self) -> u32 {
        self.text()
            .rsplit(' ')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Reads one response from a buffered stream (`head` true: a response to HEAD, no body).
pub fn read_response<R: BufRead>(r: &mut R, head: bool) -> std::io::Result<Response> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; if head || status == 100 { 0 } else { len }];
    r.read_exact(&mut body)?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Connects with a timeout on reads and writes.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// One request on a new connection with `Connection: close`.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    read_response(&mut BufReader::new(s), false)
}

/// Sends raw bytes on a new connection and reads everything until the server closes.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = connect(addr);
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// What a burst of client load saw.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub ok: usize,
    pub failed: usize,
    pub by_pid: std::collections::HashMap<u32, usize>,
    pub errors: Vec<String>,
}

/// `clients` threads each send `each` `GET /` requests, on one keep-alive connection per
/// client (`keepalive`) or on a new connection per request.
pub fn load(addr: SocketAddr, clients: usize, each: usize, keepalive: bool) -> LoadResult {
    let handles: Vec<_> = (0..clients)
        .map(|_| std::thread::spawn(move || client_run(addr, each, keepalive, None)))
        .collect();
    merge(handles)
}

/// Like [`load`], but runs until `stop` is set (at most `each` requests per client).
pub fn load_until(
    addr: SocketAddr,
    clients: usize,
    each: usize,
    keepalive: bool,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<LoadResult>> {
    (0..clients)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || client_run(addr, each, keepalive, Some(stop)))
        })
        .collect()
}

/// Joins client threads and adds up what they saw.
pub fn merge(handles: Vec<std::thread::JoinHandle<LoadResult>>) -> LoadResult {
    let mut total = LoadResult::default();
    for h in handles {
        let r = h.join().expect("client thread");
        total.ok += r.ok;
        total.failed += r.failed;
        total.errors.extend(r.errors);
        for (p, n) in r.by_pid {
            *total.by_pid.entry(p).or_default() += n;
        }
    }
    total
}

/// One client's loop. On a reused keep-alive connection that the server closed before sending
/// any byte of the response, the request is retried once on a new connection, as HTTP clients
/// do for idempotent requests (RFC 9112, 9.3.1); any other failure counts.
fn client_run(
    addr: SocketAddr,
    each: usize,
    keepalive: bool,
    stop: Option<Arc<std::sync::atomic::AtomicBool>>,
) -> LoadResult {
    let mut res = LoadResult::default();
    let mut conn: Option<BufReader<TcpStream>> = None;
    for _ in 0..each {
        if stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
        {
            break;
        }
        let mut outcome = one_request(addr, keepalive, &mut conn);
        if let Err(RequestError::ClosedBeforeResponse(_)) = &outcome {
            outcome = one_request(addr, keepalive, &mut conn);
        }
        match outcome {
            Ok(r) if r.status == 200 => {
                res.ok += 1;
                *res.by_pid.entry(r.pid()).or_default() += 1;
            }
            Ok(r) => {
                res.failed += 1;
                res.errors.push(format!("status {}", r.status));
            }
            Err(e) => {
                res.failed += 1;
                res.errors.push(format!("{e:?}"));
                conn = None;
            }
        }
    }
    res
}

#[derive(Debug)]
enum RequestError {
    /// A reused connection was closed before any response byte: safe to retry.
    ClosedBeforeResponse(String),
    Failed(String),
}

fn one_request(
    addr: SocketAddr,
    keepalive: bool,
    conn: &mut Option<BufReader<TcpStream>>,
) -> Result<Response, RequestError> {
    let reused = conn.is_some();
    if conn.is_none() {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| RequestError::Failed(format!("connect: {e}")))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        *conn = Some(BufReader::new(s));
    }
    let Some(r) = conn.as_mut() else {
        return Err(RequestError::Failed("no connection".into()));
    };
    let req: &[u8] = if keepalive {
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
    } else {
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    };
    let sent = r.get_mut().write_all(req);
    let got = sent.and_then(|_| read_response(r, false));
    let retryable = |e: &std::io::Error| {
        reused
            && matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            )
    };
    match got {
        Ok(resp) => {
            if !keepalive || resp.header("connection") == Some("close") {
                *conn = None;
            }
            Ok(resp)
        }
        Err(e) => {
            *conn = None;
            if retryable(&e) {
                Err(RequestError::ClosedBeforeResponse(e.to_string()))
            } else {
                Err(RequestError::Failed(e.to_string()))
            }
        }
    }
}

// ---- example programs (tests/api_*.rs) ----

/// The newest modification time of the sources cargo built `bin` from (its `.d` dep-info file).
fn newest_source(bin: &std::path::Path) -> Option<std::time::SystemTime> {
    let deps = std::fs::read_to_string(bin.with_extension("d")).ok()?;
    let (_, sources) = deps.lines().next()?.split_once(": ")?;
    sources
        .replace("\\ ", "\0")
        .split_whitespace()
        .filter_map(|p| {
            std::fs::metadata(p.replace('\0', " "))
                .ok()?
                .modified()
                .ok()
        })
        .max()
}

/// The binary of example `name`. `cargo test` builds every example (into
/// `target/<profile>/examples/`, next to this test's `deps/` directory); a run of one test file
/// (`cargo test --test api_x`) does not, so this fails with what to run when the binary is
/// missing or older than the sources it was built from.
pub fn example_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from target/<profile>/deps");
    let bin = profile_dir.join("examples").join(name);
    let hint = "run `cargo test` (it builds the examples) or `cargo build --examples` first";
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("example {name} is not built ({}): {hint}", bin.display()));
    assert!(
        newest_source(&bin).is_none_or(|t| t <= built),
        "example {name} is older than its sources: {hint}"
    );
    bin
}

/// Collects the lines of `r` into `sink` on a thread of its own.
/// Returns a flag set once `r` reaches end of file.
pub fn collect_lines(
    r: impl Read + Send + 'static,
    sink: Arc<Mutex<Vec<String>>>,
) -> Arc<std::sync::atomic::AtomicBool> {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if std::env::var_os("HERD_TEST_ECHO").is_some() {
                eprintln!("{line}");
            }
            sink.lock().unwrap().push(line);
        }
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    done
}

impl Server {
    /// Starts example `name` with `args` (stdout and stderr both go to the log) and waits for
    /// its primary's "listening on" line. The example must take the port as an argument: pass
    /// "0".
    pub fn start_example(name: &str, args: &[&str]) -> Server {
        let mut child = Command::new(example_bin(name))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the example");
        let log = Arc::new(Mutex::new(Vec::new()));
        let out_done = collect_lines(child.stdout.take().expect("stdout"), log.clone());
        let err_done = collect_lines(child.stderr.take().expect("stderr"), log.clone());
        // Both streams must end; wait_exit watches one flag, so chain them.
        let log_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let both = log_done.clone();
        std::thread::spawn(move || {
            use std::sync::atomic::Ordering::SeqCst;
            let start = std::time::Instant::now();
            while !(out_done.load(SeqCst) && err_done.load(SeqCst))
                && start.elapsed() < Duration::from_secs(600)
            {
                std::thread::sleep(Duration::from_millis(5)); // poll both EOF flags, bounded
            }
            both.store(true, SeqCst);
        });
        let mut server = Server {
            child,
            port: 0,
            log,
            log_done,
            seen_pids: Vec::new(),
        };
        server.port = wait_for(&format!("{name}'s listening line"), DEADLINE, || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("{name} exited early ({status}):\n{}", server.log_text());
            }
            let line = server.find_log("listening on ")?;
            line.rsplit(':').next()?.trim().parse::<u16>().ok()
        });
        server.remember_workers();
        server
    }

    /// The log lines that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}

/// What a finished example printed.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

/// Runs example `name` to completion within `limit` (killing it and its workers otherwise).
pub fn run_example(name: &str, args: &[&str], limit: Duration) -> Finished {
    let mut child = Command::new(example_bin(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the example");
    let (out, err) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    collect_lines(child.stdout.take().expect("stdout"), out.clone());
    collect_lines(child.stderr.take().expect("stderr"), err.clone());
    let pid = child.id() as i32;
    let mut workers = Vec::new();
    let start = Instant::now();
    let status = loop {
        workers.extend(children(pid));
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            for w in workers {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(w),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            panic!(
                "{name} did not finish within {limit:?}:\n{}\n{}",
                out.lock().unwrap().join("\n"),
                err.lock().unwrap().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20)); // poll interval of a deadline-bounded wait
    };
    // The pipes close when the last writer (a worker, maybe) exits: wait for the readers.
    wait_for("the example's workers to exit", DEADLINE, || {
        workers.iter().all(|&w| !alive(w)).then_some(())
    });
    let stdout = wait_for("the example's output", DEADLINE, || {
        (Arc::strong_count(&out) == 1).then(|| out.lock().unwrap().clone())
    });
    let stderr = wait_for("the example's errors", DEADLINE, || {
        (Arc::strong_count(&err) == 1).then(|| err.lock().unwrap().clone())
    });
    Finished {
        status,
        stdout,
        stderr,
    }
}

/// Parses every complete response in `bytes` (none of them answers a HEAD).
pub fn parse_responses(bytes: &[u8]) -> Vec<Response> {
    let mut r = std::io::Cursor::new(bytes);
    let mut out = Vec::new();
    while let Ok(resp) = read_response(&mut r, false) {
        out.push(resp);
    }
    out
}

/// How a connection ended when read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer closed (FIN).
    Eof,
    /// The peer reset the connection.
    Reset,
    /// Still open when the time ran out.
    Open,
}

/// Reads until the peer closes or resets, or `limit` passes; returns what was read.
pub fn read_to_close(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, End) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let Some(left) = limit.checked_sub(start.elapsed()).filter(|d| !d.is_zero()) else {
            return (out, End::Open);
        };
        let _ = s.set_read_timeout(Some(left.min(Duration::from_millis(200))));
        match s.read(&mut buf) {
            Ok(0) => return (out, End::Eof),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (out, End::Reset),
        }
    }
}

/// Sends raw bytes on a new connection, reads until the server closes (at most `limit`).
pub fn exchange(addr: SocketAddr, bytes: &[u8], limit: Duration) -> (Vec<u8>, End) {
    let mut s = connect(addr);
    let _ = s.write_all(bytes);
    read_to_close(&mut s, limit)
}

/// The pid of the worker that answers `GET /` (panics unless it answers 200).
pub fn serving_pid(addr: SocketAddr) -> u32 {
    let r = get(addr, "/").expect("GET / answered");
    assert_eq!(r.status, 200, "GET / status");
    r.pid()
}
