#!/usr/bin/env python3
"""A minimal gestor client in Python, written only from docs/PROTOCOL.md.

It speaks to a ring that runs the ZeroMQ transport (`--transport zmq`), using
pyzmq and cbor2 for the wire, and noiseprotocol and cryptography for the
secure layer that every frame goes through (PROTOCOL.md section 3.1):

    pip install pyzmq cbor2 noiseprotocol cryptography

Gestores talk only through Noise-secured sessions. Before this client sends
anything that matters (in particular a password), each gestor must prove in
the handshake that it holds a credential signed by the ring's cluster key.
Give it the operator's `cluster.pub` file with `--cluster-pub FILE` or the
environment variable GESTOR_CLUSTER_PUB; without one it refuses to talk to
anybody. (`--insecure` talks to a development ring started with --insecure:
plaintext frames, no handshake, nobody's identity checked; such a client and
a secure gestor refuse each other.)

Single steps:

    client.py ping
    client.py register alice --password pw [--address 10.0.0.1:4000]
    client.py login alice --password pw --address 10.0.0.1:4000   # prints token, gestor, signal
    client.py alive alice --token T --count 3   # gestor and signal looked up, or given as
                                                # --responsible URL --signal URL (login reply)
    client.py lookup alice
    client.py set-address alice --token T --address 10.0.0.1:4001
    client.py logout alice --token T
    client.py status
    client.py conformance   # checks the rules of PROTOCOL.md sections 4, 5, 7, 9 and 18.3

The whole flow, with checks (exit status 0 only if every step behaved as the
protocol document says):

    client.py --gestor tcp://127.0.0.1:7811 --cluster-pub cluster.pub demo

`--gestor` may be repeated. Gestores are tried in order, and the
initial-gestors list from each reply is appended as fallbacks (PROTOCOL.md
section 11). A gestor that fails the credential check is never skipped
quietly: the client stops with one line saying why, before the handshake's
third message, so that gestor learns nothing from it.
"""

import argparse
import json
import os
import re
import secrets
import sys
import time

try:
    import cbor2
    import zmq
    from cryptography.exceptions import InvalidSignature, InvalidTag
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from noise.connection import Keypair, NoiseConnection
except ImportError as missing:  # pragma: no cover - depends on the machine
    sys.stderr.write(
        f"error: this client needs the packages pyzmq, cbor2, noiseprotocol and cryptography "
        f"({missing}); install them with: pip install pyzmq cbor2 noiseprotocol cryptography\n"
    )
    sys.exit(2)

try:
    import tomllib  # Python 3.11+
except ImportError:  # pragma: no cover - older Pythons
    tomllib = None

PROTOCOL_VERSION = 1
ALIVE_TOPIC = b"alive"
SEPARATOR = b"\x00"
CLUSTER_PUB_ENV = "GESTOR_CLUSTER_PUB"

# ---- the secure layer (PROTOCOL.md section 3.1) --------------------------------

