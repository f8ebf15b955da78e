//! Presence, I/O-free: who is online, when an alive signal needs a
//! replicated write, and whom the sweep turns offline.
//!
//! The owner of a user keeps the time of the user's last alive signal in
//! memory only. An alive signal is *not* a replicated write (seed §6,
//! DESIGN-NOTES §3): it refreshes this memory. A presence write (a new
//! version of the record, stored and copied) happens only when
//! - a signal comes from a user whose record says offline (back online), or
//!   whom this node does not remember (it restarted, or took the user over
//!   from a failed owner), so the record's `last_seen_ms` catches up; and
//! - the sweep finds a remembered user silent for longer than the timeout
//!   while the record says online.
//!
//! Login, logout, address change and delete are ordinary replicated writes
//! made by their handlers; they tell the core through [`Presence::logged_in`]
//! and [`Presence::forget`]. The plugin is the I/O shell: it reads records,
//! queues the writes this core asks for and tells it the time.

use crate::writes::OnlineWrite;
use gestor_sdk::UserRecord;
use std::collections::HashMap;

/// What an alive signal asks of the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAlive {
    /// Memory refreshed; nothing to write.
    Refreshed,
    /// Write the record online with `last_seen_ms` = this signal's time.
    MarkOnline { last_seen_ms: u64 },
}

/// A user the sweep found silent: write the record offline (if it still
/// says online) with `last_seen_ms` at least `last_alive_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Silent {
    pub username: String,
    pub last_alive_ms: u64,
}

/// What the owner remembers of one user.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    /// Last alive signal (or login), wall ms.
    last_alive: u64,
    /// The record was written online since this node began tracking the
    /// user (or such a write is on its way): signals need not write.
    written: bool,
}

/// The presence state of one owner.
#[derive(Debug, Clone)]
pub struct Presence {
    timeout_ms: u64,
    tracked: HashMap<String, Tracked>,
}

impl Presence {
    pub fn new(timeout_ms: u64) -> Self {
        Presence {
            timeout_ms,
            tracked: HashMap::new(),
        }
    }

    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    /// Users remembered as alive.
    pub fn len(&self) -> usize {
        self.tracked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracked.is_empty()
    }

    /// A valid alive signal from `username`, whose stored record says
    /// `record_online`, arrived at `now`.
    pub fn alive(&mut self, username: &str, record_online: bool, now: u64) -> OnAlive {
        let t = self.tracked.entry(username.to_string()).or_insert(Tracked {
            last_alive: now,
            written: false,
        });
        // Never move the memory back (signals may arrive out of order).
        t.last_alive = t.last_alive.max(now);
        if record_online && t.written {
            OnAlive::Refreshed
        } else {
            t.written = true;
            OnAlive::MarkOnline { last_seen_ms: now }
        }
    }

    /// The write an [`OnAlive::MarkOnline`] asked for could not be made (the
    /// queue was full, or it failed): the next signal asks again instead of
    /// being taken as a refresh. The user stays tracked, so the sweep still
    /// turns the record offline if the signals stop.
    pub fn write_lost(&mut self, username: &str) {
        if let Some(t) = self.tracked.get_mut(username) {
            t.written = false;
        }
    }

    /// A login (itself a replicated write, online) at `now`.
    pub fn logged_in(&mut self, username: &str, now: u64) {
        self.tracked.insert(
            username.to_string(),
            Tracked {
                last_alive: now,
                written: true,
            },
        );
    }

    /// Logout or delete (replicated writes, offline): signals stop counting.
    pub fn forget(&mut self, username: &str) {
        self.tracked.remove(username);
    }

    /// What a lookup answers at `now` for a record saying `record_online`
    /// with `record_last_seen_ms`: `(online, last_seen_ms)`. Online needs the
    /// record online *and* a sign of life within the timeout, so a user is
    /// shown offline on time even before the sweep's write, or on a node that
    /// does not remember the user.
    pub fn lookup(
        &self,
        username: &str,
        record_online: bool,
        record_last_seen_ms: u64,
        now: u64,
    ) -> (bool, u64) {
        let last_alive = self.tracked.get(username).map_or(0, |t| t.last_alive);
        let last_seen = record_last_seen_ms.max(last_alive);
        let online = record_online && now.saturating_sub(last_seen) <= self.timeout_ms;
        (online, last_seen)
    }

