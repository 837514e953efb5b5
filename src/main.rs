//! `herd`: the command line over the library. `herd serve` (the default) runs the server.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[path = "cli/run.rs"]
mod run;
use herd::http::{HttpHandler, Limits};
use herd::{Cluster, Policy, WorkerSched};

/// Node's cluster module, rebuilt in Rust: a primary that hands connections to worker processes.
#[derive(Debug, Parser)]
#[command(name = "herd", version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Compare scheduling policies side by side under a built-in load generator.
    Bench(herd::bench::BenchArgs),
    // Operating a running server over its control socket (issue 14).
    #[command(flatten)]
    Admin(herd::admin::cli::AdminCommand),
    /// Run an unmodified Node.js cluster app under herd's primary: herd run -- node app.js
    Run(RunArgs),
}

/// `herd run`: serve's options, then the command every worker runs.
#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// A worker that has not listened this long after it started is reported
    #[arg(long, default_value = "30s", value_parser = positive_duration)]
    start_timeout: Duration,
    /// The worker command (after `--`), e.g. node app.js
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<std::ffi::OsString>,
}

/// `herd run`: NODE_CLUSTER_SCHED_POLICY (rr, none) counts as --policy unless --policy or
/// HERD_POLICY is given.
fn run_node(mut a: RunArgs) -> Result<(), String> {
    let explicit = std::env::var_os("HERD_POLICY").is_some()
        || std::env::args_os()
            .any(|x| x == "--policy" || x.to_string_lossy().starts_with("--policy="));
    if let (false, Ok(p)) = (explicit, std::env::var("NODE_CLUSTER_SCHED_POLICY")) {
        a.serve.policy = p
            .parse()
            .map_err(|e| format!("NODE_CLUSTER_SCHED_POLICY: {e}"))?;
    }
    if a.serve.proxy_protocol {
        return Err("--proxy-protocol does not apply to herd run: Node workers read their sockets themselves".into());
    }
    let cluster = cluster(&a.serve)?
        .defer_accept(None)
        .start_timeout(a.start_timeout);
    run::run(cluster, &a.command)
}

fn duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 500ms, 2m)"))
}

/// A duration that must be more than zero (a zero timeout would close every connection).
fn positive_duration(s: &str) -> Result<Duration, String> {
    match duration(s)? {
        d if d.is_zero() => Err("must be more than zero".to_string()),
        d => Ok(d),
    }
}

/// Smallest `--max-head-bytes`: room for a request line and a Host header.
const MIN_HEAD_BYTES: u32 = 64;

/// `--worker-sched`'s values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SchedArg {
    Normal,
    Batch,
}

impl From<SchedArg> for WorkerSched {
    fn from(s: SchedArg) -> WorkerSched {
        match s {
            SchedArg::Normal => WorkerSched::Normal,
            SchedArg::Batch => WorkerSched::Batch,
        }
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Worker processes [default: one per core]
    #[arg(long, env = "HERD_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// Address to listen on
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    host: String,
    /// Port to listen on (0: an ephemeral port)
    #[arg(long, env = "PORT", default_value_t = 3000)]
    port: u16,
    /// Scheduling policy: round-robin (rr), least-connections, shared (none), reuseport, idle-first
    #[arg(long, env = "HERD_POLICY", default_value = "round-robin")]
    policy: Policy,
    /// How the kernel schedules workers: normal, or batch (SCHED_BATCH: a waking worker does
    /// not preempt the primary or anything else; more throughput on busy cores, longer tails)
    #[arg(long, env = "HERD_WORKER_SCHED", value_enum, default_value_t = SchedArg::Normal)]
    worker_sched: SchedArg,
    /// Time workers get to finish in-flight requests on shutdown
    #[arg(long, default_value = "30s", value_parser = duration)]
    shutdown_timeout: Duration,
    /// Connections a worker may hold unacked (1: Node's behaviour)
    #[arg(long, env = "HERD_HANDOFF_WINDOW", default_value_t = herd::DEFAULT_HANDOFF_WINDOW as u32, value_parser = clap::value_parser!(u32).range(1..))]
    handoff_window: u32,
    /// A worker that leaves its channel unread this long gets nothing new and what it never read
    /// goes to the others; after 6 times as long it is killed and replaced
    #[arg(long, default_value = "5s", value_parser = positive_duration)]
    worker_timeout: Duration,
    /// Accepted connections waiting for a worker before the primary stops accepting
    #[arg(long, default_value_t = herd::DEFAULT_MAX_PENDING as u32, value_parser = clap::value_parser!(u32).range(1..))]
    max_pending: u32,
    /// Largest request head in bytes (larger: 431, or 414 for a too long request line)
    #[arg(long, default_value_t = 8 * 1024, value_parser = clap::value_parser!(u32).range(MIN_HEAD_BYTES as i64..))]
    max_head_bytes: u32,
    /// Most header lines in a request head (more: 431)
    #[arg(long, default_value_t = Limits::default().max_headers as u16, value_parser = clap::value_parser!(u16).range(1..))]
    max_headers: u16,
    /// Largest request body in bytes, decoded (larger: 413 and close; 0: no limit)
    #[arg(long, default_value_t = Limits::default().max_body)]
    max_body_bytes: u64,
    /// Time allowed to send a request head, and longest pause in a request body (then 408)
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    header_timeout: Duration,
    /// Time allowed to send a whole request body, from the end of its head (then 408)
    #[arg(long, default_value = "60s", value_parser = positive_duration)]
    body_timeout: Duration,
    /// Time an idle keep-alive connection stays open
    #[arg(long, default_value = "5s", value_parser = positive_duration)]
    keepalive_timeout: Duration,
    /// Most connections one worker serves at once (0: no limit); beyond it new connections wait
    #[arg(long, env = "HERD_MAX_CONNECTIONS", default_value_t = 0)]
    max_connections: usize,
    /// Requests served on one connection before it is closed (0: no limit)
    #[arg(long, default_value_t = 0)]
    max_requests_per_conn: u64,
    // Behind a balancer (issue 16).
    /// Every connection opens with a PROXY protocol header (v1 or v2, HAProxy's send-proxy /
    /// send-proxy-v2) naming the real client; a connection without a valid one within the
    /// header timeout is closed unanswered
    #[arg(long)]
    proxy_protocol: bool,
    /// On SIGTERM, fail /healthz (503) and go on serving this long, answers saying
    /// Connection: close, before shutting down (longer than the balancer's fall x inter)
    #[arg(long, default_value = "0s", value_parser = duration)]
    drain_delay: Duration,
    /// Write an access log to stdout: one line per request, combined log format, with the
    /// real client address
    #[arg(long)]
    access_log: bool,
    /// Control socket for `herd status/reload/scale/stop` [default: herd/<port>.sock under
    /// $XDG_RUNTIME_DIR, or /tmp/herd-<uid>/]
    #[arg(long, value_name = "PATH")]
    control: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics on this address (GET /metrics), e.g. 127.0.0.1:9100
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Replace a worker gracefully after it served this many requests (0: never)
    #[arg(long, default_value_t = 0)]
    max_requests_per_worker: u64,
    /// Add a random 0..=J to each worker's --max-requests-per-worker, so they are not all
    /// replaced at once
    #[arg(long, value_name = "J", default_value_t = 0)]
    max_requests_jitter: u64,
    // Running as a service (issue 15).
    /// Run every herd process as this user once the port is bound
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Run as this group (with --user; default: the user's primary group)
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// Write the primary's pid here once it listens (rewritten after an upgrade, removed on exit)
    #[arg(long, value_name = "PATH")]
    pid_file: Option<std::path::PathBuf>,
    /// Time the new primary of an upgrade (SIGUSR1) gets to have every worker online
    #[arg(long, default_value = "30s", value_parser = positive_duration)]
    upgrade_timeout: Duration,
}

impl ServeArgs {
    fn addr(&self) -> Result<SocketAddr, String> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("invalid --host '{}': {e}", self.host))?
            .next()
            .ok_or_else(|| format!("invalid --host '{}': no address", self.host))
    }

