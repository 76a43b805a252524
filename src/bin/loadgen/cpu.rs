//! CPU time from /proc: a process's own, and the time the hypervisor took from this machine's
//! cores (steal).
//!
//! Why steal: on a virtual machine the host may stop a core for milliseconds at a time. To the
//! server and to loadgen that looks like a thread that did not run, so a latency tail measured
//! across such a stop is the host's, not either process's (BENCHMARKS.md, sixteenth session:
//! p2p runs with messages evenly spaced had 120-180 ms of steal in about 6 s, and polls that
//! came back milliseconds late; runs with Poisson arrivals in the same minutes had none).
//! Every report says how much there was, so a run that had any can be told apart.

/// Clock ticks per second of the times in /proc.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// CPU seconds (user + system) of a process, from /proc/<pid>/stat; 0 when it cannot be read.
pub fn process_secs(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / ticks_per_second()
}

/// Seconds of steal summed over every core since boot, from /proc/stat; 0 when it cannot be
/// read (not Linux, or a kernel without the field).
pub fn steal_secs() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| steal_ticks(&s))
        .map_or(0.0, |t| t as f64 / ticks_per_second())
}

/// The steal field (the eighth number) of the all-cores `cpu` line of a /proc/stat text.
fn steal_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    line.split_whitespace().nth(8)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_number_of_the_all_cores_line() {
        let stat = "cpu  31420 326 4037 76750 842 0 1248 314 0 0\n\
                    cpu0 15000 100 2000 38000 400 0 600 200 0 0\n\
                    cpu1 16420 226 2037 38750 442 0 648 114 0 0\n\
                    intr 123\n";
        assert_eq!(steal_ticks(stat), Some(314));
    }

    #[test]
    fn a_stat_without_the_field_gives_none() {
        // Kernels before 2.6.11 stop after softirq.
        assert_eq!(steal_ticks("cpu  1 2 3 4 5 6 7\n"), None);
        assert_eq!(steal_ticks("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(steal_ticks(""), None);
    }

    #[test]
    fn this_machine_reads() {
        // The running kernel's /proc/stat has the field (Linux since 2.6.11).
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        assert!(steal_ticks(&stat).is_some(), "{stat}");
        // This process's CPU time shows once it has used a tick's worth.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut x = 0u64;
        while process_secs("self") == 0.0 && std::time::Instant::now() < until {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(process_secs("self") > 0.0);
        assert_eq!(process_secs("no-such-process"), 0.0);
    }
}
