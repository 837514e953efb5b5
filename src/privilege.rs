//! Dropping root after binding (`--user NAME [--group NAME]`): the names are resolved when the
//! cluster is configured, before anything is bound (an unknown name is a one-line error); the
//! primary binds (port 80 needs root), then sets its groups, group and user, and every worker
//! it starts afterwards inherits them. No herd process stays root.

use nix::errno::Errno;
use nix::unistd::{Gid, Group, Uid, User};

/// Why the user or group could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// No such user.
    #[error("unknown user '{0}'")]
    UnknownUser(String),
    /// No such group.
    #[error("unknown group '{0}'")]
    UnknownGroup(String),
    /// The user or group database could not be read.
    #[error("cannot look up '{0}': {1}")]
    Lookup(String, Errno),
    /// A call to change identity failed (not root, for one).
    #[error("cannot switch to user '{user}' ({call}): {errno}")]
    Switch {
        /// The user asked for.
        user: String,
        /// The call that failed.
        call: &'static str,
        /// What the OS said.
        errno: Errno,
    },
}

/// A user and group to run as, resolved to ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user's name.
    pub user: String,
    /// Its id.
    pub uid: Uid,
    /// The group's id (the user's primary group unless one was named).
    pub gid: Gid,
}

impl Credentials {
    /// Looks `user` (and `group`, else the user's primary group) up.
    pub fn resolve(user: &str, group: Option<&str>) -> Result<Credentials, PrivilegeError> {
        let u = User::from_name(user)
            .map_err(|e| PrivilegeError::Lookup(user.to_string(), e))?
            .ok_or_else(|| PrivilegeError::UnknownUser(user.to_string()))?;
        let gid = match group {
            None => u.gid,
            Some(g) => {
                Group::from_name(g)
                    .map_err(|e| PrivilegeError::Lookup(g.to_string(), e))?
                    .ok_or_else(|| PrivilegeError::UnknownGroup(g.to_string()))?
                    .gid
            }
        };
        Ok(Credentials {
            user: user.to_string(),
            uid: u.uid,
            gid,
        })
    }

    /// True when this process already runs as these ids (a primary started by an upgrade).
    pub fn current(&self) -> bool {
        use nix::unistd::{getegid, geteuid, getgid, getuid};
        getuid() == self.uid
            && geteuid() == self.uid
            && getgid() == self.gid
            && getegid() == self.gid
    }

    /// Becomes this user: supplementary groups, group, then user (in that order: after
    /// `setuid` the others are no longer allowed). Nothing to do when already there.
    pub fn apply(&self) -> Result<(), PrivilegeError> {
        if self.current() {
            return Ok(());
        }
        let fail = |call| {
            move |errno| PrivilegeError::Switch {
                user: self.user.clone(),
                call,
                errno,
            }
        };
        nix::unistd::setgroups(&[self.gid]).map_err(fail("setgroups"))?;
        nix::unistd::setgid(self.gid).map_err(fail("setgid"))?;
        nix::unistd::setuid(self.uid).map_err(fail("setuid"))?;
        log::info!(
            "running as user {} (uid {}, gid {})",
            self.user,
            self.uid,
            self.gid
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_are_one_line_errors() {
        let e = Credentials::resolve("no-such-user-herd", None).unwrap_err();
        assert_eq!(e.to_string(), "unknown user 'no-such-user-herd'");
        let e = Credentials::resolve("root", Some("no-such-group-herd")).unwrap_err();
        assert_eq!(e.to_string(), "unknown group 'no-such-group-herd'");
        let c = Credentials::resolve("root", None).unwrap();
        assert_eq!(c.uid, Uid::from_raw(0));
    }
}
