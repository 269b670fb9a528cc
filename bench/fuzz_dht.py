"""A million hostile datagrams at one live DHT node (issue 13): memory, rate, log, still alive.

Scenario: a dhtdeb DHT node on 127.0.0.1 (real UDP, port 0) with 8 honest neighbours that joined
through it and announced a key each, all in this process; then `--datagrams` seeded fuzzed
datagrams from 16 loopback sockets (tests/support/dht_fuzz.py: random bytes, truncated and
mutated valid messages from dhtdeb.dht.wire's encoder, deeply nested msgpack and length bombs,
oversized datagrams, requests with bad fields, well-formed requests with random ids, replies to
nothing, and fuzzed replies to the node's own verification pings). The sender keeps at most 64
datagrams unread by the node (it paces on what the node's protocol has received, not on sleeps),
so the kernel drops none and every datagram is parsed.

Printed against the targets: VmRSS of this process before and after (growth <= 20 MB), datagrams/s
end to end (generator and node share this one thread) and the node's own time per datagram, the
node's counters, log records (warnings and errors must stay a handful: rate-limited) and records
with a traceback (0), and whether a good client still gets answers to ping and find_node.

Exit status 1 only on a correctness failure: an exception out of the node, a traceback in its
log, an internal error counted, or a node that no longer answers. Numbers outside their targets
are printed as MISSED but do not fail (the bench is not a test).

    .venv/bin/python bench/fuzz_dht.py [--datagrams 1000000] [--seed 13]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support.dht_fuzz import (  # noqa: E402
    DatagramFuzzer,
    FuzzSender,
    LogTally,
    ReceiveTap,
    good_client_answered,
    open_fuzz_target,
    rss_kib,
)

RSS_TARGET_MB = 20.0
LOG_LINES_TARGET = 50  # warnings and errors over the whole run


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


async def run(count: int, seed: int, tmp: Path) -> int:
    rng = random.Random(seed)
    tally = LogTally()
    root = logging.getLogger()
    root.addHandler(tally)
    root.setLevel(logging.DEBUG)
    loop_errors: list[str] = []
    asyncio.get_running_loop().set_exception_handler(
        lambda _loop, context: loop_errors.append(str(context.get("message")))
    )
    nodes = await open_fuzz_target(tmp, rng)
    node = nodes[0]
    protocol = node.engine.protocol
    tap = ReceiveTap(protocol)
    sender = FuzzSender(tap, (node.address.host, node.address.port), DatagramFuzzer(rng))
    gc.collect()
    before = rss_kib()
    counters_before = node.counters()
    tally.by_level.clear()
    tally.samples.clear()
    started = time.monotonic()

    def progress(done: int) -> None:
        if done % 100_000 < sender.window:
            rate = done / max(1e-9, time.monotonic() - started)
            print(f"  {done:>9,} sent, {rate:,.0f}/s, RSS {rss_kib() / 1024:.1f} MB", flush=True)

    failure: BaseException | None = None
    try:
        report = await sender.run(count, progress)
    except BaseException as exc:  # a crash is the finding: report it, then fail
        failure = exc
        report = sender.report
    finally:
        sender.close()
    gc.collect()
    after = rss_kib()
    answered_ping, contacts = await good_client_answered((node.address.host, node.address.port))
    counters = node.counters()
    delta = {k: v - counters_before.get(k, 0) for k, v in counters.items()}
    limiter_sources = len(protocol.limiter)
    probing, outstanding, tasks = (
        len(protocol._probing),
        len(protocol._outstanding),
        len(protocol._tasks),
    )
    for other in nodes:
        await other.close()

    sent = sum(n for kind, n in report.sent.items() if kind != "not_sent")
    growth = (after - before) / 1024
    lines = tally.lines(logging.WARNING)
    print()
    print(f"seed {seed}, {count:,} datagrams generated, {sent:,} sent, load {os.getloadavg()}")
    print("  by kind: " + ", ".join(f"{k} {v:,}" for k, v in sorted(report.sent.items())))
    print(f"  replies to the node's own requests: {report.replies_to_node:,}")
    print(f"  not received (kernel drops): {report.not_received:,}")
    print()
    print(f"{'RSS before (MB)':<44}{before / 1024:>10.1f}")
    print(f"{'RSS after (MB)':<44}{after / 1024:>10.1f}")
    print(f"{'RSS growth (MB), target <= 20':<44}{growth:>10.1f}  {verdict(growth <= 20)}")
    wall = report.seconds
    print(f"{'wall time (s)':<44}{wall:>10.1f}")
    print(f"{'datagrams/s end to end (one thread)':<44}{tap.received / max(wall, 1e-9):>10,.0f}")
    per = tap.seconds / max(1, tap.received) * 1e6
    print(f"{'node time per datagram (us)':<44}{per:>10.1f}")
    print(f"{'node capacity (datagrams/s)':<44}{1e6 / max(per, 1e-9):>10,.0f}")
    print()
    print("node counters (this run):")
    for key in sorted(delta):
        if delta[key]:
            print(f"  {key:<30}{delta[key]:>12,}")
    print(
        f"  bounded state: limiter sources {limiter_sources}, probes {probing}, "
        f"outstanding {outstanding}, tasks {tasks}"
    )
    print()
    print(f"log records by level: {dict(tally.by_level)}")
    print(f"{'log lines (warning+), target <= 50':<44}{lines:>10}  {verdict(lines <= 50)}")
    print(f"{'records with a traceback, target 0':<44}{tally.tracebacks:>10}")
    print(f"{'event loop errors, target 0':<44}{len(loop_errors):>10}")
    for sample in tally.samples[:10]:
        print(f"  | {sample}")
    print(f"{'good client: ping answered':<44}{answered_ping!s:>10}")
    print(f"{'good client: find_node contacts':<44}{contacts:>10}")

    problems = []
    if failure is not None:
        problems.append(f"exception out of the run: {failure!r}")
    if tally.tracebacks or loop_errors:
        problems.append("traceback in the log or event loop error")
    if delta.get("internal_errors", 0):
        problems.append(f"{delta['internal_errors']} internal errors counted")
    if not answered_ping or contacts <= 0:
        problems.append("the node no longer answers a good client")
    if not delta.get("malformed", 0):
        problems.append("no malformed datagram counted")
    for problem in problems:
        print(f"FAILED: {problem} (seed {seed})")
    return 1 if problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datagrams", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fuzz-dht-") as tmp:
        sys.exit(asyncio.run(run(args.datagrams, args.seed, Path(tmp))))


if __name__ == "__main__":
    main()
