//! Cluster keys, gestor credentials and revocations, and their files.
//!
//! The model is etcd's CA and member certificates, cut down to what a ring
//! needs: the operator keeps one Ed25519 **cluster key**; each gestor gets a
//! **credential** — its own X25519 static key (the key its Noise handshakes
//! prove possession of) with the cluster key's signature over it. Clients
//! and gestores hold only the **cluster public key** and accept a gestor
//! whose handshake static key carries a valid signature that is not revoked.
//!
//! Files are small TOML documents with hex fields; secret ones are written
//! with mode 0600.

use crate::SecureError;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Domain separation for the credential signature.
const CREDENTIAL_CONTEXT: &[u8] = b"gestor credential v1\0";
/// Domain separation for the revocation-list signature.
const REVOCATION_CONTEXT: &[u8] = b"gestor revocations v1\0";
/// Longest gestor name a credential may carry.
pub const MAX_NAME_LEN: usize = 128;

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn from_hex<const N: usize>(text: &str, what: &str) -> Result<[u8; N], SecureError> {
    let text = text.trim();
    if text.len() != N * 2 || !text.is_ascii() {
        return Err(SecureError::BadKeyFile(format!(
            "{what}: expected {} hex digits",
            N * 2
        )));
    }
    let mut out = [0u8; N];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(chunk).unwrap_or("zz");
        out[i] = u8::from_str_radix(pair, 16)
            .map_err(|_| SecureError::BadKeyFile(format!("{what}: not hex")))?;
    }
    Ok(out)
}

fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), SecureError> {
    let io = |e: std::io::Error| SecureError::Io(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let _ = secret;
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path, kind: &str) -> Result<T, SecureError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SecureError::Io(format!("{}: {e}", path.display())))?;
    #[derive(Deserialize)]
    struct Head {
        kind: String,
    }
    let head: Head = toml::from_str(&text)
        .map_err(|e| SecureError::BadKeyFile(format!("{}: {e}", path.display())))?;
    if head.kind != kind {
        return Err(SecureError::BadKeyFile(format!(
            "{}: is a {:?} file, expected {kind:?}",
            path.display(),
            head.kind
        )));
    }
    toml::from_str(&text).map_err(|e| SecureError::BadKeyFile(format!("{}: {e}", path.display())))
}

/// The operator's signing key. Whoever holds it can admit gestores.
pub struct ClusterKey {
    signing: SigningKey,
}

#[derive(Serialize, Deserialize)]
struct ClusterKeyFile {
    kind: String,
    secret: String,
    public: String,
}

#[derive(Serialize, Deserialize)]
struct ClusterPubFile {
    kind: String,
    public: String,
}

impl ClusterKey {
    pub fn generate() -> Self {
        ClusterKey {
            signing: SigningKey::from_bytes(&random32()),
        }
    }

