"""Real UDP networks of 100+ nodes on 127.0.0.1: announce/find, churn, restart-and-rejoin."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest

from dhtdeb.dht import DhtConfig, DhtTuning, open_dht
from dhtdeb.dht.transport import MemoryNetwork
from dhtdeb.discovery import Peer
from dhtdeb.netaddr import HostPort

from .swarm import Swarm, sha, until_routed


async def test_hundred_nodes_many_peers_per_key_and_churn(swarm: Swarm, seed: int) -> None:
    rng = random.Random(seed)
    await swarm.grow(120)
    assert min(n.statistics().routing_table for n in swarm.nodes) >= 8
    announcers = rng.sample(swarm.nodes, 60)
    for node in announcers:
        await node.announce(sha("popular"))
    expected = {Peer("127.0.0.1", n.address.port) for n in announcers}
    asker = next(n for n in swarm.nodes if n not in announcers)
    found = await asker.find_peers(sha("popular"), 5.0)
    assert len(found) >= swarm.tuning.enough_peers and set(found) <= expected
    assert sum(n.statistics().stored_keys for n in swarm.nodes) >= 8
    assert all(n.statistics().announced == 1 for n in announcers)

    # churn: 30% of the non-announcers die; every survivor still finds the peers, and the
    # dead leave the routing tables of those that tried them
    victims = await swarm.kill_among([n for n in swarm.nodes if n not in announcers], 36)
    assert len(victims) == 36
    askers = rng.sample([n for n in swarm.nodes if n not in announcers], 10)
    for node in askers:
        assert await node.find_peers(sha("popular"), 5.0)


async def test_dead_contacts_are_evicted_and_only_responders_added(swarm: Swarm) -> None:
    await swarm.grow(40)
    victims = await swarm.kill(0.3)
    dead = {(v.address.host, v.address.port) for v in victims}
    node = swarm.nodes[0]
    # refresh every contact once: the silent ones must go
    contacts = list(node.engine.protocol.router.contacts())
    await asyncio.gather(*(node.engine.protocol.call_ping(c) for c in contacts))
    remaining = {(c.ip, c.port) for c in node.engine.protocol.router.contacts()}
    assert not remaining & dead
    alive = {(n.address.host, n.address.port) for n in swarm.nodes}
    assert remaining <= alive


async def test_restart_rejoins_from_saved_contacts_without_bootstrap(swarm: Swarm) -> None:
    await swarm.grow(30)
    node = swarm.nodes[5]
    old_id = node.engine.node.id
    state = swarm.state_of[node]
    swarm.nodes.remove(node)
    await node.close()
    saved = json.loads((state / "dht.json").read_text())
    assert saved["node_id"] == old_id.hex() and len(saved["contacts"]) >= 8
    assert (state / "dht.json").read_bytes()[:1] == b"{"  # JSON, never pickle
    again = await swarm.spawn(bootstrap=(), state=state)
    assert again.engine.node.id == old_id
    assert again.statistics().routing_table >= 8
    await swarm.nodes[0].announce(sha("after-restart"))
    assert await again.find_peers(sha("after-restart"), 5.0)


async def test_node_back_on_another_port_replaces_its_silent_old_address(swarm: Swarm) -> None:
    # Same id, new port (a restart on port 0; a daemon that gave up its first socket): the
    # node must not stay listed at the dead address, where every lookup near it would wait.
    swarm.tuning = DhtTuning(rpc_timeout=0.5)
    boot = await swarm.spawn()
    await swarm.grow(12)
    mover = await swarm.spawn((boot.address,))
    node_id, old, state = mover.engine.node.id, mover.address, swarm.state_of[mover]
    await until_routed(boot, node_id, old)
    swarm.nodes.remove(mover)
    await mover.close()
    again = await swarm.spawn((boot.address,), state=state)
    assert again.engine.node.id == node_id and again.address != old
    await until_routed(boot, node_id, again.address)  # its old address was pinged, then evicted
    asker = await swarm.spawn((boot.address,))
    assert await asker.find_peers(sha("nobody has it"), 5.0) == []
    assert asker.counters().get("timeouts", 0) == 0


async def test_corrupt_state_file_starts_fresh(tmp_path: Path) -> None:
    (tmp_path / "dht.json").write_text("\x80not json")
    node = await open_dht(
        DhtConfig(HostPort("127.0.0.1", 0), tmp_path, lan=False),
        rng=random.Random(1),
        maintenance=False,
    )
    try:
        assert node.address.port != 0
    finally:
        await node.close()
    assert json.loads((tmp_path / "dht.json").read_text())["format"] == 1


async def test_ipv6_node_answers_only_with_ipv6(swarm: Swarm) -> None:
    try:
        swarm.host = "::1"
        first = await swarm.spawn()
    except Exception as exc:  # no IPv6 loopback on this host
        pytest.skip(f"no ::1: {exc}")
    others = [await swarm.spawn((first.address,)) for _ in range(5)]
    await swarm.settle()
    assert others[0].statistics().routing_table >= 4
    await others[1].announce(sha("v6"))
    assert await others[2].find_peers(sha("v6"), 5.0) == [Peer("::1", others[1].address.port)]


@pytest.mark.slow
async def test_three_hundred_nodes_with_heavy_churn(swarm: Swarm, seed: int) -> None:
    rng = random.Random(seed)
    await swarm.grow(300)
    keys = [sha(f"k{i}") for i in range(30)]
    for key in keys:
        await rng.choice(swarm.nodes).announce(key)
    await swarm.kill(0.3)
    hits = 0
    for key in keys:
        hits += bool(await rng.choice(swarm.nodes).find_peers(key, 5.0))
    assert hits >= 27


def test_memory_network_is_importable() -> None:
    assert MemoryNetwork().delivered == 0
    assert DhtTuning().rpc_timeout <= 1.0


async def test_bootstrap_node_runs_until_cancelled_and_saves_state(tmp_path: Path) -> None:
    from dhtdeb.dht import run_bootstrap_node

    ready = asyncio.Event()
    state = tmp_path / "boot"
    config = DhtConfig(HostPort("127.0.0.1", 0), state, lan=False)
    task = asyncio.get_running_loop().create_task(run_bootstrap_node(config, ready=ready))
    await ready.wait()
    saved = json.loads((state / "dht.json").read_text()) if (state / "dht.json").exists() else None
    assert saved is None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert json.loads((state / "dht.json").read_text())["format"] == 1


async def test_peers_are_told_as_the_lookup_finds_them_each_once(swarm: Swarm) -> None:
    """A download needs one holder, not the converged answer: `on_peers` hears of every peer
    before `find_peers` returns, each once; a node that stores announces for the key tells
    them before it sends a single datagram."""
    await swarm.grow(40)
    announcers = swarm.nodes[:3]
    for node in announcers:
        await node.announce(sha("streamed"))
    expected = {Peer("127.0.0.1", n.address.port) for n in announcers}
    asker = next(n for n in swarm.nodes[3:] if not n.statistics().stored_keys)
    batches: list[list[Peer]] = []
    found = await asker.find_peers(sha("streamed"), 5.0, batches.append)
    told = [peer for batch in batches for peer in batch]
    assert set(found) == expected and len(told) == len(set(told)) and set(told) == set(found)

    storer = next(n for n in swarm.nodes[3:] if n.statistics().stored_keys)
    before = storer.counters().get("bytes_sent", 0)
    sent: list[int] = []
    await storer.find_peers(
        sha("streamed"), 5.0, lambda peers: sent.append(storer.counters().get("bytes_sent", 0))
    )
    assert sent and sent[0] == before  # its own store's entries: no datagram was needed
    assert storer.counters().get("bytes_sent", 0) > before  # the lookup ran on after that
