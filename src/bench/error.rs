//! Why `herd bench` stopped. Every message is one line, printed by `herd` after `error: `.

use std::io;
use std::path::PathBuf;

use super::cluster::StartError;
use super::load::LoadError;

/// Why `herd bench` failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An option's value cannot be used (the message names the option).
    #[error("{0}")]
    BadArgument(String),
    /// The `--target` URL cannot be measured.
    #[error("--target '{url}': {reason}")]
    BadTarget {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        #[source]
        reason: TargetError,
    },
    /// This program's own path, needed to start `herd serve`, is unknown.
    #[error("cannot find own executable: {0}")]
    OwnExecutable(#[source] io::Error),
    /// A cluster under test did not come up.
    #[error(transparent)]
    ServerStart(#[from] StartError),
    /// The load generator could not run.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The run ended without CPU samples at both ends of the measured window.
    #[error("the measured window was not sampled")]
    NotSampled,
    /// A `--json` or `--svg` file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// Why it could not be written.
        source: io::Error,
    },
}

/// What is wrong with a `--target` URL.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// It does not start with `http://`.
    #[error("only http:// URLs are supported")]
    NotHttp,
    /// Its host and port do not resolve.
    #[error("{0}")]
    Resolve(#[source] io::Error),
    /// Its host resolved to no address.
    #[error("no address")]
    NoAddress,
}
