#!/usr/bin/env python3
"""A minimal gestor client in Python, written only from docs/PROTOCOL.md.

It speaks to a ring that runs the ZeroMQ transport (`--transport zmq`), using
nothing but pyzmq and cbor2:

    pip install pyzmq cbor2

Single steps:

    client.py ping
    client.py register alice --password pw [--address 10.0.0.1:4000]
    client.py login alice --password pw --address 10.0.0.1:4000   # prints token and signal URL
    client.py alive alice --token T --signal tcp://127.0.0.1:7812 --count 3
    client.py lookup alice
    client.py set-address alice --token T --address 10.0.0.1:4001
    client.py logout alice --token T
    client.py status

The whole flow, with checks (exit status 0 only if every step behaved as the
protocol document says):

    client.py --gestor tcp://127.0.0.1:7811 demo

`--gestor` may be repeated. Gestores are tried in order, and the
initial-gestors list from each reply is appended as fallbacks (PROTOCOL.md
section 11).
"""

import argparse
import json
import secrets
import sys
import time

try:
    import cbor2
    import zmq
except ImportError as missing:  # pragma: no cover - depends on the machine
    sys.stderr.write(
        f"error: this client needs the 'pyzmq' and 'cbor2' packages ({missing}).\n"
        "Install them with:  pip install pyzmq cbor2\n"
    )
    sys.exit(2)

PROTOCOL_VERSION = 1
ALIVE_TOPIC = b"alive"
SEPARATOR = b"\x00"


class GestorError(Exception):
    """The gestor answered with an error reply (`ok: false`)."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Unreachable(Exception):
    """No gestor answered within the deadline."""


class Client:
    """Requests over ZeroMQ REQ sockets, with fallback across gestores."""

    def __init__(self, gestores, timeout_ms=5000):
        self.ctx = zmq.Context.instance()
        self.candidates = list(dict.fromkeys(gestores))
        self.initial_gestors = []
        self.timeout_ms = timeout_ms
        self.sockets = {}

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

    def request_to(self, url, kind, body=None):
        """One request to one gestor; returns the decoded reply envelope, or None on timeout."""
        frame = cbor2.dumps({"v": PROTOCOL_VERSION, "kind": kind, "body": body})
        sock = self._socket(url)
        sock.send(frame)
        if not sock.poll(self.timeout_ms, zmq.POLLIN):
            self._discard(url)
            return None
        reply = cbor2.loads(sock.recv())
        if not isinstance(reply, dict) or "ok" not in reply:
            raise GestorError("malformed", f"reply from {url} is not an envelope: {reply!r}")
        return reply

    def call(self, kind, body=None):
        """Send to the first gestor that answers; return the reply body or raise GestorError."""
        tried = []
        for url in list(self.candidates):
            reply = self.request_to(url, kind, body)
            if reply is None:
                tried.append(url)
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
        raise Unreachable(f"no reply within {self.timeout_ms} ms from {', '.join(tried)}")

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

    def close(self):
        for url in list(self.sockets):
            self._discard(url)


class AliveSender:
    """A PUB socket connected to the responsible gestor's signal endpoint (section 8)."""

    def __init__(self, signal_url, username, token, settle_s=0.5):
        self.sock = zmq.Context.instance().socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(signal_url)
        self.frame = ALIVE_TOPIC + SEPARATOR + cbor2.dumps({"username": username, "token": token})
        # A PUB drops what it sends before its connection is up: give it a moment.
        time.sleep(settle_s)

    def beat(self):
        self.sock.send(self.frame)

    def close(self):
        self.sock.close(linger=0)


# ---- output helpers -----------------------------------------------------------


def show(value):
    print(json.dumps(value, indent=2, sort_keys=False))


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


# ---- the demo flow ---------------------------------------------------------------


def demo(client, args):
    user = args.user or f"py-{secrets.token_hex(4)}"
    password = args.password or secrets.token_urlsafe(12)
    address = args.address

    step("ping")
    expect(client.call("node.ping") == "pong", "node.ping answers \"pong\"")
    print(f"    initial gestors: {client.initial_gestors}")

    step(f"register {user}")
    reg = client.register(user, password)
    show(reg)
    expect(reg["username"] == user, "reply names the user")
    expect_error("conflict", client.register, user, password)
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
    sender = AliveSender(session["signal"], user, session["token"])
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
    expect_error("unauthorized", client.logout, user, session["token"])
    expect_error("not_found", client.lookup, f"nobody-{secrets.token_hex(4)}")
    print(f"demo passed for {user}")


# ---- command line ---------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(
        description="gestor client over ZeroMQ + CBOR (see docs/PROTOCOL.md)"
    )
    p.add_argument(
        "--gestor",
        action="append",
        help="request URL of any gestor; repeat for fallbacks (default tcp://127.0.0.1:7811)",
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
    s.add_argument("--signal", required=True, help="the 'signal' URL from the login reply")
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

    args = p.parse_args(argv)
    client = Client(args.gestor or ["tcp://127.0.0.1:7811"], args.timeout_ms)
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
            sender = AliveSender(args.signal, args.user, args.token)
            for i in range(args.count):
                sender.beat()
                print(f"alive #{i + 1} sent to {args.signal}")
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
        return 0
    except GestorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Unreachable as e:
        print(f"error: gestor unreachable: {e}", file=sys.stderr)
        return 1
    except DemoFailure as e:
        print(f"DEMO FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
