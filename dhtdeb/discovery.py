"""What the rest of dhtdeb sees of peer discovery: a small interface, no kademlia.

A key is the SHA256 of a file (hex, from the signed index). The DHT implementation in `dhtdeb.dht`
truncates it to its own key size; callers never need to know. A `Peer` is where a peer's HTTP server
listens (the same port number as its DHT UDP socket) and the node id it announced with; a node
knows itself by that id, never by an address. Peers are never trusted: whatever they serve is
verified against the signed index before use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from dhtdeb.stats import Histogram


@dataclass(frozen=True, slots=True, order=True)
class Peer:
    """Where a peer listens, and the node id it announced with (empty when unknown).

    Equality is by address only: the id is a claim of the peer's, used to recognise this node
    itself (every host of a fleet listens on the same port, so an address says nothing about
    who is behind it) and never to trust anybody.
    """

    host: str
    port: int
    node: bytes = field(default=b"", compare=False)

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class DiscoveryStatistics:
    routing_table: int = 0
    stored_keys: int = 0
    announced: int = 0  # files whose last announce some node accepted
    unannounced: int = 0  # files queued, or whose last announce no node accepted
    rate_limited: int = 0  # requests from others this node dropped (per-source limit)
    # The DHT's datagram counters (sent, received, timeouts, malformed, requests by method ...).
    datagrams: dict[str, int] = field(default_factory=dict)
    # Durations of the lookups that had nodes to ask, by purpose (find_peers, announce,
    # find_node); copies, taken when the statistics were.
    lookup_seconds: dict[str, Histogram] = field(default_factory=dict)


class PeerDiscovery(Protocol):
    async def announce(self, sha256: str) -> None:
        """Tell the network this node holds the verified file with this SHA256 (hex), now."""
        ...

    def announce_later(self, sha256: str) -> None:
        """The same, soon, together with the other files stored about now (apt's batches)."""
        ...

    async def find_peers(
        self,
        sha256: str,
        deadline: float,
        on_peers: Callable[[list[Peer]], None] | None = None,
    ) -> list[Peer]:
        """Peers believed to hold the file; returns what is known when `deadline` seconds pass.
        `on_peers`, if given, is told each batch as it is found, before the lookup returns (a
        download needs one holder, not the converged answer)."""
        ...

    def statistics(self) -> DiscoveryStatistics: ...

    def on_neighbour(self, callback: Callable[[Peer], None]) -> None:
        """Call `callback` with every peer found on this LAN (they are asked first, see
        swarm/holders.py)."""
        ...

    async def close(self) -> None: ...


class NoDiscovery:
    """`--no-dht`: a pure verified caching proxy that never talks to peers."""

    async def announce(self, sha256: str) -> None:
        return None

    def announce_later(self, sha256: str) -> None:
        return None

    async def find_peers(
        self,
        sha256: str,
        deadline: float,
        on_peers: Callable[[list[Peer]], None] | None = None,
    ) -> list[Peer]:
        return []

    def statistics(self) -> DiscoveryStatistics:
        return DiscoveryStatistics()

    def on_neighbour(self, callback: Callable[[Peer], None]) -> None:
        return None

    async def close(self) -> None:
        return None
