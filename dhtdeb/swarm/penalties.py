"""Peer penalties: the node-wide memory of peers that lied or misbehaved, and for how long.

Owns: when each banned peer may be asked again, and the two ban lengths (a lie, or a fault that
may be a broken peer as well as a hostile one). Trusts: the downloads that ban (swarm/download.py
acts on the scheduler's `BanPeer`) and its clock. Every swarm download of the node shares one
(swarm/context.py); the simulation bans by the same lengths. The bans shown to people are the
peer ledger's (swarm/peer_ledger.py), which only remembers them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dhtdeb.clock import Clock
from dhtdeb.discovery import Peer

BAN_SECONDS = 3600.0  # a peer that lied (bad piece, bad piece list)
MISBEHAVIOUR_BAN_SECONDS = 600.0  # stalled, cut short, malformed: maybe broken, maybe hostile


@dataclass
class PeerPenalties:
    """Node-wide memory of peers that lied or misbehaved: they are skipped for BAN_SECONDS."""

    clock: Clock
    _until: dict[Peer, float] = field(default_factory=dict)

    def ban(self, peer: Peer, seconds: float = BAN_SECONDS) -> None:
        if len(self._until) > 10_000:
            now = self.clock.now()
            self._until = {p: t for p, t in self._until.items() if t > now}
        self._until[peer] = self.clock.now() + seconds

    def allowed(self, peer: Peer) -> bool:
        until = self._until.get(peer)
        return until is None or until <= self.clock.now()
