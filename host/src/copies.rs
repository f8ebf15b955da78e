//! `gestor copies`: on how many distinct gestores is every record held?
//!
//! Walks the ring from one gestor along successor lists until it has seen
//! every member, asks each for its inventory (`replica.inventory`: every
//! record it holds, with its version), and counts, per record, the gestores
//! holding its newest version.

use anyhow::{Context, Result};
use gestor_api::replica::{self, Held};
use gestor_api::{node, status};
use gestor_client::client::Client;
use gestor_sdk::{Empty, Timestamp};
use gestor_secure::SecureLayer;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

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
        match c.request::<node::Status>(&Empty) {
            Ok(status) => {
                let succ = status
                    .section::<status::Ring>()
                    .map(|r| r.successors)
                    .unwrap_or_default();
                for p in succ {
                    queue.push_back(p.addr);
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
        let list: Vec<Held> = c
            .request::<replica::Inventory>(&Empty)
            .with_context(|| format!("inventory of {url}"))?;
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
