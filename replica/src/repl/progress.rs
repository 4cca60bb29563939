//! The catch-up meter of a follower's stream: bytes and records received, the rate over the
//! last second or so, and from them how much is left and how long it should take
//! ([`CatchUp`]). Pure (times come in as arguments); the stream loop (`follower.rs`) feeds it
//! and publishes what it says on the node for status, heartbeats, metrics and the log.

use baton_common::api::CatchUp;

/// A rate is measured over windows this long (the window restarts after it)...
const WINDOW_MS: u64 = 1000;
/// ...and first said once this much of a window has passed (a catch-up of a second or less
/// still shows a rate and an ETA).
const FIRST_RATE_MS: u64 = 250;

/// One catch-up: a log stream that is behind, or a snapshot install.
#[derive(Clone, Debug)]
pub struct Meter {
    what: &'static str,
    started_ms: u64,
    bytes: u64,
    records: u64,
    /// (time, bytes, records) at the start of the current window.
    mark: (u64, u64, u64),
    bytes_per_s: u64,
    records_per_s: u64,
}

impl Meter {
    /// A catch-up of the log (`snapshot = false`) or a snapshot install, starting at `now_ms`.
    pub fn new(snapshot: bool, now_ms: u64) -> Meter {
        Meter {
            what: if snapshot { "snapshot" } else { "log" },
            started_ms: now_ms,
            bytes: 0,
            records: 0,
            mark: (now_ms, 0, 0),
            bytes_per_s: 0,
            records_per_s: 0,
        }
    }

    /// `bytes` and `records` more were received at `now_ms`.
    pub fn add(&mut self, now_ms: u64, bytes: u64, records: u64) {
        self.bytes += bytes;
        self.records += records;
        let elapsed = now_ms.saturating_sub(self.mark.0);
        if elapsed >= FIRST_RATE_MS {
            self.bytes_per_s = (self.bytes - self.mark.1) * 1000 / elapsed;
            self.records_per_s = (self.records - self.mark.2) * 1000 / elapsed;
        }
        if elapsed >= WINDOW_MS {
            self.mark = (now_ms, self.bytes, self.records);
        }
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records received so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Since the start, at `now_ms`.
    pub fn elapsed_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.started_ms)
    }

    /// Where a log catch-up stands with `records_remaining` records still to come.
    pub fn log(&self, now_ms: u64, records_remaining: u64) -> CatchUp {
        let mean = self.bytes.checked_div(self.records).unwrap_or(0);
        let eta_ms = (self.records_per_s > 0)
            .then(|| records_remaining.saturating_mul(1000) / self.records_per_s);
        CatchUp {
            what: self.what.into(),
            bytes_done: self.bytes,
            bytes_remaining: records_remaining.saturating_mul(mean),
            records_remaining,
            bytes_per_s: self.bytes_per_s,
            records_per_s: self.records_per_s,
            eta_ms,
            elapsed_ms: self.elapsed_ms(now_ms),
        }
    }

    /// Where a snapshot install of `total` bytes stands.
    pub fn snapshot(&self, now_ms: u64, total: u64) -> CatchUp {
        let left = total.saturating_sub(self.bytes);
        CatchUp {
            what: self.what.into(),
            bytes_done: self.bytes,
            bytes_remaining: left,
            records_remaining: 0,
            bytes_per_s: self.bytes_per_s,
            records_per_s: 0,
            eta_ms: (self.bytes_per_s > 0).then(|| left.saturating_mul(1000) / self.bytes_per_s),
            elapsed_ms: self.elapsed_ms(now_ms),
        }
    }
}

/// A person's line about `c` for the log: "3.2 MB of 10.0 MB left at 5.1 MB/s, about 2 s".
pub fn describe(c: &CatchUp) -> String {
    let eta = c.eta_ms.map_or_else(
        || "no rate yet".to_string(),
        |ms| format!("about {} s", ms.div_ceil(1000)),
    );
    let mb = |b: u64| b as f64 / 1e6;
    if c.what == "snapshot" {
        format!(
            "{:.1} MB received, {:.1} MB left at {:.1} MB/s, {eta}",
            mb(c.bytes_done),
            mb(c.bytes_remaining),
            mb(c.bytes_per_s)
        )
    } else {
        format!(
            "{} records (~{:.1} MB) left at {} records/s ({:.1} MB/s), {eta}",
            c.records_remaining,
            mb(c.bytes_remaining),
            c.records_per_s,
            mb(c.bytes_per_s)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_catch_up_gives_rate_bytes_left_and_eta() {
        let mut m = Meter::new(false, 10_000);
        let c = m.log(10_000, 5000);
        assert_eq!(
            (c.eta_ms, c.bytes_per_s),
            (None, 0),
            "no rate before a window"
        );
        let mut early = m.clone();
        early.add(10_100, 10_000, 100);
        assert_eq!(early.log(10_100, 4900).eta_ms, None, "nor 100 ms into it");
        early.add(10_250, 15_000, 150);
        assert_eq!(
            early.log(10_250, 4750).records_per_s,
            1000,
            "a first rate at 250 ms"
        );
        // 2000 records of 100 bytes in 1 s, then 1000 more in 0.5 s (not a window yet).
        m.add(10_500, 100_000, 1000);
        m.add(11_000, 100_000, 1000);
        m.add(11_500, 100_000, 1000);
        let c = m.log(11_500, 4000);
        assert_eq!(c.records_per_s, 2000);
        assert_eq!(c.bytes_per_s, 200_000);
        assert_eq!(c.bytes_done, 300_000);
        assert_eq!(
            c.bytes_remaining, 400_000,
            "records left × the mean record size"
        );
        assert_eq!(c.eta_ms, Some(2000));
        assert_eq!(c.elapsed_ms, 1500);
        assert!(describe(&c).contains("4000 records"), "{}", describe(&c));
    }

    #[test]
    fn a_snapshot_install_counts_down_its_announced_size() {
        let mut m = Meter::new(true, 0);
        m.add(2000, 4_000_000, 0);
        let c = m.snapshot(2000, 10_000_000);
        assert_eq!(c.what, "snapshot");
        assert_eq!((c.bytes_done, c.bytes_remaining), (4_000_000, 6_000_000));
        assert_eq!(c.bytes_per_s, 2_000_000);
        assert_eq!(c.eta_ms, Some(3000));
        assert!(describe(&c).contains("6.0 MB left"), "{}", describe(&c));
    }
}
