//! A hashed timer wheel: O(1) insert, expiry proportional to the entries due. Entries are never
//! removed early; owners check on expiry whether the entry is still current (lazy cancellation),
//! which keeps connection activity from touching the wheel at all.

use std::time::{Duration, Instant};

/// Timer resolution. Connection timeouts and pings do not need more.
pub const TICK: Duration = Duration::from_millis(10);
const SLOTS: usize = 1024;

pub struct Wheel<T> {
    origin: Instant,
    /// Ticks before this one have been expired.
    current: u64,
    slots: Vec<Vec<(u64, T)>>,
    len: usize,
}

impl<T> Wheel<T> {
    pub fn new(origin: Instant) -> Wheel<T> {
        Wheel {
            origin,
            current: 0,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            len: 0,
        }
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn tick_of(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.origin);
        (d.as_nanos() / TICK.as_nanos()) as u64
    }

    /// Schedules `item` to expire at `deadline` (rounded up to the next tick).
    pub fn insert(&mut self, deadline: Instant, item: T) {
        let d = deadline.saturating_duration_since(self.origin);
        let due = (d.as_nanos().div_ceil(TICK.as_nanos()) as u64).max(self.current);
        self.slots[(due % SLOTS as u64) as usize].push((due, item));
        self.len += 1;
    }

    /// How long the reactor may sleep: until the first non-empty slot (possibly early when that
    /// slot's entries belong to a later turn of the wheel, which is harmless).
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if self.len == 0 {
            return None;
        }
        let now_tick = self.tick_of(now);
        for offset in 0..SLOTS as u64 {
            let tick = self.current + offset;
            if !self.slots[(tick % SLOTS as u64) as usize].is_empty() {
                if tick <= now_tick {
                    return Some(Duration::ZERO);
                }
                let at = self.origin + TICK * (tick as u32);
                return Some(at.saturating_duration_since(now));
            }
        }
        Some(TICK * SLOTS as u32)
    }

    /// Moves expired entries (deadline <= now) into `out`.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<T>) {
        let now_tick = self.tick_of(now);
        if now_tick < self.current {
            return;
        }
        let span = (now_tick - self.current + 1).min(SLOTS as u64);
        for offset in 0..span {
            let idx = ((self.current + offset) % SLOTS as u64) as usize;
            let slot = &mut self.slots[idx];
            let mut i = 0;
            while i < slot.len() {
                if slot[i].0 <= now_tick {
                    let (_, item) = slot.swap_remove(i);
                    out.push(item);
                    self.len -= 1;
                } else {
                    i += 1;
                }
            }
            // A burst (thousands of connections opened in one tick) leaves its slot's capacity
            // behind: give back what is far more than the slot now holds.
            if slot.capacity() > 16 && slot.len() * 4 < slot.capacity() {
                slot.shrink_to(slot.len() * 2);
            }
        }
        self.current = now_tick + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_order_of_ticks() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        w.insert(t0 + Duration::from_millis(50), "b");
        w.insert(t0 + Duration::from_millis(20), "a");
        w.insert(t0 + Duration::from_secs(30), "far");
        let mut out = Vec::new();
        w.expire(t0 + Duration::from_millis(19), &mut out);
        assert!(out.is_empty());
        w.expire(t0 + Duration::from_millis(20), &mut out);
        assert_eq!(out, vec!["a"]);
        w.expire(t0 + Duration::from_millis(60), &mut out);
        assert_eq!(out, vec!["a", "b"]);
        // 30 s is several turns of the wheel away: passing its slot early must not fire it.
        w.expire(t0 + Duration::from_secs(11), &mut out);
        assert_eq!(out.len(), 2);
        w.expire(t0 + Duration::from_secs(30), &mut out);
        assert_eq!(out, vec!["a", "b", "far"]);
        assert!(w.is_empty());
    }

    #[test]
    fn next_timeout_points_at_first_entry() {
        let t0 = Instant::now();
        let mut w: Wheel<u8> = Wheel::new(t0);
        assert_eq!(w.next_timeout(t0), None);
        w.insert(t0 + Duration::from_millis(100), 1);
        let d = w.next_timeout(t0).unwrap();
        assert!(
            d <= Duration::from_millis(100) && d >= Duration::from_millis(90),
            "{d:?}"
        );
        assert_eq!(
            w.next_timeout(t0 + Duration::from_secs(1)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn past_deadlines_fire_on_next_expire() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        let mut out = Vec::new();
        w.expire(t0 + Duration::from_secs(1), &mut out);
        // A deadline already past fires on the next tick.
        w.insert(t0, 9);
        w.expire(t0 + Duration::from_secs(1) + TICK, &mut out);
        assert_eq!(out, vec![9]);
    }
}
