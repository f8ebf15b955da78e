//! A ring of real `gestor node` processes on 127.0.0.1, started by this
//! binary for `gestor demo` and `gestor bench --compare-insecure`: secure
//! (a throwaway cluster, one credential per gestor) or `--insecure`.
//! Every process is stopped (SIGTERM, then SIGKILL) when the ring drops.

use crate::config::{StorageKind, TransportKind};
use crate::json::cbor_to_json;
use crate::security::{cluster_admit, cluster_init};
use anyhow::{bail, Context, Result};
use gestor_api::node;
use gestor_chord::{check_invariants, View};
use gestor_client::client::Client;
use gestor_client::trust::Trust;
use gestor_sdk::wire::to_value;
use gestor_sdk::Empty;
use gestor_secure::{ClusterPub, SecureLayer};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to start.
#[derive(Clone, Debug)]
pub struct RingSpec {
    pub nodes: usize,
    pub transport: TransportKind,
    pub storage: StorageKind,
    /// `--insecure` nodes (plaintext, no credentials) instead of a secure ring.
    pub insecure: bool,
    /// TOML every node starts from (`--config`); empty for the defaults.
    pub config: String,
    /// Ring ids of the gestores, in start order (`--id`); beyond its end,
    /// ids come from the URLs.
    pub ids: Vec<u64>,
}

pub struct LocalNode {
    pub url: String,
    child: Child,
}

pub struct LocalRing {
    pub dir: PathBuf,
    pub nodes: Vec<LocalNode>,
    /// What a client of this ring trusts.
    pub trust: Trust,
    /// The cluster's public key (secure rings).
    pub cluster: Option<ClusterPub>,
    /// One client layer for every call, so sessions are reused.
    layer: SecureLayer,
    spec: RingSpec,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Views of a gestor's ring state, one per virtual node, for the
/// invariant checker (none until it has joined).
pub fn view_of(status: &serde_json::Value) -> Vec<View> {
    let Some(ring) = status.get("sections").and_then(|s| s.get("ring")) else {
        return Vec::new();
    };
    if ring.get("joined").and_then(|j| j.as_bool()) != Some(true) {
        return Vec::new();
    }
    let one = |nb: &serde_json::Value, id: Option<u64>| -> Option<View> {
        let id = id.or_else(|| nb.get("me")?.get("id")?.as_u64())?;
        let predecessor = nb
            .get("predecessor")
            .and_then(|p| p.get("id"))
            .and_then(|v| v.as_u64());
        let successors = nb
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
    };
    match ring.get("virtual_nodes").and_then(|v| v.as_array()) {
        Some(all) if !all.is_empty() => all.iter().filter_map(|nb| one(nb, None)).collect(),
        _ => one(ring, ring.get("id").and_then(|v| v.as_u64()))
            .into_iter()
            .collect(),
    }
}

impl LocalRing {
    /// An empty ring in `dir` (a secure one gets its cluster key there);
    /// add gestores with [`add_node`](Self::add_node).
    pub fn new(dir: &Path, spec: RingSpec) -> Result<LocalRing> {
        std::fs::create_dir_all(dir)?;
        let (trust, cluster) = if spec.insecure {
            (Trust::Insecure, None)
        } else {
            let (_, pub_path) = cluster_init(&dir.join("cluster"))?;
            let cluster = ClusterPub::load(&pub_path)?;
            (Trust::Cluster(cluster), Some(cluster))
        };
        if !spec.config.is_empty() {
            std::fs::write(dir.join("gestor.toml"), &spec.config)?;
        }
        Ok(LocalRing {
            dir: dir.to_path_buf(),
            nodes: Vec::new(),
            layer: trust.layer(spec.transport),
            trust,
            cluster,
            spec,
        })
    }

    /// Start `spec.nodes` gestores, the first making the ring and the others
    /// joining through it.
    pub fn start(dir: &Path, spec: RingSpec) -> Result<LocalRing> {
        let mut ring = Self::new(dir, spec)?;
        for _ in 0..ring.spec.nodes {
            ring.add_node()?;
        }
        Ok(ring)
    }

