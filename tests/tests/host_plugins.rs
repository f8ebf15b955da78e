//! The plugin host, end to end: a real `gestor node` process loading real
//! plugin libraries from disk, on both transports.

use gestor::config::TransportKind;
use gestor_sdk::wire::{from_cbor, Reply};
use gestor_sdk::{ErrorCode, TransportOptions, Value};
use gestor_tests::cluster::{
    call, field, map, plugin_path, run_cli, wait_ready, wait_until, NodeProc,
};
use gestor_tests::ports::free_port;
use std::time::Duration;

fn echo_node(transport: TransportKind, dir: &std::path::Path, rust_log: &str) -> NodeProc {
    echo_node_with(transport, dir, rust_log, "sqlite")
}

/// `gestor node` arguments for one node on fresh loopback ports: (url, args).
fn node_args(
    transport: TransportKind,
    storage: &str,
    data: &std::path::Path,
    plugin: &str,
) -> (String, Vec<String>) {
    let url = format!("tcp://127.0.0.1:{}", free_port());
    let signal = format!("tcp://127.0.0.1:{}", free_port());
    let args = [
        "--listen",
        &url,
        "--signal",
        &signal,
        "--transport",
        &transport.to_string(),
        "--storage",
        storage,
        "--data-dir",
        &data.display().to_string(),
        "--plugin",
        plugin,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    (url, args)
}

/// Run `gestor node` expecting it to refuse to start: (exit code, stderr).
fn refused_with(args: &[String]) -> (i32, String) {
    let mut full: Vec<&str> = vec!["node"];
    full.extend(args.iter().map(String::as_str));
    let admitted = gestor_tests::cluster::test_cluster().node_flags();
    full.extend(admitted.iter().map(String::as_str));
    let (code, _out, err) = run_cli(&full, &[("RUST_LOG", "off")]);
    (code, err)
}

fn echo_node_with(
    transport: TransportKind,
    dir: &std::path::Path,
    rust_log: &str,
    storage: &str,
) -> NodeProc {
    let (url, args) = node_args(transport, storage, &dir.join("data"), "gestor_echo_plugin");
    let node = NodeProc::spawn(&url, transport, &args, dir, &[("RUST_LOG", rust_log)]);
    assert!(
        wait_ready(&url, transport, Duration::from_secs(20)),
        "node did not come up:\n{}",
        node.log()
    );
    node
}

fn text(v: &str) -> Value {
    Value::Text(v.into())
}

fn loads_example_plugin_and_answers(transport: TransportKind) {
    let dir = tempfile::tempdir().unwrap();
    let mut node = echo_node(transport, dir.path(), "info");
    let reply = call(
        &node.url,
        transport,
        "echo.say",
        map(&[("text", text("hola"))]),
    )
    .unwrap();
    assert_eq!(field(&reply, "text"), Some(&text("hola")));
    assert_eq!(field(&reply, "greeting"), Some(&text("hello")));

    // The plugin persists through the host's store without knowing the backend.
    call(
        &node.url,
        transport,
        "echo.remember",
        map(&[("key", text("k")), ("value", text("v"))]),
    )
    .unwrap();
    let recalled = call(
        &node.url,
        transport,
        "echo.recall",
        map(&[("key", text("k"))]),
    )
    .unwrap();
    assert_eq!(recalled, text("v"));

    // The plugin's tracing events reach the host's subscriber under its target.
    assert!(
        wait_until(Duration::from_secs(5), || node
            .log()
            .contains("echo.say called")),
        "plugin log line missing:\n{}",
        node.log()
    );
    assert!(
        node.log().contains("gestor_echo_plugin"),
        "events carry the plugin's target"
    );

    // SIGTERM stops the node cleanly, plugins included.
    let code = node.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "clean exit expected:\n{}", node.log());
    assert!(node.log().contains("echo plugin stopped"));
}

fn rust_log_filters_plugin_targets(transport: TransportKind) {
    let dir = tempfile::tempdir().unwrap();
    let node = echo_node(transport, dir.path(), "info,gestor_echo_plugin=off");
    call(
        &node.url,
        transport,
        "echo.say",
        map(&[("text", text("quiet"))]),
    )
    .unwrap();
    // The host's own lines still appear, the plugin's do not.
    assert!(wait_until(Duration::from_secs(5), || node
        .log()
        .contains("gestor node started")));
    assert!(
        !node.log().contains("echo.say called"),
        "RUST_LOG should silence the plugin:\n{}",
        node.log()
    );
}

fn panicking_handler_gets_error_reply(transport: TransportKind) {
    let dir = tempfile::tempdir().unwrap();
    let node = echo_node(transport, dir.path(), "info");
    for _ in 0..3 {
        let err = call(&node.url, transport, "echo.boom", Value::Null).unwrap_err();
        match err {
            gestor_client::client::ClientError::Remote(e) => {
                assert_eq!(e.code, ErrorCode::Internal);
                assert!(e.message.contains("panicked"), "{}", e.message);
            }
            other => panic!("expected an error reply, got {other}"),
        }
        // ...and the node keeps answering.
        let reply = call(
            &node.url,
            transport,
            "echo.say",
            map(&[("text", text("still here"))]),
        )
        .unwrap();
        assert_eq!(field(&reply, "text"), Some(&text("still here")));
    }
    assert!(
        node.log().contains("panicked"),
        "the panic is logged with the plugin's name"
    );
}

