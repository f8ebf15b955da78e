//! The layer over real nng and ZeroMQ sockets on 127.0.0.1, plus frame-level
//! attacks replayed through `serve` directly.

use super::*;
use std::net::TcpListener;
use std::sync::atomic::AtomicUsize;

const T: Duration = Duration::from_secs(5);

fn tcp_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("tcp://127.0.0.1:{}", l.local_addr().expect("addr").port())
}

fn transports() -> Vec<Arc<dyn Transport>> {
    vec![
        Arc::new(gestor_transport_nng::NngTransport::new()),
        Arc::new(gestor_transport_zmq::ZmqTransport::new()),
    ]
}

struct Cluster {
    key: ClusterKey,
}

impl Cluster {
    fn new() -> Self {
        Cluster {
            key: ClusterKey::generate(),
        }
    }
    fn gestor(&self, t: &Arc<dyn Transport>, name: &str) -> SecureLayer {
        SecureLayer::new(
            t.clone(),
            SecureConfig::gestor(self.key.admit(name).unwrap(), self.key.public()),
        )
    }
    fn client(&self, t: &Arc<dyn Transport>) -> SecureLayer {
        SecureLayer::new(t.clone(), SecureConfig::client(self.key.public()))
    }
}

/// A replier answering `who:REQUEST` and counting calls.
fn echo_server(layer: &SecureLayer, url: &str, calls: Arc<AtomicUsize>) -> Box<dyn Replier> {
    layer
        .replier(
            url,
            Arc::new(move |req: &[u8], peer: &Peer, _queued| {
                calls.fetch_add(1, Ordering::SeqCst);
                let who = if peer.is_gestor() { "gestor" } else { "client" };
                let mut out = format!("{who}:").into_bytes();
                out.extend_from_slice(req);
                out
            }),
            &TransportOptions::default(),
        )
        .expect("replier")
}

#[test]
fn clients_and_gestores_are_told_apart_on_both_transports() {
    for t in transports() {
        let cluster = Cluster::new();
        let server = cluster.gestor(&t, "a");
        let url = tcp_url();
        let calls = Arc::new(AtomicUsize::new(0));
        let _rep = echo_server(&server, &url, calls.clone());

        let client = cluster.client(&t);
        let mut r = client
            .requester(&url, &TransportOptions::default())
            .unwrap();
        assert_eq!(r.request(b"hi", T).unwrap(), b"client:hi", "{}", t.name());
        assert_eq!(r.request(b"again", T).unwrap(), b"client:again");

        let peer = cluster.gestor(&t, "b");
        let mut r = peer.requester(&url, &TransportOptions::default()).unwrap();
        assert_eq!(r.request(b"x", T).unwrap(), b"gestor:x", "{}", t.name());
        // Large frames (past Noise's 64 KiB message cap) go through whole.
        let big = vec![7u8; 300_000];
        let reply = r.request(&big, T).unwrap();
        assert_eq!(&reply[7..], &big[..]);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(server.stats().handshakes, 2);
    }
}

#[test]
fn a_client_of_another_cluster_refuses_before_sending_anything() {
    for t in transports() {
        let ours = Cluster::new();
        let theirs = Cluster::new();
        let server = ours.gestor(&t, "a");
        let url = tcp_url();
        let calls = Arc::new(AtomicUsize::new(0));
        let _rep = echo_server(&server, &url, calls.clone());

        let client = theirs.client(&t);
        let mut r = client
            .requester(&url, &TransportOptions::default())
            .unwrap();
        let err = r.request(b"password=hunter2", T).unwrap_err();
        assert!(
            matches!(err, TransportError::Untrusted { .. }),
            "{}: {err}",
            t.name()
        );
        assert!(err.to_string().contains("another cluster"), "{err}");
        assert_eq!(calls.load(Ordering::SeqCst), 0, "request reached a handler");
        // The server only ever saw a first handshake message: no session.
        assert_eq!(server.stats().handshakes, 0);
    }
}

