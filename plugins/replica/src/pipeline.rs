//! Replication on a bounded pool: one queue per copy holder (per gestor
//! URL, whichever of its virtual nodes named it), served by a
//! fixed set of sender threads. A sender takes everything queued for a
//! holder (up to `batch_records`) and sends it as one `replica.put`, so
//! concurrent writes share one round trip and one flush on the holder
//! (group commit); each write's waiter is then told whether its copy is
//! flushed there. At most one batch per holder is in flight, and a holder's
//! queue holds at most `queue_records`: a write that finds it full is
//! refused, nothing grows without bound.
//!
//! Background copies (the holders beyond those a write waits for) linger:
//! a queue holding only them is sent once its oldest has waited `linger`,
//! or at once when a waited-for copy to the same holder arrives, which
//! they then ride with. So the extra copy rarely costs a round trip or a
//! flush of its own.

use gestor_api::ring::PeerRef;
use gestor_sdk::plugin::panic_message;
use gestor_sdk::UserRecord;
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends one batch to a holder; `Ok` means the holder flushed it.
pub type SendFn = dyn Fn(&PeerRef, &[UserRecord]) -> Result<(), String> + Send + Sync;

/// The holder's queue is full (or the pool is stopping).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    #[error("replication queue to {0} is full")]
    Full(String),
    #[error("replication is stopping")]
    Stopping,
}

/// Where one write learns, holder by holder (by URL: one gestor is one
/// holder, whichever of its virtual nodes named it), whether its copies are
/// flushed.
#[derive(Default)]
pub struct Waiter {
    answers: Mutex<Vec<(String, Result<(), String>)>>,
    changed: Condvar,
}

impl Waiter {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn tell(&self, holder: &str, result: Result<(), String>) {
        lock(&self.answers).push((holder.to_string(), result));
        self.changed.notify_all();
    }

    /// Answers so far, waiting up to `timeout` for at least `wanted`.
    pub fn wait(&self, wanted: usize, timeout: Duration) -> Vec<(String, Result<(), String>)> {
        let guard = lock(&self.answers);
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |a| a.len() < wanted)
            .unwrap_or_else(|p| p.into_inner());
        guard.clone()
    }
}

struct Job {
    records: Vec<UserRecord>,
    waiter: Option<Arc<Waiter>>,
}

struct HolderQueue {
    peer: PeerRef,
    jobs: VecDeque<Job>,
    queued: usize,
    in_flight: bool,
    /// Only background jobs queued, not in `due`: when to send them anyway.
    lingering_until: Option<Instant>,
}

#[derive(Default)]
struct State {
    holders: HashMap<String, HolderQueue>,
    /// Holders with queued jobs and no batch in flight, in arrival order.
    due: VecDeque<String>,
    stopping: bool,
}

/// Figures for `status.replica` and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineStats {
    pub batches: u64,
    pub records: u64,
}

pub struct Pipeline {
    state: Mutex<State>,
    work: Condvar,
    send: Box<SendFn>,
    queue_records: usize,
    batch_records: usize,
    linger: Duration,
    stats: Mutex<PipelineStats>,
}