fn garbage_frames_get_error_replies(transport: TransportKind) {
    let dir = tempfile::tempdir().unwrap();
    let node = echo_node(transport, dir.path(), "info");
    // Inside a secure session (the layer's own refusals are tested in gestor-secure).
    let t = gestor_tests::cluster::client_layer(transport);
    let mut requester = t
        .requester(&node.url, &TransportOptions::default())
        .unwrap();
    let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
        (vec![0xff, 0xfe, 0x00], ErrorCode::Malformed),
        (b"hello, not cbor".to_vec(), ErrorCode::Malformed),
        (Vec::new(), ErrorCode::Malformed),
        (
            gestor_sdk::wire::to_cbor(&gestor_sdk::Request::new("no.such.kind", Value::Null)),
            ErrorCode::UnknownKind,
        ),
        (
            gestor_sdk::wire::to_cbor(&gestor_sdk::Request::new(
                "echo.say",
                Value::Integer(3.into()),
            )),
            ErrorCode::BadRequest,
        ),
    ];
    for (frame, expected) in cases.into_iter().chain(envelope_cases()) {
        let bytes = requester.request(&frame, Duration::from_secs(5)).unwrap();
        let reply: Reply = from_cbor(&bytes).unwrap();
        assert!(!reply.ok, "{frame:02x?} answered ok");
        assert_eq!(reply.error.unwrap().code, expected, "{frame:02x?}");
    }
    // PROTOCOL.md §4: the envelope is level 1 of at most MAX_DEPTH.
    let depth = gestor_sdk::wire::MAX_DEPTH;
    let reply: Reply = from_cbor(
        &requester
            .request(&echo_nested(depth - 1), Duration::from_secs(5))
            .unwrap(),
    )
    .unwrap();
    assert!(reply.ok, "{depth} levels are allowed: {:?}", reply.error);
    let reply: Reply = from_cbor(
        &requester
            .request(&echo_nested(depth), Duration::from_secs(5))
            .unwrap(),
    )
    .unwrap();
    let error = reply.error.expect("one level too many is refused");
    assert_eq!(error.code, ErrorCode::Malformed);
    assert!(
        error
            .message
            .contains(&format!("nested deeper than {depth} levels")),
        "{}",
        error.message
    );
    // An oversize request (5 MiB against the default 4 MiB limit) gets a
    // too_large reply; the node keeps serving.
    let big_options = TransportOptions {
        max_message_bytes: 16 * 1024 * 1024,
        ..TransportOptions::default()
    };
    let mut big = t.requester(&node.url, &big_options).unwrap();
    let huge = gestor_sdk::wire::to_cbor(&gestor_sdk::Request::new(
        "echo.say",
        map(&[("text", Value::Text("x".repeat(5 * 1024 * 1024)))]),
    ));
    let reply: Reply = from_cbor(&big.request(&huge, Duration::from_secs(10)).unwrap()).unwrap();
    assert_eq!(reply.error.unwrap().code, ErrorCode::TooLarge);

    let reply = call(
        &node.url,
        transport,
        "echo.say",
        map(&[("text", text("ok"))]),
    )
    .unwrap();
    assert_eq!(field(&reply, "text"), Some(&text("ok")));
}

/// An `echo.say` whose body also holds `levels` nested arrays, so that the
/// frame is `levels + 1` deep (the envelope is level 1).
fn echo_nested(levels: usize) -> Vec<u8> {
    let mut deep = Value::Array(Vec::new());
    for _ in 1..levels - 1 {
        deep = Value::Array(vec![deep]);
    }
    let body = map(&[("text", text("deep")), ("deep", deep)]);
    gestor_sdk::wire::to_cbor(&gestor_sdk::Request::new("echo.say", body))
}

