//! Wall-clock time, the one definition every process uses: envelope timestamps, loadgen
//! commands, sink lag, reconcile's clock, the gateway's rate windows and the streams runtime's
//! `SystemClock` all read [`now_ms`], so they agree on what "now" is and on what a broken host
//! clock gives.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch on this machine's clock.
///
/// A clock set before 1970 is a broken host; 0 is as good a value as any there, and better than
/// a panic. Saturates at `i64::MAX` (some 292 million years out) rather than wrapping.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_after_2020_and_moves_forward() {
        let a = now_ms();
        // 2020-01-01T00:00:00Z: any host running this has a clock past it.
        assert!(a > 1_577_836_800_000, "{a}");
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(now_ms() >= a);
    }
}
