"""The same node code over an in-memory network with a virtual clock (the simulation's basis)."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from pathlib import Path
from typing import Any

import pytest

from dhtdeb.clock import ManualClock
from dhtdeb.dht import DhtConfig, DhtNode, DhtTuning, open_dht
from dhtdeb.dht.transport import MemoryNetwork
from dhtdeb.dht.wire import Address
from dhtdeb.netaddr import HostPort
from dhtdeb.sim.loop import LoopClock, VirtualTimeLoop

from .swarm import Swarm, sha


def loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


async def test_memory_network_expiry_and_jittered_reannounce(tmp_path: Path, seed: int) -> None:
    clock = ManualClock(1000.0)
    network = MemoryNetwork()
    # Loop time is real: silence stays short, but live replies get far more than scheduling jitter.
    tuning = DhtTuning(rpc_timeout=1.0, slow_after=0.5)
    swarm = Swarm(tmp_path, random.Random(seed), network=network, clock=clock, tuning=tuning)
    try:
        await swarm.grow(120)
        announcer, asker = swarm.nodes[3], swarm.nodes[100]
        await announcer.announce(sha("deb"))
        assert await asker.find_peers(sha("deb"), 5.0)
        holders = sum(1 for n in swarm.nodes if n.statistics().stored_keys)
        assert holders >= 4

        # 31 virtual minutes: the announcer's jittered re-announce (24..30 min) is due
        clock.advance(31 * 60)
        await asyncio.gather(*(n.maintain() for n in swarm.nodes))
        clock.advance(20 * 60)  # 51 min after the first announce, 20 after the second
        await asyncio.gather(*(n.maintain() for n in swarm.nodes))
        assert await asker.find_peers(sha("deb"), 5.0)

        # the announcer leaves: 46 minutes later its entries have expired everywhere
        swarm.nodes.remove(announcer)
        await announcer.close()
        clock.advance(46 * 60)
        await asyncio.gather(*(n.maintain() for n in swarm.nodes))
        assert sum(n.statistics().stored_keys for n in swarm.nodes) == 0
        assert await asker.find_peers(sha("deb"), 5.0) == []
        assert network.delivered > 0
    finally:
        await swarm.close()


def test_lookup_round_does_not_wait_for_silent_nodes(tmp_path: Path, seed: int) -> None:
    # On the simulation's virtual-time loop: live replies come at once and silent calls would
    # take rpc_timeout, whatever the load of the machine.
    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(_lookup_round_does_not_wait_for_silent_nodes(tmp_path, seed))
    finally:
        loop.close()


async def _lookup_round_does_not_wait_for_silent_nodes(tmp_path: Path, seed: int) -> None:
    silent: set[Address] = set()
    network = MemoryNetwork(route=lambda src, dst, data: dst not in silent and src not in silent)
    tuning = DhtTuning(rpc_timeout=3.0, slow_after=0.5)
    swarm = Swarm(
        tmp_path, random.Random(seed), network=network, tuning=tuning, clock=LoopClock(loop())
    )
    try:
        await swarm.grow(100)
        announcer, asker = swarm.nodes[1], swarm.nodes[-1]
        # A key whose announce the asker finds while every node answers. (Grown in batches with
        # no maintenance, a swarm can hold two groups of nodes near a key that do not know each
        # other: one seed in ~40 puts the announcer's nearest in one, the asker's in the other.)
        for label in ("x", "y", "z", "w"):
            await announcer.announce(sha(label))
            if await asker.find_peers(sha(label), 5.0):
                break
        else:
            raise AssertionError("the asker found none of four announces with every node live")
        # A third of the asker's contacts go silent (still in its routing table), and so does a
        # third of the nodes that store the key: the lookup converges on those, so it is sure to
        # ask silent nodes, while the other holders still answer with the peer.
        key = bytes.fromhex(sha(label))[:20]
        announcer_address = (announcer.address.host, announcer.address.port)
        asker_address = (asker.address.host, asker.address.port)
        holders = sorted(  # the asker may hold the key itself: it must not go silent
            (n.address.host, n.address.port)
            for n in swarm.nodes
            if n.engine.storage.peers(key, 1)
            and (n.address.host, n.address.port) not in (announcer_address, asker_address)
        )
        silent.update(holders[::3])
        contacts = asker.engine.protocol.router.contacts()
        for contact in contacts[::3]:
            if (contact.ip, contact.port) not in holders and (
                contact.ip,
                contact.port,
            ) != announcer_address:
                silent.add((contact.ip, contact.port))
        before = asker.counters().get("timeouts", 0)
        started = loop().time()
        result = await asker.engine.lookup(key, get_peers=True, deadline=5.0)
        assert result.peers
        assert result.queried > result.answered  # silent nodes were asked...
        assert asker.counters().get("timeouts", 0) == before  # ...and not waited for
        assert loop().time() - started < tuning.rpc_timeout
    finally:
        await swarm.close()


def _config(
    tmp_path: Path, rng: random.Random, host: str, name: str, bootstrap: tuple[HostPort, ...]
) -> DhtConfig:
    return DhtConfig(
        HostPort(host, 9978),
        tmp_path / name,
        bootstrap=bootstrap,
        lan=False,
        allow_loopback_peers=False,
        node_id=rng.randbytes(20),
    )


async def _first_and_late(
    tmp_path: Path, seed: int, network: MemoryNetwork, bootstrap: HostPort
) -> tuple[DhtNode, DhtNode]:
    """A node at 10.0.0.1 with no maintenance loop, then one at 10.0.0.2 joining through
    `bootstrap`, with the daemon's maintenance loop."""
    rng = random.Random(seed)
    clock = LoopClock(loop())
    first = await open_dht(
        _config(tmp_path, rng, "10.0.0.1", "a", ()),
        clock=clock,
        rng=rng,
        network=network,
        maintenance=False,
    )
    late = await open_dht(
        _config(tmp_path, rng, "10.0.0.2", "b", (bootstrap,)),
        clock=clock,
        rng=random.Random(seed + 1),
        network=network,
    )
    return first, late


