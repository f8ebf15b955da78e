//! Typed errors shared by every crate, and the error codes that travel on the wire.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Machine-readable error code carried in an error reply (`error.code` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not a CBOR request envelope.
    Malformed,
    /// No handler is registered for the request kind.
    UnknownKind,
    /// The message exceeds the configured size limit.
    TooLarge,
    /// The request was well-formed CBOR but its body is invalid (e.g. a bad username).
    BadRequest,
    /// Wrong password, missing or invalid session token.
    Unauthorized,
    /// The named user (or object) does not exist.
    NotFound,
    /// The name is taken or the write conflicts with a newer version.
    Conflict,
    /// The node cannot serve now (ring not ready, peer unreachable, shutting down).
    Unavailable,
    /// A downstream call timed out.
    Timeout,
    /// A version stamp too far in the future was refused.
    ClockSkew,
    /// A bug: a handler panicked or failed unexpectedly.
    Internal,
    /// The caller may not use this kind (an internal kind from a non-gestor,
    /// a local kind from the network).
    Forbidden,
    /// Too many attempts from this source or on this account; retry later.
    RateLimited,
    /// The node is saturated (e.g. the password-hashing queue is full); retry later.
    Busy,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::UnknownKind => "unknown_kind",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::ClockSkew => "clock_skew",
            ErrorCode::Internal => "internal",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Busy => "busy",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request handler returns when it cannot answer: becomes an error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{code}: {message}")]
pub struct HandlerError {
    pub code: ErrorCode,
    pub message: String,
}

impl HandlerError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HandlerError {
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
}

impl From<StoreError> for HandlerError {
    fn from(e: StoreError) -> Self {
        HandlerError::internal(format!("store: {e}"))
    }
}

impl From<CallError> for HandlerError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Remote(err) => err,
            CallError::Transport(TransportError::Timeout { .. }) => {
                HandlerError::new(ErrorCode::Timeout, e.to_string())
            }
            other => HandlerError::unavailable(other.to_string()),
        }
    }
}

/// Transport failures. Every backend maps its library errors onto these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("no reply from {url} within {timeout_ms} ms")]
    Timeout { url: String, timeout_ms: u64 },
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("invalid address {url:?}: {reason}")]
    BadAddress { url: String, reason: String },
    #[error("cannot bind {url}: {reason}")]
    Bind { url: String, reason: String },
    #[error("socket closed")]
    Closed,
    #[error("{backend}: {reason}")]
    Backend {
        backend: &'static str,
        reason: String,
    },
    /// The peer did not prove that it belongs to the cluster (secure layer).
    #[error("refusing {url}: it does not prove admission to this cluster ({reason})")]
    Untrusted { url: String, reason: String },
    /// The secure session failed: refused handshake, altered or replayed frame.
    #[error("secure channel to {url}: {reason}")]
    Secure { url: String, reason: String },
    /// The peer runs in the other security mode: a secure side met an
    /// `--insecure` (plaintext) node, or a plaintext side a secure gestor.
    #[error("refusing {url}: {reason}")]
    OtherMode { url: String, reason: String },
    /// The connection dropped while the request waited for its reply; it
    /// may or may not have run (handlers are idempotent: retry).
    #[error("connection to {url} lost before the reply")]
    ConnectionLost { url: String },
    /// A handler tried on the transport's I/O thread ([`Kind::FAST_PATH`](crate::Kind::FAST_PATH))
    /// asked for a call that would wait there; a worker serves the request instead.
    #[error("a call to {url} would block the transport's I/O thread")]
    WouldBlock { url: String },
}

/// Failure of a call made through the host to another gestor or plugin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The peer answered with an error reply.
    #[error("{0}")]
    Remote(HandlerError),
    /// The peer's reply was not a valid envelope.
    #[error("malformed reply: {0}")]
    MalformedReply(String),
}

impl CallError {
    /// The wire error code, when the peer answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CallError::Remote(e) => Some(e.code),
            _ => None,
        }
    }
}

/// Store failures. `Corrupt` and `Open` name the file so an operator can act.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("store file {path} is corrupt or unreadable: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("invalid record: {0}")]
    Invalid(String),
    #[error("{backend}: {reason}")]
    Backend {
        backend: &'static str,
        reason: String,
    },
}

/// Failures of loading or starting a plugin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    #[error("plugin {plugin}: {reason}")]
    Start { plugin: String, reason: String },
    #[error("plugin {plugin}: request kind {kind:?} is already registered by {owner}")]
    DuplicateKind {
        plugin: String,
        kind: String,
        owner: String,
    },
    #[error("plugin {plugin} panicked: {message}")]
    Panicked { plugin: String, message: String },
}