    /// Users silent for longer than the timeout at `now`; they are forgotten
    /// (their next signal is a [`OnAlive::MarkOnline`]).
    pub fn sweep(&mut self, now: u64) -> Vec<Silent> {
        let timeout = self.timeout_ms;
        let mut out = Vec::new();
        self.tracked.retain(|username, t| {
            let silent = now.saturating_sub(t.last_alive) > timeout;
            if silent {
                out.push(Silent {
                    username: username.clone(),
                    last_alive_ms: t.last_alive,
                });
            }
            !silent
        });
        out.sort_by(|a, b| a.username.cmp(&b.username));
        out
    }

    /// Whether `username` signalled after `since` (a queued offline write
    /// for it is out of date).
    pub fn alive_since(&self, username: &str, since: u64) -> bool {
        self.tracked
            .get(username)
            .is_some_and(|t| t.last_alive > since)
    }
}

/// Apply a queued "back online" write to the user's current record: only
/// if the session that signalled is still the record's (not logged out, or
/// in again, since). Returns whether the record changed and must be written.
pub fn apply_online(record: &mut UserRecord, write: &OnlineWrite) -> bool {
    if record.deleted || record.session_hash != write.session_hash {
        return false;
    }
    record.online = true;
    record.last_seen_ms = record.last_seen_ms.max(write.last_seen_ms);
    true
}

/// Apply the sweep's verdict on a silent user to the current record: only a
/// record still saying online changes. Returns whether it must be written.
pub fn apply_offline(record: &mut UserRecord, silent: &Silent) -> bool {
    if record.deleted || !record.online {
        return false;
    }
    record.online = false;
    record.last_seen_ms = record.last_seen_ms.max(silent.last_alive_ms);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_refresh_without_writes_once_online() {
        let mut p = Presence::new(1_000);
        p.logged_in("ana", 0);
        for t in (100..5_000).step_by(300) {
            assert_eq!(p.alive("ana", true, t), OnAlive::Refreshed, "at {t}");
        }
        assert!(p.sweep(5_000).is_empty());
    }

    #[test]
    fn an_unknown_user_or_offline_record_is_written_online() {
        let mut p = Presence::new(1_000);
        // Not remembered (restart, takeover): write even if the record says online.
        assert_eq!(
            p.alive("ana", true, 10),
            OnAlive::MarkOnline { last_seen_ms: 10 }
        );
        // Remembered, but the record says offline (swept, or a lost write).
        assert_eq!(
            p.alive("ana", false, 20),
            OnAlive::MarkOnline { last_seen_ms: 20 }
        );
        assert_eq!(p.alive("ana", true, 30), OnAlive::Refreshed);
        // A lost write makes the next signal ask again, and only that one.
        p.write_lost("ana");
        assert_eq!(
            p.alive("ana", true, 40),
            OnAlive::MarkOnline { last_seen_ms: 40 }
        );
        assert_eq!(p.alive("ana", true, 50), OnAlive::Refreshed);
        // Still swept after a lost write.
        p.write_lost("ana");
        assert_eq!(p.sweep(1_051).len(), 1);
    }

    #[test]
    fn the_sweep_takes_silent_users_only_once() {
        let mut p = Presence::new(1_000);
        p.logged_in("ana", 0);
        p.logged_in("bea", 0);
        p.alive("bea", true, 900);
        assert!(
            p.sweep(1_000).is_empty(),
            "exactly the timeout is still alive"
        );
        let silent = p.sweep(1_001);
        assert_eq!(
            silent,
            vec![Silent {
                username: "ana".into(),
                last_alive_ms: 0
            }]
        );
        assert!(p.sweep(1_002).is_empty(), "swept users are forgotten");
        assert_eq!(p.len(), 1);
        assert!(p.alive_since("bea", 899));
        assert!(!p.alive_since("bea", 900));
        assert!(!p.alive_since("ana", 0));
    }

    #[test]
    fn lookup_needs_the_record_online_and_a_recent_sign() {
        let mut p = Presence::new(1_000);
        assert_eq!(p.lookup("ana", true, 500, 1_500), (true, 500));
        assert_eq!(p.lookup("ana", true, 500, 1_501), (false, 500));
        assert_eq!(p.lookup("ana", false, 500, 600), (false, 500));
        p.alive("ana", true, 1_400);
        assert_eq!(p.lookup("ana", true, 500, 2_000), (true, 1_400));
        p.forget("ana");
        assert_eq!(p.lookup("ana", true, 500, 2_000), (false, 500));
    }

    #[test]
    fn late_signals_never_move_memory_back() {
        let mut p = Presence::new(1_000);
        p.logged_in("ana", 5_000);
        assert_eq!(p.alive("ana", true, 4_000), OnAlive::Refreshed);
        assert!(p.sweep(5_900).is_empty());
    }
}
