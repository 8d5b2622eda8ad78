//! The controller's clocks. Every duration the planner judges (report ages, leases,
//! failure timeouts) is measured on a monotonic clock: an NTP step of the wall clock must
//! not make fresh reports look old (a failover) or old ones fresh (a missed one). The
//! wall clock only stamps events, which operators read beside their logs.
//!
//! The monotonic clock reads as milliseconds since the Unix epoch as of the process
//! start, plus the monotonic time elapsed since, so its values look like wall time
//! (and stay comparable with what the controller keeps in memory) but never jump.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A monotonic millisecond clock anchored at a wall-clock reading.
pub struct Clock {
    start: Instant,
    wall_at_start_ms: u64,
}

impl Clock {
    pub fn anchored_at(wall_at_start_ms: u64) -> Self {
        Clock {
            start: Instant::now(),
            wall_at_start_ms,
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.wall_at_start_ms + self.start.elapsed().as_millis() as u64
    }
}

/// The controller's monotonic "now", read in the I/O shell and passed to the planner as
/// data.
pub fn now_ms() -> u64 {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    CLOCK.get_or_init(|| Clock::anchored_at(wall_ms())).now_ms()
}
