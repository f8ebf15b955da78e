//! The closed ring, attacked as an outsider would, on every backend
//! combination (nng/zmq × sqlite/sled), with real `gestor node` processes.

use gestor::config::{StorageKind, TransportKind};
use gestor_api::user::{self, Credentials};
use gestor_client::client::{Client, ClientError};
use gestor_client::directory::AliveSender;
use gestor_sdk::{Empty, ErrorCode, KindClass, Value};
use gestor_secure::{ClusterKey, CredentialFile};
use gestor_tests::cluster::{
    client_layer, run_cli, test_cluster, wait_until, NodeProc, TestCluster,
};
use gestor_tests::relay::contains;
use gestor_tests::ring::Ring;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

fn client(ring: &Ring, url: &str) -> Client {
    Client::new(
        client_layer(ring.transport),
        vec![url.to_string()],
        Duration::from_secs(10),
    )
}

/// Every byte of register, login, lookup, alive, replication and mail
/// traffic crosses recording relays; none of the secrets may show.
fn nothing_readable_on_the_wire(transport: TransportKind, storage: StorageKind) {
    let mut ring = Ring::start(0, transport, storage);
    for _ in 0..3 {
        ring.add_relayed_node();
    }
    ring.wait_stable(DEADLINE)
        .unwrap_or_else(|e| panic!("relayed ring did not form: {e}"));
    let urls = ring.urls();
    let users = ["zqxwvuser1", "zqxwvuser2", "zqxwvuser3"];
    let passwords = ["pw-Kq7Yt3Lm", "pw-Hs8Zr2Np", "pw-Ux4Wd9Jc"];
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    for (i, (user, pw)) in users.iter().zip(passwords).enumerate() {
        let mut c = client(&ring, &urls[i % urls.len()]);
        c.register(user, pw).expect("register");
        let address = format!("127.0.0.1:{}", 47_110 + i);
        let session = c.login(user, pw, &address).expect("login");
        let found = client(&ring, &urls[(i + 1) % urls.len()])
            .lookup(user)
            .expect("lookup");
        assert_eq!(found.address, address);
        // Alive signals, sealed with a session made with the responsible gestor.
        let secure = client_layer(transport);
        let mut alive = AliveSender::new(&secure, &session).expect("alive sender");
        assert!(
            wait_until(Duration::from_secs(15), || {
                let _ = alive.beat();
                client(&ring, &urls[i % urls.len()])
                    .lookup(user)
                    .map(|f| f.online)
                    .unwrap_or(false)
            }),
            "{user} never went online through the relays"
        );
        secrets.extend([
            user.as_bytes().to_vec(),
            pw.as_bytes().to_vec(),
            address.as_bytes().to_vec(),
            session.token.as_bytes().to_vec(),
        ]);
    }
    // Mail to an offline user (logged out), left in the mailbox on the ring.
    let last = client(&ring, &urls[0])
        .login(users[2], passwords[2], "127.0.0.1:47112")
        .expect("login");
    client(&ring, &urls[0])
        .logout(users[2], &last.token)
        .expect("logout");
    secrets.push(last.token.as_bytes().to_vec());
    let mail_text = "zqxwv-mail-body-Rt5Pk";
    let home = tempfile::tempdir().unwrap();
    let (code, _, err) = run_cli(
        &[
            "send",
            users[0],
            users[2],
            mail_text,
            "--address",
            "127.0.0.1:47120",
            "--gestor",
            &urls[0],
            "--transport",
            &transport.to_string(),
        ],
        &[
            ("GESTOR_HOME", &home.path().display().to_string()),
            ("GESTOR_PASSWORD", passwords[0]),
            ("RUST_LOG", "off"),
        ],
    );
    assert_eq!(code, 0, "gestor send: {err}");
    secrets.push(mail_text.as_bytes().to_vec());
    secrets.push(b"$argon2id$".to_vec());
    // Replication has run (every record on 3 gestores) before we look.
    ring.wait_copies(3, users.len(), DEADLINE)
        .unwrap_or_else(|e| panic!("copies: {e}"));

    let captured = ring.captured();
    assert!(
        captured.len() > 10_000,
        "[{transport}/{storage}] the relays saw only {} bytes: traffic bypassed them",
        captured.len()
    );
    for secret in &secrets {
        assert!(
            !contains(&captured, secret),
            "[{transport}/{storage}] {:?} readable on the wire",
            String::from_utf8_lossy(secret)
        );
    }
}

