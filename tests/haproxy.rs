//! herd behind a real HAProxy (Debian's package; `.ci/run` installs it), running
//! `deploy/haproxy.cfg` itself: three hosts on 127.0.0.2-4 on one port, HAProxy on 127.0.0.1
//! with `send-proxy-v2` (or `send-proxy`), `check-send-proxy` and `option httpchk GET /healthz`.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn};

const HOSTS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
/// Longer than the checks' fall x inter (2 x 200ms in the test), with a margin.
const DRAIN_DELAY: &str = "2s";
/// The shipped configuration, run as it is but for the lines [`config`] replaces.
const DEPLOY: &str = include_str!("../deploy/haproxy.cfg");

/// A port free on all three host addresses.
fn port_free_on_hosts() -> u16 {
    wait_for("a port free on 127.0.0.2-4", DEADLINE, || {
        let first = TcpListener::bind((HOSTS[0], 0)).ok()?;
        let port = first.local_addr().ok()?.port();
        let others: Vec<_> = HOSTS[1..]
            .iter()
            .map(|h| TcpListener::bind((*h, port)))
            .collect::<Result<_, _>>()
            .ok()?;
        drop((first, others));
        Some(port)
    })
}

/// One herd host: `herd serve` on its own address, its stdout (the access log) apart.
struct Host {
    ip: &'static str,
    server: Server,
    out: Arc<Log>,
}

impl Host {
    fn start(ip: &'static str, port: u16, extra: &[&str]) -> Host {
        let out = Arc::new(Log::default());
        let mut args = vec![
            "--workers",
            "1",
            "--proxy-protocol",
            "--drain-delay",
            DRAIN_DELAY,
        ];
        args.extend_from_slice(extra);
        let server = Launch::herd_at(ip, port, &args)
            .stdout(Stdout::Apart(out.clone()))
            .start();
        Host { ip, server, out }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip.parse().unwrap(), self.server.port)
    }

    fn pids(&mut self) -> HashSet<u32> {
        self.server.workers().into_iter().collect()
    }
}

/// A running HAProxy, stopped (by its pid) when dropped.
struct Haproxy {
    child: Child,
    log: Arc<Log>,
    addr: SocketAddr,
    config: std::path::PathBuf,
}

/// `deploy/haproxy.cfg` with its bind line on 127.0.0.1:`lb_port`, the three test hosts as
/// its servers, checks every 200ms, and `send-proxy` (v1) instead of `send-proxy-v2` if `v1`.
fn config(lb_port: u16, host_port: u16, v1: bool) -> String {
    let mut out = String::new();
    let (mut binds, mut servers) = (0, 0);
    for line in DEPLOY.lines() {
        let t = line.trim_start();
        if t.starts_with("bind ") {
            binds += 1;
            out += &format!("    bind 127.0.0.1:{lb_port}\n");
        } else if t.starts_with("server ") {
            servers += 1;
            if servers == 1 {
                for (i, h) in HOSTS.iter().enumerate() {
                    out += &format!("    server host{} {h}:{host_port}\n", i + 1);
                }
            }
        } else if t.starts_with("default-server ") {
            assert!(t.contains("inter 1s") && t.contains("send-proxy-v2"), "{t}");
            let mut l = line.replace("inter 1s", "inter 200ms");
            if v1 {
                l = l.replace("send-proxy-v2", "send-proxy");
            }
            out += &l;
            out.push('\n');
        } else {
            out += line;
            out.push('\n');
        }
    }
    assert_eq!((binds, servers), (1, 3), "deploy/haproxy.cfg changed shape");
    out
}

/// Debian installs HAProxy in /usr/sbin, which a CI user's PATH may lack.
fn haproxy_bin() -> &'static str {
    if std::path::Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}

