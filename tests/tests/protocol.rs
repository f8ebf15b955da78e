//! docs/PROTOCOL.md and the code agree, for the statements a client written
//! from the document alone relies on and that once disagreed (issue 11,
//! item 5): on a real ring on every backend combination, and, where the
//! document states a constant, an example or a layout, read from the
//! document itself. Envelope rules are checked frame by frame in
//! `host_plugins.rs`; the Python client checks the same rules from outside
//! (`python_client.rs`).

use gestor::config::{StorageKind, TransportKind};
use gestor_api::chat::ChatMessage;
use gestor_api::mail::{self, PutMail};
use gestor_api::user::{self, Auth, Credentials};
use gestor_api::{node, topics};
use gestor_client::client::{Client, ClientError};
use gestor_sdk::wire::{decode_request, to_cbor, to_value, MAX_DEPTH};
use gestor_sdk::{ErrorCode, HandlerError, Kind, Request, TransportOptions, Value};
use gestor_tests::cluster::{call, client_layer, field, map, request, wait_until};
use gestor_tests::ring::Ring;
use std::collections::BTreeSet;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);
const PW: &str = "pw-protocol";

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    std::fs::read_to_string(path).expect("docs/PROTOCOL.md")
}

/// The text of the section whose heading line starts with `heading`, up to
/// the next heading of any level.
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start = doc
        .find(&format!("\n{heading}"))
        .unwrap_or_else(|| panic!("no heading {heading:?} in PROTOCOL.md"));
    let body = &doc[start + 1..];
    let end = body[1..].find("\n#").map_or(body.len(), |i| i + 1);
    &body[..end]
}

/// The `backticked` words of `text`.
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// §9's address examples, as the document gives them: (valid, invalid).
fn address_examples() -> (Vec<String>, Vec<String>) {
    let rules = section(&doc(), "## 9.").to_string();
    let valid_at = rules.find("\nValid:").expect("§9 has a Valid: line");
    let invalid_at = rules.find("\nInvalid:").expect("§9 has an Invalid: line");
    let end = rules[invalid_at..]
        .find("\n\n")
        .map_or(rules.len(), |i| invalid_at + i);
    let valid = backticked(&rules[valid_at..invalid_at]);
    let mut invalid = backticked(&rules[invalid_at..end]);
    assert!(
        rules[invalid_at..end].contains("the empty string"),
        "§9 lists the empty address as invalid"
    );
    invalid.push(String::new());
    (valid, invalid)
}

