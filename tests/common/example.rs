//! The library's example programs (tests/api_*.rs): where cargo built them, and running one to
//! completion.

use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{alive, children, collect_lines, send_signal, wait_for, DEADLINE};

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
    let pid = child.id();
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
                let _ = send_signal(w, Signal::SIGKILL);
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
