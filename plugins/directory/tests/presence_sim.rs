//! Seeded random schedules driving the presence core with simulated time.
//!
//! One owner, a few users. Each user's client logs in and out, sends alive
//! signals (some lost on the way), falls silent and resumes; the owner
//! restarts (memory and queued writes lost, records kept), and some queued
//! writes fail. The shell's steps are played as the plugin plays them: the
//! signals "thread" asks the core and queues, a writer round drains the
//! queue (the plugin's writer does when woken), the sweep runs every
//! timeout/4.
//!
//! Checked at every step, from the schedule's own bookkeeping:
//! - a lookup never says online unless the user is logged in and the owner
//!   had a sign of life from it within the timeout;
//! - a user the owner tracks and has written online (login, or a signal's
//!   write made, with no restart, lost write or sweep since) whose last
//!   sign of life is within the timeout is shown online;
//! - a silent user's record is offline one sweep after the timeout unless
//!   the owner restarted meanwhile (lost writes included);
//! - a presence write follows a signal exactly when the record said offline
//!   or the owner did not track the user: an alive signal alone never
//!   writes, so writes stay far below signals.
//!
//! `PRESENCE_SIM_RUNS` sets the number of schedules (default 2,000).

use gestor_directory::presence::{self, OnAlive, Presence};
use gestor_directory::writes::{OnlineWrite, Pushed, WriteQueue};
use gestor_sdk::{Timestamp, UserRecord};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TIMEOUT: u64 = 1_000;
const ALIVE_EVERY: u64 = 300;
const WRITER_EVERY: u64 = 20;
const SWEEP_EVERY: u64 = TIMEOUT / 4;
const USERS: usize = 4;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Client {
    LoggedOut,
    Active,
    Silent,
}

struct User {
    name: String,
    client: Client,
    next_signal: u64,
    record: UserRecord,
    session: u64,
    /// Last sign of life the owner received (login or signal).
    last_life: Option<u64>,
    /// Owner tracks the user (the schedule's own view of the core's memory).
    tracked: bool,
    /// The record was written online since tracking began, or such a
    /// write is queued.
    synced: bool,
    /// An online write is queued: shown online after the next writer round.
    write_pending: bool,
    /// Owner restarted after `last_life`.
    restarted_since_life: bool,
}

struct Sim {
    rng: StdRng,
    now: u64,
    core: Presence,
    queue: WriteQueue,
    capacity: usize,
    users: Vec<User>,
    signals: u64,
    writes: u64,
    next_writer: u64,
    next_sweep: u64,
}

fn record(name: &str) -> UserRecord {
    UserRecord {
        username: name.into(),
        ring_pos: 1,
        address: "127.0.0.1:1".into(),
        password_hash: "x".into(),
        online: false,
        last_seen_ms: 0,
        version: Timestamp::ZERO,
        deleted: false,
        session_hash: String::new(),
    }
}

impl Sim {
    fn new(seed: u64, queue_capacity: usize) -> Sim {
        let users = (0..USERS)
            .map(|i| User {
                name: format!("user{i}"),
                client: Client::LoggedOut,
                next_signal: 0,
                record: record(&format!("user{i}")),
                session: 0,
                last_life: None,
                tracked: false,
                synced: false,
                write_pending: false,
                restarted_since_life: false,
            })
            .collect();
        Sim {
            rng: StdRng::seed_from_u64(seed),
            now: 1,
            core: Presence::new(TIMEOUT),
            queue: WriteQueue::new(queue_capacity),
            capacity: queue_capacity,
            users,
            signals: 0,
            writes: 0,
            next_writer: WRITER_EVERY,
            next_sweep: SWEEP_EVERY,
        }
    }

    fn login(&mut self, i: usize) {
        let now = self.now;
        let u = &mut self.users[i];
        u.session += 1;
        u.record.session_hash = format!("s{}", u.session);
        u.record.online = true;
        u.record.last_seen_ms = now;
        u.client = Client::Active;
        u.next_signal = now + ALIVE_EVERY;
        u.last_life = Some(now);
        u.tracked = true;
        u.synced = true;
        u.write_pending = false;
        u.restarted_since_life = false;
        self.core.logged_in(&u.name, now);
    }

    fn logout(&mut self, i: usize) {
        let now = self.now;
        let u = &mut self.users[i];
        u.record.session_hash.clear();
        u.record.online = false;
        u.record.last_seen_ms = now;
        u.client = Client::LoggedOut;
        u.tracked = false;
        u.write_pending = false;
        self.core.forget(&u.name);
    }