#[test]
fn a_gestor_of_another_cluster_is_refused_and_an_uncredentialed_server_is_not_trusted() {
    let t: Arc<dyn Transport> = Arc::new(gestor_transport_nng::NngTransport::new());
    let ours = Cluster::new();
    let theirs = Cluster::new();
    let server = ours.gestor(&t, "a");
    let url = tcp_url();
    let calls = Arc::new(AtomicUsize::new(0));
    let _rep = echo_server(&server, &url, calls.clone());

    // A gestor admitted elsewhere, which does trust our cluster: refused by us.
    let mut cred = theirs.key.admit("intruder").unwrap();
    cred.credential.cluster = *ours.key.public().as_bytes();
    let intruder = SecureLayer::new(t.clone(), SecureConfig::gestor(cred, ours.key.public()));
    let mut r = intruder
        .requester(&url, &TransportOptions::default())
        .unwrap();
    let err = r.request(b"replica.put", T).unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(server.stats().handshakes_refused, 1);

    // A Noise server with no credential is not a gestor to a client.
    let fake = SecureLayer::new(t.clone(), SecureConfig::client(ours.key.public()));
    let fake_url = tcp_url();
    let _fake_rep = echo_server(&fake, &fake_url, calls.clone());
    let client = ours.client(&t);
    let mut r = client
        .requester(&fake_url, &TransportOptions::default())
        .unwrap();
    let err = r.request(b"login", T).unwrap_err();
    assert!(matches!(err, TransportError::Untrusted { .. }), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // A client endpoint (e.g. a chat peer) is reachable when asked for as one,
    // and the session made that way never passes for a gestor afterwards.
    let mut peer = client
        .requester_to_client(&fake_url, &TransportOptions::default())
        .unwrap();
    // (The fake holds no credential: to it, everyone is a client.)
    assert_eq!(peer.request(b"msg", T).unwrap(), b"client:msg");
    let mut r = client
        .requester(&fake_url, &TransportOptions::default())
        .unwrap();
    assert!(matches!(
        r.request(b"login", T).unwrap_err(),
        TransportError::Untrusted { .. }
    ));
}

/// Drives `serve` directly, keeping every frame, to replay and alter them.
struct Wire {
    server: SecureLayer,
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Requester for Wire {
    fn request(&mut self, payload: &[u8], _: Duration) -> Result<Vec<u8>, TransportError> {
        self.frames.lock().unwrap().push(payload.to_vec());
        Ok(self
            .server
            .serve(payload, |req, _| [b"ok:".as_slice(), req].concat()))
    }
    fn url(&self) -> &str {
        "wire"
    }
}

#[test]
fn altered_and_replayed_frames_are_refused_and_counted() {
    let t: Arc<dyn Transport> = Arc::new(gestor_transport_nng::NngTransport::new());
    let cluster = Cluster::new();
    let server = cluster.gestor(&t, "a");
    let client = cluster.client(&t);
    let frames = Arc::new(Mutex::new(Vec::new()));
    let mut wire = SecureRequester {
        layer: client.clone(),
        inner: Box::new(Wire {
            server: server.clone(),
            frames: frames.clone(),
        }),
        url: "wire".into(),
        require_gestor: true,
    };
    assert_eq!(wire.request(b"secret", T).unwrap(), b"ok:secret");
    let sealed = frames.lock().unwrap().last().unwrap().clone();
    assert_eq!(sealed[0], frame::REQUEST);
    assert!(
        !sealed.windows(6).any(|w| w == b"secret"),
        "plaintext visible in the frame"
    );

    // Replay: refused, counted, handler not run.
    let reply = server.serve(&sealed, |_, _| panic!("replay reached the handler"));
    assert_eq!(parse_refusal(&reply).unwrap().0, refusal::REPLAYED);
    assert_eq!(server.stats().replayed, 1);

    // Alteration of the body, and of the header (the counter), both refused.
    // (An altered copy of a frame already accepted is simply a replay; use
    // a fresh frame the server has not seen.)
    let session = client
        .shared
        .by_request_url
        .lock()
        .unwrap()
        .get("wire")
        .cloned()
        .unwrap();
    let (fresh, _) = session.seal(frame::REQUEST, b"fresh", &[]).unwrap();
    let mut altered = fresh.clone();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    let reply = server.serve(&altered, |_, _| panic!("altered frame reached the handler"));
    assert_eq!(parse_refusal(&reply).unwrap().0, refusal::TAMPERED);
    let mut recounted = fresh.clone();
    recounted[HEADER_LEN - 1] ^= 0x40;
    let reply = server.serve(&recounted, |_, _| {
        panic!("altered header reached the handler")
    });
    assert_eq!(parse_refusal(&reply).unwrap().0, refusal::TAMPERED);
    assert_eq!(server.stats().tampered, 2);

    // Plaintext envelopes and garbage are refused with a reason.
    let reply = server.serve(&[0xa1, 0x61, 0x76, 0x01], |_, _| {
        panic!("plaintext handled")
    });
    assert_eq!(parse_refusal(&reply).unwrap().0, refusal::MALFORMED);
    let reply = server.serve(&[], |_, _| panic!("empty handled"));
    assert_eq!(parse_refusal(&reply).unwrap().0, refusal::MALFORMED);

    // The session still works after all that.
    assert_eq!(wire.request(b"more", T).unwrap(), b"ok:more");
}

#[test]
fn a_forgotten_session_is_remade_transparently() {
    let t: Arc<dyn Transport> = Arc::new(gestor_transport_nng::NngTransport::new());
    let cluster = Cluster::new();
    let url = tcp_url();
    let calls = Arc::new(AtomicUsize::new(0));
    let client = cluster.client(&t);
    let mut r = client
        .requester(&url, &TransportOptions::default())
        .unwrap();
    {
        let server = cluster.gestor(&t, "a");
        let _rep = echo_server(&server, &url, calls.clone());
        assert_eq!(r.request(b"one", T).unwrap(), b"client:one");
    }
    // "Restart": a new layer on the same URL knows nothing of the old session.
    let server = cluster.gestor(&t, "a");
    let rep = echo_server(&server, &url, calls.clone());
    assert_eq!(r.request(b"two", T).unwrap(), b"client:two");
    assert_eq!(server.stats().unknown_session, 1);
    drop(rep);
}

#[test]
fn revoked_gestores_lose_their_sessions_and_cannot_handshake() {
    let t: Arc<dyn Transport> = Arc::new(gestor_transport_nng::NngTransport::new());
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::new();
    let revoked_path = dir.path().join("revoked.toml");
    let mut config = SecureConfig::gestor(cluster.key.admit("a").unwrap(), cluster.key.public());
    config.revocations_file = Some(revoked_path.clone());
    let server = SecureLayer::new(t.clone(), config);
    let url = tcp_url();
    let calls = Arc::new(AtomicUsize::new(0));
    let _rep = echo_server(&server, &url, calls.clone());

    let bad_cred = cluster.key.admit("bad").unwrap();
    let bad_key = bad_cred.credential.static_public;
    let bad = SecureLayer::new(
        t.clone(),
        SecureConfig::gestor(bad_cred, cluster.key.public()),
    );
    let good = cluster.gestor(&t, "good");
    let mut rb = bad.requester(&url, &TransportOptions::default()).unwrap();
    let mut rg = good.requester(&url, &TransportOptions::default()).unwrap();
    assert_eq!(rb.request(b"1", T).unwrap(), b"gestor:1");
    assert_eq!(rg.request(b"1", T).unwrap(), b"gestor:1");

    cluster
        .key
        .sign_revocations(&[bad_key])
        .save(&revoked_path)
        .unwrap();
    assert_eq!(server.refresh_revocations().unwrap(), 1);
    let err = rb.request(b"2", T).unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
    assert_eq!(
        rg.request(b"2", T).unwrap(),
        b"gestor:2",
        "others unaffected"
    );

    // A list signed by another cluster is refused and changes nothing.
    Cluster::new()
        .key
        .sign_revocations(&[])
        .save(&revoked_path)
        .unwrap();
    // Make sure the modification time differs from the last read.
    let later = SystemTime::now() + Duration::from_secs(5);
    let f = std::fs::File::options()
        .append(true)
        .open(&revoked_path)
        .unwrap();
    f.set_modified(later).unwrap();
    assert!(server.refresh_revocations().is_err());
    assert!(rb.request(b"3", T).is_err());
}

#[test]
fn signals_are_sealed_and_replays_dropped() {
    for t in transports() {
        let cluster = Cluster::new();
        let url = tcp_url();
        let sig = tcp_url();
        let server = SecureLayer::new(
            t.clone(),
            SecureConfig::gestor(cluster.key.admit("a").unwrap(), cluster.key.public())
                .with_urls(&url, &sig),
        );
        let _rep = echo_server(&server, &url, Arc::new(AtomicUsize::new(0)));
        let mut sub = server
            .subscriber(&Endpoint::Bind(sig.clone()), &TransportOptions::default())
            .unwrap();

        // A client seals its signals with the session it made with the gestor.
        let client = cluster.client(&t);
        let mut publisher = client
            .publisher_via(&url, &sig, &TransportOptions::default(), T)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let got = loop {
            publisher.publish(b"alive", b"me").unwrap();
            if let Some(s) = sub.recv_from(Duration::from_millis(100)).unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "{}: no signal", t.name());
        };
        assert_eq!(
            (got.0.as_slice(), got.1.as_slice()),
            (&b"alive"[..], &b"me"[..])
        );
        assert!(!got.2.is_gestor());

        // A gestor that handshook with us can signal back through the responder side.
        let peer_url = tcp_url();
        let peer_sig = tcp_url();
        let peer = SecureLayer::new(
            t.clone(),
            SecureConfig::gestor(cluster.key.admit("b").unwrap(), cluster.key.public())
                .with_urls(&peer_url, &peer_sig),
        );
        let mut r = peer.requester(&url, &TransportOptions::default()).unwrap();
        r.request(b"hello", T).unwrap();
        let mut back = server
            .publisher_to(&peer_sig, &TransportOptions::default())
            .unwrap();
        let mut peer_sub = peer
            .subscriber(
                &Endpoint::Bind(peer_sig.clone()),
                &TransportOptions::default(),
            )
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let got = loop {
            back.publish(b"replica.hb", b"x").unwrap();
            if let Some(s) = peer_sub.recv_from(Duration::from_millis(100)).unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "{}: no signal back", t.name());
        };
        assert!(got.2.is_gestor());
        assert_eq!(got.0, b"replica.hb");

        // Replaying a captured sealed signal changes nothing.
        let client_session = client
            .shared
            .by_request_url
            .lock()
            .unwrap()
            .get(&url)
            .cloned()
            .unwrap();
        let (sealed, _) = client_session
            .seal(
                frame::SIGNAL_FROM_INITIATOR,
                &encode_signal(b"alive", b"r"),
                &[],
            )
            .unwrap();
        assert!(server.open_signal(&sealed).is_some());
        let before = server.stats().replayed;
        assert!(server.open_signal(&sealed).is_none());
        assert_eq!(server.stats().replayed, before + 1);
    }
}

