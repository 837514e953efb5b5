//! How an upgrade of the primary (`SIGUSR1`, `herd upgrade`) ends when it does not simply
//! succeed, and what moves with it (issue 15): a broken or hanging new binary leaves the old
//! primary serving with nothing left behind; a stop during an upgrade stops both; the control
//! socket answers with the outcome and, like the metrics endpoint, moves to the new primary.

mod common;

use std::process::{Command, Stdio};

use common::*;
use nix::sys::signal::Signal;

#[test]
fn a_broken_new_binary_leaves_the_old_primary_serving() {
    let s = Scratch::new("broken");
    let mut server = s.start(&[]);
    let old = server.pid();
    let fds = fd_count(old);
    s.replace_bin(|to| {
        std::fs::write(to, "#!/bin/sh\nexit 1\n").expect("write the broken binary");
    });
    server.signal(Signal::SIGUSR1);
    let line = server.wait_log("upgrade failed", DEADLINE);
    assert!(
        line.contains(&format!("primary {old} keeps serving")),
        "{line}"
    );
    assert_eq!(
        s.primary(),
        Some(old),
        "the pid file still names the old primary"
    );
    let r = get(server.addr(), "/").expect("still served");
    assert!(server.workers().contains(&r.pid()));
    wait_for(
        "the failed upgrade's descriptors to be closed",
        DEADLINE,
        || (fd_count(old) == fds).then_some(()),
    );
    // With a working binary back at the same path, the next upgrade goes through.
    s.install_herd();
    let new = upgrade(&s, &server);
    assert_ne!(new, old);
    assert!(server.child.wait().expect("old primary").success());
    send_signal(new, Signal::SIGTERM).expect("stop");
    wait_for("the new primary to exit", DEADLINE, || {
        (!alive(new)).then_some(())
    });
}

#[test]
fn a_new_primary_that_hangs_is_given_up_after_the_upgrade_timeout() {
    let s = Scratch::new("hang");
    let mut server = s.start(&["--upgrade-timeout", "1s"]);
    let old = server.pid();
    let marker = s.dir.join("hung.pid");
    let script = format!(
        "#!/bin/sh\necho $$ > '{}'\nexec sleep 60\n",
        marker.display()
    );
    s.replace_bin(|to| std::fs::write(to, script).expect("write the hanging binary"));
    server.signal(Signal::SIGUSR1);
    let line = server.wait_log("upgrade failed", DEADLINE);
    assert!(
        line.contains("the new primary was not ready within 1s")
            && line.contains(&format!("primary {old} keeps serving")),
        "{line}"
    );
    let hung: u32 = std::fs::read_to_string(&marker)
        .expect("the hanging binary ran")
        .trim()
        .parse()
        .expect("a pid");
    wait_for("the hung primary to be gone", DEADLINE, || {
        (!alive(hung)).then_some(())
    });
    assert_eq!(s.primary(), Some(old));
    let r = get(server.addr(), "/").expect("still served");
    assert!(server.workers().contains(&r.pid()));
}

#[test]
fn stopping_during_an_upgrade_stops_the_new_primary_too() {
    let s = Scratch::new("stop-during");
    let mut server = s.start(&[]);
    let marker = s.dir.join("hung.pid");
    let script = format!(
        "#!/bin/sh\necho $$ > '{}'\nexec sleep 60\n",
        marker.display()
    );
    s.replace_bin(|to| std::fs::write(to, script).expect("write the hanging binary"));
    server.signal(Signal::SIGUSR1);
    let hung: u32 = wait_for("the new primary to start", DEADLINE, || {
        std::fs::read_to_string(&marker).ok()?.trim().parse().ok()
    });
    server.signal(Signal::SIGTERM);
    assert!(
        server.wait_exit(DEADLINE).success(),
        "{}",
        server.log_text()
    );
    assert!(server
        .find_log("upgrade abandoned: the primary is stopping")
        .is_some());
    wait_for("the new primary to be gone", DEADLINE, || {
        (!alive(hung)).then_some(())
    });
    assert!(
        !s.pid_file().exists(),
        "the old primary removed its pid file"
    );
}

/// Runs the herd client with `args`; returns (success, stdout + stderr).
fn client(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(herd_bin())
        .args(args)
        .env_remove("PORT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the herd client");
    let status = poll(DEADLINE * 2, || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("client output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (status.is_some_and(|s| s.success()), text)
}

#[test]
fn herd_upgrade_on_the_control_socket_waits_for_the_outcome() {
    let s = Scratch::new("control");
    let mut server = s.start(&[]);
    let old = server.pid();
    let port = server.port.to_string();
    let (ok, out) = client(&["upgrade", "--port", &port]);
    assert!(ok, "{out}");
    let new = s.primary().expect("pid file");
    assert_ne!(new, old);
    assert!(
        out.contains(&format!("upgraded: primary {new} took over from {old}")),
        "{out}"
    );
    // The new primary answers on the control socket now.
    let (ok, status) = client(&["status", "--port", &port, "--json"]);
    assert!(ok, "{status}");
    assert!(
        status.contains(&format!("\"primary_pid\":{new}")),
        "{status}"
    );
    assert!(server.wait_exit(DEADLINE).success());
    // A broken binary: the client hears why, and the primary keeps serving.
    s.replace_bin(|to| std::fs::write(to, "#!/bin/sh\nexit 1\n").expect("write"));
    let (ok, out) = client(&["upgrade", "--port", &port]);
    assert!(!ok && out.contains("upgrade failed"), "{out}");
    assert_eq!(s.primary(), Some(new));
    assert!(get(server.addr(), "/").is_ok());
    send_signal(new, Signal::SIGTERM).expect("stop");
    wait_for("the new primary to exit", DEADLINE, || {
        (!alive(new)).then_some(())
    });
}

#[test]
fn the_metrics_endpoint_moves_to_the_new_primary() {
    let s = Scratch::new("metrics");
    let port = unused_port();
    let metrics = format!("127.0.0.1:{port}");
    let mut server = s.start(&["--metrics", &metrics]);
    let addr: std::net::SocketAddr = metrics.parse().expect("address");
    assert_eq!(get(addr, "/metrics").expect("metrics").status, 200);
    let new = upgrade(&s, &server);
    assert!(server.wait_exit(DEADLINE).success());
    let r = wait_for("the new primary's metrics", DEADLINE, || {
        get(addr, "/metrics").ok()
    });
    assert_eq!(r.status, 200);
    send_signal(new, Signal::SIGTERM).expect("stop");
    wait_for("the new primary to exit", DEADLINE, || {
        (!alive(new)).then_some(())
    });
}