    fn limits(&self) -> Limits {
        Limits {
            max_head: self.max_head_bytes as usize,
            max_headers: usize::from(self.max_headers),
            max_body: self.max_body_bytes,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            keepalive_timeout: self.keepalive_timeout,
            max_requests: self.max_requests_per_conn,
        }
    }
}

/// The cluster serve's options describe.
fn cluster(args: &ServeArgs) -> Result<Cluster, String> {
    let mut cluster = Cluster::new()
        .addr(args.addr()?)
        .policy(args.policy)
        .worker_sched(args.worker_sched.into())
        .shutdown_timeout(args.shutdown_timeout)
        .handoff_window(args.handoff_window as usize)
        .max_connections(args.max_connections)
        .max_pending(args.max_pending as usize)
        .worker_timeout(args.worker_timeout)
        .defer_accept(Some(args.header_timeout))
        .proxy_protocol(args.proxy_protocol.then_some(args.header_timeout))
        .drain_delay(args.drain_delay)
        .control_socket(match args.control.clone() {
            Some(path) => herd::admin::ControlSocket::At(path),
            None => herd::admin::ControlSocket::Default,
        })
        .metrics(args.metrics)
        .max_requests_per_worker(args.max_requests_per_worker, args.max_requests_jitter);
    if let Some(n) = args.workers {
        cluster = cluster.workers(n as usize);
    }
    if let Some(user) = &args.user {
        cluster = cluster.user(user.clone());
    }
    if let Some(group) = &args.group {
        cluster = cluster.group(group.clone());
    }
    if let Some(path) = &args.pid_file {
        cluster = cluster.pid_file(path.clone());
    }
    cluster = cluster.upgrade_timeout(args.upgrade_timeout);
    Ok(cluster)
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let limits = args.limits();
    let access_log = args.access_log;
    cluster(&args)?
        .run(|| HttpHandler::new(limits).access_log(access_log))
        .map_err(|e| e.to_string())
}

/// Parses the command line; errors are one line (`error: ...`) and exit 2, like any tool.
fn parse() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|e| {
        use clap::error::ErrorKind;
        if matches!(
            e.kind(),
            ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        ) {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        let text = e.to_string();
        let first = text.lines().next().unwrap_or("error: invalid arguments");
        eprintln!("{first} (see 'herd --help')");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = match parse() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = match cli.command {
        Some(Command::Serve(a)) => serve(a),
        Some(Command::Bench(a)) => herd::bench::run(a).map_err(|e| e.to_string()),
        Some(Command::Admin(c)) => herd::admin::cli::run(c)
            .map(|out| println!("{out}"))
            .map_err(|e| e.to_string()),
        Some(Command::Run(a)) => run_node(a),
        None => serve(cli.serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