NOISE_PROTOCOL = b"Noise_XX_25519_ChaChaPoly_BLAKE2s"
PROLOGUE = b"gestor secure v1"
HELLO, HELLO_REPLY, AUTH, AUTH_REPLY = 0x01, 0x02, 0x03, 0x04
REQUEST, REPLY, SIGNAL_FROM_INITIATOR = 0x05, 0x06, 0x07
REFUSAL = 0x0F
# Insecure (development) rings: plaintext frames of their own types.
PLAIN_REQUEST, PLAIN_REPLY, PLAIN_SIGNAL = 0x10, 0x11, 0x12
SIGNAL_TOPIC = b"s"  # outer PUB topic of every sealed signal
SID_LEN = 16
HEADER_LEN = 1 + SID_LEN + 8
TAG_LEN = 16
REPLAY_WINDOW = 1024
UNKNOWN_SESSION = 1
INSECURE_NODE, SECURE_ONLY = 7, 8
REFUSALS = {
    1: "unknown session",
    2: "replayed or too old counter",
    3: "authentication failed",
    4: "handshake refused",
    5: "not a secure frame",
    6: "too many handshakes in progress",
    7: "the node runs --insecure (plaintext)",
    8: "the gestor runs secure and refuses plaintext",
}
CREDENTIAL_CONTEXT = b"gestor credential v1\x00"
NAME_RULE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class GestorError(Exception):
    """The gestor answered with an error reply (`ok: false`)."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Unreachable(Exception):
    """No gestor answered within the deadline."""


class Untrusted(Exception):
    """A gestor did not prove admission to the cluster: never a fallback to skip past."""

    def __init__(self, url, reason):
        super().__init__(f"refusing {url}: it does not prove admission to this cluster ({reason})")


class OtherMode(Exception):
    """The gestor runs in the other mode (secure vs --insecure): never a fallback to skip past."""

    def __init__(self, url, reason):
        super().__init__(f"refusing {url}: {reason}")


class SecureError(Exception):
    """The secure session with one gestor failed (refused, altered or replayed frame)."""

    def __init__(self, url, reason):
        super().__init__(f"secure channel to {url}: {reason}")


class ConfigError(Exception):
    """Bad or missing trust configuration (cluster.pub)."""


def load_cluster_pub(path):
    """The 32-byte Ed25519 cluster key from a `cluster.pub` TOML file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"cannot use the cluster public key {path}: {e.strerror}") from None
    try:
        if tomllib is not None:
            doc = tomllib.loads(raw.decode("utf-8"))
        else:  # the file is two `key = "value"` lines: enough without a TOML library
            doc = dict(re.findall(r'^\s*(\w+)\s*=\s*"([^"]*)"', raw.decode("utf-8"), re.M))
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"cannot use the cluster public key {path}: not TOML ({e})") from None
    if doc.get("kind") != "gestor-cluster-pub":
        raise ConfigError(
            f"cannot use the cluster public key {path}: is a {doc.get('kind')!r} file, "
            "expected 'gestor-cluster-pub'"
        )
    try:
        key = bytes.fromhex(doc.get("public", ""))
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError(
            f"cannot use the cluster public key {path}: public: expected 64 hex digits"
        )
    try:
        Ed25519PublicKey.from_public_bytes(key)
    except ValueError as e:
        raise ConfigError(f"cannot use the cluster public key {path}: {e}") from None
    return key


def check_credential(cluster_key, identity, remote_static):
    """Why the gestor's handshake identity does not admit it to the cluster, or None.

    `remote_static` is the static key the gestor proved in Noise message 2.
    """
    cred = identity.get("credential") if isinstance(identity, dict) else None
    if cred is None:
        return "it presented no gestor credential"
    if not isinstance(cred, dict):
        return "malformed credential"
    name = cred.get("name")
    static_public = cred.get("static_public")
    cluster = cred.get("cluster")
    signature = cred.get("signature")
    if not (
        isinstance(name, str)
        and isinstance(static_public, bytes)
        and len(static_public) == 32
        and isinstance(cluster, bytes)
        and len(cluster) == 32
        and isinstance(signature, bytes)
        and len(signature) == 64
    ):
        return "malformed credential"
    if cluster != cluster_key:
        return (
            f"credential of another cluster ({cluster[:8].hex()}…, "
            f"this is {cluster_key[:8].hex()}…)"
        )
    if not NAME_RULE.fullmatch(name):
        return f"credential with an invalid gestor name {name!r}"
    encoded = name.encode("utf-8")
    message = (
        CREDENTIAL_CONTEXT + cluster + static_public + len(encoded).to_bytes(2, "big") + encoded
    )
    try:
        Ed25519PublicKey.from_public_bytes(cluster_key).verify(signature, message)
    except InvalidSignature:
        return "credential signature does not verify"
    if static_public != remote_static:
        return "credential belongs to another static key"
    return None


def nonce(counter):
    """Noise's ChaChaPoly nonce: 4 zero bytes, then the counter little-endian."""
    return b"\x00" * 4 + counter.to_bytes(8, "little")


def parse_refusal(frame):
    if len(frame) >= 2 and frame[0] == REFUSAL:
        return frame[1], frame[2:].decode("utf-8", "replace")
    return None


def describe_refusal(code, reason):
    return f"refused ({code}, {REFUSALS.get(code, 'unknown code')}): {reason}"


