//! The reference Python client (`examples/python/client.py`, written only from
//! docs/PROTOCOL.md) against a real ZeroMQ ring: its demo and its
//! conformance checks pass end to end through the secure layer, and it
//! refuses a gestor of another cluster before the handshake's third message.
//!
//! Needs `python3` with pyzmq, cbor2, noiseprotocol and cryptography, which
//! `./bootstrap test` installs: a machine without them fails here, on
//! purpose, rather than skipping.

use gestor::config::{StorageKind, TransportKind};
use gestor_tests::cluster::{test_cluster, TestCluster};
use gestor_tests::relay::Relay;
use gestor_tests::ring::Ring;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PACKAGES: &str = "pyzmq cbor2 noiseprotocol cryptography";
/// Longest a client run may take (the demo needs a few seconds).
const CLIENT_DEADLINE: Duration = Duration::from_secs(120);

fn workspace_root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).to_path_buf()
}

fn client_script() -> PathBuf {
    workspace_root().join("examples/python/client.py")
}

/// python3 and the client's packages are there (the bootstrap guarantees it).
fn require_python() {
    let out = Command::new("python3")
        .args([
            "-c",
            "import zmq, cbor2, cryptography; from noise.connection import NoiseConnection",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("python3 is required for this test and could not be run ({e}); ./bootstrap test installs what it needs")
        });
    assert!(
        out.status.success(),
        "python3 lacks the client's packages ({}); run ./bootstrap test, or: python3 -m pip install --user {PACKAGES}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("no message")
    );
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn report(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `python3 examples/python/client.py ARGS`, killed after [`CLIENT_DEADLINE`].
fn run_client(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new("python3")
        .arg(client_script())
        .args(args)
        .current_dir(workspace_root())
        .env_remove("GESTOR_CLUSTER_PUB")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("run python3");
    let until = Instant::now() + CLIENT_DEADLINE;
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait for python3") {
            break status.code();
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        code,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// Whether `captured` holds an AUTH frame (Noise message 3): `0x03` followed
/// by a session id that a HELLO_REPLY (`0x02` ++ id) handed out.
fn saw_auth(captured: &[u8]) -> bool {
    const SID: usize = 16;
    captured
        .windows(1 + SID)
        .filter(|w| w[0] == 0x02)
        .any(|hello_reply| {
            let mut auth = vec![0x03];
            auth.extend_from_slice(&hello_reply[1..]);
            captured.windows(auth.len()).any(|w| w == auth.as_slice())
        })
}

#[test]
fn python_client_demo_passes_on_a_secure_zmq_ring() {
    require_python();
    let ring = Ring::start(3, TransportKind::Zmq, StorageKind::Sqlite);
    ring.wait_stable(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("ring did not form: {e}\n{}", ring.logs()));
    let cluster_pub = test_cluster().pub_path().display().to_string();
    let run = run_client(&[
        "--gestor",
        &ring.urls()[0],
        "--cluster-pub",
        &cluster_pub,
        "demo",
    ]);
    assert_eq!(
        run.code,
        Some(0),
        "python client demo failed:\n{}\n{}",
        run.report(),
        ring.logs()
    );
    assert!(run.stdout.contains("demo passed for"), "{}", run.report());
    // The rules of PROTOCOL.md that once disagreed with the code, as this
    // client reads them: envelope, addresses, register retries, mail.put.
    let run = run_client(&[
        "--gestor",
        &ring.urls()[0],
        "--cluster-pub",
        &cluster_pub,
        "conformance",
    ]);
    assert_eq!(
        run.code,
        Some(0),
        "python client conformance failed:\n{}\n{}",
        run.report(),
        ring.logs()
    );
    assert!(
        run.stdout.contains("conformance passed"),
        "{}",
        run.report()
    );
}

#[test]
fn python_client_refuses_a_gestor_of_another_cluster() {
    require_python();
    let ring = Ring::start(1, TransportKind::Zmq, StorageKind::Sqlite);
    // Everything the client and the gestor say to each other crosses this relay.
    let relay = Relay::start(
        TcpListener::bind("127.0.0.1:0").expect("relay listener"),
        &ring.urls()[0],
    );
    let other = TestCluster::new();
    let other_pub = other.pub_path().display().to_string();
    let run = run_client(&[
        "--gestor",
        &relay.url,
        "--cluster-pub",
        &other_pub,
        "register",
        "mallory",
        "--password",
        "never-sent-pw",
    ]);
    assert!(
        matches!(run.code, Some(c) if c != 0),
        "expected a refusal: {}",
        run.report()
    );
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line: {}", run.report());
    assert!(
        lines[0].contains("does not prove admission to this cluster")
            && lines[0].contains("credential of another cluster"),
        "{}",
        run.report()
    );
    assert!(run.stdout.trim().is_empty(), "{}", run.report());
    // The client stopped after message 2: no AUTH frame ever reached the gestor.
    assert!(
        !saw_auth(&relay.captured()),
        "the client sent Noise message 3 to a gestor it should have refused"
    );

    // Control: with the right key the same relay sees a complete handshake,
    // so the check above can see one when there is one.
    let good_pub = test_cluster().pub_path().display().to_string();
    let run = run_client(&["--gestor", &relay.url, "--cluster-pub", &good_pub, "ping"]);
    assert_eq!(run.code, Some(0), "{}", run.report());
    assert!(run.stdout.contains("pong"), "{}", run.report());
    assert!(
        saw_auth(&relay.captured()),
        "no AUTH frame seen through the relay"
    );

    // No key at all: refused before a byte is sent.
    let run = run_client(&["--gestor", &relay.url, "ping"]);
    assert_eq!(run.code, Some(2), "{}", run.report());
    assert!(
        run.stderr.contains("no cluster public key") && run.stderr.trim().lines().count() == 1,
        "{}",
        run.report()
    );
}
