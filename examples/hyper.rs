//! hyper in herd workers, without a framework: `Hello World! <pid>` at every path.
//!
//! `cargo run --release --features axum --example hyper -- 3000 [--policy P] [--workers N]
//! [--host H]`
//! (port 0: an ephemeral port). Each connection is served by hyper's HTTP/1 connection on a
//! task of the worker's tokio runtime; when the primary tells the worker to stop, the accept
//! loop ends, every connection is asked to finish its request in flight and close, and the
//! worker exits once they all have.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use herd::{Cluster, Policy};

async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(ms) = req.uri().path().strip_prefix("/sleep/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    let body = format!("Hello World! {}", std::process::id());
    Ok(Response::new(Full::new(Bytes::from(body))))
}

struct Args {
    port: u16,
    host: IpAddr,
    policy: Policy,
    workers: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let (mut port, mut policy, mut workers) = (3000, Policy::default(), None);
    let mut host = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--policy" => {
                let p = it.next().ok_or("--policy needs a value")?;
                policy = p.parse().map_err(|e| format!("{e}"))?;
            }
            "--workers" => {
                let n = it.next().ok_or("--workers needs a value")?;
                workers = Some(n.parse().map_err(|_| format!("bad --workers: {n}"))?);
            }
            "--host" => {
                let h = it.next().ok_or("--host needs a value")?;
                host = h.parse().map_err(|_| format!("bad --host: {h}"))?;
            }
            p if !p.starts_with('-') => port = p.parse().map_err(|_| format!("bad port: {p}"))?,
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    Ok(Args {
        port,
        host,
        policy,
        workers,
    })
}

fn main() -> Result<(), herd::Error> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("hyper example: {e}");
        std::process::exit(2);
    });
    let mut cluster = Cluster::new()
        .addr(SocketAddr::new(args.host, args.port))
        .policy(args.policy);
    if let Some(n) = args.workers {
        cluster = cluster.workers(n);
    }
    cluster.run_tokio(|worker| async move {
        let mut conns = worker.connections();
        // Tells every connection task to finish up once the accept loop has ended.
        let (stop, stopping) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        while let Some((conn, _peer)) = conns.accept().await {
            let mut stopping = stopping.clone();
            tasks.spawn(async move {
                let served =
                    http1::Builder::new().serve_connection(TokioIo::new(conn), service_fn(hello));
                let mut served = std::pin::pin!(served);
                tokio::select! {
                    r = served.as_mut() => return r,
                    _ = stopping.changed() => served.as_mut().graceful_shutdown(),
                }
                served.await
            });
        }
        let _ = stop.send(true);
        while tasks.join_next().await.is_some() {}
        Ok(())
    })
}