class Session:
    """One secure session with one gestor: id, split keys, counters."""

    def __init__(self, url, sid, k1, k2, gestor_name, signal_url):
        self.url = url
        self.sid = sid
        self.send = ChaCha20Poly1305(bytes(k1))  # initiator -> responder
        self.recv = ChaCha20Poly1305(bytes(k2))  # responder -> initiator
        self.counter = 0  # next counter we send: requests and signals share it
        self.highest = None  # highest counter accepted from the gestor
        self.seen = set()  # accepted counters within the window
        self.gestor_name = gestor_name
        self.signal_url = signal_url

    def seal(self, kind, plaintext, extra_ad=b""):
        counter = self.counter
        self.counter += 1
        header = bytes([kind]) + self.sid + counter.to_bytes(8, "big")
        return header + self.send.encrypt(nonce(counter), plaintext, header + extra_ad), counter

    def _fresh(self, counter):
        if self.highest is None or counter > self.highest:
            return True
        return self.highest - counter < REPLAY_WINDOW and counter not in self.seen

    def open_reply(self, frame, request_counter):
        """The inner reply of a sealed REPLY to the request numbered `request_counter`."""
        if len(frame) < HEADER_LEN + TAG_LEN or frame[0] != REPLY or frame[1:17] != self.sid:
            raise SecureError(self.url, "reply is not a sealed reply of this session")
        counter = int.from_bytes(frame[17:HEADER_LEN], "big")
        if not self._fresh(counter):
            raise SecureError(self.url, "reply failed authentication or was replayed")
        ad = frame[:HEADER_LEN] + request_counter.to_bytes(8, "big")
        try:
            plain = self.recv.decrypt(nonce(counter), frame[HEADER_LEN:], ad)
        except InvalidTag:
            raise SecureError(self.url, "reply failed authentication or was replayed") from None
        self.seen.add(counter)
        if self.highest is None or counter > self.highest:
            self.highest = counter
            self.seen = {c for c in self.seen if self.highest - c < REPLAY_WINDOW}
        return plain


