//! The clock every runtime reads: CLOCK_BOOTTIME, which keeps running through system suspend
//! (DESIGN.md §5), in milliseconds. Pure cores never call this; they receive `now` as input.

/// Milliseconds on CLOCK_BOOTTIME; monotonic, includes time spent suspended.
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// Microseconds on CLOCK_BOOTTIME.
pub fn now_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on every Linux we run on.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME) failed");
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

#[cfg(test)]
mod tests {
    #[test]
    fn boottime_moves_forward() {
        let a = super::now_us();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(super::now_us() >= a + 2000);
    }
}
