//! A herd cluster under test: started as a child process (`herd serve` on an ephemeral port),
//! watched through `/proc`, stopped with `SIGTERM` and reaped.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::procfs;
pub use crate::procfs::children;

use crate::Policy;

/// Log lines kept from the server (the last ones explain a failure).
const LOG_KEEP: usize = 200;
/// The line a herd primary prints once every worker is online.
const LISTENING: &str = "listening on http://";

/// Why a cluster under test did not come up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `herd serve` could not be started at all.
    #[error("cannot start {}: {source}", exe.display())]
    Spawn {
        /// The program started.
        exe: PathBuf,
        /// Why it could not be.
        source: io::Error,
    },
    /// No `listening on` line came within the start timeout (the cluster was killed).
    #[error(
        "the {policy} cluster did not come up within {deadline:?} (no '{LISTENING}' line){}",
        log_tail(.last_line)
    )]
    Timeout {
        /// The cluster's policy.
        policy: Policy,
        /// How long it was given.
        deadline: Duration,
        /// The server's last error line (or last line), if it printed any.
        last_line: Option<String>,
    },
    /// `herd serve` exited before it was listening.
    #[error(
        "the {policy} cluster did not come up: herd serve exited ({status}){}",
        log_tail(.last_line)
    )]
    Exited {
        /// The cluster's policy.
        policy: Policy,
        /// Its exit status, or why that could not be read.
        status: String,
        /// The server's last error line (or last line), if it printed any.
        last_line: Option<String>,
    },
}

/// Why a cluster under test did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// `SIGTERM` could not be sent.
    #[error("cannot stop herd ({pid}): {source}")]
    Signal {
        /// The primary's pid.
        pid: u32,
        /// Why `kill()` failed.
        source: nix::Error,
    },
    /// The primary exited with a failure status.
    #[error("herd serve exited badly ({status}){}", log_tail(.last_line))]
    ExitedBadly {
        /// Its exit status.
        status: ExitStatus,
        /// The server's last error line (or last line), if it printed any.
        last_line: Option<String>,
    },
    /// The primary was still running after the stop limit (it was killed).
    #[error("herd serve did not stop within {limit:?}; killed it")]
    Timeout {
        /// How long it was given.
        limit: Duration,
    },
    /// Waiting for the primary failed.
    #[error("cannot wait for herd serve: {0}")]
    Wait(#[source] io::Error),
}

/// `: <line>` after an error message, or nothing.
fn log_tail(last_line: &Option<String>) -> String {
    last_line
        .as_ref()
        .map(|l| format!(": {l}"))
        .unwrap_or_default()
}

/// A running herd primary and its workers.
pub struct Server {
    child: Child,
    /// Address it listens on (the real port).
    pub addr: SocketAddr,
    /// Pids of its workers when it came up, in pid order.
    pub workers: Vec<u32>,
    log: Arc<Mutex<VecDeque<String>>>,
}

/// Starts `exe serve --host 127.0.0.1 --port 0 --policy P --workers N EXTRA...` and waits up
/// to `deadline` for its `listening on` line.
pub fn start(
    exe: &Path,
    policy: Policy,
    workers: u16,
    extra: &[String],
    deadline: Duration,
) -> Result<Server, StartError> {
    let mut child = Command::new(exe)
        .args(["serve", "--host", "127.0.0.1", "--port", "0", "--policy"])
        .arg(policy.name())
        .args([
            "--workers",
            &workers.to_string(),
            "--shutdown-timeout",
            "5s",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .env_remove("HERD_WORKER_ID")
        .env_remove("HERD_CHANNEL_FD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| StartError::Spawn {
            exe: exe.to_path_buf(),
            source,
        })?;
    let log = Arc::new(Mutex::new(VecDeque::new()));
    let (tx, rx) = mpsc::channel();
    if let Some(stderr) = child.stderr.take() {
        let sink = log.clone();
        std::thread::spawn(move || collect_log(stderr, &sink, &tx));
    }
    let mut server = Server {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        workers: Vec::new(),
        log,
    };
    server.addr = server.wait_listening(&rx, policy, deadline)?;
    server.workers = children(server.pid());
    Ok(server)
}

/// Reads the server's stderr: every line goes to `tx` (while someone listens) and the last
/// [`LOG_KEEP`] into `sink`.
fn collect_log(
    stderr: impl std::io::Read,
    sink: &Mutex<VecDeque<String>>,
    tx: &mpsc::Sender<String>,
) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let _ = tx.send(line.clone());
        if let Ok(mut log) = sink.lock() {
            if log.len() == LOG_KEEP {
                log.pop_front();
            }
            log.push_back(line);
        }
    }
}

