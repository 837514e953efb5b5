//! Starting a real `herd` (or an example built on the library) and reading its log. Every
//! process starts through [`Launch`], and every wait for a primary to come up is
//! [`Server::wait_listening`].

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herd::bench::cluster::parse_listening;
use nix::sys::signal::Signal;

use super::{children, example_bin, poll, send_signal, wait_for, DEADLINE};

/// The herd binary under test.
pub fn herd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_herd")
}

/// True when a fresh listener can bind the port (nothing holds it any more).
pub fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The lines a process wrote to the pipes read into this log, and how many of those pipes are
/// still open (a pipe stays open while any writer, the primary or a worker, holds it).
#[derive(Default)]
pub struct Log {
    lines: Mutex<Vec<String>>,
    open: AtomicUsize,
}

impl Log {
    /// Reads the lines of `r` into the log on a thread of its own, until end of file.
    /// With `HERD_TEST_ECHO` set, each line is echoed to the test's stderr too.
    pub fn collect(self: &Arc<Self>, r: impl Read + Send + 'static) {
        self.open.fetch_add(1, Ordering::SeqCst);
        let log = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("HERD_TEST_ECHO").is_some() {
                    eprintln!("{line}");
                }
                log.lines.lock().unwrap().push(line);
            }
            log.open.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// True once every pipe read into the log reached end of file.
    pub fn closed(&self) -> bool {
        self.open.load(Ordering::SeqCst) == 0
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Every line so far, one per line.
    pub fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The lines that contain `needle`.
    pub fn matching(&self, needle: &str) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}

/// Where a launched process's stdout goes (its stderr always goes to the server's log).
pub enum Stdout {
    /// Nowhere (`herd serve` logs to stderr only).
    Null,
    /// Into the server's log, with stderr.
    Log,
    /// Into a log of its own: what a program printed, apart from what it logged.
    Apart(Arc<Log>),
}

/// What to start and how: a program with its arguments and environment, an optional open-file
/// limit, and where its stdout goes. [`Launch::spawn`] is the one place a process starts.
pub struct Launch {
    /// How the process is called in failure messages ("herd", or the example's name).
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    nofile: Option<u32>,
    stdout: Stdout,
}

impl Launch {
    /// `herd serve` on 127.0.0.1 with an ephemeral port and `args`, logging at info level.
    pub fn herd(args: &[&str]) -> Launch {
        let serve = ["serve", "--host", "127.0.0.1", "--port", "0"];
        Launch::new("herd", herd_bin().into(), &serve)
            .args(args)
            .env("RUST_LOG", &log_level())
    }

    /// `herd serve` on `host:port` with `args`, logging at info level (several hosts on one
    /// port, each on its own loopback address).
    pub fn herd_at(host: &str, port: u16, args: &[&str]) -> Launch {
        let port = port.to_string();
        let serve = ["serve", "--host", host, "--port", port.as_str()];
        Launch::new("herd", herd_bin().into(), &serve)
            .args(args)
            .env("RUST_LOG", &log_level())
    }

    /// `herd run` on 127.0.0.1 with an ephemeral port, `args`, then `-- command`: Node
    /// workers, whose stdout and stderr go to the log too.
    pub fn herd_run(args: &[&str], command: &[&str]) -> Launch {
        let run = ["run", "--host", "127.0.0.1", "--port", "0"];
        let mut launch = Launch::new("herd run", herd_bin().into(), &run)
            .args(args)
            .args(&["--"])
            .args(command)
            .env("RUST_LOG", "info");
        launch.stdout = Stdout::Log;
        launch
    }

    /// Example `name` with `args`, its stdout and stderr both in the log. One that serves must
    /// take the port as an argument: pass "0".
    pub fn example(name: &str, args: &[&str]) -> Launch {
        let mut launch = Launch::new(name, example_bin(name), args);
        launch.stdout = Stdout::Log;
        launch
    }

    fn new(name: &str, program: PathBuf, args: &[&str]) -> Launch {
        Launch {
            name: name.to_string(),
            program,
            args: Vec::new(),
            env: Vec::new(),
            nofile: None,
            stdout: Stdout::Null,
        }
        .args(args)
    }

    /// Runs this program instead (for example a copy of herd elsewhere).
    pub fn program(mut self, program: PathBuf) -> Launch {
        self.program = program;
        self
    }

