//! Chat on a 5-gestor ring, for every backend combination (nng/zmq ×
//! sqlite/sled): direct messages both ways, presence push, the outbox across
//! an offline recipient and a sender restart, de-duplication, the offline
//! mailbox with the sender gone (through the real `gestor chat`/`login`/
//! `inbox` commands), and an undeliverable message reported to its sender.
//!
//! Behaviour is asserted with generous deadlines; latencies are printed
//! (run with `--nocapture` to see them), never asserted.

use gestor::config::{StorageKind, TransportKind};
use gestor_client::chat::{
    send_direct, Accepted, ChatClient, ChatEvent, ChatMessage, Presence, Via,
};
use gestor_tests::chat::{poll, ChatUser};
use gestor_tests::cluster::client_layer;
use gestor_tests::ring::Ring;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const NODES: usize = 5;
const DEADLINE: Duration = Duration::from_secs(20);

/// One ring at a time: the machine has few cores and the rings are real processes.
static SERIAL: Mutex<()> = Mutex::new(());

fn texts(list: &[ChatMessage], from: &str) -> Vec<String> {
    list.iter()
        .filter(|m| m.from == from)
        .map(|m| m.text.clone())
        .collect()
}

fn wait_inbox(c: &ChatClient, from: &str, want: &[String]) -> Vec<String> {
    poll(DEADLINE, || {
        let got = texts(&c.inbox().ok()?, from);
        (got.len() >= want.len()).then_some(got)
    })
    .unwrap_or_else(|| texts(&c.inbox().unwrap_or_default(), from))
}

