//! The command line of `herd status / reload / scale / stop` (with the `cli` feature): which
//! server to talk to, and one function that runs a command and returns what to print.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::client::{self, ClientError};
use super::{Request, Scale};

/// Which server: `--control PATH`, or the default socket of `--port P`.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The server's control socket
    #[arg(long, value_name = "PATH", conflicts_with = "port")]
    pub control: Option<PathBuf>,
    /// The port the server listens on (finds its default control socket)
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,
}

impl Target {
    /// The socket path this names.
    pub fn path(&self) -> PathBuf {
        self.control
            .clone()
            .unwrap_or_else(|| super::socket_path(self.port))
    }
}

/// The operating commands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Show a running server's workers: pid, state, uptime, restarts, connections, requests, CPU, memory
    Status {
        /// Which server.
        #[command(flatten)]
        target: Target,
        /// One JSON object instead of the table
        #[arg(long)]
        json: bool,
    },
    /// Replace every worker, one at a time, with no failed request; waits for the end
    Reload {
        /// Which server.
        #[command(flatten)]
        target: Target,
    },
    /// Change the number of workers: N, +K or -K (never below 1)
    Scale {
        /// N, +K or -K
        #[arg(allow_hyphen_values = true, value_parser = clap::value_parser!(Scale))]
        count: Scale,
        /// Which server.
        #[command(flatten)]
        target: Target,
    },
    /// Stop a running server gracefully; waits for it to exit
    Stop {
        /// Which server.
        #[command(flatten)]
        target: Target,
    },
    /// Replace the primary itself with a fresh start of its binary, dropping no connection
    /// (as SIGUSR1); waits until the new primary took over or the upgrade failed
    Upgrade {
        /// Which server.
        #[command(flatten)]
        target: Target,
    },
}

impl clap::builder::ValueParserFactory for Scale {
    type Parser = clap::builder::ValueParser;

    fn value_parser() -> Self::Parser {
        clap::builder::ValueParser::new(|s: &str| s.parse::<Scale>())
    }
}

/// Runs `cmd` against its server; returns what to print.
pub fn run(cmd: AdminCommand) -> Result<String, ClientError> {
    let (target, request, json) = match cmd {
        AdminCommand::Status { target, json } => (target, Request::Status, json),
        AdminCommand::Reload { target } => (target, Request::Reload, false),
        AdminCommand::Scale { count, target } => (target, Request::Scale(count), false),
        AdminCommand::Stop { target } => (target, Request::Stop, false),
        AdminCommand::Upgrade { target } => (target, Request::Upgrade, false),
    };
    let path = target.path();
    let out = client::run(&path, request, json)?;
    if request == Request::Stop {
        if let Some(pid) = out.rsplit(' ').next().and_then(|p| p.parse::<u32>().ok()) {
            wait_gone(pid);
        }
        return Ok("stopped".into());
    }
    Ok(out)
}

/// Waits (at most a minute) until `pid` is gone: its control socket closed as it exited.
fn wait_gone(pid: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while crate::procfs::alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
