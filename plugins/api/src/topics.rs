//! Signal topics (PUB-SUB). A signal handler registered for a topic prefix
//! gets every signal whose topic starts with it.

/// A logged-in client to its responsible gestor, every `alive_every_ms`;
/// body [`crate::user::Alive`]. Handled by the directory.
pub const ALIVE: &str = "alive";

/// The initial-gestors list, gossiped to successors; body
/// [`crate::initial::InitialList`]. Handled by the initial plugin.
pub const INITIAL: &str = "initial";

/// A copy holder to an owner it holds copies for; body
/// [`crate::replica::Heartbeat`]. Handled by the replica plugin.
pub const REPLICA_HB: &str = "replica.hb";

/// Every topic above.
pub const ALL: &[&str] = &[ALIVE, INITIAL, REPLICA_HB];

/// Topics a client (no gestor credential) may send; a gestor drops any other
/// signal from a non-gestor and counts it (`security.forbidden_signals`).
pub const FROM_CLIENTS: &[&str] = &[ALIVE];
