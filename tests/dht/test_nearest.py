"""A key's nearest nodes, remembered from its last lookup: announces go straight to them while
their tokens are young, and the next lookup of the key starts at them (dht/nearest.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from kademlia.node import Node

from dhtdeb.clock import ManualClock
from dhtdeb.dht import DhtTuning, MemoryNetwork, dht_key
from dhtdeb.dht.nearest import NearestMemory

from .swarm import GUARD, counter, fleet, sha


def _nodes(*labels: int) -> list[Node]:
    return [Node(bytes([label]) * 20, f"10.0.0.{label}", 9978) for label in labels]


def test_memory_recalls_young_entries_and_forgets_the_oldest_key() -> None:
    memory = NearestMemory(capacity=2, max_age=100.0)
    memory.remember(b"a" * 20, _nodes(1, 2), now=0.0)
    memory.remember(b"b" * 20, _nodes(3), now=10.0)
    memory.remember(b"a" * 20, _nodes(4), now=20.0)  # remembered again: now the newest
    memory.remember(b"c" * 20, _nodes(5), now=30.0)  # over capacity: b goes
    assert [n.ip for n in memory.recall(b"a" * 20, now=30.0)] == ["10.0.0.4"]
    assert memory.recall(b"b" * 20, now=30.0) == ()
    assert memory.recall(b"c" * 20, now=130.0, max_age=50.0) == ()  # too old for this caller
    assert len(memory.recall(b"c" * 20, now=130.0)) == 1
    assert memory.recall(b"c" * 20, now=130.5) == ()  # past max_age: gone
    assert len(memory) == 1
    memory.remember(b"d" * 20, [], now=0.0)  # nothing to remember
    assert len(memory) == 1


@pytest.mark.parametrize(("capacity", "max_age"), [(0, 10.0), (5, 0.0)])
def test_memory_refuses_a_useless_size(capacity: int, max_age: float) -> None:
    with pytest.raises(ValueError, match="NearestMemory"):
        NearestMemory(capacity, max_age)


async def test_an_announce_after_a_lookup_goes_straight_to_its_nodes(
    tmp_path: Path, seed: int
) -> None:
    """A download looks its file up, then announces it: the announce needs no second lookup
    while the tokens are young. Past their age it looks up again, starting at the remembered
    nodes, and asks no more nodes than those."""
    clock = ManualClock()
    nodes = await fleet(tmp_path, 30, MemoryNetwork(), seed, clock)
    try:
        downloader, other = nodes[3], nodes[17]
        file = sha("hello_2.10-3_amd64.deb")
        assert await downloader.find_peers(file, GUARD) == []
        remembered = downloader.engine.nearest.recall(dht_key(file), clock.now())
        assert len(remembered) == DhtTuning().ksize

        lookups = downloader.counters().get("lookups_announce", 0)
        await downloader.announce(file)
        assert downloader.counters().get("lookups_announce", 0) == lookups
        assert downloader.counters()["announces_direct"] == 1
        found = await other.find_peers(file, GUARD)
        assert [p.node for p in found] == [downloader.engine.node.id]

        clock.advance(DhtTuning().remote_token_max_age + 1.0)
        before = counter(nodes, "requests_get_peers")
        await downloader.announce(file)
        assert downloader.counters()["lookups_announce"] == lookups + 1
        assert downloader.counters()["announces_direct"] == 1
        assert counter(nodes, "requests_get_peers") - before == len(remembered)
        assert downloader.statistics().announced == 1
    finally:
        await asyncio.gather(*(n.close() for n in nodes))


async def test_an_announce_whose_remembered_nodes_are_gone_looks_up_the_live_ones(
    tmp_path: Path, seed: int
) -> None:
    clock = ManualClock()
    nodes = await fleet(tmp_path, 30, MemoryNetwork(), seed, clock)
    try:
        downloader = nodes[5]
        file = sha("libc6_2.36-9_amd64.deb")
        await downloader.find_peers(file, GUARD)
        remembered = downloader.engine.nearest.recall(dht_key(file), clock.now())
        gone = {node.id for node in remembered}
        await asyncio.gather(*(n.close() for n in nodes if n.engine.node.id in gone))
        alive = [n for n in nodes if n.engine.node.id not in gone]

        await downloader.announce(file)  # the remembered time out; a lookup finds the rest
        assert downloader.counters().get("announces_direct", 0) == 0  # nobody accepted there
        assert downloader.counters()["lookups_announce"] == 1
        assert downloader.statistics().announced == 1
        finder = next(n for n in alive if n is not downloader)
        found = await finder.find_peers(file, GUARD)
        assert [p.node for p in found] == [downloader.engine.node.id]
    finally:
        await asyncio.gather(*(n.close() for n in nodes))
