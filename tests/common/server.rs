//! Starting a real `herd` (or an example built on the library) and reading its log.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::{children, example_bin, send_signal, wait_for, DEADLINE};

/// A running herd primary with its stderr captured.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Set once the captured output reached end of file (every writer closed it).
    pub log_done: Arc<std::sync::atomic::AtomicBool>,
    seen_pids: Vec<u32>,
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

    pub fn pid(&self) -> u32 {
        self.child.id()
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
            let _ = send_signal(p, Signal::SIGKILL);
        }
    }
}

/// True when a fresh listener can bind the port (nothing holds it any more).
pub fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
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
