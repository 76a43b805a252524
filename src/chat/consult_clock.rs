//! A timed consultation's clock, as pure rules over [`Live`] (no I/O; the time is passed in):
//! when it runs, what a tick announces, when the next tick is due. `consult.rs` carries the
//! outcomes out (pushes, saves, timers). Held by the state owner through `chat::state`.

use crate::rt::timer::AppTimer;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Whole seconds a client is shown for `ms` (rounded up: 0 only when nothing is left).
pub fn secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// `[consult]`'s timing settings, in the units the rules use.
#[derive(Clone, Debug)]
pub struct Rules {
    /// Warning thresholds, ms of remaining time.
    pub warn_at_ms: Vec<u64>,
    /// How often both sides are told the remaining time.
    pub report_every: Duration,
}

impl Rules {
    pub fn of(c: &crate::config::ConsultConfig) -> Rules {
        Rules {
            warn_at_ms: c.warn_at_s.iter().map(|s| s * 1000).collect(),
            report_every: Duration::from_secs(c.report_every_s),
        }
    }
}

/// What a presence change did to the clock.
#[derive(Debug, PartialEq)]
pub enum Change {
    None,
    /// Both sides are online: the clock runs from now.
    Started,
    /// A side left (or the time is up): the clock stopped; its pending tick is to be cancelled.
    Paused(Option<AppTimer>),
}

/// What a tick of a running clock announces.
#[derive(Debug, PartialEq)]
pub enum Tick {
    /// The clock is not running (a stale timer).
    Idle,
    /// No time left: the consultation ended.
    Ended,
    /// A warning threshold was crossed.
    Warning,
    /// The periodic report of the remaining time is due.
    Report,
    /// Nothing to announce yet.
    Quiet,
}

/// A consultation held in memory while one of its two sides is connected here.
pub struct Live {
    pub user: u64,
    pub consultant: u64,
    pub total_ms: u64,
    /// As of `since` while running; current otherwise.
    pub remaining_ms: u64,
    pub since: Option<Instant>,
    /// Used but not yet saved.
    pub unsaved_ms: u64,
    pub ended: bool,
    /// Thresholds (ms) already announced.
    pub warned: Vec<u64>,
    pub last_report: Instant,
    pub timer: Option<AppTimer>,
}

impl Live {
    pub fn sides(&self) -> [u64; 2] {
        [self.user, self.consultant]
    }

    /// The remaining time at `now` (without settling), and whether it runs.
    pub fn remaining_at(&self, now: Instant) -> (u64, bool) {
        match self.since {
            Some(since) => {
                let run = now.saturating_duration_since(since).as_millis() as u64;
                (self.remaining_ms.saturating_sub(run), true)
            }
            None => (self.remaining_ms, false),
        }
    }

    /// Brings `remaining_ms` up to `now` (running consultations).
    pub fn settle(&mut self, now: Instant) {
        if let Some(since) = self.since {
            let used =
                (now.saturating_duration_since(since).as_millis() as u64).min(self.remaining_ms);
            self.remaining_ms -= used;
            self.unsaved_ms += used;
            self.since = Some(now);
        }
    }
}

#[derive(Default)]
pub struct Consults {
    pub live: HashMap<u64, Live>,
    /// uid -> the live consultations they take part in.
    pub by_user: HashMap<u64, Vec<u64>>,
    pub save_armed: bool,
}

impl Consults {
    /// Consultations held in memory.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The live consultations `uid` takes part in.
    pub fn of(&self, uid: u64) -> Vec<u64> {
        self.by_user.get(&uid).cloned().unwrap_or_default()
    }

    /// The two sides of a live consultation.
    pub fn sides(&self, id: u64) -> Option<[u64; 2]> {
        self.live.get(&id).map(Live::sides)
    }
}

impl Live {
    /// The clock after a presence change: it runs while both sides are online, time remains
    /// and it has not ended.
    pub fn presence(&mut self, both_online: bool, now: Instant) -> Change {
        let should_run = both_online && !self.ended && self.remaining_ms > 0;
        match (should_run, self.since.is_some()) {
            (true, false) => {
                self.since = Some(now);
                self.last_report = now;
                Change::Started
            }
            (false, true) => {
                self.settle(now);
                self.since = None;
                Change::Paused(self.timer.take())
            }
            _ => Change::None,
        }
    }

