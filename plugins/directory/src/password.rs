//! argon2id hashing and verification with reused block memory.
//!
//! `Argon2::hash_password` allocates the whole memory cost (19 MiB by
//! default) for every hash. The gestor returns large blocks to the system
//! when freed (host/src/memory.rs), so each hash then faults in and zeroes
//! 19 MiB of fresh pages: measured on the 2-core bench machine, 24 ms per
//! hash instead of 13 ms with the blocks reused, and two threads at once
//! made 76 hashes/s instead of 129. So each hashing thread keeps one block
//! buffer for its life (`hash_slots` × the memory cost, resident), and
//! wipes it after every hash: the blocks of a finished hash would let
//! whoever reads them test password guesses without paying argon2's cost.
//!
//! The PHC strings are the ones `argon2`'s `PasswordHasher` writes, and any
//! argon2 PHC string it can verify verifies here (the same parameters,
//! salt decoding and constant-time comparison of the outputs).

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{self, Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::cell::RefCell;
use zeroize::Zeroize;

/// Blocks (1 KiB each) a thread keeps between hashes: larger costs (say, an
/// imported hash with a huge memory parameter) get a buffer of their own,
/// freed after the hash.
const KEEP_BLOCKS: usize = 64 * 1024;

thread_local! {
    static BLOCKS: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` on `count` blocks of this thread's buffer, wiped afterwards.
fn with_blocks<T>(count: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    let run = |blocks: &mut Vec<Block>| {
        if blocks.len() < count {
            blocks.resize(count, Block::default());
        }
        let out = f(&mut blocks[..count]);
        blocks[..count].iter_mut().for_each(Zeroize::zeroize);
        out
    };
    if count > KEEP_BLOCKS {
        return run(&mut Vec::new());
    }
    BLOCKS.with(|b| match b.try_borrow_mut() {
        Ok(mut blocks) => run(&mut blocks),
        // Re-entered (never in this crate): a buffer of its own.
        Err(_) => run(&mut Vec::new()),
    })
}

fn compute(
    algorithm: Algorithm,
    version: Version,
    params: Params,
    password: &[u8],
    salt: password_hash::Salt<'_>,
) -> password_hash::Result<Output> {
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes)?;
    let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let count = params.block_count();
    let argon = Argon2::new(algorithm, version, params);
    with_blocks(count, |blocks| {
        Output::init_with(output_len, |out| {
            Ok(argon.hash_password_into_with_memory(password, salt_bytes, out, blocks)?)
        })
    })
}

/// A new argon2id PHC string for `password` (random salt).
pub fn hash(password: &[u8], memory_kib: u32, iterations: u32) -> password_hash::Result<String> {
    let params = Params::new(memory_kib, iterations, 1, None)?;
    let salt = SaltString::generate(&mut OsRng);
    let output = compute(
        Algorithm::Argon2id,
        Version::V0x13,
        params.clone(),
        password,
        salt.as_salt(),
    )?;
    Ok(PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: password_hash::ParamsString::try_from(&params)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    }
    .to_string())
}

/// Whether `password` matches the PHC string `stored` (`Err`: not a
/// usable argon2 PHC string).
pub fn verify(password: &[u8], stored: &str) -> password_hash::Result<bool> {
    let parsed = PasswordHash::new(stored)?;
    let expected = parsed.hash.ok_or(password_hash::Error::Password)?;
    let salt = parsed.salt.ok_or(password_hash::Error::SaltInvalid(
        password_hash::errors::InvalidValue::Malformed,
    ))?;
    let algorithm = Algorithm::try_from(parsed.algorithm)?;
    let version = parsed
        .version
        .map(Version::try_from)
        .transpose()?
        .unwrap_or_default();
    // Costs beyond gestor-api's maxima: refused before any memory is taken
    // (a record can predate the check, or come from an older member).
    gestor_api::routing::check_hash_cost(stored).map_err(|_| {
        password_hash::Error::ParamValueInvalid(password_hash::errors::InvalidValue::TooLong)
    })?;
    let params = Params::try_from(&parsed)?;
    let computed = compute(algorithm, version, params, password, salt)?;
    // `Output`'s equality is constant-time.
    Ok(computed == expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    #[test]
    fn a_hash_asking_for_too_much_memory_is_refused_unrun() {
        // 4 TiB if it were run: an error at once instead.
        let huge = "$argon2id$v=19$m=4294967295,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$0Ybqp5sWybwCRW2dOGTHbxRJzKOFdXPSv8aQH9RYYD4";
        assert!(verify(b"password", huge).is_err());
    }

    #[test]
    fn hashes_verify_both_ways_with_the_argon2_crate() {
        let ours = hash(b"correct horse", 64, 1).unwrap();
        assert!(ours.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{ours}");
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        assert!(verify(b"correct horse", &ours).unwrap());
        assert!(!verify(b"wrong horse", &ours).unwrap());

        let params = Params::new(64, 2, 1, None).unwrap();
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"pw", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(verify(b"pw", &theirs).unwrap());
        assert!(!verify(b"pW", &theirs).unwrap());
        // A fixed vector from outside this code (import.rs's test hash).
        let known = "$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$0Ybqp5sWybwCRW2dOGTHbxRJzKOFdXPSv8aQH9RYYD4";
        assert_eq!(
            verify(b"password", known).unwrap(),
            Argon2::default()
                .verify_password(b"password", &PasswordHash::new(known).unwrap())
                .is_ok()
        );
    }

    #[test]
    fn a_reused_buffer_gives_the_same_hashes_and_is_wiped() {
        let stored = hash(b"pw", 64, 1).unwrap();
        for _ in 0..3 {
            assert!(verify(b"pw", &stored).unwrap());
            assert!(!verify(b"px", &stored).unwrap());
        }
        BLOCKS.with(|b| {
            let blocks = b.borrow();
            assert!(blocks.len() >= 64);
            assert!(blocks
                .iter()
                .all(|blk| blk.as_ref().iter().all(|&w| w == 0)));
        });
    }

    #[test]
    fn unusable_strings_are_errors_not_panics() {
        for bad in [
            "",
            "plain",
            "$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHQ",
            "$scrypt$ln=4,r=8,p=1$c29tZXNhbHQ$aGFzaA",
        ] {
            assert!(verify(b"pw", bad).is_err(), "{bad}");
        }
    }
}
