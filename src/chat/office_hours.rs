//! Office hours of the customer-service desk: `"mon-fri 09:00-18:00"`, `"sat,sun 10:00-16:00"`,
//! `"09:00-21:00"` (every day) or empty (always open), in a fixed UTC offset such as `"+08:00"`.
//! A range whose end is before its start runs past midnight (`"22:00-06:00"`); its early-morning
//! part belongs to the day it started on.

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfficeHours {
    /// None: always open.
    window: Option<Window>,
    offset_s: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Window {
    /// Bit 0 = Monday .. bit 6 = Sunday.
    days: u8,
    start_min: u32,
    end_min: u32,
}

impl OfficeHours {
    pub fn parse(spec: &str, utc_offset: &str) -> Result<OfficeHours, String> {
        let offset_s = parse_offset(utc_offset)?;
        let spec = spec.trim().to_ascii_lowercase();
        if spec.is_empty() {
            return Ok(OfficeHours {
                window: None,
                offset_s,
            });
        }
        let (days, times) = match spec.split_once(char::is_whitespace) {
            Some((d, t)) => (parse_days(d)?, t.trim()),
            None => (0x7f, spec.as_str()),
        };
        let (a, b) = times
            .split_once('-')
            .ok_or_else(|| format!("{times:?} is not a range like 09:00-18:00"))?;
        let (start_min, end_min) = (parse_time(a)?, parse_time(b)?);
        if start_min == end_min {
            return Err("office hours must not start and end at the same time".into());
        }
        Ok(OfficeHours {
            window: Some(Window {
                days,
                start_min,
                end_min,
            }),
            offset_s,
        })
    }

    /// Whether the desk is open at this Unix time (seconds).
    pub fn is_open(&self, unix_s: i64) -> bool {
        let Some(w) = &self.window else {
            return true;
        };
        let local = unix_s + self.offset_s;
        let day_index = local.div_euclid(86_400);
        // 1970-01-01 was a Thursday (index 3 with Monday = 0).
        let weekday = (day_index + 3).rem_euclid(7) as u32;
        let minute = (local.rem_euclid(86_400) / 60) as u32;
        let on = |d: u32| w.days & (1 << d) != 0;
        if w.start_min < w.end_min {
            on(weekday) && (w.start_min..w.end_min).contains(&minute)
        } else {
            // Past midnight: the evening part today, or the morning part of yesterday's range.
            (on(weekday) && minute >= w.start_min) || (on((weekday + 6) % 7) && minute < w.end_min)
        }
    }
}

fn parse_offset(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not a UTC offset like +08:00");
    let s = s.trim();
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(bad()),
    };
    let minutes = parse_time(rest).map_err(|_| bad())?;
    if minutes > 14 * 60 {
        return Err(bad());
    }
    Ok(sign * i64::from(minutes) * 60)
}

fn parse_days(s: &str) -> Result<u8, String> {
    let day = |name: &str| {
        DAY_NAMES
            .iter()
            .position(|d| *d == name)
            .ok_or_else(|| format!("unknown day {name:?} (mon..sun)"))
    };
    let mut mask = 0u8;
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    mask |= 1 << d;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => mask |= 1 << day(part)?,
        }
    }
    Ok(mask)
}

/// "HH:MM" -> minutes after midnight ("24:00" allowed as an end).
fn parse_time(s: &str) -> Result<u32, String> {
    let bad = || format!("{s:?} is not a time like 09:30");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix seconds of 2026-11-23 (a Monday) at hh:mm in UTC+8.
    fn monday_cst(hh: i64, mm: i64) -> i64 {
        // 2026-11-23 00:00 UTC = 1_795_392_000.
        1_795_392_000 + hh * 3600 + mm * 60 - 8 * 3600
    }

    #[test]
    fn weekday_ranges_in_a_time_zone() {
        let h = OfficeHours::parse("mon-fri 09:00-18:00", "+08:00").unwrap();
        assert!(!h.is_open(monday_cst(8, 59)));
        assert!(h.is_open(monday_cst(9, 0)));
        assert!(h.is_open(monday_cst(17, 59)));
        assert!(!h.is_open(monday_cst(18, 0)));
        // Saturday and Sunday are closed, Friday open.
        assert!(!h.is_open(monday_cst(12, 0) - 2 * 86_400));
        assert!(!h.is_open(monday_cst(12, 0) - 86_400));
        assert!(h.is_open(monday_cst(12, 0) + 4 * 86_400));
        // The same instant seen from UTC+0 office hours is 04:00 Monday: closed.
        let utc = OfficeHours::parse("mon-fri 09:00-18:00", "+00:00").unwrap();
        assert!(!utc.is_open(monday_cst(12, 0)));
    }

    #[test]
    fn overnight_lists_and_always_open() {
        let night = OfficeHours::parse("fri,sat 22:00-06:00", "+08:00").unwrap();
        let saturday = monday_cst(0, 0) - 2 * 86_400;
        assert!(night.is_open(saturday - 86_400 + 23 * 3600), "Friday 23:00");
        assert!(
            night.is_open(saturday + 5 * 3600),
            "Saturday 05:00 (Friday's night)"
        );
        assert!(
            night.is_open(saturday + 86_400 + 3600),
            "Sunday 01:00 (Saturday's night)"
        );
        assert!(
            !night.is_open(saturday + 86_400 + 23 * 3600),
            "Sunday 23:00"
        );
        assert!(!night.is_open(saturday + 12 * 3600), "Saturday noon");
        let always = OfficeHours::parse("", "+08:00").unwrap();
        assert!(always.is_open(0) && always.is_open(monday_cst(3, 0)));
        let daily = OfficeHours::parse("08:00-24:00", "-05:30").unwrap();
        assert!(daily.is_open(12 * 3600 + 5 * 3600 + 1800));
    }

    #[test]
    fn nonsense_is_refused() {
        for (spec, off) in [
            ("mon-fri", "+08:00"),
            ("mon-xyz 09:00-18:00", "+08:00"),
            ("09:00-09:00", "+08:00"),
            ("9-18", "+08:00"),
            ("09:60-18:00", "+08:00"),
            ("25:00-26:00", "+08:00"),
            ("09:00-18:00", "08:00"),
            ("09:00-18:00", "+15:00"),
        ] {
            assert!(OfficeHours::parse(spec, off).is_err(), "{spec} {off}");
        }
    }
}
