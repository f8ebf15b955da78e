//! Which cluster a client trusts, and the client-side secure layer it gives.

use gestor_backends::{build_transport, TransportKind};
use gestor_sdk::Transport;
use gestor_secure::{ClusterPub, SecureConfig, SecureError, SecureLayer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Environment variable naming the cluster public key file for clients.
pub const CLUSTER_PUB_ENV: &str = "GESTOR_CLUSTER_PUB";

/// Why nothing is contacted when no trust was configured.
pub const NO_TRUST: &str = "no cluster public key: pass --cluster-pub FILE or set GESTOR_CLUSTER_PUB (or --insecure, for a development ring)";

/// The cluster public key named by the user cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the cluster public key {path}: {source}")]
pub struct TrustError {
    pub path: PathBuf,
    pub source: SecureError,
}

/// Which gestores a client believes.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Only gestores holding a credential signed by this cluster key.
    Cluster(ClusterPub),
    /// Development only: plaintext frames to a ring started with
    /// `--insecure`; no admission checked, secure gestores refused.
    Insecure,
    /// Not configured: the client refuses to contact anyone.
    Unset,
}

impl Trust {
    /// From the command line: `--cluster-pub FILE` (or `GESTOR_CLUSTER_PUB`) and `--insecure`.
    pub fn from_args(cluster_pub: Option<&Path>, insecure: bool) -> Result<Trust, TrustError> {
        match (cluster_pub, insecure) {
            (Some(path), _) => ClusterPub::load(path)
                .map(Trust::Cluster)
                .map_err(|source| TrustError {
                    path: path.to_path_buf(),
                    source,
                }),
            (None, true) => Ok(Trust::Insecure),
            (None, false) => Ok(Trust::Unset),
        }
    }

    /// `GESTOR_CLUSTER_PUB` if it names a readable key, else [`Trust::Unset`].
    pub fn from_env() -> Trust {
        std::env::var_os(CLUSTER_PUB_ENV)
            .and_then(|p| ClusterPub::load(Path::new(&p)).ok())
            .map(Trust::Cluster)
            .unwrap_or(Trust::Unset)
    }

    /// A client-side secure layer over a fresh transport of `kind`.
    pub fn layer(&self, kind: TransportKind) -> SecureLayer {
        self.layer_over(build_transport(kind))
    }

    pub fn layer_over(&self, transport: Arc<dyn Transport>) -> SecureLayer {
        let config = match self {
            Trust::Cluster(c) => SecureConfig::client(*c),
            Trust::Insecure => SecureConfig::insecure(),
            Trust::Unset => SecureConfig::unconfigured(NO_TRUST),
        };
        SecureLayer::new(transport, config)
    }
}
