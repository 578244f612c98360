//! Bounded histories for hosts that run until stopped (the `serve` gateway): log lines,
//! hostcall errors and histogram samples keep only their most recent entries. Tests and benches
//! keep everything.

/// History kept per VM when bounded (at most twice this).
pub const HISTORY_CAP: usize = 4096;

/// Drops the oldest entries once `v` holds twice `cap`, keeping the newest `cap` (amortised
/// O(1) per push).
pub fn keep_recent<T>(v: &mut Vec<T>, cap: usize) {
    if v.len() > cap.saturating_mul(2) {
        v.drain(..v.len() - cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_recent_bounds_and_keeps_the_newest() {
        let mut v = Vec::new();
        for i in 0..10_000u32 {
            v.push(i);
            keep_recent(&mut v, 100);
            assert!(v.len() <= 200);
        }
        assert_eq!(v.last(), Some(&9_999));
        assert!(v.len() >= 100);
        assert!(v.windows(2).all(|w| w[1] == w[0] + 1), "a contiguous newest run");
    }
}