    pub fn public(&self) -> ClusterPub {
        ClusterPub {
            key: self.signing.verifying_key(),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), SecureError> {
        let file = ClusterKeyFile {
            kind: "gestor-cluster-key".into(),
            secret: to_hex(&self.signing.to_bytes()),
            public: to_hex(self.signing.verifying_key().as_bytes()),
        };
        let text = format!(
            "# gestor cluster signing key: admits gestores. Keep it offline; never give it to a gestor.\n{}",
            toml::to_string(&file).map_err(|e| SecureError::Io(e.to_string()))?
        );
        write_file(path, &text, true)
    }

    pub fn load(path: &Path) -> Result<Self, SecureError> {
        let file: ClusterKeyFile = read_toml(path, "gestor-cluster-key")?;
        let secret = from_hex::<32>(&file.secret, "secret")?;
        Ok(ClusterKey {
            signing: SigningKey::from_bytes(&secret),
        })
    }

    /// Issue a credential for a new gestor named `name` (for logs and status).
    pub fn admit(&self, name: &str) -> Result<CredentialFile, SecureError> {
        check_name(name)?;
        let builder = snow::Builder::new(crate::noise_params());
        let keypair = builder
            .generate_keypair()
            .map_err(|e| SecureError::Io(format!("cannot generate a static key: {e}")))?;
        let mut static_secret = [0u8; 32];
        let mut static_public = [0u8; 32];
        static_secret.copy_from_slice(&keypair.private);
        static_public.copy_from_slice(&keypair.public);
        let cluster = *self.signing.verifying_key().as_bytes();
        let signature = self
            .signing
            .sign(&credential_message(&cluster, &static_public, name))
            .to_bytes();
        Ok(CredentialFile {
            credential: Credential {
                name: name.to_string(),
                static_public,
                cluster,
                signature,
            },
            static_secret,
        })
    }

    /// Sign a revocation list: the static keys that must no longer be accepted.
    pub fn sign_revocations(&self, keys: &[[u8; 32]]) -> RevocationList {
        let mut keys = keys.to_vec();
        keys.sort();
        keys.dedup();
        let cluster = *self.signing.verifying_key().as_bytes();
        let signature = self
            .signing
            .sign(&revocation_message(&cluster, &keys))
            .to_bytes();
        RevocationList {
            cluster,
            keys,
            signature,
        }
    }
}

fn check_name(name: &str) -> Result<(), SecureError> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    {
        return Err(SecureError::BadKeyFile(format!(
            "gestor name {name:?}: 1-{MAX_NAME_LEN} characters of [A-Za-z0-9-_.:]"
        )));
    }
    Ok(())
}

fn credential_message(cluster: &[u8; 32], static_public: &[u8; 32], name: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(CREDENTIAL_CONTEXT.len() + 66 + name.len());
    m.extend_from_slice(CREDENTIAL_CONTEXT);
    m.extend_from_slice(cluster);
    m.extend_from_slice(static_public);
    m.extend_from_slice(&(name.len() as u16).to_be_bytes());
    m.extend_from_slice(name.as_bytes());
    m
}

fn revocation_message(cluster: &[u8; 32], keys: &[[u8; 32]]) -> Vec<u8> {
    let mut m = Vec::with_capacity(REVOCATION_CONTEXT.len() + 36 + keys.len() * 32);
    m.extend_from_slice(REVOCATION_CONTEXT);
    m.extend_from_slice(cluster);
    m.extend_from_slice(&(keys.len() as u32).to_be_bytes());
    for k in keys {
        m.extend_from_slice(k);
    }
    m
}

/// The cluster's public key: what gestores and clients trust.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ClusterPub {
    key: VerifyingKey,
}

impl std::fmt::Debug for ClusterPub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterPub({})", self.fingerprint())
    }
}

impl ClusterPub {
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// Short hex form, for logs and error messages.
    pub fn fingerprint(&self) -> String {
        to_hex(&self.key.as_bytes()[..8])
    }

    pub fn save(&self, path: &Path) -> Result<(), SecureError> {
        let file = ClusterPubFile {
            kind: "gestor-cluster-pub".into(),
            public: to_hex(self.key.as_bytes()),
        };
        let text = format!(
            "# gestor cluster public key: give it to every gestor and client.\n{}",
            toml::to_string(&file).map_err(|e| SecureError::Io(e.to_string()))?
        );
        write_file(path, &text, false)
    }

