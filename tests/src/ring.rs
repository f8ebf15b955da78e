//! A ring of real `gestor node` processes for integration tests.

use crate::cluster::{request, wait_ready, wait_until, NodeProc};
use crate::ports::free_port;
use gestor::config::{StorageKind, TransportKind};
use gestor::demo::view_of;
use gestor::json::cbor_to_json;
use gestor_api::node;
use gestor_chord::{check_invariants, View};
use gestor_sdk::wire::to_value;
use gestor_sdk::Empty;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Settings that make a test ring converge and notice things quickly, and
/// hash passwords cheaply (argon2id's cost is not under test here).
pub const TEST_CONFIG: &str = r#"
[plugins.config.gestor_directory]
presence_timeout_ms = 1500
alive_every_ms = 300
password_memory_kib = 64
password_iterations = 1
# Tests register thousands of users from 127.0.0.1.
password_attempts_per_source_per_minute = 0

[plugins.config.gestor_ring]
# 4 positions, not the default 6: balance is not what these tests measure,
# and each position is a Chord node to maintain on a shared machine.
virtual_nodes = 4
# Fingers and merge probes calmer than stabilize: lookups do not need them
# fresh, and an idle 8-gestor ring (4 positions each, debug build) then
# costs ~0.6 core instead of ~0.9 on the shared 2-core test machine.
stabilize_every_ms = 200
fix_fingers_every_ms = 250
check_predecessor_every_ms = 400
rpc_timeout_ms = 500
tick_every_ms = 50
merge_probe_every_ms = 1000
# A joining gestor places its virtual nodes once its table is complete.
table_every_ms = 500

[plugins.config.gestor_initial]
gossip_every_ms = 300

[plugins.config.gestor_replica]
sync_every_ms = 300
heartbeat_every_ms = 200
heartbeat_timeout_ms = 2000
rpc_timeout_ms = 1000
"#;

/// The log filter test gestores run with: `info`, or `GESTOR_TEST_LOG` when
/// set (e.g. `info,gestor_ring=debug` to see why a fault test failed).
fn node_log_filter() -> String {
    std::env::var("GESTOR_TEST_LOG").unwrap_or_else(|_| "info".into())
}

pub struct Ring {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
    pub transport: TransportKind,
    pub storage: StorageKind,
    pub config_path: PathBuf,
    /// The configuration every node starts from (TEST_CONFIG unless changed).
    pub config_text: String,
    /// Recording relays in front of nodes started with [`Ring::add_relayed_node`].
    pub relays: Vec<crate::relay::Relay>,
}

/// `config` (a test configuration with a `[plugins.config.gestor_ring]`
/// section) with every gestor taking `positions` virtual nodes.
pub fn with_virtual_nodes(config: &str, positions: usize) -> String {
    let section = "[plugins.config.gestor_ring]\n";
    assert!(
        config.contains(section),
        "no ring section to set virtual_nodes in"
    );
    // Drop a setting already there: TOML refuses a key twice.
    let rest: String = config
        .lines()
        .filter(|l| !l.trim_start().starts_with("virtual_nodes"))
        .map(|l| format!("{l}\n"))
        .collect();
    rest.replacen(
        section,
        &format!("{section}virtual_nodes = {positions}\n"),
        1,
    )
}

impl Ring {
    /// Start `n` gestores; the first creates the ring, the others join through it.
    pub fn start(n: usize, transport: TransportKind, storage: StorageKind) -> Ring {
        Self::start_with_config(n, transport, storage, TEST_CONFIG)
    }

    /// No gestor yet: a directory holding `config` as `gestor.toml`.
    fn empty(transport: TransportKind, storage: StorageKind, config: &str) -> Ring {
        let dir = tempfile::tempdir().expect("tempdir");
        // The gestores of a ring on TEST_CONFIG share their machine's
        // hashing slots, as an operator's several gestores on one machine
        // would; so every such ring test hashes through the slot files.
        let shared;
        let config = if config == TEST_CONFIG {
            let slots = dir.path().join("hash-slots");
            shared = config.replacen(
                "[plugins.config.gestor_directory]\n",
                &format!(
                    "[plugins.config.gestor_directory]\nmachine_hash_slots_dir = {:?}\n",
                    slots.display().to_string()
                ),
                1,
            );
            &shared
        } else {
            config
        };
        let config_path = dir.path().join("gestor.toml");
        std::fs::write(&config_path, config).expect("write config");
        Ring {
            dir,
            nodes: Vec::new(),
            transport,
            storage,
            config_path,
            config_text: config.to_string(),
            relays: Vec::new(),
        }
    }

