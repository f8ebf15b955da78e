//! `mail.*`: offline mailboxes as clients see them (served by
//! `gestor_mailbox`). Any gestor accepts these and forwards them to the
//! responsible gestor as [`crate::mailbox`] kinds.

use crate::chat::ChatMessage;
use crate::user::Auth;
use serde::{Deserialize, Serialize};

/// `mail.put` (and `mailbox.send`): the sender leaves `mail` in the
/// recipient's mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutMail {
    pub token: String,
    #[serde(flatten)]
    pub mail: ChatMessage,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutDone {
    /// False when the mailbox already held (or had delivered) this id.
    pub stored: bool,
    /// Request URL of the gestor holding the recipient's mailbox.
    pub holder: String,
}

/// `mail.fetch` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    /// Messages for the user, ordered by sender, then sequence number.
    pub messages: Vec<ChatMessage>,
    /// Notices of the user's own messages that expired undelivered.
    pub bounces: Vec<Bounce>,
}

/// A message of the user's that expired undelivered, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bounce {
    #[serde(flatten)]
    pub mail: ChatMessage,
    pub reason: String,
}

/// `mail.ack`: the ids fetched and kept; they are deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckBody {
    pub username: String,
    pub token: String,
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acked {
    pub removed: u64,
}

kinds! {
    /// `mail.put` — **client**: leave a message for an offline user.
    Put = "mail.put", Client, PutMail => PutDone;
    /// `mail.fetch` — **client**: the user's held messages and bounces.
    Fetch = "mail.fetch", Client, Auth => Fetched;
    /// `mail.ack` — **client**: delete fetched messages.
    Ack = "mail.ack", Client, AckBody => Acked;
}
