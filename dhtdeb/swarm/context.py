"""SwarmContext: what every swarm download of this node shares.

Owns nothing of its own: it bundles the node-wide parts one file's download (swarm/download.py)
works with — peer discovery, the peer and mirror clients, the counters, the bans
(swarm/penalties.py), the clock and random source, this node's id and the addresses found to be
its own, the holder hints, the mirror's race against the lookups and the peer ledger. `app.py`
builds it once. Trusts: each part to keep its own rules.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from dhtdeb.clock import Clock
from dhtdeb.discovery import Peer, PeerDiscovery
from dhtdeb.mirror import MirrorClient
from dhtdeb.stats import Counters
from dhtdeb.swarm.holders import HaveQueries
from dhtdeb.swarm.lookup_plan import MirrorRace
from dhtdeb.swarm.peer_client import PeerClient
from dhtdeb.swarm.peer_ledger import PeerLedger
from dhtdeb.swarm.penalties import PeerPenalties


@dataclass(frozen=True)
class SwarmContext:
    """What every swarm download of this node shares."""

    discovery: PeerDiscovery
    peers: PeerClient
    mirror: MirrorClient
    counters: Counters
    penalties: PeerPenalties
    clock: Clock
    rng: random.Random
    node: bytes = b""  # this node's id: told with offers, splits the mirror's pieces
    holders: HaveQueries | None = None  # peers that served us lately, asked before the DHT
    # Addresses that answered with this node's own id (it listens on 0.0.0.0 and may find
    # itself under an address only the others know).
    own_addresses: set[Peer] = field(default_factory=set)
    race: MirrorRace = field(default_factory=MirrorRace)  # how long the mirror waits for lookups
    # First lookups that outlive their download (they report to `race` when they end).
    background: set[asyncio.Task[bool]] = field(default_factory=set)
    ledger: PeerLedger = field(default_factory=PeerLedger)  # the peers known, for people

    def is_self(self, peer: Peer) -> bool:
        return bool(self.node and peer.node == self.node) or peer in self.own_addresses
