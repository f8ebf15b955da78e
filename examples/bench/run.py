#!/usr/bin/env python3
"""Issue 10's benchmark, side by side in one run on one machine.

Starts a 3-member etcd (Debian's etcd-server, through
examples/bench/src/etcd_load.rs) and, per transport, an N-gestor secure ring
(release build, loopback). Registers the bench users, then runs rounds: the
gestor phases (login, set_address, lookup; serial lookups) and right after
them etcd's (put, range, serial range), each system paused (SIGSTOP) while
the other is measured. Then reads each gestor's RSS and runs an N-node
OpenDHT (Debian's python3-opendht, through opendht_get.py). Prints each goal
of issue 10 as a ratio to its reference: the median of the rounds' ratios,
with the lowest and highest. Installs the references with apt-get when they
are missing and it can.

    python3 examples/bench/run.py                  # nng and zmq, 8 gestores
    python3 examples/bench/run.py --transport nng --preload 1000000
    python3 examples/bench/run.py --json out.json  # also every figure as JSON

Every process it starts is stopped before it exits (also on errors).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RELEASE = ROOT / "target" / "release"
GESTOR = RELEASE / "gestor"
ETCD_LOAD = RELEASE / "etcd-load"
SYSTEM_PYTHON = "/usr/bin/python3"
CHILDREN = []


def log(*parts):
    print("bench:", *parts, file=sys.stderr, flush=True)


def free_ports(count):
    """`count` ports free now on 127.0.0.1, consecutive pairs not required."""
    sockets, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def start(cmd, log_path, env=None):
    out = open(log_path, "w")
    child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    CHILDREN.append(child)
    return child


def stop(children):
    """SIGTERM `children` (resumed first: a stopped process keeps the signal
    pending), then SIGKILL whatever has not exited 10 s later."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGCONT)
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def stop_all():
    stop(CHILDREN)
    CHILDREN.clear()


def pause(children, paused):
    """SIGSTOP or SIGCONT every process of one system, so that the system not
    being measured takes no CPU from the one that is."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)


def run_json(cmd, timeout):
    """Run `cmd`, return its output, one JSON document."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"bench: {' '.join(map(str, cmd))} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


# ---------------------------------------------------------------- set-up

def ensure_references(args):
    wanted = []
    if not args.skip_etcd and not shutil.which("etcd"):
        wanted.append("etcd-server")
    if not args.skip_opendht and subprocess.run(
        [SYSTEM_PYTHON, "-c", "import opendht"], capture_output=True
    ).returncode != 0:
        wanted.append("python3-opendht")
    if not wanted:
        return
    log("installing the references:", " ".join(wanted))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    done = subprocess.run(["apt-get", "install", "-y", "-qq", *wanted], env=env)
    if done.returncode != 0:
        raise SystemExit(f"bench: could not install {' '.join(wanted)} (apt-get install {' '.join(wanted)}),"
                         " or pass --skip-etcd / --skip-opendht")


def build(args):
    if args.no_build:
        return
    env = dict(os.environ, CMAKE_POLICY_VERSION_MINIMUM="3.5")
    log("cargo build --release --workspace")
    subprocess.run(["cargo", "build", "--release", "--workspace", "--quiet"], cwd=ROOT, env=env, check=True)


# ---------------------------------------------------------------- gestor ring

def positions(ring_status):
    """A gestor's ring positions (virtual node ids) from its status.ring."""
    nodes = ring_status.get("virtual_nodes") or []
    return [n["me"]["id"] for n in nodes] or [ring_status["id"]]


