#!/usr/bin/env python3
"""A/B of two gestor settings, on fresh rings, alternating.

Each round starts one ring per setting (the order alternates between rounds,
so a drift of the machine does not favour one side), registers and logs in
the bench users, runs the chosen phases of `gestor bench`, and stops the
ring. Prints every round and each side's mean. Uses the release build that
run.py uses (cargo build --release --workspace first).

    python3 examples/bench/ab.py --phases set_address \\
        --a '[plugins.config.gestor_replica]
    background_linger_ms = 0' --b ''

A setting is TOML added to the bench ring's gestor.toml. Keys under
[plugins.config.gestor_directory] or [plugins.config.gestor_ring], which the
ring writes itself, replace the ring's own there.

With --etcd, a 3-member etcd (run.py's) runs `put` at the same client count
after each round, both rings stopped, and each side's `set_address` is also
printed as a ratio to that round's put: how a setting moves issue 10's write
goal, not only the writes.

To compare two builds instead (say the commit before a change and after
it), give each side its release directory; the settings may then both be
'':

    git worktree add /tmp/base HEAD~1 && (cd /tmp/base && cargo build --release --workspace)
    python3 examples/bench/ab.py --a '' --b '' \
        --a-build /tmp/base/target/release --b-build target/release
"""
import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

import run as bench


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="TOML for side A ('' = defaults)")
    ap.add_argument("--b", required=True, help="TOML for side B ('' = defaults)")
    ap.add_argument("--a-build", type=Path, help="release directory of side A's build "
                    "(gestor and plugins; default: this checkout's target/release)")
    ap.add_argument("--b-build", type=Path, help="release directory of side B's build")
    ap.add_argument("--phases", default="set_address",
                    help="measured phases (register and login run first anyway)")
    ap.add_argument("--transport", default="zmq")
    ap.add_argument("--storage", default="sqlite")
    ap.add_argument("--gestores", type=int, default=8)
    ap.add_argument("--virtual-nodes", type=int, default=6)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--users", type=int, default=960)
    ap.add_argument("--duration-secs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep each ring's directory (logs, data)")
    ap.add_argument("--etcd", action="store_true",
                    help="also measure etcd's put each round and print set_address as a ratio to it")
    args = ap.parse_args()
    builds = {"A": (args.a_build or bench.RELEASE).resolve(),
              "B": (args.b_build or bench.RELEASE).resolve()}
    for side, build in builds.items():
        if not (build / "gestor").exists():
            raise SystemExit(f"ab: {build / 'gestor'} missing (side {side}); "
                             "cargo build --release --workspace first")
    measured = [p for p in args.phases.split(",") if p]
    phases = ",".join(["register", "login"] + [p for p in measured if p not in ("register", "login")])
    sides = {"A": args.a, "B": args.b}
    results = {"A": [], "B": []}
    puts = []
    etcd_dir = None
    try:
        etcd = None
        if args.etcd:
            if "set_address" not in measured:
                raise SystemExit("ab: --etcd compares set_address with etcd's put: add it to --phases")
            if not bench.ETCD_LOAD.exists():
                raise SystemExit(f"ab: {bench.ETCD_LOAD} missing; cargo build --release --workspace first")
            bench.ensure_references(argparse.Namespace(skip_etcd=False, skip_opendht=True))
            etcd_dir = Path(tempfile.mkdtemp(prefix="gestor-ab-etcd-"))
            etcd = bench.Etcd(etcd_dir)
        for rnd in range(args.rounds):
            for side in ("A", "B") if rnd % 2 == 0 else ("B", "A"):
                work = Path(tempfile.mkdtemp(prefix=f"gestor-ab-{side}-"))
                # run.py's ring and commands read these at each call.
                bench.RELEASE, bench.GESTOR = builds[side], builds[side] / "gestor"
                ring = bench.Ring(work, args.transport, args.gestores, args.storage,
                                  args.virtual_nodes, extra_config=sides[side] + "\n")
                ring.wait_ordered()
                cmd = [bench.GESTOR, "bench", "--json", "--threads", str(args.threads),
                       "--users", str(args.users), "--duration-secs", str(args.duration_secs),
                       "--phases", phases, *ring.client_flags()]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(f"ab: gestor bench failed: {out.stderr.strip()}")
                report = json.loads(out.stdout)["phases"]
                row = {p: {k: report[p][k] for k in ("per_second", "p50_ms", "errors")}
                       for p in measured}
                results[side].append(row)
                print(f"round {rnd + 1} {side}: {json.dumps(row)}", flush=True)
                # Only the ring: etcd (--etcd) stays for the whole run.
                bench.stop(ring.children)
                bench.CHILDREN[:] = [c for c in bench.CHILDREN if c not in ring.children]
                if args.keep:
                    print(f"round {rnd + 1} {side}: kept {work}", flush=True)
                else:
                    shutil.rmtree(work, ignore_errors=True)
            if etcd:
                puts.append(etcd.measure_put(args)["per_second"])
                if not puts[-1]:
                    raise SystemExit("ab: etcd's put made no request in the round "
                                     "(run again with --keep to read etcd's logs)")
                ratios = ", ".join(f"{side} {results[side][-1]['set_address']['per_second'] / puts[-1]:.2f}"
                                   for side in ("A", "B"))
                print(f"round {rnd + 1} etcd put: {puts[-1]:,.0f} per s; set_address / put: {ratios}",
                      flush=True)
    finally:
        bench.stop_all()
        if etcd_dir and not args.keep:
            shutil.rmtree(etcd_dir, ignore_errors=True)
    for p in measured:
        for side in ("A", "B"):
            rates = [r[p]["per_second"] for r in results[side]]
            print(f"{p} {side}: per_second {', '.join(f'{x:,.0f}' for x in rates)} "
                  f"(mean {statistics.mean(rates):,.0f})")
    if puts:
        for side in ("A", "B"):
            ratios = [r["set_address"]["per_second"] / put for r, put in zip(results[side], puts)]
            print(f"set_address / etcd put {side}: {', '.join(f'{x:.2f}' for x in ratios)} "
                  f"(median {statistics.median(ratios):.2f})")


if __name__ == "__main__":
    main()
