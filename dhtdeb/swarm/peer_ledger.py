"""Peer ledger: the peers this node knows for swarm transfers, and what passed between them.

Owns, per peer (by the address its peer server listens on): how this node first heard of it (a
DHT lookup, the LAN, a holder's answer), the bytes and pieces received from it, the last ban a
download gave it and why, and when it was last seen (named by a lookup, met on the LAN, or bytes
from it). Per host, the bytes this node's peer server sent there: the peer server sees the
address a request comes from, not the port its sender listens on, so uploads are counted by host
and shown beside the one known peer of that host (every host of a fleet runs one daemon), or on
a row of their own when the host has none or several (loopback tests). Bounded: the MAX_PEERS
most recently seen peers and hosts are kept, the others forgotten.

A synchronous core: every call takes `now` (the daemon's monotonic clock). Trusts nothing: it only
counts. Addresses and reasons are shown escaped by whoever shows them; the bans it lists are
enforced elsewhere (swarm/penalties.py), this only remembers them for people.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from dhtdeb.discovery import Peer
from dhtdeb.netaddr import HostPort

MAX_PEERS = 256  # peers (and uploading hosts) remembered
SHOWN_PEERS = 50  # listed by /status.json, most recently seen first

# How a peer became known.
VIA_DHT = "dht"  # a DHT lookup named it as a holder of a file
VIA_LAN = "lan"  # it answered this node's LAN discovery
VIA_HOLDER = "holder"  # a hinted holder (one that served this node before) holds a file
VIA_UPLOADS = "uploads"  # only known as a host that fetched from this node


def address(peer: Peer) -> str:
    return str(HostPort(peer.host, peer.port))


@dataclass(slots=True)
class _PeerEntry:
    via: str
    last_seen: float
    node: str = ""
    received_bytes: int = 0
    pieces: int = 0
    ban_reason: str | None = None
    banned_until: float | None = None


@dataclass(slots=True)
class _HostEntry:
    sent_bytes: int
    last_seen: float


@dataclass(frozen=True, slots=True)
class PeerRow:
    """One row of the peers table. `sent_bytes` is None when the peer's host is not known to
    this node's peer server (or is shared: see the module's comment)."""

    address: str
    via: str
    node: str
    received_bytes: int
    pieces: int
    sent_bytes: int | None
    last_seen: float
    banned: bool
    ban_reason: str | None
    banned_until: float | None

    def as_dict(self, wall_offset: float) -> dict[str, object]:
        return {
            "address": self.address,
            "via": self.via,
            "node": self.node,
            "received_bytes": self.received_bytes,
            "pieces": self.pieces,
            "sent_bytes": self.sent_bytes,
            "last_seen": round(self.last_seen + wall_offset, 3),
            "banned": self.banned,
            "ban_reason": self.ban_reason,
            "banned_until": (
                None if self.banned_until is None else round(self.banned_until + wall_offset, 3)
            ),
        }


class PeerLedger:
    def __init__(self, *, size: int = MAX_PEERS) -> None:
        self._size = size
        self._peers: OrderedDict[Peer, _PeerEntry] = OrderedDict()  # least recently seen first
        self._hosts: OrderedDict[str, _HostEntry] = OrderedDict()

    def _entry(self, peer: Peer, via: str, now: float) -> _PeerEntry:
        entry = self._peers.pop(peer, None)
        if entry is None:
            entry = _PeerEntry(via=via, last_seen=now)
            while len(self._peers) >= self._size:
                self._peers.popitem(last=False)
        self._peers[peer] = entry
        entry.last_seen = now
        if peer.node:
            entry.node = peer.node.hex()
        return entry

    def found(self, peer: Peer, via: str, now: float) -> None:
        """A lookup, the LAN or a holder named `peer`."""
        self._entry(peer, via, now)

    def received(self, peer: Peer, count: int, now: float) -> None:
        """`peer` sent one piece of `count` bytes (verified or not: it is what came)."""
        entry = self._entry(peer, VIA_DHT, now)
        entry.received_bytes += count
        entry.pieces += 1

    def banned(self, peer: Peer, reason: str, until: float, now: float) -> None:
        entry = self._entry(peer, VIA_DHT, now)
        entry.ban_reason = reason
        entry.banned_until = until

    def sent(self, host: str, count: int, now: float) -> None:
        """This node's peer server sent `count` bytes to a requester at `host`."""
        entry = self._hosts.pop(host, None)
        if entry is None:
            entry = _HostEntry(0, now)
            while len(self._hosts) >= self._size:
                self._hosts.popitem(last=False)
        entry.sent_bytes += count
        entry.last_seen = now
        self._hosts[host] = entry

    def rows(self, now: float, limit: int = SHOWN_PEERS) -> list[PeerRow]:
        """The `limit` most recently seen peers and uploading hosts, most recent first (ties:
        by address)."""
        by_host: dict[str, list[Peer]] = {}
        for peer in self._peers:
            by_host.setdefault(peer.host, []).append(peer)
        rows = []
        for peer, entry in self._peers.items():
            host = self._hosts.get(peer.host)
            shared = len(by_host[peer.host]) > 1
            banned = entry.banned_until is not None and entry.banned_until > now
            rows.append(
                PeerRow(
                    address=address(peer),
                    via=entry.via,
                    node=entry.node,
                    received_bytes=entry.received_bytes,
                    pieces=entry.pieces,
                    sent_bytes=None if host is None or shared else host.sent_bytes,
                    last_seen=entry.last_seen
                    if host is None or shared
                    else max(entry.last_seen, host.last_seen),
                    banned=banned,
                    ban_reason=entry.ban_reason if banned else None,
                    banned_until=entry.banned_until if banned else None,
                )
            )
        for name, host in self._hosts.items():
            if len(by_host.get(name, ())) == 1:
                continue  # shown on its peer's row
            rows.append(
                PeerRow(
                    name, VIA_UPLOADS, "", 0, 0, host.sent_bytes, host.last_seen, False, None, None
                )
            )
        rows.sort(key=lambda row: (-row.last_seen, row.address))
        return rows[:limit]

    def as_dicts(self, now: float, wall_offset: float) -> list[dict[str, object]]:
        """The rows as /status.json has them (times as Unix times, see RecentTransfers)."""
        return [row.as_dict(wall_offset) for row in self.rows(now)]
