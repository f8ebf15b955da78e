//! Abuse limits on the owner: password hashing on a bounded, low-priority
//! pool, and caps on wrong passwords per account and attempts per source.

use crate::machine_slots::{MachineSlots, Taken};
use gestor_sdk::{ErrorCode, HandlerError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Password hashing on its own bounded pool: `threads` threads (one per core
/// by default) that run below everything else in the gestor
/// ([`HashPriority`]), fed by a queue of at most `queue` jobs. When the queue
/// is full a request answers `busy` at once instead of tying up a request
/// worker, and under a flood the cores go to lookups and ring maintenance
/// first. Each thread keeps one argon2 block buffer (see `password`), so
/// memory stays bounded by `threads` × the memory cost.
pub struct HashPool {
    jobs: std::sync::mpsc::SyncSender<Job>,
    /// (running, waiting)
    load: Arc<Mutex<(usize, usize)>>,
    /// (threads, queue places): the most running and waiting at once.
    capacity: (usize, usize),
    /// Requests answered `busy` so far.
    turned_away: Arc<std::sync::atomic::AtomicU64>,
    /// Slots shared with the machine's other gestores, if configured.
    machine: Option<Arc<MachineSlots>>,
}

type Job = Box<dyn FnOnce() + Send>;

/// How the hashing threads yield to the rest of the gestor (Linux; elsewhere
/// they run at the default priority). Lowering one's own priority needs no
/// privilege.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashPriority {
    /// `SCHED_IDLE`: hashes run only on CPU time nothing else wants, so a
    /// register flood costs lookups almost nothing; under a load that keeps
    /// every core busy, password checks wait (and answer `busy` after 1.5 s in
    /// the queue).
    Idle,
    /// nice +19: hashes get a small share even when the cores are busy.
    Low,
    /// Like every other thread.
    Normal,
}

/// Nice value of the hashing threads at [`HashPriority::Low`].
const HASH_NICE: i32 = 19;

impl HashPool {
    pub fn new(threads: usize, queue: usize, priority: HashPriority) -> Self {
        Self::sharing(threads, queue, priority, None)
    }

    /// A pool whose threads also take one of the machine's slots
    /// ([`MachineSlots`]) for each hash.
    pub fn sharing(
        threads: usize,
        queue: usize,
        priority: HashPriority,
        machine: Option<Arc<MachineSlots>>,
    ) -> Self {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let load = Arc::new(Mutex::new((0, 0)));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(move || {
                    lower_own_priority(priority);
                    loop {
                        // One receiver at a time; the lock is released
                        // before the job runs.
                        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                            Ok(job) => job,
                            Err(_) => return, // the pool was dropped
                        };
                        job();
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start a password-hash thread: {e}");
            }
        }
        HashPool {
            jobs,
            load,
            capacity: (threads.max(1), queue.max(1)),
            turned_away: Arc::default(),
            machine,
        }
    }

    /// Run `work` on the pool and wait for its result. `busy` at once when
    /// the queue is full, and `busy` without running it when the job waited
    /// longer than `wait` for a thread, and then for a machine slot if the
    /// pool shares them (its client has likely given up).
    pub fn run<T: Send + 'static>(
        &self,
        wait: Duration,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HandlerError> {
        let (done, result) = std::sync::mpsc::sync_channel::<Option<T>>(1);
        let load = self.load.clone();
        let turned_away = self.turned_away.clone();
        let queued_at = Instant::now();
        let machine = self.machine.clone();
        let job: Job = Box::new(move || {
            let turn_away = || {
                let mut l = load.lock().unwrap_or_else(|p| p.into_inner());
                l.1 = l.1.saturating_sub(1);
                turned_away.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = done.send(None);
            };
            let until = queued_at + wait;
            if Instant::now() > until {
                return turn_away();
            }
            // The machine's slot, within the same deadline; held to the end.
            let slot = match machine.as_ref().map(|m| m.take(until)) {
                Some(Taken::Missed) => return turn_away(),
                Some(Taken::Held(held)) => Some(held),
                Some(Taken::Unusable) | None => None,
            };
            {
                let mut l = load.lock().unwrap_or_else(|p| p.into_inner());
                l.1 = l.1.saturating_sub(1);
                l.0 += 1;
            }
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            drop(slot);
            load.lock().unwrap_or_else(|p| p.into_inner()).0 -= 1;
            match outcome {
                Ok(value) => {
                    let _ = done.send(Some(value));
                }
                Err(_) => tracing::error!("password hashing panicked"),
            }
        });
        self.load.lock().unwrap_or_else(|p| p.into_inner()).1 += 1;
        if self.jobs.try_send(job).is_err() {
            let mut l = self.load.lock().unwrap_or_else(|p| p.into_inner());
            l.1 = l.1.saturating_sub(1);
            self.turned_away
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(saturated());
        }
        match result.recv() {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(saturated()),
            Err(_) => Err(HandlerError::internal("password hashing failed")),
        }
    }

    /// (running, waiting), for status.
    pub fn load(&self) -> (usize, usize) {
        *self.load.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (threads, queue places): the most running and waiting at once.
    pub fn capacity(&self) -> (usize, usize) {
        self.capacity
    }

    /// The machine's shared slots this pool takes, if any.
    pub fn machine(&self) -> Option<&MachineSlots> {
        self.machine.as_deref()
    }

    /// Requests answered `busy` since start.
    pub fn turned_away(&self) -> u64 {
        self.turned_away.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn saturated() -> HandlerError {
    HandlerError::new(
        ErrorCode::Busy,
        "password hashing is saturated on this gestor; retry shortly",
    )
}

/// Lower the calling thread's CPU priority (Linux scheduling policy and
/// nice value are per thread). Best effort: on failure hashing just
/// competes at the default.
fn lower_own_priority(priority: HashPriority) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread itself (0 / its tid).
        let rc = match priority {
            HashPriority::Normal => 0,
            HashPriority::Low => {
                let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
                unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, HASH_NICE) }
            }
            HashPriority::Idle => {
                let param = libc::sched_param { sched_priority: 0 };
                unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) }
            }
        };
        if rc != 0 {
            tracing::warn!(
                ?priority,
                "cannot lower the password-hash thread's priority; it competes with lookups"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = priority;
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
    fn a_saturated_pool_answers_busy_at_once_and_recovers() {
        let slots = Arc::new(HashPool::new(1, 1, HashPriority::Normal));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let slots = slots.clone();
            std::thread::spawn(move || {
                slots
                    .run(Duration::from_secs(5), move || {
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

    #[test]
    fn pools_sharing_the_machine_hash_one_at_a_time_with_one_slot() {
        let dir = crate::machine_slots::tests::slot_dir("pools");
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Two gestores' pools of two threads each, one slot between them.
        let pools: Vec<Arc<HashPool>> = (0..2)
            .map(|_| {
                let slots = Arc::new(MachineSlots::new(dir.clone(), 1).unwrap());
                Arc::new(HashPool::sharing(2, 2, HashPriority::Normal, Some(slots)))
            })
            .collect();
        let callers: Vec<_> = (0..8)
            .map(|i| {
                let (pool, running, most) = (pools[i % 2].clone(), running.clone(), most.clone());
                std::thread::spawn(move || {
                    pool.run(Duration::from_secs(30), move || {
                        use std::sync::atomic::Ordering::SeqCst;
                        let now = running.fetch_add(1, SeqCst) + 1;
                        most.fetch_max(now, SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        running.fetch_sub(1, SeqCst);
                    })
                })
            })
            .collect();
        let mut ran = 0;
        for caller in callers {
            // A caller may find its pool's queue full: `busy`, as a client would.
            if caller.join().unwrap().is_ok() {
                ran += 1;
            }
        }
        assert!(ran >= 2, "only {ran} jobs ran");
        assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_job_gets_busy_when_no_machine_slot_frees_in_time() {
        let dir = crate::machine_slots::tests::slot_dir("deadline");
        let slots = Arc::new(MachineSlots::new(dir.clone(), 1).unwrap());
        // Another gestor holds the only slot for longer than the job waits.
        let other = MachineSlots::new(dir.clone(), 1).unwrap();
        let Taken::Held(held) = other.take(Instant::now()) else {
            panic!("the free slot was not taken");
        };
        let pool = HashPool::sharing(1, 1, HashPriority::Normal, Some(slots.clone()));
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let e = pool
            .run(Duration::from_millis(100), move || {
                flag.store(true, std::sync::atomic::Ordering::SeqCst)
            })
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Busy);
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(slots.counts(), (0, 1, 0));
        assert_eq!(pool.load(), (0, 0));
        drop(held);
        assert_eq!(pool.run(Duration::from_secs(10), || 5).unwrap(), 5);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_job_that_waited_too_long_is_dropped_unrun() {
        let pool = Arc::new(HashPool::new(1, 1, HashPriority::Normal));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let pool = pool.clone();
            std::thread::spawn(move || {
                pool.run(Duration::from_secs(5), move || release_rx.recv().unwrap())
            })
        };
        while pool.load().0 == 0 {
            std::thread::yield_now();
        }
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stale = {
            let (pool, ran) = (pool.clone(), ran.clone());
            std::thread::spawn(move || {
                pool.run(Duration::ZERO, move || {
                    ran.store(true, std::sync::atomic::Ordering::SeqCst)
                })
            })
        };
        while pool.load().1 == 0 {
            std::thread::yield_now();
        }
        release_tx.send(()).unwrap();
        holder.join().unwrap().unwrap();
        let e = stale.join().unwrap().unwrap_err();
        assert_eq!(e.code, ErrorCode::Busy);
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn hashing_threads_run_below_normal_priority() {
        let read = || {
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
            let policy = unsafe { libc::sched_getscheduler(0) };
            (policy, unsafe {
                libc::getpriority(libc::PRIO_PROCESS, tid)
            })
        };
        let low = HashPool::new(1, 1, HashPriority::Low);
        assert_eq!(low.run(Duration::from_secs(5), read).unwrap().1, HASH_NICE);
        let idle = HashPool::new(1, 1, HashPriority::Idle);
        assert_eq!(
            idle.run(Duration::from_secs(5), read).unwrap().0,
            libc::SCHED_IDLE
        );
        let normal = HashPool::new(1, 1, HashPriority::Normal);
        assert_eq!(normal.run(Duration::from_secs(5), read).unwrap(), read());
    }

    #[test]
    fn a_panicking_job_is_an_error_not_a_dead_pool() {
        let pool = HashPool::new(1, 1, HashPriority::Normal);
        let e = pool
            .run(Duration::from_secs(5), || -> u32 { panic!("boom") })
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal);
        assert_eq!(pool.run(Duration::from_secs(5), || 3).unwrap(), 3);
    }
}
