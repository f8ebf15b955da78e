//! `chat.*`: what a chat client serves on its own address (`tcp://ADDRESS`,
//! host/src/chat). Not served by gestores: peers send `chat.message` to each
//! other directly, and the mailbox plugin pushes `chat.presence`.

use crate::presence;
use gestor_sdk::Value;
use serde::{Deserialize, Serialize};

/// A chat message, as sent peer to peer (`chat.message`) and through mailboxes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// 32 lowercase hex digits, random; the de-duplication key.
    pub id: String,
    pub from: String,
    pub to: String,
    /// 1, 2, 3… per sender→recipient pair.
    pub seq: u64,
    /// Sender's wall clock when written (ms since the Unix epoch).
    pub sent_ms: u64,
    pub text: String,
}

/// What became of one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accepted {
    /// Delivered to the inbox (possibly with held successors).
    Delivered,
    /// Kept until the messages before it arrive.
    Held,
    /// Seen before; not delivered again.
    Duplicate,
}

/// `chat.message` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageAck {
    pub id: String,
    pub status: Accepted,
}

kinds! {
    /// `chat.message` — **client**: a message from a peer, to the
    /// recipient's chat client. Sent by clients to clients.
    Message = "chat.message", Client, ChatMessage => MessageAck;
    /// `chat.presence` — **client**: a watched contact's presence changed;
    /// pushed by the contact's gestor to the watcher's chat client (a
    /// client endpoint, which accepts it from anyone). The chat client
    /// answers `true`; the gestor accepts any body, it only needs a
    /// non-error reply.
    Presence = "chat.presence", Client, presence::Presence => Value;
}
