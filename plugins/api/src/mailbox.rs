//! `mailbox.*`: mailboxes on the gestor responsible for their holder, and
//! its copies on the successors (served by `gestor_mailbox`).

use crate::chat::ChatMessage;
use crate::mail::{AckBody, Acked, Fetched, PutDone, PutMail};
use crate::user::Auth;
use serde::{Deserialize, Serialize};

/// What a mailbox holds: a message for `to`, or (with `bounce`) the notice,
/// held for the original sender `from`, that a message to `to` expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    #[serde(flatten)]
    pub mail: ChatMessage,
    /// When the holding gestor first stored it (wall ms); expiry counts from here.
    #[serde(default)]
    pub stored_ms: u64,
    /// Why the message could not be delivered; set on bounces only.
    #[serde(default)]
    pub bounce: Option<String>,
}

impl Held {
    /// The user whose mailbox holds this item.
    pub fn holder(&self) -> &str {
        if self.bounce.is_some() {
            &self.mail.from
        } else {
            &self.mail.to
        }
    }
}

/// `mailbox.copy`: the owner's changes, applied by a successor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyBody {
    #[serde(default)]
    pub puts: Vec<Held>,
    /// `(holder, id)` pairs acknowledged on the owner.
    #[serde(default)]
    pub removed: Vec<(String, String)>,
}

kinds! {
    /// `mailbox.send` — **internal**: `mail.put` forwarded to the
    /// *sender's* owner, which authenticates the sender.
    Send = "mailbox.send", Internal, PutMail => PutDone;
    /// `mailbox.put` — **internal**: an item (mail or bounce) handed by the
    /// sender's owner (or an expiring owner) to the holder's owner. It
    /// carries no credential: only gestores may send it.
    Put = "mailbox.put", Internal, Held => PutDone;
    /// `mailbox.fetch` — **internal**: forwarded `mail.fetch`.
    Fetch = "mailbox.fetch", Internal, Auth => Fetched;
    /// `mailbox.ack` — **internal**: forwarded `mail.ack`.
    Ack = "mailbox.ack", Internal, AckBody => Acked;
    /// `mailbox.copy` — **internal**: the owner's changes to its
    /// successors; answers how many were applied.
    Copy = "mailbox.copy", Internal + upkeep, CopyBody => u64;
}