#[test]
fn a_flood_of_first_messages_does_not_lock_out_real_clients() {
    let t: Arc<dyn Transport> = Arc::new(gestor_transport_nng::NngTransport::new());
    let cluster = Cluster::new();
    let mut config = SecureConfig::gestor(cluster.key.admit("a").unwrap(), cluster.key.public());
    config.max_pending = 4;
    let server = SecureLayer::new(t.clone(), config);
    // Half-open handshakes, never finished.
    for _ in 0..50 {
        let key = snow::Builder::new(noise_params())
            .generate_keypair()
            .unwrap();
        let mut hs = snow::Builder::new(noise_params())
            .local_private_key(&key.private)
            .unwrap()
            .prologue(PROLOGUE)
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut buf = vec![0u8; 128];
        let n = hs.write_message(&[], &mut buf).unwrap();
        let reply = server.serve(&[&[frame::HELLO], &buf[..n]].concat(), |_, _| Vec::new());
        assert_eq!(reply[0], frame::HELLO_REPLY);
    }
    assert!(server.shared.pending.lock().unwrap().len() <= 4, "bounded");
    let mut wire = SecureRequester {
        layer: cluster.client(&t),
        inner: Box::new(Wire {
            server: server.clone(),
            frames: Arc::new(Mutex::new(Vec::new())),
        }),
        url: "wire".into(),
        require_gestor: true,
    };
    assert_eq!(wire.request(b"hi", T).unwrap(), b"ok:hi");
}

