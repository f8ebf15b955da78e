//! # gestor-secure — an authenticated, encrypted layer over any transport
//!
//! Message sockets (nng, ZeroMQ) hide connections: they reconnect, and a
//! REQ socket may resend. So the secure channel is an application-level
//! **session**, not a connection: one Noise handshake (pattern
//! `Noise_XX_25519_ChaChaPoly_BLAKE2s`, via the `snow` crate) over two
//! REQ-REP round trips gives both sides a session id and two ChaCha20-Poly1305
//! keys; every later frame names the session and carries an explicit
//! counter, and receivers accept each counter once within a sliding window
//! (as WireGuard does), so resends and reordering are tolerated and replays
//! are not. Signals on PUB-SUB are sealed with the keys of a session the
//! two nodes already share.
//!
//! In insecure (development) mode the same API carries frames in plaintext
//! with no handshake, under frame types of their own, so a secure side and a
//! plaintext side refuse each other instead of misreading each other.
//!
//! The layer wraps any [`Transport`]: a third backend gets it for free.
//! It knows nothing of Chord or of request kinds; it tells the host *who*
//! sent each request ([`Peer`]): a gestor that proved a credential signed by
//! the cluster key, or an anonymous client. The host decides what each may
//! call. Frame formats: docs/PROTOCOL.md §3.1.

pub mod keys;
mod window;

pub use keys::{ClusterKey, ClusterPub, Credential, CredentialFile, RevocationList};
pub use window::ReplayWindow;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use gestor_sdk::transport::{
    decode_signal, encode_signal, Endpoint, Publisher, Replier, Requester, Subscriber, Transport,
    TransportOptions,
};
use gestor_sdk::TransportError;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// Frame types (first byte of every secure frame).
pub mod frame {
    /// Initiator → responder: Noise message 1 (`e`).
    pub const HELLO: u8 = 0x01;
    /// Responder → initiator: session id and Noise message 2 (`e, ee, s, es` + identity).
    pub const HELLO_REPLY: u8 = 0x02;
    /// Initiator → responder: session id and Noise message 3 (`s, se` + identity).
    pub const AUTH: u8 = 0x03;
    /// Responder → initiator: the session is established.
    pub const AUTH_REPLY: u8 = 0x04;
    /// A sealed request.
    pub const REQUEST: u8 = 0x05;
    /// A sealed reply (authenticated together with its request's counter).
    pub const REPLY: u8 = 0x06;
    /// A sealed signal sent by the session's initiator.
    pub const SIGNAL_FROM_INITIATOR: u8 = 0x07;
    /// A sealed signal sent by the session's responder.
    pub const SIGNAL_FROM_RESPONDER: u8 = 0x08;
    /// Initiator → responder: does session `sid` still exist? `[0x09] ++ sid`.
    pub const PROBE: u8 = 0x09;
    /// Responder → initiator: it does. `[0x0a] ++ sid`.
    pub const PROBE_REPLY: u8 = 0x0a;
    /// A plaintext refusal: `[0x0f, code, utf-8 reason]`.
    pub const ERROR: u8 = 0x0f;
    /// Insecure mode: a request in plaintext, `[0x10] ++ inner request`.
    pub const PLAIN_REQUEST: u8 = 0x10;
    /// Insecure mode: its reply, `[0x11] ++ inner reply`.
    pub const PLAIN_REPLY: u8 = 0x11;
    /// Insecure mode: a signal, `[0x12] ++ inner signal` (outer topic `s`).
    pub const PLAIN_SIGNAL: u8 = 0x12;
    /// Outer PUB-SUB topic of every sealed signal (the real topic is inside).
    pub const SIGNAL_TOPIC: &[u8] = b"s";
}

/// Codes of [`frame::ERROR`] frames.
pub mod refusal {
    /// The session id is not known (expired, evicted, or the node restarted): handshake again.
    pub const UNKNOWN_SESSION: u8 = 1;
    /// The frame's counter was already used or is too old.
    pub const REPLAYED: u8 = 2;
    /// The frame failed authentication (altered, or sealed with other keys).
    pub const TAMPERED: u8 = 3;
    /// The handshake was refused (credential invalid, of another cluster, or revoked).
    pub const NOT_ADMITTED: u8 = 4;
    /// Not a secure frame (plaintext envelopes are refused).
    pub const MALFORMED: u8 = 5;
    /// Too many handshakes in progress; retry later.
    pub const BUSY: u8 = 6;
    /// A secure frame reached an `--insecure` node, which speaks only plaintext.
    pub const INSECURE_NODE: u8 = 7;
    /// A plaintext frame reached a secure gestor, which speaks only Noise sessions.
    pub const SECURE_ONLY: u8 = 8;
}

/// What a secure side says of a plaintext (`--insecure`) node.
const PEER_IS_INSECURE: &str = "it runs --insecure (plaintext, development only) and proves nothing; this side trusts a cluster key and talks only to secure gestores";
/// What a plaintext side says of a secure gestor.
const PEER_IS_SECURE: &str = "the gestor runs secure (Noise, admitted gestores only) and refuses plaintext; this side runs --insecure: give it the cluster public key (--cluster-pub) instead";

const PROLOGUE: &[u8] = b"gestor secure v1";
const SID_LEN: usize = 16;
const HEADER_LEN: usize = 1 + SID_LEN + 8;
const TAG_LEN: usize = 16;
/// Longest URL accepted in a handshake identity.
const MAX_URL_LEN: usize = 512;
/// Noise's own limit on one handshake message.
const MAX_NOISE_MESSAGE: usize = 65535;

/// The Noise protocol every gestor speaks.
pub fn noise_params() -> snow::params::NoiseParams {
    // A constant, valid pattern name: parsing cannot fail.
    "Noise_XX_25519_ChaChaPoly_BLAKE2s"
        .parse()
        .expect("valid Noise pattern")
}

