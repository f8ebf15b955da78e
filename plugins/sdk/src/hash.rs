//! Placement of names on the ring.
//!
//! A position is the first 8 bytes (big-endian) of the SHA-256 digest of the
//! name's UTF-8 bytes. SHA-256 rather than the polynomial hash the seed
//! suggests: a polynomial hash is easy to collide on purpose (pile users onto
//! one gestor), SHA-256 is not, and every language has it, so a client or an
//! operator can compute where a user lives. Used for usernames and for node
//! ids (hash of the node's advertised request URL).

use sha2::{Digest, Sha256};

pub fn ring_position(name: &[u8]) -> u64 {
    let digest = Sha256::digest(name);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_vector() {
        // SHA-256("abc") starts ba7816bf8f01cfea (FIPS 180-2 test vector).
        assert_eq!(super::ring_position(b"abc"), 0xba78_16bf_8f01_cfea);
    }
}