/// Internal kinds from a client answer `forbidden`; so do local kinds.
fn clients_cannot_call_internal_kinds(transport: TransportKind, storage: StorageKind) {
    let ring = Ring::start(3, transport, storage);
    ring.wait_stable(DEADLINE)
        .unwrap_or_else(|e| panic!("ring did not form: {e}"));
    let url = ring.urls()[0].clone();
    let mut c = client(&ring, &url);
    c.register("victim", "pw-victim-1").expect("register");
    let guarded: Vec<&str> = gestor_api::all()
        .into_iter()
        .filter(|k| k.class != KindClass::Client)
        .map(|k| k.name)
        .collect();
    assert!(guarded.len() > 20, "the api declares the internal kinds");
    for kind in &guarded {
        match c.call(kind, Value::Null) {
            Err(ClientError::Remote(e)) => assert_eq!(
                e.code,
                ErrorCode::Forbidden,
                "[{transport}/{storage}] {kind} from a client: {e}"
            ),
            other => panic!("[{transport}/{storage}] {kind} from a client answered {other:?}"),
        }
    }
    // Nothing of the above changed the victim's account.
    c.login("victim", "pw-victim-1", "127.0.0.1:4000")
        .expect("the real password still works");
    let status = ring.status(&url).expect("status");
    assert!(
        status["security"]["forbidden_requests"]
            .as_u64()
            .unwrap_or(0)
            >= guarded.len() as u64,
        "forbidden requests are counted: {}",
        status["security"]
    );
    // The same kinds from an admitted gestor's credential are served.
    let mut operator = Client::new(ring.operator(), vec![url.clone()], Duration::from_secs(10));
    operator
        .request::<gestor_api::replica::Inventory>(&Empty)
        .expect("an admitted gestor may read an inventory");
}

