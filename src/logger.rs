//! A small `log` backend: one line per record to stderr or to a file that SIGHUP reopens (so
//! logrotate can move it away). Timestamps are UTC, RFC 3339 with milliseconds.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

enum Sink {
    Stderr,
    File { path: PathBuf, file: File },
}

struct Logger {
    sink: Mutex<Sink>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

fn is_third_party_http(target: &str) -> bool {
    ["ureq", "rustls", "mysql", "redis"].iter().any(|t| {
        target == *t
            || target.starts_with(&format!("{t}::"))
            || target.starts_with(&format!("{t}_"))
    })
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        if metadata.level() > log::max_level() {
            return false;
        }
        // Libraries that log request URLs at debug level would log WeChat app secrets (they
        // travel in query strings): only their warnings and errors get through.
        if metadata.level() > log::Level::Warn && is_third_party_http(metadata.target()) {
            return false;
        }
        true
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!(
            "{} {:5} {}: {}\n",
            rfc3339_now(),
            record.level(),
            record.target(),
            record.args()
        );
        let mut sink = match self.sink.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        // A failed log write has nowhere to be reported; dropping the line is the only option.
        let _ = match &mut *sink {
            Sink::Stderr => std::io::stderr().write_all(line.as_bytes()),
            Sink::File { file, .. } => file.write_all(line.as_bytes()),
        };
    }

    fn flush(&self) {
        if let Ok(mut sink) = self.sink.lock() {
            let _ = match &mut *sink {
                Sink::Stderr => std::io::stderr().flush(),
                Sink::File { file, .. } => file.flush(),
            };
        }
    }
}

fn open_append(path: &PathBuf) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Installs the logger (once per process; later calls only change the level and sink).
pub fn init(level: log::LevelFilter, file: Option<PathBuf>) -> std::io::Result<()> {
    let sink = match file {
        Some(path) => Sink::File {
            file: open_append(&path)?,
            path,
        },
        None => Sink::Stderr,
    };
    match LOGGER.get() {
        Some(existing) => {
            if let Ok(mut s) = existing.sink.lock() {
                *s = sink;
            }
        }
        None => {
            let logger = LOGGER.get_or_init(|| Logger {
                sink: Mutex::new(sink),
            });
            // Another logger may already be set (tests): then ours stays unused, which is fine.
            let _ = log::set_logger(logger);
        }
    }
    log::set_max_level(level);
    Ok(())
}

/// Reopens the log file (SIGHUP). A no-op when logging to stderr.
pub fn reopen() -> std::io::Result<()> {
    let Some(logger) = LOGGER.get() else {
        return Ok(());
    };
    let mut sink = match logger.sink.lock() {
        Ok(s) => s,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Sink::File { path, file } = &mut *sink {
        *file = open_append(path)?;
    }
    Ok(())
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_millis())
}

/// Formats Unix seconds + milliseconds as RFC 3339 UTC.
pub fn rfc3339(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_409_735_669, 7), "2014-09-03T09:14:29.007Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(4_102_444_799, 999), "2099-12-31T23:59:59.999Z");
    }
}
