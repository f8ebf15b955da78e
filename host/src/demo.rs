//! `gestor demo`: a local ring of real `gestor node` processes, users
//! registered and looked up through it, a readable summary, a clean stop.

use crate::config::{StorageKind, TransportKind};
use crate::local_ring::{LocalRing, RingSpec};
use crate::security::cluster_admit;
use crate::{out, outln};
use anyhow::{bail, Context, Result};
use gestor_backends::build_transport;
use gestor_chord::{check_invariants, View};
use gestor_secure::{ClusterPub, CredentialFile, SecureConfig, SecureLayer};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use crate::local_ring::view_of;

pub struct DemoOptions {
    pub nodes: usize,
    pub transport: TransportKind,
    pub storage: StorageKind,
    pub keep_data: bool,
}

pub fn run(o: DemoOptions) -> Result<()> {
    if o.nodes < 2 {
        bail!("the demo needs at least 2 gestores");
    }
    let dir: PathBuf = std::env::temp_dir().join(format!("gestor-demo-{}", std::process::id()));
    // The operator's flow (docs/DEPLOY in README): one cluster key, one
    // credential per gestor, clients trusting the cluster's public key.
    let mut ring = LocalRing::new(
        &dir,
        RingSpec {
            nodes: o.nodes,
            transport: o.transport,
            storage: o.storage,
            insecure: false,
            config: String::new(),
            ids: Vec::new(),
        },
    )?;
    // Whatever ends the body (an error, or a closed output: `gestor demo |
    // head -3`), the gestores are stopped and the directory removed.
    let result = outln!(
        "gestor demo: {} gestores on 127.0.0.1, transport={}, storage={}",
        o.nodes,
        o.transport,
        o.storage
    )
    .and_then(|()| outln!("  data and logs in {}", dir.display()))
    .map_err(anyhow::Error::from)
    .and_then(|()| demo_body(&mut ring, &o));
    let stopping = if ring.nodes.is_empty() {
        Ok(())
    } else {
        outln!(
            "stopping {} gestores (SIGTERM: each leaves the ring and flushes its store)",
            ring.nodes.len()
        )
    };
    ring.stop();
    if !o.keep_data {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result?;
    stopping?;
    outln!("demo finished: all gestores stopped cleanly")?;
    Ok(())
}

/// The demo proper: start the gestores, register and log in users, look
/// them up from elsewhere, show the ring and the copies of every record.
fn demo_body(ring: &mut LocalRing, o: &DemoOptions) -> Result<()> {
    let cluster = ring.cluster.context("the demo ring is secure")?;
    outln!(
        "  secure ring: cluster key {}…; every gestor gets its own credential; clients trust cluster.pub",
        cluster.fingerprint()
    )?;
    let statuses = start_gestores(ring, o.nodes)?;
    let nodes: Vec<String> = ring.urls();
    register_users(ring, &nodes)?;
    show_lookups(ring, &nodes)?;
    show_ring(ring, &nodes, &statuses)?;
    show_copies(ring, o.transport, cluster, &nodes)
}

/// The demo's users, registered and looked up through different gestores.
const USERS: [&str; 8] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
];

/// Start `count` gestores and wait for one stable ring; its statuses.
fn start_gestores(ring: &mut LocalRing, count: usize) -> Result<Vec<serde_json::Value>> {
    for i in 0..count {
        let (url, join) = ring.add_node()?;
        outln!(
            "  [{}/{}] started gestor at {url}{}",
            i + 1,
            count,
            join.map(|j| format!(" (joining via {j})"))
                .unwrap_or_default()
        )?;
    }

    out!("waiting for the ring to stabilize")?;
    let statuses = ring
        .wait_stable(Duration::from_secs(60), || {
            let _ = out!(".");
        })
        .inspect_err(|_| {
            let _ = outln!();
        })?;
    outln!(" ok")?;
    Ok(statuses)
}

fn register_users(ring: &LocalRing, nodes: &[String]) -> Result<()> {
    outln!(
        "registering and logging in {} users through different gestores",
        USERS.len()
    )?;
    for (i, user) in USERS.iter().enumerate() {
        let entry = &nodes[i % nodes.len()];
        let mut c = ring.client_for(entry);
        match c.register(user, "demo-password") {
            Ok(_) => {}
            Err(gestor_client::client::ClientError::Remote(e))
                if e.code == gestor_sdk::ErrorCode::Conflict => {}
            Err(e) => bail!("register {user} via {entry}: {e}"),
        }
        let address = format!("127.0.0.1:{}", 9000 + i);
        let session = c
            .login(user, "demo-password", &address)
            .with_context(|| format!("login {user}"))?;
        outln!(
            "  {user:<6} registered via {entry}, logged in at {address}; responsible gestor {}",
            session.gestor
        )?;
    }

    Ok(())
}