/// Envelopes that PROTOCOL.md §4–5 refuse, with the code they get.
fn envelope_cases() -> Vec<(Vec<u8>, ErrorCode)> {
    let envelope = |pairs: Vec<(Value, Value)>| gestor_sdk::wire::to_cbor(&Value::Map(pairs));
    let v = |n: u64| (text("v"), Value::Integer(n.into()));
    let kind = (text("kind"), text("echo.say"));
    let body = (text("body"), map(&[("text", text("hi"))]));
    let mut trailing = envelope(vec![v(1), kind.clone(), body.clone()]);
    trailing.push(0x00);
    vec![
        // A byte-string key, even one spelling "v".
        (
            envelope(vec![
                (Value::Bytes(b"v".to_vec()), Value::Integer(1.into())),
                kind.clone(),
                body.clone(),
            ]),
            ErrorCode::Malformed,
        ),
        (
            envelope(vec![
                v(1),
                (text("kind"), Value::Bytes(b"echo.say".to_vec())),
            ]),
            ErrorCode::Malformed,
        ),
        // Any unsigned version other than 1, however large.
        (
            envelope(vec![v(u64::from(u32::MAX) + 1), kind.clone()]),
            ErrorCode::BadRequest,
        ),
        (
            envelope(vec![v(u64::MAX), kind.clone()]),
            ErrorCode::BadRequest,
        ),
        (envelope(vec![v(0), kind.clone()]), ErrorCode::BadRequest),
        (
            envelope(vec![(text("v"), Value::Float(1.0)), kind.clone()]),
            ErrorCode::Malformed,
        ),
        (trailing, ErrorCode::Malformed),
        (
            envelope(vec![v(1), kind.clone(), v(1), body.clone()]),
            ErrorCode::Malformed,
        ),
        (
            envelope(vec![
                v(1),
                kind.clone(),
                (text("body"), Value::Tag(0, Box::new(text("now")))),
            ]),
            ErrorCode::Malformed,
        ),
        // A byte-string key in a body is the body's problem.
        (
            envelope(vec![
                v(1),
                kind,
                (
                    text("body"),
                    Value::Map(vec![(Value::Bytes(b"text".to_vec()), text("hi"))]),
                ),
            ]),
            ErrorCode::BadRequest,
        ),
    ]
}

fn refuses_to_start_on_a_corrupt_data_file(transport: TransportKind) {
    for storage in ["sqlite", "sled"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // Create a valid store first, then damage it.
        {
            let mut node = echo_node_with(transport, dir.path(), "info", storage);
            assert_eq!(node.terminate(Duration::from_secs(10)), Some(0));
        }
        let victim = if storage == "sqlite" {
            data.join("gestor.db")
        } else {
            data.join("sled").join("db")
        };
        assert!(victim.exists(), "{} should exist", victim.display());
        std::fs::write(&victim, vec![0x5a; 8192]).unwrap();
        let (_url, args) = node_args(transport, storage, &data, "gestor_echo_plugin");
        let (code, err) = refused_with(&args);
        assert_ne!(code, 0, "{storage}: must refuse to start");
        assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
        assert!(
            err.contains("refusing to start") && err.contains(&data.display().to_string()),
            "{storage}: {err}"
        );
    }
}

fn refused(plugin: &str, transport: TransportKind) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let (_url, args) = node_args(transport, "sqlite", &dir.path().join("data"), plugin);
    refused_with(&args)
}

fn refuses_a_file_that_is_not_a_plugin(transport: TransportKind) {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libfake.so");
    std::fs::write(&fake, b"this is not an ELF file").unwrap();
    let (code, err) = refused(&fake.display().to_string(), transport);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
    assert!(
        err.contains(&fake.display().to_string()) && err.contains("not a loadable library"),
        "{err}"
    );

    let missing = dir.path().join("libmissing.so");
    let (code, err) = refused(&missing.display().to_string(), transport);
    assert_ne!(code, 0);
    assert!(
        err.contains("not found") && err.contains("libmissing.so"),
        "{err}"
    );
}

fn refuses_an_incompatible_plugin(transport: TransportKind) {
    let bad = plugin_path("gestor_bad_abi_plugin");
    let (code, err) = refused(&bad.display().to_string(), transport);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
    assert!(err.contains("incompatible ABI fingerprint"), "{err}");
    assert!(
        err.contains(&bad.display().to_string()),
        "names the file: {err}"
    );
    assert!(
        err.contains("rustc 1.0.0"),
        "shows the plugin's fingerprint: {err}"
    );
    assert!(
        err.contains(env!("CARGO_PKG_VERSION")),
        "shows the host's fingerprint: {err}"
    );
}

macro_rules! host_suite {
    ($($backend:ident => $kind:expr),*) => { $(
        mod $backend {
            use super::*;
            #[test] fn loads_example_plugin_and_answers() { super::loads_example_plugin_and_answers($kind) }
            #[test] fn rust_log_filters_plugin_targets() { super::rust_log_filters_plugin_targets($kind) }
            #[test] fn panicking_handler_gets_error_reply() { super::panicking_handler_gets_error_reply($kind) }
            #[test] fn garbage_frames_get_error_replies() { super::garbage_frames_get_error_replies($kind) }
            #[test] fn refuses_a_file_that_is_not_a_plugin() { super::refuses_a_file_that_is_not_a_plugin($kind) }
            #[test] fn refuses_an_incompatible_plugin() { super::refuses_an_incompatible_plugin($kind) }
            #[test] fn refuses_to_start_on_a_corrupt_data_file() { super::refuses_to_start_on_a_corrupt_data_file($kind) }
        }
    )* };
}

host_suite!(nng => TransportKind::Nng, zmq => TransportKind::Zmq);
