//! `herd bench`: compares scheduling policies side by side.
//!
//! For each policy asked for, it starts a herd cluster (this same binary, `herd serve` on an
//! ephemeral port of 127.0.0.1) with the same worker count, warms it up, drives a closed-loop
//! load from the built-in generator ([`load`]) for a fixed time, samples the primary's CPU
//! time around the measured window, and stops the cluster (`SIGTERM`, reap). Then it prints one
//! table, policies as rows ([`report`]), and optionally writes JSON and an SVG chart ([`svg`]).
//! With `--target` it measures an already running server instead (Node, nginx...).

pub mod cluster;
mod error;
pub mod load;
pub mod report;
pub mod svg;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{value_parser, Args, ValueEnum};

use crate::Policy;
use cluster::{ProcUsage, Sample, Server};
pub use error::{BenchError, TargetError};
use load::{LoadConfig, Phase, Stats};
use report::{Meta, PolicyResult};

/// How long a cluster gets to stop after `SIGTERM` before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// The request pattern of a run (the `mixed` costs are set by `--work`, [`load::WorkMix`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Every connection stays open and sends GET / (or --path) again and again
    Keepalive,
    /// A new TCP connection per request (Connection: close); latency timed from connect()
    Close,
    /// A new connection per request to `/work?us=N`, costs drawn from --work (default heavy-tailed:
    /// 90% cost 10 us, 9% 200 us, 1% 5 ms; seeded by --seed)
    Mixed,
}

impl Workload {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Keepalive => "keepalive",
            Workload::Close => "close",
            Workload::Mixed => "mixed",
        }
    }

    /// Whether every request goes out on a new connection.
    pub fn new_connection_per_request(self) -> bool {
        !matches!(self, Workload::Keepalive)
    }
}

/// Parses `10s`, `500ms`, `2m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 10s, 500ms, 2m)"))
}

/// Options of `herd bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Policies to compare, comma-separated, each in its own cluster
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "round-robin,least-connections,shared,reuseport,idle-first",
        conflicts_with = "target"
    )]
    pub policies: Vec<Policy>,
    /// Worker processes per cluster [default: one per core]
    #[arg(long, value_parser = value_parser!(u16).range(1..), conflicts_with = "target")]
    pub workers: Option<u16>,
    /// Concurrent connections, each with one request in flight
    #[arg(long, default_value_t = 50, value_parser = value_parser!(u32).range(1..=100_000))]
    pub connections: u32,
    /// Measured time per policy
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before the measured window (not recorded)
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Request pattern: keepalive, close (new connection per request), mixed (/work, heavy tail)
    #[arg(long, value_enum, default_value_t = Workload::Keepalive)]
    pub workload: Workload,
    /// Write the results as JSON to this file
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw the results as an SVG chart into this file
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Load-generator threads (event loops)
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u16).range(1..=256))]
    pub threads: u16,
    /// Measure a running server at this URL (http://HOST:PORT[/PATH]) instead of starting herd
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// Name of the --target row in the report [default: the URL]
    #[arg(long, requires = "target")]
    pub label: Option<String>,
    /// Runs per policy, interleaved; the run with the median requests/s is reported
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u16).range(1..=25))]
    pub repeat: u16,
    /// Path requested by the keepalive and close workloads
    #[arg(long, default_value = "/")]
    pub path: String,
    /// A request unanswered for this long counts as an error
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The mixed workload's costs: PERCENT:COST pairs adding up to 100
    #[arg(long, value_name = "SPEC", default_value = load::DEFAULT_WORK)]
    pub work: load::WorkMix,
    /// Seed of the mixed workload's cost sequence
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// An extra argument for every 'herd serve' started (repeatable), e.g.
    /// --serve-arg=--handoff-window=1
    #[arg(
        long,
        value_name = "ARG",
        allow_hyphen_values = true,
        conflicts_with = "target"
    )]
    pub serve_arg: Vec<String>,
    /// Open every connection with a PROXY protocol v2 header (and start herd with
    /// --proxy-protocol): measures what reading the header costs per connection
    #[arg(long)]
    pub proxy_protocol: bool,
    /// Time a cluster gets to print its 'listening on' line
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub start_timeout: Duration,
}

/// What one run measures against: a cluster herd starts, or an external server.
enum Subject<'a> {
    Herd { exe: &'a Path, policy: Policy },
    Target(&'a Target),
}

/// A parsed `--target` URL.
#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    authority: String,
    path: Option<String>,
    label: String,
}

