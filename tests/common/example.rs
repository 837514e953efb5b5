//! The library's example programs (tests/api_*.rs): where cargo built them, and running one to
//! completion.

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use super::{alive, poll, wait_for, Launch, Log, Stdout, DEADLINE};

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
    let out = Arc::new(Log::default());
    let mut run = Launch::example(name, args)
        .stdout(Stdout::Apart(out.clone()))
        .spawn();
    let status = poll(limit, || {
        run.remember_workers();
        run.child.try_wait().ok().flatten()
    })
    .unwrap_or_else(|| {
        // Dropping `run` as this unwinds kills the example and its workers.
        panic!(
            "{name} did not finish within {limit:?}:\n{}\n{}",
            out.text(),
            run.log_text()
        )
    });
    // The pipes close when the last writer (a worker, maybe) exits: wait for the readers.
    wait_for("the example's workers to exit", DEADLINE, || {
        run.seen_workers().iter().all(|&w| !alive(w)).then_some(())
    });
    wait_for("the example's output", DEADLINE, || {
        (out.closed() && run.log.closed()).then_some(())
    });
    Finished {
        status,
        stdout: out.lines(),
        stderr: run.log.lines(),
    }
}