    /// Start one more gestor, joining through the first; returns its URL and
    /// the URL it joined through.
    pub fn add_node(&mut self) -> Result<(String, Option<String>)> {
        let exe = std::env::current_exe().context("cannot locate the gestor executable")?;
        let i = self.nodes.len();
        let join = self.nodes.first().map(|n| n.url.clone());
        let url = format!("tcp://127.0.0.1:{}", free_port()?);
        let signal = format!("tcp://127.0.0.1:{}", free_port()?);
        let log = std::fs::File::create(self.dir.join(format!("node{i}.log")))?;
        let mut cmd = Command::new(&exe);
        cmd.args(["node", "--listen", &url, "--signal", &signal])
            .args([
                "--transport",
                &self.spec.transport.to_string(),
                "--storage",
                &self.spec.storage.to_string(),
            ])
            .arg("--data-dir")
            .arg(self.dir.join(format!("node{i}")));
        if !self.spec.config.is_empty() {
            cmd.arg("--config").arg(self.dir.join("gestor.toml"));
        }
        if self.spec.insecure {
            cmd.arg("--insecure");
        } else {
            let credential = self.dir.join(format!("node{i}.cred"));
            cluster_admit(&self.dir.join("cluster"), &credential, &format!("node{i}"))?;
            cmd.arg("--credential")
                .arg(&credential)
                .arg("--cluster-pub")
                .arg(self.dir.join("cluster").join("cluster.pub"));
        }
        if let Some(id) = self.spec.ids.get(i) {
            cmd.arg("--id").arg(format!("0x{id:016x}"));
        }
        if let Some(j) = &join {
            cmd.args(["--join", j]);
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        self.nodes.push(LocalNode {
            url: url.clone(),
            child,
        });
        Ok((url, join))
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }

    /// A client of this ring that asks `url` first.
    pub fn client_for(&self, url: &str) -> Client {
        Client::new(
            self.layer.clone(),
            vec![url.to_string()],
            Duration::from_secs(5),
        )
    }

    /// `node.status` of the gestor at `url`, as JSON.
    pub fn status(&self, url: &str) -> Result<serde_json::Value> {
        Ok(cbor_to_json(&to_value(
            &self.client_for(url).request::<node::Status>(&Empty)?,
        )))
    }

    /// Wait until every gestor has joined, has a full successor list and
    /// the ring invariants hold; `tick` runs between polls. Returns the
    /// statuses.
    pub fn wait_stable(
        &self,
        deadline: Duration,
        mut tick: impl FnMut(),
    ) -> Result<Vec<serde_json::Value>> {
        let until = Instant::now() + deadline;
        loop {
            let all: Vec<serde_json::Value> = self
                .nodes
                .iter()
                .filter_map(|n| self.status(&n.url).ok())
                .collect();
            let views: Vec<View> = all.iter().flat_map(view_of).collect();
            let joined = all.iter().filter(|s| !view_of(s).is_empty()).count();
            let full = joined == self.nodes.len()
                && views
                    .iter()
                    .all(|v| v.successors.len() >= (self.nodes.len() - 1).min(8));
            if full && check_invariants(&views).is_ok() {
                return Ok(all);
            }
            if Instant::now() > until {
                bail!(
                    "the ring did not stabilize within {} s; see the logs in {}",
                    deadline.as_secs(),
                    self.dir.display()
                );
            }
            tick();
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// SIGTERM every gestor, and SIGKILL those still running after 10 s.
    pub fn stop(&mut self) {
        for n in self.nodes.iter() {
            // SAFETY: kill(2) on our own child's pid has no memory effects.
            unsafe {
                libc::kill(n.child.id() as i32, libc::SIGTERM);
            }
        }
        let until = Instant::now() + Duration::from_secs(10);
        for n in self.nodes.iter_mut() {
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
        self.nodes.clear();
    }
}

impl Drop for LocalRing {
    fn drop(&mut self) {
        self.stop();
    }
}
