//! `dir.*`: the directory on the gestor responsible for a user (served by
//! `gestor_directory`). The bodies are the [`crate::user`] ones.

use crate::user::{Auth, Authenticated, Credentials, Done, Found, LoggedIn, Registered, UserOnly};
use gestor_sdk::ErrorCode;
use serde::{Deserialize, Serialize};

/// Most accounts in one `dir.import` / `dir.import_owned` request.
pub const MAX_IMPORT_BATCH: usize = 1000;

/// One account to import: what another directory holds about a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportEntry {
    pub username: String,
    /// An argon2id hash in PHC string format (`$argon2id$v=19$m=…`), as
    /// `user.register` would have stored it; verified at login with its own
    /// parameters.
    pub password_hash: String,
    /// `HOST:PORT`, as for `user.login`; none leaves the address empty.
    #[serde(default)]
    pub address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportBatch {
    pub entries: Vec<ImportEntry>,
}

/// An entry that was not imported, and why (`code` says whether retrying
/// can help: `unavailable`/`busy` can, `bad_request` cannot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportRefusal {
    pub username: String,
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    /// New accounts written and acknowledged (owner + copies).
    pub imported: u64,
    /// Names that already had a live account: left as they were.
    pub existing: u64,
    pub refused: Vec<ImportRefusal>,
}

impl ImportReport {
    pub fn merge(&mut self, other: ImportReport) {
        self.imported += other.imported;
        self.existing += other.existing;
        self.refused.extend(other.refused);
    }
}

kinds! {
    /// `dir.register` — **internal**: `user.register` forwarded by the
    /// gestor a client asked to the responsible one.
    Register = "dir.register", Internal, Credentials => Registered;
    /// `dir.login` — **internal**: forwarded `user.login`.
    Login = "dir.login", Internal, Credentials => LoggedIn;
    /// `dir.lookup` — **internal**: forwarded `user.lookup`; also called
    /// locally by the mailbox plugin on the owner (presence, mailbox checks).
    /// Fast path: answered from the owner's store, without waiting.
    Lookup = "dir.lookup", Internal + fast_path, UserOnly => Found;
    /// `dir.set_address` — **internal**: forwarded `user.set_address`.
    SetAddress = "dir.set_address", Internal, Authenticated => Done;
    /// `dir.logout` — **internal**: forwarded `user.logout`.
    Logout = "dir.logout", Internal, Authenticated => Done;
    /// `dir.delete` — **internal**: forwarded `user.delete`.
    Delete = "dir.delete", Internal, Credentials => Done;
    /// `dir.authenticate` — **local**: is `token` the user's current
    /// session? Asked only by other plugins on the owner (the mailbox) with
    /// `call_local`; never forwards. From the network it would be a
    /// token-guessing oracle.
    Authenticate = "dir.authenticate", Local, Auth => bool;
    /// `dir.import` — **internal** (an operator's credential, `gestor
    /// import`): accounts from another directory. Any gestor takes it,
    /// finds each entry's owner (one ring lookup per owner touched: the
    /// entries are sorted by ring position) and sends each owner its share.
    Import = "dir.import", Internal, ImportBatch => ImportReport;
    /// `dir.import_owned` — **internal**: the share of one owner, which
    /// writes the new accounts together and has them copied as one batch.
    ImportOwned = "dir.import_owned", Internal, ImportBatch => ImportReport;
}
