//! Bulk import of accounts from another directory (`gestor import`).
//!
//! `dir.import` reaches any gestor with up to [`MAX_IMPORT_BATCH`] entries.
//! It sorts them by ring position and finds owners with one `ring.lookup`
//! per owner touched (an owner found for key `k` owns every key from `k` to
//! its own id), then sends each owner its share as `dir.import_owned`. The
//! owner checks each entry as `user.register` would (name, responsibility,
//! an argon2id PHC hash, the address), writes the new accounts with fresh
//! versions and has them copied as one batch (`replica.replicate_batch`,
//! which also flushes the owner's store once, while the copies travel):
//! acknowledged means on the owner and the
//! required copy holders, as for any write. Names that already have a live
//! account are left untouched, so an import can simply be run again.

use crate::{err, rules, Shared};
use argon2::password_hash::PasswordHash;
use gestor_api::dir::MAX_IMPORT_BATCH;
use gestor_api::dir::{self, ImportBatch, ImportEntry, ImportRefusal, ImportReport};
use gestor_api::replica;
use gestor_api::ring::{self, KeyBody};
use gestor_api::routing::{check_hash_cost, validate_username};
use gestor_sdk::hash::ring_position;
use gestor_sdk::{CallError, ErrorCode, HandlerError, PluginContext, UserRecord};
use std::time::Duration;

/// Deadline for one owner's share (a whole batch, written and copied).
const OWNER_TIMEOUT: Duration = Duration::from_secs(30);

fn refusal(username: &str, e: &HandlerError) -> ImportRefusal {
    ImportRefusal {
        username: username.to_string(),
        code: e.code,
        message: e.message.clone(),
    }
}

fn check_size(batch: &ImportBatch) -> Result<(), HandlerError> {
    if batch.entries.len() > MAX_IMPORT_BATCH {
        return Err(HandlerError::bad_request(format!(
            "{} entries in one import request; at most {MAX_IMPORT_BATCH}",
            batch.entries.len()
        )));
    }
    Ok(())
}

/// The checks `user.register` makes, for an entry that brings its hash.
fn validate_entry(entry: &ImportEntry) -> Result<Option<String>, HandlerError> {
    validate_username(&entry.username)?;
    let parsed = PasswordHash::new(&entry.password_hash).map_err(|e| {
        HandlerError::bad_request(format!("password_hash is not a PHC string: {e}"))
    })?;
    if parsed.algorithm.as_str() != "argon2id" || parsed.hash.is_none() {
        return Err(HandlerError::bad_request(
            "password_hash must be an argon2id PHC hash ($argon2id$v=19$m=…,t=…,p=…$salt$hash)",
        ));
    }
    check_hash_cost(&entry.password_hash).map_err(HandlerError::bad_request)?;
    entry
        .address
        .as_deref()
        .map(|a| rules::validate_address(a).map(str::to_string))
        .transpose()
}

impl Shared {
    /// `dir.import` on any gestor: route each entry's share to its owner.
    pub(crate) fn import(&self, batch: ImportBatch) -> Result<ImportReport, HandlerError> {
        check_size(&batch)?;
        let ctx = self.ctx()?;
        let mut report = ImportReport::default();
        let mut entries: Vec<(u64, ImportEntry)> = Vec::new();
        for e in batch.entries {
            match validate_username(&e.username) {
                Ok(()) => entries.push((ring_position(e.username.as_bytes()), e)),
                Err(why) => report.refused.push(refusal(&e.username, &why)),
            }
        }
        entries.sort_by_key(|(pos, _)| *pos);
        let mut shares: Vec<(String, Vec<ImportEntry>)> = Vec::new();
        // (first key looked up, its owner's id): every key from the first
        // to the owner's id, clockwise, has that owner.
        let mut covered: Option<(u64, u64)> = None;
        for (pos, entry) in entries {
            let known = covered
                .filter(|(from, owner)| pos.wrapping_sub(*from) <= owner.wrapping_sub(*from));
            if known.is_none() {
                match ctx.call_local::<ring::Lookup>(&KeyBody { key: pos }) {
                    Ok(owner) => {
                        covered = Some((pos, owner.id));
                        shares.push((owner.addr, Vec::new()));
                    }
                    Err(e) => {
                        report.refused.push(refusal(&entry.username, &e.into()));
                        continue;
                    }
                }
            }
            if let Some((_, share)) = shares.last_mut() {
                share.push(entry);
            }
        }
        for (owner, share) in shares {
            let names: Vec<String> = share.iter().map(|e| e.username.clone()).collect();
            let body = ImportBatch { entries: share };
            match ctx.call::<dir::ImportOwned>(&owner, &body, OWNER_TIMEOUT) {
                Ok(r) => report.merge(r),
                Err(e) => {
                    let e: HandlerError = e.into();
                    tracing::info!(%owner, "import share refused: {}", e.message);
                    report.refused.extend(names.iter().map(|n| refusal(n, &e)));
                }
            }
        }
        Ok(report)
    }

