//! Node configuration: a TOML file (every option documented in
//! `examples/gestor.toml`), with command-line flags applied on top.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use gestor_backends::{StorageKind, TransportKind};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct Config {
    pub node: NodeSection,
    pub transport: TransportSection,
    pub storage: StorageSection,
    pub plugins: PluginsSection,
    pub clock: ClockSection,
    pub security: SecuritySection,
    pub http: HttpSection,
}

/// The operator's HTTP endpoint: `/metrics`, `/health`, `/ready`, the ring
/// dashboard (docs/ARCHITECTURE.md, "The HTTP endpoint"). Off unless set.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// `HOST:PORT` to serve HTTP on, e.g. `127.0.0.1:9100`; unset: no HTTP.
    pub listen: Option<String>,
}

impl HttpSection {
    /// The socket address `http.listen` names, if set; an error naming the
    /// key when it is not `HOST:PORT` (an IP literal, or a name that resolves).
    pub fn address(&self) -> Result<Option<std::net::SocketAddr>> {
        let Some(text) = &self.listen else {
            return Ok(None);
        };
        let invalid = |why: &str| {
            anyhow::anyhow!(
                "http.listen = {text:?} is not a usable address: {why} (expected HOST:PORT, e.g. 127.0.0.1:9100)"
            )
        };
        if text.contains("://") {
            return Err(invalid("no scheme is wanted"));
        }
        if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
            return Ok(Some(addr));
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(|| invalid("no port"))?;
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        port.parse::<u16>().map_err(|_| invalid("bad port"))?;
        use std::net::ToSocketAddrs;
        let mut addrs = text
            .to_socket_addrs()
            .map_err(|e| invalid(&format!("cannot resolve {host}: {e}")))?;
        addrs
            .next()
            .map(Some)
            .ok_or_else(|| invalid(&format!("{host} resolves to no address")))
    }
}

/// Admission to the cluster (docs/ARCHITECTURE.md, "Threat model").
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySection {
    /// This gestor's credential, from `gestor cluster admit`.
    pub credential: Option<PathBuf>,
    /// The cluster public key, `cluster.pub` from `gestor cluster init`.
    pub cluster_pub: Option<PathBuf>,
    /// Signed revocation list from `gestor cluster revoke`, re-read when it changes.
    pub revocations: Option<PathBuf>,
    /// Development only: run without a credential; every peer is taken for
    /// a gestor. Logged loudly at every start.
    pub insecure: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// REQ-REP endpoint this node binds.
    pub listen: String,
    /// Bound PUB-SUB endpoint for incoming signals; default: listen port + 1.
    pub signal: Option<String>,
    /// Request URL others use to reach this node; default: `listen`.
    pub advertise: Option<String>,
    /// Ring id override (decimal or 0x-hex); default: hash of the advertised URL.
    pub id: Option<String>,
    /// Gestores to join through; empty means "start a new ring".
    pub join: Vec<String>,
    /// Where the store keeps its files.
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportSection {
    pub backend: TransportKind,
    pub max_message_bytes: usize,
    pub replier_workers: usize,
    /// Request workers kept free of client requests: ring maintenance,
    /// replication and forwarded requests from other gestores never wait
    /// behind clients. A client request that would take one answers `busy`.
    pub reserved_for_gestores: usize,
    /// A client request that waited longer than this for a request worker
    /// is answered `busy` without being run; 0 runs every request however
    /// late. Below the client library's 3 s wait for an owner, so a client
    /// hears `busy` (and retries the same gestor) before it gives up on it.
    pub max_queue_wait_ms: u64,
    /// Testing only: a file listing URLs this node must not reach (one per
    /// line, re-read when it changes) — simulates a network partition.
    pub fault_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    pub backend: StorageKind,
    /// User records kept in memory in front of the store (most recently
    /// read; a change drops the copy); 0 turns the cache off.
    pub cache_records: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsSection {
    /// Directory searched for plugins named without a path; default: the
    /// directory holding the `gestor` executable.
    pub dir: Option<PathBuf>,
    /// Plugins to load, by name (`gestor_ring` → `libgestor_ring.so`) or path.
    pub load: Vec<String>,
    /// Per-plugin settings, `[plugins.config.NAME]`, handed to the plugin as is.
    pub config: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockSection {
    /// Refuse version stamps further than this ahead of the local clock.
    pub max_ahead_ms: u64,
    /// Added to the wall clock; for tests of skewed clocks only.
    pub offset_ms: i64,
}

/// The plugins a node loads when the configuration names none.
pub const DEFAULT_PLUGINS: &[&str] = &[
    "gestor_ring",
    "gestor_directory",
    "gestor_initial",
    "gestor_replica",
    "gestor_mailbox",
];

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            listen: "tcp://127.0.0.1:7100".into(),
            signal: None,
            advertise: None,
            id: None,
            join: Vec::new(),
            data_dir: PathBuf::from("gestor-data"),
        }
    }
}

