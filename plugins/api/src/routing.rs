//! Reaching the gestor responsible for a user, for plugins that keep
//! per-user data (the directory, the mailbox).
//!
//! The ring plugin serves [`ring::Lookup`], [`ring::Responsible`] and
//! [`ring::Suspect`]; these helpers call them locally so every plugin
//! routes the same way: look the owner up, forward, and on a dead or
//! not-yet-ready owner look up again with backoff until a deadline.

use crate::ring::{self, KeyBody};
use gestor_sdk::hash::ring_position;
use gestor_sdk::{CallError, ErrorCode, HandlerError, Kind, PluginContext, TransportError};
use std::time::{Duration, Instant};

pub const USERNAME_MIN: usize = 3;
pub const USERNAME_MAX: usize = 32;

/// 3–32 characters of `a-z`, `0-9`, `_`, `-`, `.`, starting with a letter or
/// digit. Lowercase only, so `Alice` and `alice` cannot be two people.
pub fn validate_username(name: &str) -> Result<(), HandlerError> {
    let len = name.chars().count();
    if !(USERNAME_MIN..=USERNAME_MAX).contains(&len) {
        return Err(HandlerError::bad_request(format!(
            "username must be {USERNAME_MIN} to {USERNAME_MAX} characters, got {len}"
        )));
    }
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'));
    if !first_ok || !rest_ok {
        return Err(HandlerError::bad_request(
            "username may contain only a-z, 0-9, '_', '-', '.' and must start with a letter or digit",
        ));
    }
    Ok(())
}

/// The longest a single forwarded attempt may take: short, so a dead owner
/// is given up on quickly. A write slower than this (a copy holder being
/// replaced) is forwarded again, which the directory's writes tolerate
/// (register, set_address and logout are idempotent; login issues a new
/// token, and the caller keeps the last one it receives).
const MAX_ATTEMPT: Duration = Duration::from_secs(2);

/// Send `K` with `body` to the gestor responsible for `username`; return
/// its reply and the lookup's hop count. Error replies other than
/// `unavailable`/`timeout` are final; those two, and transport failures,
/// are retried with a fresh lookup (the ring moved, or the owner is taking
/// over a range) until `deadline` has passed.
pub fn forward<K: Kind>(
    ctx: &PluginContext,
    username: &str,
    body: &K::Request,
    deadline: Duration,
) -> Result<(K::Reply, u32), HandlerError> {
    forward_or_serve::<K>(ctx, username, body, deadline, None)
}

/// The owner side of `K` in the calling plugin, run directly when the
/// owner is this gestor.
pub type ServeHere<'a, K> =
    &'a dyn Fn(&<K as Kind>::Request) -> Result<<K as Kind>::Reply, HandlerError>;

