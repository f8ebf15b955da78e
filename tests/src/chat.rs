//! Chat users for integration tests: library clients ([`ChatClient`]) and
//! `gestor chat` processes, each with its own `$GESTOR_HOME`.

use crate::cluster::gestor_bin;
use crate::ports::free_port;
use crate::ring::Ring;
use gestor_client::chat::{ChatClient, ChatMessage, ChatOptions};
use gestor_client::client::Client;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct ChatUser {
    pub name: String,
    pub password: String,
    pub home: tempfile::TempDir,
    pub address: String,
}

impl ChatUser {
    /// Register `name` on `ring`; a fresh home and a free listening port.
    pub fn register(ring: &Ring, name: &str) -> ChatUser {
        let password = format!("pw-{name}");
        let mut c = Client::new(
            crate::cluster::client_layer(ring.transport),
            ring.urls(),
            Duration::from_secs(10),
        );
        c.register(name, &password)
            .unwrap_or_else(|e| panic!("register {name}: {e}"));
        ChatUser {
            name: name.to_string(),
            password,
            home: tempfile::tempdir().expect("tempdir"),
            address: format!("127.0.0.1:{}", free_port()),
        }
    }

    /// Library options: this user's home and address, quick fallbacks.
    pub fn options(&self, ring: &Ring) -> ChatOptions {
        let mut o = ChatOptions::new(&self.name, &self.password, &self.address, ring.urls());
        o.transport = ring.transport;
        o.trust = gestor_client::trust::Trust::Cluster(crate::cluster::test_cluster().public);
        o.home = self.home.path().to_path_buf();
        o.timeout = Duration::from_secs(5);
        o.retry_every = Duration::from_secs(3);
        o.mailbox_every = Duration::from_secs(1);
        o.gap_wait = Duration::from_secs(5);
        o
    }

    pub fn start(&self, ring: &Ring, configure: impl FnOnce(&mut ChatOptions)) -> ChatClient {
        let mut o = self.options(ring);
        configure(&mut o);
        ChatClient::start(o).unwrap_or_else(|e| panic!("start chat client {}: {e}", self.name))
    }

    /// Environment for `gestor` commands run as this user.
    pub fn env(&self, ring: &Ring) -> Vec<(String, String)> {
        vec![
            ("GESTOR_HOME".into(), self.home.path().display().to_string()),
            ("GESTOR_PASSWORD".into(), self.password.clone()),
            ("GESTOR_URL".into(), ring.urls().join(",")),
            ("GESTOR_TRANSPORT".into(), ring.transport.to_string()),
            ("RUST_LOG".into(), "warn".into()),
            (
                gestor_client::trust::CLUSTER_PUB_ENV.into(),
                crate::cluster::test_cluster()
                    .pub_path()
                    .display()
                    .to_string(),
            ),
        ]
    }

    /// Run `gestor ARGS` as this user: (exit code, stdout, stderr).
    pub fn cli(&self, ring: &Ring, args: &[&str]) -> (i32, String, String) {
        let env = self.env(ring);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        crate::cluster::run_cli(args, &env)
    }

    /// `gestor inbox USER --json`, parsed.
    pub fn inbox_json(&self, ring: &Ring) -> (Vec<ChatMessage>, String) {
        let (code, out, err) = self.cli(ring, &["inbox", &self.name, "--json"]);
        assert_eq!(code, 0, "gestor inbox {} failed: {err}", self.name);
        let list = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("inbox --json is not a message list ({e}): {out}"));
        (list, out)
    }

    /// Start `gestor chat USER` with piped stdin/stdout.
    pub fn spawn_chat(&self, ring: &Ring, extra: &[&str]) -> ChatProc {
        let mut cmd = Command::new(gestor_bin());
        cmd.args(["chat", &self.name, "--address", &self.address])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in self.env(ring) {
            cmd.env(k, v);
        }
        ChatProc::spawn(cmd, self.home.path())
    }
}

/// A running `gestor chat`; killed on drop.
pub struct ChatProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Every stdout line so far.
    pub seen: Vec<String>,
    stderr_path: std::path::PathBuf,
}

impl ChatProc {
    fn spawn(mut cmd: Command, dir: &Path) -> ChatProc {
        let stderr_path = dir.join("chat-stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr log");
        cmd.stderr(stderr);
        let mut child = cmd.spawn().expect("spawn gestor chat");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ChatProc {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            seen: Vec::new(),
            stderr_path,
        }
    }

    pub fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to gestor chat");
        stdin.flush().expect("flush");
    }

    /// Wait for a stdout line containing `needle`.
    pub fn expect(&mut self, needle: &str, deadline: Duration) -> Option<String> {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return Some(l.clone());
        }
        let until = Instant::now() + deadline;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Close stdin (end of input = /quit) and wait for the exit code.
    pub fn finish(&mut self, deadline: Duration) -> Option<i32> {
        self.stdin.take();
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for ChatProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `f` until it returns `Some` or `deadline` passes.
pub fn poll<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