/// Default of `transport.max_queue_wait_ms`.
pub const DEFAULT_MAX_QUEUE_WAIT_MS: u64 = 1_000;
/// The least non-zero `transport.max_queue_wait_ms`.
const MIN_QUEUE_WAIT_MS: u64 = 50;

impl Default for TransportSection {
    fn default() -> Self {
        TransportSection {
            backend: TransportKind::Nng,
            max_message_bytes: 4 * 1024 * 1024,
            replier_workers: 8,
            reserved_for_gestores: 2,
            max_queue_wait_ms: DEFAULT_MAX_QUEUE_WAIT_MS,
            fault_file: None,
        }
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            backend: StorageKind::Sqlite,
            cache_records: 20_000,
        }
    }
}

impl Default for PluginsSection {
    fn default() -> Self {
        PluginsSection {
            dir: None,
            load: DEFAULT_PLUGINS.iter().map(|s| s.to_string()).collect(),
            config: BTreeMap::new(),
        }
    }
}

impl Default for ClockSection {
    fn default() -> Self {
        ClockSection {
            max_ahead_ms: 600_000,
            offset_ms: 0,
        }
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Config::from_toml(&text).map_err(|e| anyhow!("invalid config {}: {e}", path.display()))
    }

    /// Parse a configuration; an error is one line naming the key
    /// (`node.listen_typo: unknown field …`) or the line and column of a
    /// syntax error.
    pub fn from_toml(text: &str) -> std::result::Result<Config, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let before = &text[..s.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!("line {line}, column {column}: ")
                })
                .unwrap_or_default();
            format!("{at}{}", one_line(e.message()))
        })?;
        toml::Value::Table(table.clone())
            .try_into::<Config>()
            .map_err(|e| match first_refused_key(&table) {
                Some((key, why)) => format!("{key}: {why}"),
                None => one_line(e.message()),
            })
    }

    /// The advertised request URL.
    pub fn advertise_url(&self) -> String {
        self.node
            .advertise
            .clone()
            .unwrap_or_else(|| self.node.listen.clone())
    }

    /// The signal URL: configured, or the listen URL with port + 1.
    pub fn signal_url(&self) -> Result<String> {
        if let Some(s) = &self.node.signal {
            return Ok(s.clone());
        }
        port_plus_one(&self.node.listen).with_context(|| {
            format!(
                "node.signal not set and cannot derive it from listen URL {}",
                self.node.listen
            )
        })
    }

    /// The signal URL others use: the advertised host with the signal port.
    pub fn advertised_signal_url(&self) -> Result<String> {
        if self.node.signal.is_some() || self.node.advertise.is_none() {
            return self.signal_url();
        }
        port_plus_one(&self.advertise_url())
    }

    /// `transport.max_queue_wait_ms` as a limit; `None` when off.
    pub fn max_queue_wait(&self) -> Option<Duration> {
        let ms = self.transport.max_queue_wait_ms;
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    pub fn node_id(&self) -> Result<u64> {
        match &self.node.id {
            None => Ok(gestor_sdk::hash::ring_position(
                self.advertise_url().as_bytes(),
            )),
            Some(text) => parse_id(text),
        }
    }

    /// Check the values (after flags are applied); an error is one line
    /// naming the key.
    pub fn validate(&self) -> Result<()> {
        let node = &self.node;
        check_endpoint("node.listen", &node.listen)?;
        if let Some(url) = &node.signal {
            check_endpoint("node.signal", url)?;
        }
        if let Some(url) = &node.advertise {
            check_endpoint("node.advertise", url)?;
        }
        for url in &node.join {
            check_endpoint("node.join", url)?;
        }
        if node.data_dir.as_os_str().is_empty() {
            bail!("node.data_dir: empty; give the directory for the store's files");
        }
        if self.transport.max_message_bytes < 1024 {
            bail!("transport.max_message_bytes: must be at least 1024");
        }
        if self.transport.replier_workers == 0 {
            bail!("transport.replier_workers: must be at least 1");
        }
        if self.transport.reserved_for_gestores >= self.transport.replier_workers {
            bail!("transport.reserved_for_gestores: must be below transport.replier_workers");
        }
        let wait = self.transport.max_queue_wait_ms;
        if wait != 0 && wait < MIN_QUEUE_WAIT_MS {
            bail!("transport.max_queue_wait_ms: must be 0 (never shed) or at least {MIN_QUEUE_WAIT_MS}: a shorter wait turns away ordinary bursts");
        }
        if self.plugins.load.iter().any(|p| p.trim().is_empty()) {
            bail!("plugins.load: an empty plugin name");
        }
        if self.clock.max_ahead_ms < 1000 {
            bail!("clock.max_ahead_ms: must be at least 1000: gestores' clocks are never in perfect step");
        }
        self.signal_url()?;
        self.node_id().context("node.id")?;
        self.http.address()?;
        let sec = &self.security;
        if !sec.insecure {
            if sec.credential.is_none() {
                bail!("security.credential is not set: a gestor needs a credential from `gestor cluster admit` (or --insecure, for development only)");
            }
            if sec.cluster_pub.is_none() {
                bail!("security.cluster_pub is not set: a gestor needs the cluster public key (cluster.pub from `gestor cluster init`)");
            }
        }
        Ok(())
    }
}

