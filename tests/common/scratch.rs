//! A herd of its own for the upgrade tests: a scratch directory with the herd binary linked
//! in (so a test can replace it on disk), a pid file, and the wait for an upgrade.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

use super::{alive, herd_bin, send_signal, wait_for, Launch, Server, DEADLINE};

/// A scratch directory with a copy of the herd binary in it.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        // Under the target directory: the same file system as the herd binary, for hard links.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("herd-upgrade-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let s = Scratch { dir };
        s.install_herd();
        s
    }

    pub fn bin(&self) -> PathBuf {
        self.dir.join("herd")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("herd.pid")
    }

    /// Puts `contents` at the binary's path by rename, as a package manager does (the running
    /// binary's inode is left alone).
    pub fn replace_bin(&self, write: impl FnOnce(&Path)) {
        let next = self.dir.join("herd.next");
        write(&next);
        let mode = std::fs::metadata(&next)
            .expect("written")
            .permissions()
            .mode();
        if mode & 0o111 == 0 {
            std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        std::fs::rename(&next, self.bin()).expect("rename over the binary");
    }

    /// Puts the real herd at the binary's path: a hard link, not a copy, since a copy is a
    /// file open for writing, which a process forked meanwhile by another test thread would
    /// hold until its own `exec`, and exec'ing it then fails with `ETXTBSY`.
    pub fn install_herd(&self) {
        self.replace_bin(|to| {
            std::fs::hard_link(herd_bin(), to).expect("link herd");
        });
    }

    /// The pid in the pid file.
    pub fn primary(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn start(&self, extra: &[&str]) -> Server {
        let mut args = vec!["--workers", "2"];
        args.extend_from_slice(extra);
        self.start_with(&args)
    }

    /// `herd serve` from this copy, with the pid file and `args` only.
    pub fn start_with(&self, args: &[&str]) -> Server {
        let pid_file = self.pid_file();
        Launch::herd(&["--shutdown-timeout", "10s", "--pid-file"])
            .args(&[pid_file.to_str().expect("utf-8 path")])
            .args(args)
            .program(self.bin())
            .start()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Whatever primary the pid file names now was started by an upgrade, not by the test:
        // stop it (its workers follow) so that no test leaves processes behind, even failing.
        if let Some(pid) = self.primary() {
            if alive(pid) {
                let _ = send_signal(pid, Signal::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `SIGUSR1` to the primary in the pid file and waits until a new primary has taken
/// over (the pid file names it) and the old one is gone; returns the new pid.
pub fn upgrade(s: &Scratch, server: &Server) -> u32 {
    let old = s.primary().expect("a pid file");
    send_signal(old, Signal::SIGUSR1).expect("signal the primary");
    let new = wait_for("a new primary in the pid file", DEADLINE, || {
        s.primary().filter(|&p| p != old)
    });
    wait_for("the old primary to exit", DEADLINE * 2, || {
        (!alive(old)).then_some(())
    });
    // The log is read on a thread of its own: wait for the line, do not just look.
    server.wait_log(&format!("upgrade: primary {new} took over"), DEADLINE);
    new
}