    pub fn load(path: &Path) -> Result<Self, SecureError> {
        let file: ClusterPubFile = read_toml(path, "gestor-cluster-pub")?;
        let bytes = from_hex::<32>(&file.public, "public")?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|e| SecureError::BadKeyFile(format!("{}: {e}", path.display())))?;
        Ok(ClusterPub { key })
    }

    /// Why `credential` does not admit its holder to this cluster, if it does not.
    pub fn check(&self, credential: &Credential) -> Result<(), String> {
        if &credential.cluster != self.key.as_bytes() {
            return Err(format!(
                "credential of another cluster ({}…, this is {}…)",
                to_hex(&credential.cluster[..8]),
                self.fingerprint()
            ));
        }
        check_name(&credential.name).map_err(|e| e.to_string())?;
        let message = credential_message(
            &credential.cluster,
            &credential.static_public,
            &credential.name,
        );
        self.key
            .verify(&message, &Signature::from_bytes(&credential.signature))
            .map_err(|_| "credential signature does not verify".to_string())
    }

    /// The revoked keys of `list`, if the cluster key signed it.
    pub fn check_revocations(&self, list: &RevocationList) -> Result<HashSet<[u8; 32]>, String> {
        if &list.cluster != self.key.as_bytes() {
            return Err("revocation list of another cluster".into());
        }
        self.key
            .verify(
                &revocation_message(&list.cluster, &list.keys),
                &Signature::from_bytes(&list.signature),
            )
            .map_err(|_| "revocation list signature does not verify".to_string())?;
        Ok(list.keys.iter().copied().collect())
    }
}

/// The public part of a gestor credential, sent in every handshake it makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub name: String,
    #[serde(with = "serde_bytes_array")]
    pub static_public: [u8; 32],
    #[serde(with = "serde_bytes_array")]
    pub cluster: [u8; 32],
    #[serde(with = "serde_bytes_array")]
    pub signature: [u8; 64],
}

/// A gestor's credential file: the credential and its static secret key.
pub struct CredentialFile {
    pub credential: Credential,
    pub static_secret: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct CredentialToml {
    kind: String,
    name: String,
    static_secret: String,
    static_public: String,
    cluster: String,
    signature: String,
}

impl CredentialFile {
    pub fn save(&self, path: &Path) -> Result<(), SecureError> {
        let c = &self.credential;
        let file = CredentialToml {
            kind: "gestor-credential".into(),
            name: c.name.clone(),
            static_secret: to_hex(&self.static_secret),
            static_public: to_hex(&c.static_public),
            cluster: to_hex(&c.cluster),
            signature: to_hex(&c.signature),
        };
        let text = format!(
            "# gestor credential: this gestor's static key, signed by the cluster key. Secret.\n{}",
            toml::to_string(&file).map_err(|e| SecureError::Io(e.to_string()))?
        );
        write_file(path, &text, true)
    }

    pub fn load(path: &Path) -> Result<Self, SecureError> {
        let file: CredentialToml = read_toml(path, "gestor-credential")?;
        let loaded = CredentialFile {
            credential: Credential {
                name: file.name,
                static_public: from_hex::<32>(&file.static_public, "static_public")?,
                cluster: from_hex::<32>(&file.cluster, "cluster")?,
                signature: from_hex::<64>(&file.signature, "signature")?,
            },
            static_secret: from_hex::<32>(&file.static_secret, "static_secret")?,
        };
        // The public key must be the secret key's: a mismatched file could
        // never complete a handshake, so say so at start rather than later.
        let derived = crate::x25519_public(&loaded.static_secret);
        if derived != loaded.credential.static_public {
            return Err(SecureError::BadKeyFile(format!(
                "{}: static_public does not belong to static_secret",
                path.display()
            )));
        }
        Ok(loaded)
    }
}

/// Static keys the cluster no longer accepts, signed by the cluster key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationList {
    pub cluster: [u8; 32],
    pub keys: Vec<[u8; 32]>,
    pub signature: [u8; 64],
}

#[derive(Serialize, Deserialize)]
struct RevocationToml {
    kind: String,
    cluster: String,
    keys: Vec<String>,
    signature: String,
}