/// Whitespace (newlines included) collapsed to single spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The dotted key of the first setting `Config` refuses, and why: found by
/// narrowing to the setting that fails in a document holding nothing else,
/// so it needs no list of the sections and keys (serde's own declarations
/// of `Config` are the only schema).
fn first_refused_key(table: &toml::Table) -> Option<(String, String)> {
    fn alone(path: &[String], leaf: &toml::Value) -> Result<(), String> {
        let mut value = leaf.clone();
        for key in path.iter().rev() {
            let mut t = toml::Table::new();
            t.insert(key.clone(), value);
            value = toml::Value::Table(t);
        }
        value
            .try_into::<Config>()
            .map(|_| ())
            .map_err(|e| one_line(e.message()))
    }
    fn narrow(path: &mut Vec<String>, table: &toml::Table) -> Option<(String, String)> {
        for (key, value) in table {
            path.push(key.clone());
            if let Err(why) = alone(path, value) {
                // A table: is it the key itself (refused even empty), or one inside?
                let deeper = match value {
                    toml::Value::Table(t) if alone(path, &toml::Table::new().into()).is_ok() => {
                        narrow(path, t)
                    }
                    _ => None,
                };
                return deeper.or(Some((path.join("."), why)));
            }
            path.pop();
        }
        None
    }
    narrow(&mut Vec::new(), table)
}

/// A node endpoint: `tcp://HOST:PORT`, `ipc://PATH` or `inproc://NAME`.
fn check_endpoint(key: &str, url: &str) -> Result<()> {
    if let Some(rest) = url.strip_prefix("tcp://") {
        let Some((host, port)) = rest.rsplit_once(':') else {
            bail!("{key}: {url:?} has no port: expected tcp://HOST:PORT");
        };
        if host.is_empty() {
            bail!("{key}: {url:?} has no host: expected tcp://HOST:PORT");
        }
        if port.parse::<u16>().is_err() {
            bail!("{key}: {url:?} has an invalid port {port:?}: expected tcp://HOST:PORT");
        }
        return Ok(());
    }
    for scheme in ["ipc://", "inproc://"] {
        if url.strip_prefix(scheme).is_some_and(|r| !r.is_empty()) {
            return Ok(());
        }
    }
    bail!(
        "{key}: {url:?} is not an endpoint: expected tcp://HOST:PORT, ipc://PATH or inproc://NAME"
    )
}

pub fn parse_id(text: &str) -> Result<u64> {
    let t = text.trim();
    let parsed = if let Some(hex) = t.strip_prefix("0x") {
        u64::from_str_radix(hex, 16)
    } else {
        t.parse()
    };
    parsed.with_context(|| {
        format!("invalid node id {text:?}: expected a decimal or 0x-hex 64-bit number")
    })
}

