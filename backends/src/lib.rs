//! Backend construction: the transport and store kinds, and building one of
//! each. The node runtime and clients both use it; it knows nothing of
//! Chord, plugins or the runtime, so a client builds a transport without
//! linking the node.

use gestor_sdk::Transport;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Nng,
    Zmq,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Nng => "nng",
            TransportKind::Zmq => "zmq",
        })
    }
}

/// A fresh transport of `kind`.
pub fn build_transport(kind: TransportKind) -> Arc<dyn Transport> {
    match kind {
        TransportKind::Nng => Arc::new(gestor_transport_nng::NngTransport::new()),
        TransportKind::Zmq => Arc::new(gestor_transport_zmq::ZmqTransport::new()),
    }
}

#[cfg(feature = "stores")]
pub use stores::{open_store, StorageKind};

#[cfg(feature = "stores")]
mod stores {
    use super::*;
    use gestor_sdk::{Store, StoreError};
    use std::path::Path;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
    #[serde(rename_all = "lowercase")]
    pub enum StorageKind {
        Sqlite,
        Sled,
    }

    impl std::fmt::Display for StorageKind {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(match self {
                StorageKind::Sqlite => "sqlite",
                StorageKind::Sled => "sled",
            })
        }
    }

    /// Open (creating if missing) the store of `kind` under `data_dir`.
    pub fn open_store(kind: StorageKind, data_dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Open {
            path: data_dir.display().to_string(),
            reason: format!("cannot create the data directory: {e}"),
        })?;
        Ok(match kind {
            StorageKind::Sqlite => Arc::new(gestor_store_sqlite::SqliteStore::open(
                &data_dir.join("gestor.db"),
            )?),
            StorageKind::Sled => {
                Arc::new(gestor_store_sled::SledStore::open(&data_dir.join("sled"))?)
            }
        })
    }
}
