//! Whether this node's own runtime stalled lately: the process frozen
//! (SIGSTOP, a paused VM) or starved of CPU. A Redis command that timed
//! out across such a stall says nothing about Redis (its answer may sit
//! unread in the socket), so it must not mark Redis unreachable: a node
//! that cannot reach Redis serves its memory, availability first, and a
//! node just thawed has not yet heard of the writes other nodes made
//! meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How often the runtime's pulse is taken.
const PULSE: Duration = Duration::from_millis(50);
/// A pulse this late is a stall.
const STALL: Duration = Duration::from_millis(250);

/// The runtime's pulse, and when it last stalled.
#[derive(Debug)]
pub struct Stalls {
    origin: Instant,
    /// When the pulse was last taken (ns since `origin`).
    pulse_ns: AtomicU64,
    /// When a stall last ended (ns since `origin`; 0: never).
    stalled_ns: AtomicU64,
}

impl Default for Stalls {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            pulse_ns: AtomicU64::new(0),
            stalled_ns: AtomicU64::new(0),
        }
    }
}

impl Stalls {
    /// Takes the runtime's pulse until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut pulse = tokio::time::interval(PULSE);
        pulse.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = pulse.tick() => self.pulse_at(self.now_ns()),
            }
        }
    }

    /// Whether the runtime stalled within `window`, or stalls now (its
    /// pulse is late): then a command that waited up to `window` may have
    /// timed out for the stall alone.
    pub fn within(&self, window: Duration) -> bool {
        self.within_at(self.now_ns(), window)
    }

    fn pulse_at(&self, now_ns: u64) {
        let before = self.pulse_ns.swap(now_ns, Ordering::AcqRel);
        if before != 0 && now_ns.saturating_sub(before) > nanos(STALL) {
            self.stalled_ns.store(now_ns, Ordering::Release);
        }
    }

    fn within_at(&self, now_ns: u64, window: Duration) -> bool {
        let pulse = self.pulse_ns.load(Ordering::Acquire);
        let stalled = self.stalled_ns.load(Ordering::Acquire);
        let late = pulse != 0 && now_ns.saturating_sub(pulse) > nanos(STALL);
        late || (stalled != 0 && now_ns.saturating_sub(stalled) < nanos(window))
    }

    fn now_ns(&self) -> u64 {
        nanos(self.origin.elapsed())
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const WINDOW: Duration = Duration::from_secs(3);

    #[test]
    fn a_steady_pulse_is_no_stall() {
        let stalls = Stalls::default();
        for tick in 1..=100 {
            stalls.pulse_at(tick * 50 * MS);
        }
        assert!(!stalls.within_at(5_020 * MS, WINDOW));
    }

    #[test]
    fn a_late_pulse_is_a_stall_for_the_window_after_it() {
        let stalls = Stalls::default();
        stalls.pulse_at(50 * MS);
        stalls.pulse_at(100 * MS);
        // Frozen 2.5 s: before the pulse is taken again, it is late.
        assert!(stalls.within_at(2_600 * MS, WINDOW));
        stalls.pulse_at(2_600 * MS);
        assert!(stalls.within_at(2_610 * MS, WINDOW), "just after");
        for tick in 53..=113 {
            stalls.pulse_at(tick * 50 * MS);
        }
        assert!(stalls.within_at(5_560 * MS, WINDOW), "within the window");
        assert!(!stalls.within_at(5_660 * MS, WINDOW), "past the window");
    }
}
