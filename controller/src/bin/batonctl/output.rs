//! What every `batonctl` command prints through: lines and JSON on stdout (a closed pipe is not
//! an error), field readers for the controller's JSON answers, and wall-clock times for people
//! (local time, or UTC marked `Z` when the zone cannot be had).

use serde_json::Value;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn leader_id(v: &Value) -> Option<String> {
    v.get("leader")?.get("id")?.as_str().map(str::to_string)
}

pub fn s_or<'a>(v: &'a Value, key: &str, dflt: &'a str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or(dflt)
}

pub fn num_or_dash(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_u64)
        .map_or_else(|| "-".to_string(), |n| n.to_string())
}

pub fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// Prints lines to stdout; a closed pipe (`batonctl history | head`) is not an error.
/// `--json`: stdout carries only the JSON answer; the lines meant for a person (progress,
/// "waiting: …") go to stderr.
static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_json(on: bool) {
    JSON.store(on, std::sync::atomic::Ordering::Relaxed);
}

pub fn json_mode() -> bool {
    JSON.load(std::sync::atomic::Ordering::Relaxed)
}

/// Lines for a person: stdout, or stderr under `--json`.
pub fn print_lines(lines: &[String]) {
    let write = |out: &mut dyn std::io::Write| {
        for l in lines {
            if writeln!(out, "{l}").is_err() {
                return;
            }
        }
    };
    if json_mode() {
        write(&mut std::io::stderr().lock());
    } else {
        write(&mut std::io::stdout().lock());
    }
}

/// The machine-readable answer of a command under `--json` (nothing otherwise).
pub fn print_result(v: &serde_json::Value) {
    if json_mode() {
        print_json(v);
    }
}

/// A JSON answer, on stdout whatever the mode.
pub fn print_json(v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `YYYY-MM-DD HH:MM:SS` in the local time zone (UTC, marked `Z`, if it cannot be had).
pub fn local_time(unix_ms: u64) -> String {
    let secs = (unix_ms / 1000) as libc::time_t;
    // SAFETY: an all-zero `tm` is a valid value (integers and a null zone pointer), and
    // localtime_r writes only into the `tm` it is given.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !ok {
        return utc_time(unix_ms);
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// UTC civil time from Unix ms (Howard Hinnant's days-to-civil algorithm).
pub fn utc_time(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_fallback_formats_civil_time() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc_time(1_709_210_096_000), "2024-02-29 12:34:56Z");
    }
}
