//! The operator's HTTP endpoint of a gestor (`http.listen`, `--http`):
//!
//! | path | answer |
//! | --- | --- |
//! | `/metrics` | Prometheus text format ([`crate::metrics`]) |
//! | `/health` | 200 `ok` while the process is up |
//! | `/ready` | 200 `ready` once joined to the ring with its range (every range, with virtual nodes) merged with its successor; else 503 and a one-line reason |
//! | `/ring.json` | what this gestor can learn of the ring: its own status and every member's, reached along successor lists |
//! | `/` | a self-contained page drawing `/ring.json` as a ring, refreshed every 2 s |
//!
//! The server itself is [`crate::http`] (bounded threads, queue, sizes and
//! times). `/ring.json` asks other gestores for `node.status` over the ring's
//! own secure requests; it is built at most once a second, whatever the
//! number of HTTP clients, from at most [`PICTURE_MEMBERS`] members and
//! within [`PICTURE_DEADLINE`].

use crate::http::{self, Request, Response};
use crate::metrics::Metrics;
use crate::runtime::HostCore;
use gestor_api::node::NodeStatus;
use gestor_api::status;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Members `/ring.json` asks at most (the rest of a larger ring is left out).
pub const PICTURE_MEMBERS: usize = 64;
/// Time `/ring.json` spends asking members at most.
pub const PICTURE_DEADLINE: Duration = Duration::from_secs(3);
/// Deadline of one member's `node.status`.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_millis(1000);
/// A picture this recent is served again instead of asking the ring.
const PICTURE_FRESH: Duration = Duration::from_secs(1);

const DASHBOARD: &str = include_str!("dashboard.html");
/// Inline script and style only; nothing is fetched from anywhere else.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Why a gestor is not ready (`Err`), from what its `node.status` says; the
/// same rule `replica.ready` applies to each key, over its whole range —
/// over every range when the replica reports its virtual nodes' ranges.
pub fn readiness(s: &NodeStatus) -> Result<(), String> {
    let Some(ring) = s.section::<status::Ring>() else {
        return Err(if s.sections.contains_key("ring") {
            "ring status unreadable".into()
        } else {
            "no ring plugin loaded: not part of a ring".into()
        });
    };
    if !ring.joined {
        return Err("not joined to a ring yet".into());
    }
    let Some(replica) = s.section::<status::Replica>() else {
        if s.sections.contains_key("replica") {
            return Err("replica status unreadable".into());
        }
        // Without the replica plugin nothing waits for a merge.
        return Ok(());
    };
    // Virtual nodes: the replica counts its merged ranges against the
    // ring now, every one of them.
    if replica.ranges > 0 {
        return if replica.ranges_ready == replica.ranges {
            Ok(())
        } else {
            Err(format!(
                "{} of {} ranges merged with their successors so far",
                replica.ranges_ready, replica.ranges
            ))
        };
    }
    let me = ring.id;
    let alone = ring.successors.iter().all(|p| p.id == me);
    let Some((start, end)) = replica.ready_range.as_ref().and_then(|(a, b)| {
        Some((
            u64::from_str_radix(a, 16).ok()?,
            u64::from_str_radix(b, 16).ok()?,
        ))
    }) else {
        return Err("range not merged with its successor yet".into());
    };
    if start == end {
        return if alone {
            Ok(())
        } else {
            Err("range not merged with its successor yet (it was alone; others have joined)".into())
        };
    }
    let Some(pred) = ring.predecessor.as_ref().map(|p| p.id) else {
        return Err("no predecessor yet: its range is not known".into());
    };
    // (pred, me] must lie inside the merged (start, end].
    if end == me && (pred == start || in_open_interval(pred, start, end)) {
        Ok(())
    } else {
        Err(format!(
            "range ({pred:016x}, {me:016x}] not merged with its successor yet (merged: ({start:016x}, {end:016x}])"
        ))
    }
}

/// `x` in the ring interval `(a, b)`.
fn in_open_interval(x: u64, a: u64, b: u64) -> bool {
    if a < b {
        a < x && x < b
    } else {
        x > a || x < b
    }
}

