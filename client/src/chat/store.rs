//! A chat user's state on disk, under `HOME/chat/USER/`:
//!
//! | file | content |
//! | --- | --- |
//! | `outbox.json` | `{next_seq: {peer: n}, messages: [message + mailbox flag]}`: not yet handed off |
//! | `inbox.jsonl` | delivered messages, one JSON object a line, in delivery order |
//! | `recv.json` | `{expected: {peer: seq}, held: [{message, since_ms}]}`: per-sender order |
//! | `failed.jsonl` | messages reported undeliverable to this user (their sender) |
//! | `contacts.json` | watched users |
//! | `profile.json` | `{address}`: the address of the last `gestor chat` |
//!
//! JSON files are replaced atomically (write a temporary file, rename).
//! Every read-modify-write holds an exclusive `flock` on `lock`, so `gestor
//! chat`, `gestor send` and `gestor inbox` for the same user can run at once.

use super::{ChatError, ChatMessage, Failure};
use crate::sessions::{read_json, write_atomic};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// A message waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    #[serde(flatten)]
    pub message: ChatMessage,
    /// Whether it may be left in the recipient's mailbox when they are offline.
    pub mailbox: bool,
    /// A `gestor send` that queued it failed without knowing whether it
    /// arrived (no answer): the same text sent again to the same recipient
    /// re-sends this message (same id) instead of queueing a second one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unconfirmed: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outbox {
    /// Next sequence number per recipient (starts at 1).
    pub next_seq: BTreeMap<String, u64>,
    /// In the order they were written, hence in `seq` order per recipient.
    pub messages: Vec<Outgoing>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldMessage {
    pub message: ChatMessage,
    /// When it was held (wall ms): it waits at most `gap_wait` for the missing ones.
    pub since_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecvState {
    /// Next sequence number expected from each sender.
    pub expected: BTreeMap<String, u64>,
    /// Arrived ahead of a missing predecessor; acknowledged, not yet delivered.
    pub held: Vec<HeldMessage>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Profile {
    pub address: Option<String>,
}

/// What became of one received message (the `chat.message` reply status).
pub use gestor_api::chat::Accepted;

pub struct ChatStore {
    dir: PathBuf,
    home: PathBuf,
    user: String,
    /// Threads of this process; `flock` serialises processes.
    local: Mutex<()>,
}

struct Locked<'a> {
    _local: MutexGuard<'a, ()>,
    // Closing the file releases the flock.
    _file: File,
}

fn io(path: &Path, e: impl std::fmt::Display) -> ChatError {
    ChatError::Io(format!("{}: {e}", path.display()))
}

impl ChatStore {
    /// The state of `user` under `home` (`$GESTOR_HOME`), created if missing.
    pub fn open(home: &Path, user: &str) -> Result<ChatStore, ChatError> {
        let dir = home.join("chat").join(user);
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        Ok(ChatStore {
            dir,
            home: home.to_path_buf(),
            user: user.to_string(),
            local: Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    fn lock(&self) -> Result<Locked<'_>, ChatError> {
        let local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        // SAFETY: flock on a descriptor we own; released when `file` closes.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(io(&path, std::io::Error::last_os_error()));
        }
        Ok(Locked {
            _local: local,
            _file: file,
        })
    }

    fn read_json<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T, ChatError> {
        Ok(read_json(&self.dir.join(name))?.unwrap_or_default())
    }

    fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), ChatError> {
        Ok(write_atomic(&self.dir.join(name), value)?)
    }

    fn read_lines<T: DeserializeOwned>(&self, name: &str) -> Result<Vec<T>, ChatError> {
        let path = self.dir.join(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&path, e)),
        };
        let mut out = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| io(&path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(&line) {
                Ok(v) => out.push(v),
                // A torn last line after a crash: skip it rather than lose the file.
                Err(e) => tracing::warn!(file = %path.display(), "unreadable line skipped: {e}"),
            }
        }
        Ok(out)
    }

    fn append_lines<T: Serialize>(&self, name: &str, values: &[T]) -> Result<(), ChatError> {
        if values.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(name);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        let mut buf = Vec::new();
        for v in values {
            serde_json::to_writer(&mut buf, v).map_err(|e| io(&path, e))?;
            buf.push(b'\n');
        }
        file.write_all(&buf).map_err(|e| io(&path, e))?;
        // Durable before the sender is acknowledged.
        file.sync_data().map_err(|e| io(&path, e))
    }

    // ---- outbox ----------------------------------------------------------------

    /// Add a message for `to` with the next sequence number; returns it.
    pub fn enqueue(
        &self,
        to: &str,
        text: &str,
        mailbox: bool,
        now_ms: u64,
    ) -> Result<ChatMessage, ChatError> {
        let _g = self.lock()?;
        let mut outbox: Outbox = self.read_json("outbox.json")?;
        let seq = outbox.next_seq.get(to).copied().unwrap_or(1);
        outbox.next_seq.insert(to.to_string(), seq + 1);
        let message = ChatMessage {
            id: super::new_id(),
            from: self.user.clone(),
            to: to.to_string(),
            seq,
            sent_ms: now_ms,
            text: text.to_string(),
        };
        outbox.messages.push(Outgoing {
            message: message.clone(),
            mailbox,
            unconfirmed: false,
        });
        self.write_json("outbox.json", &outbox)?;
        Ok(message)
    }

    pub fn outbox(&self) -> Result<Vec<Outgoing>, ChatError> {
        let _g = self.lock()?;
        Ok(self.read_json::<Outbox>("outbox.json")?.messages)
    }

    /// Remove a handed-off message from the outbox.
    pub fn sent(&self, id: &str) -> Result<(), ChatError> {
        let _g = self.lock()?;
        let mut outbox: Outbox = self.read_json("outbox.json")?;
        let before = outbox.messages.len();
        outbox.messages.retain(|m| m.message.id != id);
        if outbox.messages.len() != before {
            self.write_json("outbox.json", &outbox)?;
        }
        Ok(())
    }

    /// Take back a message that was never handed off (the command that
    /// queued it failed): out of the outbox, and its sequence number given
    /// back when it was the last one issued to its recipient, so the
    /// recipient sees no gap. Returns false when it was no longer queued
    /// (another client of this user handed it off meanwhile).
    pub fn withdraw(&self, id: &str) -> Result<bool, ChatError> {
        let _g = self.lock()?;
        let mut outbox: Outbox = self.read_json("outbox.json")?;
        let Some(at) = outbox.messages.iter().position(|m| m.message.id == id) else {
            return Ok(false);
        };
        let m = outbox.messages.remove(at).message;
        if let Some(next) = outbox.next_seq.get_mut(&m.to) {
            if *next == m.seq + 1 {
                *next = m.seq;
            }
        }
        self.write_json("outbox.json", &outbox)?;
        Ok(true)
    }

    /// Mark a queued message as possibly arrived (see [`Outgoing::unconfirmed`]).
    pub fn mark_unconfirmed(&self, id: &str) -> Result<(), ChatError> {
        let _g = self.lock()?;
        let mut outbox: Outbox = self.read_json("outbox.json")?;
        if let Some(m) = outbox.messages.iter_mut().find(|m| m.message.id == id) {
            if !m.unconfirmed {
                m.unconfirmed = true;
                self.write_json("outbox.json", &outbox)?;
            }
        }
        Ok(())
    }

    /// The queued, unconfirmed message to `to` with exactly `text`, if any.
    pub fn unconfirmed(&self, to: &str, text: &str) -> Result<Option<ChatMessage>, ChatError> {
        let _g = self.lock()?;
        let outbox: Outbox = self.read_json("outbox.json")?;
        Ok(outbox
            .messages
            .into_iter()
            .find(|m| m.unconfirmed && m.message.to == to && m.message.text == text)
            .map(|m| m.message))
    }

    /// Move a message out of the outbox into `failed.jsonl`.
    pub fn give_up(
        &self,
        message: &ChatMessage,
        reason: &str,
        now_ms: u64,
    ) -> Result<Failure, ChatError> {
        let failure = Failure {
            message: message.clone(),
            reason: reason.to_string(),
            reported_ms: now_ms,
        };
        let _g = self.lock()?;
        let mut outbox: Outbox = self.read_json("outbox.json")?;
        outbox.messages.retain(|m| m.message.id != message.id);
        self.append_lines("failed.jsonl", std::slice::from_ref(&failure))?;
        self.write_json("outbox.json", &outbox)?;
        Ok(failure)
    }

    /// Record a bounce from the mailbox (once per id).
    pub fn record_failure(&self, failure: &Failure) -> Result<bool, ChatError> {
        let _g = self.lock()?;
        let known: Vec<Failure> = self.read_lines("failed.jsonl")?;
        if known.iter().any(|f| f.message.id == failure.message.id) {
            return Ok(false);
        }
        self.append_lines("failed.jsonl", std::slice::from_ref(failure))?;
        Ok(true)
    }

    pub fn failures(&self) -> Result<Vec<Failure>, ChatError> {
        let _g = self.lock()?;
        self.read_lines("failed.jsonl")
    }

    // ---- inbox -----------------------------------------------------------------

    /// Take a received message: de-duplicate by id, keep per-sender order.
    /// Returns what happened and every message delivered by it, in order.
    pub fn accept(
        &self,
        message: &ChatMessage,
        now_ms: u64,
    ) -> Result<(Accepted, Vec<ChatMessage>), ChatError> {
        let _g = self.lock()?;
        let inbox: Vec<ChatMessage> = self.read_lines("inbox.jsonl")?;
        let mut state: RecvState = self.read_json("recv.json")?;
        let seen = inbox.iter().any(|m| m.id == message.id)
            || state.held.iter().any(|h| h.message.id == message.id);
        if seen {
            return Ok((Accepted::Duplicate, Vec::new()));
        }
        let from = &message.from;
        // A sender never heard from starts wherever it is (e.g. our state is
        // new); after that, `expected` is the next seq in order. A lower seq
        // with a new id (the sender lost its state) is delivered at once.
        let expected = state.expected.get(from).copied().unwrap_or(message.seq);
        if message.seq > expected {
            state.held.push(HeldMessage {
                message: message.clone(),
                since_ms: now_ms,
            });
            self.write_json("recv.json", &state)?;
            return Ok((Accepted::Held, Vec::new()));
        }
        let mut delivered = vec![message.clone()];
        let mut next = expected.max(message.seq + 1);
        loop {
            let at = state
                .held
                .iter()
                .position(|h| &h.message.from == from && h.message.seq <= next);
            let Some(at) = at else { break };
            let h = state.held.remove(at);
            next = next.max(h.message.seq + 1);
            delivered.push(h.message);
        }
        state.expected.insert(from.clone(), next);
        self.append_lines("inbox.jsonl", &delivered)?;
        self.write_json("recv.json", &state)?;
        Ok((Accepted::Delivered, delivered))
    }

    /// Deliver held messages that waited longer than `gap_wait_ms` for their
    /// predecessors (those are presumed lost or bounced to their sender).
    pub fn release_held(
        &self,
        gap_wait_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<ChatMessage>, ChatError> {
        let _g = self.lock()?;
        let mut state: RecvState = self.read_json("recv.json")?;
        let overdue: BTreeSet<String> = state
            .held
            .iter()
            .filter(|h| now_ms.saturating_sub(h.since_ms) >= gap_wait_ms)
            .map(|h| h.message.from.clone())
            .collect();
        if overdue.is_empty() {
            return Ok(Vec::new());
        }
        let (mut release, keep): (Vec<HeldMessage>, Vec<HeldMessage>) = state
            .held
            .into_iter()
            .partition(|h| overdue.contains(&h.message.from));
        state.held = keep;
        release.sort_by(|a, b| {
            (&a.message.from, a.message.seq).cmp(&(&b.message.from, b.message.seq))
        });
        let delivered: Vec<ChatMessage> = release.into_iter().map(|h| h.message).collect();
        for m in &delivered {
            tracing::warn!(from = %m.from, seq = m.seq, "earlier messages missing; delivering out of the gap");
            let next = state.expected.entry(m.from.clone()).or_insert(0);
            *next = (*next).max(m.seq + 1);
        }
        self.append_lines("inbox.jsonl", &delivered)?;
        self.write_json("recv.json", &state)?;
        Ok(delivered)
    }

    pub fn held_count(&self) -> Result<usize, ChatError> {
        let _g = self.lock()?;
        Ok(self.read_json::<RecvState>("recv.json")?.held.len())
    }

    /// Every delivered message, in delivery order (in `seq` order per sender).
    pub fn inbox(&self) -> Result<Vec<ChatMessage>, ChatError> {
        let _g = self.lock()?;
        self.read_lines("inbox.jsonl")
    }

    // ---- contacts and profile --------------------------------------------------

    pub fn contacts(&self) -> Result<Vec<String>, ChatError> {
        let _g = self.lock()?;
        self.read_json("contacts.json")
    }

    /// Add contacts; returns whether the list changed.
    pub fn add_contacts(&self, users: &[String]) -> Result<bool, ChatError> {
        let _g = self.lock()?;
        let mut list: Vec<String> = self.read_json("contacts.json")?;
        let before = list.len();
        for u in users {
            if u != &self.user && !list.contains(u) {
                list.push(u.clone());
            }
        }
        if list.len() != before {
            self.write_json("contacts.json", &list)?;
        }
        Ok(list.len() != before)
    }

    pub fn profile(&self) -> Result<Profile, ChatError> {
        let _g = self.lock()?;
        self.read_json("profile.json")
    }

    pub fn set_address(&self, address: &str) -> Result<(), ChatError> {
        let _g = self.lock()?;
        self.write_json(
            "profile.json",
            &Profile {
                address: Some(address.to_string()),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(from: &str, seq: u64, id: &str) -> ChatMessage {
        ChatMessage {
            id: id.into(),
            from: from.into(),
            to: "bob".into(),
            seq,
            sent_ms: seq,
            text: format!("m{seq}"),
        }
    }

    #[test]
    fn order_dedupe_and_gaps() {
        let dir = tempfile_dir();
        let s = ChatStore::open(&dir, "bob").unwrap();
        assert_eq!(
            s.accept(&msg("al", 1, "a1"), 0).unwrap().0,
            Accepted::Delivered
        );
        assert_eq!(
            s.accept(&msg("al", 1, "a1"), 0).unwrap().0,
            Accepted::Duplicate
        );
        assert_eq!(s.accept(&msg("al", 3, "a3"), 0).unwrap().0, Accepted::Held);
        assert_eq!(
            s.accept(&msg("al", 3, "a3"), 0).unwrap().0,
            Accepted::Duplicate
        );
        let (a, d) = s.accept(&msg("al", 2, "a2"), 0).unwrap();
        assert_eq!(a, Accepted::Delivered);
        assert_eq!(d.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(s.accept(&msg("al", 5, "a5"), 10).unwrap().0, Accepted::Held);
        assert!(s.release_held(100, 50).unwrap().is_empty());
        assert_eq!(s.release_held(100, 200).unwrap().len(), 1);
        let seqs: Vec<u64> = s.inbox().unwrap().iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 5]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn outbox_survives_reopen() {
        let dir = tempfile_dir();
        let s = ChatStore::open(&dir, "al").unwrap();
        let m1 = s.enqueue("bob", "hi", true, 1).unwrap();
        let m2 = s.enqueue("bob", "there", true, 2).unwrap();
        assert_eq!((m1.seq, m2.seq), (1, 2));
        drop(s);
        let s = ChatStore::open(&dir, "al").unwrap();
        assert_eq!(s.outbox().unwrap().len(), 2);
        s.sent(&m1.id).unwrap();
        assert_eq!(s.outbox().unwrap()[0].message.id, m2.id);
        assert_eq!(s.enqueue("bob", "x", true, 3).unwrap().seq, 3);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn withdraw_gives_the_last_seq_back_and_unconfirmed_is_found_again() {
        let dir = tempfile_dir();
        let s = ChatStore::open(&dir, "al").unwrap();
        let m1 = s.enqueue("bob", "hi", true, 1).unwrap();
        let m2 = s.enqueue("bob", "there", true, 2).unwrap();
        assert!(s.withdraw(&m2.id).unwrap());
        assert!(!s.withdraw(&m2.id).unwrap(), "already gone");
        assert_eq!(s.enqueue("bob", "again", true, 3).unwrap().seq, 2);
        // Not the last one issued: no seq given back (the next would collide).
        assert!(s.withdraw(&m1.id).unwrap());
        assert_eq!(s.enqueue("bob", "later", true, 4).unwrap().seq, 3);
        assert_eq!(s.unconfirmed("bob", "later").unwrap(), None);
        let later = s.outbox().unwrap().last().unwrap().message.clone();
        s.mark_unconfirmed(&later.id).unwrap();
        assert_eq!(s.unconfirmed("bob", "later").unwrap(), Some(later));
        assert_eq!(s.unconfirmed("bob", "other text").unwrap(), None);
        std::fs::remove_dir_all(&dir).ok();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("gestor-chat-test-{}", super::super::new_id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
