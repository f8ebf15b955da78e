//! Real `gestor` processes for integration tests.
//!
//! Tests run the binary the workspace built (`target/<profile>/gestor`), with
//! plugins from the same directory, on loopback ports from [`crate::ports`].
//! Every process is killed when its handle drops, so a failing test leaves
//! nothing running.

use gestor::client::{Client, ClientError};
use gestor::config::TransportKind;
use gestor::runtime::build_transport;
use gestor_api::node;
use gestor_sdk::{Empty, Kind, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

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
/// (a no-op when `./bootstrap test` already built the workspace).
pub fn ensure_built() {
    BUILD.call_once(|| {
        if std::env::var_os("GESTOR_TESTS_NO_BUILD").is_some() {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--workspace", "--quiet"]);
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
        let port = url.rsplit(':').next().unwrap_or("x");
        let stderr_path = log_dir.join(format!("node-{port}.log"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .expect("log file");
        let mut cmd = Command::new(gestor_bin());
        cmd.arg("node")
            .args(args)
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
            args: args.to_vec(),
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
        build_transport(transport),
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
        build_transport(transport),
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
            build_transport(transport),
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
