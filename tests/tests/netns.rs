//! Gestores on separate hosts, for every backend combination: five
//! gestores, each in its own network namespace with its own address
//! (10.77.0.1–5) on a bridge the test creates, behind netem latency and
//! loss; a client namespace (10.77.0.100) runs the real `gestor` commands.
//! The ring forms, a register/lookup load runs (`gestor bench`), the link of
//! the gestor owning a user is cut, lookups of that user fail over to a copy
//! and a write to it succeeds during the cut; the link heals, the ring is
//! one again, every gestor returns the newest version, and every record is
//! held on 4 gestores (`gestor copies`).
//!
//! Needs root and `ip`/`tc` (iproute2): skipped, with a message saying so,
//! only where network namespaces cannot be created. Where the kernel has no
//! netem qdisc (`CONFIG_NET_SCH_NETEM` unset), the bridge is replaced by a
//! user-space switch that delays and drops frames the same way
//! (`gestor_tests::delay_switch`), and the test says which it used.
//! Everything it creates (namespaces, veths, bridge, processes) is named
//! after the test process and removed on drop, even when the test fails; a
//! killed run's leftovers are removed by the next run.
//!
//! Timings (formation, failover, heal) are printed, never asserted.

use gestor::config::{StorageKind, TransportKind};
use gestor::demo::view_of;
use gestor_chord::{check_invariants, View};
use gestor_tests::cluster::{gestor_bin, test_cluster, wait_until, NodeProc};
use gestor_tests::delay_switch::DelaySwitch;
use gestor_tests::ring::TEST_CONFIG;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const GESTORES: usize = 5;
/// Owner + 3 successors.
const HOLDERS: usize = 4;
const PREFIX: &str = "gnl";
/// Latency and loss on every link (a frame between two hosts passes one
/// netem qdisc, or the user-space switch once): 40 ms round trips.
const NETEM_DELAY: &str = "20ms";
const NETEM_LOSS: &str = "1%";

/// One lab at a time: five gestores per lab on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());
static LABS: AtomicUsize = AtomicUsize::new(0);

/// Run `program args`; stderr on failure.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    run("ip", args)
}

