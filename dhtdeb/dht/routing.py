"""The routing table: kademlia's k-buckets with the admission rules a public DHT needs.

Owns: which contacts this node routes through. Trusts: only contacts that answered one of our
requests (the protocol calls `add_contact` for responders only, never for nodes merely mentioned in
a reply or for the claimed id of a request's sender).

Extends kademlia's `KBucket`/`RoutingTable` (subclasses): the bucket clock is injected instead of
`time.monotonic()`, one contact per IP address (per socket on loopback when allowed, for tests that
run hundreds of nodes on 127.0.0.1), a known id keeps its address (no hijack by a later claimant),
only contacts of the node's own address family, and a full bucket asks the protocol to probe its
least-recently-seen contact through a tracked task instead of an orphaned `ensure_future`.
"""

from __future__ import annotations

import heapq
import socket
from collections.abc import Callable

from kademlia.node import Node
from kademlia.routing import KBucket, RoutingTable

from dhtdeb.clock import Clock
from dhtdeb.dht.guards import source_key
from dhtdeb.dht.wire import family_of
from dhtdeb.errors import RemoteProtocolError


class DhtBucket(KBucket):  # type: ignore[misc]
    def __init__(self, lower: int, upper: int, ksize: int, clock: Clock) -> None:
        self._clock = clock
        super().__init__(lower, upper, ksize)
        # Buckets are halves of halves of the id space: every id in one shares the bits above
        # `free_bits`, so its XOR distance to a target lies in one aligned interval (see
        # `DhtRoutingTable.find_neighbors`). None for a range that is not such a half.
        width = upper - lower + 1
        aligned = width & (width - 1) == 0 and lower % width == 0
        self.free_bits: int | None = width - 1 if aligned else None

    def touch_last_updated(self) -> None:
        self.last_updated = self._clock.now()

    def split(self) -> tuple[DhtBucket, DhtBucket]:
        midpoint = (self.range[0] + self.range[1]) // 2
        one = DhtBucket(self.range[0], midpoint, self.ksize, self._clock)
        two = DhtBucket(midpoint + 1, self.range[1], self.ksize, self._clock)
        for node in [*self.nodes.values(), *self.replacement_nodes.values()]:
            (one if node.long_id <= midpoint else two).add_node(node)
        return one, two

    def contains(self, node_id: bytes) -> bool:
        return node_id in self.nodes or node_id in self.replacement_nodes


class DhtRoutingTable(RoutingTable):  # type: ignore[misc]
    def __init__(
        self,
        node: Node,
        ksize: int,
        clock: Clock,
        family: socket.AddressFamily,
        *,
        allow_loopback: bool,
        on_bucket_full: Callable[[Node], None],
    ) -> None:
        self._clock = clock
        self.family = family
        self._allow_loopback = allow_loopback
        self._on_bucket_full = on_bucket_full
        self._by_address: dict[str, bytes] = {}
        super().__init__(None, ksize, node)

    def flush(self) -> None:
        self.buckets = [DhtBucket(0, 2**160 - 1, self.ksize, self._clock)]
        self._by_address = {}

    def get_bucket_for(self, node: Node) -> int:
        for index, bucket in enumerate(self.buckets):
            if node.long_id <= bucket.range[1]:
                return index
        return len(self.buckets) - 1

    def lonely_buckets(self, age: float = 3600.0) -> list[DhtBucket]:
        cutoff = self._clock.now() - age
        return [b for b in self.buckets if b.last_updated < cutoff]

    def _owner(self, key: str) -> bytes | None:
        node_id = self._by_address.get(key)
        if node_id is None:
            return None
        if self.buckets[self.get_bucket_for(Node(node_id))].contains(node_id):
            return node_id
        del self._by_address[key]  # fell out of a replacement cache
        return None

    def find(self, node_id: bytes) -> Node | None:
        bucket = self.buckets[self.get_bucket_for(Node(node_id))]
        found: Node | None = bucket.nodes.get(node_id) or bucket.replacement_nodes.get(node_id)
        return found

    def admissible(self, node: Node) -> bool:
        """Would `node` be accepted (family, not us, address not taken by another id)?"""
        if node.id == self.node.id or not isinstance(node.port, int) or not 0 < node.port < 65536:
            return False
        try:
            if family_of(node.ip) != self.family:
                return False
        except RemoteProtocolError:
            return False
        owner = self._owner(source_key((node.ip, node.port), self._allow_loopback))
        if owner is not None and owner != node.id:
            return False
        known = self.find(node.id)
        return known is None or (known.ip, known.port) == (node.ip, node.port)

    def add_contact(self, node: Node) -> None:
        if not self.admissible(node):
            return
        key = source_key((node.ip, node.port), self._allow_loopback)
        index = self.get_bucket_for(node)
        bucket = self.buckets[index]
        if bucket.add_node(node):
            self._by_address[key] = node.id
            return
        if bucket.has_in_range(self.node) or bucket.depth() % 5 != 0:
            self.split_bucket(index)
            self.add_contact(node)
            return
        self._by_address[key] = node.id  # kept in the replacement cache
        self._on_bucket_full(bucket.head())

    def remove_contact(self, node: Node) -> None:
        known = self.find(node.id)
        if known is None or (known.ip, known.port) != (node.ip, node.port):
            return
        self.buckets[self.get_bucket_for(node)].remove_node(known)
        key = source_key((node.ip, node.port), self._allow_loopback)
        if self._by_address.get(key) == node.id:
            del self._by_address[key]

    def is_new_node(self, node: Node) -> bool:
        return self.find(node.id) is None

    def find_neighbors(
        self, node: Node, k: int | None = None, exclude: Node | None = None
    ) -> list[Node]:
        """The `k` contacts nearest `node` by XOR distance, nearest first, leaving out `node`'s
        own id and any contact at `exclude`'s address.

        Visits the buckets nearest first and stops once `k` contacts are found: the distances
        of the ids in one bucket fill an interval that no other bucket's overlaps, so the
        contacts of a bucket further away can never beat those already found. A get_peers
        request of 48 keys costs 48 of these; a scan of the whole table each was most of a
        node's time.
        """
        k = k or self.ksize
        target = node.long_id
        ranked: list[tuple[int, int]] = []
        for index, bucket in enumerate(self.buckets):
            if not bucket.nodes:
                continue
            free = bucket.free_bits
            if free is None:
                return self._scan_neighbors(node, k, exclude)
            ranked.append(((bucket.range[0] ^ target) & ~free, index))
        ranked.sort()
        found: list[Node] = []
        for _, index in ranked:
            for n in self.buckets[index].nodes.values():
                if n.id != node.id and (
                    exclude is None or n.ip != exclude.ip or n.port != exclude.port
                ):
                    found.append(n)
            if len(found) >= k:
                break
        found.sort(key=lambda n: n.long_id ^ target)
        return found[:k]

    def _scan_neighbors(self, node: Node, k: int, exclude: Node | None) -> list[Node]:
        candidates = (
            n
            for bucket in self.buckets
            for n in bucket.nodes.values()
            if n.id != node.id and (exclude is None or not n.same_home_as(exclude))
        )
        return heapq.nsmallest(k, candidates, key=lambda n: n.distance_to(node))

    def contacts(self) -> list[Node]:
        return [n for bucket in self.buckets for n in bucket.nodes.values()]

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self.buckets)
