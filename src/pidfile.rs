//! `--pid-file PATH`: the primary's pid, written once it listens (a new primary rewrites it
//! when it takes over in an upgrade), and removed on exit only while it still names this
//! process, so an old primary leaving after an upgrade does not remove its successor's file.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::privilege::Credentials;

/// Why the pid file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the pid file {path}: {source}")]
pub struct PidFileError {
    /// The file.
    pub path: PathBuf,
    /// What the OS said.
    #[source]
    pub source: io::Error,
}

/// Writes this process's pid to `path` (created or truncated in place, so a primary that is
/// no longer root can rewrite a file it owns); with `owner`, the file is given to that user, so
/// that a primary started by an upgrade, which runs as that user, can rewrite it.
pub fn write(path: &Path, owner: Option<&Credentials>) -> Result<(), PidFileError> {
    let err = |source| PidFileError {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::create(path).map_err(err)?;
    writeln!(f, "{}", std::process::id()).map_err(err)?;
    if let Some(c) = owner {
        nix::unistd::fchown(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            Some(c.uid),
            Some(c.gid),
        )
        .map_err(|e| err(e.into()))?;
    }
    Ok(())
}

/// Removes `path` if it still holds this process's pid.
pub fn remove_if_ours(path: &Path) {
    let ours = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        == Some(std::process::id());
    if ours {
        if let Err(e) = std::fs::remove_file(path) {
            log::warn!("cannot remove the pid file {}: {e}", path.display());
        }
    }
}
