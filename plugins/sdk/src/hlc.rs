//! Hybrid logical clocks (Kulkarni et al., "Logical Physical Clocks", 2014).
//!
//! Every record version is a [`Timestamp`]: wall-clock milliseconds, a
//! logical counter and the id of the node that made it. Stamps order
//! lexicographically, so "newest wins" never depends on a skewed wall clock
//! going backwards, and two stamps are never equal unless one node made both.

use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One HLC stamp. Field order is the comparison order.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch (the physical part).
    pub wall_ms: u64,
    /// Logical counter, bumped when the physical part cannot advance.
    pub logical: u32,
    /// Node id of the writer; breaks ties between nodes.
    pub node: u64,
}

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp {
        wall_ms: 0,
        logical: 0,
        node: 0,
    };
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}@{:016x}", self.wall_ms, self.logical, self.node)
    }
}

/// A remote stamp was further ahead of our wall clock than allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timestamp {stamp} is {ahead_ms} ms ahead of local time (limit {limit_ms} ms)")]
pub struct ClockError {
    pub stamp: Timestamp,
    pub ahead_ms: u64,
    pub limit_ms: u64,
}

/// Largest logical counter a stamp may carry. Honest clocks stay far below
/// it (the counter restarts at every new millisecond, and only counts events
/// within one); a remote stamp above it could otherwise saturate every
/// clock that observes it and freeze their versions (a stamp pinned at
/// `u32::MAX` used to make every later write lose).
pub const MAX_LOGICAL: u32 = 1 << 20;

/// A node id no gestor has: a stamp carrying it would win every tie.
pub const RESERVED_NODE: u64 = u64::MAX;

impl Timestamp {
    /// Why a stamp from elsewhere cannot be believed, if it cannot (bounds
    /// that hold for every stamp an honest gestor makes).
    pub fn implausible(&self) -> Option<&'static str> {
        if self.logical > MAX_LOGICAL {
            Some("logical counter out of range")
        } else if self.node == RESERVED_NODE {
            Some("reserved node id")
        } else {
            None
        }
    }
}

/// Source of physical time in milliseconds; injectable for tests.
pub type WallClock = Box<dyn Fn() -> u64 + Send + Sync>;

/// Wall-clock milliseconds since the Unix epoch.
pub fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// A node's hybrid logical clock.
pub struct Clock {
    node: u64,
    max_ahead_ms: u64,
    wall: WallClock,
    last: Mutex<(u64, u32)>,
}

impl Clock {
    /// A clock on the system wall clock, refusing remote stamps more than
    /// `max_ahead` in the future.
    pub fn new(node: u64, max_ahead: Duration) -> Self {
        Self::with_wall_clock(node, max_ahead, Box::new(system_ms))
    }

    pub fn with_wall_clock(node: u64, max_ahead: Duration, wall: WallClock) -> Self {
        Clock {
            node,
            max_ahead_ms: max_ahead.as_millis() as u64,
            wall,
            last: Mutex::new((0, 0)),
        }
    }

    pub fn node(&self) -> u64 {
        self.node
    }

    /// The physical time this clock reads, in milliseconds: the one source of
    /// "now" for timers and expiry, so a simulated wall clock moves them too.
    pub fn wall_ms(&self) -> u64 {
        (self.wall)()
    }

    /// A stamp for a local event, greater than every stamp this clock has
    /// issued or observed.
    pub fn now(&self) -> Timestamp {
        let pt = (self.wall)();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if pt > last.0 {
            *last = (pt, 0);
        } else if last.1 >= MAX_LOGICAL {
            // Never saturate: move on to the next millisecond instead.
            *last = (last.0 + 1, 0);
        } else {
            last.1 += 1;
        }
        Timestamp {
            wall_ms: last.0,
            logical: last.1,
            node: self.node,
        }
    }

    /// Merge a stamp received from elsewhere so later local stamps exceed it.
    /// Stamps too far ahead of our wall clock are refused and not merged.
    pub fn observe(&self, remote: Timestamp) -> Result<(), ClockError> {
        let pt = (self.wall)();
        if remote.implausible().is_some() || remote.wall_ms > pt.saturating_add(self.max_ahead_ms) {
            return Err(ClockError {
                stamp: remote,
                ahead_ms: remote.wall_ms.saturating_sub(pt),
                limit_ms: self.max_ahead_ms,
            });
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let (l, c) = *last;
        let wall = pt.max(l).max(remote.wall_ms);
        let logical = if wall == l && wall == remote.wall_ms {
            c.max(remote.logical).saturating_add(1)
        } else if wall == l {
            c.saturating_add(1)
        } else if wall == remote.wall_ms {
            remote.logical.saturating_add(1)
        } else {
            0
        };
        *last = if logical > MAX_LOGICAL {
            (wall + 1, 0)
        } else {
            (wall, logical)
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    fn manual(start: u64) -> (Arc<AtomicU64>, Clock) {
        let t = Arc::new(AtomicU64::new(start));
        let t2 = t.clone();
        let clock = Clock::with_wall_clock(
            7,
            Duration::from_secs(60),
            Box::new(move || t2.load(Ordering::SeqCst)),
        );
        (t, clock)
    }

    #[test]
    fn absurd_remote_stamps_are_refused_and_cannot_saturate() {
        let (_t, clock) = manual(1_000);
        for bad in [
            Timestamp {
                wall_ms: 1_000,
                logical: u32::MAX,
                node: 5,
            },
            Timestamp {
                wall_ms: 1_000,
                logical: 0,
                node: u64::MAX,
            },
        ] {
            assert!(clock.observe(bad).is_err(), "{bad} accepted");
        }
        // The largest believable counter is accepted, and local stamps keep
        // increasing past it instead of sticking.
        let edge = Timestamp {
            wall_ms: 1_000,
            logical: MAX_LOGICAL,
            node: 5,
        };
        clock.observe(edge).unwrap();
        let a = clock.now();
        let b = clock.now();
        assert!(edge < a && a < b, "{edge} {a} {b}");
        assert!(a.implausible().is_none() && b.implausible().is_none());
    }

    #[test]
    fn monotonic_when_wall_clock_jumps_back() {
        let (t, clock) = manual(10_000);
        let a = clock.now();
        t.store(5_000, Ordering::SeqCst);
        let b = clock.now();
        let c = clock.now();
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(b.wall_ms, 10_000);
    }

    #[test]
    fn observed_stamp_is_exceeded_by_next_local_stamp() {
        let (_t, clock) = manual(1_000);
        let remote = Timestamp {
            wall_ms: 30_000,
            logical: 4,
            node: 99,
        };
        clock.observe(remote).unwrap();
        let next = clock.now();
        assert!(next > remote, "{next} must exceed {remote}");
    }

    #[test]
    fn far_future_stamp_is_refused() {
        let (_t, clock) = manual(1_000);
        let remote = Timestamp {
            wall_ms: 1_000 + 61_000,
            logical: 0,
            node: 99,
        };
        let err = clock.observe(remote).unwrap_err();
        assert_eq!(err.limit_ms, 60_000);
        assert!(clock.now() < remote);
    }

    #[test]
    fn ties_break_by_node() {
        let a = Timestamp {
            wall_ms: 5,
            logical: 1,
            node: 1,
        };
        let b = Timestamp {
            wall_ms: 5,
            logical: 1,
            node: 2,
        };
        assert!(a < b);
    }
}