/// What the HTTP endpoint serves, for one node.
pub struct Ops {
    core: Arc<HostCore>,
    picture: Mutex<Option<(Instant, Arc<String>)>>,
}

impl Ops {
    pub fn new(core: Arc<HostCore>) -> Ops {
        Ops {
            core,
            picture: Mutex::new(None),
        }
    }

    fn metrics(&self) -> &Metrics {
        self.core.metrics()
    }

    /// The answer to one request.
    pub fn route(&self, req: &Request) -> Response {
        match req.path.as_str() {
            "/health" => Response::text(200, "ok"),
            "/ready" => match self.ready() {
                Ok(()) => Response::text(200, "ready"),
                Err(why) => Response::text(503, format!("not ready: {why}")),
            },
            "/metrics" => {
                let status = self.core.status();
                let ready = self.ready_from(&status);
                Response::new(
                    200,
                    crate::metrics::CONTENT_TYPE,
                    self.metrics().encode(&status, &ready),
                )
            }
            "/ring.json" => Response::new(
                200,
                "application/json",
                self.picture_json().as_bytes().to_vec(),
            ),
            "/" | "/index.html" => Response::new(200, "text/html; charset=utf-8", DASHBOARD)
                .with_header("Content-Security-Policy", DASHBOARD_CSP)
                .with_header("X-Frame-Options", "DENY"),
            _ => Response::text(
                404,
                "not found: try /, /metrics, /health, /ready, /ring.json",
            ),
        }
    }

    /// This node's readiness, `shutting down` included.
    pub fn ready(&self) -> Result<(), String> {
        self.ready_from(&self.core.status())
    }

    fn ready_from(&self, status: &NodeStatus) -> Result<(), String> {
        if self.core.is_stopping() {
            return Err("shutting down".into());
        }
        readiness(status)
    }

    /// `/ring.json`, rebuilt at most once per [`PICTURE_FRESH`]; concurrent
    /// requests wait for the one building it.
    fn picture_json(&self) -> Arc<String> {
        let mut cached = self.picture.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, json)) = cached.as_ref() {
            if at.elapsed() < PICTURE_FRESH {
                return json.clone();
            }
        }
        let picture = gather(&self.core);
        let json = Arc::new(
            serde_json::to_string(&picture)
                .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string())),
        );
        *cached = Some((Instant::now(), json.clone()));
        json
    }
}

/// The path label of a request, from a fixed set.
pub fn path_label(req: Option<&Request>) -> &'static str {
    match req.map(|r| r.path.as_str()) {
        Some("/") | Some("/index.html") => "/",
        Some("/metrics") => "/metrics",
        Some("/health") => "/health",
        Some("/ready") => "/ready",
        Some("/ring.json") => "/ring.json",
        Some(_) => "other",
        None => "none",
    }
}

impl http::Observer for Ops {
    fn refused(&self) {
        self.metrics().http_refused();
    }
    fn answered(&self, request: Option<&Request>, status: u16) {
        self.metrics().http_request(path_label(request), status);
    }
}

/// `/ring.json`.
#[derive(Debug, Serialize)]
pub struct RingPicture {
    /// The gestor that drew it.
    pub me: String,
    pub generated_ms: u64,
    /// Members in ring order (by id), the unreachable ones included when
    /// some member lists them.
    pub members: Vec<Member>,
    /// True when [`PICTURE_MEMBERS`] or [`PICTURE_DEADLINE`] cut the walk short.
    pub truncated: bool,
}

/// One gestor as `/ring.json` shows it.
#[derive(Debug, Serialize)]
pub struct Member {
    /// Ring id, 16 hex digits.
    pub id: String,
    /// Ring position as a fraction of the circle, in [0, 1).
    pub position: f64,
    /// Fraction of the key space this member is responsible for: from the
    /// previous answering member to itself (0 when not answering).
    pub share: f64,
    pub address: String,
    pub is_self: bool,
    /// `ok`, `degraded` (copies under target), `not_ready`, `joining`, or `down`.
    pub health: &'static str,
    pub reachable: bool,
    /// Why it is not ready / did not answer.
    pub reason: Option<String>,
    pub joined: bool,
    pub ready: bool,
    pub records: Option<u64>,
    pub mailbox_items: Option<u64>,
    pub alive_users: Option<u64>,
    pub predecessor: Option<String>,
    /// Successor list, addresses in order.
    pub successors: Vec<String>,
    pub copies: Option<Copies>,
    pub uptime_ms: Option<u64>,
}

