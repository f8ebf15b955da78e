//! Real `gestor` processes for integration tests.
//!
//! Tests run the binary the workspace built (`target/<profile>/gestor`), with
//! plugins from the same directory, on loopback ports from [`crate::ports`].
//! Every process is killed when its handle drops, so a failing test leaves
//! nothing running.

use gestor::config::TransportKind;
use gestor_api::node;
use gestor_backends::build_transport;
use gestor_client::client::{Client, ClientError};
use gestor_client::trust::Trust;
use gestor_sdk::{Empty, Kind, Value};
use gestor_secure::{ClusterPub, CredentialFile, SecureConfig, SecureLayer};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

/// The cluster every test gestor of this process is admitted to (the suite
/// runs secure, as the README demo does).
pub struct TestCluster {
    dir: tempfile::TempDir,
    pub public: ClusterPub,
    issued: AtomicUsize,
    operators: std::sync::Mutex<Vec<(TransportKind, SecureLayer)>>,
    clients: std::sync::Mutex<Vec<(TransportKind, SecureLayer)>>,
}

impl TestCluster {
    /// A new cluster in its own temporary directory.
    pub fn new() -> TestCluster {
        let dir = tempfile::tempdir().expect("cluster dir");
        let (_, pub_path) = gestor::security::cluster_init(dir.path()).expect("cluster init");
        TestCluster {
            public: ClusterPub::load(&pub_path).expect("cluster.pub"),
            dir,
            issued: AtomicUsize::new(0),
            operators: std::sync::Mutex::new(Vec::new()),
            clients: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pub_path(&self) -> PathBuf {
        self.dir.path().join("cluster.pub")
    }

    /// A fresh credential file for a gestor (or an operator) named `name`.
    pub fn admit(&self, name: &str) -> PathBuf {
        let n = self.issued.fetch_add(1, Ordering::SeqCst);
        let out = self.dir.path().join(format!("{name}-{n}.cred"));
        gestor::security::cluster_admit(self.dir.path(), &out, name).expect("admit");
        out
    }

    /// Flags that run `gestor node` as an admitted member of this cluster.
    pub fn node_flags(&self) -> Vec<String> {
        vec![
            "--credential".into(),
            self.admit("node").display().to_string(),
            "--cluster-pub".into(),
            self.pub_path().display().to_string(),
        ]
    }

    /// A client's secure layer trusting this cluster; one per transport, so
    /// the many short-lived clients of a test reuse their sessions instead
    /// of each making a handshake (a restarted gestor's forgotten session is
    /// made again by the layer itself).
    pub fn client_layer(&self, transport: TransportKind) -> SecureLayer {
        let mut cached = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, layer)) = cached.iter().find(|(t, _)| *t == transport) {
            return layer.clone();
        }
        let layer = Trust::Cluster(self.public).layer(transport);
        cached.push((transport, layer.clone()));
        layer
    }

    /// A layer holding a credential of this cluster (for gestor-internal
    /// kinds); one per transport, so its sessions are reused.
    pub fn operator_layer(&self, transport: TransportKind) -> SecureLayer {
        let mut cached = self.operators.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, layer)) = cached.iter().find(|(t, _)| *t == transport) {
            return layer.clone();
        }
        let cred = CredentialFile::load(&self.admit("operator")).expect("operator credential");
        let layer = SecureLayer::new(
            build_transport(transport),
            SecureConfig::gestor(cred, self.public),
        );
        cached.push((transport, layer.clone()));
        layer
    }
}

impl Default for TestCluster {
    fn default() -> Self {
        Self::new()
    }
}

/// The cluster shared by this test process.
pub fn test_cluster() -> &'static TestCluster {
    static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
    CLUSTER.get_or_init(TestCluster::new)
}

/// A client layer trusting [`test_cluster`].
pub fn client_layer(transport: TransportKind) -> SecureLayer {
    test_cluster().client_layer(transport)
}

/// `target/<profile>` of the running test binary.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

static BUILD: Once = Once::new();

