//! Abuse limits on the owner: a bounded number of concurrent password
//! hashes, and a cap on wrong passwords per account.

use gestor_sdk::{ErrorCode, HandlerError};
use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// At most `slots` argon2 computations at once (each holds its memory cost
/// in RAM), and at most `queue` more waiting for one. Beyond that a request
/// answers `busy` at once instead of tying up a request worker, so lookups
/// and ring maintenance never queue behind password hashing.
pub struct HashSlots {
    slots: usize,
    queue: usize,
    /// (running, waiting)
    state: Mutex<(usize, usize)>,
    freed: Condvar,
    /// Requests answered `busy` so far.
    turned_away: std::sync::atomic::AtomicU64,
}

impl HashSlots {
    pub fn new(slots: usize, queue: usize) -> Self {
        HashSlots {
            slots: slots.max(1),
            queue,
            state: Mutex::new((0, 0)),
            freed: Condvar::new(),
            turned_away: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Slots sized to the machine: one per core.
    pub fn per_core() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::new(cores, cores)
    }

    /// Run `work` in a slot, waiting at most `wait` for one.
    pub fn run<T>(&self, wait: Duration, work: impl FnOnce() -> T) -> Result<T, HandlerError> {
        let busy = || {
            self.turned_away
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            HandlerError::new(
                ErrorCode::Busy,
                "password hashing is saturated on this gestor; retry shortly",
            )
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.0 >= self.slots {
            if state.1 >= self.queue {
                return Err(busy());
            }
            state.1 += 1;
            let deadline = Instant::now() + wait;
            while state.0 >= self.slots {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    state.1 -= 1;
                    return Err(busy());
                }
                state = self
                    .freed
                    .wait_timeout(state, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            state.1 -= 1;
        }
        state.0 += 1;
        drop(state);
        struct Release<'a>(&'a HashSlots);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                let mut s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
                s.0 -= 1;
                self.0.freed.notify_one();
            }
        }
        let _release = Release(self);
        Ok(work())
    }

    /// (running, waiting), for status.
    pub fn load(&self) -> (usize, usize) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (slots, queue places): the most running and waiting at once.
    pub fn capacity(&self) -> (usize, usize) {
        (self.slots, self.queue)
    }