/// A member's copy health: what its replica plugin saw in its last round.
#[derive(Debug, Serialize)]
pub struct Copies {
    /// Holders wanted per record of its range, the owner included.
    pub wanted: u64,
    /// Copy holders that confirmed the last round (owner excluded).
    pub confirmed: u64,
    /// Live records of its range held by fewer gestores than wanted.
    pub under_target: u64,
    /// Live records of its range.
    pub primary_records: u64,
}

/// Walk the ring from this gestor along successor lists (and predecessors)
/// asking each member's `node.status`, within the bounds above.
fn gather(core: &HostCore) -> RingPicture {
    let started = Instant::now();
    let me = core.status();
    let me_addr = me.address.clone();
    let mut ids: HashMap<String, u64> = HashMap::from([(me_addr.clone(), me.id)]);
    let mut found: BTreeMap<String, Result<NodeStatus, String>> = BTreeMap::new();
    let mut queue: VecDeque<String> = VecDeque::new();
    let enqueue = |s: &NodeStatus, ids: &mut HashMap<String, u64>, q: &mut VecDeque<String>| {
        if let Some(ring) = s.section::<status::Ring>() {
            for p in ring.successors.iter().chain(ring.predecessor.iter()) {
                ids.entry(p.addr.clone()).or_insert(p.id);
                q.push_back(p.addr.clone());
            }
        }
    };
    enqueue(&me, &mut ids, &mut queue);
    found.insert(me_addr.clone(), Ok(me));
    let mut truncated = false;
    while let Some(url) = queue.pop_front() {
        if found.contains_key(&url) {
            continue;
        }
        let left = PICTURE_DEADLINE.saturating_sub(started.elapsed());
        if found.len() >= PICTURE_MEMBERS || left.is_zero() {
            truncated = true;
            break;
        }
        let answer = core
            .peer_status(&url, left.min(PEER_STATUS_TIMEOUT))
            .map_err(|e| e.to_string());
        if let Ok(s) = &answer {
            ids.insert(url.clone(), s.id);
            enqueue(s, &mut ids, &mut queue);
        }
        found.insert(url, answer);
    }
    picture(&me_addr, found, &ids, truncated)
}

fn picture(
    me: &str,
    found: BTreeMap<String, Result<NodeStatus, String>>,
    ids: &HashMap<String, u64>,
    truncated: bool,
) -> RingPicture {
    const CIRCLE: f64 = 18_446_744_073_709_551_616.0; // 2^64
    let mut members: Vec<Member> = found
        .into_iter()
        .filter_map(|(addr, answer)| {
            let id = *ids.get(&addr)?;
            Some(member(&addr, id, addr == me, answer))
        })
        .collect();
    members.sort_by_key(|m| u64::from_str_radix(&m.id, 16).unwrap_or(0));
    // Shares among the members that answer and have joined.
    let live: Vec<u64> = members
        .iter()
        .filter(|m| m.reachable && m.joined)
        .filter_map(|m| u64::from_str_radix(&m.id, 16).ok())
        .collect();
    for m in &mut members {
        let Ok(id) = u64::from_str_radix(&m.id, 16) else {
            continue;
        };
        m.position = id as f64 / CIRCLE;
        if !(m.reachable && m.joined) {
            continue;
        }
        let Some(i) = live.iter().position(|x| *x == id) else {
            continue;
        };
        let prev = live[(i + live.len() - 1) % live.len()];
        let width = id.wrapping_sub(prev);
        m.share = if width == 0 {
            1.0
        } else {
            width as f64 / CIRCLE
        };
    }
    RingPicture {
        me: me.to_string(),
        generated_ms: gestor_sdk::hlc::system_ms(),
        members,
        truncated,
    }
}