/// A gestor of another cluster cannot join, be adopted or enter the
/// initial-gestors list; a client trusting another cluster refuses to send
/// its password to ours.
fn other_clusters_stay_out(transport: TransportKind, storage: StorageKind) {
    let ring = Ring::start(3, transport, storage);
    ring.wait_stable(DEADLINE)
        .unwrap_or_else(|e| panic!("ring did not form: {e}"));
    let urls = ring.urls();

    let other = TestCluster::new();
    let url = format!("tcp://127.0.0.1:{}", gestor_tests::ports::free_port());
    let signal = format!("tcp://127.0.0.1:{}", gestor_tests::ports::free_port());
    let data = ring.path().join("intruder-data");
    let args: Vec<String> = [
        "--listen",
        &url,
        "--signal",
        &signal,
        "--transport",
        &transport.to_string(),
        "--storage",
        &storage.to_string(),
        "--data-dir",
        &data.display().to_string(),
        "--join",
        &urls[0],
        "--config",
        &ring.config_path.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(other.node_flags())
    .collect();
    let intruder = NodeProc::spawn(&url, transport, &args, ring.path(), &[("RUST_LOG", "info")]);
    // Give it time to try: many stabilize rounds and gossip periods.
    std::thread::sleep(Duration::from_secs(6));
    let mut own = Client::new(
        other.client_layer(transport),
        vec![url.clone()],
        Duration::from_secs(5),
    );
    let own_status = own
        .request::<gestor_api::node::Status>(&Empty)
        .unwrap_or_else(|e| panic!("the intruder does not answer its own cluster: {e}"));
    let own_ring = own_status
        .section::<gestor_api::status::Ring>()
        .expect("intruder ring section");
    assert!(
        !own_ring.joined,
        "[{transport}/{storage}] the intruder joined our ring:\n{}",
        intruder.log()
    );
    for u in &urls {
        let status = ring.status(u).expect("status");
        let text = status.to_string();
        assert!(
            !text.contains(&url),
            "[{transport}/{storage}] {u} adopted or lists the intruder: {text}"
        );
    }
    ring.wait_stable(DEADLINE)
        .unwrap_or_else(|e| panic!("the ring was disturbed: {e}"));
    drop(intruder);

    // A client given the other cluster's key: one line, non-zero, no password sent.
    let home = tempfile::tempdir().unwrap();
    let (code, out, err) = run_cli(
        &[
            "login",
            "someone",
            "--address",
            "127.0.0.1:4001",
            "--gestor",
            &urls[1],
            "--transport",
            &transport.to_string(),
            "--cluster-pub",
            &other.pub_path().display().to_string(),
        ],
        &[
            ("GESTOR_HOME", &home.path().display().to_string()),
            ("GESTOR_PASSWORD", "pw-never-sent"),
            ("RUST_LOG", "off"),
        ],
    );
    assert_ne!(code, 0, "login against another cluster succeeded: {out}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("does not prove admission"),
        "the error names the reason: {err}"
    );
}

/// A revoked gestor is dropped by every member; the others keep working.
fn revoked_gestor_is_dropped(transport: TransportKind, storage: StorageKind) {
    let mut ring = Ring::start(0, transport, storage);
    let list = ring.path().join("revoked.toml");
    let list_s = list.display().to_string();
    for _ in 0..5 {
        ring.add_node_with(&["--revocations", &list_s], "");
    }
    ring.wait_stable(DEADLINE)
        .unwrap_or_else(|e| panic!("ring did not form: {e}"));
    let mut c = client(&ring, &ring.urls()[0]);
    for i in 0..20 {
        c.register(&format!("r{i:02}"), "pw-revocation")
            .expect("register");
    }
    let victim = 4;
    let victim_url = ring.nodes[victim].url.clone();
    let args = &ring.nodes[victim].args;
    let cred_path = args
        .iter()
        .position(|a| a == "--credential")
        .map(|p| args[p + 1].clone())
        .expect("credential flag");
    let victim_key = CredentialFile::load(std::path::Path::new(&cred_path))
        .unwrap()
        .credential
        .static_public;
    let cluster_key =
        ClusterKey::load(&test_cluster().dir().join("cluster.key")).expect("cluster key");
    cluster_key
        .sign_revocations(&[victim_key])
        .save(&list)
        .unwrap();

    let others: Vec<String> = ring
        .urls()
        .into_iter()
        .filter(|u| *u != victim_url)
        .collect();
    let dropped = wait_until(DEADLINE, || {
        others.iter().all(|u| {
            ring.status(u)
                .map(|s| !s["sections"]["ring"].to_string().contains(&victim_url))
                .unwrap_or(false)
        })
    });
    assert!(
        dropped,
        "[{transport}/{storage}] some member still uses the revoked gestor:\n{}",
        others
            .iter()
            .filter_map(|u| ring.status(u))
            .map(|s| s["sections"]["ring"].to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The revoked gestor can no longer serve clients either: nobody answers it.
    for i in 0..20 {
        let name = format!("r{i:02}");
        client(&ring, &others[i % others.len()])
            .lookup(&name)
            .unwrap_or_else(|e| panic!("{name} after the revocation: {e}"));
    }
}

/// Plaintext frames and signals are refused; a forged alive signal (no
/// session, or a wrong token) changes nothing.
fn forged_signals_change_nothing(transport: TransportKind, storage: StorageKind) {
    let ring = Ring::start(3, transport, storage);
    ring.wait_stable(DEADLINE)
        .unwrap_or_else(|e| panic!("ring did not form: {e}"));
    let urls = ring.urls();
    let mut c = client(&ring, &urls[0]);
    c.register("sigvictim", "pw-sig").expect("register");
    let session = c
        .login("sigvictim", "pw-sig", "127.0.0.1:4002")
        .expect("login");
    c.logout("sigvictim", &session.token).expect("logout");
    let session = c
        .login("sigvictim", "pw-sig", "127.0.0.1:4002")
        .expect("login again");
    // Let it go offline: no alive signals from its owner.
    assert!(
        wait_until(Duration::from_secs(15), || {
            !client(&ring, &urls[1])
                .lookup("sigvictim")
                .map(|f| f.online)
                .unwrap_or(true)
        }),
        "never went offline"
    );
    // A plaintext alive signal with the right token, straight to the signal
    // endpoint (no session): dropped.
    let raw = gestor_backends::build_transport(transport);
    let mut publisher = raw
        .publisher(
            &gestor_sdk::Endpoint::Dial(session.signal.clone()),
            &gestor_sdk::TransportOptions::default(),
        )
        .unwrap();
    let payload = gestor_sdk::wire::to_cbor(&gestor_api::user::Alive {
        username: "sigvictim".into(),
        token: session.token.clone(),
    });
    // A sealed alive with a wrong token, over a real session: dropped too.
    let mut forged = session.clone();
    forged.token = "0".repeat(session.token.len());
    let secure = client_layer(transport);
    let mut forged_alive = AliveSender::new(&secure, &forged).expect("sender");
    for _ in 0..30 {
        let _ = publisher.publish(b"alive", &payload);
        let _ = forged_alive.beat();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !client(&ring, &urls[2]).lookup("sigvictim").unwrap().online,
        "[{transport}/{storage}] a forged alive signal made the user online"
    );
    let owner_status = ring.status(&session.gestor).expect("owner status");
    assert!(
        owner_status["security"]["malformed_frames"]
            .as_u64()
            .unwrap_or(0)
            > 0
            || owner_status["security"]["unknown_session"]
                .as_u64()
                .unwrap_or(0)
                > 0,
        "plaintext signals are counted: {}",
        owner_status["security"]
    );
    // A client's sealed `initial` signal (a gestor topic) offering a fake
    // initial-gestors list: dropped and counted; no list takes the URL.
    let fake = "tcp://127.0.0.1:9";
    let offer = gestor_api::initial::InitialList {
        version: gestor_sdk::Timestamp {
            wall_ms: gestor_sdk::hlc::system_ms() + 60_000,
            logical: 0,
            node: 1,
        },
        gestores: vec![fake.to_string()],
    };
    let mut gossip = secure
        .publisher_via(
            &session.gestor,
            &session.signal,
            &gestor_sdk::TransportOptions::default(),
            Duration::from_secs(5),
        )
        .expect("publisher");
    for _ in 0..10 {
        gossip
            .publish(
                gestor_api::topics::INITIAL.as_bytes(),
                &gestor_sdk::wire::to_cbor(&offer),
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let owner_status = ring.status(&session.gestor).expect("owner status");
    assert!(
        owner_status["security"]["forbidden_signals"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "[{transport}/{storage}] a client's gestor signal was not counted: {}",
        owner_status["security"]
    );
    for u in &urls {
        let s = ring.status(u).expect("status");
        assert!(
            !s["initial_gestors"].to_string().contains(fake),
            "[{transport}/{storage}] {u} took a client's initial list"
        );
    }
    // The real session's signals still work.
    let mut alive = AliveSender::new(&secure, &session).expect("sender");
    assert!(wait_until(Duration::from_secs(15), || {
        let _ = alive.beat();
        client(&ring, &urls[2])
            .lookup("sigvictim")
            .map(|f| f.online)
            .unwrap_or(false)
    }));
}

/// Even an admitted gestor (an operator credential here) cannot plant a
/// record no client could have made: a stamp pinned at `u32::MAX`, a
/// reserved node id, a record whose ring position lies. Writes keep working.
fn absurd_records_are_refused(transport: TransportKind, storage: StorageKind) {
    use gestor_api::replica::{CopySource, Put, PutBody};
    let ring = Ring::start(3, transport, storage);
    ring.wait_stable(DEADLINE)
        .unwrap_or_else(|e| panic!("ring did not form: {e}"));
    let urls = ring.urls();
    let mut c = client(&ring, &urls[0]);
    c.register("stampvictim", "pw-stamp").expect("register");
    let found = c.lookup("stampvictim").expect("lookup");
    let mut operator = Client::new(ring.operator(), vec![found.gestor.clone()], DEADLINE);
    let base = gestor_sdk::UserRecord {
        username: "stampvictim".into(),
        ring_pos: gestor_sdk::hash::ring_position(b"stampvictim"),
        address: "10.6.6.6:666".into(),
        password_hash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA".into(),
        online: true,
        last_seen_ms: 1,
        version: gestor_sdk::Timestamp {
            wall_ms: found.last_update.wall_ms,
            logical: u32::MAX,
            node: u64::MAX,
        },
        deleted: false,
        session_hash: String::new(),
    };
    let mut lying = base.clone();
    lying.version.logical = 0;
    lying.version.node = 1;
    lying.ring_pos ^= 1;
    let mut pinned = base.clone();
    pinned.version.node = 1;
    for (what, record) in [
        ("u32::MAX + reserved node", base),
        ("lying position", lying),
        ("u32::MAX logical", pinned),
    ] {
        let body = PutBody {
            from: CopySource {
                addr: "tcp://127.0.0.1:1".into(),
                signal: "tcp://127.0.0.1:2".into(),
            },
            records: vec![record],
        };
        match operator.request::<Put>(&body) {
            Err(ClientError::Remote(e)) => assert!(
                matches!(e.code, ErrorCode::BadRequest | ErrorCode::ClockSkew),
                "[{transport}/{storage}] {what}: {e}"
            ),
            other => panic!("[{transport}/{storage}] {what} accepted: {other:?}"),
        }
    }
    // Nothing changed, and the owner's next writes still win.
    for i in 0..3 {
        let s = c
            .login(
                "stampvictim",
                "pw-stamp",
                &format!("127.0.0.1:{}", 5000 + i),
            )
            .unwrap_or_else(|e| panic!("[{transport}/{storage}] login {i} after the attack: {e}"));
        assert!(!s.token.is_empty());
    }
    let after = client(&ring, &urls[1]).lookup("stampvictim").unwrap();
    assert_eq!(after.address, "127.0.0.1:5002");
}

/// Mail: nobody can send as someone else, or remove someone else's mail.
fn mail_cannot_be_spoofed_or_deleted(transport: TransportKind, storage: StorageKind) {
    use gestor_api::chat::ChatMessage;
    use gestor_api::mail::{Ack, AckBody, Fetch, Put, PutMail};
    let ring = Ring::start(3, transport, storage);
    ring.wait_stable(DEADLINE)
        .unwrap_or_else(|e| panic!("ring did not form: {e}"));
    let urls = ring.urls();
    let mut c = client(&ring, &urls[0]);
    for u in ["mallory", "bobmail", "carolmail"] {
        c.register(u, &format!("pw-{u}")).expect("register");
    }
    let mallory = c.login("mallory", "pw-mallory", "127.0.0.1:6001").unwrap();
    let carol = c
        .login("carolmail", "pw-carolmail", "127.0.0.1:6003")
        .unwrap();
    let mail = |from: &str, id: &str| ChatMessage {
        id: id.into(),
        from: from.into(),
        to: "carolmail".into(),
        seq: 1,
        sent_ms: 1,
        text: "hello".into(),
    };
    // Mallory sends as bob with her own token: refused.
    let spoof = PutMail {
        token: mallory.token.clone(),
        mail: mail("bobmail", "0123456789abcdef0123456789abcdef"),
    };
    match c.request::<Put>(&spoof) {
        Err(ClientError::Remote(e)) => assert_eq!(e.code, ErrorCode::Unauthorized, "{e}"),
        other => panic!("[{transport}/{storage}] spoofed mail accepted: {other:?}"),
    }
    // A real message from mallory to carol…
    let real = PutMail {
        token: mallory.token.clone(),
        mail: mail("mallory", "fedcba9876543210fedcba9876543210"),
    };
    c.request::<Put>(&real).expect("mail from mallory");
    // …which mallory cannot remove from carol's mailbox (only carol acks).
    let foreign_ack = AckBody {
        username: "carolmail".into(),
        token: mallory.token.clone(),
        ids: vec!["fedcba9876543210fedcba9876543210".into()],
    };
    match c.request::<Ack>(&foreign_ack) {
        Err(ClientError::Remote(e)) => assert_eq!(e.code, ErrorCode::Unauthorized, "{e}"),
        other => panic!("[{transport}/{storage}] foreign ack accepted: {other:?}"),
    }
    let fetched = c
        .request::<Fetch>(&gestor_api::user::Auth {
            username: "carolmail".into(),
            token: carol.token.clone(),
        })
        .expect("carol fetches");
    let text = format!("{fetched:?}");
    assert!(
        text.contains("fedcba9876543210fedcba9876543210")
            && !text.contains("0123456789abcdef0123456789abcdef"),
        "[{transport}/{storage}] carol's mailbox: {text}"
    );
}

/// Mail is removed only by its recipient's ack or by expiry: a copy holder
/// believes the removals in a `mailbox.copy` only from the gestor that owns
/// the recipient in its own ring view. An admitted gestor that is not that
/// owner (an operator credential here) removes nothing, anywhere, and is
/// counted; the recipient's own ack still removes every copy.
fn mail_copies_removed_only_by_the_owner(transport: TransportKind, storage: StorageKind) {
    use gestor_api::chat::ChatMessage;
    use gestor_api::mail::{Ack, AckBody, Fetch, Put, PutMail};
    use gestor_api::mailbox::{Copy, CopyBody};
    let ring = Ring::start(3, transport, storage);
    ring.wait_stable(DEADLINE)
        .unwrap_or_else(|e| panic!("ring did not form: {e}"));
    let urls = ring.urls();
    let tag = format!("{transport}/{storage}");
    let mut c = client(&ring, &urls[0]);
    for u in ["copysender", "copykeeper"] {
        c.register(u, &format!("pw-{u}")).expect("register");
    }
    let sender = c
        .login("copysender", "pw-copysender", "127.0.0.1:6011")
        .unwrap();
    let id = "00112233445566778899aabbccddeeff";
    c.request::<Put>(&PutMail {
        token: sender.token.clone(),
        mail: ChatMessage {
            id: id.into(),
            from: "copysender".into(),
            to: "copykeeper".into(),
            seq: 1,
            sent_ms: 1,
            text: "keep me".into(),
        },
    })
    .expect("mail stored");
    // (held, removals_refused) on every gestor.
    let mailbox = |url: &str| {
        let s = ring.status(url)?;
        Some((
            s.pointer("/sections/mailbox/held")?.as_u64()?,
            s.pointer("/sections/mailbox/removals_refused")?.as_u64()?,
        ))
    };
    let held_everywhere = |want: u64| {
        urls.iter()
            .all(|u| mailbox(u).is_some_and(|(held, _)| held == want))
    };
    // Owner + 2 copies: in a ring of 3, every gestor holds it.
    assert!(
        wait_until(DEADLINE, || held_everywhere(1)),
        "[{tag}] the message never reached every copy"
    );

    let forged = CopyBody {
        puts: Vec::new(),
        removed: vec![("copykeeper".into(), id.into())],
    };
    for url in &urls {
        let applied = Client::new(ring.operator(), vec![url.clone()], DEADLINE)
            .request::<Copy>(&forged)
            .unwrap_or_else(|e| panic!("[{tag}] copy to {url}: {e}"));
        assert_eq!(
            applied, 0,
            "[{tag}] {url} applied a removal from a non-owner"
        );
    }
    for url in &urls {
        let (held, refused) = mailbox(url).expect("status");
        assert_eq!(held, 1, "[{tag}] {url} deleted mail on a non-owner's word");
        assert!(refused >= 1, "[{tag}] {url} did not count the refusal");
    }
    let keeper = c
        .login("copykeeper", "pw-copykeeper", "127.0.0.1:6012")
        .unwrap();
    let auth = gestor_api::user::Auth {
        username: "copykeeper".into(),
        token: keeper.token.clone(),
    };
    let fetched = c.request::<Fetch>(&auth).expect("fetch");
    assert_eq!(fetched.messages.len(), 1, "[{tag}] {fetched:?}");

    // The recipient's ack, served by the owner, removes every copy.
    let acked = c
        .request::<Ack>(&AckBody {
            username: "copykeeper".into(),
            token: keeper.token.clone(),
            ids: vec![id.into()],
        })
        .expect("ack");
    assert_eq!(acked.removed, 1);
    assert!(
        wait_until(DEADLINE, || held_everywhere(0)),
        "[{tag}] the owner's removal did not reach the copies: {:?}",
        urls.iter().map(|u| mailbox(u)).collect::<Vec<_>>()
    );
}

/// One client address gets a bounded number of password attempts per
/// minute (`rate_limited` after), and a guessed account a bounded number of
/// wrong passwords; lookups are not affected.
fn password_attempts_are_limited(transport: TransportKind, storage: StorageKind) {
    let config = gestor_tests::ring::TEST_CONFIG.replace(
        "password_attempts_per_source_per_minute = 0",
        "password_attempts_per_source_per_minute = 30",
    );
    let ring = Ring::start_with_config(3, transport, storage, &config);
    ring.wait_stable(DEADLINE)
        .unwrap_or_else(|e| panic!("ring did not form: {e}"));
    let urls = ring.urls();
    // Per account: 10 wrong passwords, then rate_limited even for the right one.
    // Every attempt goes to one entry gestor (`request`, never routed by the
    // ring table), so the per-source counts below are predictable.
    let mut c = client(&ring, &urls[0]);
    let credentials = |name: &str, password: &str, address: Option<&str>| Credentials {
        username: name.into(),
        password: password.into(),
        address: address.map(str::to_string),
    };
    c.request::<user::Register>(&credentials("guessme", "pw-right", None))
        .expect("register");
    let mut codes = Vec::new();
    for i in 0..12 {
        let wrong = credentials("guessme", &format!("wrong-{i}"), Some("127.0.0.1:7000"));
        match c.request::<user::Login>(&wrong) {
            Err(ClientError::Remote(e)) => codes.push(e.code),
            other => panic!("wrong password accepted: {other:?}"),
        }
    }
    assert_eq!(codes[..10], [ErrorCode::Unauthorized; 10], "{codes:?}");
    assert_eq!(codes[10..], [ErrorCode::RateLimited; 2], "{codes:?}");
    let right = credentials("guessme", "pw-right", Some("127.0.0.1:7000"));
    match c.request::<user::Login>(&right) {
        Err(ClientError::Remote(e)) => assert_eq!(e.code, ErrorCode::RateLimited),
        other => panic!("[{transport}/{storage}] the locked account logged in: {other:?}"),
    }
    // Per source (through another gestor, whose count is its own): 30 per
    // minute. Sent to that one gestor (`request`, not routed by the ring
    // table): the limit is each entry gestor's, and one-hop routing would
    // spread the attempts over the owners.
    let mut d = client(&ring, &urls[1]);
    let mut limited = 0;
    for i in 0..40 {
        match d.request::<user::Register>(&credentials(&format!("src{i:02}"), "pw-source", None)) {
            Ok(_) => {}
            Err(ClientError::Remote(e)) if e.code == ErrorCode::RateLimited => limited += 1,
            Err(e) => panic!("register src{i:02}: {e}"),
        }
    }
    assert_eq!(
        limited, 10,
        "[{transport}/{storage}] 30 attempts pass, then rate_limited"
    );
    // Lookups from the same address are not password attempts.
    d.lookup("src00").expect("lookups are not limited");
    d.lookup("guessme").expect("lookups are not limited");
}

gestor_tests::matrix!(
    wire => nothing_readable_on_the_wire,
    internal_kinds => clients_cannot_call_internal_kinds,
    other_clusters => other_clusters_stay_out,
    revocation => revoked_gestor_is_dropped,
    forged_signals => forged_signals_change_nothing,
    absurd_records => absurd_records_are_refused,
    mail_spoofing => mail_cannot_be_spoofed_or_deleted,
    mail_copy_removals => mail_copies_removed_only_by_the_owner,
    password_limits => password_attempts_are_limited
);
