//! axum in herd workers: `Hello World! <pid>` at `/`, a JSON route, a slow route, a route
//! that keeps its thread busy.
//!
//! `cargo run --release --features axum --example axum -- 3000 [--policy P] [--workers N]`
//! (port 0: an ephemeral port; the `listening on http://ADDR:PORT` line tells which), then
//! `curl localhost:3000/` a few times and watch the pid rotate. Routes:
//! - `/`: `Hello World! <pid>`
//! - `/json`: `{"message":"Hello World!","pid":...,"worker":...,"peer":"..."}` (the peer comes
//!   from `ConnectInfo<SocketAddr>`)
//! - `/sleep/{ms}`: answers after `ms` milliseconds (at most 60 s), like a slow request
//!
//! `--proxy-protocol`: every connection opens with a PROXY protocol header (HAProxy's
//! `send-proxy`); `/json`'s peer is then the client the header names.
//!
//! The primary sends each worker `ping` when it comes online; the worker answers from async code
//! with `echo: ping`, which the primary logs as `message from worker ID: echo: ping`.
//! `--threads N` gives each worker a multi-thread runtime of N threads (default: one
//! current-thread runtime per worker). `--alone [--threads N]` runs the same app without herd,
//! on one tokio runtime with N threads (default 2): the baseline of the benchmark in the README.
//! `--uncounted`: the workers serve the app without `herd::axum::counted` (no request count or
//! latency in the statistics), the very app `--alone` serves (`benches/axum.sh`, `COUNTED=0`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::extract::{ConnectInfo, Path};
use axum::routing::get;
use axum::{Json, Router};
use herd::{Cluster, Event, Policy};

struct Args {
    port: u16,
    host: IpAddr,
    policy: Policy,
    workers: Option<usize>,
    alone: bool,
    threads: Option<usize>,
    proxy_protocol: bool,
    uncounted: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        port: 3000,
        host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        policy: Policy::default(),
        workers: None,
        alone: false,
        threads: None,
        proxy_protocol: false,
        uncounted: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--policy" => args.policy = value("--policy")?.parse().map_err(|e| format!("{e}"))?,
            "--workers" => {
                let n = value("--workers")?;
                args.workers = Some(n.parse().map_err(|_| format!("bad --workers: {n}"))?);
            }
            "--host" => {
                let h = value("--host")?;
                args.host = h.parse().map_err(|_| format!("bad --host: {h}"))?;
            }
            "--threads" => {
                let n = value("--threads")?;
                args.threads = Some(n.parse().map_err(|_| format!("bad --threads: {n}"))?);
            }
            "--alone" => args.alone = true,
            "--proxy-protocol" => args.proxy_protocol = true,
            "--uncounted" => args.uncounted = true,
            p if !p.starts_with('-') => {
                args.port = p.parse().map_err(|_| format!("bad port: {p}"))?;
            }
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    Ok(args)
}

fn app(worker: Option<herd::WorkerId>) -> Router {
    let id = worker.map_or(0, |w| w.get());
    Router::new()
        .route(
            "/",
            get(|| async { format!("Hello World! {}", std::process::id()) }),
        )
        .route(
            "/json",
            get(
                move |ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                    Json(serde_json::json!({
                        "message": "Hello World!",
                        "pid": std::process::id(),
                        "worker": id,
                        "peer": peer.to_string(),
                    }))
                },
            ),
        )
        .route(
            "/sleep/{ms}",
            get(|Path(ms): Path<u64>| async move {
                log::info!("worker {}: sleeping {ms} ms", std::process::id());
                tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
                format!("slept {ms} ms in {}", std::process::id())
            }),
        )
        .route(
            "/spin/{ms}",
            get(|Path(ms): Path<u64>| async move {
                // Blocks the worker's thread, as CPU-bound work does: the worker is busy (the
                // `idle-first` policy then hands new connections to idle workers).
                let end = std::time::Instant::now() + Duration::from_millis(ms.min(60_000));
                while std::time::Instant::now() < end {
                    std::hint::spin_loop();
                }
                format!("{} spun {ms} ms", std::process::id())
            }),
        )
}

/// The same app without herd: one process, one runtime of `threads` threads.
fn alone(addr: SocketAddr, threads: usize) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        log::info!("listening on http://{}", listener.local_addr()?);
        let app = app(None).into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app).await
    })
}

fn main() -> Result<(), herd::Error> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("axum example: {e}");
            std::process::exit(2);
        }
    };
    let addr = SocketAddr::new(args.host, args.port);
    if args.alone {
        let threads = args.threads.unwrap_or(2);
        return alone(addr, threads).map_err(|e| herd::Error::Config(e.to_string()));
    }
    let mut cluster = Cluster::new()
        .addr(addr)
        .policy(args.policy)
        .on_event(|event, control| match event {
            Event::Online { id, .. } => {
                if let Err(e) = control.send(*id, "ping") {
                    log::warn!("cannot ping worker {id}: {e}");
                }
            }
            Event::Message { id, payload, .. } => {
                log::info!(
                    "message from worker {id}: {}",
                    String::from_utf8_lossy(payload)
                );
            }
            _ => {}
        });
    if let Some(n) = args.workers {
        cluster = cluster.workers(n);
    }
    if args.proxy_protocol {
        cluster = cluster.proxy_protocol(Some(Duration::from_secs(5)));
    }
    let runtime = match args.threads {
        None => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
    };
    let uncounted = args.uncounted;
    cluster.run_tokio_on(runtime, move |worker| async move {
        let echo = worker.clone();
        tokio::spawn(async move {
            while let Some(msg) = echo.recv().await {
                let reply = [b"echo: ".as_slice(), &msg].concat();
                if let Err(e) = echo.send(reply) {
                    log::warn!("cannot answer the primary: {e}");
                }
            }
        });
        let listener = herd::axum::Listener::new(&worker).with_connect_info();
        let app = app(Some(worker.id()));
        let app = if uncounted {
            app
        } else {
            herd::axum::counted(app, &worker)
        };
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app)
            .with_graceful_shutdown(worker.stopped())
            .await
    })
}