    /// More arguments.
    pub fn args(mut self, args: &[&str]) -> Launch {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// These arguments instead of the ones so far (for a wrapper such as
    /// `systemd-socket-activate`, or a `herd serve` on a port of the test's choosing).
    pub fn replace_args(mut self, args: &[&str]) -> Launch {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// An environment variable (a later one with the same key wins).
    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Runs under an open-file limit of `nofile`, set by the shell's `ulimit`, which then execs
    /// the program (so the pid is the program's).
    pub fn nofile(mut self, nofile: u32) -> Launch {
        self.nofile = Some(nofile);
        self
    }

    /// Where stdout goes (see [`Stdout`]).
    pub fn stdout(mut self, to: Stdout) -> Launch {
        self.stdout = to;
        self
    }

    /// Starts the process and returns at once.
    pub fn spawn(self) -> Server {
        let mut cmd = match self.nofile {
            None => Command::new(&self.program),
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(&self.program);
                sh
            }
        };
        let stdout = match self.stdout {
            Stdout::Null => Stdio::null(),
            Stdout::Log | Stdout::Apart(_) => Stdio::piped(),
        };
        let mut child = cmd
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.name));
        let log = Arc::new(Log::default());
        log.collect(child.stderr.take().expect("stderr"));
        match self.stdout {
            Stdout::Null => {}
            Stdout::Log => log.collect(child.stdout.take().expect("stdout")),
            Stdout::Apart(out) => out.collect(child.stdout.take().expect("stdout")),
        }
        Server {
            child,
            port: 0,
            log,
            name: self.name,
            seen_pids: Vec::new(),
        }
    }

    /// Starts the process and waits for its primary to listen ([`Server::wait_listening`]).
    pub fn start(self) -> Server {
        let mut server = self.spawn();
        server.wait_listening();
        server
    }
}

/// A running herd primary (or example) with its output captured. Dropping it kills the primary
/// and every worker it was seen with.
pub struct Server {
    pub child: Child,
    /// The port it listens on (0 until [`Server::wait_listening`]).
    pub port: u16,
    pub log: Arc<Log>,
    name: String,
    seen_pids: Vec<u32>,
}

impl Server {
    /// Starts `herd serve` on 127.0.0.1 with an ephemeral port and waits for it to listen.
    pub fn start(args: &[&str]) -> Server {
        Launch::herd(args).start()
    }

    /// Starts example `name` (see [`Launch::example`]), logging at info level, and waits for its
    /// primary to listen.
    pub fn start_example(name: &str, args: &[&str]) -> Server {
        Launch::example(name, args).env("RUST_LOG", "info").start()
    }

    /// Waits for the primary's `listening on` line and takes its port; fails at once, with the
    /// log, when the process exits first. Then records the workers for Drop to clean up.
    pub fn wait_listening(&mut self) {
        let what = format!("{}'s listening line", self.name);
        self.port = wait_for(&what, DEADLINE, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited early ({status}):\n{}",
                    self.name,
                    self.log.text()
                );
            }
            let lines = self.log.lines();
            lines
                .iter()
                .find_map(|l| parse_listening(l))
                .map(|a| a.port())
        });
        self.remember_workers();
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        self.log.text()
    }

    /// The log lines that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log.matching(needle)
    }

    /// The first log line that contains `needle`.
    pub fn find_log(&self, needle: &str) -> Option<String> {
        self.log_lines(needle).into_iter().next()
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.log_lines(needle).len()
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> String {
        wait_for(&format!("log line '{needle}'"), limit, || {
            self.find_log(needle)
        })
    }

    /// The live worker processes (children of the primary).
    pub fn workers(&mut self) -> Vec<u32> {
        let w = children(self.pid());
        self.seen_pids.extend(w.iter().copied());
        self.seen_pids.sort();
        self.seen_pids.dedup();
        w
    }

    /// Records the current workers so that Drop can clean them up.
    pub fn remember_workers(&mut self) -> Vec<u32> {
        self.workers()
    }

    /// Every worker seen so far, live or not.
    pub fn seen_workers(&self) -> &[u32] {
        &self.seen_pids
    }

    pub fn signal(&self, sig: Signal) {
        send_signal(self.pid(), sig).expect("signal primary");
    }

    /// Waits for the primary to exit and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let status = wait_for("the primary to exit", limit, || {
            self.child.try_wait().ok().flatten()
        });
        // Its last lines may still be in the pipe: read to the end (workers that outlive a
        // killed primary hold the pipe open, so this wait is bounded, not asserted).
        poll(Duration::from_secs(2), || self.log.closed().then_some(()));
        status
    }

    /// Parses the last statistics table in the log into rows of
    /// (worker, pid, handed, connections, open, requests, restarts).
    pub fn last_stats(&self) -> Vec<[u64; 7]> {
        let log = self.log.lines();
        let Some(start) = log.iter().rposition(|l| l.contains("worker statistics")) else {
            return Vec::new();
        };
        // The table may still be arriving: a header without its rows yet is no table.
        log.get(start + 2..)
            .unwrap_or_default()
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
            let _ = send_signal(p, Signal::SIGKILL);
        }
        // Killed, the primary could not remove its control socket: remove what it announced,
        // or every test would leave one behind in the shared default directory.
        for line in self.log.matching("control socket at ") {
            if let Some((_, path)) = line.split_once("control socket at ") {
                let _ = std::fs::remove_file(path.trim());
            }
        }
    }
}

/// The servers' log level: `info`, or `HERD_TEST_RUST_LOG` (e.g. `debug`) to see more of a
/// failing test's server in its log.
fn log_level() -> String {
    std::env::var("HERD_TEST_RUST_LOG").unwrap_or_else(|_| "info".to_string())
}
