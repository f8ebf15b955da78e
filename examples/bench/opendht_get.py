#!/usr/bin/python3
"""OpenDHT reference for examples/bench/run.py: N DHT nodes on 127.0.0.1 in
this process (each DhtRunner has its own network thread), `keys` values put,
then serial blocking gets for a set time, spread over the nodes. One JSON line
out, like etcd-load and `gestor bench --json`.

Runs under Debian's /usr/bin/python3 with python3-opendht (the package builds
the module for that interpreter only)."""

import argparse
import json
import time

import opendht as dht


def percentile(sorted_values, q):
    if not sorted_values:
        return 0.0
    return sorted_values[min(int(len(sorted_values) * q), len(sorted_values) - 1)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--base-port", type=int, default=25000)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--duration-secs", type=float, default=10)
    args = parser.parse_args()

    nodes = []
    for i in range(args.nodes):
        node = dht.DhtRunner()
        node.run(port=args.base_port + i, ipv4="127.0.0.1")
        nodes.append(node)
    for node in nodes[1:]:
        node.bootstrap("127.0.0.1", str(args.base_port))
    # Wait (bounded) until a value put through the first node is found
    # from every node: the overlay has formed.
    probe = dht.InfoHash.get("bench-probe")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        nodes[0].put(probe, dht.Value(b"probe"))
        if all(n.get(probe) for n in nodes):
            break
        time.sleep(0.5)
    else:
        raise SystemExit("opendht: the nodes did not find each other within 30 s")

    keys = [dht.InfoHash.get("bench-%d" % k) for k in range(args.keys)]
    put_failures = 0
    for k, key in enumerate(keys):
        if not nodes[k % len(nodes)].put(key, dht.Value(b"127.0.0.1:%d" % (20000 + k))):
            put_failures += 1

    latencies, errors, n = [], 0, 0
    end = time.monotonic() + args.duration_secs
    while time.monotonic() < end:
        key = keys[n % len(keys)]
        node = nodes[(n * 7 + 3) % len(nodes)]
        n += 1
        started = time.perf_counter()
        values = node.get(key)
        elapsed = time.perf_counter() - started
        if values:
            latencies.append(elapsed * 1000.0)
        else:
            errors += 1
    for node in nodes:
        node.join()
    latencies.sort()
    print(json.dumps({
        "op": "get",
        "nodes": args.nodes,
        "ops": len(latencies),
        "errors": errors,
        "put_failures": put_failures,
        "per_second": len(latencies) / args.duration_secs,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": latencies[-1] if latencies else 0.0,
    }))


if __name__ == "__main__":
    main()
