//! Sliding anti-replay window over explicit frame counters.
//!
//! Message sockets reorder (several requesters share one session; signals
//! travel a different socket than requests) and may resend, so frames cannot
//! be required to arrive in order. As in WireGuard and DTLS, a receiver
//! accepts each counter at most once, and only within the last
//! [`WINDOW`] counters of the highest one it has accepted.

/// Counters remembered behind the highest accepted one.
pub const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// One past the highest accepted counter (0: nothing accepted yet).
    next: u64,
    /// Bit `n % WINDOW` is set when counter `n` (within the window) was accepted.
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            next: 0,
            bits: [0; WORDS],
        }
    }
}

impl ReplayWindow {
    fn bit(n: u64) -> (usize, u64) {
        let slot = n % WINDOW;
        ((slot / 64) as usize, 1u64 << (slot % 64))
    }

    /// Whether `n` would be accepted, without recording it.
    pub fn check(&self, n: u64) -> bool {
        if n == u64::MAX {
            return false;
        }
        if n >= self.next {
            return true;
        }
        if self.next - n > WINDOW {
            return false;
        }
        let (w, m) = Self::bit(n);
        self.bits[w] & m == 0
    }

    /// Record `n`; false (and nothing recorded) when it is a replay or too old.
    pub fn accept(&mut self, n: u64) -> bool {
        if !self.check(n) {
            return false;
        }
        if n >= self.next {
            let advance = n + 1 - self.next;
            if advance >= WINDOW {
                self.bits = [0; WORDS];
            } else {
                for c in self.next..=n {
                    let (w, m) = Self::bit(c);
                    self.bits[w] &= !m;
                }
            }
            self.next = n + 1;
        }
        let (w, m) = Self::bit(n);
        self.bits[w] |= m;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counter_once_in_any_order_within_the_window() {
        let mut w = ReplayWindow::default();
        for n in [3, 0, 2, 1, 7, 5] {
            assert!(w.accept(n), "{n}");
        }
        for n in [3, 0, 2, 1, 7, 5] {
            assert!(!w.accept(n), "replay of {n} accepted");
        }
        assert!(w.accept(4));
        assert!(w.accept(6));
    }

    #[test]
    fn too_old_is_refused_and_big_jumps_forget() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(10));
        assert!(w.accept(10 + WINDOW + 5));
        assert!(!w.accept(10), "older than the window");
        assert!(!w.accept(4));
        assert!(w.accept(10 + WINDOW), "inside the window, never seen");
        assert!(!w.accept(10 + WINDOW));
        assert!(!w.accept(u64::MAX));
    }

    #[test]
    fn slots_are_reused_correctly_as_the_window_moves() {
        let mut w = ReplayWindow::default();
        for n in 0..5 * WINDOW {
            assert!(w.accept(n));
        }
        for n in 4 * WINDOW..5 * WINDOW {
            assert!(!w.accept(n));
        }
        assert!(!w.accept(4 * WINDOW - 1));
    }
}