/// The X25519 public key of `secret`.
pub fn x25519_public(secret: &[u8; 32]) -> [u8; 32] {
    use snow::resolvers::{CryptoResolver, DefaultResolver};
    let mut out = [0u8; 32];
    if let Some(mut dh) = DefaultResolver.resolve_dh(&snow::params::DHChoice::Curve25519) {
        dh.set(secret);
        out.copy_from_slice(&dh.pubkey()[..32]);
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecureError {
    #[error("{0}")]
    Io(String),
    #[error("bad key file: {0}")]
    BadKeyFile(String),
}

/// Who sent a request or signal, as proven by the session it arrived on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A peer that proved no credential: a client (any client key will do).
    /// `source` is the network address its handshake came from, when the
    /// transport knows it (for per-source limits).
    Client {
        key: [u8; 32],
        source: Option<String>,
    },
    /// A gestor that proved a credential of this cluster (or, on an
    /// `--insecure` node, any peer at all).
    Gestor { key: [u8; 32], name: String },
}

impl Peer {
    pub fn is_gestor(&self) -> bool {
        matches!(self, Peer::Gestor { .. })
    }
    pub fn key(&self) -> &[u8; 32] {
        match self {
            Peer::Client { key, .. } | Peer::Gestor { key, .. } => key,
        }
    }
}

/// How a node or client takes part in the cluster.
#[derive(Clone)]
pub struct SecureConfig {
    /// This side's credential (gestores); `None` for clients.
    pub credential: Option<CredentialFile>,
    /// The cluster trusted; `None` only in insecure (development) mode.
    pub cluster: Option<ClusterPub>,
    /// Signed revocation list, re-read when it changes.
    pub revocations_file: Option<PathBuf>,
    /// This node's own request and signal URLs, announced in handshakes.
    pub request_url: Option<String>,
    pub signal_url: Option<String>,
    /// Most established sessions kept; the least recently used go first.
    pub max_sessions: usize,
    /// Most handshakes waiting for their third message.
    pub max_pending: usize,
    /// A half-done handshake is forgotten after this long.
    pub pending_timeout: Duration,
    /// When set, this side trusts nobody yet: every handshake it would start
    /// fails at once with this reason (a client given no cluster key).
    pub unconfigured: Option<String>,
    /// How often a client's signal session is checked with its gestor
    /// (signals get no answer, so a forgotten session shows no other way).
    pub signal_probe_every: Duration,
    /// Development only: no handshake, no encryption, no identities; frames
    /// travel in plaintext (types `0x10`–`0x12`) and every peer is taken
    /// for a gestor.
    pub plaintext: bool,
}

impl Clone for CredentialFile {
    fn clone(&self) -> Self {
        CredentialFile {
            credential: self.credential.clone(),
            static_secret: self.static_secret,
        }
    }
}

impl SecureConfig {
    fn base() -> Self {
        SecureConfig {
            credential: None,
            cluster: None,
            revocations_file: None,
            request_url: None,
            signal_url: None,
            max_sessions: 16_384,
            max_pending: 1024,
            pending_timeout: Duration::from_secs(10),
            unconfigured: None,
            signal_probe_every: Duration::from_secs(10),
            plaintext: false,
        }
    }
    /// A client that has not been told which cluster to trust: it refuses
    /// to talk to anyone, with `reason`, before sending a byte.
    pub fn unconfigured(reason: &str) -> Self {
        SecureConfig {
            unconfigured: Some(reason.to_string()),
            ..Self::base()
        }
    }
    /// An admitted gestor.
    pub fn gestor(credential: CredentialFile, cluster: ClusterPub) -> Self {
        SecureConfig {
            credential: Some(credential),
            cluster: Some(cluster),
            ..Self::base()
        }
    }
    /// A client that trusts `cluster`.
    pub fn client(cluster: ClusterPub) -> Self {
        SecureConfig {
            cluster: Some(cluster),
            ..Self::base()
        }
    }
    /// Development only: plaintext frames, no handshake, nobody's
    /// admission checked (every peer is taken for a gestor).
    pub fn insecure() -> Self {
        SecureConfig {
            plaintext: true,
            ..Self::base()
        }
    }
    pub fn with_urls(mut self, request_url: &str, signal_url: &str) -> Self {
        self.request_url = Some(request_url.to_string());
        self.signal_url = Some(signal_url.to_string());
        self
    }
}

/// Counters of refused traffic, shown in `gestor status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecureStats {
    pub handshakes: u64,
    pub handshakes_refused: u64,
    pub tampered: u64,
    pub replayed: u64,
    pub unknown_session: u64,
    pub malformed: u64,
    pub sessions: u64,
}

/// What each side announces inside the handshake (encrypted by Noise).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Identity {
    #[serde(default)]
    credential: Option<Credential>,
    #[serde(default)]
    request_url: Option<String>,
    #[serde(default)]
    signal_url: Option<String>,
}

type Sid = [u8; SID_LEN];

/// Serves an opened request from a proven peer, told how long the request
/// waited for a worker (zero when the backend did not say); returns the
/// reply to seal.
pub type SecureHandler = Arc<dyn Fn(&[u8], &Peer, Duration) -> Vec<u8> + Send + Sync>;
/// Answers a request on the transport's I/O thread when it can do so
/// without waiting (`None`: a worker serves it with the [`SecureHandler`]).
pub type FastHandler = Arc<dyn Fn(&[u8], &Peer) -> Option<Vec<u8>> + Send + Sync>;

/// A reply frame of an insecure node: the type byte, then the reply as it is.
fn plain_reply(reply: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + reply.len());
    out.push(frame::PLAIN_REPLY);
    out.extend_from_slice(reply);
    out
}

/// A request opened under its session, waiting for its reply.
struct OpenedRequest {
    session: Arc<Session>,
    plain: Vec<u8>,
    counter: u64,
}

impl OpenedRequest {
    /// Seal `reply` to this request (and remember it for a resend).
    fn seal_reply(&self, reply: &[u8]) -> Vec<u8> {
        let counter = self.counter;
        match self
            .session
            .seal(frame::REPLY, reply, &counter.to_be_bytes())
        {
            Ok((sealed, _)) => {
                self.session.remember_reply(counter, &sealed);
                sealed
            }
            Err(e) => refusal_frame(refusal::UNKNOWN_SESSION, &e),
        }
    }
}

/// `(topic, payload, sender)` of a signal that opened under a known session.
pub type AuthenticSignal = (Vec<u8>, Vec<u8>, Peer);

struct Session {
    sid: Sid,
    initiator: bool,
    send: ChaCha20Poly1305,
    recv: ChaCha20Poly1305,
    send_counter: AtomicU64,
    window: Mutex<ReplayWindow>,
    peer: Peer,
    peer_signal_url: Option<String>,
    last_used: Mutex<Instant>,
    /// The last replies sent in this session, by request counter: a REQ
    /// socket resends an unanswered request after a reconnect, and the
    /// resend gets the same sealed reply instead of running twice or being
    /// refused as a replay. Kept for gestor peers only (a few sessions).
    recent_replies: Mutex<std::collections::VecDeque<(u64, Vec<u8>)>>,
}

/// Replies remembered per gestor session, and the largest one remembered.
const RECENT_REPLIES: usize = 8;
const RECENT_REPLY_MAX: usize = 64 * 1024;

fn nonce(counter: u64) -> Nonce {
    // Noise's ChaChaPoly nonce: 32 zero bits, then the counter little-endian.
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::from(n)
}

fn header(kind: u8, sid: &Sid, counter: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.push(kind);
    h.extend_from_slice(sid);
    h.extend_from_slice(&counter.to_be_bytes());
    h
}

/// `(kind, sid, counter, ciphertext)` of a sealed frame.
fn parse_sealed(frame: &[u8]) -> Option<(u8, Sid, u64, &[u8])> {
    if frame.len() < HEADER_LEN + TAG_LEN {
        return None;
    }
    let sid: Sid = frame[1..1 + SID_LEN].try_into().ok()?;
    let counter = u64::from_be_bytes(frame[1 + SID_LEN..HEADER_LEN].try_into().ok()?);
    Some((frame[0], sid, counter, &frame[HEADER_LEN..]))
}

fn refusal_frame(code: u8, reason: &str) -> Vec<u8> {
    let mut f = vec![frame::ERROR, code];
    f.extend_from_slice(reason.as_bytes());
    f
}

fn parse_refusal(frame: &[u8]) -> Option<(u8, String)> {
    if frame.len() >= 2 && frame[0] == frame::ERROR {
        Some((frame[1], String::from_utf8_lossy(&frame[2..]).into_owned()))
    } else {
        None
    }
}

