"""Peer lists held for other nodes: key -> many (host, port), each entry with its own expiry and
the node id the peer announced with (so that a node finds itself in a list by its id).

Owns: what this node stores on behalf of the network (libtorrent's dht_storage, BEP 5 semantics).
Trusts: nothing; callers pass the address an announce came *from* (never one claimed in a message)
and only after its write token was checked.

This replaces kademlia's single-value `ForgetfulStorage` through kademlia's own extension point
(`IStorage`): `store[key] = (host, port)` adds a peer to the list instead of overwriting a value,
and `store[key]` returns the list. Bounded: at most `max_keys` keys and `max_peers_per_key` peers
per key; when full, new keys/peers are dropped (libtorrent's policy: a flood cannot evict honest
entries), while a peer already listed may refresh its expiry.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from kademlia.storage import IStorage

from dhtdeb.clock import Clock
from dhtdeb.dht.wire import Contact

Address = tuple[str, int]

DEFAULT_MAX_KEYS = 2000
DEFAULT_MAX_PEERS_PER_KEY = 500
DEFAULT_PEER_TTL = 45 * 60.0
_PURGE_EVERY = 5.0


class PeerStore(IStorage):  # type: ignore[misc]
    def __init__(
        self,
        clock: Clock,
        rng: random.Random,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        max_peers_per_key: int = DEFAULT_MAX_PEERS_PER_KEY,
        ttl: float = DEFAULT_PEER_TTL,
    ) -> None:
        self._clock = clock
        self._rng = rng
        self.max_keys = max_keys
        self.max_peers_per_key = max_peers_per_key
        self.ttl = ttl
        self._entries: dict[bytes, dict[Address, tuple[float, bytes]]] = {}
        # No entry of the key expires before this (a lower bound): a lookup of a popular key
        # need not scan its hundreds of peers for expired ones at every request.
        self._earliest: dict[bytes, float] = {}
        # A key's addresses in the order they were first listed (the dict's order), kept between
        # requests: a popular key's hundreds of peers are not copied out for every get_peers.
        self._order: dict[bytes, list[Address]] = {}
        self._last_purge = float("-inf")
        self.dropped = 0

    # -- the peer-list interface -------------------------------------------------------------
    def add(self, key: bytes, peer: Address, node_id: bytes = b"") -> bool:
        """Record `peer` (announcing as `node_id`) for `key`; False when dropped because a cap
        is reached."""
        now = self._clock.now()
        peers = self._entries.get(key)
        if peers is None:
            if len(self._entries) >= self.max_keys:
                self._purge_if_due(now)
            if len(self._entries) >= self.max_keys:
                self.dropped += 1
                return False
            peers = self._entries[key] = {}
            self._earliest[key] = now + self.ttl
        if peer not in peers:
            if len(peers) >= self.max_peers_per_key:
                self._expire_key(key, peers, now)
                if len(peers) >= self.max_peers_per_key:
                    self.dropped += 1
                    return False
            order = self._order.get(key)
            if order is not None:
                order.append(peer)
        peers[peer] = (now + self.ttl, node_id)
        return True

    def peers(self, key: bytes, limit: int) -> list[Address]:
        """A random subset of at most `limit` live peers for `key`."""
        return [(entry.host, entry.port) for entry in self.entries(key, limit)]

    def entries(self, key: bytes, limit: int) -> list[Contact]:
        """A random subset of at most `limit` live peers for `key`, with their node ids."""
        peers = self._entries.get(key)
        if not peers:
            return []
        self._expire_key(key, peers, self._clock.now())
        if key not in self._entries:
            return []
        order = self._order.get(key)
        if order is None:
            order = self._order[key] = list(peers)
        if len(order) <= limit:
            chosen = order.copy()
            self._rng.shuffle(chosen)
        else:
            chosen = self._rng.sample(order, limit)  # the addresses chosen, then their entries
        return [Contact(peers[address][1], *address) for address in chosen]

    def expire(self) -> None:
        now = self._clock.now()
        self._last_purge = now
        for key, peers in list(self._entries.items()):
            self._expire_key(key, peers, now)

    def key_count(self) -> int:
        return len(self._entries)

    def peer_count(self) -> int:
        return sum(len(p) for p in self._entries.values())

    def _expire_key(
        self, key: bytes, peers: dict[Address, tuple[float, bytes]], now: float
    ) -> None:
        if self._earliest.get(key, now) > now:
            return
        gone = [p for p, (expires, _) in peers.items() if expires <= now]
        for peer in gone:
            del peers[peer]
        if gone:
            self._order.pop(key, None)
        if peers:
            self._earliest[key] = min(expires for expires, _ in peers.values())
        else:
            self._entries.pop(key, None)
            self._earliest.pop(key, None)
            self._order.pop(key, None)

    def _purge_if_due(self, now: float) -> None:
        # a full store under flood must not pay a full scan per announce
        if now - self._last_purge >= _PURGE_EVERY:
            self.expire()

    # -- kademlia's IStorage -----------------------------------------------------------------
    def __setitem__(self, key: bytes, value: Address) -> None:
        self.add(key, value)

    def __getitem__(self, key: bytes) -> list[Address]:
        found = self.peers(key, self.max_peers_per_key)
        if not found:
            raise KeyError(key)
        return found

    def get(self, key: bytes, default: object = None) -> object:
        found = self.peers(key, self.max_peers_per_key)
        return found if found else default

    def iter_older_than(self, seconds_old: float) -> list[tuple[bytes, list[Address]]]:
        # Peer lists are kept alive by their announcers re-announcing, never republished by the
        # node that happens to store them (that would resurrect peers that left).
        return []

    def __iter__(self) -> Iterator[tuple[bytes, list[Address]]]:
        now = self._clock.now()
        for key, peers in list(self._entries.items()):
            live = [p for p, (expires, _) in peers.items() if expires > now]
            if live:
                yield key, live
