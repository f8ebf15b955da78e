//! `gestor import FILE`: accounts from another directory, for operators
//! migrating to gestor.
//!
//! FILE holds one JSON object per line: `{"username": …, "password_hash":
//! "$argon2id$…", "address": "HOST:PORT"}` (`address` optional; blank lines
//! skipped). The whole file is checked first and nothing is sent if any line
//! is malformed, with the line number in the error. Then it goes out in
//! batches of `dir.import` (an internal kind: the client needs an operator
//! credential), which the ring routes and replicates like normal writes.
//! Entries refused for a passing reason (`unavailable`, `busy`, `timeout`,
//! as while the ring moves) are sent again, a few rounds with backoff; names
//! that already have an account are left untouched, so running an import
//! twice is harmless.

use anyhow::{bail, Context, Result};
use gestor_api::dir::{self, ImportBatch, ImportEntry, ImportRefusal, MAX_IMPORT_BATCH};
use gestor_client::client::{Client, ClientError};
use gestor_sdk::ErrorCode;
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

/// Rounds of re-sending entries refused for a passing reason.
const RETRY_ROUNDS: u32 = 6;

#[derive(Debug, Default, Serialize)]
pub struct ImportSummary {
    pub entries: u64,
    pub imported: u64,
    pub existing: u64,
    /// Entries refused for good (bad entries, or still refused after the retries).
    pub refused: Vec<ImportRefusal>,
    pub seconds: f64,
}

/// Parse one line; `None` for a blank one.
fn parse_line(line: &str, number: usize) -> Result<Option<ImportEntry>> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let entry: ImportEntry = serde_json::from_str(line).with_context(|| {
        format!("line {number}: not an import entry ({{\"username\", \"password_hash\", optional \"address\"}})")
    })?;
    if let Err(e) = gestor_api::routing::validate_username(&entry.username) {
        bail!("line {number}: {}", e.message);
    }
    if !entry.password_hash.starts_with("$argon2id$") {
        bail!(
            "line {number}: password_hash of {} is not an argon2id PHC hash ($argon2id$v=19$…)",
            entry.username
        );
    }
    if let Err(why) = gestor_api::routing::check_hash_cost(&entry.password_hash) {
        bail!("line {number}: password_hash of {}: {why}", entry.username);
    }
    Ok(Some(entry))
}

/// Every entry of `path`, checked; the first bad line is an error.
pub fn read_entries(path: &Path) -> Result<Vec<ImportEntry>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut entries = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}", path.display(), i + 1))?;
        if let Some(e) = parse_line(&line, i + 1)? {
            entries.push(e);
        }
    }
    Ok(entries)
}

fn passing(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unavailable | ErrorCode::Busy | ErrorCode::Timeout
    )
}

/// Send `entries` in batches of `batch` through `client` (which must hold
/// an operator credential), re-sending what was refused for a passing reason.
pub fn run(client: &mut Client, entries: Vec<ImportEntry>, batch: usize) -> ImportSummary {
    let started = Instant::now();
    let batch = batch.clamp(1, MAX_IMPORT_BATCH);
    let mut summary = ImportSummary {
        entries: entries.len() as u64,
        ..ImportSummary::default()
    };
    let mut pending = entries;
    for round in 0..=RETRY_ROUNDS {
        let mut again: Vec<ImportEntry> = Vec::new();
        let mut last_refusals: Vec<ImportRefusal> = Vec::new();
        for chunk in pending.chunks(batch) {
            let body = ImportBatch {
                entries: chunk.to_vec(),
            };
            let refused = match client.request::<dir::Import>(&body) {
                Ok(report) => {
                    summary.imported += report.imported;
                    summary.existing += report.existing;
                    report.refused
                }
                // The whole batch failed (e.g. the gestor did not answer).
                Err(e) => {
                    let (code, message) = match &e {
                        ClientError::Remote(r) => (r.code, r.message.clone()),
                        other => (ErrorCode::Unavailable, other.to_string()),
                    };
                    chunk
                        .iter()
                        .map(|c| ImportRefusal {
                            username: c.username.clone(),
                            code,
                            message: message.clone(),
                        })
                        .collect()
                }
            };
            for r in refused {
                if passing(r.code) && round < RETRY_ROUNDS {
                    if let Some(e) = chunk.iter().find(|e| e.username == r.username) {
                        again.push(e.clone());
                    }
                } else {
                    last_refusals.push(r);
                }
            }
        }
        summary.refused.extend(last_refusals);
        if again.is_empty() {
            break;
        }
        tracing::info!(
            entries = again.len(),
            round,
            "re-sending entries refused for a passing reason"
        );
        std::thread::sleep(Duration::from_millis(250 << round.min(4)));
        pending = again;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_checked_with_their_number() {
        let ok = r#"{"username":"ana","password_hash":"$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA","address":"127.0.0.1:9000"}"#;
        let e = parse_line(ok, 1).unwrap().unwrap();
        assert_eq!(
            (e.username.as_str(), e.address.as_deref()),
            ("ana", Some("127.0.0.1:9000"))
        );
        assert!(parse_line("   ", 2).unwrap().is_none());
        for (line, needle) in [
            ("{not json", "line 3"),
            (r#"{"username":"ana"}"#, "line 3"),
            (
                r#"{"username":"Ana!","password_hash":"$argon2id$x"}"#,
                "line 3: username",
            ),
            (r#"{"username":"ana","password_hash":"plain"}"#, "argon2id"),
            (
                r#"{"username":"ana","password_hash":"$argon2id$v=19$m=64,t=100000,p=1$c2FsdHNhbHQ$aGFzaA"}"#,
                "line 3: password_hash of ana: password hash costs",
            ),
        ] {
            let err = format!("{:#}", parse_line(line, 3).unwrap_err());
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    }
}