impl Server {
    /// The primary's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_listening(
        &mut self,
        rx: &mpsc::Receiver<String>,
        policy: Policy,
        deadline: Duration,
    ) -> Result<SocketAddr, StartError> {
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = parse_listening(&line) {
                        return Ok(addr);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    return Err(StartError::Timeout {
                        policy,
                        deadline,
                        last_line: self.last_line(),
                    });
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map(|s| s.to_string());
                    let status = status.unwrap_or_else(|e| e.to_string());
                    return Err(StartError::Exited {
                        policy,
                        status,
                        last_line: self.last_line(),
                    });
                }
            }
        }
    }

    /// The server's last error line (or its last line), if it printed any.
    fn last_line(&self) -> Option<String> {
        let log = self.log.lock().ok()?;
        log.iter()
            .rev()
            .find(|l| l.contains("error") || l.contains("ERROR"))
            .or(log.back())
            .map(|l| l.trim().to_string())
    }

    /// Samples the CPU time and context switches of the primary and of its workers.
    pub fn sample(&self) -> Sample {
        let workers = children(self.pid());
        Sample {
            primary: ProcUsage::read(self.pid()).unwrap_or_default(),
            workers: workers
                .iter()
                .filter_map(|&p| ProcUsage::read(p))
                .fold(ProcUsage::default(), |a, b| a.plus(b)),
        }
    }

    /// Stops the cluster gracefully (`SIGTERM`), waiting up to `limit` before killing it.
    pub fn stop(mut self, limit: Duration) -> Result<(), StopError> {
        let pid = self.pid();
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM)
            .map_err(|source| StopError::Signal { pid, source })?;
        let until = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(StopError::ExitedBadly {
                        status,
                        last_line: self.last_line(),
                    })
                }
                Ok(None) if Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(20)); // bounded by `until`
                }
                Ok(None) => {
                    self.kill();
                    return Err(StopError::Timeout { limit });
                }
                Err(e) => return Err(StopError::Wait(e)),
            }
        }
    }

    /// Kills the workers (while they are still the primary's children), then the primary,
    /// and reaps it.
    fn kill(&mut self) {
        for p in children(self.pid()) {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// The address in a `listening on http://ADDR:PORT` line.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    let at = line.find(LISTENING)? + LISTENING.len();
    line[at..].split_whitespace().next()?.parse().ok()
}

/// CPU time and context switches of one process (or a sum of several).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcUsage {
    /// User plus system CPU time.
    pub cpu: Duration,
    /// Voluntary plus involuntary context switches.
    pub switches: u64,
}

impl ProcUsage {
    /// Reads `/proc/<pid>/stat` (utime + stime) and `/proc/<pid>/status` (context switches).
    pub fn read(pid: u32) -> Option<ProcUsage> {
        let stat = procfs::Stat::read(pid)?;
        Some(ProcUsage {
            cpu: stat.cpu(),
            switches: procfs::context_switches(pid).unwrap_or(0),
        })
    }

    /// This process.
    pub fn this_process() -> ProcUsage {
        ProcUsage::read(std::process::id()).unwrap_or_default()
    }

    /// Both added.
    pub fn plus(self, o: ProcUsage) -> ProcUsage {
        ProcUsage {
            cpu: self.cpu + o.cpu,
            switches: self.switches + o.switches,
        }
    }

    /// What was used between `earlier` and `self`.
    pub fn since(self, earlier: ProcUsage) -> ProcUsage {
        ProcUsage {
            cpu: self.cpu.saturating_sub(earlier.cpu),
            switches: self.switches.saturating_sub(earlier.switches),
        }
    }
}

/// Usage of a cluster's processes at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// The primary.
    pub primary: ProcUsage,
    /// All workers together.
    pub workers: ProcUsage,
}

impl Sample {
    /// What was used between `earlier` and `self`.
    pub fn since(self, earlier: Sample) -> Sample {
        Sample {
            primary: self.primary.since(earlier.primary),
            workers: self.workers.since(earlier.workers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line_gives_the_address() {
        let line = "[2025-01-01T00:00:00Z INFO  herd::primary] listening on http://127.0.0.1:40123";
        assert_eq!(parse_listening(line), "127.0.0.1:40123".parse().ok());
        assert_eq!(parse_listening("primary 12 is running"), None);
    }

    #[test]
    fn own_usage_is_readable() {
        let me = ProcUsage::read(std::process::id()).expect("/proc/self/stat");
        assert!(me.switches > 0);
        assert_eq!(me.since(me), ProcUsage::default());
    }

    #[test]
    fn errors_are_one_line_and_end_with_the_servers_last_words() {
        let e = StartError::Exited {
            policy: Policy::RoundRobin,
            status: "exit status: 1".into(),
            last_line: Some("ERROR herd: bad window".into()),
        };
        assert_eq!(
            e.to_string(),
            "the round-robin cluster did not come up: herd serve exited (exit status: 1): \
             ERROR herd: bad window"
        );
        let e = StartError::Timeout {
            policy: Policy::Shared,
            deadline: Duration::from_secs(15),
            last_line: None,
        };
        assert_eq!(
            e.to_string(),
            "the shared cluster did not come up within 15s (no 'listening on http://' line)"
        );
        let e = StopError::Timeout {
            limit: Duration::from_secs(10),
        };
        assert_eq!(
            e.to_string(),
            "herd serve did not stop within 10s; killed it"
        );
    }
}
