"""DHT benchmark: dhtdeb's DHT vs stock kademlia 2.2.3, same scenario, same run.

Scenario (per implementation, each in its own child process so RSS is its own): N nodes on
127.0.0.1 (UDP, port 0), `--keys` keys announced (dhtdeb) / set (stock) by nodes that will survive,
`--kill` of the other nodes stopped, then `--lookups` lookups of random keys from random survivors,
`--concurrency` at a time. A lookup succeeds when it returns the announcer (dhtdeb) / the value
(stock). Upkeep: the bytes every node sends and receives for its periodic work over one virtual
period (dhtdeb: two 15-minute maintenance ticks, which refresh lonely buckets and re-announce the
keys whose jittered time has come; stock: one `_refresh_table`, its hourly refresh + republish), per
node per second of that period.

    .venv/bin/python bench/dht.py [--nodes 200 --kill 0.3 --lookups 500]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class OffsetClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.monotonic() + self.offset


async def run_lookups(
    rng: random.Random, count: int, concurrency: int, one: Any
) -> tuple[list[float], int]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    successes = 0

    async def lookup(i: int) -> None:
        nonlocal successes
        async with gate:
            start = time.monotonic()
            ok = await one(i)
            latencies.append(time.monotonic() - start)
            successes += bool(ok)

    await asyncio.gather(*(lookup(i) for i in range(count)))
    return latencies, successes


async def bench_dhtdeb(args: argparse.Namespace) -> dict[str, Any]:
    from dhtdeb.dht import DhtConfig, open_dht
    from dhtdeb.netaddr import HostPort

    rng = random.Random(args.seed)
    clock = OffsetClock()
    base_rss = rss_mb()
    tmp = Path(tempfile.mkdtemp(prefix="dhtbench-"))
    nodes: list[Any] = []

    async def spawn(i: int, seeds: tuple[HostPort, ...]) -> Any:
        return await open_dht(
            DhtConfig(HostPort("127.0.0.1", 0), tmp / f"n{i}", bootstrap=seeds, lan=False),
            clock=clock,
            rng=random.Random(rng.getrandbits(64)),
            maintenance=False,
        )

    nodes.append(await spawn(0, ()))
    while len(nodes) < args.nodes:
        seeds = tuple(n.address for n in rng.sample(nodes, min(3, len(nodes))))
        batch = min(20, args.nodes - len(nodes))
        nodes += await asyncio.gather(*(spawn(len(nodes) + j, seeds) for j in range(batch)))
    await asyncio.gather(*(n.engine.lookup(n.engine.node.id, get_peers=False) for n in nodes))

    victims = set(rng.sample(range(len(nodes)), int(len(nodes) * args.kill)))
    alive = [n for i, n in enumerate(nodes) if i not in victims]
    keys = [hashlib.sha256(f"key{i}".encode()).hexdigest() for i in range(args.keys)]
    owners = {key: rng.choice(alive) for key in keys}
    await asyncio.gather(*(owners[key].announce(key) for key in keys))
    for i in victims:
        await nodes[i].close()

    def traffic() -> int:
        return sum(
            n.counters().get("bytes_sent", 0) + n.counters().get("bytes_received", 0) for n in alive
        )

    plan = [(rng.choice(alive), rng.choice(keys)) for _ in range(args.lookups)]

    async def one(i: int) -> bool:
        asker, key = plan[i]
        owner = owners[key]
        found = await asker.find_peers(key, 10.0)
        return any(p.port == owner.address.port for p in found) or asker is owner

    before = traffic()
    started = time.monotonic()
    latencies, successes = await run_lookups(rng, args.lookups, args.concurrency, one)
    lookup_seconds = time.monotonic() - started
    lookup_bytes = traffic() - before
    peak = rss_mb()

    before = traffic()
    for _ in range(2):
        clock.offset += 15 * 60
        await asyncio.gather(*(n.maintain() for n in alive))
    upkeep = (traffic() - before) / len(alive) / 1800
    for n in alive:
        await n.close()
    return {
        "success": successes / args.lookups,
        "p50": percentile(latencies, 0.5),
        "p95": percentile(latencies, 0.95),
        "rss_mb": peak,
        "rss_per_node_kb": (peak - base_rss) * 1024 / args.nodes,
        "upkeep_bps": upkeep,
        "lookup_bytes_per_lookup": lookup_bytes / args.lookups,
        "lookup_seconds": lookup_seconds,
    }


async def bench_stock(args: argparse.Namespace) -> dict[str, Any]:
    import kademlia.routing
    import kademlia.storage
    from kademlia.network import Server
    from kademlia.protocol import KademliaProtocol

    class ShiftedTime:
        offset = 0.0

        @classmethod
        def monotonic(cls) -> float:
            return time.monotonic() + cls.offset

    kademlia.routing.time = ShiftedTime  # type: ignore[assignment]
    kademlia.storage.time = ShiftedTime  # type: ignore[assignment]
    counted = {"bytes": 0}

    class CountingProtocol(KademliaProtocol):  # type: ignore[misc]
        def datagram_received(self, data: bytes, addr: Any) -> None:
            counted["bytes"] += len(data)
            super().datagram_received(data, addr)

        def connection_made(self, transport: Any) -> None:
            send = transport.sendto

            def sendto(data: bytes, addr: Any = None) -> None:
                counted["bytes"] += len(data)
                send(data, addr)

            transport.sendto = sendto
            super().connection_made(transport)

    class CountingServer(Server):  # type: ignore[misc]
        protocol_class = CountingProtocol

    rng = random.Random(args.seed)
    base_rss = rss_mb()
    nodes: list[Any] = []
    addrs: list[tuple[str, int]] = []

    async def spawn(seeds: list[tuple[str, int]]) -> tuple[Any, tuple[str, int]]:
        server = CountingServer(node_id=rng.randbytes(20))
        await server.listen(0, "127.0.0.1")
        addr = server.transport.get_extra_info("sockname")[:2]
        if seeds:
            await server.bootstrap(seeds)
        return server, addr

    first = await spawn([])
    nodes.append(first[0])
    addrs.append(first[1])
    while len(nodes) < args.nodes:
        seeds = rng.sample(addrs, min(3, len(addrs)))
        batch = min(20, args.nodes - len(nodes))
        for server, addr in await asyncio.gather(*(spawn(seeds) for _ in range(batch))):
            nodes.append(server)
            addrs.append(addr)
    await asyncio.gather(*(n.bootstrap(rng.sample(addrs, 3)) for n in nodes))

    victims = set(rng.sample(range(len(nodes)), int(len(nodes) * args.kill)))
    alive = [n for i, n in enumerate(nodes) if i not in victims]
    keys = [f"key{i}" for i in range(args.keys)]
    for key in keys:
        await rng.choice(alive).set(key, f"value-of-{key}")
    for i in victims:
        nodes[i].stop()
    plan = [(rng.choice(alive), rng.choice(keys)) for _ in range(args.lookups)]

    async def one(i: int) -> bool:
        asker, key = plan[i]
        try:
            return bool(await asker.get(key) == f"value-of-{key}")
        except Exception:  # stock raises on some replies; count as a failure
            return False

    before = counted["bytes"]
    started = time.monotonic()
    latencies, successes = await run_lookups(rng, args.lookups, args.concurrency, one)
    lookup_seconds = time.monotonic() - started
    lookup_bytes = counted["bytes"] - before
    peak = rss_mb()
    before = counted["bytes"]
    ShiftedTime.offset += 3600
    await asyncio.gather(*(n._refresh_table() for n in alive), return_exceptions=True)
    upkeep = (counted["bytes"] - before) / len(alive) / 3600
    for n in alive:
        n.stop()
    return {
        "success": successes / args.lookups,
        "p50": percentile(latencies, 0.5),
        "p95": percentile(latencies, 0.95),
        "rss_mb": peak,
        "rss_per_node_kb": (peak - base_rss) * 1024 / args.nodes,
        "upkeep_bps": upkeep,
        "lookup_bytes_per_lookup": lookup_bytes / args.lookups,
        "lookup_seconds": lookup_seconds,
    }


ROWS = [
    ("lookup success", "success", "{:.1%}"),
    ("p50 lookup latency (s)", "p50", "{:.3f}"),
    ("p95 lookup latency (s)", "p95", "{:.3f}"),
    ("RSS, process (MB)", "rss_mb", "{:.1f}"),
    ("RSS per node (kB)", "rss_per_node_kb", "{:.1f}"),
    ("upkeep (B/s per node)", "upkeep_bps", "{:.2f}"),
    ("bytes per lookup", "lookup_bytes_per_lookup", "{:.0f}"),
    ("wall time of lookups (s)", "lookup_seconds", "{:.1f}"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--kill", type=float, default=0.3)
    parser.add_argument("--lookups", type=int, default=500)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--impl", choices=["dhtdeb", "stock"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.impl:
        bench = bench_dhtdeb if args.impl == "dhtdeb" else bench_stock
        print(json.dumps(asyncio.run(bench(args))))
        return
    results = {}
    for impl in ("dhtdeb", "stock"):
        child = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--impl", impl],
            check=True,
            capture_output=True,
            text=True,
        )
        results[impl] = json.loads(child.stdout.strip().splitlines()[-1])
    print(
        f"{args.nodes} nodes, {args.kill:.0%} killed, {args.lookups} lookups "
        f"({args.concurrency} concurrent), {args.keys} keys, seed {args.seed}"
    )
    print(f"{'':28}{'dhtdeb':>12}{'stock':>12}{'dhtdeb/stock':>14}")
    for label, key, fmt in ROWS:
        ours, theirs = results["dhtdeb"][key], results["stock"][key]
        ratio = f"{ours / theirs:.2f}" if theirs else "-"
        print(f"{label:28}{fmt.format(ours):>12}{fmt.format(theirs):>12}{ratio:>14}")


if __name__ == "__main__":
    main()