fn member(addr: &str, id: u64, is_self: bool, answer: Result<NodeStatus, String>) -> Member {
    let mut m = Member {
        id: format!("{id:016x}"),
        position: 0.0,
        share: 0.0,
        address: addr.to_string(),
        is_self,
        health: "down",
        reachable: false,
        reason: None,
        joined: false,
        ready: false,
        records: None,
        mailbox_items: None,
        alive_users: None,
        predecessor: None,
        successors: Vec::new(),
        copies: None,
        uptime_ms: None,
    };
    let s = match answer {
        Ok(s) => s,
        Err(e) => {
            m.reason = Some(e);
            return m;
        }
    };
    m.reachable = true;
    m.uptime_ms = Some(s.uptime_ms);
    m.records = s.records.as_integer().and_then(|n| u64::try_from(n).ok());
    m.mailbox_items = s.section::<status::Mailbox>().map(|x| x.held);
    m.alive_users = s.section::<status::Directory>().map(|x| x.alive_users);
    if let Some(ring) = s.section::<status::Ring>() {
        m.joined = ring.joined;
        m.predecessor = ring.predecessor.map(|p| p.addr);
        m.successors = ring.successors.into_iter().map(|p| p.addr).collect();
    }
    m.copies = s.section::<status::Replica>().map(|r| Copies {
        wanted: r.stats.wanted_holders,
        confirmed: r.stats.confirmed_holders.len() as u64,
        under_target: r.stats.under_replicated,
        primary_records: r.stats.primary_records,
    });
    let ready = readiness(&s);
    m.ready = ready.is_ok();
    m.health = if !m.joined {
        "joining"
    } else if ready.is_err() {
        "not_ready"
    } else if m
        .copies
        .as_ref()
        .is_some_and(|c| c.under_target > 0 || c.confirmed + 1 < c.wanted)
    {
        "degraded"
    } else {
        "ok"
    };
    m.reason = ready.err();
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use gestor_api::node::SecurityStatus;
    use gestor_api::ring::PeerRef;
    use gestor_api::status::{ReplicaStats, ReplicaStatus, RingStatus};
    use gestor_sdk::wire::to_value;
    use gestor_sdk::Value;

    fn peer(id: u64) -> PeerRef {
        PeerRef {
            id,
            addr: format!("tcp://127.0.0.1:{}", 7000 + id % 1000),
        }
    }

    fn status_of(
        me: u64,
        joined: bool,
        pred: Option<u64>,
        succ: &[u64],
        ready: Option<(u64, u64)>,
    ) -> NodeStatus {
        let ring = RingStatus {
            joined,
            id: me,
            predecessor: pred.map(peer),
            successors: succ.iter().copied().map(peer).collect(),
            fingers: Vec::new(),
            lookups: 0,
            lookup_hops: 0,
            virtual_nodes: Vec::new(),
            leave_splices: 0,
            timeouts_alive: 0,
            gestors_dropped: 0,
        };
        let replica = ReplicaStatus {
            copies: 3,
            ready_range: ready.map(|(a, b)| (format!("{a:016x}"), format!("{b:016x}"))),
            ranges: 0,
            ranges_ready: 0,
            stats: ReplicaStats::default(),
        };
        NodeStatus {
            id: me,
            id_hex: format!("{me:016x}"),
            address: peer(me).addr,
            signal: String::new(),
            transport: "nng".into(),
            storage: "sqlite".into(),
            plugins: Vec::new(),
            records: Value::Integer(0.into()),
            initial_gestors: Vec::new(),
            uptime_ms: 0,
            malformed_signals: 0,
            security: SecurityStatus::default(),
            sections: BTreeMap::from([
                ("ring".to_string(), to_value(&ring)),
                ("replica".to_string(), to_value(&replica)),
            ]),
        }
    }

    #[test]
    fn ready_only_when_joined_and_the_whole_range_is_merged() {
        // Not joined.
        let e = readiness(&status_of(50, false, None, &[], None)).unwrap_err();
        assert!(e.contains("not joined"), "{e}");
        // Joined, nothing merged yet.
        assert!(readiness(&status_of(50, true, Some(10), &[90], None)).is_err());
        // Merged exactly its range.
        assert!(readiness(&status_of(50, true, Some(10), &[90], Some((10, 50)))).is_ok());
        // A node joined between 10 and 50: the range shrank, still covered.
        assert!(readiness(&status_of(50, true, Some(30), &[90], Some((10, 50)))).is_ok());
        // Its predecessor died: the range grew beyond what was merged.
        let e = readiness(&status_of(50, true, Some(5), &[90], Some((10, 50)))).unwrap_err();
        assert!(e.contains("not merged"), "{e}");
        // Wrapping ranges.
        assert!(readiness(&status_of(5, true, Some(95), &[50], Some((90, 5)))).is_ok());
        assert!(readiness(&status_of(5, true, Some(80), &[50], Some((90, 5)))).is_err());
        // Alone: the whole ring, ready; once others are back it must merge again.
        assert!(readiness(&status_of(50, true, None, &[50], Some((50, 50)))).is_ok());
        assert!(readiness(&status_of(50, true, Some(10), &[90], Some((50, 50)))).is_err());
        // No ring plugin.
        let mut s = status_of(50, true, None, &[50], None);
        s.sections.clear();
        assert!(readiness(&s).unwrap_err().contains("no ring plugin"));
        // No replica plugin: joined is enough.
        let mut s = status_of(50, true, Some(10), &[90], None);
        s.sections.remove("replica");
        assert!(readiness(&s).is_ok());
    }

    #[test]
    fn with_virtual_nodes_every_range_must_be_merged() {
        let with = |joined: bool, ranges: u32, ready: u32| {
            let mut s = status_of(50, joined, Some(10), &[90], None);
            let mut replica: ReplicaStatus = s.section::<status::Replica>().unwrap();
            replica.ranges = ranges;
            replica.ranges_ready = ready;
            s.sections.insert("replica".into(), to_value(&replica));
            readiness(&s)
        };
        assert!(with(true, 4, 4).is_ok());
        let e = with(true, 4, 3).unwrap_err();
        assert!(e.contains("3 of 4"), "{e}");
        assert!(with(false, 4, 4).unwrap_err().contains("not joined"));
        // No ranges reported (an older replica plugin): the first rule, by
        // `ready_range`, which is not merged here.
        assert!(with(true, 0, 0).is_err());
        // An older status without the fields reads as `ranges: 0`.
        let old = serde_json::json!({"copies": 3, "ready_range": null, "stats": {
            "rounds": 0, "primary_records": 0, "under_replicated": 0, "wanted_holders": 0,
            "confirmed_holders": [], "purged": 0, "last_round_ms": 0}});
        let old: ReplicaStatus = serde_json::from_value(old).unwrap();
        assert_eq!((old.ranges, old.ranges_ready), (0, 0));
    }

    #[test]
    fn shares_cover_the_circle_among_live_members() {
        let a = status_of(
            1 << 62,
            true,
            Some(3 << 62),
            &[2 << 62],
            Some((3 << 62, 1 << 62)),
        );
        let b = status_of(
            2 << 62,
            true,
            Some(1 << 62),
            &[3 << 62],
            Some((1 << 62, 2 << 62)),
        );
        let c = status_of(
            3 << 62,
            true,
            Some(2 << 62),
            &[1 << 62],
            Some((2 << 62, 3 << 62)),
        );
        let mut ids = HashMap::new();
        let mut found = BTreeMap::new();
        for s in [a, b, c] {
            ids.insert(s.address.clone(), s.id);
            found.insert(s.address.clone(), Ok(s));
        }
        let down = peer(7);
        ids.insert(down.addr.clone(), down.id);
        found.insert(down.addr.clone(), Err("timeout".into()));
        let me = peer(1 << 62).addr;
        let p = picture(&me, found, &ids, false);
        assert_eq!(p.members.len(), 4);
        let total: f64 = p.members.iter().map(|m| m.share).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        let shares: Vec<f64> = p.members.iter().map(|m| m.share).collect();
        assert_eq!(shares, [0.0, 0.5, 0.25, 0.25]);
        assert_eq!(p.members[0].health, "down");
        assert_eq!(p.members[1].position, 0.25);
        assert!(p.members[1].is_self);
        assert!(p
            .members
            .iter()
            .skip(1)
            .all(|m| m.health == "ok" && m.ready));
    }
}