    /// `dir.import_owned` on the owner: write the new accounts, copy them
    /// as one batch, answer once the batch is acknowledged.
    pub(crate) fn import_owned(&self, batch: ImportBatch) -> Result<ImportReport, HandlerError> {
        check_size(&batch)?;
        let ctx = self.ctx()?;
        let mut report = ImportReport::default();
        let mut written: Vec<UserRecord> = Vec::new();
        for entry in batch.entries {
            match self.import_one(&ctx, &entry) {
                Ok(Some(record)) => written.push(record),
                Ok(None) => report.existing += 1,
                Err(e) => report.refused.push(refusal(&entry.username, &e)),
            }
        }
        if written.is_empty() {
            return Ok(report);
        }
        // The replica plugin flushes this store while the copies travel.
        match ctx.call_local::<replica::ReplicateBatch>(&written) {
            Ok(_) => {}
            Err(CallError::Remote(e)) if e.code == ErrorCode::UnknownKind => ctx.store().flush()?,
            Err(e) => {
                // Written here but not acknowledged: report them refused.
                // A retry finds them and counts them as existing, so make
                // them durable here at least; anti-entropy copies them.
                if let Err(flush) = ctx.store().flush() {
                    tracing::warn!("import: flushing unacknowledged accounts failed: {flush}");
                }
                let e: HandlerError = e.into();
                report
                    .refused
                    .extend(written.iter().map(|r| refusal(&r.username, &e)));
                return Ok(report);
            }
        }
        report.imported += written.len() as u64;
        tracing::info!(accounts = written.len(), "imported");
        Ok(report)
    }

    /// Store one entry unless its name has a live account (`None`).
    fn import_one(
        &self,
        ctx: &PluginContext,
        entry: &ImportEntry,
    ) -> Result<Option<UserRecord>, HandlerError> {
        let address = validate_entry(entry)?;
        let ring_pos = self.owner_check(ctx, &entry.username)?;
        let _guard = self.lock_user(&entry.username);
        if let Some(existing) = ctx.store().get(&entry.username)? {
            if !existing.deleted {
                return Ok(None);
            }
            // Re-creating a deleted name must outrank its tombstone.
            ctx.clock()
                .observe(existing.version)
                .map_err(|e| err(ErrorCode::ClockSkew, e.to_string()))?;
        }
        let record = UserRecord {
            username: entry.username.clone(),
            ring_pos,
            address: address.unwrap_or_default(),
            password_hash: entry.password_hash.clone(),
            online: false,
            last_seen_ms: 0,
            version: ctx.clock().now(),
            deleted: false,
            session_hash: String::new(),
        };
        // The rules every copy holder applies (sizes, hash prefix, position).
        gestor_api::routing::validate_record(&record).map_err(HandlerError::bad_request)?;
        match ctx.store().put(&record)? {
            gestor_sdk::PutOutcome::Applied => Ok(Some(record)),
            gestor_sdk::PutOutcome::Stale { current } => Err(err(
                ErrorCode::Conflict,
                format!("a newer version ({current}) is already stored"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, hash: &str, address: Option<&str>) -> ImportEntry {
        ImportEntry {
            username: name.into(),
            password_hash: hash.into(),
            address: address.map(str::to_string),
        }
    }

    const HASH: &str = "$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$0Ybqp5sWybwCRW2dOGTHbxRJzKOFdXPSv8aQH9RYYD4";

    #[test]
    fn entries_are_checked_like_registrations() {
        assert_eq!(validate_entry(&entry("ana", HASH, None)).unwrap(), None);
        assert_eq!(
            validate_entry(&entry("ana", HASH, Some("10.0.0.1:9000"))).unwrap(),
            Some("10.0.0.1:9000".into())
        );
        for (bad, why) in [
            (entry("Ana!", HASH, None), "username"),
            (entry("ana", "plaintext", None), "PHC"),
            (
                entry(
                    "ana",
                    "$argon2i$v=19$m=64,t=1,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNo",
                    None,
                ),
                "argon2id",
            ),
            (entry("ana", HASH, Some("nowhere")), "address"),
            (
                entry(
                    "ana",
                    "$argon2id$v=19$m=4294967295,t=1,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNo",
                    None,
                ),
                "exceed",
            ),
        ] {
            let e = validate_entry(&bad).unwrap_err();
            assert!(
                e.message.contains(why) || e.code == ErrorCode::BadRequest,
                "{why}: {e:?}"
            );
        }
    }

    #[test]
    fn oversized_batches_are_refused() {
        let batch = ImportBatch {
            entries: vec![entry("ana", HASH, None); MAX_IMPORT_BATCH + 1],
        };
        assert_eq!(check_size(&batch).unwrap_err().code, ErrorCode::BadRequest);
    }
}
