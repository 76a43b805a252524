//! The `subscriber` CLI's readable line format: local time, topic, then the event's fields as
//! `key=value` (the identifying ones first); `serverInfo` gets a compact summary.

use serde_json::Value;
use std::fmt::Write;

/// Fields shown first, in this order, when present.
const LEADING: &[&str] = &["event", "kind", "api", "method", "ok", "uid"];

/// One line for one event.
pub fn readable(event: &Value) -> String {
    let topic = event.get("topic").and_then(Value::as_str).unwrap_or("?");
    let time = event.get("time").and_then(Value::as_i64).unwrap_or(0);
    let mut line = format!("{} {topic:<11}", local_time(time));
    if topic == "serverInfo" {
        line.push_str(&server_info(event));
        return line;
    }
    let Some(fields) = event.as_object() else {
        return line;
    };
    let rest = fields
        .keys()
        .filter(|k| !LEADING.contains(&k.as_str()))
        .map(String::as_str);
    for key in LEADING.iter().copied().chain(rest) {
        if key == "topic" || key == "time" {
            continue;
        }
        match fields.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => {
                let _ = write!(line, " {key}={}", value_text(v));
            }
        }
    }
    line
}

/// Strings bare unless they hold spaces, quotes or are empty; everything else as JSON.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() && !s.contains([' ', '"', '=', '\n', '\t']) => s.clone(),
        other => other.to_string(),
    }
}

fn server_info(v: &Value) -> String {
    let n = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let uptime = n("uptime_s") as u64;
    format!(
        " conns={} ws={} users={} subscribers={} in={:.1}/s out={:.1}/s persister={} lag={:.1}ms workers={} jobs={} service_queue={} consultations={} rss={:.1}MiB up={}",
        n("connections"),
        n("websockets"),
        n("users_online"),
        n("subscribers"),
        n("msgs_in_per_s"),
        n("msgs_out_per_s"),
        n("persister_queue"),
        n("persister_lag_ms"),
        n("worker_queue"),
        n("jobs_in_flight"),
        n("service_queue"),
        n("consultations"),
        n("rss_bytes") / (1024.0 * 1024.0),
        duration(uptime),
    )
}

/// `3d04h`, `2h05m`, `4m09s`, `12s`.
pub fn duration(s: u64) -> String {
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{sec:02}s")
    } else {
        format!("{sec}s")
    }
}

/// `HH:MM:SS.mmm` in the machine's local time zone.
fn local_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let t: libc::time_t = secs as libc::time_t;
    // SAFETY: localtime_r writes only into the tm we pass; both pointers are valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return format!("{secs}.{millis:03}");
    }
    format!(
        "{:02}:{:02}:{:02}.{millis:03}",
        tm.tm_hour, tm.tm_min, tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_read_as_key_value_lines() {
        let line = readable(&json!({
            "topic": "message", "time": 1_700_000_000_123i64, "msg_id": 9, "conv_id": "f_1_2",
            "from_id": 1, "to_id": 2, "msg_type": "text", "size": 5, "body": null
        }));
        assert!(line.contains(".123 message     "), "{line}");
        assert!(
            line.ends_with(" conv_id=f_1_2 from_id=1 msg_id=9 msg_type=text size=5 to_id=2"),
            "{line}"
        );
        let conn = readable(&json!({
            "topic": "connection", "time": 0, "reason": "closed by peer", "event": "close", "uid": 3
        }));
        assert!(
            conn.ends_with(" event=close uid=3 reason=\"closed by peer\""),
            "{conn}"
        );
    }

    #[test]
    fn server_info_is_summarised() {
        let line = readable(&json!({
            "topic": "serverInfo", "time": 0, "connections": 3, "websockets": 2, "users_online": 2,
            "msgs_in_per_s": 1.25, "rss_bytes": 10_485_760, "uptime_s": 3725
        }));
        assert!(line.contains(" conns=3 ws=2 users=2 "), "{line}");
        assert!(
            line.contains(" in=1.2/s ") || line.contains(" in=1.3/s "),
            "{line}"
        );
        assert!(line.contains(" rss=10.0MiB up=1h02m"), "{line}");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(duration(12), "12s");
        assert_eq!(duration(249), "4m09s");
        assert_eq!(duration(2 * 86_400 + 3 * 3600), "2d03h");
    }
}