#[test]
fn a_client_signal_session_is_remade_after_the_gestor_restarts() {
    let t: Arc<dyn Transport> = Arc::new(gestor_transport_nng::NngTransport::new());
    let cluster = Cluster::new();
    let (url, sig) = (tcp_url(), tcp_url());
    let gestor = || {
        SecureLayer::new(
            t.clone(),
            SecureConfig::gestor(cluster.key.admit("a").unwrap(), cluster.key.public())
                .with_urls(&url, &sig),
        )
    };
    let mut config = SecureConfig::client(cluster.key.public());
    config.signal_probe_every = Duration::from_millis(100);
    let client = SecureLayer::new(t.clone(), config);
    let receive = |server: &SecureLayer, publisher: &mut Box<dyn Publisher>| {
        let _rep = echo_server(server, &url, Arc::new(AtomicUsize::new(0)));
        let mut sub = server
            .subscriber(&Endpoint::Bind(sig.clone()), &TransportOptions::default())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            publisher.publish(b"alive", b"me").unwrap();
            if sub.recv_from(Duration::from_millis(100)).unwrap().is_some() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
        }
    };
    let first = gestor();
    let _rep = echo_server(&first, &url, Arc::new(AtomicUsize::new(0)));
    let mut publisher = client
        .publisher_via(&url, &sig, &TransportOptions::default(), T)
        .unwrap();
    drop(_rep);
    assert!(
        receive(&first, &mut publisher),
        "signals before the restart"
    );
    drop(first);
    // The gestor restarts: same URLs, no memory of the session.
    let second = gestor();
    assert!(
        receive(&second, &mut publisher),
        "signals never resumed after the restart"
    );
}