class Client:
    """Sealed requests over ZeroMQ REQ sockets, with fallback across gestores.

    `cluster_key` is the trusted cluster's Ed25519 public key (32 bytes), or
    None for a development ring started with --insecure.
    """

    def __init__(self, gestores, cluster_key, timeout_ms=5000):
        self.ctx = zmq.Context.instance()
        self.candidates = list(dict.fromkeys(gestores))
        self.initial_gestors = []
        self.timeout_ms = timeout_ms
        self.cluster_key = cluster_key
        self.static_secret = secrets.token_bytes(32)  # fresh X25519 static key per process
        self.sockets = {}
        self.sessions = {}  # request URL -> Session

    def _socket(self, url):
        sock = self.sockets.get(url)
        if sock is None:
            sock = self.ctx.socket(zmq.REQ)  # a plain REQ works (section 2)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(url)
            self.sockets[url] = sock
        return sock

    def _discard(self, url):
        # After a timeout a plain REQ socket cannot send again: use a new one.
        sock = self.sockets.pop(url, None)
        if sock is not None:
            sock.close(linger=0)

    def _exchange(self, url, frame):
        """One frame out, one frame back; None on timeout."""
        sock = self._socket(url)
        sock.send(frame)
        if not sock.poll(self.timeout_ms, zmq.POLLIN):
            self._discard(url)
            return None
        return sock.recv()

    def _handshake(self, url):
        """Noise XX with the gestor at `url`; the Session, or None on timeout."""
        noise = NoiseConnection.from_name(NOISE_PROTOCOL)
        noise.set_as_initiator()
        noise.set_keypair_from_private_bytes(Keypair.STATIC, self.static_secret)
        noise.set_prologue(PROLOGUE)
        noise.start_handshake()
        reply = self._exchange(url, bytes([HELLO]) + bytes(noise.write_message(b"")))
        if reply is None:
            return None
        refused = parse_refusal(reply)
        if refused and refused[0] == INSECURE_NODE:
            raise OtherMode(
                url,
                "it runs --insecure (plaintext, development only) and proves nothing; "
                "this client trusts a cluster key and talks only to secure gestores",
            )
        if refused:
            raise SecureError(url, "handshake " + describe_refusal(*refused))
        if len(reply) < 1 + SID_LEN or reply[0] != HELLO_REPLY:
            raise Untrusted(url, "it does not speak the secure protocol")
        sid = reply[1 : 1 + SID_LEN]
        try:
            payload = bytes(noise.read_message(reply[1 + SID_LEN :]))
        except Exception as e:  # noise raises several kinds for a bad message
            raise SecureError(url, f"bad handshake reply: {e or type(e).__name__}") from None
        remote_static = noise.noise_protocol.handshake_state.rs.public_bytes
        try:
            identity = cbor2.loads(payload)
        except Exception:
            identity = {}
        if not isinstance(identity, dict):
            identity = {}
        # Decide before message 3: a gestor that is not ours learns nothing of us.
        if self.cluster_key is not None:
            why_not = check_credential(self.cluster_key, identity, remote_static)
            if why_not:
                raise Untrusted(url, why_not)
        cred = identity.get("credential")
        name = cred.get("name") if isinstance(cred, dict) else None
        ours = cbor2.dumps({"credential": None, "request_url": None, "signal_url": None})
        msg3 = bytes(noise.write_message(ours))
        # Noise's Split(): k1 protects initiator -> responder, k2 the other way.
        k1 = noise.noise_protocol.cipher_state_encrypt.k
        k2 = noise.noise_protocol.cipher_state_decrypt.k
        reply = self._exchange(url, bytes([AUTH]) + sid + msg3)
        if reply is None:
            return None
        refused = parse_refusal(reply)
        if refused:
            raise SecureError(url, "handshake " + describe_refusal(*refused))
        if reply != bytes([AUTH_REPLY]) + sid:
            raise SecureError(url, "bad handshake confirmation")
        signal_url = identity.get("signal_url")
        if not isinstance(signal_url, str):
            signal_url = None
        session = Session(url, sid, k1, k2, name, signal_url)
        self.sessions[url] = session
        return session

    def session_with(self, url):
        """The session with the gestor at `url`, handshaking if needed; None on timeout."""
        return self.sessions.get(url) or self._handshake(url)

    def request_to(self, url, kind, body=None):
        """One request to one gestor; returns the decoded reply envelope, or None on timeout."""
        inner = cbor2.dumps({"v": PROTOCOL_VERSION, "kind": kind, "body": body})
        return self.request_inner(url, inner)

    def request_inner(self, url, inner):
        """Send the inner request `inner` (bytes, section 3) to `url`, sealed
        (or in plaintext to an --insecure ring); the reply envelope or None."""
        if self.cluster_key is None:
            return self._plain_request_to(url, inner)
        for _ in range(2):  # twice only if the gestor forgot our session
            session = self.session_with(url)
            if session is None:
                return None
            frame, counter = session.seal(REQUEST, inner)
            reply = self._exchange(url, frame)
            if reply is None:
                return None
            refused = parse_refusal(reply)
            if refused and refused[0] == UNKNOWN_SESSION:
                # Expired, evicted or the gestor restarted: the request was not run.
                self.sessions.pop(url, None)
                continue
            if refused:
                raise SecureError(url, describe_refusal(*refused))
            envelope = cbor2.loads(session.open_reply(reply, counter))
            if not isinstance(envelope, dict) or "ok" not in envelope:
                raise GestorError("malformed", f"reply from {url} is not an envelope: {envelope!r}")
            return envelope
        raise SecureError(url, "the gestor keeps forgetting the session")

    def _plain_request_to(self, url, inner):
        """--insecure: one plaintext request, no handshake (section 3.1, "Development rings")."""
        reply = self._exchange(url, bytes([PLAIN_REQUEST]) + inner)
        if reply is None:
            return None
        refused = parse_refusal(reply)
        if refused and refused[0] == SECURE_ONLY:
            raise OtherMode(
                url,
                "the gestor runs secure (Noise, admitted gestores only) and refuses plaintext; "
                "this client runs --insecure: give it --cluster-pub FILE instead",
            )
        if refused:
            raise SecureError(url, describe_refusal(*refused))
        if not reply or reply[0] != PLAIN_REPLY:
            raise SecureError(url, "reply is not a plaintext reply (0x11)")
        envelope = cbor2.loads(reply[1:])
        if not isinstance(envelope, dict) or "ok" not in envelope:
            raise GestorError("malformed", f"reply from {url} is not an envelope: {envelope!r}")
        return envelope

    def call(self, kind, body=None):
        """Send to the first gestor that answers; return the reply body or raise GestorError."""
        tried = []
        for url in list(self.candidates):
            try:
                reply = self.request_to(url, kind, body)
            except SecureError as e:
                tried.append(f"{url} ({e})")
                continue
            if reply is None:
                tried.append(f"{url} (no reply within {self.timeout_ms} ms)")
                continue
            learned = reply.get("initial_gestors") or []
            if learned:  # an empty list means "not known yet": ignore it
                self.initial_gestors = list(learned)
                for u in learned:
                    if u not in self.candidates:
                        self.candidates.append(u)
            if reply["ok"]:
                return reply["body"]
            err = reply.get("error") or {}
            raise GestorError(err.get("code", "?"), err.get("message", ""))
        raise Unreachable("; ".join(tried))

    # ---- the user.* kinds (PROTOCOL.md section 7) ---------------------------

    def register(self, username, password, address=None):
        body = {"username": username, "password": password}
        if address is not None:
            body["address"] = address
        return self.call("user.register", body)

    def login(self, username, password, address):
        return self.call(
            "user.login", {"username": username, "password": password, "address": address}
        )

    def lookup(self, username):
        return self.call("user.lookup", {"username": username})

    def set_address(self, username, token, address):
        return self.call(
            "user.set_address", {"username": username, "token": token, "address": address}
        )

    def logout(self, username, token):
        return self.call("user.logout", {"username": username, "token": token})

    # ---- the mailbox (PROTOCOL.md section 18.3) -------------------------------

    def mail_put(self, token, message):
        """Leave `message` (the six keys of section 18.1) in its recipient's mailbox."""
        body = {"token": token}  # one flat map: the token beside the message's keys
        body.update(message)
        return self.call("mail.put", body)

    def mail_fetch(self, username, token):
        return self.call("mail.fetch", {"username": username, "token": token})

    def close(self):
        for url in list(self.sockets):
            self._discard(url)


