"""The daemon's peer side: the DHT (UDP) and the peer server (TCP) on one port number, and a
DHT that joins only from the socket it keeps. Real sockets on 127.0.0.1, an in-process bootstrap
node."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from dht.swarm import until_routed

from dhtdeb.app import ServeConfig, _open_peer_side
from dhtdeb.dht import DhtConfig, DhtNode, open_dht
from dhtdeb.netaddr import HostPort
from dhtdeb.stats import Counters
from dhtdeb.store import ContentStore
from dhtdeb.swarm.peer_server import PeerServer


class FirstPortChosen(PeerServer):
    """A peer server whose first port-0 start lands on `first` (as if the OS had picked it)."""

    def __init__(self, root: Path, first: int) -> None:
        super().__init__(ContentStore(root), Counters())
        self.first: int | None = first
        self.ports: list[int] = []

    async def start(self, host: str, port: int) -> tuple[str, int]:
        chosen, self.first = self.first, None
        bound = await super().start(host, chosen if port == 0 and chosen else port)
        self.ports.append(bound[1])
        return bound


def _held_on_udp_free_on_tcp() -> tuple[socket.socket, int]:
    """A UDP socket bound to a port number that is free on TCP (so the peer server's first
    start succeeds there and only the DHT's UDP bind fails), and that number."""
    for _ in range(20):
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.bind(("127.0.0.1", 0))
        number = probe.getsockname()[1]
        probe.close()  # a listener never connected leaves no TIME_WAIT behind
        held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            held.bind(("127.0.0.1", number))
        except OSError:
            held.close()
            continue
        return held, number
    raise AssertionError("no port number free on both TCP and UDP in 20 tries")


async def test_dht_joins_only_from_the_port_it_keeps(tmp_path: Path) -> None:
    boot = await open_dht(
        DhtConfig(HostPort("127.0.0.1", 0), tmp_path / "boot", lan=False), maintenance=False
    )
    held, taken = _held_on_udp_free_on_tcp()
    peers = FirstPortChosen(tmp_path / "store", taken)
    config = ServeConfig(
        state_dir=tmp_path / "serve",
        peer=HostPort("127.0.0.1", 0),
        lan=False,
        bootstrap=(boot.address,),
    )
    node: DhtNode | None = None
    try:
        node_id = "5a" * 20
        discovery, address = await _open_peer_side(config, peers, node_id)
        assert isinstance(discovery, DhtNode)
        node = discovery
        assert peers.ports == [taken, address.port] and address.port != taken
        _, writer = await asyncio.open_connection("127.0.0.1", address.port)  # TCP, same number
        writer.close()
        await writer.wait_closed()
        assert discovery.engine.node.id == bytes.fromhex(node_id)  # the daemon's identity
        await until_routed(boot, bytes.fromhex(node_id), address)
        router = boot.engine.protocol.router
        assert [(c.ip, c.port) for c in router.contacts()] == [("127.0.0.1", address.port)]
    finally:
        held.close()
        if node is not None:
            await node.close()
        await peers.close()
        await boot.close()
