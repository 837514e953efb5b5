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
        let mut cmd = Command::new(herd_bin());
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
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("HERD_TEST_ECHO").is_some() {
                    eprintln!("{line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut server = Server {
            child,
            port: 0,
            log,
            seen_pids: Vec::new(),
        };
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
        wait_for("the primary to exit", limit, || {
            self.child.try_wait().ok().flatten()
        })
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