    /// Like [`Ring::start`] with another base configuration.
    pub fn start_with_config(
        n: usize,
        transport: TransportKind,
        storage: StorageKind,
        config: &str,
    ) -> Ring {
        let mut ring = Ring::empty(transport, storage, config);
        for _ in 0..n {
            ring.add_node();
        }
        ring
    }

    /// Start `n` gestores at the same moment, each told to join through
    /// all the others and none told to create the ring: the state a
    /// collapsed ring was once stuck in. The ring's own tie-break must form it.
    pub fn start_all_joining(n: usize, transport: TransportKind, storage: StorageKind) -> Ring {
        let mut ring = Ring::empty(transport, storage, TEST_CONFIG);
        let endpoints: Vec<(String, String)> = (0..n)
            .map(|_| {
                (
                    format!("tcp://127.0.0.1:{}", free_port()),
                    format!("tcp://127.0.0.1:{}", free_port()),
                )
            })
            .collect();
        for (i, (url, signal)) in endpoints.iter().enumerate() {
            let data = ring.dir.path().join(format!("data-{i}"));
            let mut own = vec![
                "--listen".to_string(),
                url.clone(),
                "--signal".into(),
                signal.clone(),
            ];
            for (other, _) in endpoints.iter().filter(|(u, _)| u != url) {
                own.push("--join".into());
                own.push(other.clone());
            }
            // No node is running yet, so `node_args` adds no `--join` of its own.
            let args = ring.node_args(&ring.config_path, &data, own);
            let node = NodeProc::spawn(
                url,
                transport,
                &args,
                ring.dir.path(),
                &[("RUST_LOG", &node_log_filter())],
            );
            ring.nodes.push(node);
        }
        for node in &ring.nodes {
            assert!(
                wait_ready(&node.url, transport, Duration::from_secs(30)),
                "gestor at {} did not start:\n{}",
                node.url,
                node.log()
            );
        }
        ring
    }

    /// SIGSTOP (`stop = true`) or SIGCONT node `i`: a stalled process, alive
    /// but answering nothing, as under heavy swapping or a long GC pause.
    pub fn pause(&self, i: usize, stop: bool) {
        let Some(pid) = self.nodes[i].pid() else {
            return;
        };
        let signal = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: signalling a child process we spawned and still own.
        unsafe {
            libc::kill(pid as i32, signal);
        }
    }

    /// A layer with an operator credential (gestor-internal kinds, e.g. inventories).
    pub fn operator(&self) -> gestor_secure::SecureLayer {
        crate::cluster::test_cluster().operator_layer(self.transport)
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }

    /// Start one more gestor, joining through the first live one.
    pub fn add_node(&mut self) -> &NodeProc {
        self.add_node_with(&[], "")
    }

    /// Start one more gestor with extra flags and extra TOML appended to its config.
    pub fn add_node_with(&mut self, extra_args: &[&str], extra_config: &str) -> &NodeProc {
        let url = format!("tcp://127.0.0.1:{}", free_port());
        let signal = format!("tcp://127.0.0.1:{}", free_port());
        let i = self.nodes.len();
        let data = self.dir.path().join(format!("data-{i}"));
        let config = if extra_config.is_empty() {
            self.config_path.clone()
        } else {
            let path = self.dir.path().join(format!("gestor-{i}.toml"));
            std::fs::write(&path, format!("{}\n{extra_config}\n", self.config_text))
                .expect("write config");
            path
        };
        let mut endpoints = vec![
            "--listen".to_string(),
            url.clone(),
            "--signal".into(),
            signal,
        ];
        endpoints.extend(extra_args.iter().map(|s| s.to_string()));
        let args = self.node_args(&config, &data, endpoints);
        let node = self.spawn_ready(&url, &args);
        self.nodes.push(node);
        self.nodes.last().expect("just pushed")
    }

    /// `gestor node` arguments: the config, `own` flags, this ring's
    /// backends, the data directory, and `--join` through a live member.
    fn node_args(&self, config: &Path, data: &Path, own: Vec<String>) -> Vec<String> {
        let mut args: Vec<String> = vec!["--config".into(), config.display().to_string()];
        args.extend(own);
        args.extend([
            "--transport".into(),
            self.transport.to_string(),
            "--storage".into(),
            self.storage.to_string(),
            "--data-dir".into(),
            data.display().to_string(),
        ]);
        if let Some(via) = self.nodes.iter().find(|n| n.child.is_some()) {
            args.push("--join".into());
            args.push(via.url.clone());
        }
        args
    }