impl Haproxy {
    fn start(host_port: u16, v1: bool) -> Haproxy {
        let lb_port = unused_port();
        let path = std::env::temp_dir().join(format!(
            "herd-test-haproxy-{}-{lb_port}.cfg",
            std::process::id()
        ));
        std::fs::write(&path, config(lb_port, host_port, v1)).unwrap();
        let mut child = Command::new(haproxy_bin())
            .args(["-db", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("haproxy is installed (.ci/run installs Debian's package)");
        let log = Arc::new(Log::default());
        log.collect(child.stdout.take().unwrap());
        log.collect(child.stderr.take().unwrap());
        let addr = SocketAddr::from(([127, 0, 0, 1], lb_port));
        let mut lb = Haproxy {
            child,
            log,
            addr,
            config: path,
        };
        wait_for("haproxy to listen", DEADLINE, || {
            if let Ok(Some(status)) = lb.child.try_wait() {
                panic!("haproxy exited ({status}):\n{}", lb.log.text());
            }
            TcpStream::connect(addr).ok().map(drop)
        });
        lb
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Which host (index) served `GET /` through `lb`, by the worker pid in the answer.
fn served_by(lb: SocketAddr, hosts: &mut [Host]) -> Option<usize> {
    let pid = get(lb, "/").ok().filter(|r| r.status == 200)?.pid();
    hosts.iter_mut().position(|h| h.pids().contains(&pid))
}

/// Waits until requests through `lb` reach every host (HAProxy's checks have all of them UP).
fn wait_all_up(lb: SocketAddr, hosts: &mut [Host]) {
    let mut seen = HashSet::new();
    wait_for("every host to serve through haproxy", DEADLINE, || {
        seen.extend(served_by(lb, hosts));
        (seen.len() == hosts.len()).then_some(())
    });
}

/// A connection to `to` from source address `from` (any port).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let fd: OwnedFd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let src: SocketAddr = format!("{from}:0").parse().unwrap();
    let SocketAddr::V4(src) = src else {
        unreachable!()
    };
    let SocketAddr::V4(dst) = to else {
        panic!("IPv4 only")
    };
    socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(src)).unwrap();
    socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(dst)).unwrap();
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// `GET path` from source address `from`, through `lb`.
fn get_from(from: &str, lb: SocketAddr, path: &str) -> Response {
    let mut s = connect_from(from, lb);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    read_response(&mut std::io::BufReader::new(s), false).expect("an answer")
}

#[test]
fn haproxy_spreads_over_the_hosts_and_each_sees_the_real_client() {
    let port = port_free_on_hosts();
    let mut hosts: Vec<Host> = HOSTS
        .iter()
        .map(|ip| Host::start(ip, port, &["--access-log"]))
        .collect();
    let v2 = Haproxy::start(port, false);
    let v1 = Haproxy::start(port, true);
    wait_all_up(v2.addr, &mut hosts);
    wait_all_up(v1.addr, &mut hosts);

    // Round-robin: new connections go to every host, and only to them.
    let mut per_host = [0usize; 3];
    for _ in 0..30 {
        let i = served_by(v2.addr, &mut hosts).expect("a host's worker answered");
        per_host[i] += 1;
    }
    assert!(per_host.iter().all(|&n| n >= 5), "{per_host:?}");

    // A client on 127.0.0.9 is 127.0.0.9 to every host, through PROXY v2 and v1.
    for (lb, tag) in [(v2.addr, "v2"), (v1.addr, "v1")] {
        for _ in 0..9 {
            let r = get_from("127.0.0.9", lb, &format!("/ip?via={tag}"));
            assert_eq!(
                (r.status, r.text()),
                (200, "127.0.0.9".to_string()),
                "{tag}"
            );
        }
    }
    for h in &hosts {
        for tag in ["v1", "v2"] {
            let needle = format!("\"GET /ip?via={tag} HTTP/1.1\" 200 9");
            wait_for(
                &format!("{}'s access log of /ip via {tag}", h.ip),
                DEADLINE,
                || {
                    let lines = h.out.matching(&needle);
                    (!lines.is_empty()).then_some(lines)
                },
            )
            .iter()
            .for_each(|l| assert!(l.starts_with("127.0.0.9 - - ["), "{l}"));
        }
    }

    // Straight to a host, without a header or with a malformed one: closed, no answer.
    for h in &hosts {
        for prefix in [
            &b""[..],
            b"PROXY TCP4 nonsense\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x02",
        ] {
            let mut bytes = prefix.to_vec();
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
            let (out, end) = exchange(h.addr(), &bytes, DEADLINE);
            assert_eq!(out, b"", "{} answered {prefix:?}", h.ip);
            assert_ne!(end, End::Open);
        }
    }
    // ... and every host keeps serving through HAProxy.
    let mut seen = HashSet::new();
    for _ in 0..12 {
        seen.extend(served_by(v2.addr, &mut hosts));
    }
    assert_eq!(seen.len(), 3);
}

#[test]
fn a_rolling_deploy_under_load_fails_no_request() {
    let port = port_free_on_hosts();
    let mut hosts: Vec<Host> = HOSTS
        .iter()
        .map(|ip| Host::start(ip, port, &["--access-log"]))
        .collect();
    let lb = Haproxy::start(port, false);
    wait_all_up(lb.addr, &mut hosts);

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = load_until(lb.addr, 2, 1_000_000, true, stop.clone());
    clients.extend(load_until(lb.addr, 2, 1_000_000, false, stop.clone()));

    for i in 0..hosts.len() {
        let ip = hosts[i].ip;
        hosts[i].server.signal(Signal::SIGTERM);
        let status = hosts[i].server.wait_exit(DEADLINE);
        assert!(status.success(), "{ip}: {status}");
        assert!(hosts[i].server.find_log("drain delay over").is_some());
        // HAProxy's checks saw it go while it was still serving (the drain delay outlasts
        // fall x inter): by the time it stopped accepting, no request was sent its way.
        let down = format!("Server herd/host{} is DOWN", i + 1);
        assert!(
            lb.log.text().contains(&down),
            "{ip} exited before haproxy marked it down:\n{}",
            lb.log.text()
        );
        hosts[i] = Host::start(ip, port, &["--access-log"]);
        wait_for(
            &format!("the new {ip} to serve through haproxy"),
            DEADLINE,
            || (served_by(lb.addr, &mut hosts) == Some(i)).then_some(()),
        );
    }
    // Every host, each restarted once, serves the load again.
    for h in &hosts {
        wait_for(&format!("{} to serve the load", h.ip), DEADLINE, || {
            (h.out.matching("\"GET / HTTP/1.1\" 200").len() >= 20).then_some(())
        });
    }
    stop.store(true, Ordering::Relaxed);
    let result = merge(clients);
    assert_eq!(
        result.failed,
        0,
        "{} failed of {}: {:?}\nhaproxy:\n{}",
        result.failed,
        result.ok + result.failed,
        result.errors.iter().take(5).collect::<Vec<_>>(),
        lb.log.text()
    );
    assert!(result.ok > 0);
    eprintln!(
        "rolling deploy: {} requests through haproxy, none failed",
        result.ok
    );
}