def ring_config(virtual_nodes, extra_config="", hash_slots_dir=None):
    """The bench ring's gestor.toml: its own settings, then `extra_config`
    (TOML, for A/B runs). A table of the extra that the ring also writes is
    merged into the ring's, its keys replacing the ring's own. Read line by
    line, not as TOML: in the ring's own tables, one bare `key = value` per
    line (no quoted or dotted keys, no multi-line values)."""
    directory = {
        # The bench is the only client and sends every registration from
        # 127.0.0.1: the per-source password-attempt limit would refuse it.
        "password_attempts_per_source_per_minute": "0",
    }
    if hash_slots_dir is not None:
        # All the gestores run on this machine: they share its hashing
        # slots, as an operator would set it up (README, gestor_directory).
        directory["machine_hash_slots_dir"] = json.dumps(str(hash_slots_dir), ensure_ascii=False)
    tables = {
        "plugins.config.gestor_directory": directory,
        "plugins.config.gestor_ring": {"virtual_nodes": str(virtual_nodes)},
    }
    top, other, current = [], [], None
    for line in extra_config.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            header = stripped.split("#", 1)[0].strip()
            name = header.strip("[] ").replace(" ", "")
            # An array of tables is never one of the ring's own.
            current = None if header.startswith("[[") else tables.get(name)
            if current is None:
                other.append(line)
            continue
        if current is not None:
            key, sep, value = stripped.partition("=")
            if sep and key.strip() and value.strip():
                # A bare key and a one-line value: all the ring's tables hold.
                current[key.strip()] = value.strip()
            elif stripped and not stripped.startswith("#"):
                raise SystemExit(f"bench: cannot read setting line {line!r} "
                                 "(one `key = value` per line in the ring's own tables)")
        elif other:
            other.append(line)
        else:
            top.append(line)
    out = top[:]
    for name, keys in tables.items():
        out.append(f"[{name}]")
        out += [f"{k} = {v}" for k, v in keys.items()]
    return "\n".join(out + other) + "\n"