    /// Start one more gestor behind two recording relays (requests and
    /// signals): it advertises the relay's URL, so every client and gestor
    /// that talks to it goes through the relays.
    pub fn add_relayed_node(&mut self) -> &NodeProc {
        use crate::relay::{consecutive_listeners, Relay};
        let (l1, l2) = consecutive_listeners();
        let listen_port = l1.local_addr().expect("addr").port();
        drop((l1, l2));
        let listen = format!("tcp://127.0.0.1:{listen_port}");
        let (r1, r2) = consecutive_listeners();
        let requests = Relay::start(r1, &listen);
        let signals = Relay::start(r2, &format!("tcp://127.0.0.1:{}", listen_port + 1));
        let url = requests.url.clone();
        let i = self.nodes.len();
        let data = self.dir.path().join(format!("data-{i}"));
        let own = vec!["--listen".into(), listen, "--advertise".into(), url.clone()];
        let args = self.node_args(&self.config_path, &data, own);
        self.relays.push(requests);
        self.relays.push(signals);
        let node = self.spawn_ready(&url, &args);
        self.nodes.push(node);
        self.nodes.last().expect("just pushed")
    }

    /// Everything every relay of this ring has recorded.
    pub fn captured(&self) -> Vec<u8> {
        self.relays.iter().flat_map(|r| r.captured()).collect()
    }

    /// Start `gestor node ARGS` serving at `url` and wait until it answers.
    fn spawn_ready(&self, url: &str, args: &[String]) -> NodeProc {
        let node = NodeProc::spawn(
            url,
            self.transport,
            args,
            self.dir.path(),
            &[("RUST_LOG", &node_log_filter())],
        );
        assert!(
            wait_ready(url, self.transport, Duration::from_secs(30)),
            "gestor at {url} did not start:\n{}",
            node.log()
        );
        node
    }

    /// Restart node `i` with its original arguments (same URL, same data
    /// directory), joining through another live node.
    pub fn restart(&mut self, i: usize) {
        let mut args = self.nodes[i].args.clone();
        if let Some(pos) = args.iter().position(|a| a == "--join") {
            args.drain(pos..pos + 2);
        }
        if let Some(via) = self
            .nodes
            .iter()
            .enumerate()
            .find(|(j, n)| *j != i && n.child.is_some())
        {
            args.push("--join".into());
            args.push(via.1.url.clone());
        }
        let url = self.nodes[i].url.clone();
        self.nodes[i] = self.spawn_ready(&url, &args);
    }

    /// SIGKILL several nodes as close to the same moment as we can.
    pub fn kill(&mut self, which: &[usize]) {
        for &i in which {
            if let Some(c) = self.nodes[i].child.as_mut() {
                let _ = c.kill();
            }
        }
        for &i in which {
            self.nodes[i].kill();
        }
    }

    /// The signal URL node `i` was started with.
    pub fn signal_url(&self, i: usize) -> String {
        let args = &self.nodes[i].args;
        let pos = args
            .iter()
            .position(|a| a == "--signal")
            .expect("--signal given");
        args[pos + 1].clone()
    }

