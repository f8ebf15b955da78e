//! The `gestor` client commands, run as a user would, against a real ring:
//! output, `--json`, exit codes and the one-line errors.

use gestor::config::{StorageKind, TransportKind};
use gestor_client::client::Client;
use gestor_tests::chat::{poll, ChatUser};
use gestor_tests::cluster::{client_layer, gestor_bin, run_cli, test_cluster, wait_until};
use gestor_tests::ports::free_port;
use gestor_tests::ring::Ring;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(20);

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
    // The successor list names positions (virtual nodes): the two other
    // gestores, each perhaps several times, and perhaps this one's own.
    let mut others: Vec<&str> = status["sections"]["ring"]["successors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["addr"].as_str())
        .filter(|a| *a != gestor)
        .collect();
    others.sort();
    others.dedup();
    assert_eq!(others.len(), 2, "{}", status["sections"]["ring"]);
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

    closed_output_ends_quietly(&ring, &home_s);
    status_watch_refreshes_and_stops(&ring, &home_s);
    failed_send_queues_nothing(&ring);
    chat_talks_to_one_user_with_times(&ring);
}

/// Run `gestor ARGS` with its standard output a pipe nobody reads (the
/// reader is closed before it starts, so its first write fails — what `|
/// head -1` does after the first line): (exit code, stderr).
fn run_with_closed_stdout(
    args: &[&str],
    env: &[(&str, &str)],
    stdin_open: bool,
) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut cmd = Command::new(gestor_bin());
    cmd.args(args)
        .env(
            gestor_client::trust::CLUSTER_PUB_ENV,
            test_cluster().pub_path(),
        )
        .stdout(writer)
        .stderr(Stdio::piped())
        .stdin(if stdin_open {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn gestor");
    // stdin (when piped) stays open: the command must end by itself.
    let _stdin = child.stdin.take();
    let exited = wait_until(Duration::from_secs(30), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("wait");
    (
        exited.then(|| out.status.code()).flatten(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every command exits 0, silently, when nobody reads its output: one-shot
/// commands, `status --watch`, `chat` (which logs out first) and `demo`
/// (which stops its gestores first).
fn closed_output_ends_quietly(ring: &Ring, home: &str) {
    let gestor = ring.urls()[0].clone();
    let t = ring.transport.to_string();
    let env = [
        ("GESTOR_HOME", home),
        ("RUST_LOG", "warn"),
        ("GESTOR_PASSWORD", "pipe-pw"),
        ("GESTOR_URL", gestor.as_str()),
        ("GESTOR_TRANSPORT", t.as_str()),
    ];
    let (code, out, err) = run_cli(&["register", "piper"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let address = format!("127.0.0.1:{}", free_port());
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["status", "--watch", "0.2"],
        vec!["lookup", "piper"],
        vec!["lookup", "piper", "--json"],
        vec!["login", "piper", "--address", &address],
        vec!["call", <gestor_api::node::Ping as gestor_sdk::Kind>::NAME],
        vec!["inbox", "piper"],
        vec!["send", "piper", "piper", "note to self"],
        vec!["cluster", "init", "--dir", &format!("{home}/pipe-cluster")],
    ] {
        let (code, err) = run_with_closed_stdout(&args, &env, false);
        assert_eq!(code, Some(0), "gestor {args:?} on a closed pipe: {err}");
        assert!(
            err.trim().is_empty(),
            "gestor {args:?}: nothing on stderr: {err}"
        );
    }
    // The real thing, through a shell: `gestor status | head -1`.
    let script = format!(
        "set -o pipefail; {} status | head -1 >/dev/null",
        gestor_bin().display()
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .envs(env)
        .env(
            gestor_client::trust::CLUSTER_PUB_ENV,
            test_cluster().pub_path(),
        )
        .output()
        .expect("bash");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gestor status | head -1: {err}");
    assert!(err.trim().is_empty(), "{err}");

    // A chat whose output is closed hands off and logs out, then exits 0:
    // closed before it starts, and — `gestor chat piper | head -1` — after
    // its first line, while it has nothing more to say and its input stays open.
    let mut c = Client::new(
        client_layer(ring.transport),
        ring.urls(),
        Duration::from_secs(5),
    );
    let (code, err) = run_with_closed_stdout(&["chat", "piper", "--address", &address], &env, true);
    assert_eq!(code, Some(0), "gestor chat on a closed pipe: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !c.lookup("piper").expect("lookup piper").online,
        "the chat logged out before exiting"
    );
    let mut chat = Command::new(gestor_bin())
        .args(["chat", "piper", "--address", &address])
        .envs(env)
        .env(
            gestor_client::trust::CLUSTER_PUB_ENV,
            test_cluster().pub_path(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gestor chat");
    let _input = chat.stdin.take();
    let mut first = String::new();
    BufReader::new(chat.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("first line");
    assert!(first.contains("listening on"), "{first}");
    assert!(c.lookup("piper").expect("lookup piper").online);
    // The reader is gone (dropped above); nothing more is written.
    assert!(
        wait_until(DEADLINE, || matches!(chat.try_wait(), Ok(Some(_)))),
        "gestor chat | head -1 ends"
    );
    let out = chat.wait_with_output().expect("chat");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        !c.lookup("piper").expect("lookup piper").online,
        "the chat logged out before exiting"
    );

    // A demo whose reader goes away stops the gestores it started.
    let mut demo = Command::new(gestor_bin())
        .args(["demo", "--nodes", "2", "--transport", &t])
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gestor demo");
    let tag = format!("gestor-demo-{}", demo.id());
    let mut lines = BufReader::new(demo.stdout.take().expect("stdout")).lines();
    // Closed just before it starts its first gestor: its next line, right
    // after that start, finds nobody reading.
    let cue = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("secure ring"));
    assert!(cue.is_some(), "the demo got as far as making its cluster");
    drop(lines);
    assert!(
        wait_until(Duration::from_secs(30), || matches!(
            demo.try_wait(),
            Ok(Some(_))
        )),
        "the demo ended when its output was closed"
    );
    let out = demo.wait_with_output().expect("demo");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.trim().is_empty(), "{err}");
    assert!(
        processes_mentioning(&tag).is_empty(),
        "the demo's gestores are gone: {:?}",
        processes_mentioning(&tag)
    );
    assert!(
        !std::env::temp_dir().join(&tag).exists(),
        "the demo's directory is gone"
    );
}

/// Pids of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// `gestor status --watch SECS` shows the status again and again: N times
/// with `--count N`, one JSON document a line with `--json`, and until
/// SIGINT (Ctrl-C) otherwise, which ends it with status 0.
fn status_watch_refreshes_and_stops(ring: &Ring, home: &str) {
    let gestor = ring.urls()[1].clone();
    let t = ring.transport.to_string();
    let env = [("GESTOR_HOME", home), ("RUST_LOG", "off")];
    let base = ["--gestor", gestor.as_str(), "--transport", t.as_str()];
    let with = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["status".into()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend(base.iter().map(|s| s.to_string()));
        v
    };
    let args = with(&["--watch", "0.2", "--count", "3"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run_cli(&args, &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("status at ").count(), 3, "{out}");
    assert_eq!(
        out.matches("\nnode ").count() + usize::from(out.starts_with("node ")),
        3,
        "{out}"
    );

    let args = with(&["--watch", "0.2", "--count", "2", "--json"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run_cli(&args, &env);
    assert_eq!(code, 0, "{err}");
    let docs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON document a line"))
        .collect();
    assert_eq!(docs.len(), 2, "{out}");
    assert!(docs.iter().all(|d| d["id"].is_u64()), "{out}");

    let args = with(&["--watch", "0.2"]);
    let mut child = Command::new(gestor_bin())
        .args(&args)
        .envs(env)
        .env(
            gestor_client::trust::CLUSTER_PUB_ENV,
            test_cluster().pub_path(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn status --watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, refreshes) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("status at ") && tx.send(line).is_err() {
                return;
            }
        }
    });
    // Two refreshes seen, then Ctrl-C.
    for _ in 0..2 {
        refreshes
            .recv_timeout(Duration::from_secs(20))
            .expect("status --watch refreshes");
    }
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    assert!(
        wait_until(Duration::from_secs(10), || matches!(
            child.try_wait(),
            Ok(Some(_))
        )),
        "status --watch stops on SIGINT"
    );
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The messages waiting in `user`'s outbox (none when it was never written).
fn outbox(user: &ChatUser) -> Vec<serde_json::Value> {
    let path = user
        .home
        .path()
        .join("chat")
        .join(&user.name)
        .join("outbox.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes).expect("outbox.json")
            ["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// `gestor send` fails with nothing queued (the issue: it used to fail yet
/// queue, and the retry delivered the message twice); it queues only when
/// told to, and then says so and exits 0.
fn failed_send_queues_nothing(ring: &Ring) {
    let alice = ChatUser::register(ring, "ana-send");
    let bob = ChatUser::register(ring, "bo-send");
    // A chat that cannot log in leaves nothing behind (no address, no contacts).
    let (code, _, err) = alice.cli(
        ring,
        &[
            "chat",
            &alice.name,
            "--address",
            &alice.address,
            "--password",
            "wrong",
        ],
    );
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("wrong password"), "{err}");
    // No saved session, no --address, no earlier chat: alice cannot log in.
    let (code, out, err) = alice.cli(ring, &["send", &alice.name, &bob.name, "hello once"]);
    assert_ne!(code, 0, "{out}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("nothing queued"), "{err}");
    assert!(err.contains("--address"), "says what is missing: {err}");
    assert!(outbox(&alice).is_empty(), "nothing queued");
    // An unknown recipient: nothing queued either.
    let (code, _, err) = alice.cli(
        ring,
        &[
            "send",
            &alice.name,
            "nobody-here",
            "x",
            "--address",
            &alice.address,
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("nothing queued") && err.contains("unknown user"),
        "{err}"
    );
    assert!(outbox(&alice).is_empty(), "nothing queued");
    // The retry, with an address: sent, once (bob is offline: his mailbox).
    let (code, out, err) = alice.cli(
        ring,
        &[
            "send",
            &alice.name,
            &bob.name,
            "hello once",
            "--address",
            &alice.address,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("left in the mailbox"), "{out}");
    assert!(outbox(&alice).is_empty());
    // Asked to keep it for an offline recipient: exit 0, and it says so.
    let (code, out, err) = alice.cli(
        ring,
        &[
            "send",
            &alice.name,
            &bob.name,
            "kept for later",
            "--no-mailbox",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("queued in ana-send's outbox"), "{out}");
    assert_eq!(outbox(&alice).len(), 1);
    let (code, _, err) = bob.cli(ring, &["login", &bob.name, "--address", &bob.address]);
    assert_eq!(code, 0, "{err}");
    let (list, raw) = bob.inbox_json(ring);
    let once = list.iter().filter(|m| m.text == "hello once").count();
    assert_eq!(once, 1, "delivered exactly once: {raw}");
    assert!(
        !list.iter().any(|m| m.text == "kept for later"),
        "still in alice's outbox: {raw}"
    );
}

/// `gestor chat`: `/to USER`, then plain text goes to USER; messages show
/// the time they were sent.
fn chat_talks_to_one_user_with_times(ring: &Ring) {
    let dave = ChatUser::register(ring, "dave-to");
    let erin = ChatUser::register(ring, "erin-to");
    let e = erin.start(ring, |_| {});
    let mut chat = dave.spawn_chat(ring, &[]);
    chat.expect("listening on", DEADLINE)
        .unwrap_or_else(|| panic!("gestor chat did not start: {}", chat.stderr()));
    chat.say("/help");
    chat.expect("/to USER", DEADLINE)
        .expect("/help documents /to");
    chat.say("hello there");
    chat.expect("whom to?", DEADLINE)
        .expect("plain text without /to asks for a recipient");
    chat.say("/to erin-to");
    chat.expect("talking to erin-to", DEADLINE).expect("/to");
    chat.say("hi erin, in plain text");
    chat.expect("to erin-to: delivered directly", DEADLINE)
        .unwrap_or_else(|| panic!("plain text went to erin: {:?}", chat.seen));
    poll(DEADLINE, || {
        e.inbox()
            .ok()?
            .iter()
            .any(|m| m.from == "dave-to" && m.text == "hi erin, in plain text")
            .then_some(())
    })
    .expect("erin got it");
    e.send("dave-to", "hi dave").expect("send");
    let line = chat
        .expect("<erin-to #1> hi dave", DEADLINE)
        .unwrap_or_else(|| panic!("dave sees erin's message: {:?}", chat.seen));
    // [HH:MM:SS] <erin-to #1> hi dave
    let time = line
        .strip_prefix('[')
        .and_then(|r| r.split_once("] "))
        .map(|(t, _)| t)
        .unwrap_or_else(|| panic!("no time in {line:?}"));
    let parts: Vec<&str> = time.split(':').collect();
    assert!(
        parts.len() == 3
            && parts
                .iter()
                .all(|p| p.len() == 2 && p.parse::<u8>().is_ok()),
        "HH:MM:SS: {line:?}"
    );
    chat.say("/quit");
    assert_eq!(chat.finish(DEADLINE), Some(0), "{}", chat.stderr());
    e.stop();
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

/// Every argument of every command, positional or not, has help text in
/// `gestor help CMD`.
#[test]
fn every_argument_has_help() {
    let help = |args: &[&str]| {
        let (code, out, err) = run_cli(args, &[("RUST_LOG", "off")]);
        assert_eq!(code, 0, "gestor {args:?}: {err}");
        out
    };
    let commands = |text: &str| -> Vec<String> {
        section(text, "Commands:")
            .iter()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .filter(|c| c != "help")
            .collect()
    };
    let mut todo: Vec<Vec<String>> = commands(&help(&["help"]))
        .into_iter()
        .map(|c| vec![c])
        .collect();
    let mut checked = 0;
    while let Some(cmd) = todo.pop() {
        let mut args: Vec<&str> = vec!["help"];
        args.extend(cmd.iter().map(String::as_str));
        let text = help(&args);
        for sub in commands(&text) {
            let mut deeper = cmd.clone();
            deeper.push(sub);
            todo.push(deeper);
        }
        for name in ["Arguments:", "Options:"] {
            let lines = section(&text, name);
            for (i, line) in lines.iter().enumerate() {
                let entry = line.trim_start();
                let indent = line.len() - entry.len();
                // Arguments start at most 6 columns in ("  -h, --help",
                // "      --long", "  <USER>"); deeper lines are descriptions.
                let starts =
                    entry.starts_with('-') || entry.starts_with('<') || entry.starts_with('[');
                if !starts || indent > 6 {
                    continue;
                }
                // Beside the argument, or (clap's layout when help is long)
                // on the next line, indented deeper.
                let next_line = lines.get(i + 1).is_some_and(|next| {
                    let text = next.trim_start();
                    !text.is_empty() && next.len() - text.len() > indent && !text.starts_with('[')
                });
                let described = next_line
                    || entry
                        .split_once("  ")
                        .is_some_and(|(_, d)| !d.trim().is_empty());
                assert!(
                    described,
                    "gestor {}: no help for {entry:?}\n{text}",
                    cmd.join(" ")
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 80, "checked {checked} arguments");
}

/// The indented lines under `title` in clap's help text (blank lines,
/// which separate entries in clap's long layout, left out).
fn section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| l.trim() != title)
        .skip(1)
        .take_while(|l| l.starts_with(' ') || l.trim().is_empty())
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// A bad configuration is refused at start with one line naming the key.
#[test]
fn bad_config_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[node]\nlisten_typo = 1\n", "node.listen_typo"),
        ("[transport]\nbackend = \"tcp\"\n", "transport.backend"),
        (
            "[transport]\nreplier_workers = 0\n",
            "transport.replier_workers",
        ),
        ("[node]\nlisten = \"http://x:1\"\n", "node.listen"),
        (
            "[plugins.config.gestor_rign]\nsuccessors = 4\n",
            "plugins.config.gestor_rign",
        ),
        (
            "[plugins.config.gestor_ring]\nsuccessors = \"many\"\n",
            "plugins.config.gestor_ring.successors",
        ),
        (
            "[plugins.config.gestor_directory]\npassword_memory_kib = 4194304\n",
            "plugins.config.gestor_directory.password_memory_kib",
        ),
        (
            // Below a file: no directory can be made there.
            "[plugins.config.gestor_directory]\nmachine_hash_slots_dir = \"/dev/null/slots\"\n",
            "plugins.config.gestor_directory.machine_hash_slots_dir",
        ),
        (
            "[plugins.config.gestor_directory]\nmachine_hash_slots = 4\n",
            "plugins.config.gestor_directory.machine_hash_slots",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let data = dir.path().join(format!("data-{i}"));
        let (path, data) = (path.display().to_string(), data.display().to_string());
        let url = format!("tcp://127.0.0.1:{}", free_port());
        let signal = format!("tcp://127.0.0.1:{}", free_port());
        let mut args = vec!["node", "--config", &path, "--data-dir", &data];
        if *key != "node.listen" {
            args.extend(["--listen", &url, "--signal", &signal]);
        }
        let flags = test_cluster().node_flags();
        args.extend(flags.iter().map(String::as_str));
        let (code, _, err) = run_cli(&args, &[("RUST_LOG", "off")]);
        assert_eq!(code, 1, "{text:?} refused: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(
            err.contains(&format!("{key}:")),
            "{text:?} names {key}: {err}"
        );
    }
}