    /// A tick at `now`: settles the clock and says what to announce. Timers fire a little
    /// late, so a threshold counts as crossed within 50 ms of it.
    pub fn tick(&mut self, rules: &Rules, now: Instant) -> Tick {
        if self.since.is_none() {
            return Tick::Idle;
        }
        self.settle(now);
        if self.remaining_ms == 0 {
            self.ended = true;
            self.since = None;
            return Tick::Ended;
        }
        let crossed: Vec<u64> = rules
            .warn_at_ms
            .iter()
            .copied()
            .filter(|t| self.remaining_ms <= t + 50 && !self.warned.contains(t))
            .collect();
        let report_due = now >= self.last_report + rules.report_every;
        if report_due {
            self.last_report = now;
        }
        if !crossed.is_empty() {
            self.warned.extend(crossed);
            Tick::Warning
        } else if report_due {
            Tick::Report
        } else {
            Tick::Quiet
        }
    }

    /// How long until the next tick: zero time left, the next unannounced warning, or the next
    /// report, whichever comes first.
    pub fn next_event_in(&self, rules: &Rules, now: Instant) -> Duration {
        let mut next_ms = self.remaining_ms;
        for &t in &rules.warn_at_ms {
            if t < self.remaining_ms && !self.warned.contains(&t) {
                next_ms = next_ms.min(self.remaining_ms - t);
            }
        }
        let until_report = (self.last_report + rules.report_every).saturating_duration_since(now);
        Duration::from_millis(next_ms).min(until_report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(remaining_ms: u64, now: Instant) -> Live {
        Live {
            user: 1,
            consultant: 2,
            total_ms: remaining_ms,
            remaining_ms,
            since: None,
            unsaved_ms: 0,
            ended: false,
            warned: Vec::new(),
            last_report: now,
            timer: None,
        }
    }

    fn rules() -> Rules {
        Rules {
            warn_at_ms: vec![60_000, 10_000],
            report_every: Duration::from_secs(30),
        }
    }

    #[test]
    fn the_clock_runs_only_while_both_sides_are_online() {
        let t0 = Instant::now();
        let mut l = live(120_000, t0);
        assert_eq!(l.presence(false, t0), Change::None);
        assert_eq!(l.presence(true, t0), Change::Started);
        assert_eq!(l.presence(true, t0), Change::None);
        let t1 = t0 + Duration::from_secs(20);
        assert_eq!(l.remaining_at(t1), (100_000, true));
        assert_eq!(l.presence(false, t1), Change::Paused(None));
        assert_eq!((l.remaining_ms, l.unsaved_ms), (100_000, 20_000));
        // Paused: the time stands still.
        assert_eq!(
            l.remaining_at(t1 + Duration::from_secs(60)),
            (100_000, false)
        );
    }

    #[test]
    fn ticks_announce_reports_warnings_and_the_end() {
        let t0 = Instant::now();
        let mut l = live(70_000, t0);
        let r = rules();
        l.presence(true, t0);
        // First event: the 60 s warning, 10 s from now (before the 30 s report).
        assert_eq!(l.next_event_in(&r, t0), Duration::from_secs(10));
        // A timer firing 30 ms early still counts the threshold as crossed.
        assert_eq!(l.tick(&r, t0 + Duration::from_millis(9_970)), Tick::Warning);
        assert_eq!(l.warned, vec![60_000]);
        assert_eq!(l.tick(&r, t0 + Duration::from_secs(30)), Tick::Report);
        assert_eq!(l.tick(&r, t0 + Duration::from_secs(31)), Tick::Quiet);
        assert_eq!(l.tick(&r, t0 + Duration::from_secs(61)), Tick::Warning);
        assert_eq!(l.tick(&r, t0 + Duration::from_secs(75)), Tick::Ended);
        assert!(l.ended && l.since.is_none() && l.remaining_ms == 0);
        assert_eq!(l.unsaved_ms, 70_000, "exactly the bought time was used");
        // Ended: presence no longer starts it.
        assert_eq!(l.presence(true, t0 + Duration::from_secs(80)), Change::None);
        assert_eq!(l.tick(&r, t0 + Duration::from_secs(90)), Tick::Idle);
    }

    #[test]
    fn shown_seconds_round_up() {
        assert_eq!((secs(0), secs(1), secs(1000), secs(1001)), (0, 1, 1, 2));
    }
}