#[test]
fn the_document_states_what_the_code_does() {
    let doc = doc();
    // §4: the nesting limit is the decoder's.
    let cbor = section(&doc, "## 4.");
    assert!(
        cbor.contains(&format!("nested at most {MAX_DEPTH} levels deep"))
            && cbor.contains(&format!("nested deeper than {MAX_DEPTH} levels")),
        "§4 must state the limit of {MAX_DEPTH} levels and its message"
    );
    // §15: the ping's exact bytes are what the code sends and accepts.
    let example = section(&doc, "## 15.");
    let line = example
        .lines()
        .find(|l| l.starts_with("request "))
        .expect("§15 shows the ping request bytes");
    let bytes: Vec<u8> = line
        .split_whitespace()
        .skip(1)
        .map(|h| u8::from_str_radix(h, 16).expect("hex byte"))
        .collect();
    assert_eq!(bytes, to_cbor(&Request::new(node::Ping::NAME, Value::Null)));
    let decoded = decode_request(&bytes).expect("the §15 ping decodes");
    assert_eq!(decoded.kind, node::Ping::NAME);
    // §15: a repeated logout is answered ok, as §7 says and the code does.
    let again = example
        .find("(the same request again")
        .expect("§15 shows a repeated logout");
    let answer = example[again..]
        .lines()
        .find(|l| l.starts_with('←'))
        .expect("and its answer");
    assert!(answer.contains(r#""ok": true"#), "§15: {answer}");
    // §18.3: the mail.put table lists exactly the keys of the flat body.
    let mailbox = section(&doc, "### 18.3");
    let put = &mailbox[mailbox.find("**`mail.put`**").expect("§18.3 mail.put")..];
    let table: Vec<String> = put[..put.find("```").expect("the example")]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| backticked(l).into_iter().next())
        .collect();
    let body = to_value(&PutMail {
        token: "t".into(),
        mail: ChatMessage {
            id: "i".into(),
            from: "f".into(),
            to: "t".into(),
            seq: 1,
            sent_ms: 1,
            text: "x".into(),
        },
    });
    let keys: Vec<String> = body
        .as_map()
        .expect("a map")
        .iter()
        .map(|(k, _)| k.as_text().expect("text keys").to_string())
        .collect();
    assert_eq!(table, keys, "§18.3's mail.put table against the body sent");
    // §14: the upkeep kinds listed are exactly those `gestor-api` marks.
    let internal = section(&doc, "## 14.");
    let from = internal
        .find("marked **upkeep**:")
        .expect("§14 lists the upkeep kinds");
    let listed = &internal[from..];
    let listed: BTreeSet<String> = backticked(&listed[..listed.find('—').expect("list ends")])
        .into_iter()
        .collect();
    let marked: BTreeSet<String> = gestor_api::all()
        .iter()
        .filter(|k| k.upkeep)
        .map(|k| k.name.to_string())
        .collect();
    assert_eq!(listed, marked, "§14's upkeep kinds against gestor-api's");
    // §9: the examples are the validator's (on the wire: below).
    let (valid, invalid) = address_examples();
    assert!(
        valid.len() >= 3 && invalid.len() >= 10,
        "{valid:?} {invalid:?}"
    );
}

fn client(ring: &Ring, url: &str) -> Client {
    Client::new(
        client_layer(ring.transport),
        vec![url.to_string()],
        Duration::from_secs(10),
    )
}

/// The error reply `result` must be.
fn refused<T: std::fmt::Debug>(result: Result<T, ClientError>) -> HandlerError {
    match result {
        Err(ClientError::Remote(e)) => e,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

fn register_at(
    ring: &Ring,
    url: &str,
    name: &str,
    password: &str,
    address: Option<&str>,
) -> Result<user::Registered, ClientError> {
    request::<user::Register>(
        url,
        ring.transport,
        &Credentials {
            username: name.into(),
            password: password.into(),
            address: address.map(str::to_string),
        },
    )
}

/// §9: the document's examples, on every request that takes an address.
fn addresses(ring: &Ring, url: &str) {
    let (valid, invalid) = address_examples();
    let mut c = client(ring, url);
    c.register("addr-user", PW).expect("register");
    let session = c.login("addr-user", PW, "127.0.0.1:5000").expect("login");
    for (i, bad) in invalid.iter().enumerate() {
        let name = format!("addr-bad{i}");
        let e = refused(register_at(ring, url, &name, PW, Some(bad)));
        assert_eq!(e.code, ErrorCode::BadRequest, "register at {bad:?}: {e}");
        let e = refused(c.login("addr-user", PW, bad));
        assert_eq!(e.code, ErrorCode::BadRequest, "login at {bad:?}: {e}");
        let e = refused(c.set_address("addr-user", &session.token, bad));
        assert_eq!(e.code, ErrorCode::BadRequest, "set_address {bad:?}: {e}");
    }
    assert_eq!(c.lookup("addr-user").unwrap().address, "127.0.0.1:5000");
    for (i, good) in valid.iter().enumerate() {
        let name = format!("addr-ok{i}");
        register_at(ring, url, &name, PW, Some(good))
            .unwrap_or_else(|e| panic!("register at {good:?}: {e}"));
        assert_eq!(&c.lookup(&name).unwrap().address, good);
        c.set_address("addr-user", &session.token, good)
            .unwrap_or_else(|e| panic!("set_address {good:?}: {e}"));
        assert_eq!(&c.lookup("addr-user").unwrap().address, good);
    }
}

/// §7: a register retry is the same request; anything else is refused
/// and leaves the account as it was.
fn register_retries(ring: &Ring, url: &str) {
    let (a, b) = (Some("127.0.0.1:6001"), Some("127.0.0.1:6002"));
    let name = "retry-user";
    register_at(ring, url, name, PW, a).expect("register");
    let again = register_at(ring, url, name, PW, a).expect("the same register again");
    assert_eq!(again.username, name);
    let e = refused(register_at(ring, url, name, PW, b));
    assert_eq!(e.code, ErrorCode::Conflict, "another address: {e}");
    assert!(e.message.contains("another address"), "{e}");
    let e = refused(register_at(ring, url, name, PW, Some("h:080")));
    assert_eq!(e.code, ErrorCode::BadRequest, "an invalid address: {e}");
    let e = refused(register_at(ring, url, name, PW, None));
    assert_eq!(
        e.code,
        ErrorCode::Conflict,
        "no address is the empty one: {e}"
    );
    let e = refused(register_at(ring, url, name, "pw-other", a));
    assert_eq!(e.code, ErrorCode::Conflict, "another password: {e}");
    assert!(e.message.contains("is taken"), "{e}");
    let mut c = client(ring, url);
    assert_eq!(c.lookup(name).unwrap().address, a.unwrap(), "unchanged");
    // Once logged in elsewhere, the original register is no retry.
    c.login(name, PW, "127.0.0.1:6003").expect("login");
    let e = refused(register_at(ring, url, name, PW, a));
    assert_eq!(e.code, ErrorCode::Conflict, "{e}");
    assert_eq!(c.lookup(name).unwrap().address, "127.0.0.1:6003");
}

/// §7 and §15: a logout without a session answers ok; with a session, only
/// its token ends it.
fn repeated_logout(ring: &Ring, url: &str) {
    let mut c = client(ring, url);
    c.register("logout-user", PW).expect("register");
    let s = c.login("logout-user", PW, "127.0.0.1:6100").expect("login");
    assert!(c.logout("logout-user", &s.token).unwrap().ok);
    assert!(c.logout("logout-user", &s.token).unwrap().ok, "repeated");
    assert!(
        c.logout("logout-user", &"0".repeat(32)).unwrap().ok,
        "no session: any token"
    );
    let e = refused(c.set_address("logout-user", &s.token, "127.0.0.1:6101"));
    assert_eq!(e.code, ErrorCode::Unauthorized, "the old token is dead");
    let s = c.login("logout-user", PW, "127.0.0.1:6100").expect("login");
    let e = refused(c.logout("logout-user", &"0".repeat(32)));
    assert_eq!(e.code, ErrorCode::Unauthorized, "a session, another token");
    assert!(c.lookup("logout-user").unwrap().online, "still logged in");
    assert!(c.logout("logout-user", &s.token).unwrap().ok);
}

/// A `mail.put` body as the document gives it: one flat map.
fn put_body(token: &str, id: &str, to: &str, seq: Value) -> Vec<(&'static str, Value)> {
    let text = |s: &str| Value::Text(s.into());
    vec![
        ("token", text(token)),
        ("id", text(id)),
        ("from", text("mail-from")),
        ("to", text(to)),
        ("seq", seq),
        ("sent_ms", Value::Integer(1_795_718_972_360u64.into())),
        ("text", text("left in the mailbox")),
    ]
}

/// §18.3: the flat body, `seq` from 1, de-duplication by id, the errors.
fn mail_put(ring: &Ring, url: &str) {
    let mut c = client(ring, url);
    c.register("mail-from", PW).expect("register");
    c.register("mail-to", PW).expect("register");
    let token = c.login("mail-from", PW, "127.0.0.1:6200").unwrap().token;
    let put = |pairs: &[(&str, Value)]| call(url, ring.transport, mail::Put::NAME, map(pairs));
    let one = Value::Integer(1.into());
    let id = "0123456789abcdef0123456789abcdef";
    let stored = |v: Value| field(&v, "stored").cloned().expect("stored");
    let first = put(&put_body(&token, id, "mail-to", one.clone())).expect("a flat body");
    assert_eq!(stored(first), Value::Bool(true));
    let again = put(&put_body(&token, id, "mail-to", one.clone())).expect("again");
    assert_eq!(stored(again), Value::Bool(false), "a retried put");
    let other_seq = put(&put_body(&token, id, "mail-to", Value::Integer(2.into())));
    assert_eq!(stored(other_seq.unwrap()), Value::Bool(false), "same id");

    let fresh = "fedcba9876543210fedcba9876543210";
    let flat = put_body(&token, fresh, "mail-to", one.clone());
    let nested = [("token", flat[0].1.clone()), ("mail", map(&flat[1..]))];
    let e = refused(put(&nested));
    assert_eq!(e.code, ErrorCode::BadRequest, "a nested message: {e}");
    assert!(e.message.contains("missing field"), "{e}");
    for (seq, what) in [
        (Value::Integer(0.into()), "seq 0"),
        (Value::Float(1.0), "a float seq"),
        (Value::Integer((-1).into()), "a negative seq"),
    ] {
        let e = refused(put(&put_body(&token, fresh, "mail-to", seq)));
        assert_eq!(e.code, ErrorCode::BadRequest, "{what}: {e}");
    }
    let mut bytes_key = map(&flat);
    if let Value::Map(entries) = &mut bytes_key {
        entries[1].0 = Value::Bytes(b"id".to_vec());
    }
    let e = refused(call(url, ring.transport, mail::Put::NAME, bytes_key));
    assert_eq!(e.code, ErrorCode::BadRequest, "a byte-string key: {e}");
    let mut twice = flat.clone();
    twice.push(("seq", Value::Integer(2.into())));
    let e = refused(put(&twice));
    assert_eq!(e.code, ErrorCode::BadRequest, "a key twice: {e}");
    let e = refused(put(&put_body(
        &"0".repeat(32),
        fresh,
        "mail-to",
        one.clone(),
    )));
    assert_eq!(e.code, ErrorCode::Unauthorized, "{e}");
    let e = refused(put(&put_body(&token, fresh, "mail-nobody", one)));
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");

    let inbox = c.login("mail-to", PW, "127.0.0.1:6201").unwrap();
    let held = request::<mail::Fetch>(
        url,
        ring.transport,
        &Auth {
            username: "mail-to".into(),
            token: inbox.token,
        },
    )
    .expect("fetch");
    let ids: Vec<&str> = held.messages.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, [id], "held once, nothing refused was stored");
    assert_eq!(held.messages[0].seq, 1);
}

/// §3: which bad signals `node.status` counts in `malformed_signals`.
fn bad_signals_are_counted(ring: &Ring, url: &str) {
    let mut c = client(ring, url);
    c.register("signal-user", PW).expect("register");
    let session = c.login("signal-user", PW, "127.0.0.1:6300").unwrap();
    let mut publisher = client_layer(ring.transport)
        .publisher_via(
            &session.gestor,
            &session.signal,
            &TransportOptions::default(),
            Duration::from_secs(5),
        )
        .expect("a sealed publisher");
    let counted = || {
        ring.status(&session.gestor).expect("status")["malformed_signals"]
            .as_u64()
            .expect("malformed_signals")
    };
    let alive = to_cbor(&Auth {
        username: "signal-user".into(),
        token: session.token.clone(),
    });
    let mut trailing = alive.clone();
    trailing.push(0x00);
    let mut deep = Value::Array(Vec::new());
    for _ in 1..=MAX_DEPTH {
        deep = Value::Array(vec![deep]);
    }
    let cases = [
        (vec![0xff, 0x00], "not CBOR"),
        (trailing, "bytes after the item"),
        (to_cbor(&Value::Tag(0, Box::new(Value::Null))), "a tag"),
        (to_cbor(&deep), "nested too deep"),
    ];
    for (payload, what) in cases {
        let before = counted();
        // Signals can be lost (§8): send until one is counted.
        assert!(
            wait_until(Duration::from_secs(15), || {
                let _ = publisher.publish(topics::ALIVE.as_bytes(), &payload);
                counted() > before
            }),
            "[{}/{}] a signal payload with {what} was not counted",
            ring.transport,
            ring.storage
        );
    }
}

fn document_and_code_agree(transport: TransportKind, storage: StorageKind) {
    let ring = Ring::start(2, transport, storage);
    ring.wait_stable(DEADLINE)
        .unwrap_or_else(|e| panic!("ring did not form: {e}\n{}", ring.logs()));
    let urls = ring.urls();
    addresses(&ring, &urls[0]);
    register_retries(&ring, &urls[1]);
    repeated_logout(&ring, &urls[0]);
    mail_put(&ring, &urls[1]);
    bad_signals_are_counted(&ring, &urls[0]);
}

gestor_tests::matrix!(on_ring => document_and_code_agree);