/// Wait for a presence event about `user` matching `want`; returns it and when it came.
fn wait_presence(
    c: &ChatClient,
    user: &str,
    want: impl Fn(&Presence) -> bool,
) -> Option<(Presence, Instant)> {
    let until = Instant::now() + DEADLINE;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match c.events().recv_timeout(left) {
            Ok(ChatEvent::Presence(p)) if p.user == user && want(&p) => {
                return Some((p, Instant::now()))
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

fn drain(c: &ChatClient) {
    while c.events().try_recv().is_ok() {}
}

fn chat_on_ring(transport: TransportKind, storage: StorageKind) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let tag = format!("{transport}/{storage}");
    let ring = Ring::start(NODES, transport, storage);
    ring.wait_stable(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("ring did not form: {e}\n{}", ring.logs()));

    // --- two clients online, both ways; the message goes peer to peer -------
    let ana = ChatUser::register(&ring, "ana");
    let ben = ChatUser::register(&ring, "ben");
    let a = ana.start(&ring, |o| o.contacts = vec!["ben".into()]);
    let b = ben.start(&ring, |o| o.contacts = vec!["ana".into()]);
    let alive_ms = a.session().alive_every_ms;
    let mut latencies = Vec::new();
    for i in 1..=5 {
        let text = format!("hello ben {i}");
        let t0 = Instant::now();
        a.send("ben", &text).expect("send");
        let got = poll(DEADLINE, || {
            b.inbox()
                .ok()?
                .iter()
                .any(|m| m.text == text)
                .then(Instant::now)
        });
        let at = got.unwrap_or_else(|| panic!("[{tag}] ben never got {text:?}"));
        latencies.push(at.duration_since(t0));
    }
    println!(
        "[{tag}] ana→ben, both online: latency per message {:?} (max {:?})",
        latencies,
        latencies.iter().max()
    );
    b.send("ana", "hi ana").expect("send");
    b.send("ana", "how are you").expect("send");
    assert_eq!(
        wait_inbox(&a, "ben", &["hi ana".into(), "how are you".into()]),
        vec!["hi ana", "how are you"],
        "[{tag}] ben→ana in order"
    );
    assert_eq!(
        texts(&b.inbox().expect("inbox"), "ana"),
        (1..=5)
            .map(|i| format!("hello ben {i}"))
            .collect::<Vec<_>>(),
        "[{tag}] ana→ben once each, in order"
    );
    let direct = poll(Duration::from_secs(5), || {
        a.events().try_iter().find_map(|e| match e {
            ChatEvent::Sent { via, to, .. } if to == "ben" => Some(via),
            _ => None,
        })
    });
    assert_eq!(direct, Some(Via::Direct), "[{tag}] online → sent directly");

    // --- a duplicate is shown once ---------------------------------------------
    let dup = ChatMessage {
        id: gestor_client::chat::new_id(),
        from: "ana".into(),
        to: "ben".into(),
        seq: 6,
        sent_ms: 1,
        text: "only once".into(),
    };
    let t = client_layer(transport);
    let first = send_direct(t.clone(), &ben.address, &dup, Duration::from_secs(5)).expect("send");
    let second = send_direct(t.clone(), &ben.address, &dup, Duration::from_secs(5)).expect("send");
    assert_eq!((first, second), (Accepted::Delivered, Accepted::Duplicate));
    let count = b
        .inbox()
        .expect("inbox")
        .iter()
        .filter(|m| m.id == dup.id)
        .count();
    assert_eq!(count, 1, "[{tag}] duplicate shown once");
    // The wrong recipient refuses (an address reused by another user).
    assert!(send_direct(t, &ana.address, &dup, Duration::from_secs(5)).is_err());

    // --- presence push: offline, then online at a new address ----------------
    drain(&a);
    let t0 = Instant::now();
    b.quit().expect("ben logs out");
    let (p, at) = wait_presence(&a, "ben", |p| !p.online)
        .unwrap_or_else(|| panic!("[{tag}] no offline event for ben"));
    assert!(p.exists);
    println!(
        "[{tag}] presence: ben offline event after {:?} (two alive periods = {} ms)",
        at.duration_since(t0),
        2 * alive_ms
    );
    let new_address = format!("127.0.0.1:{}", gestor_tests::ports::free_port());
    let t0 = Instant::now();
    let b = ben.start(&ring, |o| o.address = new_address.clone());
    let (p, at) = wait_presence(&a, "ben", |p| p.online)
        .unwrap_or_else(|| panic!("[{tag}] no online event for ben"));
    assert_eq!(
        p.address, new_address,
        "[{tag}] the event carries the new address"
    );
    println!(
        "[{tag}] presence: ben online at a new address, event after {:?} (two alive periods = {} ms)",
        at.duration_since(t0),
        2 * alive_ms
    );
    a.send("ben", "at your new address").expect("send");
    assert!(
        wait_inbox(&b, "ana", &vec![String::new(); 7]).contains(&"at your new address".to_string()),
        "[{tag}] delivered at the new address"
    );
    b.stop();
    a.stop();

    // --- outbox: recipient offline, then back; then a sender restart ---------
    let cora = ChatUser::register(&ring, "cora");
    let dan = ChatUser::register(&ring, "dan");
    let outbox_only = |o: &mut gestor_client::chat::ChatOptions| {
        o.use_mailbox = false;
        o.contacts = vec!["dan".into()];
        // The fallback timer is long: delivery must follow the presence event.
        o.retry_every = Duration::from_secs(30);
    };
    let c = cora.start(&ring, outbox_only);
    for i in 1..=3 {
        c.send("dan", &format!("queued {i}")).expect("send");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        c.outbox_len().expect("outbox"),
        3,
        "[{tag}] dan offline: kept"
    );
    let d = dan.start(&ring, |_| {});
    let want: Vec<String> = (1..=3).map(|i| format!("queued {i}")).collect();
    assert_eq!(
        wait_inbox(&d, "cora", &want),
        want,
        "[{tag}] outbox delivered in order"
    );
    d.quit().expect("dan logs out");
    // Wait until cora knows dan is gone, so the next ones stay in her outbox.
    poll(DEADLINE, || {
        c.contacts()
            .ok()?
            .iter()
            .any(|(u, p)| u == "dan" && p.as_ref().is_some_and(|p| !p.online))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("[{tag}] cora never saw dan offline"));
    for i in 4..=6 {
        c.send("dan", &format!("queued {i}")).expect("send");
    }
    std::thread::sleep(Duration::from_millis(300));
    c.stop(); // like a crash: the outbox stays on disk
    let d = dan.start(&ring, |_| {});
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        texts(&d.inbox().expect("inbox"), "cora").len(),
        3,
        "[{tag}] nothing while cora is away"
    );
    let c = cora.start(&ring, outbox_only);
    let want: Vec<String> = (1..=6).map(|i| format!("queued {i}")).collect();
    assert_eq!(
        wait_inbox(&d, "cora", &want),
        want,
        "[{tag}] a restarted sender delivers its outbox, once each, in order"
    );
    c.stop();
    d.stop();

    // --- an undeliverable message is reported to its sender -------------------
    let eva = ChatUser::register(&ring, "eva");
    let _fred = ChatUser::register(&ring, "fred");
    let e = eva.start(&ring, |o| {
        o.use_mailbox = false;
        o.max_age = Duration::from_millis(300);
        o.retry_every = Duration::from_millis(200);
    });
    e.send("fred", "you will not get this").expect("send");
    let failure = poll(DEADLINE, || {
        e.events().try_iter().find_map(|ev| match ev {
            ChatEvent::Undeliverable(f) => Some(f),
            _ => None,
        })
    })
    .unwrap_or_else(|| panic!("[{tag}] no undeliverable report"));
    assert_eq!(failure.message.to, "fred");
    assert_eq!(e.store().failures().expect("failures").len(), 1);
    assert_eq!(e.outbox_len().expect("outbox"), 0);
    e.stop();

    // --- must-show: alice sends 20 while bob is offline, quits; bob's inbox ---
    let alice = ChatUser::register(&ring, "alice");
    let bob = ChatUser::register(&ring, "bob");
    let mut chat = alice.spawn_chat(&ring, &["--contact", "bob"]);
    chat.expect("listening on", DEADLINE)
        .unwrap_or_else(|| panic!("[{tag}] gestor chat alice did not start: {}", chat.stderr()));
    for i in 1..=20 {
        chat.say(&format!("/send bob message {i}"));
    }
    chat.say("/quit");
    assert_eq!(
        chat.finish(DEADLINE),
        Some(0),
        "[{tag}] chat exit: {}",
        chat.stderr()
    );
    let mailboxed = chat
        .seen
        .iter()
        .filter(|l| l.contains("to bob: left in the mailbox"))
        .count();
    assert_eq!(
        mailboxed, 20,
        "[{tag}] all 20 in bob's mailbox: {:?}",
        chat.seen
    );
    // Held by bob's gestor and copied to its successors.
    let held = poll(Duration::from_secs(10), || {
        let total: u64 = ring
            .urls()
            .iter()
            .filter_map(|u| ring.status(u))
            .filter_map(|s| s.pointer("/sections/mailbox/held")?.as_u64())
            .sum();
        (total >= 60).then_some(total)
    });
    println!(
        "[{tag}] bob's 20 messages are held {held:?} times across the ring (owner + 2 copies)"
    );
    assert!(held.is_some(), "[{tag}] mailbox copies on the successors");
    let (code, _, err) = bob.cli(&ring, &["login", "bob", "--address", &bob.address]);
    assert_eq!(code, 0, "{err}");
    let (list, raw) = bob.inbox_json(&ring);
    println!(
        "[{tag}] gestor inbox bob --json (first 2 of {}):",
        list.len()
    );
    for m in list.iter().take(2) {
        println!("  {}", serde_json::to_string(m).unwrap_or_default());
    }
    let want: Vec<String> = (1..=20).map(|i| format!("message {i}")).collect();
    assert_eq!(
        texts(&list, "alice"),
        want,
        "[{tag}] 20, once each, in order:\n{raw}"
    );
    let seqs: Vec<u64> = list.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
    let (again, _) = bob.inbox_json(&ring);
    assert_eq!(again.len(), 20, "[{tag}] fetching again adds nothing");

    // With both online, a message reaches bob's inbox (measured, printed).
    let a = alice.start(&ring, |o| o.contacts = vec!["bob".into()]);
    let b = bob.start(&ring, |_| {});
    let t0 = Instant::now();
    a.send("bob", "are you there?").expect("send");
    let at = poll(DEADLINE, || {
        b.inbox()
            .ok()?
            .iter()
            .any(|m| m.text == "are you there?")
            .then(Instant::now)
    })
    .unwrap_or_else(|| panic!("[{tag}] bob never got the live message"));
    println!(
        "[{tag}] alice→bob with both online: in bob's inbox after {:?}",
        at.duration_since(t0)
    );
    // The scriptable twin: `gestor send` while bob's chat client runs.
    let (code, out, err) = bob.cli(
        &ring,
        &["send", "bob", "alice", "sent with gestor send", "--json"],
    );
    assert_eq!(code, 0, "gestor send: {err}");
    assert!(
        out.contains("\"status\": \"direct\""),
        "[{tag}] alice online → direct: {out}"
    );
    assert!(wait_inbox(&a, "bob", &[String::new()]).contains(&"sent with gestor send".to_string()));
    a.stop();
    b.stop();
}

/// The mailbox outlives the gestor holding it: its successor has the copy.
fn mailbox_after_owner_failure(transport: TransportKind, storage: StorageKind) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let tag = format!("{transport}/{storage}");
    let mut ring = Ring::start(NODES, transport, storage);
    ring.wait_stable(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("ring did not form: {e}\n{}", ring.logs()));
    let alice = ChatUser::register(&ring, "alice");
    let bob = ChatUser::register(&ring, "bob");
    let a = alice.start(&ring, |_| {});
    for i in 1..=5 {
        a.send("bob", &format!("before the failure {i}"))
            .expect("send");
    }
    assert!(a.flush(DEADLINE), "[{tag}] handed off to the mailbox");
    a.quit().expect("alice logs out");
    let held = poll(Duration::from_secs(10), || {
        let total: u64 = ring
            .urls()
            .iter()
            .filter_map(|u| ring.status(u))
            .filter_map(|s| s.pointer("/sections/mailbox/held")?.as_u64())
            .sum();
        (total >= 15).then_some(total)
    });
    assert!(held.is_some(), "[{tag}] copies on the successors");
    let mut c = gestor_client::client::Client::new(client_layer(transport), ring.urls(), DEADLINE);
    let owner = c.lookup("bob").expect("lookup bob").gestor;
    let victim = ring
        .nodes
        .iter()
        .position(|n| n.url == owner)
        .expect("bob's gestor is a ring member");
    ring.nodes[victim].kill();
    ring.wait_stable(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("ring did not recover: {e}\n{}", ring.logs()));
    let logged_in = poll(Duration::from_secs(30), || {
        let (code, _, _) = bob.cli(&ring, &["login", "bob", "--address", &bob.address]);
        (code == 0).then_some(())
    });
    assert!(logged_in.is_some(), "[{tag}] bob logs in after the failure");
    let (list, raw) = bob.inbox_json(&ring);
    let want: Vec<String> = (1..=5).map(|i| format!("before the failure {i}")).collect();
    assert_eq!(texts(&list, "alice"), want, "[{tag}] from the copy:\n{raw}");
    println!("[{tag}] bob's gestor {owner} killed; its successor delivered all 5 from its copy");
}

/// A message left in a mailbox and never fetched expires after the
/// configured age and comes back to its sender as a bounce (reported, not
/// dropped silently) — even though the sender had quit meanwhile.
fn mailbox_expiry_bounces(transport: TransportKind, storage: StorageKind) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let tag = format!("{transport}/{storage}");
    let config = format!(
        "{}\n[plugins.config.gestor_mailbox]\nttl_ms = 1000\nexpire_every_ms = 200\n",
        gestor_tests::ring::TEST_CONFIG
    );
    let ring = Ring::start_with_config(3, transport, storage, &config);
    ring.wait_stable(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("ring did not form: {e}\n{}", ring.logs()));
    let alice = ChatUser::register(&ring, "alice");
    let _bob = ChatUser::register(&ring, "bob"); // never logs in
    let a = alice.start(&ring, |_| {});
    let sent = a.send("bob", "nobody reads this").expect("send");
    assert!(a.flush(DEADLINE), "[{tag}] handed off to the mailbox");
    a.quit().expect("alice logs out");

    // Alice comes back; her own mailbox holds the bounce.
    let a = alice.start(&ring, |_| {});
    let bounced = poll(Duration::from_secs(30), || {
        a.store()
            .failures()
            .ok()?
            .into_iter()
            .find(|f| f.message.id == sent.id)
    });
    let failure =
        bounced.unwrap_or_else(|| panic!("[{tag}] the expired message never came back to alice"));
    assert_eq!(failure.message.text, "nobody reads this");
    assert!(!failure.reason.is_empty(), "[{tag}] the bounce says why");
    println!(
        "[{tag}] expired mail reported to its sender: {}",
        failure.reason
    );
    a.quit().expect("alice logs out");
}

gestor_tests::matrix!(
    chat => chat_on_ring,
    mailbox_after_owner_failure => mailbox_after_owner_failure,
    mailbox_expiry_bounces => mailbox_expiry_bounces
);