class AliveSender:
    """A PUB socket connected to the responsible gestor's signal endpoint (section 8).

    Each signal is sealed (type 0x07) with the session made with the
    responsible gestor: `gestor_url` is the `gestor` field of the login reply,
    `signal_url` its `signal` field.
    """

    def __init__(self, client, gestor_url, signal_url, username, token, settle_s=0.5):
        # An --insecure client sends plaintext signals (type 0x12) and needs no session.
        self.session = None if client.cluster_key is None else client.session_with(gestor_url)
        if self.session is None and client.cluster_key is not None:
            raise Unreachable(f"{gestor_url} (no reply within {client.timeout_ms} ms)")
        self.signal_url = signal_url
        self.inner = ALIVE_TOPIC + SEPARATOR + cbor2.dumps({"username": username, "token": token})
        self.sock = zmq.Context.instance().socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(signal_url)
        # A PUB drops what it sends before its connection is up: give it a moment.
        time.sleep(settle_s)

    def beat(self):
        if self.session is None:
            self.sock.send(SIGNAL_TOPIC + SEPARATOR + bytes([PLAIN_SIGNAL]) + self.inner)
            return
        sealed, _ = self.session.seal(SIGNAL_FROM_INITIATOR, self.inner)
        self.sock.send(SIGNAL_TOPIC + SEPARATOR + sealed)  # one frame, outer topic "s"

    def close(self):
        self.sock.close(linger=0)


# ---- output helpers -----------------------------------------------------------


def show(value):
    print(json.dumps(value, indent=2, sort_keys=False, default=lambda b: b.hex()))


def step(text):
    print(f"--- {text}")


class DemoFailure(Exception):
    pass


def expect(condition, what):
    if not condition:
        raise DemoFailure(what)
    print(f"    ok: {what}")


def expect_error(code, fn, *args):
    try:
        fn(*args)
    except GestorError as e:
        expect(e.code == code, f"error {code} ({e.message})")
        return
    raise DemoFailure(f"expected error {code}, got success")


def describe_session(client, url):
    if client.cluster_key is None:
        return f"plaintext to {url} (INSECURE: no session, identity not checked)"
    session = client.sessions.get(url)
    if session is None:
        return f"no session with {url}"
    return (
        f"session with {url}: gestor {session.gestor_name!r}, credential signed by "
        f"cluster {client.cluster_key[:8].hex()}…"
    )


# ---- the demo flow ---------------------------------------------------------------


