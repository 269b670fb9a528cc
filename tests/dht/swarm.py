"""Many DHT nodes in one process, for tests."""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path

from dhtdeb.clock import Clock
from dhtdeb.dht import DhtConfig, DhtNode, DhtTuning, open_dht
from dhtdeb.dht.transport import DatagramNetwork
from dhtdeb.netaddr import HostPort

GUARD = 10.0  # bound on waits for what must happen; a failure, not a timing
FLEET_PORT = 9978  # every host of a fleet on the default port


def sha(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


class Swarm:
    """Many DHT nodes in one process, each with its own seeded `random.Random`."""

    def __init__(
        self,
        tmp: Path,
        rng: random.Random,
        *,
        host: str = "127.0.0.1",
        tuning: DhtTuning | None = None,
        network: DatagramNetwork | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.tmp = tmp
        self.rng = rng
        self.host = host
        self.tuning = tuning or DhtTuning()
        self.network = network
        self.clock = clock
        self.nodes: list[DhtNode] = []
        self.dead: list[DhtNode] = []
        self._count = 0
        self.state_of: dict[DhtNode, Path] = {}

    async def spawn(
        self, bootstrap: tuple[HostPort, ...] = (), state: Path | None = None
    ) -> DhtNode:
        self._count += 1
        state = state or self.tmp / f"node{self._count}"
        node = await open_dht(
            DhtConfig(
                HostPort(self.host, 0),
                state,
                bootstrap=bootstrap,
                lan=False,
            ),
            clock=self.clock,
            rng=random.Random(self.rng.getrandbits(64)),
            tuning=self.tuning,
            network=self.network,
            maintenance=False,
        )
        self.nodes.append(node)
        self.state_of[node] = state
        return node

    async def grow(self, count: int, batch: int = 20) -> None:
        if not self.nodes:
            await self.spawn()
        while len(self.nodes) < count:
            seeds = tuple(n.address for n in self.rng.sample(self.nodes, min(3, len(self.nodes))))
            todo = min(batch, count - len(self.nodes))
            await asyncio.gather(*(self.spawn(seeds) for _ in range(todo)))
        await self.settle()

    async def settle(self) -> None:
        """Every node looks itself up once more, so early joiners learn the late ones."""
        await asyncio.gather(
            *(n.engine.lookup(n.engine.node.id, get_peers=False) for n in self.nodes)
        )

    async def kill(self, fraction: float) -> list[DhtNode]:
        victims = self.rng.sample(self.nodes, int(len(self.nodes) * fraction))
        for node in victims:
            self.nodes.remove(node)
            self.dead.append(node)
            await node.close()
        return victims

    async def close(self) -> None:
        await asyncio.gather(*(n.close() for n in self.nodes))
        self.nodes.clear()

    async def kill_among(self, candidates: list[DhtNode], count: int) -> list[DhtNode]:
        victims = self.rng.sample(candidates, count)
        for node in victims:
            self.nodes.remove(node)
            self.dead.append(node)
            await node.close()
        return victims


async def until_routed(node: DhtNode, node_id: bytes, address: HostPort) -> None:
    """Wait (on routing changes, not sleeps) until `node` routes `node_id` through `address`."""
    changed = asyncio.Event()
    protocol = node.engine.protocol
    protocol.on_contact = changed.set
    try:
        async with asyncio.timeout(GUARD):
            while True:
                changed.clear()
                known = protocol.router.find(node_id)
                if known is not None and HostPort(known.ip, known.port) == address:
                    return
                await changed.wait()
    finally:
        protocol.on_contact = None


async def fleet(
    tmp: Path, size: int, network: DatagramNetwork, seed: int, clock: Clock | None = None
) -> list[DhtNode]:
    """`size` nodes at 10.9.0.1 … on port 9978, each bootstrapped from the first."""
    rng = random.Random(seed)
    nodes: list[DhtNode] = []
    for i in range(size):
        nodes.append(
            await open_dht(
                DhtConfig(
                    HostPort(f"10.9.0.{i + 1}", FLEET_PORT),
                    tmp / f"host{i + 1}",
                    bootstrap=(HostPort("10.9.0.1", FLEET_PORT),) if i else (),
                    lan=False,
                    allow_loopback_peers=False,
                ),
                rng=random.Random(rng.getrandbits(64)),
                clock=clock,
                network=network,
                maintenance=False,
            )
        )
    await asyncio.gather(*(n.engine.lookup(n.engine.node.id, get_peers=False) for n in nodes))
    return nodes


def counter(nodes: list[DhtNode], name: str) -> int:
    return sum(n.counters().get(name, 0) for n in nodes)
