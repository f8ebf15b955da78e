//! Input checks. Usernames follow the directory's rules (docs/PROTOCOL.md
//! section 9); they matter here because they are parts of store keys.

use gestor_sdk::HandlerError;

pub fn validate_username(name: &str) -> Result<(), HandlerError> {
    let ok_len = (3..=32).contains(&name.len());
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'));
    if ok_len && ok_first && ok_chars {
        Ok(())
    } else {
        Err(HandlerError::bad_request(format!(
            "invalid username {name:?}: 3-32 of a-z 0-9 _ - . starting with a letter or digit"
        )))
    }
}

/// Message ids: 1-64 characters of `[A-Za-z0-9_-]` (clients use 32 hex digits).
pub fn validate_id(id: &str) -> Result<(), HandlerError> {
    if (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Ok(())
    } else {
        Err(HandlerError::bad_request(format!(
            "invalid message id {id:?}: 1-64 of A-Z a-z 0-9 _ -"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids() {
        assert!(validate_username("alice").is_ok());
        assert!(validate_username("a/b").is_err());
        assert!(validate_username("Al").is_err());
        assert!(validate_id("0123abcd").is_ok());
        assert!(validate_id("a/b").is_err());
        assert!(validate_id("").is_err());
    }
}