def demo(client, args):
    user = args.user or f"py-{secrets.token_hex(4)}"
    password = args.password or secrets.token_urlsafe(12)
    address = args.address

    step("ping (the first request makes a secure session)")
    expect(client.call("node.ping") == "pong", "node.ping answers \"pong\"")
    first = next(iter(client.sessions), client.candidates[0])
    print(f"    {describe_session(client, first)}")
    print(f"    initial gestors: {client.initial_gestors}")

    step(f"register {user}")
    reg = client.register(user, password)
    show(reg)
    expect(reg["username"] == user, "reply names the user")
    again = client.register(user, password)
    expect(again["username"] == user, "registering again with the password is a retry (section 7)")
    expect_error("conflict", client.register, user, password + "x")
    expect_error("bad_request", client.register, "Bad Name", password)

    step(f"login {user} at {address}")
    expect_error("unauthorized", client.login, user, password + "x", address)
    session = client.login(user, password, address)
    show(session)
    expect(len(session["token"]) == 32, "token is 32 hex characters")
    expect(session["gestor"] == reg["gestor"], "same responsible gestor as at registration")

    before = client.lookup(user)
    expect(before["online"] is True, "online right after login")
    expect(before["address"] == address, "lookup shows the login address")

    beats = args.beats
    every_s = (args.beat_ms or session["alive_every_ms"]) / 1000.0
    step(f"{beats} alive signals to {session['signal']}, every {every_s:.1f} s")
    sender = AliveSender(client, session["gestor"], session["signal"], user, session["token"])
    print(f"    sealed with the {describe_session(client, session['gestor'])}")
    try:
        for i in range(beats):
            sender.beat()
            print(f"    alive #{i + 1} sent")
            if i + 1 < beats:
                time.sleep(every_s)
        time.sleep(0.3)  # let the last one arrive
    finally:
        sender.close()

    step(f"lookup {user} through every initial gestor")
    seen = None
    for url in client.initial_gestors or client.candidates:
        reply = client.request_to(url, "user.lookup", {"username": user})
        if reply is None:
            print(f"    {url}: no reply")
            continue
        if not reply["ok"]:
            raise DemoFailure(f"lookup via {url} failed: {reply['error']}")
        found = reply["body"]
        print(
            f"    via {url}: {found['user']} at {found['address']}, "
            f"{'online' if found['online'] else 'offline'}, last_seen_ms={found['last_seen_ms']}, "
            f"responsible {found['gestor']}, hops={found['hops']}"
        )
        expect(found["online"] is True, f"online via {url}")
        seen = found
    if seen is None:
        raise DemoFailure("no gestor answered the lookups")
    expect(
        seen["last_seen_ms"] > before["last_seen_ms"],
        f"alive signals reached the responsible gestor "
        f"(last_seen_ms {before['last_seen_ms']} -> {seen['last_seen_ms']})",
    )

    step("set_address")
    new_address = args.new_address
    expect_error("unauthorized", client.set_address, user, "0" * 32, new_address)
    show(client.set_address(user, session["token"], new_address))
    expect(client.lookup(user)["address"] == new_address, "lookup shows the new address")

    step(f"logout {user}")
    show(client.logout(user, session["token"]))
    after = client.lookup(user)
    expect(after["online"] is False, "offline right after logout")
    expect(
        client.logout(user, session["token"])["ok"] is True,
        "a repeated logout answers ok (section 7)",
    )
    expect_error("unauthorized", client.set_address, user, session["token"], address)
    expect_error("not_found", client.lookup, f"nobody-{secrets.token_hex(4)}")
    n = len(client.sessions)
    print(f"demo passed for {user} ({n} secure session{'' if n == 1 else 's'})")


# ---- the rules a client relies on, checked against a ring ------------------------------


def expect_reply_error(code, reply, what):
    """`reply` is an error envelope with `code`."""
    if reply is None:
        raise DemoFailure(f"{what}: no reply")
    got = (reply.get("error") or {}).get("code") if not reply.get("ok") else "ok"
    expect(got == code, f"{what}: {code}")


def envelope_rules(client, url):
    """Sections 3, 4 and 5: what a gestor makes of frames that are not quite right."""
    step("envelope rules (sections 4 and 5)")

    def raw(inner):
        return client.request_inner(url, inner)

    ping = {"v": 1, "kind": "node.ping", "body": None}
    expect(raw(cbor2.dumps(ping))["ok"] is True, "a plain ping is answered")
    expect_reply_error(
        "malformed",
        raw(cbor2.dumps({b"v": 1, "kind": "node.ping"})),
        "a byte-string key in the envelope",
    )
    expect_reply_error(
        "malformed",
        raw(cbor2.dumps({"v": 1, "kind": b"node.ping"})),
        "a byte-string kind",
    )
    for v in (2, 2**32, 2**64 - 1):
        expect_reply_error(
            "bad_request", raw(cbor2.dumps({"v": v, "kind": "node.ping"})), f"v = {v}"
        )
    for v in (-1, 1.0, "1"):
        expect_reply_error(
            "malformed", raw(cbor2.dumps({"v": v, "kind": "node.ping"})), f"v = {v!r}"
        )
    expect_reply_error("malformed", raw(cbor2.dumps(ping) + b"\x00"), "a byte after the item")
    expect_reply_error(
        "malformed",
        raw(cbor2.dumps({"v": 1, "kind": "node.ping", "body": cbor2.CBORTag(0, "x")})),
        "a tag in the body",
    )
    # The envelope is level 1: a body 31 arrays deep is fine, 32 is not.
    def nested(levels):
        body = []
        for _ in range(levels - 1):
            body = [body]
        return {"v": 1, "kind": "node.ping", "body": body}

    expect(raw(cbor2.dumps(nested(31)))["ok"] is True, "32 levels of nesting are fine")
    deep = raw(cbor2.dumps(nested(32)))
    expect_reply_error("malformed", deep, "33 levels of nesting")
    expect("nested deeper than 32" in deep["error"]["message"], "the message says why")