    /// The signals thread: token check, core, queue.
    fn signal(&mut self, i: usize) {
        let now = self.now;
        let u = &mut self.users[i];
        u.next_signal = now + ALIVE_EVERY - 50 + self.rng.gen_range(0..100);
        // Lost on the way (PUB-SUB): the owner never sees it.
        if self.rng.gen_bool(0.1) {
            return;
        }
        self.signals += 1;
        let expect_write = !u.record.online || !u.tracked || !u.synced;
        let decision = self.core.alive(&u.name, u.record.online, now);
        let wants = matches!(decision, OnAlive::MarkOnline { .. });
        assert_eq!(
            wants, expect_write,
            "{} at {now}: record online {}, tracked {}, synced {}",
            u.name, u.record.online, u.tracked, u.synced
        );
        u.last_life = Some(now);
        u.restarted_since_life = false;
        if !u.tracked {
            u.synced = false;
        }
        u.tracked = true;
        if let OnAlive::MarkOnline { last_seen_ms } = decision {
            u.synced = true;
            u.write_pending = true;
            let write = OnlineWrite {
                session_hash: u.record.session_hash.clone(),
                last_seen_ms,
            };
            if self.queue.push(&u.name, write) == Pushed::Dropped {
                self.core.write_lost(&u.name);
                u.synced = false;
                u.write_pending = false;
            }
        }
    }

    /// The presence writer's round; a few writes fail.
    fn writer(&mut self) {
        for (name, job) in self.queue.take(usize::MAX) {
            let u = self.users.iter_mut().find(|u| u.name == name).unwrap();
            u.write_pending = false;
            if self.rng.gen_bool(0.05) {
                self.core.write_lost(&name);
                u.synced = false;
                continue;
            }
            if presence::apply_online(&mut u.record, &job) {
                self.writes += 1;
            }
        }
    }

    fn sweep(&mut self) {
        let now = self.now;
        for gone in self.core.sweep(now) {
            let u = self
                .users
                .iter_mut()
                .find(|u| u.name == gone.username)
                .unwrap();
            assert!(
                now - u.last_life.unwrap_or(0) > TIMEOUT,
                "{} swept at {now} though alive at {:?}",
                u.name,
                u.last_life
            );
            u.tracked = false;
            if presence::apply_offline(&mut u.record, &gone) {
                self.writes += 1;
            }
        }
    }

    fn restart(&mut self) {
        self.core = Presence::new(TIMEOUT);
        self.queue = WriteQueue::new(self.capacity);
        for u in &mut self.users {
            u.tracked = false;
            u.synced = false;
            u.write_pending = false;
            u.restarted_since_life = true;
        }
    }

    fn check(&self) {
        for u in &self.users {
            let (online, _) =
                self.core
                    .lookup(&u.name, u.record.online, u.record.last_seen_ms, self.now);
            let life_age = u.last_life.map(|t| self.now - t);
            let logged_in = u.client != Client::LoggedOut;
            if online {
                assert!(
                    logged_in && life_age.is_some_and(|a| a <= TIMEOUT),
                    "{} shown online at {} (logged in {logged_in}, last life {:?})",
                    u.name,
                    self.now,
                    u.last_life
                );
            }
            let tracked_fresh =
                u.tracked && u.synced && !u.write_pending && !u.restarted_since_life;
            if logged_in && tracked_fresh && life_age.is_some_and(|a| a <= TIMEOUT) {
                assert!(
                    online,
                    "{} shown offline at {} though alive",
                    u.name, self.now
                );
            }
            if logged_in
                && !u.restarted_since_life
                && life_age.is_some_and(|a| a > TIMEOUT + SWEEP_EVERY)
            {
                assert!(!u.record.online, "{} still online at {}", u.name, self.now);
            }
        }
    }

    fn user_event(&mut self) {
        let i = self.rng.gen_range(0..USERS);
        match (self.users[i].client, self.rng.gen_range(0..10)) {
            (Client::LoggedOut, 0..=5) => self.login(i),
            (Client::Active, 0) | (Client::Silent, 0) => self.logout(i),
            (Client::Active, 1..=2) => self.users[i].client = Client::Silent,
            (Client::Silent, 1..=3) => {
                self.users[i].client = Client::Active;
                self.users[i].next_signal = self.now;
            }
            _ => {}
        }
    }

    fn step(&mut self) {
        self.now += self.rng.gen_range(1..60);
        while self.next_writer <= self.now {
            self.next_writer += WRITER_EVERY;
            self.writer();
        }
        while self.next_sweep <= self.now {
            self.next_sweep += SWEEP_EVERY;
            self.sweep();
        }
        for i in 0..USERS {
            if self.users[i].client == Client::Active && self.users[i].next_signal <= self.now {
                self.signal(i);
            }
        }
        match self.rng.gen_range(0..100) {
            0..=5 => self.user_event(),
            6 => self.restart(),
            _ => {}
        }
        self.check();
    }
}

#[test]
fn presence_holds_over_random_schedules() {
    let runs: u64 = std::env::var("PRESENCE_SIM_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let (mut signals, mut writes, mut dropped) = (0, 0, 0);
    for seed in 0..runs {
        let mut sim = Sim::new(seed, 2);
        for _ in 0..400 {
            sim.step();
        }
        signals += sim.signals;
        writes += sim.writes;
        dropped += sim.queue.dropped();
    }
    // Signals refresh memory; writes come only from the rare events above.
    assert!(
        writes * 3 < signals,
        "{writes} presence writes for {signals} alive signals"
    );
    eprintln!("{runs} schedules: {signals} signals, {writes} presence writes, {dropped} dropped");
}
