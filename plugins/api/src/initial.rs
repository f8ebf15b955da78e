//! `initial.*`: the initial-gestors list (served by `gestor_initial`).

use crate::Empty;
use gestor_sdk::Timestamp;
use serde::{Deserialize, Serialize};

/// The list, versioned; the newest version wins. Also the body of the
/// `initial` signal (topic [`crate::topics::INITIAL`]) and the
/// `status.initial` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitialList {
    pub version: Timestamp,
    pub gestores: Vec<String>,
}

kinds! {
    /// `initial.get` — **client**: the current list. Asked by a joining
    /// gestor of the gestor it joins through; the same list is attached to
    /// every reply to anyone, so it is no secret and clients may ask too.
    Get = "initial.get", Client, Empty => InitialList;
}