impl Session {
    fn new(sid: Sid, initiator: bool, keys: ([u8; 32], [u8; 32]), peer: Peer) -> Self {
        // Noise's split: the first key protects initiator → responder.
        let (i2r, r2i) = keys;
        let (send, recv) = if initiator { (i2r, r2i) } else { (r2i, i2r) };
        Session {
            sid,
            initiator,
            send: ChaCha20Poly1305::new(Key::from_slice(&send)),
            recv: ChaCha20Poly1305::new(Key::from_slice(&recv)),
            send_counter: AtomicU64::new(0),
            window: Mutex::new(ReplayWindow::default()),
            peer,
            peer_signal_url: None,
            last_used: Mutex::new(Instant::now()),
            recent_replies: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn seal(&self, kind: u8, plaintext: &[u8], extra_ad: &[u8]) -> Result<(Vec<u8>, u64), String> {
        let counter = self.send_counter.fetch_add(1, Ordering::Relaxed);
        if counter >= u64::MAX - 1 {
            return Err("session counter exhausted; handshake again".into());
        }
        let mut ad = header(kind, &self.sid, counter);
        let head_len = ad.len();
        ad.extend_from_slice(extra_ad);
        let ct = self
            .send
            .encrypt(
                &nonce(counter),
                Payload {
                    msg: plaintext,
                    aad: &ad,
                },
            )
            .map_err(|_| "encryption failed".to_string())?;
        ad.truncate(head_len);
        ad.extend_from_slice(&ct);
        Ok((ad, counter))
    }

    /// Whether `frame` is authentic under this session (its counter aside).
    fn authentic(&self, frame: &[u8]) -> bool {
        let Some((_, _, counter, ct)) = parse_sealed(frame) else {
            return false;
        };
        self.recv
            .decrypt(
                &nonce(counter),
                Payload {
                    msg: ct,
                    aad: &frame[..HEADER_LEN],
                },
            )
            .is_ok()
    }

    fn remember_reply(&self, request_counter: u64, sealed: &[u8]) {
        if !self.peer.is_gestor() || sealed.len() > RECENT_REPLY_MAX {
            return;
        }
        let mut recent = self
            .recent_replies
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if recent.len() >= RECENT_REPLIES {
            recent.pop_front();
        }
        recent.push_back((request_counter, sealed.to_vec()));
    }

    fn remembered_reply(&self, request_counter: u64) -> Option<Vec<u8>> {
        self.recent_replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(c, _)| *c == request_counter)
            .map(|(_, r)| r.clone())
    }

    /// Decrypt and record the counter; `Err(code)` with a refusal code.
    fn open(&self, frame: &[u8], extra_ad: &[u8]) -> Result<(Vec<u8>, u64), u8> {
        let (_, _, counter, ct) = parse_sealed(frame).ok_or(refusal::MALFORMED)?;
        if !self
            .window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(counter)
        {
            return Err(refusal::REPLAYED);
        }
        let mut ad = frame[..HEADER_LEN].to_vec();
        ad.extend_from_slice(extra_ad);
        let plain = self
            .recv
            .decrypt(&nonce(counter), Payload { msg: ct, aad: &ad })
            .map_err(|_| refusal::TAMPERED)?;
        // Record only after authentication, so forged counters cannot move the window.
        if !self
            .window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .accept(counter)
        {
            return Err(refusal::REPLAYED);
        }
        self.touch();
        Ok((plain, counter))
    }
}

struct Shared {
    transport: Arc<dyn Transport>,
    static_secret: [u8; 32],
    credential: Option<Credential>,
    cluster: Option<ClusterPub>,
    revocations_file: Option<PathBuf>,
    revocations_seen: Mutex<Option<SystemTime>>,
    revoked: RwLock<HashSet<[u8; 32]>>,
    request_url: Option<String>,
    signal_url: Option<String>,
    max_sessions: usize,
    max_pending: usize,
    pending_timeout: Duration,
    unconfigured: Option<String>,
    signal_probe_every: Duration,
    plaintext: bool,
    pending: Mutex<HashMap<Sid, (snow::HandshakeState, Instant)>>,
    sessions: RwLock<HashMap<Sid, Arc<Session>>>,
    /// Sessions this side initiated, by the peer's request URL.
    by_request_url: Mutex<HashMap<String, Arc<Session>>>,
    /// Sessions with gestores, by the signal URL they announced.
    by_signal_url: Mutex<HashMap<String, Arc<Session>>>,
    handshakes: AtomicU64,
    handshakes_refused: AtomicU64,
    tampered: AtomicU64,
    replayed: AtomicU64,
    unknown_session: AtomicU64,
    malformed: AtomicU64,
}

/// The secure layer of one node or client. Cheap to clone.
#[derive(Clone)]
pub struct SecureLayer {
    shared: Arc<Shared>,
}

impl SecureLayer {
    pub fn new(transport: Arc<dyn Transport>, config: SecureConfig) -> Self {
        let (static_secret, credential) = match config.credential {
            Some(c) => (c.static_secret, Some(c.credential)),
            None => {
                // Clients (and insecure nodes) use a fresh key per process.
                let mut k = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut k);
                (k, None)
            }
        };
        let layer = SecureLayer {
            shared: Arc::new(Shared {
                transport,
                static_secret,
                credential,
                cluster: config.cluster,
                revocations_file: config.revocations_file,
                revocations_seen: Mutex::new(None),
                revoked: RwLock::new(HashSet::new()),
                request_url: config.request_url,
                signal_url: config.signal_url,
                max_sessions: config.max_sessions.max(1),
                max_pending: config.max_pending.max(1),
                pending_timeout: config.pending_timeout,
                unconfigured: config.unconfigured,
                signal_probe_every: config.signal_probe_every,
                plaintext: config.plaintext,
                pending: Mutex::new(HashMap::new()),
                sessions: RwLock::new(HashMap::new()),
                by_request_url: Mutex::new(HashMap::new()),
                by_signal_url: Mutex::new(HashMap::new()),
                handshakes: AtomicU64::new(0),
                handshakes_refused: AtomicU64::new(0),
                tampered: AtomicU64::new(0),
                replayed: AtomicU64::new(0),
                unknown_session: AtomicU64::new(0),
                malformed: AtomicU64::new(0),
            }),
        };
        if let Err(e) = layer.refresh_revocations() {
            tracing::error!("revocation list: {e}");
        }
        layer
    }

    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.shared.transport
    }

    /// True in insecure (plaintext, development) mode.
    pub fn is_insecure(&self) -> bool {
        self.shared.plaintext
    }

    /// The name in this side's credential, if it has one.
    pub fn credential_name(&self) -> Option<&str> {
        self.shared.credential.as_ref().map(|c| c.name.as_str())
    }

    /// Short fingerprint of the trusted cluster key.
    pub fn cluster_fingerprint(&self) -> Option<String> {
        self.shared.cluster.map(|c| c.fingerprint())
    }

    pub fn stats(&self) -> SecureStats {
        let s = &self.shared;
        SecureStats {
            handshakes: s.handshakes.load(Ordering::Relaxed),
            handshakes_refused: s.handshakes_refused.load(Ordering::Relaxed),
            tampered: s.tampered.load(Ordering::Relaxed),
            replayed: s.replayed.load(Ordering::Relaxed),
            unknown_session: s.unknown_session.load(Ordering::Relaxed),
            malformed: s.malformed.load(Ordering::Relaxed),
            sessions: s.sessions.read().map(|m| m.len() as u64).unwrap_or(0),
        }
    }

    /// Re-read the revocation list if its file changed; drop every session
    /// with a revoked key. Returns how many keys are revoked.
    pub fn refresh_revocations(&self) -> Result<usize, String> {
        let s = &self.shared;
        let (Some(path), Some(cluster)) = (&s.revocations_file, &s.cluster) else {
            return Ok(0);
        };
        let modified = match std::fs::metadata(path).and_then(|m| m.modified()) {
            Ok(m) => m,
            // No file yet: nothing is revoked.
            Err(_) => return Ok(s.revoked.read().map(|r| r.len()).unwrap_or(0)),
        };
        {
            let mut seen = s.revocations_seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == Some(modified) {
                return Ok(s.revoked.read().map(|r| r.len()).unwrap_or(0));
            }
            *seen = Some(modified);
        }
        let list = RevocationList::load(path).map_err(|e| e.to_string())?;
        let keys = cluster
            .check_revocations(&list)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let n = keys.len();
        *s.revoked.write().unwrap_or_else(|p| p.into_inner()) = keys.clone();
        self.drop_sessions_where(|sess| keys.contains(sess.peer.key()));
        tracing::info!(revoked = n, file = %path.display(), "revocation list loaded");
        Ok(n)
    }

    fn drop_sessions_where(&self, doomed: impl Fn(&Session) -> bool) {
        let s = &self.shared;
        s.sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, sess| !doomed(sess));
        s.by_request_url
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, sess| !doomed(sess));
        s.by_signal_url
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, sess| !doomed(sess));
    }

    /// Whether `credential`, presented with handshake static key `remote`,
    /// admits its holder; `Err` says why not.
    fn admits(
        &self,
        credential: Option<&Credential>,
        remote: &[u8; 32],
        source: Option<&str>,
    ) -> Result<Peer, String> {
        let s = &self.shared;
        // Without a cluster key nothing can be verified: nobody is a gestor.
        // (Insecure nodes never get here: they make no handshakes.)
        let (Some(cluster), Some(c)) = (&s.cluster, credential) else {
            return Ok(Peer::Client {
                key: *remote,
                source: source.map(str::to_string),
            });
        };
        cluster.check(c)?;
        if &c.static_public != remote {
            return Err("credential belongs to another static key".into());
        }
        if s.revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(remote)
        {
            return Err(format!("gestor {} is revoked", c.name));
        }
        Ok(Peer::Gestor {
            key: *remote,
            name: c.name.clone(),
        })
    }

    fn identity(&self) -> Vec<u8> {
        let s = &self.shared;
        gestor_sdk::wire::to_cbor(&Identity {
            credential: s.credential.clone(),
            request_url: s.request_url.clone(),
            signal_url: s.signal_url.clone(),
        })
    }

    fn initiator_state(&self) -> Result<snow::HandshakeState, String> {
        snow::Builder::new(noise_params())
            .local_private_key(&self.shared.static_secret)
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_initiator())
            .map_err(|e| e.to_string())
    }

    fn responder_state(&self) -> Result<snow::HandshakeState, String> {
        snow::Builder::new(noise_params())
            .local_private_key(&self.shared.static_secret)
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_responder())
            .map_err(|e| e.to_string())
    }

    fn insert_session(&self, session: Arc<Session>) {
        let s = &self.shared;
        let mut sessions = s.sessions.write().unwrap_or_else(|p| p.into_inner());
        if sessions.len() >= s.max_sessions {
            // Evict the least recently used eighth at once, so eviction is rare.
            let mut ages: Vec<(Instant, Sid)> = sessions
                .values()
                .map(|x| {
                    (
                        *x.last_used.lock().unwrap_or_else(|p| p.into_inner()),
                        x.sid,
                    )
                })
                .collect();
            ages.sort();
            let evict: HashSet<Sid> = ages
                .iter()
                .take((s.max_sessions / 8).max(1))
                .map(|(_, sid)| *sid)
                .collect();
            sessions.retain(|sid, _| !evict.contains(sid));
            drop(sessions);
            self.drop_sessions_where(|x| evict.contains(&x.sid));
            sessions = s.sessions.write().unwrap_or_else(|p| p.into_inner());
        }
        sessions.insert(session.sid, session.clone());
        drop(sessions);
        if let (Some(url), true) = (&session.peer_signal_url, session.peer.is_gestor()) {
            s.by_signal_url
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(url.clone(), session);
        }
    }

    fn session(&self, sid: &Sid) -> Option<Arc<Session>> {
        self.shared
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(sid)
            .cloned()
    }

    // ---------------------------------------------------------------- responder

    /// Serve one frame arriving at a secure replier. `handler` gets the
    /// opened request and the proven peer, and returns the reply to seal.
    pub fn serve(&self, frame: &[u8], handler: impl FnOnce(&[u8], &Peer) -> Vec<u8>) -> Vec<u8> {
        self.serve_from(frame, None, handler)
    }

    /// [`serve`](Self::serve) for a frame from network address `source`.
    pub fn serve_from(
        &self,
        frame: &[u8],
        source: Option<&str>,
        handler: impl FnOnce(&[u8], &Peer) -> Vec<u8>,
    ) -> Vec<u8> {
        let s = &self.shared;
        if s.plaintext {
            return self.serve_plain(frame, handler);
        }
        match frame.first() {
            Some(&frame::HELLO) => self.serve_hello(&frame[1..]),
            Some(&frame::AUTH) => self.serve_auth(&frame[1..], source),
            Some(&frame::PROBE) if frame.len() == 1 + SID_LEN => {
                let sid: Sid = frame[1..].try_into().unwrap_or([0; SID_LEN]);
                if self.session(&sid).is_some_and(|x| !x.initiator) {
                    let mut out = vec![frame::PROBE_REPLY];
                    out.extend_from_slice(&sid);
                    out
                } else {
                    s.unknown_session.fetch_add(1, Ordering::Relaxed);
                    refusal_frame(refusal::UNKNOWN_SESSION, "unknown session; handshake again")
                }
            }
            Some(&frame::REQUEST) => match self.open_request(frame) {
                Ok(opened) => {
                    let reply = handler(&opened.plain, &opened.session.peer);
                    opened.seal_reply(&reply)
                }
                Err(answer) => answer,
            },
            Some(&frame::PLAIN_REQUEST) => {
                s.malformed.fetch_add(1, Ordering::Relaxed);
                refusal_frame(
                    refusal::SECURE_ONLY,
                    "plaintext frame refused: this gestor runs secure and accepts only Noise-secured sessions (it is not an --insecure node)",
                )
            }
            _ => {
                s.malformed.fetch_add(1, Ordering::Relaxed);
                refusal_frame(
                    refusal::MALFORMED,
                    "not a secure frame: this gestor accepts only Noise-secured sessions (docs/PROTOCOL.md §3.1)",
                )
            }
        }
    }

    /// Open a sealed request: the session and plaintext, or the frame to
    /// answer at once (a refusal, or the remembered reply to a resend).
    fn open_request(&self, frame: &[u8]) -> Result<OpenedRequest, Vec<u8>> {
        let s = &self.shared;
        let Some((_, sid, _, _)) = parse_sealed(frame) else {
            s.malformed.fetch_add(1, Ordering::Relaxed);
            return Err(refusal_frame(refusal::MALFORMED, "short request frame"));
        };
        let Some(session) = self.session(&sid).filter(|x| !x.initiator) else {
            s.unknown_session.fetch_add(1, Ordering::Relaxed);
            return Err(refusal_frame(
                refusal::UNKNOWN_SESSION,
                "unknown session; handshake again",
            ));
        };
        match session.open(frame, &[]) {
            Ok((plain, counter)) => Ok(OpenedRequest {
                session,
                plain,
                counter,
            }),
            Err(refusal::REPLAYED) => {
                // A resend of a request already answered: the same reply.
                let counter = parse_sealed(frame).map_or(u64::MAX, |f| f.2);
                if let Some(reply) = session.remembered_reply(counter) {
                    if session.authentic(frame) {
                        return Err(reply);
                    }
                }
                Err(self.count_refusal(refusal::REPLAYED))
            }
            Err(code) => Err(self.count_refusal(code)),
        }
    }

    /// [`serve_from`](Self::serve_from) split for a transport's I/O thread:
    /// a request `fast` answers (`Some`) is sealed and answered there; any
    /// other goes to a worker, already opened when it was a sealed one.
    fn triage(
        &self,
        frame: &[u8],
        fast: Option<&FastHandler>,
        handler: &SecureHandler,
    ) -> gestor_sdk::Triage {
        use gestor_sdk::Triage;
        let fast = |request: &[u8], peer: &Peer| fast.and_then(|fast| fast(request, peer));
        if self.shared.plaintext {
            return match frame.split_first() {
                Some((&frame::PLAIN_REQUEST, request)) => {
                    let peer = Self::unverified_peer();
                    match fast(request, &peer) {
                        Some(reply) => Triage::Reply(plain_reply(&reply)),
                        None => {
                            let (handler, request) = (Arc::clone(handler), request.to_vec());
                            Triage::Continue(Box::new(move |queued| {
                                plain_reply(&handler(&request, &peer, queued))
                            }))
                        }
                    }
                }
                _ => Triage::Worker,
            };
        }
        // Handshakes cost public-key operations: they go to the workers.
        if frame.first() != Some(&frame::REQUEST) {
            return Triage::Worker;
        }
        let opened = match self.open_request(frame) {
            Ok(opened) => opened,
            Err(answer) => return Triage::Reply(answer),
        };
        match fast(&opened.plain, &opened.session.peer) {
            Some(reply) => Triage::Reply(opened.seal_reply(&reply)),
            None => {
                let handler = Arc::clone(handler);
                // Other gestores wait on their requests (a forward, a copy,
                // the ring's upkeep): they go before clients' requests.
                let urgent = opened.session.peer.is_gestor();
                let rest: gestor_sdk::transport::Continuation = Box::new(move |queued| {
                    let reply = handler(&opened.plain, &opened.session.peer, queued);
                    opened.seal_reply(&reply)
                });
                if urgent {
                    Triage::Urgent(rest)
                } else {
                    Triage::Continue(rest)
                }
            }
        }
    }

    /// The peer every plaintext frame comes from: unverifiable, so taken
    /// for a gestor (the documented danger of insecure mode).
    fn unverified_peer() -> Peer {
        Peer::Gestor {
            key: [0; 32],
            name: "unverified".into(),
        }
    }

    /// [`serve_from`](Self::serve_from) on an insecure node: plaintext in,
    /// plaintext out; secure frames are refused so a secure peer learns
    /// at once that it reached the wrong kind of node.
    fn serve_plain(&self, frame: &[u8], handler: impl FnOnce(&[u8], &Peer) -> Vec<u8>) -> Vec<u8> {
        let s = &self.shared;
        match frame.first() {
            Some(&frame::PLAIN_REQUEST) => {
                plain_reply(&handler(&frame[1..], &Self::unverified_peer()))
            }
            Some(k) if (frame::HELLO..=frame::PROBE_REPLY).contains(k) => {
                s.malformed.fetch_add(1, Ordering::Relaxed);
                refusal_frame(
                    refusal::INSECURE_NODE,
                    "secure frame refused: this node runs --insecure (plaintext, development only)",
                )
            }
            _ => {
                s.malformed.fetch_add(1, Ordering::Relaxed);
                refusal_frame(
                    refusal::MALFORMED,
                    "not a frame of this node: it runs --insecure and takes [0x10] ++ request (docs/PROTOCOL.md §3.1)",
                )
            }
        }
    }

    fn count_refusal(&self, code: u8) -> Vec<u8> {
        let s = &self.shared;
        let (counter, reason) = match code {
            refusal::REPLAYED => (&s.replayed, "replayed or too old frame"),
            refusal::TAMPERED => (&s.tampered, "frame failed authentication"),
            _ => (&s.malformed, "malformed frame"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(reason, "secure frame refused");
        refusal_frame(code, reason)
    }

    fn serve_hello(&self, msg1: &[u8]) -> Vec<u8> {
        let s = &self.shared;
        if msg1.len() > MAX_NOISE_MESSAGE {
            return self.count_refusal(refusal::MALFORMED);
        }
        let mut pending = s.pending.lock().unwrap_or_else(|p| p.into_inner());
        let timeout = s.pending_timeout;
        pending.retain(|_, (_, at)| at.elapsed() < timeout);
        if pending.len() >= s.max_pending {
            // Drop the oldest half-done handshake rather than refuse the new
            // one: a flood of first messages then only displaces itself, as
            // long as an honest client answers within the time the flood
            // takes to fill the table (each first message costs its sender
            // a round trip and this side two Diffie-Hellman operations).
            if let Some(oldest) = pending
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(sid, _)| *sid)
            {
                pending.remove(&oldest);
            }
        }
        drop(pending);
        let mut hs = match self.responder_state() {
            Ok(h) => h,
            Err(e) => return refusal_frame(refusal::BUSY, &e),
        };
        let mut buf = vec![0u8; MAX_NOISE_MESSAGE];
        if hs.read_message(msg1, &mut buf).is_err() {
            return self.count_refusal(refusal::MALFORMED);
        }
        let n = match hs.write_message(&self.identity(), &mut buf) {
            Ok(n) => n,
            Err(e) => return refusal_frame(refusal::MALFORMED, &e.to_string()),
        };
        let mut sid = [0u8; SID_LEN];
        rand::rngs::OsRng.fill_bytes(&mut sid);
        s.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sid, (hs, Instant::now()));
        let mut out = vec![frame::HELLO_REPLY];
        out.extend_from_slice(&sid);
        out.extend_from_slice(&buf[..n]);
        out
    }

    fn serve_auth(&self, rest: &[u8], source: Option<&str>) -> Vec<u8> {
        let s = &self.shared;
        if rest.len() < SID_LEN || rest.len() > MAX_NOISE_MESSAGE {
            return self.count_refusal(refusal::MALFORMED);
        }
        let sid: Sid = rest[..SID_LEN].try_into().unwrap_or([0; SID_LEN]);
        let accepted = || {
            let mut out = vec![frame::AUTH_REPLY];
            out.extend_from_slice(&sid);
            out
        };
        let Some((mut hs, _)) = s
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&sid)
        else {
            // A resent third message of a session already made: same answer.
            if self.session(&sid).is_some_and(|x| !x.initiator) {
                return accepted();
            }
            s.unknown_session.fetch_add(1, Ordering::Relaxed);
            return refusal_frame(refusal::UNKNOWN_SESSION, "unknown handshake; start again");
        };
        let mut buf = vec![0u8; MAX_NOISE_MESSAGE];
        let n = match hs.read_message(&rest[SID_LEN..], &mut buf) {
            Ok(n) => n,
            Err(_) => {
                s.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                return refusal_frame(refusal::NOT_ADMITTED, "handshake failed");
            }
        };
        let identity: Identity = gestor_sdk::wire::from_cbor(&buf[..n]).unwrap_or_default();
        let remote: Option<[u8; 32]> = hs.get_remote_static().and_then(|k| k.try_into().ok());
        let Some(remote) = remote else {
            return self.count_refusal(refusal::MALFORMED);
        };
        let peer = match self.admits(identity.credential.as_ref(), &remote, source) {
            Ok(p) => p,
            Err(reason) => {
                s.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%reason, "handshake refused");
                return refusal_frame(refusal::NOT_ADMITTED, &reason);
            }
        };
        let Ok(keys) = split(&mut hs) else {
            return self.count_refusal(refusal::MALFORMED);
        };
        let mut session = Session::new(sid, false, keys, peer);
        session.peer_signal_url = identity.signal_url.filter(|u| u.len() <= MAX_URL_LEN);
        self.insert_session(Arc::new(session));
        s.handshakes.fetch_add(1, Ordering::Relaxed);
        accepted()
    }

    // ---------------------------------------------------------------- initiator

    /// The session with the gestor at `url`, making one if needed through `requester`.
    fn session_with(
        &self,
        url: &str,
        requester: &mut dyn Requester,
        timeout: Duration,
        require_gestor: bool,
    ) -> Result<Arc<Session>, TransportError> {
        if let Some(sess) = self
            .shared
            .by_request_url
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(url)
            .cloned()
        {
            if require_gestor && !sess.peer.is_gestor() {
                return Err(TransportError::Untrusted {
                    url: url.to_string(),
                    reason: "it presented no gestor credential".into(),
                });
            }
            return Ok(sess);
        }
        self.handshake(url, requester, timeout, require_gestor)
    }

    fn handshake(
        &self,
        url: &str,
        requester: &mut dyn Requester,
        timeout: Duration,
        require_gestor: bool,
    ) -> Result<Arc<Session>, TransportError> {
        let s = &self.shared;
        if let Some(reason) = &s.unconfigured {
            return Err(TransportError::Untrusted {
                url: url.to_string(),
                reason: reason.clone(),
            });
        }
        let secure_err = |reason: String| TransportError::Secure {
            url: url.to_string(),
            reason,
        };
        let mut hs = self.initiator_state().map_err(secure_err)?;
        let mut buf = vec![0u8; MAX_NOISE_MESSAGE];
        let n = hs
            .write_message(&[], &mut buf)
            .map_err(|e| secure_err(e.to_string()))?;
        let mut hello = vec![frame::HELLO];
        hello.extend_from_slice(&buf[..n]);
        let reply = requester.request(&hello, timeout)?;
        if let Some((code, reason)) = parse_refusal(&reply) {
            if code == refusal::INSECURE_NODE {
                return Err(TransportError::OtherMode {
                    url: url.to_string(),
                    reason: PEER_IS_INSECURE.into(),
                });
            }
            return Err(secure_err(format!("handshake refused ({code}): {reason}")));
        }
        if reply.len() < 1 + SID_LEN || reply[0] != frame::HELLO_REPLY {
            return Err(TransportError::Untrusted {
                url: url.to_string(),
                reason: "it does not speak the secure protocol".into(),
            });
        }
        let sid: Sid = reply[1..1 + SID_LEN].try_into().unwrap_or([0; SID_LEN]);
        let n = hs
            .read_message(&reply[1 + SID_LEN..], &mut buf)
            .map_err(|e| secure_err(format!("bad handshake reply: {e}")))?;
        let identity: Identity = gestor_sdk::wire::from_cbor(&buf[..n]).unwrap_or_default();
        let remote: [u8; 32] = hs
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| secure_err("no static key in handshake".into()))?;
        // Decide before sending anything of ours: an unadmitted peer learns nothing.
        let peer = match &s.cluster {
            Some(_) if require_gestor && identity.credential.is_none() => {
                return Err(TransportError::Untrusted {
                    url: url.to_string(),
                    reason: "it presented no gestor credential".into(),
                })
            }
            _ => self
                .admits(identity.credential.as_ref(), &remote, None)
                .map_err(|reason| TransportError::Untrusted {
                    url: url.to_string(),
                    reason,
                })?,
        };
        let n = hs
            .write_message(&self.identity(), &mut buf)
            .map_err(|e| secure_err(e.to_string()))?;
        let mut auth = vec![frame::AUTH];
        auth.extend_from_slice(&sid);
        auth.extend_from_slice(&buf[..n]);
        let reply = requester.request(&auth, timeout)?;
        if let Some((code, reason)) = parse_refusal(&reply) {
            return Err(secure_err(format!("handshake refused ({code}): {reason}")));
        }
        if reply.len() != 1 + SID_LEN || reply[0] != frame::AUTH_REPLY || reply[1..] != sid {
            return Err(secure_err("bad handshake confirmation".into()));
        }
        let keys = split(&mut hs).map_err(secure_err)?;
        let mut session = Session::new(sid, true, keys, peer);
        session.peer_signal_url = identity.signal_url.filter(|u| u.len() <= MAX_URL_LEN);
        let session = Arc::new(session);
        self.insert_session(session.clone());
        s.by_request_url
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(url.to_string(), session.clone());
        s.handshakes.fetch_add(1, Ordering::Relaxed);
        Ok(session)
    }

    /// The key the admitted gestor at `url` proved in the session this side
    /// made with it, handshaking now if there is none: who is *at* that URL,
    /// as this side sees it (a peer's own claims prove no URL). `None` in
    /// insecure mode, where nobody proves anything.
    pub fn gestor_key_at(
        &self,
        url: &str,
        options: &TransportOptions,
        timeout: Duration,
    ) -> Result<Option<[u8; 32]>, TransportError> {
        if self.shared.plaintext {
            return Ok(None);
        }
        let known = self
            .shared
            .by_request_url
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(url)
            .cloned();
        let session = match known {
            Some(s) => s,
            None => {
                let mut requester = self
                    .shared
                    .transport
                    .requester(url, &with_overhead(options))?;
                self.session_with(url, requester.as_mut(), timeout, true)?
            }
        };
        if !session.peer.is_gestor() {
            return Err(TransportError::Untrusted {
                url: url.to_string(),
                reason: "it presented no gestor credential".into(),
            });
        }
        Ok(Some(*session.peer.key()))
    }

    fn forget_url(&self, url: &str, sid: &Sid) {
        let s = &self.shared;
        let mut by_url = s.by_request_url.lock().unwrap_or_else(|p| p.into_inner());
        if by_url.get(url).is_some_and(|x| &x.sid == sid) {
            by_url.remove(url);
        }
        drop(by_url);
        s.sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sid);
        s.by_signal_url
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, x| &x.sid != sid);
    }

    // ---------------------------------------------------------------- sockets

    /// Bind `url` and serve secure requests with `handler(request, peer, queued)`.
    pub fn replier(
        &self,
        url: &str,
        handler: SecureHandler,
        options: &TransportOptions,
    ) -> Result<Box<dyn Replier>, TransportError> {
        self.bind_replier(url, handler, None, options)
    }

    /// [`replier`](Self::replier) that first offers each request to `fast`
    /// on the transport's I/O thread (backends without one ignore it).
    pub fn replier_with_fast_path(
        &self,
        url: &str,
        handler: SecureHandler,
        fast: FastHandler,
        options: &TransportOptions,
    ) -> Result<Box<dyn Replier>, TransportError> {
        self.bind_replier(url, handler, Some(fast), options)
    }

    fn bind_replier(
        &self,
        url: &str,
        handler: SecureHandler,
        fast: Option<FastHandler>,
        options: &TransportOptions,
    ) -> Result<Box<dyn Replier>, TransportError> {
        let layer = self.clone();
        self.shared.transport.replier(
            url,
            Arc::new(ServeSecurely {
                layer,
                handler,
                fast,
            }),
            &with_overhead(options),
        )
    }

    /// A requester to the gestor at `url`; the handshake happens on first
    /// use and fails unless the responder proves admission to the cluster.
    pub fn requester(
        &self,
        url: &str,
        options: &TransportOptions,
    ) -> Result<Box<dyn Requester>, TransportError> {
        self.make_requester(url, options, true)
    }

    /// A requester to a client endpoint (a chat client's receiver): sealed
    /// the same way, but the responder need not be a gestor. Its identity
    /// is then only a key, so nothing secret of the cluster may go there.
    pub fn requester_to_client(
        &self,
        url: &str,
        options: &TransportOptions,
    ) -> Result<Box<dyn Requester>, TransportError> {
        self.make_requester(url, options, false)
    }

    fn make_requester(
        &self,
        url: &str,
        options: &TransportOptions,
        require_gestor: bool,
    ) -> Result<Box<dyn Requester>, TransportError> {
        let inner = self
            .shared
            .transport
            .requester(url, &with_overhead(options))?;
        if self.shared.plaintext {
            return Ok(Box::new(PlainRequester {
                layer: self.clone(),
                inner,
                url: url.to_string(),
            }));
        }
        Ok(Box::new(SecureRequester {
            layer: self.clone(),
            inner,
            url: url.to_string(),
            require_gestor: require_gestor && self.shared.cluster.is_some(),
        }))
    }

    /// A publisher to the signal endpoint `signal_url` of a gestor this
    /// layer already has a session with (learned from handshakes either way).
    pub fn publisher_to(
        &self,
        signal_url: &str,
        options: &TransportOptions,
    ) -> Result<Box<dyn Publisher>, TransportError> {
        if self.shared.plaintext {
            return self.plain_publisher(signal_url, options);
        }
        self.known_signal_session(signal_url)?;
        let inner = self.shared.transport.publisher(
            &Endpoint::Dial(signal_url.to_string()),
            &with_overhead(options),
        )?;
        Ok(Box::new(SecurePublisher {
            layer: self.clone(),
            inner,
            signal_url: signal_url.to_string(),
            pinned: None,
            via: None,
        }))
    }

    /// A publisher to `signal_url` sealed with the session made with the
    /// gestor at `request_url` (handshaking now if needed): what a client uses
    /// for its alive signals.
    pub fn publisher_via(
        &self,
        request_url: &str,
        signal_url: &str,
        options: &TransportOptions,
        timeout: Duration,
    ) -> Result<Box<dyn Publisher>, TransportError> {
        if self.shared.plaintext {
            return self.plain_publisher(signal_url, options);
        }
        let mut requester = self
            .shared
            .transport
            .requester(request_url, &with_overhead(options))?;
        let session = self.session_with(request_url, requester.as_mut(), timeout, true)?;
        let inner = self.shared.transport.publisher(
            &Endpoint::Dial(signal_url.to_string()),
            &with_overhead(options),
        )?;
        Ok(Box::new(SecurePublisher {
            layer: self.clone(),
            inner,
            signal_url: signal_url.to_string(),
            pinned: Some(session),
            via: Some((request_url.to_string(), requester, Instant::now())),
        }))
    }

    fn plain_publisher(
        &self,
        signal_url: &str,
        options: &TransportOptions,
    ) -> Result<Box<dyn Publisher>, TransportError> {
        let inner = self.shared.transport.publisher(
            &Endpoint::Dial(signal_url.to_string()),
            &with_overhead(options),
        )?;
        Ok(Box::new(PlainPublisher { inner }))
    }

    fn known_signal_session(&self, signal_url: &str) -> Result<Arc<Session>, TransportError> {
        self.shared
            .by_signal_url
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(signal_url)
            .cloned()
            .ok_or_else(|| TransportError::Secure {
                url: signal_url.to_string(),
                reason: "no session with the gestor behind this signal endpoint yet".into(),
            })
    }

    /// A subscriber on `endpoint` that yields only signals sealed by a known session.
    pub fn subscriber(
        &self,
        endpoint: &Endpoint,
        options: &TransportOptions,
    ) -> Result<SecureSubscriber, TransportError> {
        // Everything, not only sealed signals, so plaintext ones are counted.
        let inner = self
            .shared
            .transport
            .subscriber(endpoint, &[b""], &with_overhead(options))?;
        Ok(SecureSubscriber {
            layer: self.clone(),
            inner,
        })
    }

    /// A plaintext signal frame on an insecure node: `(topic, payload, peer)`.
    fn open_plain_signal(&self, frame: &[u8]) -> Option<AuthenticSignal> {
        let opened = match frame.split_first() {
            Some((&frame::PLAIN_SIGNAL, inner)) => decode_signal(inner),
            // A sealed signal (or garbage) reaching a plaintext node.
            _ => None,
        };
        match opened {
            Some((topic, payload)) => {
                Some((topic.to_vec(), payload.to_vec(), Self::unverified_peer()))
            }
            None => {
                self.shared.malformed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Open a sealed signal frame: `(topic, payload, peer)`.
    fn open_signal(&self, sealed: &[u8]) -> Option<AuthenticSignal> {
        let s = &self.shared;
        let Some((kind, sid, _, _)) = parse_sealed(sealed) else {
            s.malformed.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        // The sender's role decides which side of our session must match.
        let want_initiator = match kind {
            frame::SIGNAL_FROM_INITIATOR => false,
            frame::SIGNAL_FROM_RESPONDER => true,
            _ => {
                s.malformed.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let Some(session) = self.session(&sid).filter(|x| x.initiator == want_initiator) else {
            s.unknown_session.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        match session.open(sealed, &[]) {
            Ok((plain, _)) => {
                let (topic, payload) = decode_signal(&plain)?;
                Some((topic.to_vec(), payload.to_vec(), session.peer.clone()))
            }
            Err(code) => {
                self.count_refusal(code);
                None
            }
        }
    }
}

/// The transport's handler for a secure replier: opens, dispatches, seals.
struct ServeSecurely {
    layer: SecureLayer,
    handler: SecureHandler,
    fast: Option<FastHandler>,
}

impl gestor_sdk::RequestHandler for ServeSecurely {
    fn handle(&self, frame: &[u8]) -> Vec<u8> {
        self.handle_from(frame, None)
    }
    fn handle_from(&self, frame: &[u8], source: Option<&str>) -> Vec<u8> {
        self.layer.serve_from(frame, source, |req, peer| {
            (self.handler)(req, peer, Duration::ZERO)
        })
    }
    /// Sealed requests are opened here even without a fast path, so that
    /// the worker learns how long each one queued.
    fn triage(&self, frame: &[u8], _source: Option<&str>) -> gestor_sdk::Triage {
        self.layer.triage(frame, self.fast.as_ref(), &self.handler)
    }
}

fn split(hs: &mut snow::HandshakeState) -> Result<([u8; 32], [u8; 32]), String> {
    if !hs.is_handshake_finished() {
        return Err("handshake not finished".into());
    }
    // The raw split keys drive our own AEAD framing (explicit counters,
    // replay window, header as associated data) instead of snow's transport
    // mode, whose messages are capped at 64 KiB.
    Ok(hs.dangerously_get_raw_split())
}

/// Room for the secure header and tag on top of the plaintext limit.
fn with_overhead(options: &TransportOptions) -> TransportOptions {
    TransportOptions {
        max_message_bytes: options
            .max_message_bytes
            .saturating_add(HEADER_LEN + TAG_LEN + 8),
        ..options.clone()
    }
}

struct SecureRequester {
    layer: SecureLayer,
    inner: Box<dyn Requester>,
    url: String,
    /// Refuse a responder that proves no gestor credential (clients and
    /// gestores talking to gestores); off for client endpoints (chat peers).
    require_gestor: bool,
}

impl Requester for SecureRequester {
    fn request(&mut self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>, TransportError> {
        let secure_err = |reason: String| TransportError::Secure {
            url: self.url.clone(),
            reason,
        };
        // A second round only when the gestor forgot our session (it was
        // restarted or evicted us): the request was not processed, so resend.
        for _ in 0..2 {
            let session = self.layer.session_with(
                &self.url,
                self.inner.as_mut(),
                timeout,
                self.require_gestor,
            )?;
            let (frame, counter) = session
                .seal(frame::REQUEST, payload, &[])
                .map_err(&secure_err)?;
            let reply = self.inner.request(&frame, timeout)?;
            if let Some((code, reason)) = parse_refusal(&reply) {
                if code == refusal::UNKNOWN_SESSION {
                    self.layer.forget_url(&self.url, &session.sid);
                    continue;
                }
                return Err(secure_err(format!("refused ({code}): {reason}")));
            }
            match parse_sealed(&reply) {
                Some((frame::REPLY, sid, _, _)) if sid == session.sid => {}
                _ => {
                    return Err(secure_err(
                        "reply is not a sealed reply of this session".into(),
                    ))
                }
            }
            return match session.open(&reply, &counter.to_be_bytes()) {
                Ok((plain, _)) => Ok(plain),
                Err(code) => {
                    self.layer.count_refusal(code);
                    Err(secure_err(
                        "reply failed authentication or was replayed".into(),
                    ))
                }
            };
        }
        Err(secure_err("the gestor keeps forgetting the session".into()))
    }

    fn url(&self) -> &str {
        &self.url
    }
}

/// Insecure mode: requests and replies in plaintext, no session.
struct PlainRequester {
    layer: SecureLayer,
    inner: Box<dyn Requester>,
    url: String,
}

impl Requester for PlainRequester {
    fn request(&mut self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>, TransportError> {
        let mut frame = Vec::with_capacity(1 + payload.len());
        frame.push(frame::PLAIN_REQUEST);
        frame.extend_from_slice(payload);
        let mut reply = self.inner.request(&frame, timeout)?;
        if reply.first() == Some(&frame::PLAIN_REPLY) {
            reply.remove(0);
            return Ok(reply);
        }
        self.layer.shared.malformed.fetch_add(1, Ordering::Relaxed);
        Err(match parse_refusal(&reply) {
            Some((refusal::SECURE_ONLY, _)) => TransportError::OtherMode {
                url: self.url.clone(),
                reason: PEER_IS_SECURE.into(),
            },
            Some((code, reason)) => TransportError::Secure {
                url: self.url.clone(),
                reason: format!("refused ({code}): {reason}"),
            },
            None => TransportError::Secure {
                url: self.url.clone(),
                reason: "reply is not a plaintext reply (0x11)".into(),
            },
        })
    }

    fn url(&self) -> &str {
        &self.url
    }
}

/// Insecure mode: signals in plaintext under the same outer topic.
struct PlainPublisher {
    inner: Box<dyn Publisher>,
}

impl Publisher for PlainPublisher {
    fn publish(&mut self, topic: &[u8], payload: &[u8]) -> Result<(), TransportError> {
        let mut frame = vec![frame::PLAIN_SIGNAL];
        frame.extend_from_slice(&encode_signal(topic, payload));
        self.inner.publish(frame::SIGNAL_TOPIC, &frame)
    }
}

struct SecurePublisher {
    layer: SecureLayer,
    inner: Box<dyn Publisher>,
    signal_url: String,
    /// The session a client made for its signals; nodes look theirs up each time.
    pinned: Option<Arc<Session>>,
    /// For a client's publisher: the gestor's request URL, a requester to
    /// it, and when the session was last known good. Signals get no answer,
    /// so the session is probed now and then and made again if the gestor
    /// forgot it (it restarted): otherwise every signal would be dropped.
    via: Option<(String, Box<dyn Requester>, Instant)>,
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl SecurePublisher {
    /// The pinned session, re-made if the gestor no longer knows it.
    fn refresh(&mut self) -> Result<(), TransportError> {
        let (Some(session), Some((url, requester, checked))) = (&self.pinned, &mut self.via) else {
            return Ok(());
        };
        if checked.elapsed() < self.layer.shared.signal_probe_every {
            return Ok(());
        }
        let mut probe = vec![frame::PROBE];
        probe.extend_from_slice(&session.sid);
        match requester.request(&probe, PROBE_TIMEOUT) {
            Ok(r) if r.first() == Some(&frame::PROBE_REPLY) => {}
            Ok(r) if parse_refusal(&r).is_some_and(|(c, _)| c == refusal::UNKNOWN_SESSION) => {
                self.layer.forget_url(url, &session.sid);
                let fresh =
                    self.layer
                        .session_with(url, requester.as_mut(), PROBE_TIMEOUT, true)?;
                self.pinned = Some(fresh);
            }
            // Unreachable or odd: keep sending; try again next period.
            _ => {}
        }
        *checked = Instant::now();
        Ok(())
    }
}

impl Publisher for SecurePublisher {
    fn publish(&mut self, topic: &[u8], payload: &[u8]) -> Result<(), TransportError> {
        self.refresh()?;
        let session = match &self.pinned {
            Some(s) => s.clone(),
            None => self.layer.known_signal_session(&self.signal_url)?,
        };
        let kind = if session.initiator {
            frame::SIGNAL_FROM_INITIATOR
        } else {
            frame::SIGNAL_FROM_RESPONDER
        };
        let (sealed, _) = session
            .seal(kind, &encode_signal(topic, payload), &[])
            .map_err(|reason| TransportError::Secure {
                url: self.signal_url.clone(),
                reason,
            })?;
        self.inner.publish(frame::SIGNAL_TOPIC, &sealed)
    }
}

/// Yields signals with the peer that sealed them; drops everything else.
pub struct SecureSubscriber {
    layer: SecureLayer,
    inner: Box<dyn Subscriber>,
}

impl SecureSubscriber {
    /// The next authentic signal as `(topic, payload, peer)`, or `None` after `timeout`.
    pub fn recv_from(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<AuthenticSignal>, TransportError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.inner.recv(left)? {
                None => return Ok(None),
                Some((topic, sealed)) => {
                    let opened = if topic != frame::SIGNAL_TOPIC {
                        self.layer.shared.malformed.fetch_add(1, Ordering::Relaxed);
                        None
                    } else if self.layer.shared.plaintext {
                        self.layer.open_plain_signal(&sealed)
                    } else {
                        self.layer.open_signal(&sealed)
                    };
                    if let Some(signal) = opened {
                        return Ok(Some(signal));
                    }
                    if left.is_zero() {
                        return Ok(None);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