    /// Requests answered `busy` since start.
    pub fn turned_away(&self) -> u64 {
        self.turned_away.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Wrong passwords per account in a fixed window: once an account has
/// `max_failures` within `window`, further attempts answer `rate_limited`
/// until the window ends — checked before any hashing, so a guesser costs
/// nothing. Pure state over `now` (milliseconds), bounded in size.
pub struct FailureLimiter {
    max_failures: u32,
    window_ms: u64,
    capacity: usize,
    accounts: HashMap<String, (u64, u32)>,
}

impl FailureLimiter {
    pub fn new(max_failures: u32, window_ms: u64, capacity: usize) -> Self {
        FailureLimiter {
            max_failures,
            window_ms,
            capacity: capacity.max(1),
            accounts: HashMap::new(),
        }
    }

    /// `Err(rate_limited)` when `account` may not try now.
    pub fn check(&mut self, account: &str, now: u64) -> Result<(), HandlerError> {
        if self.max_failures == 0 {
            return Ok(());
        }
        match self.accounts.get(account) {
            Some(&(start, n)) if now.saturating_sub(start) < self.window_ms => {
                if n >= self.max_failures {
                    let wait_s = (self.window_ms - now.saturating_sub(start)).div_ceil(1000);
                    return Err(HandlerError::new(
                        ErrorCode::RateLimited,
                        format!("too many wrong passwords for {account}; retry in {wait_s} s"),
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    pub fn failed(&mut self, account: &str, now: u64) {
        if self.accounts.len() >= self.capacity && !self.accounts.contains_key(account) {
            let window = self.window_ms;
            self.accounts
                .retain(|_, (start, _)| now.saturating_sub(*start) < window);
            if self.accounts.len() >= self.capacity {
                // Still full of live windows: forget the oldest half.
                let mut starts: Vec<u64> = self.accounts.values().map(|(s, _)| *s).collect();
                starts.sort_unstable();
                let cut = starts[starts.len() / 2];
                self.accounts.retain(|_, (start, _)| *start > cut);
            }
        }
        let entry = self.accounts.entry(account.to_string()).or_insert((now, 0));
        if now.saturating_sub(entry.0) >= self.window_ms {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    pub fn succeeded(&mut self, account: &str) {
        self.accounts.remove(account);
    }
}

/// Password attempts (register, login, delete) per client source in a fixed
/// one-minute window, counted on the gestor the client talks to, before the
/// request is forwarded: one address cannot keep the ring's hashing busy.
/// Pure state over `now` (milliseconds), bounded in size.
pub struct SourceLimiter {
    per_minute: u32,
    capacity: usize,
    sources: HashMap<String, (u64, u32)>,
}

impl SourceLimiter {
    pub fn new(per_minute: u32, capacity: usize) -> Self {
        SourceLimiter {
            per_minute,
            capacity: capacity.max(1),
            sources: HashMap::new(),
        }
    }

    /// Count one attempt from `source`; `Err(rate_limited)` past the limit.
    pub fn attempt(&mut self, source: &str, now: u64) -> Result<(), HandlerError> {
        if self.per_minute == 0 {
            return Ok(());
        }
        if self.sources.len() >= self.capacity && !self.sources.contains_key(source) {
            self.sources
                .retain(|_, (start, _)| now.saturating_sub(*start) < 60_000);
            if self.sources.len() >= self.capacity {
                self.sources.clear();
            }
        }
        let entry = self.sources.entry(source.to_string()).or_insert((now, 0));
        if now.saturating_sub(entry.0) >= 60_000 {
            *entry = (now, 0);
        }
        if entry.1 >= self.per_minute {
            let wait_s = (60_000 - now.saturating_sub(entry.0)).div_ceil(1000);
            return Err(HandlerError::new(
                ErrorCode::RateLimited,
                format!("too many password attempts from {source}; retry in {wait_s} s"),
            ));
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn failures_lock_an_account_for_the_rest_of_the_window() {
        let mut l = FailureLimiter::new(3, 60_000, 100);
        for _ in 0..3 {
            assert!(l.check("alice", 1_000).is_ok());
            l.failed("alice", 1_000);
        }
        let e = l.check("alice", 2_000).unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(l.check("bob", 2_000).is_ok(), "other accounts unaffected");
        assert!(l.check("alice", 61_001).is_ok(), "the window ends");
        l.failed("alice", 61_001);
        assert!(
            l.check("alice", 61_002).is_ok(),
            "a new window starts at one"
        );
        l.succeeded("alice");
        assert!(l.check("alice", 61_003).is_ok());
    }

    #[test]
    fn a_source_gets_its_quota_per_minute() {
        let mut l = SourceLimiter::new(5, 100);
        for _ in 0..5 {
            assert!(l.attempt("10.0.0.1", 1_000).is_ok());
        }
        assert_eq!(
            l.attempt("10.0.0.1", 2_000).unwrap_err().code,
            ErrorCode::RateLimited
        );
        assert!(l.attempt("10.0.0.2", 2_000).is_ok(), "others unaffected");
        assert!(l.attempt("10.0.0.1", 61_000).is_ok(), "a new minute");
        let mut off = SourceLimiter::new(0, 100);
        for _ in 0..1000 {
            assert!(off.attempt("x", 1).is_ok());
        }
    }

    #[test]
    fn the_limiter_stays_bounded() {
        let mut l = FailureLimiter::new(3, 60_000, 100);
        for i in 0..10_000u64 {
            l.failed(&format!("u{i}"), i);
        }
        assert!(l.accounts.len() <= 100);
    }

    #[test]
    fn saturated_slots_answer_busy_at_once_and_recover() {
        let slots = Arc::new(HashSlots::new(1, 1));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let slots = slots.clone();
            std::thread::spawn(move || {
                slots
                    .run(Duration::from_secs(5), || {
                        started_tx.send(()).unwrap();
                        release_rx.recv().unwrap();
                    })
                    .unwrap()
            })
        };
        started_rx.recv().unwrap();
        let waiter = {
            let slots = slots.clone();
            std::thread::spawn(move || slots.run(Duration::from_secs(5), || 7))
        };
        // Wait until the second caller is queued, then a third is refused.
        while slots.load().1 == 0 {
            std::thread::yield_now();
        }
        let e = slots.run(Duration::from_secs(5), || ()).unwrap_err();
        assert_eq!(e.code, ErrorCode::Busy);
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        assert_eq!(waiter.join().unwrap().unwrap(), 7);
        assert_eq!(slots.load(), (0, 0));
        assert!(slots.turned_away() >= 1);
        assert_eq!(slots.capacity(), (1, 1));
    }
}
