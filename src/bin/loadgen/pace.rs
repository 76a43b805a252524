//! A rate offered as a stream of messages, each with its own due time: `--arrivals even` spaces
//! them exactly 1/rate apart, `--arrivals poisson` draws the gaps from an exponential
//! distribution (independent senders, as real users are). Topping up a budget once per loop turn
//! instead, as loadgen did before, sends a millisecond's worth at once: ten messages stamped
//! with the same time at 10,000/s, so the last of each burst measured the nine before it.
//!
//! How late each message left against its due time is kept (`lag`), so a report shows whether
//! the generator kept to its schedule.

use crate::stats::Latencies;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrivals {
    Even,
    Poisson,
}

impl Arrivals {
    pub fn parse(v: &str) -> Result<Arrivals, String> {
        match v {
            "even" => Ok(Arrivals::Even),
            "poisson" => Ok(Arrivals::Poisson),
            _ => Err("--arrivals: even or poisson".into()),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Arrivals::Even => "even",
            Arrivals::Poisson => "poisson",
        }
    }
}

/// At most this much of the schedule is kept waiting when every sender is at its in-flight
/// limit; older due times are dropped, as the budget's one-second cap did.
const MAX_BEHIND: Duration = Duration::from_secs(1);

pub struct Pacer {
    start: Instant,
    /// The next message's due time, in nanoseconds after `start`.
    next_due: u64,
    /// The mean gap between messages, in nanoseconds.
    gap: f64,
    arrivals: Arrivals,
    rng: u64,
    /// How late messages left against their due times.
    lag: Latencies,
}

impl Pacer {
    pub fn new(rate: u64, arrivals: Arrivals, start: Instant) -> Pacer {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64);
        let mut p = Pacer {
            start,
            next_due: 0,
            gap: 1e9 / rate.max(1) as f64,
            arrivals,
            rng: seed | 1,
            lag: Latencies::new(),
        };
        p.next_due = p.next_gap();
        p
    }

    fn at(&self, now: Instant) -> u64 {
        now.duration_since(self.start).as_nanos() as u64
    }

    /// Whether a message is due at `now`. Call [`Pacer::sent`] once it has been sent.
    pub fn due(&mut self, now: Instant) -> bool {
        let at = self.at(now);
        let oldest = at.saturating_sub(MAX_BEHIND.as_nanos() as u64);
        self.next_due = self.next_due.max(oldest);
        self.next_due <= at
    }

    /// The due message left at `now`: note how late it was and move to the next.
    pub fn sent(&mut self, now: Instant, measuring: bool) {
        if measuring {
            self.lag.record(self.at(now).saturating_sub(self.next_due));
        }
        self.next_due += self.next_gap();
    }

    /// How long until the next message is due (zero when one is).
    pub fn wait(&self, now: Instant) -> Duration {
        Duration::from_nanos(self.next_due.saturating_sub(self.at(now)))
    }

    /// How long a paced loop may wait for the network: until the next message is due, or (when
    /// one is due but every connection is at its in-flight limit) until an answer frees one.
    pub fn timeout(&self, blocked: bool) -> Duration {
        let turn = Duration::from_millis(1);
        if blocked {
            turn
        } else {
            self.wait(Instant::now()).min(turn)
        }
    }

    /// The report's line on the schedule: how late messages left against their due times.
    pub fn note(&mut self) -> String {
        format!(
            "; {} arrivals, left late by {}",
            self.arrivals.name(),
            self.lag.summary()
        )
    }

    fn next_gap(&mut self) -> u64 {
        match self.arrivals {
            Arrivals::Even => self.gap.round() as u64,
            Arrivals::Poisson => {
                // xorshift64*, then the exponential's inverse CDF; u in (0, 1].
                self.rng ^= self.rng >> 12;
                self.rng ^= self.rng << 25;
                self.rng ^= self.rng >> 27;
                let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
                let u = ((r >> 11) + 1) as f64 / (1u64 << 53) as f64;
                (-u.ln() * self.gap).round() as u64
            }
        }
    }
}

/// The next connection from `cursor` on (round robin over `n`) that `free` accepts, the cursor
/// moved past it; None when none does.
pub fn next_free(cursor: &mut usize, n: usize, free: impl Fn(usize) -> bool) -> Option<usize> {
    for _ in 0..n {
        let c = *cursor;
        *cursor = (*cursor + 1) % n;
        if free(c) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_due(p: &mut Pacer, start: Instant, until_ms: u64) -> usize {
        let now = start + Duration::from_millis(until_ms);
        let mut n = 0;
        while p.due(now) {
            p.sent(now, false);
            n += 1;
        }
        n
    }

    #[test]
    fn even_arrivals_are_one_gap_apart() {
        let start = Instant::now();
        let mut p = Pacer::new(10_000, Arrivals::Even, start);
        assert_eq!(count_due(&mut p, start, 0), 0);
        // 100 us apart: ten due by 1 ms (the first at 0.1 ms), then ten more by 2 ms.
        assert_eq!(count_due(&mut p, start, 1), 10);
        assert_eq!(count_due(&mut p, start, 2), 10);
        let w = p.wait(start + Duration::from_millis(2));
        assert!(
            w > Duration::from_micros(90) && w <= Duration::from_micros(100),
            "{w:?}"
        );
    }

    #[test]
    fn poisson_arrivals_keep_the_rate_on_average() {
        let start = Instant::now();
        let mut p = Pacer::new(10_000, Arrivals::Poisson, start);
        let n = count_due(&mut p, start, 1000);
        assert!((9_000..=11_000).contains(&n), "{n} in one second");
    }

    #[test]
    fn a_schedule_left_waiting_drops_what_is_older_than_a_second() {
        let start = Instant::now();
        let mut p = Pacer::new(1_000, Arrivals::Even, start);
        // Nothing sent for 5 s: one second's worth is due, not five.
        let n = count_due(&mut p, start, 5_000);
        assert!((1_000..=1_001).contains(&n), "{n}");
    }

    #[test]
    fn next_free_goes_round_and_skips_the_busy() {
        let mut cursor = 2;
        let busy = [false, true, true, false];
        assert_eq!(next_free(&mut cursor, 4, |c| !busy[c]), Some(3));
        assert_eq!(next_free(&mut cursor, 4, |c| !busy[c]), Some(0));
        assert_eq!(next_free(&mut cursor, 4, |c| !busy[c]), Some(3));
        assert_eq!(next_free(&mut cursor, 4, |_| false), None);
    }

    #[test]
    fn arrivals_parse() {
        assert_eq!(Arrivals::parse("even"), Ok(Arrivals::Even));
        assert_eq!(Arrivals::parse("poisson"), Ok(Arrivals::Poisson));
        assert!(Arrivals::parse("bursty").is_err());
    }
}
