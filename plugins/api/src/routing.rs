//! Reaching the gestor responsible for a user, for plugins that keep
//! per-user data (the directory, the mailbox).
//!
//! The ring plugin serves [`ring::Lookup`], [`ring::Responsible`] and
//! [`ring::Suspect`]; these helpers call them locally so every plugin
//! routes the same way: look the owner up, forward, and on a dead or
//! not-yet-ready owner look up again with backoff until a deadline.

use crate::ring::{self, KeyBody};
use gestor_sdk::hash::ring_position;
use gestor_sdk::{CallError, ErrorCode, HandlerError, Kind, PluginContext};
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
    validate_username(username)?;
    let key = ring_position(username.as_bytes());
    let until = Instant::now() + deadline;
    let attempt = deadline.clamp(Duration::from_millis(100), MAX_ATTEMPT);
    let mut backoff = Duration::from_millis(50);
    loop {
        let last: HandlerError = match ctx.call_local::<ring::Lookup>(&KeyBody { key }) {
            Ok(owner) => match ctx.call::<K>(&owner.addr, body, attempt) {
                Ok(rep) => return Ok((rep, owner.hops)),
                Err(CallError::Remote(e))
                    if e.code != ErrorCode::Unavailable && e.code != ErrorCode::Timeout =>
                {
                    return Err(e)
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
        if Instant::now() + backoff > until {
            return Err(last);
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(500));
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