/// Gestor "b" requesting from gestor "a" through [`Wire`] (no sockets):
/// the server, b's requester and the frames it sent.
fn gestor_pair_over_a_wire() -> (SecureLayer, SecureRequester, Arc<Mutex<Vec<Vec<u8>>>>) {
    let t: Arc<dyn Transport> = Arc::new(gestor_transport_nng::NngTransport::new());
    let cluster = Cluster::new();
    let server = cluster.gestor(&t, "a");
    let frames = Arc::new(Mutex::new(Vec::new()));
    let wire = SecureRequester {
        layer: cluster.gestor(&t, "b"),
        inner: Box::new(Wire {
            server: server.clone(),
            frames: frames.clone(),
        }),
        url: "wire".into(),
        require_gestor: true,
    };
    (server, wire, frames)
}

#[test]
fn a_resent_request_between_gestores_gets_the_same_reply_once_run() {
    let (server, mut wire, frames) = gestor_pair_over_a_wire();
    assert_eq!(wire.request(b"once", T).unwrap(), b"ok:once");
    let sealed = frames.lock().unwrap().last().unwrap().clone();
    let first_reply_bytes = server.serve(&sealed, |_, _| panic!("a resend ran again"));
    assert_eq!(first_reply_bytes[0], frame::REPLY, "the resend is answered");
    assert_eq!(server.stats().replayed, 0);
    // An altered resend is still refused.
    let mut altered = sealed.clone();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    let refused = server.serve(&altered, |_, _| panic!("ran"));
    assert_eq!(parse_refusal(&refused).unwrap().0, refusal::REPLAYED);
}