/// `tcp://h:p` → `tcp://h:(p+1)`; other schemes get a `-signal` suffix.
pub fn port_plus_one(url: &str) -> Result<String> {
    if let Some(rest) = url.strip_prefix("tcp://") {
        let (host, port) = rest.rsplit_once(':').context("tcp URL without port")?;
        let port: u16 = port.parse().context("tcp URL with invalid port")?;
        let next = port
            .checked_add(1)
            .context("port 65535 has no successor for the signal endpoint")?;
        return Ok(format!("tcp://{host}:{next}"));
    }
    if url.starts_with("ipc://") || url.starts_with("inproc://") {
        return Ok(format!("{url}-signal"));
    }
    bail!("unsupported URL {url:?}: expected tcp://, ipc:// or inproc://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_port_follows_listen_port() {
        assert_eq!(
            port_plus_one("tcp://127.0.0.1:7100").unwrap(),
            "tcp://127.0.0.1:7101"
        );
        assert!(port_plus_one("tcp://127.0.0.1:65535").is_err());
        assert_eq!(
            port_plus_one("ipc:///tmp/g").unwrap(),
            "ipc:///tmp/g-signal"
        );
    }

    #[test]
    fn example_config_parses_and_matches_defaults() {
        let text = include_str!("../../examples/gestor.toml");
        let parsed: Config = toml::from_str(text).unwrap();
        let defaults = Config::default();
        assert_eq!(parsed.node.listen, defaults.node.listen);
        assert_eq!(parsed.transport.backend, defaults.transport.backend);
        assert_eq!(parsed.storage.backend, defaults.storage.backend);
        assert_eq!(parsed.plugins.load, defaults.plugins.load);
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("[node]\nlisten_typo = 'x'").is_err());
    }

    /// Every refusal is one line that names the key.
    #[test]
    fn refusals_name_the_key_in_one_line() {
        let cases = [
            (
                "[node]\nlisten_typo = 'x'",
                "node.listen_typo: unknown field",
            ),
            ("[nodes]\nlisten = 'x'", "nodes: unknown field"),
            (
                "[transport]\nbackend = 'tcp'",
                "transport.backend: unknown variant",
            ),
            (
                "[transport]\nreplier_workers = 'eight'",
                "transport.replier_workers: invalid type",
            ),
            ("[node]\njoin = 'tcp://h:1'", "node.join: invalid type"),
            (
                "[plugins]\nload = ['gestor_ring', 3]",
                "plugins.load: invalid type",
            ),
            (
                "[node\nlisten = 1",
                "line 1, column 6: invalid table header",
            ),
        ];
        for (text, want) in cases {
            let e = Config::from_toml(text).unwrap_err();
            assert!(e.starts_with(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{text:?}: one line: {e}");
        }
        let bad = |text: &str| {
            let mut c = Config::from_toml(text).unwrap();
            c.security.insecure = true;
            let e = format!("{:#}", c.validate().unwrap_err());
            assert!(!e.contains('\n'), "one line: {e}");
            e
        };
        assert!(bad("[node]\nlisten = 'http://x:1'").starts_with("node.listen: "));
        assert!(bad("[node]\nlisten = 'tcp://x'").contains("no port"));
        assert!(bad("[node]\njoin = ['tcp://h:99999']").starts_with("node.join: "));
        assert!(bad("[node]\nadvertise = 'x'").starts_with("node.advertise: "));
        assert!(bad("[node]\nid = 'zz'").starts_with("node.id: "));
        assert!(bad("[clock]\nmax_ahead_ms = 0").starts_with("clock.max_ahead_ms: "));
        assert!(bad("[transport]\nreplier_workers = 0").starts_with("transport.replier_workers: "));
        assert!(
            bad("[transport]\nmax_queue_wait_ms = 10").starts_with("transport.max_queue_wait_ms: ")
        );
        let mut ok = Config::from_toml("[node]\njoin = ['tcp://10.0.0.1:7100']").unwrap();
        ok.security.insecure = true;
        ok.validate().unwrap();
        assert_eq!(ok.max_queue_wait(), Some(Duration::from_millis(1_000)));
        ok.transport.max_queue_wait_ms = 0;
        ok.validate().unwrap();
        assert_eq!(ok.max_queue_wait(), None, "0 never sheds");
    }

    #[test]
    fn http_listen_is_checked_and_named() {
        let mut http = HttpSection::default();
        assert_eq!(http.address().unwrap(), None);
        http.listen = Some("127.0.0.1:9100".into());
        assert_eq!(
            http.address().unwrap(),
            Some("127.0.0.1:9100".parse().unwrap())
        );
        http.listen = Some("[::1]:9100".into());
        assert!(http.address().unwrap().is_some());
        http.listen = Some("localhost:9100".into());
        assert!(http.address().unwrap().is_some());
        for bad in [
            "9100",
            "http://127.0.0.1:9100",
            "127.0.0.1:99999",
            ":9100",
            "127.0.0.1:",
        ] {
            http.listen = Some(bad.into());
            let e = http.address().unwrap_err().to_string();
            assert!(e.starts_with("http.listen = "), "{bad}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let parsed: Config = toml::from_str("[http]\nlisten = '127.0.0.1:9100'").unwrap();
        assert_eq!(parsed.http.listen.as_deref(), Some("127.0.0.1:9100"));
        assert!(toml::from_str::<Config>("[http]\nport = 1").is_err());
    }

    #[test]
    fn ids_parse_in_hex_and_decimal() {
        assert_eq!(parse_id("0x10").unwrap(), 16);
        assert_eq!(parse_id("42").unwrap(), 42);
        assert!(parse_id("zz").is_err());
    }
}
