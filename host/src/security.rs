//! Security at the edge of the binary: the client's trust flags (the trust
//! itself is `gestor_client::trust`), the node's secure layer, and the
//! operator's `gestor cluster` commands.

use crate::config::Config;
use anyhow::{bail, Context, Result};
use gestor_client::trust::{Trust, NO_TRUST};
use gestor_sdk::Transport;
use gestor_secure::keys::{cluster_key_path, cluster_pub_path, revocations_path};
use gestor_secure::SecureLayer;
use gestor_secure::{ClusterKey, ClusterPub, CredentialFile, RevocationList, SecureConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Client flags: which cluster to trust.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TrustArgs {
    /// The cluster public key (cluster.pub from `gestor cluster init`): only
    /// gestores admitted to that cluster get a request, or a password.
    #[arg(long, env = "GESTOR_CLUSTER_PUB")]
    pub cluster_pub: Option<PathBuf>,
    /// Development only: talk in plaintext to a ring started with --insecure (nobody's admission is checked).
    #[arg(long)]
    pub insecure: bool,
}

impl TrustArgs {
    /// The trust these flags give; an error naming the flags when none was given.
    pub fn trust(&self) -> Result<Trust> {
        match Trust::from_args(self.cluster_pub.as_deref(), self.insecure)? {
            Trust::Unset => bail!("{NO_TRUST}"),
            t => Ok(t),
        }
    }
}

/// The secure layer of a node, from `[security]`: its credential, the
/// cluster it belongs to, the revocation list; or loudly insecure.
pub fn node_layer(
    config: &Config,
    transport: Arc<dyn Transport>,
    request_url: &str,
    signal_url: &str,
) -> Result<SecureLayer> {
    let sec = &config.security;
    let secure = if sec.insecure {
        tracing::warn!("INSECURE MODE: no credential, every frame in plaintext (passwords included); any peer is taken for a gestor and may rewrite records. Development only — never on a network others can reach.");
        SecureConfig::insecure()
    } else {
        let (Some(cred_path), Some(pub_path)) = (&sec.credential, &sec.cluster_pub) else {
            bail!("a gestor needs security.credential and security.cluster_pub (or --insecure, for development only)");
        };
        let credential = CredentialFile::load(cred_path)
            .with_context(|| format!("refusing to start: credential {}", cred_path.display()))?;
        let cluster = ClusterPub::load(pub_path).with_context(|| {
            format!(
                "refusing to start: cluster public key {}",
                pub_path.display()
            )
        })?;
        if let Err(reason) = cluster.check(&credential.credential) {
            bail!(
                "refusing to start: credential {} is not valid for cluster {}: {reason}",
                cred_path.display(),
                pub_path.display()
            );
        }
        let mut c = SecureConfig::gestor(credential, cluster);
        c.revocations_file = sec.revocations.clone();
        c
    };
    let layer = SecureLayer::new(transport, secure.with_urls(request_url, signal_url));
    if let Err(e) = layer.refresh_revocations() {
        bail!("refusing to start: revocation list: {e}");
    }
    Ok(layer)
}

/// `gestor cluster init --dir C`: a new cluster key and its public half.
pub fn cluster_init(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let key_path = cluster_key_path(dir);
    if key_path.exists() {
        bail!(
            "{} already exists: refusing to overwrite a cluster key",
            key_path.display()
        );
    }
    let key = ClusterKey::generate();
    key.save(&key_path)?;
    let pub_path = cluster_pub_path(dir);
    key.public().save(&pub_path)?;
    Ok((key_path, pub_path))
}

/// `gestor cluster admit --dir C --out FILE [--name N]`: one gestor credential.
pub fn cluster_admit(dir: &Path, out: &Path, name: &str) -> Result<()> {
    if out.exists() {
        bail!(
            "{} already exists: refusing to overwrite a credential",
            out.display()
        );
    }
    let key = ClusterKey::load(&cluster_key_path(dir))
        .with_context(|| format!("cannot read the cluster key in {}", dir.display()))?;
    key.admit(name)?.save(out)?;
    Ok(())
}

/// `gestor cluster revoke --dir C --credential FILE`: add the credential's
/// key to the signed list `C/revoked.toml`; returns the list's path and size.
pub fn cluster_revoke(dir: &Path, credential: &Path) -> Result<(PathBuf, usize)> {
    let key = ClusterKey::load(&cluster_key_path(dir))
        .with_context(|| format!("cannot read the cluster key in {}", dir.display()))?;
    let revoked = CredentialFile::load(credential)
        .with_context(|| format!("cannot read credential {}", credential.display()))?;
    let path = revocations_path(dir);
    let mut keys = if path.exists() {
        let list = RevocationList::load(&path)?;
        key.public()
            .check_revocations(&list)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        list.keys
    } else {
        Vec::new()
    };
    keys.push(revoked.credential.static_public);
    let list = key.sign_revocations(&keys);
    list.save(&path)?;
    Ok((path, list.keys.len()))
}