impl RevocationList {
    pub fn save(&self, path: &Path) -> Result<(), SecureError> {
        let file = RevocationToml {
            kind: "gestor-revocations".into(),
            cluster: to_hex(&self.cluster),
            keys: self.keys.iter().map(|k| to_hex(k)).collect(),
            signature: to_hex(&self.signature),
        };
        let text = format!(
            "# gestor revocation list: static keys of gestores no longer admitted.\n{}",
            toml::to_string(&file).map_err(|e| SecureError::Io(e.to_string()))?
        );
        write_file(path, &text, false)
    }

    pub fn load(path: &Path) -> Result<Self, SecureError> {
        let file: RevocationToml = read_toml(path, "gestor-revocations")?;
        Ok(RevocationList {
            cluster: from_hex::<32>(&file.cluster, "cluster")?,
            keys: file
                .keys
                .iter()
                .map(|k| from_hex::<32>(k, "keys"))
                .collect::<Result<_, _>>()?,
            signature: from_hex::<64>(&file.signature, "signature")?,
        })
    }
}

/// Where the files of `gestor cluster init` live inside its directory.
pub fn cluster_key_path(dir: &Path) -> PathBuf {
    dir.join("cluster.key")
}
pub fn cluster_pub_path(dir: &Path) -> PathBuf {
    dir.join("cluster.pub")
}
pub fn revocations_path(dir: &Path) -> PathBuf {
    dir.join("revoked.toml")
}

/// Fixed-size byte arrays as CBOR byte strings (serde's default is an array of integers).
mod serde_bytes_array {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
        bytes
            .as_slice()
            .try_into()
            .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"a fixed-size key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admitted_credential_checks_and_forgeries_do_not() {
        let cluster = ClusterKey::generate();
        let other = ClusterKey::generate();
        let cred = cluster.admit("g1").unwrap().credential;
        assert!(cluster.public().check(&cred).is_ok());
        assert!(other.public().check(&cred).is_err());
        let mut renamed = cred.clone();
        renamed.name = "g2".into();
        assert!(cluster.public().check(&renamed).is_err());
        let mut swapped = cred.clone();
        swapped.static_public[0] ^= 1;
        assert!(cluster.public().check(&swapped).is_err());
        // Another cluster's credential relabelled as ours fails on the signature.
        let mut foreign = other.admit("g1").unwrap().credential;
        foreign.cluster = *cluster.public().as_bytes();
        assert!(cluster.public().check(&foreign).is_err());
    }

    #[test]
    fn files_round_trip_and_wrong_kinds_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = ClusterKey::generate();
        cluster.save(&cluster_key_path(dir.path())).unwrap();
        cluster
            .public()
            .save(&cluster_pub_path(dir.path()))
            .unwrap();
        let cred = cluster.admit("node-a").unwrap();
        let cred_path = dir.path().join("a.cred");
        cred.save(&cred_path).unwrap();

        let key2 = ClusterKey::load(&cluster_key_path(dir.path())).unwrap();
        assert_eq!(key2.public(), cluster.public());
        let pub2 = ClusterPub::load(&cluster_pub_path(dir.path())).unwrap();
        let cred2 = CredentialFile::load(&cred_path).unwrap();
        assert!(pub2.check(&cred2.credential).is_ok());
        assert_eq!(cred2.static_secret, cred.static_secret);
        assert!(ClusterPub::load(&cred_path).is_err());
        assert!(CredentialFile::load(&cluster_pub_path(dir.path())).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&cred_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "credential readable by others");
        }
    }

    #[test]
    fn revocation_lists_verify_only_under_their_cluster() {
        let cluster = ClusterKey::generate();
        let cred = cluster.admit("g").unwrap().credential;
        let list = cluster.sign_revocations(&[cred.static_public]);
        let keys = cluster.public().check_revocations(&list).unwrap();
        assert!(keys.contains(&cred.static_public));
        let mut tampered = list.clone();
        tampered.keys.clear();
        assert!(cluster.public().check_revocations(&tampered).is_err());
        assert!(ClusterKey::generate()
            .public()
            .check_revocations(&list)
            .is_err());
    }
}
