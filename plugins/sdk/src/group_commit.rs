//! Group commit for [`Store::flush`](crate::store::Store::flush): callers
//! that ask for durability at the same time share one sync.
//!
//! Every writer that needs its write durable calls `flush`; a sync makes
//! durable everything written before it *starts*. So a caller's request is
//! covered by any sync that starts after the caller arrived: while one sync
//! runs, later callers wait, and the next sync (run by one of them) covers
//! all of them at once. Under load this turns N syncs into about two.

use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Default)]
struct State {
    /// Tickets handed out: one per `flush` call.
    issued: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    /// A sync is running.
    syncing: bool,
}

/// Coalesces concurrent durability requests of one store.
#[derive(Default)]
pub struct GroupCommit {
    state: Mutex<State>,
    changed: Condvar,
}

impl GroupCommit {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a few counters, consistent after any panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Return once everything written before this call is durable, running
    /// `sync` only when no sync that started after this call has succeeded.
    /// A failed sync is reported to the caller that ran it; the others
    /// retry with a sync of their own, so no caller gets a false success.
    pub fn flush<E>(&self, mut sync: impl FnMut() -> Result<(), E>) -> Result<(), E> {
        let mut state = self.lock();
        state.issued += 1;
        let ticket = state.issued;
        loop {
            if state.durable >= ticket {
                return Ok(());
            }
            if !state.syncing {
                break;
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.syncing = true;
        // Every ticket issued so far belongs to a caller whose writes are done.
        let covers = state.issued;
        drop(state);
        // Cleared however `sync` ends, even by a panic: a `syncing` left set
        // would make every later caller wait for ever.
        let mut running = Running {
            group: self,
            covers: None,
        };
        let result = sync();
        if result.is_ok() {
            running.covers = Some(covers);
        }
        drop(running);
        result
    }
}

/// The sync in progress; dropping it records the outcome and wakes waiters.
struct Running<'a> {
    group: &'a GroupCommit,
    /// The ticket a successful sync made durable.
    covers: Option<u64>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut state = self.group.lock();
        state.syncing = false;
        if let Some(covers) = self.covers {
            state.durable = state.durable.max(covers);
        }
        drop(state);
        self.group.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::GroupCommit;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Barrier};

    #[test]
    fn a_lone_caller_syncs_every_time() {
        let group = GroupCommit::new();
        let syncs = AtomicU64::new(0);
        for _ in 0..3 {
            group
                .flush(|| {
                    syncs.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, ()>(())
                })
                .unwrap();
        }
        assert_eq!(syncs.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn concurrent_callers_share_syncs_and_each_is_covered() {
        let group = Arc::new(GroupCommit::new());
        let syncs = Arc::new(AtomicU64::new(0));
        // `written` counts writes; a sync records how many it covered.
        let written = Arc::new(AtomicU64::new(0));
        let synced = Arc::new(AtomicU64::new(0));
        let threads = 16;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (group, syncs, written, synced, barrier) = (
                    group.clone(),
                    syncs.clone(),
                    written.clone(),
                    synced.clone(),
                    barrier.clone(),
                );
                std::thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..50 {
                        let mine = written.fetch_add(1, Ordering::SeqCst) + 1;
                        group
                            .flush(|| {
                                syncs.fetch_add(1, Ordering::SeqCst);
                                let upto = written.load(Ordering::SeqCst);
                                std::thread::sleep(std::time::Duration::from_micros(300));
                                synced.fetch_max(upto, Ordering::SeqCst);
                                Ok::<_, ()>(())
                            })
                            .unwrap();
                        // Our write is covered by a sync that started after it.
                        assert!(synced.load(Ordering::SeqCst) >= mine);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let total = syncs.load(Ordering::SeqCst);
        assert!(total < 16 * 50, "no sync was shared: {total}");
    }

    #[test]
    fn a_failed_sync_is_not_taken_for_success() {
        let group = GroupCommit::new();
        assert!(group.flush(|| Err("disk full")).is_err());
        let mut ran = false;
        group
            .flush(|| {
                ran = true;
                Ok::<_, &str>(())
            })
            .unwrap();
        assert!(ran, "the next caller must sync again");
    }

    #[test]
    fn a_panicking_sync_leaves_the_group_usable() {
        let group = GroupCommit::new();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            group.flush(|| -> Result<(), ()> { panic!("sync exploded") })
        }));
        assert!(caught.is_err());
        // The next flush would wait for ever if the first still counted as
        // running: run it on a thread and fail after a deadline instead.
        let group = Arc::new(group);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let next = group.clone();
        std::thread::spawn(move || {
            let mut ran = false;
            let flushed = next.flush(|| {
                ran = true;
                Ok::<_, ()>(())
            });
            let _ = done_tx.send((flushed, ran));
        });
        let (flushed, ran) = match done_rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(done) => done,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("the next flush waits on the panicked sync")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the next flush panicked")
            }
        };
        flushed.unwrap();
        assert!(ran, "a panicked sync covers nothing");
    }
}