/// Pids of the processes inside namespace `ns`.
fn pids_in(ns: &str) -> Vec<i32> {
    ip(&["netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Kill what runs in `ns`, then remove it (its veths go with it).
fn remove_namespace(ns: &str) {
    for pid in pids_in(ns) {
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let _ = wait_until(Duration::from_secs(5), || pids_in(ns).is_empty());
    let _ = ip(&["netns", "del", ns]);
}

/// Namespaces of earlier runs whose test process is gone (killed before
/// its drop guard ran).
fn remove_stale_namespaces() {
    let list = ip(&["netns", "list"]).unwrap_or_default();
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            remove_namespace(name);
        }
    }
}

/// The test's own network: a switch namespace with a bridge, one namespace
/// per gestor and one for the client, each on the bridge through a veth.
/// Dropping it stops the gestores and removes every namespace.
struct Lab {
    switch: String,
    hosts: Vec<String>,
    client: String,
    /// What the links do: netem, or iptables loss.
    impairment: String,
    dir: tempfile::TempDir,
    home: tempfile::TempDir,
    operator: String,
    transport: TransportKind,
    storage: StorageKind,
    nodes: Vec<Option<NodeProc>>,
    /// Without netem: the user-space switch in place of the bridge.
    hub: Option<DelaySwitch>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.nodes.clear();
        self.hub.take();
        for ns in self.hosts.iter().chain([&self.client, &self.switch]) {
            remove_namespace(ns);
        }
    }
}

/// Why a lab cannot be made here, or the lab.
enum Made {
    Lab(Box<Lab>),
    Skip(String),
}

impl Lab {
    fn make(transport: TransportKind, storage: StorageKind) -> Made {
        if Command::new("ip").arg("-V").output().is_err() {
            return Made::Skip("no `ip` command (iproute2)".into());
        }
        remove_stale_namespaces();
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::SeqCst)
        );
        let switch = format!("{name}-sw");
        if let Err(e) = ip(&["netns", "add", &switch]) {
            return Made::Skip(format!("cannot create a network namespace ({e})"));
        }
        let mut lab = Lab {
            switch,
            hosts: Vec::new(),
            client: format!("{name}-c"),
            impairment: String::new(),
            dir: tempfile::tempdir().expect("tempdir"),
            home: tempfile::tempdir().expect("tempdir"),
            operator: test_cluster().admit("operator").display().to_string(),
            transport,
            storage,
            nodes: Vec::new(),
            hub: None,
        };
        // From here on, a failure drops the lab, which removes what exists.
        lab.wire(&name)
            .unwrap_or_else(|e| panic!("building the network: {e}"));
        Made::Lab(Box::new(lab))
    }

    fn wire(&mut self, name: &str) -> Result<(), String> {
        let sw = self.switch.clone();
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        let attach = |ns: &str, port: &str, address: &str| -> Result<(), String> {
            ip(&["netns", "add", ns])?;
            ip(&[
                "link", "add", port, "netns", &sw, "type", "veth", "peer", "name", "eth0", "netns",
                ns,
            ])?;
            ip(&["-n", &sw, "link", "set", port, "master", "br0"])?;
            ip(&["-n", &sw, "link", "set", port, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "addr", "add", address, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"]).map(drop)
        };
        let client = self.client.clone();
        attach(&client, "vc", "10.77.0.100/24")?;
        for i in 0..GESTORES {
            let ns = format!("{name}-g{i}");
            // Pushed first: removed on drop even if wiring it fails.
            self.hosts.push(ns.clone());
            attach(&ns, &format!("v{i}"), &format!("10.77.0.{}/24", i + 1))?;
        }
        self.impairment = self.impair()?;
        Ok(())
    }

    /// Latency and loss on every link: netem on each host's interface
    /// where the kernel has it; else the bridge is replaced by a user-space
    /// switch that delays and drops frames the same way.
    fn impair(&mut self) -> Result<String, String> {
        let mut netem_missing = None;
        for ns in self.hosts.iter().chain([&self.client]) {
            let mut args = vec!["netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0"];
            args.extend(["root", "netem", "delay", NETEM_DELAY, "loss", NETEM_LOSS]);
            if let Err(e) = ip(&args) {
                netem_missing = Some(e);
                break;
            }
        }
        let Some(why) = netem_missing else {
            return Ok(format!(
                "netem delay {NETEM_DELAY} loss {NETEM_LOSS} on every host's link"
            ));
        };
        let sw = self.switch.clone();
        let mut ports: Vec<String> = (0..GESTORES).map(|i| format!("v{i}")).collect();
        ports.push("vc".into());
        for ns in self.hosts.iter().chain([&self.client]) {
            let _ = ip(&[
                "netns", "exec", ns, "tc", "qdisc", "del", "dev", "eth0", "root",
            ]);
        }
        for p in &ports {
            ip(&["-n", &sw, "link", "set", p, "nomaster"])?;
        }
        ip(&["-n", &sw, "link", "del", "br0"])?;
        let delay_ms: u64 = NETEM_DELAY.trim_end_matches("ms").parse().expect("ms");
        let loss: f64 = NETEM_LOSS.trim_end_matches('%').parse::<f64>().expect("%") / 100.0;
        self.hub = Some(
            DelaySwitch::start(&sw, &ports, Duration::from_millis(delay_ms), loss)
                .map_err(|e| format!("user-space switch: {e}"))?,
        );
        Ok(format!(
            "this kernel has no netem qdisc ({why}): a user-space switch delays every frame {NETEM_DELAY} and drops {NETEM_LOSS} instead"
        ))
    }

    fn url(&self, i: usize) -> String {
        format!("tcp://10.77.0.{}:7100", i + 1)
    }

    fn urls(&self) -> Vec<String> {
        (0..GESTORES).map(|i| self.url(i)).collect()
    }

    fn start(&mut self, i: usize) {
        let config = self.dir.path().join("gestor.toml");
        std::fs::write(&config, TEST_CONFIG).expect("config");
        let mut args: Vec<String> = vec![
            "--config".into(),
            config.display().to_string(),
            "--listen".into(),
            self.url(i),
            "--transport".into(),
            self.transport.to_string(),
            "--storage".into(),
            self.storage.to_string(),
            "--data-dir".into(),
            self.dir
                .path()
                .join(format!("data-{i}"))
                .display()
                .to_string(),
        ];
        if i > 0 {
            args.extend(["--join".into(), self.url(0)]);
        }
        let wrapper: Vec<String> = ["ip", "netns", "exec", &self.hosts[i]]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let node = NodeProc::spawn_wrapped(
            &wrapper,
            &self.url(i),
            self.transport,
            &args,
            self.dir.path(),
            &[("RUST_LOG", "info")],
        );
        if self.nodes.len() <= i {
            self.nodes.resize_with(i + 1, || None);
        }
        self.nodes[i] = Some(node);
    }

    /// `gestor ARGS` in the client namespace: (exit code, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.client])
            .arg(gestor_bin())
            .args(args)
            .args(["--transport", &self.transport.to_string()])
            .env("GESTOR_HOME", self.home.path())
            .env("GESTOR_PASSWORD", "netns-pw")
            .env("RUST_LOG", "off")
            .env(
                gestor_client::trust::CLUSTER_PUB_ENV,
                test_cluster().pub_path(),
            )
            .stdin(Stdio::null())
            .output()
            .expect("run gestor in the client namespace");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `gestor ARGS --json` through `url`, parsed, when it succeeds.
    fn json(&self, url: &str, args: &[&str]) -> Result<serde_json::Value, String> {
        let mut full = args.to_vec();
        full.extend(["--json", "--gestor", url, "--timeout-ms", "2000"]);
        let (code, out, err) = self.cli(&full);
        if code != 0 {
            return Err(err.trim().to_string());
        }
        serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))
    }

    /// One view per virtual node; none until the gestor has joined.
    fn views(&self, url: &str) -> Vec<View> {
        self.json(url, &["status"])
            .map(|s| view_of(&s))
            .unwrap_or_default()
    }

    /// Wait until the gestores `live` form one ordered ring with full
    /// successor lists (as every gestor reports it).
    fn wait_ring(&self, live: &[usize], deadline: Duration) -> Result<(), String> {
        let mut last = String::new();
        let ok = wait_until(deadline, || {
            let per_gestor: Vec<Vec<View>> =
                live.iter().map(|&i| self.views(&self.url(i))).collect();
            let joined = per_gestor.iter().filter(|v| !v.is_empty()).count();
            if joined != live.len() {
                last = format!("{joined} of {} gestores report a joined ring", live.len());
                return false;
            }
            let views: Vec<View> = per_gestor.into_iter().flatten().collect();
            let want = (live.len() - 1).clamp(1, 8);
            if let Some(v) = views.iter().find(|v| v.successors.len() < want) {
                last = format!("{:016x} has {} successors", v.id, v.successors.len());
                return false;
            }
            check_invariants(&views)
                .map_err(|v| last = format!("{v:?}"))
                .is_ok()
        });
        if ok {
            Ok(())
        } else {
            Err(last)
        }
    }

    /// `gestor copies`: every live record held (newest version) by 4 gestores.
    fn wait_copies(&self, records: u64, deadline: Duration) -> Result<(), String> {
        let mut last = String::new();
        let url = self.url(0);
        let ok = wait_until(deadline, || {
            match self.json(&url, &["copies", "--credential", &self.operator]) {
                Ok(r) => {
                    last = format!(
                        "records {} of {records}, under {}, unreachable {}, histogram {}",
                        r["records"], r["under"], r["unreachable"], r["histogram"]
                    );
                    let empty = |v: &serde_json::Value| {
                        v.as_array().map(Vec::is_empty) == Some(true)
                            || v.as_object().map(serde_json::Map::is_empty) == Some(true)
                    };
                    r["records"].as_u64() == Some(records)
                        && empty(&r["under"])
                        && empty(&r["unreachable"])
                        && r["wanted"].as_u64() == Some(HOLDERS as u64)
                }
                Err(e) => {
                    last = e;
                    false
                }
            }
        });
        if ok {
            Ok(())
        } else {
            Err(last)
        }
    }

    /// Cut (or restore) gestor `i`'s only link: its port on the bridge.
    fn link(&self, i: usize, up: bool) {
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &format!("v{i}"),
            if up { "up" } else { "down" },
        ])
        .unwrap_or_else(|e| panic!("link of gestor {i}: {e}"));
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .flatten()
            .map(|n| {
                let log = n.log();
                let lines: Vec<&str> = log.lines().collect();
                format!(
                    "==== {}\n{}\n",
                    n.url,
                    lines[lines.len().saturating_sub(30)..].join("\n")
                )
            })
            .collect()
    }
}