class Ring:
    """N secure gestores on 127.0.0.1, joined through the first."""

    def __init__(self, work, transport, nodes, storage, virtual_nodes, extra_config=""):
        self.dir = work / f"ring-{transport}"
        self.dir.mkdir()
        self.transport = transport
        self.cluster_pub = self.dir / "cluster" / "cluster.pub"
        subprocess.run([GESTOR, "cluster", "init", "--dir", self.dir / "cluster"],
                       check=True, capture_output=True)
        config = self.dir / "gestor.toml"
        # A build from before the setting existed would refuse it (A/B runs
        # against an older build): its plugin does not name it.
        shares_slots = b"machine_hash_slots_dir" in (RELEASE / "libgestor_directory.so").read_bytes()
        config.write_text(ring_config(virtual_nodes, extra_config,
                                      self.dir / "hash-slots" if shares_slots else None))
        ports = free_ports(2 * nodes)
        self.urls, self.children = [], []
        for i in range(nodes):
            cred = self.dir / f"g{i}.cred"
            subprocess.run([GESTOR, "cluster", "admit", "--dir", self.dir / "cluster",
                            "--out", cred, "--name", f"g{i}"], check=True, capture_output=True)
            url = f"tcp://127.0.0.1:{ports[2 * i]}"
            cmd = [GESTOR, "node", "--config", config, "--listen", url,
                   "--signal", f"tcp://127.0.0.1:{ports[2 * i + 1]}",
                   "--data-dir", self.dir / f"d{i}", "--credential", cred,
                   "--cluster-pub", self.cluster_pub, "--transport", transport,
                   "--storage", storage, "--plugin-dir", RELEASE]
            if self.urls:
                cmd += ["--join", self.urls[0]]
            env = dict(os.environ, RUST_LOG="warn")
            self.children.append(start(cmd, self.dir / f"n{i}.log", env))
            self.urls.append(url)
            # One after the other, as an operator adds gestores: each places
            # its virtual nodes by the ring it finds (see the ring plugin).
            self.wait_joined(url)

    def wait_joined(self, url, limit_secs=60):
        deadline = time.monotonic() + limit_secs
        while time.monotonic() < deadline:
            r = self.status(url)
            if r and r.get("joined"):
                return
            time.sleep(0.5)
        raise SystemExit(f"bench: {url} did not join in {limit_secs} s (logs in {self.dir})")

    def client_flags(self):
        flags = ["--transport", self.transport, "--cluster-pub", self.cluster_pub]
        for url in self.urls:
            flags += ["--gestor", url]
        return flags

    def status(self, url):
        done = subprocess.run([GESTOR, "status", "--json", "--gestor", url, "--transport", self.transport,
                               "--cluster-pub", self.cluster_pub, "--timeout-ms", "2000"],
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            return None
        return json.loads(done.stdout).get("sections", {}).get("ring")

    def wait_ordered(self, limit_secs=120):
        """Until every position's successor is the next position and its predecessor the previous one."""
        deadline = time.monotonic() + limit_secs
        while time.monotonic() < deadline:
            rings = [self.status(url) for url in self.urls]
            if all(r and r.get("joined") for r in rings):
                ids = sorted(v for r in rings for v in positions(r))
                ok = True
                for r in rings:
                    for nb in r.get("virtual_nodes") or [dict(r, me={"id": r["id"]})]:
                        i = ids.index(nb["me"]["id"])
                        succ = (nb.get("successors") or [{}])[0].get("id")
                        pred = (nb.get("predecessor") or {}).get("id")
                        ok &= succ == ids[(i + 1) % len(ids)] and pred == ids[i - 1]
                if ok:
                    return
            time.sleep(1)
        raise SystemExit(f"bench: the {self.transport} ring did not settle in {limit_secs} s (logs in {self.dir})")

    def rss(self):
        return [rss_mib(child.pid) for child in self.children]

    def balance(self):
        """Each gestor's share of the key space (from the ring ids) and its
        primary records (the replica plugin's count): max ÷ mean of each."""
        statuses = []
        for url in self.urls:
            done = subprocess.run([GESTOR, "status", "--json", "--gestor", url, "--transport", self.transport,
                                   "--cluster-pub", self.cluster_pub], capture_output=True, text=True, timeout=30)
            statuses.append(json.loads(done.stdout)["sections"] if done.returncode == 0 else {})
        owner = {v: g for g, s in enumerate(statuses) if s.get("ring") for v in positions(s["ring"])}
        ids = sorted(owner)
        shares = {}
        for i, v in enumerate(ids):
            shares[owner[v]] = shares.get(owner[v], 0) + ((v - ids[i - 1]) % 2**64 or 2**64)
        arcs = list(shares.values())
        records = [s.get("replica", {}).get("stats", {}).get("primary_records", 0) for s in statuses]
        mean_records = sum(records) / len(records) if records else 0
        return {
            "keyspace_max_over_mean": max(arcs) / (2**64 / len(arcs)) if arcs else float("nan"),
            "primary_records": records,
            "records_max_over_mean": max(records) / mean_records if mean_records else float("nan"),
        }


def gestor_bench(ring, args, threads, phases, extra=()):
    cmd = [GESTOR, "bench", "--json", "--threads", str(threads), "--users", str(args.users),
           "--duration-secs", str(args.duration_secs), "--phases", phases, *ring.client_flags(), *extra]
    return run_json(cmd, timeout=3600 + args.preload // 100)


def measure_gestor(work, args, transport, etcd):
    """Register once, then `args.rounds` rounds, each the gestor phases and
    right after them etcd's, every system paused while the other runs: the
    machine's swings (±20% between runs here) then hit both sides of each
    ratio alike, and the report takes the median round."""
    log(f"{transport}: starting {args.gestores} gestores")
    ring = Ring(work, transport, args.gestores, args.storage, args.virtual_nodes)
    ring.wait_ordered()
    result = {"transport": transport, "rounds": []}
    if args.preload:
        log(f"{transport}: preloading {args.preload} accounts")
        cred = ring.dir / "operator.cred"
        subprocess.run([GESTOR, "cluster", "admit", "--dir", ring.dir / "cluster", "--out", cred,
                        "--name", "operator"], check=True, capture_output=True)
        result["preload"] = gestor_bench(ring, args, 4, "lookup",
                                         ["--preload", str(args.preload), "--credential", cred])
    log(f"{transport}: register at {args.threads} threads")
    result["register"] = gestor_bench(ring, args, args.threads, "register")
    for n in range(1, args.rounds + 1):
        log(f"{transport}: round {n}/{args.rounds}: login, set_address, lookup at {args.threads} threads;"
            " serial lookups")
        pause(ring.children, False)
        ring.wait_ordered()
        one = {"parallel": gestor_bench(ring, args, args.threads, "login,set_address,lookup"),
               "serial": gestor_bench(ring, args, 1, "lookup")}
        if etcd:
            pause(ring.children, True)
            one["etcd"] = etcd.measure(args)
        result["rounds"].append(one)
    pause(ring.children, False)
    ring.wait_ordered()
    result["rss_mib"] = ring.rss()
    result["balance"] = ring.balance()
    stop(ring.children)
    return result


# ---------------------------------------------------------------- references

class Etcd:
    """A 3-member etcd on 127.0.0.1, kept paused between its rounds."""

    def __init__(self, work):
        log("etcd: starting 3 members")
        ports = free_ports(6)
        members = ",".join(f"m{i}=http://127.0.0.1:{ports[2 * i]}" for i in range(3))
        self.endpoints, self.children = [], []
        for i in range(3):
            peer, client = ports[2 * i], ports[2 * i + 1]
            self.children.append(start(
                ["etcd", "--name", f"m{i}", "--data-dir", work / f"etcd-m{i}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--listen-client-urls", f"http://127.0.0.1:{client}",
                 "--advertise-client-urls", f"http://127.0.0.1:{client}",
                 "--initial-cluster", members, "--initial-cluster-state", "new",
                 "--log-level", "error"], work / f"etcd-m{i}.log"))
            self.endpoints.append(f"127.0.0.1:{client}")
        self.wait_healthy()
        pause(self.children, True)

    def healthy(self):
        """Every member answers its /health with a leader known."""
        for endpoint in self.endpoints:
            try:
                with urllib.request.urlopen(f"http://{endpoint}/health", timeout=2) as answer:
                    if json.load(answer).get("health") != "true":
                        return False
            except (OSError, ValueError):
                return False
        return True

    def wait_healthy(self, limit_secs=60):
        deadline = time.monotonic() + limit_secs
        while not self.healthy():
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: etcd was not healthy within {limit_secs} s")
            time.sleep(0.5)

    def measure(self, args):
        """One round: put, serializable range at the same client count as the
        gestor phases, and serial range; paused again afterwards."""
        log("etcd: put, range, serial range")
        pause(self.children, False)
        # Resumed members may first elect a leader again.
        self.wait_healthy()
        load = [ETCD_LOAD, "--endpoints", ",".join(self.endpoints), "--keys", str(args.users),
                "--duration-secs", str(args.duration_secs)]
        result = {
            "put": run_json(load + ["--op", "put", "--clients", str(args.threads)], 600),
            "range": run_json(load + ["--op", "range", "--serializable", "--clients", str(args.threads)], 600),
            "range_serial": run_json(load + ["--op", "range", "--serializable", "--clients", "1"], 600),
        }
        pause(self.children, True)
        return result

    def measure_put(self, args):
        """Only `put` at the gestor phases' client count (ab.py --etcd)."""
        log("etcd: put")
        pause(self.children, False)
        self.wait_healthy()
        load = [ETCD_LOAD, "--endpoints", ",".join(self.endpoints), "--keys", str(args.users),
                "--duration-secs", str(args.duration_secs), "--op", "put", "--clients", str(args.threads)]
        result = run_json(load, 600)
        pause(self.children, True)
        return result


def measure_opendht(args):
    log(f"opendht: {args.gestores} nodes")
    port = free_ports(1)[0]
    return run_json([SYSTEM_PYTHON, Path(__file__).with_name("opendht_get.py"),
                     "--nodes", str(args.gestores), "--base-port", str(port),
                     "--keys", str(args.users), "--duration-secs", str(args.duration_secs)], 600)


# ---------------------------------------------------------------- report

def ratio(a, b):
    return a / b if b else float("nan")


def median(values):
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def floor_ms(channel):
    """The raw round trip a lookup is compared with: to a replier in another
    process, as a gestor is to its clients (older reports: in-process)."""
    return channel.get("process_p50_ms", channel["plain_p50_ms"])


def round_ratios(one, odht):
    """Each goal's ratio within one round: (name, value, target, sense)."""
    phases, serial = one["parallel"]["phases"], one["serial"]["phases"]["lookup"]
    rows = [("serial lookup p50 / raw round trip",
             ratio(serial["p50_ms"], floor_ms(one["serial"]["channel"])), 2.0, "<=")]
    if odht:
        rows.append(("serial lookup p50 / OpenDHT get p50", ratio(serial["p50_ms"], odht["p50_ms"]), 0.5, "<="))
    etcd = one.get("etcd")
    if etcd:
        rows.append((f"lookups/s ({one['parallel']['threads']} thr) / etcd range c={etcd['range']['clients']}",
                     ratio(phases["lookup"]["per_second"], etcd["range"]["per_second"]), 1.5, ">="))
        rows.append((f"set_address/s / etcd put c={etcd['put']['clients']}",
                     ratio(phases["set_address"]["per_second"], etcd["put"]["per_second"]), 1.0, ">="))
    return rows


def goal_rows(g, odht):
    """(goal, median ratio over the rounds, lowest, highest, target, met) for
    one transport; the goals measured once have no spread."""
    per_round = [round_ratios(one, odht) for one in g["rounds"]]
    rows = []
    for i, (name, _, target, sense) in enumerate(per_round[0] if per_round else []):
        values = [r[i][1] for r in per_round]
        rows.append((name, median(values), min(values), max(values), target, sense))
    reg = g["register"]
    limit = reg.get("argon2_limit_per_s")
    if limit:
        value = ratio(reg["phases"]["register"]["per_second"], limit)
        rows.append(("register/s / argon2 limit", value, value, value, 0.8, ">="))
    for name, value, target in (("max RSS MiB / 200 MiB", ratio(max(g["rss_mib"]), 200.0), 1.0),
                                ("key space per gestor, max / mean", g["balance"]["keyspace_max_over_mean"], 1.25)):
        rows.append((name, value, value, value, target, "<="))
    out = []
    for name, value, low, high, target, sense in rows:
        met = value <= target if sense == "<=" else value >= target
        out.append((name, value, low, high, f"{sense} {target}", "met" if met else "NOT met"))
    return out


def print_phase(name, p):
    print(f"    {name:<12} {p['per_second']:>9.1f}/s  p50 {p['p50_ms']:.3f} ms  p99 {p['p99_ms']:.3f} ms"
          f"  errors {p['errors']}  busy {p.get('busy', 0)}")
    if p.get("first_error"):
        print(f"      first error: {p['first_error']}")


def print_report(results):
    odht = results.get("opendht")
    print(f"machine: {results['machine']}")
    if odht:
        print(f"OpenDHT ({odht['nodes']} nodes): serial get p50 {odht['p50_ms']:.3f} ms, p99 {odht['p99_ms']:.3f} ms")
    for g in results["gestor"]:
        print(f"\ngestor, {g['transport']}, {len(g['rss_mib'])} gestores:")
        for name in ("preload", "register"):
            p = g.get(name, {}).get("phases", {}).get(name)
            if p:
                print_phase(name, p)
        for n, one in enumerate(g["rounds"], 1):
            serial = one["serial"]
            print(f"  round {n}: raw REQ/REP round trip p50 {floor_ms(serial['channel']):.3f} ms "
                  f"(both ends in one process: {serial['channel']['plain_p50_ms']:.3f} ms); "
                  f"serial lookup p50 {serial['phases']['lookup']['p50_ms']:.3f} ms, "
                  f"mean hops {serial['phases']['lookup'].get('mean_hops', 0):.2f}")
            for name in ("login", "set_address", "lookup"):
                if name in one["parallel"]["phases"]:
                    print_phase(name, one["parallel"]["phases"][name])
            if one["parallel"].get("absent_users"):
                print(f"    {one['parallel']['absent_users']} users do not exist (registration not "
                      "acknowledged); login, set_address and lookup leave them out")
            etcd = one.get("etcd")
            if etcd:
                print(f"    etcd 3.4 (3 members, JSON gateway): put c={etcd['put']['clients']} "
                      f"{etcd['put']['per_second']:.0f}/s, serializable range c={etcd['range']['clients']} "
                      f"{etcd['range']['per_second']:.0f}/s, serial range p50 {etcd['range_serial']['p50_ms']:.3f} ms")
        print(f"  RSS MiB per gestor: {' '.join(f'{r:.0f}' for r in g['rss_mib'])}")
        print(f"  primary records per gestor: {' '.join(str(r) for r in g['balance']['primary_records'])}")
        reg = g["register"]
        if reg.get("argon2_all_cores_per_s"):
            print(f"  argon2: one hash {reg['argon2_hash_ms']:.1f} ms (fastest timed), limit {reg['argon2_limit_per_s']:.0f}/s; "
                  f"every core hashing at once, nothing else running: {reg['argon2_all_cores_per_s']:.0f}/s "
                  f"({ratio(reg['argon2_all_cores_per_s'], reg['argon2_limit_per_s']):.2f} of the limit)")
        print(f"  {'goal (median of the rounds; lowest-highest)':<48} {'ratio':>6}")
        for name, value, low, high, target, met in goal_rows(g, odht):
            spread = f"({low:.2f}-{high:.2f})" if high > low else ""
            print(f"  {name:<48} {value:6.2f} {spread:<12}  goal {target:<6} {met}")


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "unknown cpu")
    return f"{os.cpu_count()} cores, {cpu}, {os.uname().sysname} {os.uname().release}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transport", default="nng,zmq", help="comma-separated: nng, zmq")
    parser.add_argument("--storage", default="sqlite", choices=["sqlite", "sled"])
    parser.add_argument("--gestores", type=int, default=8)
    parser.add_argument("--virtual-nodes", type=int, default=6, help="ring.virtual_nodes of every gestor")
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--users", type=int, default=960,
                        help="accounts registered, logged in, moved, looked up (30 per thread at 32"
                             " threads, so the register phase is not mostly its ramp-down)")
    parser.add_argument("--duration-secs", type=int, default=10, help="length of each timed phase")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds per transport, each the gestor phases then etcd's (median reported)")
    parser.add_argument("--preload", type=int, default=0, help="accounts imported first (e.g. 1000000)")
    parser.add_argument("--skip-etcd", action="store_true")
    parser.add_argument("--skip-opendht", action="store_true")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    # SIGTERM (e.g. `timeout`) ends the run through the `finally` below, so
    # no gestor, etcd or OpenDHT process is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    ensure_references(args)
    build(args)
    work = Path(tempfile.mkdtemp(prefix="gestor-bench-"))
    results = {"machine": machine(), "gestor": []}
    try:
        etcd = None if args.skip_etcd else Etcd(work)
        for transport in args.transport.split(","):
            results["gestor"].append(measure_gestor(work, args, transport.strip(), etcd))
        stop_all()
        if not args.skip_opendht:
            results["opendht"] = measure_opendht(args)
    finally:
        stop_all()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