/// Receive one signal on `sub` while `publisher` keeps publishing, or `None`
/// after `deadline` (a PUB drops what it sends before its connection is up).
fn first_signal(
    publisher: &mut Box<dyn Publisher>,
    sub: &mut SecureSubscriber,
    topic: &[u8],
    deadline: Duration,
) -> Option<AuthenticSignal> {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        publisher.publish(topic, b"me").unwrap();
        if let Some(s) = sub.recv_from(Duration::from_millis(100)).unwrap() {
            return Some(s);
        }
    }
    None
}

#[test]
fn insecure_mode_is_plaintext_without_a_handshake_on_both_transports() {
    for t in transports() {
        let (url, sig) = (tcp_url(), tcp_url());
        let server = SecureLayer::new(t.clone(), SecureConfig::insecure().with_urls(&url, &sig));
        assert!(server.is_insecure());
        let calls = Arc::new(AtomicUsize::new(0));
        let _rep = echo_server(&server, &url, calls.clone());
        let mut sub = server
            .subscriber(&Endpoint::Bind(sig.clone()), &TransportOptions::default())
            .unwrap();

        let client = SecureLayer::new(t.clone(), SecureConfig::insecure());
        let mut r = client
            .requester(&url, &TransportOptions::default())
            .unwrap();
        // Every peer of an insecure node is taken for a gestor (its danger).
        assert_eq!(r.request(b"hi", T).unwrap(), b"gestor:hi", "{}", t.name());
        let big = vec![7u8; 300_000];
        assert_eq!(&r.request(&big, T).unwrap()[7..], &big[..]);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(server.stats().handshakes, 0, "no handshake");
        assert_eq!(server.stats().sessions, 0, "no session");

        // Signals need no session either, and arrive from a "gestor".
        let mut publisher = client
            .publisher_to(&sig, &TransportOptions::default())
            .unwrap();
        let got = first_signal(&mut publisher, &mut sub, b"alive", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{}: no plaintext signal", t.name()));
        assert_eq!(
            (got.0.as_slice(), got.1.as_slice()),
            (&b"alive"[..], &b"me"[..])
        );
        assert!(got.2.is_gestor());
    }

    // On the wire: one type byte, then the inner message as it is.
    let t: Arc<dyn Transport> = Arc::new(gestor_transport_nng::NngTransport::new());
    let frames = Arc::new(Mutex::new(Vec::new()));
    let mut wire = PlainRequester {
        layer: SecureLayer::new(t.clone(), SecureConfig::insecure()),
        inner: Box::new(Wire {
            server: SecureLayer::new(t, SecureConfig::insecure()),
            frames: frames.clone(),
        }),
        url: "wire".into(),
    };
    assert_eq!(wire.request(b"secret", T).unwrap(), b"ok:secret");
    assert_eq!(frames.lock().unwrap()[0], b"\x10secret");
}

#[test]
fn secure_and_plaintext_sides_refuse_each_other_on_both_transports() {
    for t in transports() {
        let cluster = Cluster::new();
        let calls = Arc::new(AtomicUsize::new(0));

        // A plaintext client at a secure gestor: refused, nothing run.
        let (url, sig) = (tcp_url(), tcp_url());
        let secure = SecureLayer::new(
            t.clone(),
            SecureConfig::gestor(cluster.key.admit("a").unwrap(), cluster.key.public())
                .with_urls(&url, &sig),
        );
        let _rep = echo_server(&secure, &url, calls.clone());
        let plain = SecureLayer::new(t.clone(), SecureConfig::insecure());
        let err = plain
            .requester(&url, &TransportOptions::default())
            .unwrap()
            .request(b"hi", T)
            .unwrap_err();
        assert!(
            matches!(err, TransportError::OtherMode { .. }),
            "{}: {err}",
            t.name()
        );
        assert!(err.to_string().contains("runs secure"), "{err}");
        assert_eq!(secure.stats().malformed, 1, "counted");

        // Plaintext signals at a secure gestor: dropped and counted.
        let mut sub = secure
            .subscriber(&Endpoint::Bind(sig.clone()), &TransportOptions::default())
            .unwrap();
        let mut publisher = plain
            .publisher_to(&sig, &TransportOptions::default())
            .unwrap();
        assert!(
            first_signal(&mut publisher, &mut sub, b"alive", Duration::from_secs(2)).is_none(),
            "{}: a plaintext signal was heard",
            t.name()
        );
        assert!(secure.stats().malformed > 1, "{}: not counted", t.name());

        // A secure client, and a secure gestor, at a plaintext node: refused
        // after the first handshake message, before anything of theirs.
        let plain_node = SecureLayer::new(t.clone(), SecureConfig::insecure());
        let plain_url = tcp_url();
        let _plain_rep = echo_server(&plain_node, &plain_url, calls.clone());
        for side in [cluster.client(&t), cluster.gestor(&t, "b")] {
            let err = side
                .requester(&plain_url, &TransportOptions::default())
                .unwrap()
                .request(b"password=hunter2", T)
                .unwrap_err();
            assert!(
                matches!(err, TransportError::OtherMode { .. }),
                "{}: {err}",
                t.name()
            );
            assert!(err.to_string().contains("--insecure"), "{err}");
        }
        // A chat peer asked for as a client endpoint is no different.
        let err = cluster
            .client(&t)
            .requester_to_client(&plain_url, &TransportOptions::default())
            .unwrap()
            .request(b"msg", T)
            .unwrap_err();
        assert!(matches!(err, TransportError::OtherMode { .. }), "{err}");
        assert_eq!(calls.load(Ordering::SeqCst), 0, "a handler ran");
        assert_eq!(plain_node.stats().malformed, 3);
    }

    // Frame by frame: a sealed signal at a plaintext node is dropped.
    let t: Arc<dyn Transport> = Arc::new(gestor_transport_nng::NngTransport::new());
    let plain = SecureLayer::new(t, SecureConfig::insecure());
    assert!(plain
        .open_plain_signal(&[frame::SIGNAL_FROM_INITIATOR; 64])
        .is_none());
    assert!(
        plain.open_plain_signal(b"\x12alive").is_none(),
        "no separator"
    );
    assert_eq!(plain.stats().malformed, 2);
}

/// A replier whose fast path answers `fast…` and defers the rest to the
/// worker handler; counts where each ran.
fn fast_path_server(
    layer: &SecureLayer,
    url: &str,
    fast_calls: Arc<AtomicUsize>,
    worker_calls: Arc<AtomicUsize>,
) -> Box<dyn Replier> {
    layer
        .replier_with_fast_path(
            url,
            Arc::new(move |req: &[u8], _: &Peer, _queued| {
                worker_calls.fetch_add(1, Ordering::SeqCst);
                [b"worker:", req].concat()
            }),
            Arc::new(move |req: &[u8], peer: &Peer| {
                fast_calls.fetch_add(1, Ordering::SeqCst);
                let who = if peer.is_gestor() { "gestor" } else { "client" };
                req.starts_with(b"fast")
                    .then(|| [format!("{who}:").as_bytes(), req].concat())
            }),
            &TransportOptions::default(),
        )
        .expect("replier")
}

#[test]
fn the_fast_path_answers_on_the_io_thread_and_defers_the_rest_in_both_modes() {
    for t in transports() {
        for insecure in [false, true] {
            let cluster = Cluster::new();
            let url = tcp_url();
            let (server, client) = if insecure {
                let sig = tcp_url();
                let server =
                    SecureLayer::new(t.clone(), SecureConfig::insecure().with_urls(&url, &sig));
                (
                    server,
                    SecureLayer::new(t.clone(), SecureConfig::insecure()),
                )
            } else {
                (cluster.gestor(&t, "a"), cluster.client(&t))
            };
            let (fast, worker) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let _rep = fast_path_server(&server, &url, fast.clone(), worker.clone());
            let mut r = client
                .requester(&url, &TransportOptions::default())
                .unwrap();
            let who = if insecure { "gestor" } else { "client" };
            let case = format!("{} insecure={insecure}", t.name());
            for i in 0..3 {
                let fast_req = format!("fast{i}");
                let got = r.request(fast_req.as_bytes(), T).unwrap();
                assert_eq!(got, format!("{who}:{fast_req}").into_bytes(), "{case}");
                let slow_req = format!("slow{i}");
                let got = r.request(slow_req.as_bytes(), T).unwrap();
                assert_eq!(got, format!("worker:{slow_req}").into_bytes(), "{case}");
            }
            assert_eq!(
                fast.load(Ordering::SeqCst),
                6,
                "{case}: every request offered"
            );
            assert_eq!(
                worker.load(Ordering::SeqCst),
                3,
                "{case}: only deferred ones on workers"
            );
            assert_eq!(
                server.stats().replayed,
                0,
                "{case}: a deferred request is opened once"
            );
        }
    }
}

#[test]
fn a_request_deferred_by_the_fast_path_is_answered_once_and_its_resend_replayed() {
    let (server, mut wire, _) = gestor_pair_over_a_wire();
    assert_eq!(wire.request(b"warm", T).unwrap(), b"ok:warm");
    // Seal a request the way the requester does, then serve it through triage.
    let session = server_side_session_frame(&mut wire, b"deferred");
    let told = Arc::new(AtomicUsize::new(0));
    let handler: SecureHandler = {
        let told = Arc::clone(&told);
        Arc::new(move |req: &[u8], _: &Peer, queued: Duration| {
            told.store(queued.as_millis() as usize, Ordering::SeqCst);
            [b"late:", req].concat()
        })
    };
    let declines: FastHandler = Arc::new(|_: &[u8], _: &Peer| None);
    // From another gestor: continued on a worker ahead of clients' requests.
    let gestor_sdk::Triage::Urgent(rest) = server.triage(&session, Some(&declines), &handler)
    else {
        panic!("a gestor's declined sealed request is continued on a worker, urgently");
    };
    let reply = rest(Duration::from_millis(1234));
    assert_eq!(reply[0], frame::REPLY);
    assert_eq!(
        told.load(Ordering::SeqCst),
        1234,
        "the handler hears how long the request queued"
    );
    // The same frame again (a REQ resend) gets the remembered reply, and
    // neither handler runs.
    let refuses: FastHandler = Arc::new(|_: &[u8], _: &Peer| panic!("ran"));
    let again = server.triage(&session, Some(&refuses), &handler);
    let gestor_sdk::Triage::Reply(resent) = again else {
        panic!("a resend is answered on the I/O thread");
    };
    assert_eq!(resent, reply);
}

#[test]
fn gestores_requests_go_ahead_of_clients_on_the_workers() {
    let t: Arc<dyn Transport> = Arc::new(gestor_transport_nng::NngTransport::new());
    let cluster = Cluster::new();
    let server = cluster.gestor(&t, "a");
    let handler: SecureHandler = Arc::new(|req: &[u8], _: &Peer, _| req.to_vec());
    let declines: FastHandler = Arc::new(|_: &[u8], _: &Peer| None);
    for (caller, urgent) in [(cluster.gestor(&t, "b"), true), (cluster.client(&t), false)] {
        let mut wire = SecureRequester {
            layer: caller,
            inner: Box::new(Wire {
                server: server.clone(),
                frames: Arc::default(),
            }),
            url: "wire".into(),
            require_gestor: true,
        };
        let frame = server_side_session_frame(&mut wire, b"work");
        let lane = server.triage(&frame, Some(&declines), &handler);
        assert_eq!(
            matches!(lane, gestor_sdk::Triage::Urgent(_)),
            urgent,
            "{lane:?}"
        );
        assert_eq!(
            matches!(lane, gestor_sdk::Triage::Continue(_)),
            !urgent,
            "{lane:?}"
        );
    }
}

/// A request sealed in `wire`'s session, as it would cross the network.
fn server_side_session_frame(wire: &mut SecureRequester, payload: &[u8]) -> Vec<u8> {
    let session = wire
        .layer
        .session_with(&wire.url, wire.inner.as_mut(), T, true)
        .unwrap();
    session.seal(frame::REQUEST, payload, &[]).unwrap().0
}