def address_rules(client, password):
    """Section 9, with the examples it gives; a bad address is never answered ok."""
    step("address rules (section 9)")
    for bad in ["host", ":80", "host:0", "h:99999", "h:+80", "h:080", "::1:9000", "[::1]",
                "[example.org]:80", "a/b:80", ""]:
        user = f"py-{secrets.token_hex(4)}"
        expect_error("bad_request", client.register, user, password, bad)
    for good in ["127.0.0.1:9000", "example.org:5000", "[::1]:9000"]:
        user = f"py-{secrets.token_hex(4)}"
        client.register(user, password, good)
        expect(client.lookup(user)["address"] == good, f"{good!r} is stored as given")


def register_retries(client, password):
    """Section 7: a retry is the same request; anything else is refused, not ignored."""
    step("register retries (section 7)")
    user = f"py-{secrets.token_hex(4)}"
    client.register(user, password, "127.0.0.1:9100")
    again = client.register(user, password, "127.0.0.1:9100")
    expect(again["username"] == user, "the same register again is a retry")
    expect_error("conflict", client.register, user, password, "127.0.0.1:9101")
    expect_error("bad_request", client.register, user, password, "h:080")
    expect_error("conflict", client.register, user, password + "x", "127.0.0.1:9100")
    expect(client.lookup(user)["address"] == "127.0.0.1:9100", "the account is unchanged")
    session = client.login(user, password, "127.0.0.1:9102")
    expect_error("conflict", client.register, user, password, "127.0.0.1:9100")
    client.logout(user, session["token"])
    expect(client.logout(user, session["token"])["ok"] is True, "a repeated logout answers ok")


def mail_put_body(client, password):
    """Section 18.3: one flat map of seven keys; seq starts at 1; the id de-duplicates."""
    step("mail.put (section 18.3)")
    sender, recipient = f"py-{secrets.token_hex(4)}", f"py-{secrets.token_hex(4)}"
    client.register(sender, password)
    client.register(recipient, password)
    token = client.login(sender, password, "127.0.0.1:9200")["token"]
    message = {
        "id": secrets.token_hex(16),
        "from": sender,
        "to": recipient,
        "seq": 1,
        "sent_ms": int(time.time() * 1000),
        "text": "left in the mailbox",
    }
    expect(client.mail_put(token, message)["stored"] is True, "a flat body is stored")
    expect(client.mail_put(token, message)["stored"] is False, "the same put again is not")
    expect(
        client.mail_put(token, dict(message, seq=2))["stored"] is False,
        "nor the same id with another seq",
    )
    expect_error("bad_request", client.call, "mail.put", {"token": token, "mail": message})
    for field, value in (("seq", 0), ("seq", 1.0), ("id", "a/b")):
        fresh = dict(message, id=secrets.token_hex(16))
        fresh[field] = value
        expect_error("bad_request", client.mail_put, token, fresh)
    expect_error("unauthorized", client.mail_put, "0" * 32, dict(message, id=secrets.token_hex(16)))
    expect_error(
        "not_found",
        client.mail_put,
        token,
        dict(message, id=secrets.token_hex(16), to=f"nobody-{secrets.token_hex(4)}"),
    )
    inbox = client.login(recipient, password, "127.0.0.1:9201")
    held = client.mail_fetch(recipient, inbox["token"])["messages"]
    expect([m["id"] for m in held] == [message["id"]], "the recipient holds it once")


def conformance(client, args):
    password = secrets.token_urlsafe(12)
    url = client.candidates[0]
    envelope_rules(client, url)
    address_rules(client, password)
    register_retries(client, password)
    mail_put_body(client, password)
    print("conformance passed")