impl Pipeline {
    /// A pool of `threads` senders; background copies wait up to `linger`
    /// for company.
    pub fn start(
        threads: usize,
        queue_records: usize,
        batch_records: usize,
        linger: Duration,
        send: Box<SendFn>,
    ) -> Arc<Self> {
        let pipeline = Arc::new(Pipeline {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            send,
            queue_records: queue_records.max(1),
            batch_records: batch_records.max(1),
            linger,
            stats: Mutex::new(PipelineStats::default()),
        });
        for i in 0..threads.max(1) {
            let p = pipeline.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("replica-send-{i}"))
                .spawn(move || p.serve());
            if let Err(e) = spawned {
                tracing::error!("cannot start a replication sender: {e}");
            }
        }
        pipeline
    }

    /// Queue `records` for `holder`; `waiter` (if any) hears the outcome.
    pub fn enqueue(
        &self,
        holder: &PeerRef,
        records: Vec<UserRecord>,
        waiter: Option<Arc<Waiter>>,
    ) -> Result<(), EnqueueError> {
        let mut state = lock(&self.state);
        if state.stopping {
            return Err(EnqueueError::Stopping);
        }
        let q = state
            .holders
            .entry(holder.addr.clone())
            .or_insert_with(|| HolderQueue {
                peer: holder.clone(),
                jobs: VecDeque::new(),
                queued: 0,
                in_flight: false,
                lingering_until: None,
            });
        // An oversized job is accepted into an empty queue, so a big
        // import batch is never refused for its size alone.
        if q.queued > 0 && q.queued + records.len() > self.queue_records {
            return Err(EnqueueError::Full(holder.addr.clone()));
        }
        q.queued += records.len();
        q.peer = holder.clone();
        let waited_for = waiter.is_some();
        q.jobs.push_back(Job { records, waiter });
        // Already due or in flight: the job goes with the next batch.
        let was_idle = !q.in_flight && (q.jobs.len() == 1 || q.lingering_until.is_some());
        if !was_idle {
            return Ok(());
        }
        if waited_for || self.linger.is_zero() || q.queued >= self.batch_records {
            q.lingering_until = None;
            state.due.push_back(holder.addr.clone());
            self.work.notify_one();
        } else if q.lingering_until.is_none() {
            q.lingering_until = Some(Instant::now() + self.linger);
            // A sender may be asleep with a later deadline.
            self.work.notify_one();
        }
        Ok(())
    }

    pub fn stats(&self) -> PipelineStats {
        *lock(&self.stats)
    }

    /// Refuse new work, fail what is queued, and let the senders end.
    pub fn stop(&self) {
        let mut state = lock(&self.state);
        state.stopping = true;
        let jobs: Vec<(String, Job)> = state
            .holders
            .values_mut()
            .flat_map(|q| {
                let addr = q.peer.addr.clone();
                q.queued = 0;
                q.jobs.drain(..).map(move |j| (addr.clone(), j))
            })
            .collect();
        state.due.clear();
        drop(state);
        self.work.notify_all();
        for (addr, job) in jobs {
            if let Some(w) = job.waiter {
                w.tell(&addr, Err("replication is stopping".into()));
            }
        }
    }

    fn serve(&self) {
        while let Some((peer, jobs)) = self.next_batch() {
            let records: Vec<UserRecord> = jobs.iter().flat_map(|j| j.records.clone()).collect();
            // A panic must not end this sender with the holder marked in
            // flight (its queue would never move again): it fails the batch.
            let result = catch_unwind(AssertUnwindSafe(|| (self.send)(&peer, &records)))
                .unwrap_or_else(|p| Err(format!("copy sender panicked: {}", panic_message(&*p))));
            if let Err(e) = &result {
                tracing::debug!(holder = %peer.addr, records = records.len(), "copy batch failed: {e}");
            }
            {
                let mut s = lock(&self.stats);
                s.batches += 1;
                s.records += records.len() as u64;
            }
            for job in jobs {
                if let Some(w) = job.waiter {
                    w.tell(&peer.addr, result.clone());
                }
            }
            self.finished(&peer.addr);
        }
    }

    /// Wait for a holder with work; take up to `batch_records` of its queue.
    fn next_batch(&self) -> Option<(PeerRef, Vec<Job>)> {
        let mut state = lock(&self.state);
        loop {
            if state.stopping {
                return None;
            }
            // Lingering queues whose time is up become due; the earliest
            // still lingering bounds the sleep. Holders are a few dozen.
            let now = Instant::now();
            let mut wake = now + Duration::from_millis(500);
            let mut expired = Vec::new();
            for (addr, q) in state.holders.iter_mut() {
                match q.lingering_until {
                    Some(t) if t <= now => {
                        q.lingering_until = None;
                        expired.push(addr.clone());
                    }
                    Some(t) => wake = wake.min(t),
                    None => {}
                }
            }
            state.due.extend(expired);
            if let Some(addr) = state.due.pop_front() {
                let limit = self.batch_records;
                let Some(q) = state.holders.get_mut(&addr) else {
                    continue;
                };
                q.lingering_until = None;
                let mut jobs = Vec::new();
                let mut taken = 0;
                while let Some(job) = q.jobs.front() {
                    if !jobs.is_empty() && taken + job.records.len() > limit {
                        break;
                    }
                    taken += job.records.len();
                    jobs.extend(q.jobs.pop_front());
                }
                q.queued -= taken;
                q.in_flight = true;
                return Some((q.peer.clone(), jobs));
            }
            state = self
                .work
                .wait_timeout(state, wake.saturating_duration_since(now))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn finished(&self, addr: &str) {
        let mut state = lock(&self.state);
        let Some(q) = state.holders.get_mut(addr) else {
            return;
        };
        q.in_flight = false;
        if q.jobs.is_empty() {
            // Holders come and go with the ring: keep no idle queue.
            state.holders.remove(addr);
        } else {
            state.due.push_back(addr.to_string());
            self.work.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn peer(id: u64) -> PeerRef {
        PeerRef {
            id,
            addr: format!("tcp://127.0.0.1:{id}"),
        }
    }

    fn rec(i: usize) -> UserRecord {
        UserRecord {
            username: format!("u{i}"),
            ring_pos: i as u64,
            address: String::new(),
            password_hash: String::new(),
            online: false,
            last_seen_ms: 0,
            version: Default::default(),
            deleted: false,
            session_hash: String::new(),
        }
    }

    /// A sender that blocks until released, recording batch sizes.
    fn gated() -> (Arc<AtomicBool>, Arc<Mutex<Vec<usize>>>, Box<SendFn>) {
        let open = Arc::new(AtomicBool::new(false));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (o, s) = (open.clone(), sizes.clone());
        let send: Box<SendFn> = Box::new(move |p: &PeerRef, r: &[UserRecord]| {
            while !o.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(2));
            }
            lock(&s).push(r.len());
            if p.id == 666 {
                Err("unreachable".into())
            } else {
                Ok(())
            }
        });
        (open, sizes, send)
    }

    #[test]
    fn writes_queued_behind_a_batch_share_the_next_one() {
        let (open, sizes, send) = gated();
        let pool = Pipeline::start(2, 100, 50, Duration::ZERO, send);
        let waiters: Vec<Arc<Waiter>> = (0..21).map(|_| Waiter::new()).collect();
        for (i, w) in waiters.iter().enumerate() {
            pool.enqueue(&peer(1), vec![rec(i)], Some(w.clone()))
                .unwrap();
        }
        open.store(true, Ordering::SeqCst);
        for w in &waiters {
            let got = w.wait(1, Duration::from_secs(5));
            assert_eq!(got, vec![(peer(1).addr, Ok(()))]);
        }
        let sizes = lock(&sizes).clone();
        assert_eq!(sizes.iter().sum::<usize>(), 21);
        assert!(
            sizes.len() <= 2,
            "one in flight, the rest batched: {sizes:?}"
        );
        assert_eq!(pool.stats().batches, sizes.len() as u64);
        pool.stop();
    }

    /// (holder port, batch size) of every batch sent.
    type Sent = Arc<Mutex<Vec<(u64, usize)>>>;

    /// A sender that records every batch and answers at once.
    fn recording() -> (Sent, Box<SendFn>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let s = sent.clone();
        let send: Box<SendFn> = Box::new(move |p: &PeerRef, r: &[UserRecord]| {
            lock(&s).push((p.id, r.len()));
            Ok(())
        });
        (sent, send)
    }

    /// Wait (at most 5 s) until `batches` batches were sent.
    fn wait_sent(sent: &Sent, batches: usize) {
        let started = Instant::now();
        while lock(sent).len() < batches {
            assert!(started.elapsed() < Duration::from_secs(5), "never sent");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn background_copies_ride_with_the_next_waited_for_copy() {
        let (sent, send) = recording();
        let pool = Pipeline::start(2, 100, 50, Duration::from_secs(30), send);
        for i in 0..3 {
            pool.enqueue(&peer(1), vec![rec(i)], None).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(lock(&sent).is_empty(), "background copies linger");
        let w = Waiter::new();
        pool.enqueue(&peer(1), vec![rec(3)], Some(w.clone()))
            .unwrap();
        assert_eq!(
            w.wait(1, Duration::from_secs(5)),
            vec![(peer(1).addr, Ok(()))]
        );
        assert_eq!(*lock(&sent), vec![(1, 4)], "one batch carried all four");
        pool.stop();
    }

    #[test]
    fn background_copies_alone_go_out_after_the_linger() {
        let (sent, send) = recording();
        let pool = Pipeline::start(1, 100, 50, Duration::from_millis(40), send);
        let queued = Instant::now();
        pool.enqueue(&peer(1), vec![rec(0)], None).unwrap();
        pool.enqueue(&peer(1), vec![rec(1)], None).unwrap();
        pool.enqueue(&peer(2), vec![rec(2)], None).unwrap();
        wait_sent(&sent, 2);
        assert!(queued.elapsed() >= Duration::from_millis(40));
        let mut got = lock(&sent).clone();
        got.sort();
        assert_eq!(got, vec![(1, 2), (2, 1)]);
        pool.stop();
    }

    #[test]
    fn a_full_batch_of_background_copies_does_not_linger() {
        let (sent, send) = recording();
        let pool = Pipeline::start(1, 100, 3, Duration::from_secs(30), send);
        for i in 0..3 {
            pool.enqueue(&peer(1), vec![rec(i)], None).unwrap();
        }
        wait_sent(&sent, 1);
        assert_eq!(*lock(&sent), vec![(1, 3)]);
        pool.stop();
    }

    #[test]
    fn virtual_nodes_of_one_gestor_share_its_queue() {
        let (open, sizes, send) = gated();
        let pool = Pipeline::start(2, 100, 50, Duration::ZERO, send);
        let at = |id| PeerRef {
            id,
            addr: peer(1).addr,
        };
        let waiters: Vec<Arc<Waiter>> = (0..6).map(|_| Waiter::new()).collect();
        for (i, w) in waiters.iter().enumerate() {
            let holder = at(100 + i as u64);
            pool.enqueue(&holder, vec![rec(i)], Some(w.clone()))
                .unwrap();
        }
        open.store(true, Ordering::SeqCst);
        for w in &waiters {
            assert_eq!(
                w.wait(1, Duration::from_secs(5)),
                vec![(peer(1).addr, Ok(()))]
            );
        }
        let sizes = lock(&sizes).clone();
        assert!(sizes.len() <= 2, "one gestor, one queue: {sizes:?}");
        pool.stop();
    }

    #[test]
    fn full_queue_refuses_and_failures_reach_the_waiter() {
        let (open, _, send) = gated();
        let pool = Pipeline::start(1, 3, 10, Duration::ZERO, send);
        let w = Waiter::new();
        pool.enqueue(&peer(666), vec![rec(0)], Some(w.clone()))
            .unwrap();
        // The first job may already be in flight; fill the queue behind it.
        let mut refused = None;
        for i in 1..10 {
            if let Err(e) = pool.enqueue(&peer(666), vec![rec(i)], None) {
                refused = Some(e);
                break;
            }
        }
        assert_eq!(refused, Some(EnqueueError::Full(peer(666).addr)));
        open.store(true, Ordering::SeqCst);
        let got = w.wait(1, Duration::from_secs(5));
        assert_eq!(got, vec![(peer(666).addr, Err("unreachable".to_string()))]);
        pool.stop();
        assert_eq!(
            pool.enqueue(&peer(1), vec![rec(0)], None),
            Err(EnqueueError::Stopping)
        );
    }

    #[test]
    fn stop_fails_queued_waiters() {
        let (_open, _, send) = gated();
        let pool = Pipeline::start(1, 100, 1, Duration::ZERO, send);
        pool.enqueue(&peer(1), vec![rec(0)], None).unwrap();
        let w = Waiter::new();
        pool.enqueue(&peer(1), vec![rec(1)], Some(w.clone()))
            .unwrap();
        // Wait until the sender holds the first job, then stop.
        let started = std::time::Instant::now();
        while lock(&pool.state)
            .holders
            .get(&peer(1).addr)
            .is_some_and(|q| !q.in_flight)
        {
            assert!(started.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(2));
        }
        pool.stop();
        assert_eq!(w.wait(1, Duration::from_secs(1)).len(), 1);
    }
}