/// [`forward`], but when this gestor is the owner, `here` serves the request
/// in the calling plugin: no dispatch through the host, no conversion of the
/// body to and from a generic CBOR value. Its errors are treated as a remote
/// owner's would be.
pub fn forward_or_serve<K: Kind>(
    ctx: &PluginContext,
    username: &str,
    body: &K::Request,
    deadline: Duration,
    here: Option<ServeHere<'_, K>>,
) -> Result<(K::Reply, u32), HandlerError> {
    validate_username(username)?;
    let key = ring_position(username.as_bytes());
    let until = Instant::now() + deadline;
    let attempt = deadline.clamp(Duration::from_millis(100), MAX_ATTEMPT);
    let mut backoff = Duration::from_millis(50);
    // The first attempt goes where the ring table says (no lookup on the
    // network); the table can be a walk old, so retries look up afresh.
    let mut first = true;
    loop {
        let owner = if std::mem::take(&mut first) {
            ctx.call_local::<ring::Route>(&KeyBody { key })
        } else {
            ctx.call_local::<ring::Lookup>(&KeyBody { key })
        };
        let last: HandlerError = match owner {
            Ok(owner) => match call_owner::<K>(ctx, &owner.addr, body, attempt, here) {
                Ok(rep) => return Ok((rep, owner.hops)),
                Err(CallError::Remote(e))
                    if e.code != ErrorCode::Unavailable && e.code != ErrorCode::Timeout =>
                {
                    return Err(e)
                }
                // Tried on the I/O thread: a worker serves it again at once.
                Err(e @ CallError::Transport(TransportError::WouldBlock { .. })) => {
                    return Err(e.into())
                }
                Err(e) => {
                    tracing::debug!(%username, owner = %owner.addr, kind = K::NAME, "forward failed, retrying: {e}");
                    if matches!(e, CallError::Transport(_)) {
                        // Route around it before the ring's own failure detection does.
                        let _ = ctx.call_local::<ring::Suspect>(&KeyBody { key: owner.id });
                    }
                    e.into()
                }
            },
            Err(e) => e.into(),
        };
        // On the I/O thread: no sleeping there; a worker runs it again.
        if Instant::now() + backoff > until || !ctx.can_wait() {
            return Err(last);
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

/// One attempt at the owner at `addr`: `here` when that is this gestor.
fn call_owner<K: Kind>(
    ctx: &PluginContext,
    addr: &str,
    body: &K::Request,
    attempt: Duration,
    here: Option<ServeHere<'_, K>>,
) -> Result<K::Reply, CallError> {
    match here {
        Some(serve) if addr == ctx.request_url() => serve(body).map_err(CallError::Remote),
        _ => ctx.call::<K>(addr, body, attempt),
    }
}

/// Whether this gestor is responsible for `username` now.
pub fn is_responsible(ctx: &PluginContext, username: &str) -> Result<bool, HandlerError> {
    validate_username(username)?;
    let key = ring_position(username.as_bytes());
    ctx.call_local::<ring::Responsible>(&KeyBody { key })
        .map_err(HandlerError::from)
}

#[cfg(test)]
mod tests {
    use super::validate_username;

    #[test]
    fn usernames() {
        for ok in ["alice", "bob_2", "a.b-c", "007"] {
            assert!(validate_username(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ab",
            "Alice",
            "_alice",
            "al ice",
            "x".repeat(33).as_str(),
            "añil",
            "a/b",
        ] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
    }
}

/// Longest stored address (`host:port`; a DNS name is at most 253 bytes).
pub const ADDRESS_MAX: usize = 260;
/// Longest stored password hash (a PHC argon2id string is ~100 bytes).
pub const PASSWORD_HASH_MAX: usize = 256;

/// The largest argon2 memory cost (KiB) a stored hash may ask for: 256 MiB.
/// Verifying a hash allocates its memory cost, so a planted or imported hash
/// with `m=4294967295` would ask for 4 TiB at the user's next login.
pub const HASH_MEMORY_KIB_MAX: u32 = 256 * 1024;
/// The most work a stored hash may ask for, as memory (KiB) × passes: 16
/// passes over the largest memory, about 100 times the default hash (a huge
/// `t` would hold a hashing thread for hours). Few passes over much memory
/// and many over little are both allowed.
pub const HASH_WORK_MAX: u64 = HASH_MEMORY_KIB_MAX as u64 * 16;
/// The most argon2 lanes a stored hash may ask for.
pub const HASH_LANES_MAX: u32 = 16;

/// Refuse an argon2 PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`)
/// whose costs are missing or beyond the maxima above. Only the parameter
/// field is read; whether the rest verifies is argon2's business.
///
/// Checked where a hash enters (imports, this gestor's own settings) and
/// before every verification, but not on copies between gestores: a
/// record stored before the maxima existed must still be copied, or the
/// ranges holding it could never finish merging.
pub fn check_hash_cost(phc: &str) -> Result<(), String> {
    let params = phc
        .split('$')
        .find(|field| field.starts_with("m="))
        .ok_or("password hash has no argon2 parameters (m=…,t=…,p=…)")?;
    let (mut m, mut t, mut p) = (None, None, None);
    for pair in params.split(',') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value: u32 = value
            .parse()
            .map_err(|_| format!("password hash parameter {pair:?} is not a number"))?;
        match key {
            "m" => m = Some(value),
            "t" => t = Some(value),
            "p" => p = Some(value),
            _ => {}
        }
    }
    let (Some(m), Some(t), Some(p)) = (m, t, p) else {
        return Err("password hash lacks one of its costs m, t and p".into());
    };
    if m > HASH_MEMORY_KIB_MAX || u64::from(m) * u64::from(t) > HASH_WORK_MAX || p > HASH_LANES_MAX
    {
        return Err(format!(
            "password hash costs m={m},t={t},p={p} exceed the maxima: \
             m at most {HASH_MEMORY_KIB_MAX}, m×t at most {HASH_WORK_MAX}, p at most {HASH_LANES_MAX}"
        ));
    }
    Ok(())
}

/// Why a record that arrived from another gestor cannot be stored, if it
/// cannot: every write path checks this, so a buggy or compromised member
/// cannot plant what no client request could have produced.
pub fn validate_record(record: &gestor_sdk::UserRecord) -> Result<(), String> {
    validate_username(&record.username).map_err(|e| e.message)?;
    if record.ring_pos != ring_position(record.username.as_bytes()) {
        return Err(format!(
            "ring position of {} does not match its name",
            record.username
        ));
    }
    if let Some(why) = record.version.implausible() {
        return Err(format!("version {}: {why}", record.version));
    }
    if record.address.len() > ADDRESS_MAX
        || record
            .address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("address too long or not printable".into());
    }
    if record.password_hash.len() > PASSWORD_HASH_MAX {
        return Err("password hash too long".into());
    }
    if !record.deleted && !record.password_hash.starts_with("$argon2id$") {
        return Err("a live record must carry an argon2id hash".into());
    }
    let hex64 = record.session_hash.len() == 64
        && record.session_hash.bytes().all(|b| b.is_ascii_hexdigit());
    if !record.session_hash.is_empty() && !hex64 {
        return Err("session hash is not a SHA-256 hex digest".into());
    }
    Ok(())
}

#[cfg(test)]
mod record_tests {
    use super::*;
    use gestor_sdk::{Timestamp, UserRecord};

    fn good() -> UserRecord {
        UserRecord {
            username: "alice".into(),
            ring_pos: ring_position(b"alice"),
            address: "127.0.0.1:9000".into(),
            password_hash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA".into(),
            online: true,
            last_seen_ms: 1,
            version: Timestamp {
                wall_ms: 1,
                logical: 0,
                node: 7,
            },
            deleted: false,
            session_hash: "ab".repeat(32),
        }
    }

    #[test]
    fn only_records_a_client_could_have_made_pass() {
        assert!(validate_record(&good()).is_ok());
        type Mutation = Box<dyn Fn(&mut UserRecord)>;
        let cases: Vec<Mutation> = vec![
            Box::new(|r| r.ring_pos ^= 1),
            Box::new(|r| r.username = "Alice".into()),
            Box::new(|r| r.version.logical = u32::MAX),
            Box::new(|r| r.version.node = u64::MAX),
            Box::new(|r| r.address = "x".repeat(1000)),
            Box::new(|r| r.password_hash = "plain".into()),
            Box::new(|r| r.session_hash = "zz".into()),
        ];
        for (i, mutate) in cases.iter().enumerate() {
            let mut r = good();
            mutate(&mut r);
            assert!(validate_record(&r).is_err(), "case {i} accepted");
        }
        let mut tomb = good();
        tomb.deleted = true;
        tomb.password_hash.clear();
        tomb.session_hash.clear();
        assert!(validate_record(&tomb).is_ok());
    }

    #[test]
    fn hash_costs_up_to_the_maxima_pass() {
        assert!(check_hash_cost("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA").is_ok());
        let most =
            format!("$argon2id$v=19$m={HASH_MEMORY_KIB_MAX},t=16,p={HASH_LANES_MAX}$c2FsdA$aGFzaA");
        assert!(check_hash_cost(&most).is_ok());
        // Many passes over little memory (the overload tests' slow hashes).
        assert!(check_hash_cost("$argon2id$v=19$m=19456,t=96,p=1$c2FsdA$aGFzaA").is_ok());
        let long = format!("$argon2id$v=19$m={HASH_MEMORY_KIB_MAX},t=17,p=1$c2FsdA$aGFzaA");
        assert!(check_hash_cost(&long).is_err());
        for bad in [
            "$argon2id$v=19$c2FsdA$aGFzaA",
            "$argon2id$v=19$m=4294967295,t=1,p=1$c2FsdA$aGFzaA",
            "$argon2id$v=19$m=64,t=100000,p=1$c2FsdA$aGFzaA",
            "$argon2id$v=19$m=64,t=1,p=255$c2FsdA$aGFzaA",
            "$argon2id$v=19$m=64,t=x,p=1$c2FsdA$aGFzaA",
        ] {
            assert!(check_hash_cost(bad).is_err(), "{bad}");
        }
        let over = format!(
            "$argon2id$v=19$m={},t=1,p=1$c2FsdA$aGFzaA",
            HASH_MEMORY_KIB_MAX + 1
        );
        let why = check_hash_cost(&over).unwrap_err();
        assert!(why.contains("exceed"), "{why}");
    }
}