fn multi_host(transport: TransportKind, storage: StorageKind) {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let tag = format!("{transport}/{storage}");
    let mut lab = match Lab::make(transport, storage) {
        Made::Lab(lab) => lab,
        Made::Skip(why) => {
            println!(
                "[{tag}] SKIPPED: multi-host test needs network namespaces (root, iproute2): {why}"
            );
            return;
        }
    };
    println!("[{tag}] links: {}", lab.impairment);
    let all: Vec<usize> = (0..GESTORES).collect();

    // --- the ring forms across hosts ---------------------------------------
    gestor_bin(); // built before the clock starts
    let t0 = Instant::now();
    for i in all.iter().copied() {
        lab.start(i);
    }
    lab.wait_ring(&all, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("[{tag}] ring did not form: {e}\n{}", lab.logs()));
    println!(
        "[{tag}] 5 gestores on 10.77.0.1-5 formed one ring in {:?}",
        t0.elapsed()
    );

    // --- a register/lookup load --------------------------------------------
    let users = 40;
    let urls = lab.urls().join(",");
    let (code, out, err) = lab.cli(&[
        "bench",
        "--gestor",
        &urls,
        "--users",
        &users.to_string(),
        "--threads",
        "2",
        "--duration-secs",
        "3",
        "--prefix",
        "nsb-",
        "--phases",
        "register,lookup",
        "--json",
    ]);
    assert_eq!(code, 0, "[{tag}] gestor bench: {err}");
    let bench: serde_json::Value = serde_json::from_str(&out).expect("bench --json");
    let bench = &bench["phases"];
    for phase in ["register", "lookup"] {
        assert_eq!(bench[phase]["errors"], 0, "[{tag}] {phase} errors: {out}");
        assert!(bench[phase]["ops"].as_u64() > Some(0), "{out}");
    }
    println!(
        "[{tag}] bench: {} registrations (p50 {} ms), {} lookups in 3 s (p50 {} ms, p99 {} ms, {} hops), no errors",
        bench["register"]["ops"],
        bench["register"]["p50_ms"],
        bench["lookup"]["ops"],
        bench["lookup"]["p50_ms"],
        bench["lookup"]["p99_ms"],
        bench["lookup"]["mean_hops"]
    );

    // --- cut the link of the gestor owning a user --------------------------
    let (code, _, err) = lab.cli(&["register", "victim", "--gestor", &urls]);
    assert_eq!(code, 0, "[{tag}] register victim: {err}");
    let found = lab
        .json(&lab.url(1), &["lookup", "victim"])
        .unwrap_or_else(|e| panic!("[{tag}] lookup victim: {e}"));
    let owner_url = found["gestor"]
        .as_str()
        .expect("responsible gestor")
        .to_string();
    let owner = all
        .iter()
        .copied()
        .find(|&i| lab.url(i) == owner_url)
        .unwrap_or_else(|| panic!("[{tag}] owner {owner_url} is not one of ours"));
    let other = lab.url((owner + 2) % GESTORES);
    lab.link(owner, false);
    let cut = Instant::now();
    println!("[{tag}] cut the link of {owner_url}, owner of victim");
    let mut last = String::new();
    let failed_over = wait_until(Duration::from_secs(30), || {
        match lab.json(&other, &["lookup", "victim"]) {
            Ok(f) if f["gestor"].as_str() != Some(owner_url.as_str()) => true,
            Ok(f) => {
                last = format!("still answered for {}", f["gestor"]);
                false
            }
            Err(e) => {
                last = e;
                false
            }
        }
    });
    assert!(
        failed_over,
        "[{tag}] no failover to a copy: {last}\n{}",
        lab.logs()
    );
    println!(
        "[{tag}] lookups of victim answered by a copy holder {:?} after the cut",
        cut.elapsed()
    );
    let moved = "10.77.0.100:9100";
    let mut last = String::new();
    let written = wait_until(Duration::from_secs(30), || {
        let (code, _, err) = lab.cli(&[
            "login",
            "victim",
            "--address",
            moved,
            "--gestor",
            &other,
            "--timeout-ms",
            "3000",
        ]);
        last = err;
        code == 0
    });
    assert!(written, "[{tag}] write during the cut: {last}");
    let (code, _, err) = lab.cli(&["register", "during-cut", "--gestor", &other]);
    assert_eq!(code, 0, "[{tag}] register during the cut: {err}");
    println!("[{tag}] wrote victim's address and registered a user during the cut");

    // --- heal ----------------------------------------------------------------
    lab.link(owner, true);
    let healed = Instant::now();
    lab.wait_ring(&all, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("[{tag}] ring after healing: {e}\n{}", lab.logs()));
    println!(
        "[{tag}] one ring again {:?} after healing",
        healed.elapsed()
    );
    let mut stale = Vec::new();
    let newest_everywhere = wait_until(Duration::from_secs(30), || {
        stale = all
            .iter()
            .filter(|&&i| {
                lab.json(&lab.url(i), &["lookup", "victim"])
                    .map_or(true, |f| f["address"] != moved)
            })
            .copied()
            .collect();
        stale.is_empty()
    });
    assert!(
        newest_everywhere,
        "[{tag}] gestores {stale:?} return an old victim"
    );
    let records = users as u64 + 2;
    lab.wait_copies(records, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("[{tag}] copies after healing: {e}\n{}", lab.logs()));
    println!(
        "[{tag}] every one of {records} records held on {HOLDERS} gestores (newest version), {:?} after healing; whole run {:?}",
        healed.elapsed(),
        t0.elapsed()
    );
}

// Every transport and every store once: each run takes minutes of real links.
gestor_tests::half_matrix!(straight => multi_host);
