//! Test doubles that keep the contracts: an in-memory [`Store`](crate::Store)
//! with a simulated disk and an in-process [`Transport`](crate::Transport).
//! Behind the cargo feature `testing` (off by default): for simulators and
//! unit tests, never for a running gestor.

mod memory_store;
mod memory_transport;

pub use memory_store::{MemoryDisk, MemoryStore};
pub use memory_transport::{BoundedQueue, MemoryNetwork};
