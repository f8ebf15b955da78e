//! Input rules for the directory (documented in docs/PROTOCOL.md).

use gestor_sdk::HandlerError;

pub const USERNAME_MIN: usize = 3;
pub const USERNAME_MAX: usize = 32;
pub const PASSWORD_MAX: usize = 1024;

/// 3–32 characters of `a-z`, `0-9`, `_`, `-`, `.`, starting with a letter or
/// digit. Lowercase only, so `Alice` and `alice` cannot be two people.
pub fn validate_username(name: &str) -> Result<(), HandlerError> {
    let len = name.chars().count();
    if !(USERNAME_MIN..=USERNAME_MAX).contains(&len) {
        return Err(HandlerError::bad_request(format!(
            "username must be {USERNAME_MIN} to {USERNAME_MAX} characters, got {len}"
        )));
    }
    let mut chars = name.chars();
    let first_ok = chars
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

pub fn validate_password(password: &str) -> Result<(), HandlerError> {
    if password.is_empty() || password.len() > PASSWORD_MAX {
        return Err(HandlerError::bad_request(format!(
            "password must be 1 to {PASSWORD_MAX} bytes"
        )));
    }
    Ok(())
}

/// `host:port` with a non-empty host (name, IPv4 or `[IPv6]`) and a port 1–65535.
pub fn validate_address(address: &str) -> Result<&str, HandlerError> {
    let bad = || HandlerError::bad_request(format!("address {address:?} is not host:port"));
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0
        || host.is_empty()
        || host.len() > 253
        || host.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad());
    }
    Ok(address)
}

/// Compare secrets without leaking where they differ through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn addresses() {
        assert!(validate_address("127.0.0.1:9000").is_ok());
        assert!(validate_address("[::1]:9000").is_ok());
        assert!(validate_address("host:0").is_err());
        assert!(validate_address("host").is_err());
        assert!(validate_address(":80").is_err());
        assert!(validate_address("h:99999").is_err());
    }

    #[test]
    fn secrets_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
