//! The `gestor` client commands, run as a user would, against a real ring:
//! output, `--json`, exit codes and the one-line errors.

use gestor::config::{StorageKind, TransportKind};
use gestor_tests::cluster::run_cli;
use gestor_tests::ports::free_port;
use gestor_tests::ring::Ring;
use std::time::Duration;

fn cli_against_ring(transport: TransportKind, storage: StorageKind) {
    let ring = Ring::start(3, transport, storage);
    ring.wait_stable(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("ring did not form: {e}"));
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().display().to_string();
    let gestor = ring.urls()[1].clone();
    let t = transport.to_string();
    let run = |args: &[&str], password: Option<&str>| {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--gestor", &gestor, "--transport", &t]);
        let mut env = vec![("GESTOR_HOME", home_s.as_str()), ("RUST_LOG", "off")];
        if let Some(p) = password {
            env.push(("GESTOR_PASSWORD", p));
        }
        run_cli(&full, &env)
    };
    let one_line_error = |(code, _out, err): (i32, String, String), needle: &str| {
        assert_ne!(code, 0, "expected failure with {needle:?}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
    };

    let (code, out, err) = run(&["register", "carla"], Some("s3cret"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("registered carla"), "{out}");
    one_line_error(
        run(&["register", "carla"], Some("other")),
        "username carla is taken",
    );
    one_line_error(
        run(&["register", "Carla!"], Some("x")),
        "username may contain only",
    );
    one_line_error(run(&["register", "nopass"], None), "a password is required");
    one_line_error(
        run(
            &["login", "carla", "--address", "127.0.0.1:9100"],
            Some("wrong"),
        ),
        "wrong password",
    );
    one_line_error(run(&["lookup", "nobody"], None), "unknown user nobody");

    let (code, out, err) = run(
        &["login", "carla", "--address", "127.0.0.1:9100"],
        Some("s3cret"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("logged in carla"), "{out}");

    let (code, out, err) = run(&["lookup", "carla", "--json"], None);
    assert_eq!(code, 0, "{err}");
    let found: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(found["user"], "carla");
    assert_eq!(found["address"], "127.0.0.1:9100");
    assert_eq!(found["online"], true);
    assert!(found["last_update"]["wall_ms"].as_u64().unwrap() > 0);
    assert!(found["hops"].is_u64());

    let (code, out, _) = run(&["status", "--json"], None);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(status["id"].is_u64());
    assert_eq!(
        status["sections"]["ring"]["successors"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(status["initial_gestors"].as_array().is_some());

    // Inventories are gestor-internal: without a credential, one clear line.
    one_line_error(run(&["copies", "--json"], None), "needs --credential");
    let operator = gestor_tests::cluster::test_cluster().admit("operator");
    let operator = operator.display().to_string();
    let (code, out, err) = run(&["copies", "--json", "--credential", &operator], None);
    assert_eq!(code, 0, "{err}");
    let copies: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(copies["gestores"].as_array().unwrap().len(), 3);

    // logout uses the token saved by login; a repeat is harmless.
    let (code, out, err) = run(&["logout", "carla"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("logged out carla"));
    let (_, out, _) = run(&["lookup", "carla", "--json"], None);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["online"],
        false
    );

    one_line_error(run(&["delete", "carla"], Some("wrong")), "wrong password");
    let (code, _, err) = run(&["delete", "carla"], Some("s3cret"));
    assert_eq!(code, 0, "{err}");
    one_line_error(run(&["lookup", "carla"], None), "unknown user carla");

    // Nobody listening there (and no saved fallbacks in a fresh home).
    let empty_home = tempfile::tempdir().unwrap();
    let nowhere = format!("tcp://127.0.0.1:{}", free_port());
    let result = run_cli(
        &[
            "lookup",
            "carla",
            "--gestor",
            &nowhere,
            "--transport",
            &t,
            "--timeout-ms",
            "300",
        ],
        &[
            ("GESTOR_HOME", &empty_home.path().display().to_string()),
            ("RUST_LOG", "off"),
        ],
    );
    one_line_error(result, "gestor unreachable");
}

#[test]
fn nng_sqlite() {
    cli_against_ring(TransportKind::Nng, StorageKind::Sqlite);
}

#[test]
fn zmq_sled() {
    cli_against_ring(TransportKind::Zmq, StorageKind::Sled);
}

/// Secure by default: a client with no cluster key, and a node with no
/// credential, refuse with one line before touching the network.
#[test]
fn refuses_without_a_cluster_key_or_a_credential() {
    let gestor = gestor_tests::cluster::gestor_bin();
    let url = format!("tcp://127.0.0.1:{}", free_port());
    let out = std::process::Command::new(&gestor)
        .args(["lookup", "alice", "--gestor", &url])
        .env_remove("GESTOR_CLUSTER_PUB")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no cluster public key"), "{err}");

    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&gestor)
        .args(["node", "--listen", &url, "--data-dir"])
        .arg(data.path())
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("security.credential is not set"), "{err}");
    assert!(
        err.contains("--insecure"),
        "says how to run without one: {err}"
    );
}

/// `--insecure` is a plaintext development mode: an insecure client and node
/// work together, and each mode refuses the other in one line.
#[test]
fn insecure_mode_talks_plaintext_and_refuses_the_other_mode() {
    let transport = TransportKind::Nng;
    let gestor = gestor_tests::cluster::gestor_bin();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gestor.toml");
    std::fs::write(&config, gestor_tests::ring::TEST_CONFIG).unwrap();
    let url = format!("tcp://127.0.0.1:{}", free_port());
    let signal = format!("tcp://127.0.0.1:{}", free_port());
    let data = dir.path().join("data");
    let args: Vec<String> = [
        "--config",
        &config.display().to_string(),
        "--listen",
        &url,
        "--signal",
        &signal,
        "--data-dir",
        &data.display().to_string(),
        "--insecure",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let node = gestor_tests::cluster::NodeProc::spawn(
        &url,
        transport,
        &args,
        dir.path(),
        &[("RUST_LOG", "info")],
    );
    let home = tempfile::tempdir().unwrap();
    let cli = |args: &[&str], cluster_pub: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(&gestor);
        cmd.args(args)
            .env_remove("GESTOR_CLUSTER_PUB")
            .env("GESTOR_HOME", home.path())
            .env("GESTOR_PASSWORD", "s3cret")
            .env("RUST_LOG", "off");
        if let Some(p) = cluster_pub {
            cmd.arg("--cluster-pub").arg(p);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The one-node ring answers once its ring plugin has started.
    let registered = gestor_tests::cluster::wait_until(Duration::from_secs(30), || {
        cli(&["register", "dana", "--insecure", "--gestor", &url], None).0 == 0
    });
    assert!(registered, "insecure register failed:\n{}", node.log());
    let (code, out, err) = cli(&["lookup", "dana", "--insecure", "--gestor", &url], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dana at"), "{out}");
    assert!(
        node.log().contains("INSECURE"),
        "the node warns loudly:\n{}",
        node.log()
    );

    // A client that trusts a cluster refuses the plaintext node.
    let cluster = gestor_tests::cluster::test_cluster();
    let (code, _, err) = cli(
        &["lookup", "dana", "--gestor", &url],
        Some(&cluster.pub_path()),
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("runs --insecure"), "{err}");

    // An --insecure client refuses a secure gestor (which refuses plaintext).
    let ring = Ring::start(1, transport, StorageKind::Sqlite);
    let secure = ring.urls()[0].clone();
    let (code, _, err) = cli(
        &["register", "erin", "--insecure", "--gestor", &secure],
        None,
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("the gestor runs secure"), "{err}");
}
