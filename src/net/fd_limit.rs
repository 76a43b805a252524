//! The process's open-file limit. Every connection is a file descriptor, and distributions start
//! programs with a soft limit of 1,024 (the hard limit is usually far higher): left there, the
//! server would stop accepting at about a thousand connections, whatever `max_connections` says.
//! So at start the soft limit is raised as far as the server can use it, within the hard limit
//! (which only the operator can raise: systemd `LimitNOFILE=`, `ulimit -Hn`).

/// Descriptors wanted beyond the client connections: listeners, the database file and its WAL,
/// pooled MySQL and Redis connections, the log, outbound HTTPS calls.
pub const RESERVED: u64 = 1024;

/// The limits in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub soft: u64,
    pub hard: u64,
}

/// The current limits.
pub fn current() -> std::io::Result<Limits> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Limits {
        soft: r.rlim_cur,
        hard: r.rlim_max,
    })
}

/// The highest soft limit this process can set: the hard limit, and never above the kernel's
/// `fs.nr_open` (a hard limit of "unlimited" still stops there).
pub fn ceiling() -> std::io::Result<u64> {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    Ok(current()?.hard.min(nr_open))
}

/// Raises the soft limit to `wanted`, or as far as `ceiling()` allows when that is lower; never
/// lowers it. Returns the limits in force afterwards.
pub fn raise_to(wanted: u64) -> std::io::Result<Limits> {
    let now = current()?;
    let target = wanted.min(ceiling()?);
    if now.soft >= target {
        return Ok(now);
    }
    let r = libc::rlimit {
        rlim_cur: target,
        rlim_max: now.hard,
    };
    // SAFETY: setrlimit reads one rlimit we own; a soft limit within the hard one needs no
    // privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    current()
}

/// What the limits in force leave of `max_connections`: None when they suffice, else the one
/// line for the operator, with the number of connections that will actually fit and the hard
/// limit that would reach `max_connections`.
pub fn shortfall(max_connections: u64, limits: Limits) -> Option<String> {
    let wanted = max_connections.saturating_add(RESERVED);
    if limits.soft >= wanted {
        return None;
    }
    // The soft limit is normally the hard one by now; when it is lower, the kernel's
    // fs.nr_open (or a failed raise) stopped it, and that is the figure that counts.
    let by = if limits.soft < limits.hard {
        format!("soft limit {} (hard {})", limits.soft, limits.hard)
    } else {
        format!("hard limit {}", limits.hard)
    };
    Some(format!(
        "open-file limit: {by} allows about {} connections of [server] max_connections = \
         {max_connections}; raise LimitNOFILE= (systemd) or ulimit -Hn to {wanted} to reach \
         {max_connections}",
        limits.soft.saturating_sub(RESERVED),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortfall_names_the_connections_that_fit() {
        let l = |soft, hard| Limits { soft, hard };
        assert_eq!(shortfall(1000, l(2024, 2024)), None);
        assert_eq!(shortfall(1000, l(4096, 1 << 20)), None);
        assert_eq!(
            shortfall(100_000, l(20_000, 20_000)).as_deref(),
            Some(
                "open-file limit: hard limit 20000 allows about 18976 connections of \
                 [server] max_connections = 100000; raise LimitNOFILE= (systemd) or ulimit -Hn \
                 to 101024 to reach 100000"
            )
        );
        let capped = shortfall(100_000, l(65_536, u64::MAX)).unwrap();
        assert!(
            capped.contains("soft limit 65536 (hard 18446744073709551615) allows about 64512"),
            "{capped}"
        );
        // Below the reserve: nothing is promised, and nothing underflows.
        assert!(shortfall(10, l(256, 256))
            .unwrap()
            .contains("about 0 connections"));
        assert!(shortfall(u64::MAX, l(256, 256)).is_some());
    }

    /// Only what cannot disturb other tests in this process: asking for no more than the soft
    /// limit changes nothing. (Raising is tested on the binary, in tests/cli.rs.)
    #[test]
    fn asking_for_less_than_the_soft_limit_changes_nothing() {
        let before = current().unwrap();
        assert!(before.soft <= before.hard);
        assert!(ceiling().unwrap() <= before.hard && ceiling().unwrap() >= before.soft);
        assert_eq!(raise_to(before.soft.saturating_sub(1)).unwrap(), before);
        assert_eq!(raise_to(0).unwrap(), before);
        assert_eq!(current().unwrap(), before);
    }
}
