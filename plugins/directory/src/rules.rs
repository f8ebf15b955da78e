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