async def _joined_at(node: DhtNode) -> float | None:
    """The virtual time at which `node`'s routing table got a contact, within 20 s; polled every
    0.1 virtual s (the loop jumps between the polls: no real time passes)."""
    for _ in range(200):
        if len(node.engine.protocol.router):
            return loop().time()
        await asyncio.sleep(0.1)
    return None


def test_a_node_whose_bootstrap_failed_joins_soon_after_the_network_comes_up(
    tmp_path: Path, seed: int
) -> None:
    """Its first bootstrap found nobody (its network was down): the maintenance loop tries again
    after 1, 2, 4 ... s, not after a whole maintenance interval (a minute). Found in the
    300-node simulation: such a machine announced its whole store to nobody."""
    loop = VirtualTimeLoop()
    try:
        joined_at = loop.run_until_complete(_join_after_outage(tmp_path, seed))
    finally:
        loop.close()
    assert joined_at is not None
    assert 5.0 <= joined_at <= 5.0 + 8.0  # the outage ends at 5 s; the tries come at 1, 3, 7 s


async def _join_after_outage(tmp_path: Path, seed: int) -> float | None:
    down = {"10.0.0.2"}
    network = MemoryNetwork(route=lambda src, dst, data: not ({src[0], dst[0]} & down))
    first, late = await _first_and_late(tmp_path, seed, network, HostPort("10.0.0.1", 9978))
    try:
        assert len(late.engine.protocol.router) == 0  # its bootstrap found nobody
        await asyncio.sleep(5.0 - loop().time())
        down.clear()  # the network comes up
        return await _joined_at(late)
    finally:
        await late.close()
        await first.close()


BOOT_NAME = "boot.example.lan"


@pytest.mark.parametrize("dns_at_start", ["no answer", "old address"])
def test_a_node_configured_by_host_name_joins_once_the_name_resolves(
    tmp_path: Path, seed: int, dns_at_start: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its only bootstrap entry is a host name that did not resolve at start (DNS not up yet at
    boot) or resolved to an address nobody answers at (the host was renumbered): the retries
    of an empty routing table resolve the name again, and it joins seconds after DNS gives the
    live address, warning about the unresolvable name once, not on every retry."""
    loop = VirtualTimeLoop()
    dns = {} if dns_at_start == "no answer" else {BOOT_NAME: "10.0.0.3"}
    numeric_only = loop.getaddrinfo

    async def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        """DNS, which the virtual loop has not: BOOT_NAME resolves as `dns` says now."""
        if host == BOOT_NAME:
            if host not in dns:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            host = dns[host]
        return await numeric_only(host, port, **kwargs)

    loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.WARNING, logger="dhtdeb.dht"):
            joined_at = loop.run_until_complete(_join_by_name(tmp_path, seed, dns))
    finally:
        loop.close()
    assert joined_at is not None
    assert 5.0 <= joined_at <= 5.0 + 8.0  # DNS answers from 5 s on; the tries come within 8 s
    unresolved = [r for r in caplog.records if "cannot resolve bootstrap host" in r.getMessage()]
    assert len(unresolved) == (1 if dns_at_start == "no answer" else 0)


async def _join_by_name(tmp_path: Path, seed: int, dns: dict[str, str]) -> float | None:
    network = MemoryNetwork()
    first, late = await _first_and_late(tmp_path, seed, network, HostPort(BOOT_NAME, 9978))
    try:
        assert len(late.engine.protocol.router) == 0  # its bootstrap found nobody
        assert late.engine.join_names == [(BOOT_NAME, 9978)]
        await asyncio.sleep(5.0 - loop().time())
        dns[BOOT_NAME] = "10.0.0.1"  # DNS answers, with the live address
        joined_at = await _joined_at(late)
        assert late.engine.bootstrappable_neighbors() == ([("10.0.0.1", 9978)] if joined_at else [])
        return joined_at
    finally:
        await late.close()
        await first.close()
