//! Shared test support: port allocation, the conformance suites (written once,
//! instantiated per backend by the files in `tests/tests/`), and helpers that
//! run real `gestor` processes.

pub mod chat;
pub mod cluster;
pub mod delay_switch;
pub mod ports;
pub mod relay;
pub mod ring;
pub mod store_suite;
pub mod transport_suite;

/// One `#[test]` per backend combination (nng/zmq × sqlite/sled) for each
/// test function `fn test(TransportKind, StorageKind)`, in a module named
/// `name` (or after the function): `matrix!(wire => nothing_readable)`.
#[macro_export]
macro_rules! matrix {
    ($($name:ident => $test:ident),* $(,)?) => { $(
        mod $name {
            use gestor::config::{StorageKind, TransportKind};
            #[test] fn nng_sqlite() { super::$test(TransportKind::Nng, StorageKind::Sqlite) }
            #[test] fn nng_sled() { super::$test(TransportKind::Nng, StorageKind::Sled) }
            #[test] fn zmq_sqlite() { super::$test(TransportKind::Zmq, StorageKind::Sqlite) }
            #[test] fn zmq_sled() { super::$test(TransportKind::Zmq, StorageKind::Sled) }
        }
    )* };
    ($($test:ident),* $(,)?) => { $crate::matrix!($($test => $test),*); };
}

/// Half the matrix, with every transport and every store still run once,
/// for long scenarios whose logic is the same on every backend (the full
/// matrix of `ring_matrix`, `faults`' kills and the conformance suites
/// covers the backends themselves): `half_matrix!(straight => t)` runs
/// nng/sqlite and zmq/sled, `half_matrix!(crossed => t)` nng/sled and
/// zmq/sqlite.
#[macro_export]
macro_rules! half_matrix {
    (straight => $($test:ident),* $(,)?) => { $(
        mod $test {
            use gestor::config::{StorageKind, TransportKind};
            #[test] fn nng_sqlite() { super::$test(TransportKind::Nng, StorageKind::Sqlite) }
            #[test] fn zmq_sled() { super::$test(TransportKind::Zmq, StorageKind::Sled) }
        }
    )* };
    (crossed => $($test:ident),* $(,)?) => { $(
        mod $test {
            use gestor::config::{StorageKind, TransportKind};
            #[test] fn nng_sled() { super::$test(TransportKind::Nng, StorageKind::Sled) }
            #[test] fn zmq_sqlite() { super::$test(TransportKind::Zmq, StorageKind::Sqlite) }
        }
    )* };
}
