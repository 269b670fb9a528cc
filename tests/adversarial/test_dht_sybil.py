"""A Sybil cluster near one key, answering get_peers with poisoned peer lists; forged replies.

The honest nodes and the Sybils run the real node code over the in-memory network
(dhtdeb.dht.transport.MemoryNetwork, tests/dht/swarm.py). A Sybil is a node whose id shares 100
bits with the key and whose peer store holds, for that key, hundreds of poisoned entries: closed
ports, the address of a victim host, and its own address (the most an honest reply carries).
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest
from dht.swarm import GUARD, Swarm, sha

from dhtdeb.dht import DhtConfig, DhtNode, DhtTuning, open_dht
from dhtdeb.dht.transport import MemoryNetwork
from dhtdeb.dht.wire import encode_reply, encode_request
from dhtdeb.netaddr import HostPort

VICTIM = ("127.0.0.1", 80)
SYBILS = 5  # fewer than k = 8: honest nodes stay among the k nearest the key
TUNING = DhtTuning(rpc_timeout=1.0, slow_after=0.5)  # far above scheduling jitter


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("DHT_TEST_SEED", random.SystemRandom().randrange(2**32)))
    print(f"DHT_TEST_SEED={value}")  # shown with a failure's captured output
    return value


def near(key: bytes, rng: random.Random, shared_bits: int = 100) -> bytes:
    """A node id sharing its first `shared_bits` bits with `key`."""
    mask = (1 << (160 - shared_bits)) - 1
    value = (int.from_bytes(key, "big") & ~mask) | (rng.getrandbits(160) & mask)
    return value.to_bytes(20, "big")


async def sybil_swarm(
    tmp: Path, rng: random.Random, key: bytes, honest: int = 30
) -> tuple[Swarm, list[DhtNode]]:
    network = MemoryNetwork()
    swarm = Swarm(tmp, rng, network=network, tuning=TUNING, host="127.0.0.1")
    await swarm.grow(honest)
    sybils = []
    for index in range(SYBILS):
        sybil = await open_dht(
            DhtConfig(
                HostPort("127.0.0.1", 0),
                tmp / f"sybil{index}",
                bootstrap=tuple(n.address for n in swarm.nodes[:3]),
                lan=False,
                node_id=near(key, rng),
            ),
            rng=random.Random(rng.getrandbits(64)),
            tuning=TUNING,
            network=network,
            maintenance=False,
        )
        store = sybil.engine.storage
        own = (sybil.address.host, sybil.address.port)
        store.add(key, own, sybil.engine.node.id)
        store.add(key, VICTIM, rng.randbytes(20))
        for port in range(20000, 20000 + 400):  # nobody listens there
            store.add(key, ("127.0.0.1", port), rng.randbytes(20))
        sybils.append(sybil)
    await swarm.settle()
    return swarm, sybils


async def test_sybils_near_a_key_neither_hide_honest_holders_nor_flood(
    tmp_path: Path, seed: int
) -> None:
    """Expected: with 5 Sybils (fewer than k) nearer the key than any honest node, each answering
    get_peers with up to 40 poisoned entries, a lookup from an honest node still completes
    within its deadline, still returns the honest announcer (the honest holders among the k
    nearest are asked), returns at most `enough_peers` peers (a poisoned list cannot send a
    downloader to hundreds of addresses or point them all at a victim), and no address from a
    poisoned list enters the asker's routing table nor displaces an honest contact."""
    rng = random.Random(seed)
    key_hex = sha(f"sybil-{seed}")
    key = bytes.fromhex(key_hex)[:20]
    swarm, sybils = await sybil_swarm(tmp_path, rng, key)
    try:
        announcer, asker = swarm.nodes[1], swarm.nodes[-1]
        await announcer.announce(key_hex)
        honest_before = {(c.ip, c.port) for c in asker.engine.protocol.router.contacts()}
        deadline = 5.0
        async with asyncio.timeout(deadline + GUARD):
            found = await asker.find_peers(key_hex, deadline)
        where = f"(seed {seed}, {len(found)} peers found)"
        addresses = {(p.host, p.port) for p in found}
        assert (announcer.address.host, announcer.address.port) in addresses, where
        assert len(found) <= TUNING.enough_peers, where
        router = asker.engine.protocol.router
        poisoned = {("127.0.0.1", port) for port in range(20000, 20400)} | {VICTIM}
        after = {(c.ip, c.port) for c in router.contacts()}
        assert not after & poisoned, where
        assert honest_before <= after, where  # nothing honest was displaced
    finally:
        await swarm.close()
        for sybil in sybils:
            await sybil.close()


async def test_forged_replies_are_dropped_and_the_call_times_out(tmp_path: Path, seed: int) -> None:
    """Expected: a reply with the right message id from an address the request did not go to,
    and a reply from the right address with a wrong message id, are both counted as unexpected
    and dropped; the call ends as a timeout (None), never with the forged content, and the
    forged sender's id does not enter the routing table."""
    swarm = Swarm(tmp_path, random.Random(seed), network=MemoryNetwork(), tuning=TUNING)
    try:
        node = await swarm.spawn()
        protocol = node.engine.protocol
        silent = ("127.0.0.1", 40999)  # nothing bound there
        call = asyncio.get_running_loop().create_task(protocol.request(silent, "ping"))
        await asyncio.sleep(0)  # let the request be sent (a loop turn, not a timing)
        (msgid,) = protocol._outstanding
        forged_id = b"F" * 20
        body = {"id": forged_id, "token": b"t" * 8}
        protocol.datagram_received(encode_reply(msgid, body), ("127.0.0.1", 41000))
        protocol.datagram_received(encode_reply(b"w" * 20, body), silent)
        assert await call is None, f"seed {seed}"
        assert node.counters()["unexpected_replies"] == 2, f"seed {seed}"
        assert protocol.router.find(forged_id) is None, f"seed {seed}"
    finally:
        await swarm.close()


async def test_a_sybil_flooding_get_peers_is_rate_limited(tmp_path: Path, seed: int) -> None:
    """Expected: 2,000 get_peers for the key from one Sybil address get at most the burst
    (250) plus what the rate refills answered; a second source is not limited by the first."""
    rng = random.Random(seed)
    swarm = Swarm(tmp_path, rng, network=MemoryNetwork(), tuning=TUNING)
    try:
        node = await swarm.spawn()
        protocol = node.engine.protocol
        key = rng.randbytes(20)
        sybil_id = near(key, rng)
        for index in range(2000):
            request = encode_request(index.to_bytes(20, "big"), "get_peers", sybil_id, key)
            protocol.datagram_received(request, ("127.0.0.1", 42000))
        counters = node.counters()
        where = f"(seed {seed}, {counters})"
        # the clock is real: allow what 50/s refills while the loop above runs (under 10 s)
        assert counters["requests_get_peers"] <= TUNING.request_burst + 500, where
        assert counters["rate_limited"] >= 2000 - TUNING.request_burst - 500, where
        protocol.datagram_received(
            encode_request(b"o" * 20, "get_peers", rng.randbytes(20), key), ("127.0.0.1", 42001)
        )
        assert node.counters()["requests_get_peers"] == counters["requests_get_peers"] + 1, where
    finally:
        await swarm.close()