/// Make sure the binary and every plugin are built, in this test's profile.
/// `cargo test` builds no cdylib that no test links, so we ask cargo here
/// (a no-op when `./bootstrap test` already built the workspace). With
/// `--all-targets`, as `./bootstrap` builds: the plugins' unit tests turn on
/// dev-only features of shared crates, so a build without it compiled every
/// plugin again (30–60 s of the suite) and swapped the plugin files the
/// tests load.
pub fn ensure_built() {
    BUILD.call_once(|| {
        if std::env::var_os("GESTOR_TESTS_NO_BUILD").is_some() {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--workspace", "--all-targets", "--quiet"]);
        // Cargo runs a test with the package's own variables set. A build
        // script that watches one of them (`ring`'s watches
        // CARGO_MANIFEST_DIR) would then see it change, and the build
        // from here would recompile half the workspace — and the next
        // build from outside, the other half back.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_BIN_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "OUT_DIR",
                ]
                .contains(&name.as_ref())
            {
                cmd.env_remove(name.as_ref());
            }
        }
        if target_dir().ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build --workspace failed");
    });
}

pub fn gestor_bin() -> PathBuf {
    ensure_built();
    target_dir().join("gestor")
}

pub fn plugin_path(name: &str) -> PathBuf {
    ensure_built();
    target_dir().join(format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        name,
        std::env::consts::DLL_SUFFIX
    ))
}

/// A `gestor node` process; SIGKILLed on drop unless stopped.
pub struct NodeProc {
    pub child: Option<Child>,
    pub url: String,
    pub transport: TransportKind,
    pub stderr_path: PathBuf,
    pub args: Vec<String>,
}

impl NodeProc {
    /// Start `gestor node` with `args`, logging to `log_dir`.
    pub fn spawn(
        url: &str,
        transport: TransportKind,
        args: &[String],
        log_dir: &Path,
        env: &[(&str, &str)],
    ) -> NodeProc {
        Self::spawn_wrapped(&[], url, transport, args, log_dir, env)
    }

    /// Like [`NodeProc::spawn`], run through `wrapper` (e.g. `ip netns exec
    /// NAME`, which execs the gestor: the pid is the gestor's).
    pub fn spawn_wrapped(
        wrapper: &[String],
        url: &str,
        transport: TransportKind,
        args: &[String],
        log_dir: &Path,
        env: &[(&str, &str)],
    ) -> NodeProc {
        let name: String = url
            .trim_start_matches("tcp://")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let stderr_path = log_dir.join(format!("node-{name}.log"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .expect("log file");
        // Admitted to the test cluster unless the test chose otherwise.
        let mut args = args.to_vec();
        if !args
            .iter()
            .any(|a| a == "--insecure" || a == "--credential")
        {
            args.extend(test_cluster().node_flags());
        }
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(gestor_bin());
                c
            }
            None => Command::new(gestor_bin()),
        };
        cmd.arg("node")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn gestor node");
        NodeProc {
            child: Some(child),
            url: url.to_string(),
            transport,
            stderr_path,
            args,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self, deadline: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Whether the process has exited, and with what code.
    pub fn exited(&mut self) -> Option<Option<i32>> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => Some(status.code()),
            _ => None,
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One typed request through the real client library.
pub fn request<K: Kind>(
    url: &str,
    transport: TransportKind,
    body: &K::Request,
) -> Result<K::Reply, ClientError> {
    let mut client = Client::new(
        client_layer(transport),
        vec![url.to_string()],
        Duration::from_secs(5),
    );
    client.request::<K>(body)
}

/// One untyped request through the real client library (kinds of plugins
/// outside `gestor-api`, such as the echo example).
pub fn call(
    url: &str,
    transport: TransportKind,
    kind: &str,
    body: Value,
) -> Result<Value, ClientError> {
    let mut client = Client::new(
        client_layer(transport),
        vec![url.to_string()],
        Duration::from_secs(5),
    );
    client.call(kind, body)
}

/// Poll `cond` until it holds or `deadline` passes.
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until the node at `url` answers `node.ping`.
pub fn wait_ready(url: &str, transport: TransportKind, deadline: Duration) -> bool {
    wait_until(deadline, || {
        let mut client = Client::new(
            client_layer(transport),
            vec![url.to_string()],
            Duration::from_millis(300),
        );
        client.request::<node::Ping>(&Empty).is_ok()
    })
}

/// Run `gestor ARGS` to completion: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(gestor_bin());
    cmd.args(args).stdin(Stdio::null());
    cmd.env(
        gestor_client::trust::CLUSTER_PUB_ENV,
        test_cluster().pub_path(),
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run gestor");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Build a CBOR map from `(key, value)` pairs.
pub fn map(pairs: &[(&str, Value)]) -> Value {
    Value::Map(
        pairs
            .iter()
            .map(|(k, v)| (Value::Text(k.to_string()), v.clone()))
            .collect(),
    )
}

/// Field `key` of a CBOR map.
pub fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_map()?
        .iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}
