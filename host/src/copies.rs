//! `gestor copies`: on how many distinct gestores is every record held?
//!
//! Walks the ring from one gestor along successor lists until it has seen
//! every member, asks each for its inventory (`replica.inventory`: every
//! record it holds, with its version), and counts, per record, the gestores
//! holding its newest version.

use crate::client::Client;
use crate::json::cbor_to_json;
use anyhow::{Context, Result};
use gestor_sdk::{Timestamp, Value};
use gestor_secure::SecureLayer;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

#[derive(Debug, Deserialize)]
struct Held {
    username: String,
    version: Timestamp,
    deleted: bool,
}

#[derive(Debug, Serialize)]
pub struct CopyReport {
    pub gestores: Vec<String>,
    /// Holders wanted per record: the owner plus the configured copies, capped by ring size.
    pub wanted: usize,
    pub records: usize,
    /// How many records are held (newest version) on exactly N gestores.
    pub histogram: BTreeMap<usize, usize>,
    /// Records held on fewer than `wanted` gestores, with their count.
    pub under: BTreeMap<String, usize>,
    /// Gestores that did not answer.
    pub unreachable: Vec<String>,
}

/// Every ring member reachable from `start`, following successor lists.
pub fn ring_members(secure: &SecureLayer, start: &str) -> Result<(Vec<String>, Vec<String>)> {
    let mut seen = BTreeSet::new();
    let mut unreachable = Vec::new();
    let mut queue = VecDeque::from([start.to_string()]);
    while let Some(url) = queue.pop_front() {
        if !seen.insert(url.clone()) {
            continue;
        }
        let mut c = Client::new(secure.clone(), vec![url.clone()], Duration::from_secs(3));
        match c.call("node.status", Value::Null) {
            Ok(status) => {
                let json = cbor_to_json(&status);
                let succ = json
                    .pointer("/sections/ring/successors")
                    .and_then(|v| v.as_array())
                    .cloned()
                    .unwrap_or_default();
                for p in succ {
                    if let Some(addr) = p.get("addr").and_then(|a| a.as_str()) {
                        queue.push_back(addr.to_string());
                    }
                }
            }
            Err(_) => unreachable.push(url),
        }
    }
    let members = seen
        .into_iter()
        .filter(|u| !unreachable.contains(u))
        .collect();
    Ok((members, unreachable))
}

/// `secure` must hold a gestor credential: inventories are internal.
pub fn run(secure: &SecureLayer, start: &str, copies: usize) -> Result<CopyReport> {
    let (members, unreachable) = ring_members(secure, start)?;
    let mut newest: BTreeMap<String, (Timestamp, bool)> = BTreeMap::new();
    let mut held: Vec<(String, Vec<Held>)> = Vec::new();
    for url in &members {
        let mut c = Client::new(secure.clone(), vec![url.clone()], Duration::from_secs(10));
        let inv = c
            .call("replica.inventory", Value::Null)
            .with_context(|| format!("inventory of {url}"))?;
        let list: Vec<Held> = inv
            .deserialized()
            .with_context(|| format!("inventory of {url} unreadable"))?;
        for h in &list {
            let e = newest
                .entry(h.username.clone())
                .or_insert((h.version, h.deleted));
            if h.version > e.0 {
                *e = (h.version, h.deleted);
            }
        }
        held.push((url.clone(), list));
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (_, list) in &held {
        for h in list {
            if newest.get(&h.username).map(|n| n.0) == Some(h.version) {
                *counts.entry(h.username.clone()).or_default() += 1;
            }
        }
    }
    // Deleted users are tombstones: their copies are not counted.
    counts.retain(|u, _| newest.get(u).map(|n| !n.1).unwrap_or(false));
    let wanted = (copies + 1).min(members.len());
    let mut histogram = BTreeMap::new();
    let mut under = BTreeMap::new();
    for (u, n) in &counts {
        *histogram.entry(*n).or_default() += 1;
        if *n < wanted {
            under.insert(u.clone(), *n);
        }
    }
    Ok(CopyReport {
        gestores: members,
        wanted,
        records: counts.len(),
        histogram,
        under,
        unreachable,
    })
}
