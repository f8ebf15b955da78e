//! Input checks. Usernames follow the directory's rules (docs/PROTOCOL.md
//! section 9); they matter here because they are parts of store keys.

use gestor_sdk::HandlerError;

pub use gestor_api::routing::validate_username;

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

/// An item a mailbox may hold: valid names and id, text within `max_text`.
pub fn validate_held(
    held: &gestor_api::mailbox::Held,
    max_text: usize,
) -> Result<(), HandlerError> {
    validate_username(&held.mail.from)?;
    validate_username(&held.mail.to)?;
    validate_id(&held.mail.id)?;
    if held.mail.seq == 0 {
        return Err(HandlerError::bad_request(
            "seq starts at 1: 1, 2, 3… per sender and recipient",
        ));
    }
    if held.mail.text.len() > max_text {
        return Err(HandlerError::bad_request(format!(
            "message text of {} bytes exceeds the limit of {max_text}",
            held.mail.text.len()
        )));
    }
    Ok(())
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

    fn item(seq: u64, text: &str) -> gestor_api::mailbox::Held {
        gestor_api::mailbox::Held {
            mail: gestor_api::chat::ChatMessage {
                id: "0123abcd".into(),
                from: "alice".into(),
                to: "bob".into(),
                seq,
                sent_ms: 1,
                text: text.into(),
            },
            stored_ms: 0,
            bounce: None,
        }
    }

    /// PROTOCOL.md §18.1: `seq` is 1, 2, 3…; 0 is refused.
    #[test]
    fn items() {
        assert!(validate_held(&item(1, "hi"), 16).is_ok());
        assert!(validate_held(&item(u64::MAX, "hi"), 16).is_ok());
        let zero = validate_held(&item(0, "hi"), 16).unwrap_err();
        assert!(zero.message.contains("seq starts at 1"), "{}", zero.message);
        assert!(validate_held(&item(1, &"x".repeat(17)), 16).is_err());
    }
}
