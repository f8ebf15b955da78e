//! `gestor demo`: a local ring of real `gestor node` processes, users
//! registered and looked up through it, a readable summary, a clean stop.

use crate::client::Client;
use crate::config::{StorageKind, TransportKind};
use crate::json::cbor_to_json;
use crate::runtime::build_transport;
use crate::security::{cluster_admit, cluster_init, Trust};
use crate::{out, outln};
use anyhow::{bail, Context, Result};
use gestor_api::node;
use gestor_chord::{check_invariants, View};
use gestor_sdk::wire::to_value;
use gestor_sdk::Empty;
use gestor_secure::{ClusterPub, CredentialFile, SecureConfig, SecureLayer};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct DemoOptions {
    pub nodes: usize,
    pub transport: TransportKind,
    pub storage: StorageKind,
    pub keep_data: bool,
}

struct DemoNode {
    url: String,
    child: Child,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn status(client: &mut Client) -> Result<serde_json::Value> {
    Ok(cbor_to_json(&to_value(
        &client.request::<node::Status>(&Empty)?,
    )))
}

/// Views of every node's ring state, for the invariant checker.
pub fn view_of(status: &serde_json::Value) -> Option<View> {
    let ring = status.get("sections")?.get("ring")?;
    if !ring.get("joined")?.as_bool()? {
        return None;
    }
    let id = ring.get("id")?.as_u64()?;
    let predecessor = ring
        .get("predecessor")
        .and_then(|p| p.get("id"))
        .and_then(|v| v.as_u64());
    let successors = ring
        .get("successors")?
        .as_array()?
        .iter()
        .filter_map(|p| p.get("id")?.as_u64())
        .collect();
    Some(View {
        id,
        predecessor,
        successors,
    })
}

fn spawn_node(
    exe: &Path,
    dir: &Path,
    i: usize,
    join: Option<&str>,
    o: &DemoOptions,
) -> Result<DemoNode> {
    let url = format!("tcp://127.0.0.1:{}", free_port()?);
    let signal = format!("tcp://127.0.0.1:{}", free_port()?);
    let data = dir.join(format!("node{i}"));
    let credential = dir.join(format!("node{i}.cred"));
    cluster_admit(&dir.join("cluster"), &credential, &format!("node{i}"))?;
    let log = std::fs::File::create(dir.join(format!("node{i}.log")))?;
    let mut cmd = Command::new(exe);
    cmd.args(["node", "--listen", &url, "--signal", &signal])
        .args([
            "--transport",
            &o.transport.to_string(),
            "--storage",
            &o.storage.to_string(),
        ])
        .arg("--data-dir")
        .arg(&data)
        .arg("--credential")
        .arg(&credential)
        .arg("--cluster-pub")
        .arg(dir.join("cluster").join("cluster.pub"))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(j) = join {
        cmd.args(["--join", j]);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    Ok(DemoNode { url, child })
}

fn stop_all(nodes: &mut [DemoNode]) {
    for n in nodes.iter() {
        unsafe {
            libc::kill(n.child.id() as i32, libc::SIGTERM);
        }
    }
    let until = Instant::now() + Duration::from_secs(10);
    for n in nodes.iter_mut() {
        loop {
            match n.child.try_wait() {
                Ok(Some(_)) => break,
                _ if Instant::now() > until => {
                    let _ = n.child.kill();
                    let _ = n.child.wait();
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

pub fn run(o: DemoOptions) -> Result<()> {
    if o.nodes < 2 {
        bail!("the demo needs at least 2 gestores");
    }
    let exe = std::env::current_exe().context("cannot locate the gestor executable")?;
    let dir: PathBuf = std::env::temp_dir().join(format!("gestor-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut nodes: Vec<DemoNode> = Vec::new();
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
    .and_then(|()| demo_body(&exe, &dir, &o, &mut nodes));
    let stopping = if nodes.is_empty() {
        Ok(())
    } else {
        outln!(
            "stopping {} gestores (SIGTERM: each leaves the ring and flushes its store)",
            nodes.len()
        )
    };
    stop_all(&mut nodes);
    if !o.keep_data {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result?;
    stopping?;
    outln!("demo finished: all gestores stopped cleanly")?;
    Ok(())
}

fn demo_body(exe: &Path, dir: &Path, o: &DemoOptions, nodes: &mut Vec<DemoNode>) -> Result<()> {
    // The operator's flow (docs/DEPLOY in README): one cluster key, one
    // credential per gestor, clients trusting the cluster's public key.
    let (_, pub_path) = cluster_init(&dir.join("cluster"))?;
    let cluster = ClusterPub::load(&pub_path)?;
    outln!(
        "  secure ring: cluster key {}…; every gestor gets its own credential; clients trust cluster.pub",
        cluster.fingerprint()
    )?;
    let secure = Trust::Cluster(cluster).layer(o.transport);
    let client_for = |url: &str| {
        Client::new(
            secure.clone(),
            vec![url.to_string()],
            Duration::from_secs(5),
        )
    };
    for i in 0..o.nodes {
        let join = nodes.first().map(|n| n.url.clone());
        let node = spawn_node(exe, dir, i, join.as_deref(), o)?;
        let url = node.url.clone();
        // Held before anything can fail, so that it is stopped whatever happens.
        nodes.push(node);
        outln!(
            "  [{}/{}] started gestor at {url}{}",
            i + 1,
            o.nodes,
            join.map(|j| format!(" (joining via {j})"))
                .unwrap_or_default()
        )?;
    }

    out!("waiting for the ring to stabilize")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let statuses = loop {
        let mut all = Vec::new();
        for n in nodes.iter() {
            if let Ok(s) = status(&mut client_for(&n.url)) {
                all.push(s);
            }
        }
        let views: Vec<View> = all.iter().filter_map(view_of).collect();
        let full = views.len() == nodes.len()
            && views
                .iter()
                .all(|v| v.successors.len() >= (nodes.len() - 1).min(8));
        if full && check_invariants(&views).is_ok() {
            outln!(" ok")?;
            break all;
        }
        if Instant::now() > deadline {
            outln!()?;
            bail!(
                "the ring did not stabilize within 60 s; see the logs in {}",
                dir.display()
            );
        }
        out!(".")?;
        std::thread::sleep(Duration::from_millis(300));
    };

    let users = [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
    ];
    outln!(
        "registering and logging in {} users through different gestores",
        users.len()
    )?;
    for (i, user) in users.iter().enumerate() {
        let entry = &nodes[i % nodes.len()].url;
        let mut c = client_for(entry);
        match c.register(user, "demo-password") {
            Ok(_) => {}
            Err(crate::client::ClientError::Remote(e))
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
    for (i, user) in users.iter().enumerate() {
        let entry = &nodes[(i + 2) % nodes.len()].url;
        let found = client_for(entry)
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
        total_hops as f64 / users.len() as f64
    )?;

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
        rows.push(status(&mut client_for(&n.url)).unwrap_or_else(|_| statuses[0].clone()));
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
    let views: Vec<View> = rows.iter().filter_map(view_of).collect();
    match check_invariants(&views) {
        Ok(()) => outln!("  ring invariants (one ordered ring, ordered successor lists): hold")?,
        Err(v) => bail!("ring invariants violated: {v:?}"),
    }

    // Copies: every record on its owner and the owner's successors.
    let wanted = 4.min(nodes.len());
    // Inventories are gestor-internal: the count runs with an operator credential.
    let operator_cred = dir.join("operator.cred");
    cluster_admit(&dir.join("cluster"), &operator_cred, "operator")?;
    let operator = SecureLayer::new(
        build_transport(o.transport),
        SecureConfig::gestor(CredentialFile::load(&operator_cred)?, cluster),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let r = crate::copies::run(&operator, &nodes[0].url, 3)?;
        if (r.under.is_empty() && r.records == users.len()) || Instant::now() > deadline {
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