fn parse_target(url: &str, label: Option<&str>) -> Result<Target, BenchError> {
    let bad = |reason| BenchError::BadTarget {
        url: url.to_string(),
        reason,
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad(TargetError::NotHttp))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(rest[i..].to_string())),
        None => (rest, None),
    };
    let with_port = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| bad(TargetError::Resolve(e)))?
        .next()
        .ok_or_else(|| bad(TargetError::NoAddress))?;
    Ok(Target {
        addr,
        authority: authority.to_string(),
        path: path.filter(|p| p != "/"),
        label: label.unwrap_or(url).to_string(),
    })
}

impl BenchArgs {
    fn worker_count(&self) -> u16 {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get().min(u16::MAX as usize) as u16)
        })
    }

    fn check(&self) -> Result<(), BenchError> {
        let bad = |message: String| Err(BenchError::BadArgument(message));
        if self.duration.is_zero() {
            return bad("--duration must be more than 0".into());
        }
        if !self.path.starts_with('/') {
            return bad(format!("--path '{}' must start with '/'", self.path));
        }
        if self.policies.is_empty() {
            return bad("--policies: name at least one policy".into());
        }
        Ok(())
    }

    fn meta(&self) -> Meta {
        Meta {
            workload: self.workload.name().into(),
            workers: if self.target.is_some() {
                0
            } else {
                self.worker_count()
            },
            connections: self.connections as usize,
            threads: usize::from(self.threads).min(self.connections as usize),
            duration: self.duration,
            warmup: self.warmup,
            repeat: usize::from(self.repeat),
            target: self.target.clone(),
            work: (self.workload == Workload::Mixed).then(|| self.work.to_string()),
        }
    }

    fn load_config(&self, addr: SocketAddr, host: String, path: Option<&str>) -> LoadConfig {
        LoadConfig {
            addr,
            host,
            path: path.unwrap_or(&self.path).to_string(),
            connections: self.connections as usize,
            threads: usize::from(self.threads),
            workload: self.workload,
            work: self.work.clone(),
            warmup: self.warmup,
            duration: self.duration,
            timeout: self.timeout,
            seed: self.seed,
            proxy_header: self.proxy_protocol.then(|| {
                crate::proxy_protocol::v2_header(SocketAddr::from(([127, 0, 0, 1], 1)), addr)
            }),
        }
    }
}

/// Runs `herd bench`: every policy (or the target) `--repeat` times, then the report.
pub fn run(args: BenchArgs) -> Result<(), BenchError> {
    args.check()?;
    let exe = std::env::current_exe().map_err(BenchError::OwnExecutable)?;
    let target = match &args.target {
        Some(url) => Some(parse_target(url, args.label.as_deref())?),
        None => None,
    };
    let subjects: Vec<Subject> = match &target {
        Some(t) => vec![Subject::Target(t)],
        None => args
            .policies
            .iter()
            .map(|&policy| Subject::Herd { exe: &exe, policy })
            .collect(),
    };
    let mut runs: Vec<Vec<PolicyResult>> = subjects.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.repeat {
        for (i, subject) in subjects.iter().enumerate() {
            let r = measure(&args, subject)?;
            eprintln!(
                "[{}] {} req/s, p99 {}, {} errors",
                r.name,
                report::fmt_count(r.rate().round() as u64),
                report::fmt_us(r.quantile_us(0.99)),
                r.stats.errors.total()
            );
            runs[i].push(r);
        }
    }
    let results: Vec<PolicyResult> = runs.into_iter().filter_map(median).collect();
    let meta = args.meta();
    println!("{}", report::table(&meta, &results));
    if let Some(path) = &args.json {
        write_file(path, &report::json(&meta, &results))?;
    }
    if let Some(path) = &args.svg {
        write_file(path, &svg::render(&meta, &results))?;
    }
    Ok(())
}