    pub fn live_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.url.clone())
            .collect()
    }

    /// Node indices in ring (id) order.
    pub fn ring_order(&self) -> Vec<usize> {
        let mut ids: Vec<(u64, usize)> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.child.is_some())
            .filter_map(|(i, n)| Some((self.status(&n.url)?.get("id")?.as_u64()?, i)))
            .collect();
        ids.sort();
        ids.into_iter().map(|(_, i)| i).collect()
    }

    /// Every ring position (virtual node id) of the live gestores with the
    /// index of the gestor holding it, sorted by position.
    pub fn positions(&self) -> Vec<(u64, usize)> {
        let mut out: Vec<(u64, usize)> = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.child.is_none() {
                continue;
            }
            let Some(status) = self.status(&n.url) else {
                continue;
            };
            out.extend(view_of(&status).iter().map(|v| (v.id, i)));
        }
        out.sort();
        out
    }

    /// The gestor (index) owning `key` among `positions`: the first
    /// position at or after it, wrapping.
    pub fn owner_in(positions: &[(u64, usize)], key: u64) -> usize {
        positions
            .iter()
            .find(|(id, _)| *id >= key)
            .or(positions.first())
            .map(|(_, i)| *i)
            .expect("a ring with positions")
    }

    /// Wait until no record is held on fewer than `wanted` gestores.
    pub fn wait_copies(
        &self,
        copies: usize,
        expect_records: usize,
        deadline: Duration,
    ) -> Result<(), String> {
        let mut last = String::new();
        let start = self.live_urls().first().cloned().unwrap_or_default();
        let ok = wait_until(deadline, || {
            match gestor::copies::run(&self.operator(), &start, copies) {
                Ok(r) => {
                    last = format!(
                        "records {} (want {expect_records}), under {:?}, histogram {:?}, \
                         unreachable {:?}",
                        r.records,
                        r.under.len(),
                        r.histogram,
                        r.unreachable
                    );
                    r.records == expect_records && r.under.is_empty() && r.unreachable.is_empty()
                }
                Err(e) => {
                    last = e.to_string();
                    false
                }
            }
        });
        if ok {
            return Ok(());
        }
        // What each gestor's replication was doing: rounds, their length,
        // what it counts as under-replicated.
        for url in self.live_urls() {
            let replica = self
                .status(&url)
                .map(|s| s["sections"]["replica"].to_string())
                .unwrap_or_else(|| "no answer".into());
            last.push_str(&format!("\n{url} replica: {replica}"));
        }
        Err(last)
    }

    pub fn status(&self, url: &str) -> Option<serde_json::Value> {
        request::<node::Status>(url, self.transport, &Empty)
            .ok()
            .map(|v| cbor_to_json(&to_value(&v)))
    }

    /// Running gestores that answer and report every virtual node joined.
    pub fn joined(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .filter_map(|n| self.status(&n.url))
            .filter(|s| !view_of(s).is_empty())
            .count()
    }

    /// Ring views of every running node that answers, one per virtual node.
    pub fn views(&self) -> Vec<View> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .filter_map(|n| self.status(&n.url))
            .flat_map(|s| view_of(&s))
            .collect()
    }

    /// Wait until every live node is in one ordered ring with full successor lists.
    pub fn wait_stable(&self, deadline: Duration) -> Result<Vec<View>, String> {
        let live = self.nodes.iter().filter(|n| n.child.is_some()).count();
        let mut last = String::new();
        let ok = wait_until(deadline, || {
            let joined = self.joined();
            if joined != live {
                let waiting: Vec<String> = self
                    .live_urls()
                    .iter()
                    .filter_map(|u| Some((u, self.status(u)?)))
                    .filter(|(_, s)| view_of(s).is_empty())
                    .map(|(u, s)| format!("{u}: {}", s["sections"]["ring"]))
                    .collect();
                last = format!(
                    "{joined} of {live} nodes report a joined ring; not joined: {}",
                    waiting.join("; ")
                );
                return false;
            }
            let views = self.views();
            let want = (live - 1).clamp(1, 8);
            if let Some(v) = views.iter().find(|v| v.successors.len() < want) {
                last = format!(
                    "node {:016x} has {} successors, want {want}",
                    v.id,
                    v.successors.len()
                );
                return false;
            }
            match check_invariants(&views) {
                Ok(()) => true,
                Err(v) => {
                    last = format!("{v:?}");
                    false
                }
            }
        });
        if ok {
            Ok(self.views())
        } else {
            Err(last)
        }
    }

    /// The last lines of every gestor's log, then every live gestor's ring
    /// state: what a failed fault test needs to say why.
    pub fn logs(&self) -> String {
        let lines = std::env::var("GESTOR_TEST_LOG_LINES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(40);
        let mut out: String = self
            .nodes
            .iter()
            .map(|n| format!("==== {}\n{}\n", n.url, tail(&n.log(), lines)))
            .collect();
        out.push_str(&self.describe());
        out
    }

    /// Every live gestor's positions: `id <- predecessor -> successors`,
    /// each peer as `id@port`.
    pub fn describe(&self) -> String {
        let short = |p: &serde_json::Value| -> String {
            let id = p.get("id").and_then(|v| v.as_u64()).unwrap_or(0);
            let addr = p.get("addr").and_then(|v| v.as_str()).unwrap_or("?");
            let port = addr.rsplit(':').next().unwrap_or(addr);
            format!("{:04x}@{port}", id >> 48)
        };
        let mut out = String::from("==== ring state\n");
        for url in self.live_urls() {
            let Some(status) = self.status(&url) else {
                out.push_str(&format!("{url}: no answer\n"));
                continue;
            };
            let ring = &status["sections"]["ring"];
            out.push_str(&format!("{url} joined={}\n", ring["joined"]));
            for nb in ring["virtual_nodes"].as_array().into_iter().flatten() {
                let pred = nb.get("predecessor").map(short).unwrap_or("-".into());
                let succ: Vec<String> = nb["successors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(short)
                    .collect();
                out.push_str(&format!(
                    "  {} <- {pred} -> {}\n",
                    short(&nb["me"]),
                    succ.join(" ")
                ));
            }
        }
        out
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("data-{i}"))
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
