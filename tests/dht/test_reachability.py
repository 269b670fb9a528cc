"""A node behind NAT stops announcing what nobody can fetch from it (dht/reachability.py)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from dhtdeb.clock import ManualClock
from dhtdeb.dht.reachability import (
    EVIDENCE_CONTACTS,
    NAT_WINDOW,
    SILENT_WINDOW,
    Reachability,
)
from dhtdeb.dht.transport import MemoryNetwork

from .swarm import Swarm, sha

A, B = ("10.0.0.1", 9978), ("10.0.0.2", 9978)


def test_a_stranger_asking_proves_reachable_an_answer_does_not() -> None:
    seen = Reachability()
    big = EVIDENCE_CONTACTS
    assert not seen.judge(0.0, big)  # the evidence starts now
    seen.sent(A, 10.0)
    seen.request_from(A, 20.0)  # asked back by a node we asked: a NAT lets that through
    assert not seen.judge(SILENT_WINDOW - 1, big)
    assert seen.judge(SILENT_WINDOW, big)  # ten minutes in a big network and no stranger
    seen.request_from(B, SILENT_WINDOW + 1)  # a stranger
    assert not seen.unreachable and not seen.judge(SILENT_WINDOW + 2, big)
    seen.sent(A, 2 * SILENT_WINDOW)
    seen.request_from(A, 2 * SILENT_WINDOW + NAT_WINDOW + 1)  # past any router's mapping
    assert not seen.judge(3 * SILENT_WINDOW + NAT_WINDOW, big)


def test_a_small_fleet_is_never_judged() -> None:
    seen = Reachability()
    for minute in range(120):
        assert not seen.judge(60.0 * minute, EVIDENCE_CONTACTS - 1)
    assert not seen.judge(7200.0, EVIDENCE_CONTACTS)  # big from now on: the evidence starts
    assert seen.judge(7200.0 + SILENT_WINDOW, EVIDENCE_CONTACTS)


async def test_a_node_nobody_reaches_unasked_withholds_its_announces(
    tmp_path: Path, seed: int
) -> None:
    """Over the in-memory network, a node whose routing table is big and that no stranger has
    asked for ten minutes announces nothing; a stranger's request ends that."""
    clock = ManualClock(1000.0)
    swarm = Swarm(tmp_path, random.Random(seed), network=MemoryNetwork(), clock=clock)
    try:
        await swarm.grow(100)
        node = max(swarm.nodes[1:], key=lambda n: len(n.engine.protocol.router))
        protocol = node.engine.protocol
        assert len(protocol.router) >= EVIDENCE_CONTACTS
        protocol.reachability = Reachability()  # no stranger heard from here on
        assert await node.engine.announce(sha("first"))  # the evidence has just begun
        clock.advance(SILENT_WINDOW + 1)
        await node.maintain()
        assert protocol.reachability.unreachable
        assert not await node.engine.announce(sha("withheld"))
        assert protocol.counters["announces_withheld"] == 1
        schedule = node.engine.schedule
        assert schedule.reached() == 1  # "first" only: a withheld key is not announced
        assert sha("withheld") not in schedule.unreached()  # and not queued again at once
        assert not any(
            n.engine.storage.entries(bytes.fromhex(sha("withheld"))[:20], 10) for n in swarm.nodes
        )
        stranger = await swarm.spawn()  # a new address: nothing was ever sent to it
        await stranger.engine.protocol.ping_address(node.engine.address)
        assert not protocol.reachability.unreachable
        assert await node.engine.announce(sha("withheld"))
    finally:
        await swarm.close()
        await asyncio.sleep(0)
