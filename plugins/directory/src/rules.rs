//! Input rules for the directory (documented in docs/PROTOCOL.md).

use gestor_sdk::HandlerError;

pub use gestor_api::routing::{validate_username, USERNAME_MAX, USERNAME_MIN};

pub const PASSWORD_MAX: usize = 1024;

pub fn validate_password(password: &str) -> Result<(), HandlerError> {
    if password.is_empty() || password.len() > PASSWORD_MAX {
        return Err(HandlerError::bad_request(format!(
            "password must be 1 to {PASSWORD_MAX} bytes"
        )));
    }
    Ok(())
}

/// Longest host name (DNS's limit).
pub const HOST_MAX: usize = 253;

/// `host:port` as docs/PROTOCOL.md section 9 defines it: split at the last
/// `:`; the port is 1–65535 in plain decimal (no sign, no leading zero); the
/// host is `[IPv6]`, a dotted IPv4 address, or a name of 1–253 bytes of
/// `A–Z a–z 0–9 . - _`. Others dial `tcp://ADDRESS`, so nothing ambiguous
/// may be stored.
pub fn validate_address(address: &str) -> Result<&str, HandlerError> {
    let bad = |why: &str| {
        HandlerError::bad_request(format!("address {address:?} is not host:port: {why}"))
    };
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| bad("no ':' before a port"))?;
    let decimal = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && !port.starts_with('0');
    match port.parse::<u16>() {
        Ok(p) if decimal && p > 0 => {}
        _ => {
            return Err(bad(
                "the port must be 1-65535 in decimal, without sign or leading zero",
            ))
        }
    }
    if let Some(inner) = host.strip_prefix('[') {
        let ip = inner.strip_suffix(']').ok_or_else(|| bad("unclosed '['"))?;
        ip.parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad("only an IPv6 address goes in brackets"))?;
        return Ok(address);
    }
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    if host.contains(':') {
        return Err(bad("an IPv6 host goes in brackets, e.g. [::1]:9000"));
    }
    if host.len() > HOST_MAX
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(bad(
            "the host is a name of at most 253 bytes of A-Z a-z 0-9 . - _, an IPv4 address or [IPv6]",
        ));
    }
    // All digits and dots reads as IPv4 to everyone, so it must be one.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && host.parse::<std::net::Ipv4Addr>().is_err()
    {
        return Err(bad("not an IPv4 address"));
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

    /// The examples of docs/PROTOCOL.md section 9, and the near misses
    /// that were once accepted.
    #[test]
    fn addresses() {
        let max_name = format!("{}:1", "a".repeat(HOST_MAX));
        for ok in [
            "127.0.0.1:9000",
            "example.org:5000",
            "[::1]:9000",
            "[2001:db8::7]:65535",
            "my_host-1.local:1",
            "localhost:80",
            max_name.as_str(),
        ] {
            assert_eq!(validate_address(ok).ok(), Some(ok), "{ok}");
        }
        let long_name = format!("{}:1", "a".repeat(HOST_MAX + 1));
        for bad in [
            "",
            "host",
            ":80",
            "host:0",
            "h:99999",
            "h:+80",
            "h:080",
            "h:-1",
            "h: 80",
            "h:",
            "::1:9000",
            "[::1]",
            "[::1:9000",
            "[example.org]:80",
            "[fe80::1%eth0]:80",
            "a b:80",
            "a/b:80",
            "user@host:80",
            "é:80",
            "1.2.3.999:80",
            "127.0.0.01:80",
            long_name.as_str(),
        ] {
            let err = validate_address(bad).expect_err(bad);
            assert_eq!(err.code, gestor_sdk::ErrorCode::BadRequest, "{bad}");
        }
    }

    #[test]
    fn secrets_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
