//! Reading other processes from `/proc`: parent, state, CPU time, context switches, memory and
//! open descriptors. The benchmark, the tests and the primary's statistics all read these; this
//! is the one place that parses the files.

use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat`'s time fields (`USER_HZ`, 100 on Linux).
const TICKS_PER_SEC: u64 = 100;

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// One-letter state: `R`, `S`, `D`, `T` (stopped), `Z` (zombie), ...
    pub state: char,
    /// Parent pid.
    pub ppid: u32,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size, in pages.
    pub rss_pages: u64,
    /// Scheduling policy, as `sched(7)` numbers it (`0` `SCHED_OTHER`, `3` `SCHED_BATCH`, ...).
    pub policy: u32,
}

impl Stat {
    /// Reads `/proc/<pid>/stat`; `None` when there is no such process.
    pub fn read(pid: u32) -> Option<Stat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Stat::parse(&text)
    }

    /// Parses the text of a `stat` file. The command name may hold spaces and parentheses, so
    /// the fields are counted from the last `)`.
    pub fn parse(text: &str) -> Option<Stat> {
        let rest = text.get(text.rfind(')')? + 2..)?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i)?.parse::<u64>().ok();
        // Counting from the state (field 3 of proc(5)) as index 0: ppid 4, utime 14, stime 15,
        // rss 24, policy 41.
        Some(Stat {
            state: f.first()?.chars().next()?,
            ppid: f.get(1)?.parse().ok()?,
            cpu_ticks: num(11)? + num(12)?,
            rss_pages: num(21)?,
            policy: f.get(38)?.parse().ok()?,
        })
    }

    /// CPU time used so far.
    pub fn cpu(&self) -> Duration {
        Duration::from_millis(self.cpu_ticks * 1000 / TICKS_PER_SEC)
    }

    /// Resident memory in bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.rss_pages * page_size()
    }
}

/// The system's page size in bytes.
pub fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |n| n as u64)
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    Stat::read(pid).is_some_and(|s| s.state != 'Z')
}

/// Live (non-zombie) children of `ppid`, in pid order.
pub fn children(ppid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| Stat::read(pid).is_some_and(|s| s.ppid == ppid && s.state != 'Z'))
        .collect();
    out.sort_unstable();
    out
}

/// Number of open file descriptors of `pid` (0 when it cannot be read).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Voluntary plus involuntary context switches of `pid`, from `/proc/<pid>/status`.
pub fn context_switches(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(
        status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum(),
    )
}

/// The blocked-signal mask (`SigBlk`) of `pid`, from `/proc/<pid>/status`.
pub fn blocked_signals(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("SigBlk:"))?;
    u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_command_with_spaces_and_parens() {
        let line = "42 (a b) c)) S 7 42 42 0 -1 4194560 1 0 0 0 30 12 0 0 20 0 1 0 5 100 250 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = Stat::parse(line).unwrap();
        assert_eq!(
            (s.state, s.ppid, s.cpu_ticks, s.rss_pages, s.policy),
            ('S', 7, 42, 250, 0)
        );
        assert_eq!(s.cpu(), Duration::from_millis(420));
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let s = Stat::read(me).unwrap();
        assert_eq!(s.ppid, std::os::unix::process::parent_id());
        assert!(s.rss_bytes() > 0 && fd_count(me) > 0 && alive(me));
        assert!(context_switches(me).is_some() && blocked_signals(me).is_some());
    }
}