fn write_file(path: &Path, contents: &str) -> Result<(), BenchError> {
    std::fs::write(path, contents).map_err(|source| BenchError::WriteFile {
        path: path.to_path_buf(),
        source,
    })?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// The run with the median requests/s, carrying the rates of all runs.
fn median(mut runs: Vec<PolicyResult>) -> Option<PolicyResult> {
    let rates: Vec<f64> = runs.iter().map(|r| r.rate()).collect();
    let p99s: Vec<u64> = runs.iter().map(|r| r.quantile_us(0.99)).collect();
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let mid = runs.len() / 2;
    let mut chosen = runs.into_iter().nth(mid)?;
    chosen.runs = rates;
    chosen.runs_p99_us = p99s;
    Some(chosen)
}

/// One measured run against one subject.
fn measure(args: &BenchArgs, subject: &Subject) -> Result<PolicyResult, BenchError> {
    match subject {
        Subject::Herd { exe, policy } => {
            let workers = args.worker_count();
            eprintln!("[{policy}] starting a cluster of {workers} workers");
            let mut serve_args = args.serve_arg.clone();
            if args.proxy_protocol {
                serve_args.push("--proxy-protocol".into());
            }
            let server = cluster::start(exe, *policy, workers, &serve_args, args.start_timeout)?;
            let cfg = args.load_config(server.addr, server.addr.to_string(), None);
            let (stats, used, client) = drive(&cfg, policy.name(), Some(&server))?;
            let pids = server.workers.clone();
            if let Err(e) = server.stop(STOP_LIMIT) {
                // The measurements stand; a cluster that did not stop cleanly is worth a look.
                eprintln!("[{policy}] warning: {e}");
            }
            Ok(result(policy.name().into(), stats, pids, used, client))
        }
        Subject::Target(t) => {
            let cfg = args.load_config(t.addr, t.authority.clone(), t.path.as_deref());
            let (stats, _, client) = drive(&cfg, &t.label, None)?;
            Ok(result(t.label.clone(), stats, Vec::new(), None, client))
        }
    }
}

fn result(
    name: String,
    stats: Stats,
    workers: Vec<u32>,
    server: Option<Sample>,
    client: ProcUsage,
) -> PolicyResult {
    let (rate, p99) = (stats.rate(), quantile(&stats, 0.99));
    PolicyResult {
        name,
        stats,
        workers,
        server,
        client,
        runs: vec![rate],
        runs_p99_us: vec![p99],
    }
}

fn quantile(stats: &Stats, q: f64) -> u64 {
    if stats.latency.is_empty() {
        0
    } else {
        stats.latency.value_at_quantile(q)
    }
}

/// Drives the load and samples CPU usage (server's and ours) around the measured window.
fn drive(
    cfg: &LoadConfig,
    label: &str,
    server: Option<&Server>,
) -> Result<(Stats, Option<Sample>, ProcUsage), BenchError> {
    let mut before = None;
    let mut after = None;
    let stats = load::run(cfg, label, &mut |phase| {
        let now = (server.map(Server::sample), ProcUsage::this_process());
        match phase {
            Phase::MeasureStart => before = Some(now),
            Phase::MeasureEnd => after = Some(now),
        }
    })?;
    let (Some(b), Some(a)) = (before, after) else {
        return Err(BenchError::NotSampled);
    };
    let used = match (a.0, b.0) {
        (Some(a), Some(b)) => Some(a.since(b)),
        _ => None,
    };
    Ok((stats, used, a.1.since(b.1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls() {
        let t = parse_target("http://127.0.0.1:3100", None).unwrap();
        assert_eq!(t.addr, "127.0.0.1:3100".parse().unwrap());
        assert_eq!(
            (t.authority.as_str(), t.path.as_deref()),
            ("127.0.0.1:3100", None)
        );
        let t = parse_target("http://127.0.0.1:8080/hello", Some("nginx")).unwrap();
        assert_eq!(
            (t.path.as_deref(), t.label.as_str()),
            (Some("/hello"), "nginx")
        );
        assert!(parse_target("https://127.0.0.1:1", None).is_err());
    }

    /// `herd bench ARGV...` as clap parses it.
    fn args(argv: &[&str]) -> BenchArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let argv = std::iter::once("bench").chain(argv.iter().copied());
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().bench
    }

    #[test]
    fn errors_are_one_line_and_name_what_failed() {
        let e = args(&["--duration", "0s"]).check().unwrap_err();
        assert_eq!(e.to_string(), "--duration must be more than 0");
        let e = args(&["--path", "x"]).check().unwrap_err();
        assert_eq!(e.to_string(), "--path 'x' must start with '/'");
        assert!(args(&[]).check().is_ok());

        let e = parse_target("https://127.0.0.1:1", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--target 'https://127.0.0.1:1': only http:// URLs are supported"
        );
        let e = parse_target("http://127.0.0.1:port", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--target 'http://127.0.0.1:port': invalid port value"
        );
        assert!(matches!(
            e,
            BenchError::BadTarget {
                reason: TargetError::Resolve(_),
                ..
            }
        ));

        let dir = std::env::temp_dir().join(format!("herd-bench-none-{}", std::process::id()));
        let path = dir.join("out.json");
        let e = write_file(&path, "{}").unwrap_err();
        let start = format!("cannot write {}: ", path.display());
        assert!(e.to_string().starts_with(&start), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
        assert!(std::error::Error::source(&e).is_some(), "{e:?}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
    }
}