/// Each user looked up through a gestor other than the one it logged in at.
fn show_lookups(ring: &LocalRing, nodes: &[String]) -> Result<()> {
    outln!()?;
    outln!("lookups from other gestores:")?;
    outln!(
        "  {:<6}  {:<22}  {:<22}  {:<16}  {:<6}  hops",
        "user",
        "asked",
        "responsible",
        "address",
        "online"
    )?;
    let mut total_hops = 0;
    for (i, user) in USERS.iter().enumerate() {
        let entry = &nodes[(i + 2) % nodes.len()];
        let found = ring
            .client_for(entry)
            .lookup(user)
            .with_context(|| format!("lookup {user} via {entry}"))?;
        total_hops += found.hops;
        outln!(
            "  {:<6}  {:<22}  {:<22}  {:<16}  {:<6}  {}",
            found.user,
            entry,
            found.gestor,
            found.address,
            found.online,
            found.hops
        )?;
    }
    outln!(
        "  mean hops per lookup: {:.2}",
        total_hops as f64 / USERS.len() as f64
    )?;

    Ok(())
}

/// Every gestor's place in the ring, in id order, and the invariants checked.
fn show_ring(ring: &LocalRing, nodes: &[String], statuses: &[serde_json::Value]) -> Result<()> {
    outln!()?;
    outln!("the ring (in id order):")?;
    outln!(
        "  {:<16}  {:<22}  {:<16}  {:<16}  records",
        "id",
        "address",
        "predecessor",
        "successor"
    )?;
    let mut rows: Vec<serde_json::Value> = Vec::new();
    for n in nodes.iter() {
        rows.push(ring.status(n).unwrap_or_else(|_| statuses[0].clone()));
    }
    rows.sort_by_key(|s| s.get("id").and_then(|v| v.as_u64()).unwrap_or(0));
    let short = |v: Option<&serde_json::Value>| {
        v.and_then(|p| p.get("id"))
            .and_then(|x| x.as_u64())
            .map(|x| format!("{x:016x}"))
            .unwrap_or_else(|| "-".into())
    };
    for s in &rows {
        let ring = s.get("sections").and_then(|x| x.get("ring"));
        outln!(
            "  {:<16}  {:<22}  {:<16}  {:<16}  {}",
            s.get("id_hex").and_then(|v| v.as_str()).unwrap_or("?"),
            s.get("address").and_then(|v| v.as_str()).unwrap_or("?"),
            short(ring.and_then(|r| r.get("predecessor"))),
            short(
                ring.and_then(|r| r.get("successors"))
                    .and_then(|l| l.get(0))
            ),
            s.get("records").map(|v| v.to_string()).unwrap_or_default(),
        )?;
    }
    let views: Vec<View> = rows.iter().flat_map(view_of).collect();
    match check_invariants(&views) {
        Ok(()) => outln!("  ring invariants (one ordered ring, ordered successor lists): hold")?,
        Err(v) => bail!("ring invariants violated: {v:?}"),
    }

    Ok(())
}

/// How many gestores hold each record, counted with an operator credential.
fn show_copies(
    ring: &LocalRing,
    transport: TransportKind,
    cluster: ClusterPub,
    nodes: &[String],
) -> Result<()> {
    // Copies: every record on its owner and the owner's successors.
    let wanted = 4.min(nodes.len());
    // Inventories are gestor-internal: the count runs with an operator credential.
    let operator_cred = ring.dir.join("operator.cred");
    cluster_admit(&ring.dir.join("cluster"), &operator_cred, "operator")?;
    let operator = SecureLayer::new(
        build_transport(transport),
        SecureConfig::gestor(CredentialFile::load(&operator_cred)?, cluster),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let r = crate::copies::run(&operator, &nodes[0], 3)?;
        if (r.under.is_empty() && r.records == USERS.len()) || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let spread: Vec<String> = report
        .histogram
        .iter()
        .map(|(n, c)| format!("{c} on {n}"))
        .collect();
    outln!(
        "  copies: {} records, held on {} gestores each as wanted (owner + 3 successors): {}",
        report.records,
        wanted,
        if report.under.is_empty() {
            "yes"
        } else {
            "not yet"
        }
    )?;
    outln!(
        "  records by number of gestores holding them: {}",
        spread.join(", ")
    )?;
    Ok(())
}
