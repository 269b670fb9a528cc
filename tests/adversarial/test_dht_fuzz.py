"""A live DHT node under 12,000 fuzzed datagrams over loopback (the sample of bench/fuzz_dht.py).

The generator lives in tests/support/dht_fuzz.py; the bench imports it from there.
"""

from __future__ import annotations

import gc
import logging
import os
import random
from pathlib import Path

import pytest
from support.dht_fuzz import (
    DatagramFuzzer,
    FuzzSender,
    LogTally,
    ReceiveTap,
    good_client_answered,
    open_fuzz_target,
    rss_kib,
)

DATAGRAMS = 12_000  # ~5 s on an idle 2-core machine


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("DHT_TEST_SEED", random.SystemRandom().randrange(2**32)))
    print(f"DHT_TEST_SEED={value}")  # shown with a failure's captured output
    return value


async def test_live_node_survives_fuzzed_datagrams_quietly(tmp_path: Path, seed: int) -> None:
    """Expected: 12,000 seeded hostile datagrams (random, truncated, mutated, nested, oversized,
    bad fields, random requests, stray replies, fuzzed replies to the node's own pings) raise
    nothing out of the node, count as malformed, bad tokens and unexpected replies (the well-formed
    requests are served), log a
    handful of rate-limited warnings and no traceback, leave its bounded state within bounds and
    its RSS within 20 MB of where it started, and a good client still gets answers."""
    rng = random.Random(seed)
    tally = LogTally()
    root = logging.getLogger()
    root.addHandler(tally)
    nodes = await open_fuzz_target(tmp_path, rng)
    node = nodes[0]
    protocol = node.engine.protocol
    try:
        tap = ReceiveTap(protocol)
        sender = FuzzSender(tap, (node.address.host, node.address.port), DatagramFuzzer(rng))
        gc.collect()
        before_rss, before = rss_kib(), node.counters()
        tally.by_level.clear()
        try:
            report = await sender.run(DATAGRAMS)
        finally:
            sender.close()
        gc.collect()
        growth_mb = (rss_kib() - before_rss) / 1024
        answered, contacts = await good_client_answered((node.address.host, node.address.port))
        moved = {k: v - before.get(k, 0) for k, v in node.counters().items()}
        where = f"(seed {seed}, counters {moved}, log {dict(tally.by_level)})"

        assert report.not_received == 0, where  # every datagram reached the parser
        assert tap.received >= DATAGRAMS, where
        assert moved.get("internal_errors", 0) == 0, where
        assert tally.tracebacks == 0, f"{tally.samples} {where}"
        assert tally.lines(logging.WARNING) <= 10, f"{tally.samples} {where}"
        assert moved["malformed"] >= DATAGRAMS // 3, where
        assert moved["unexpected_replies"] > 0, where
        assert sum(n for k, n in moved.items() if k.startswith("requests_")) > 0, where
        assert moved["bad_tokens"] > 0, where
        assert len(protocol.limiter) <= 4096, where
        assert len(protocol._probing) <= protocol.tuning.max_probes, where
        assert len(protocol._outstanding) <= protocol.tuning.max_outstanding, where
        assert growth_mb <= 20, f"RSS grew {growth_mb:.1f} MB {where}"
        assert answered and contacts > 0, where
    finally:
        root.removeHandler(tally)
        for other in nodes:
            await other.close()
