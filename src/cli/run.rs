//! `herd run [serve's options] -- COMMAND [ARGS...]`: herd's primary for an unmodified
//! Node.js cluster app. Every worker is COMMAND, speaking Node's cluster protocol.

use std::ffi::OsString;
use std::path::Path;

use herd::{Cluster, Event};

/// Quick deaths before any worker listened after which `herd run` gives up: the command is
/// broken (it exits at once), and retrying forever would hide it.
const GIVE_UP_AFTER: u32 = 5;

/// Runs `command` as the workers of `cluster` until a graceful shutdown. Errors are one line.
pub fn run(cluster: Cluster, command: &[OsString]) -> Result<(), String> {
    let Some((program, args)) = command.split_first() else {
        return Err("herd run needs a command: herd run -- node app.js".into());
    };
    check_program(program)?;
    let name = program.to_string_lossy().into_owned();
    let mut events = cluster
        .node_workers(program.clone(), args.iter().cloned())
        .events()
        .map_err(|e| e.to_string())?;
    let (mut listened, mut early_deaths) = (false, 0u32);
    let mut failed = None;
    while let Some(event) = events.next() {
        match event.map_err(|e| e.to_string())? {
            Event::Listening { .. } => listened = true,
            Event::Exit {
                code,
                signal,
                exited_after_disconnect: false,
                ..
            } if !listened && failed.is_none() => {
                early_deaths += 1;
                if early_deaths >= GIVE_UP_AFTER {
                    let how = match (code, signal) {
                        (Some(c), _) => format!("exit code {c}"),
                        (_, Some(s)) => format!("signal {s}"),
                        _ => "no status".into(),
                    };
                    failed = Some(format!(
                        "'{name}' exited {early_deaths} times before listening (last: {how}); giving up"
                    ));
                    events.control().shutdown();
                }
            }
            _ => {}
        }
    }
    failed.map_or(Ok(()), Err)
}

/// A program that cannot be run at all is one clear error before anything starts.
fn check_program(program: &OsString) -> Result<(), String> {
    let p = Path::new(program);
    let found = if p.components().count() > 1 {
        p.is_file()
    } else {
        std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()))
            .unwrap_or(false)
    };
    if found {
        Ok(())
    } else {
        Err(format!(
            "cannot run '{}': no such program",
            program.to_string_lossy()
        ))
    }
}