# ---- command line ---------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(
        description="gestor client over ZeroMQ + CBOR, Noise-secured (see docs/PROTOCOL.md)"
    )
    p.add_argument(
        "--gestor",
        action="append",
        help="request URL of any gestor; repeat for fallbacks (default tcp://127.0.0.1:7811)",
    )
    p.add_argument(
        "--cluster-pub",
        metavar="FILE",
        default=os.environ.get(CLUSTER_PUB_ENV) or None,
        help="the ring's cluster.pub (from `gestor cluster init`): only gestores admitted to "
        f"that cluster get a request (default: ${CLUSTER_PUB_ENV})",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="development only: talk to a ring started with --insecure (no identity checked)",
    )
    p.add_argument("--timeout-ms", type=int, default=5000, help="per-request deadline")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("ping", help="node.ping")
    sub.add_parser("status", help="node.status of the first gestor that answers")

    s = sub.add_parser("register", help="user.register")
    s.add_argument("user")
    s.add_argument("--password", required=True)
    s.add_argument("--address")

    s = sub.add_parser("login", help="user.login; prints the session")
    s.add_argument("user")
    s.add_argument("--password", required=True)
    s.add_argument("--address", required=True, help="HOST:PORT where the user can be reached")

    s = sub.add_parser("alive", help="publish alive signals for a logged-in user")
    s.add_argument("user")
    s.add_argument("--token", required=True)
    s.add_argument(
        "--responsible",
        metavar="URL",
        help="the 'gestor' URL from the login reply (default: looked up)",
    )
    s.add_argument(
        "--signal", help="the 'signal' URL from the login reply (default: looked up)"
    )
    s.add_argument("--count", type=int, default=3)
    s.add_argument("--every-ms", type=int, default=5000)

    s = sub.add_parser("lookup", help="user.lookup")
    s.add_argument("user")

    s = sub.add_parser("set-address", help="user.set_address")
    s.add_argument("user")
    s.add_argument("--token", required=True)
    s.add_argument("--address", required=True)

    s = sub.add_parser("logout", help="user.logout")
    s.add_argument("user")
    s.add_argument("--token", required=True)

    s = sub.add_parser("demo", help="register, login, alive, lookup, logout, with checks")
    s.add_argument("--user", help="username (default: a fresh random one)")
    s.add_argument("--password")
    s.add_argument("--address", default="127.0.0.1:9000")
    s.add_argument("--new-address", default="127.0.0.1:9001")
    s.add_argument("--beats", type=int, default=3, help="alive signals to send")
    s.add_argument(
        "--beat-ms",
        type=int,
        default=1000,
        help="interval between alive signals (0: use alive_every_ms from login)",
    )

    sub.add_parser(
        "conformance",
        help="check the envelope, address, register-retry and mail.put rules of PROTOCOL.md",
    )

    args = p.parse_args(argv)
    try:
        if args.cluster_pub:
            cluster_key = load_cluster_pub(args.cluster_pub)
        elif args.insecure:
            cluster_key = None
            print(
                "warning: --insecure: plaintext, no gestor's identity is checked (development rings only)",
                file=sys.stderr,
            )
        else:
            raise ConfigError(
                f"no cluster public key: pass --cluster-pub FILE or set {CLUSTER_PUB_ENV} "
                "(or --insecure, for a development ring)"
            )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    client = Client(args.gestor or ["tcp://127.0.0.1:7811"], cluster_key, args.timeout_ms)
    try:
        if args.command == "ping":
            show(client.call("node.ping"))
        elif args.command == "status":
            show(client.call("node.status"))
        elif args.command == "register":
            show(client.register(args.user, args.password, args.address))
        elif args.command == "login":
            show(client.login(args.user, args.password, args.address))
        elif args.command == "alive":
            responsible, signal = args.responsible, args.signal
            if responsible is None or signal is None:
                found = client.lookup(args.user)
                responsible = responsible or found["gestor"]
                signal = signal or found["signal"]
            sender = AliveSender(client, responsible, signal, args.user, args.token)
            for i in range(args.count):
                sender.beat()
                print(f"alive #{i + 1} sent to {signal} (sealed for {responsible})")
                if i + 1 < args.count:
                    time.sleep(args.every_ms / 1000.0)
            time.sleep(0.3)
            sender.close()
        elif args.command == "lookup":
            show(client.lookup(args.user))
        elif args.command == "set-address":
            show(client.set_address(args.user, args.token, args.address))
        elif args.command == "logout":
            show(client.logout(args.user, args.token))
        elif args.command == "demo":
            demo(client, args)
        elif args.command == "conformance":
            conformance(client, args)
        return 0
    except GestorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Unreachable as e:
        print(f"error: no gestor answered: {e}", file=sys.stderr)
        return 1
    except (Untrusted, OtherMode, SecureError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except DemoFailure as e:
        print(f"DEMO FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
