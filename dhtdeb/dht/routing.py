"""The routing table: kademlia's k-buckets with the admission rules a public DHT needs.

Owns: which contacts this node routes through. Trusts: only contacts that answered one of our
requests (the protocol calls `add_contact` for responders only, never for nodes merely mentioned in
a reply or for the claimed id of a request's sender).

Extends kademlia's `KBucket`/`RoutingTable` (subclasses): the bucket clock is injected instead of
`time.monotonic()`, one contact per IP address (per socket on loopback when allowed, for tests that
run hundreds of nodes on 127.0.0.1), a known id keeps its address (no hijack by a later claimant),
only contacts of the node's own address family, and a full bucket asks the protocol to probe its
least-recently-seen contact through a tracked task instead of an orphaned `ensure_future`.

A contact heard from within `good_for` seconds (BEP 5's "good" node: 15 minutes) is not pinged
when a newcomer finds its bucket full: the newcomer waits in the replacement cache. Pinging the
head on every full-bucket event cost a third of all requests in a 1,000-node fleet, where every
request from a cached contact meets a full bucket.
"""

from __future__ import annotations

import bisect
import functools
import math
import operator
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
        width = upper - lower + 1
        if width & (width - 1) or lower % width:
            # find_neighbors counts on it: ids of a bucket share every bit above its width
            raise ValueError("a bucket is a half of a half of the id space")
        self.seen: dict[bytes, float] = {}  # contact id -> when it last answered or asked

    def touch_last_updated(self) -> None:
        self.last_updated = self._clock.now()

    def add_node(self, node: Node) -> bool:
        added: bool = super().add_node(node)
        self.seen[node.id] = self._clock.now()
        if len(self.seen) > len(self.nodes) + len(self.replacement_nodes):
            # the replacement cache overflowed: forget whom it dropped
            self.seen = {
                i: t for i, t in self.seen.items() if i in self.nodes or i in self.replacement_nodes
            }
        return added

    def remove_node(self, node: Node) -> None:
        super().remove_node(node)
        self.seen.pop(node.id, None)

    def head_questionable(self, good_for: float) -> bool:
        """Whether the least recently seen contact is silent for `good_for` seconds (worth a
        ping before a newcomer is turned away)."""
        head: Node = self.head()
        return self.seen.get(head.id, -math.inf) <= self._clock.now() - good_for

    def depth(self) -> int:
        """The bits every contact's id shares (kademlia's, without the bit strings)."""
        ids = [n.long_id for n in self.nodes.values()]
        if not ids:
            return 0
        differs = functools.reduce(operator.or_, (i ^ ids[0] for i in ids), 0)
        return 160 - differs.bit_length()

    def split(self) -> tuple[DhtBucket, DhtBucket]:
        midpoint = (self.range[0] + self.range[1]) // 2
        one = DhtBucket(self.range[0], midpoint, self.ksize, self._clock)
        two = DhtBucket(midpoint + 1, self.range[1], self.ksize, self._clock)
        for node in [*self.nodes.values(), *self.replacement_nodes.values()]:
            half = one if node.long_id <= midpoint else two
            half.add_node(node)
            half.seen[node.id] = self.seen.get(node.id, -math.inf)
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
        good_for: float = 15 * 60.0,
    ) -> None:
        self._clock = clock
        self._good_for = good_for
        self.family = family
        self._allow_loopback = allow_loopback
        self._on_bucket_full = on_bucket_full
        self._by_address: dict[str, bytes] = {}
        super().__init__(None, ksize, node)

    def flush(self) -> None:
        self.buckets = [DhtBucket(0, 2**160 - 1, self.ksize, self._clock)]
        self._lowers = [0]  # each bucket's first id, in order (for bisect)
        self._by_address = {}

    def split_bucket(self, index: int) -> None:
        super().split_bucket(index)
        self._lowers.insert(index + 1, self.buckets[index + 1].range[0])

    def get_bucket_for(self, node: Node) -> int:
        return bisect.bisect_right(self._lowers, node.long_id) - 1

    def _bucket_of(self, node_id: bytes) -> DhtBucket:
        bucket: DhtBucket = self.buckets[
            bisect.bisect_right(self._lowers, int.from_bytes(node_id, "big")) - 1
        ]
        return bucket

    def lonely_buckets(self, age: float = 3600.0) -> list[DhtBucket]:
        cutoff = self._clock.now() - age
        return [b for b in self.buckets if b.last_updated < cutoff]

    def _owner(self, key: str) -> bytes | None:
        node_id = self._by_address.get(key)
        if node_id is None:
            return None
        if self._bucket_of(node_id).contains(node_id):
            return node_id
        del self._by_address[key]  # fell out of a replacement cache
        return None

    def find(self, node_id: bytes) -> Node | None:
        bucket = self._bucket_of(node_id)
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
        if self._splits(bucket):
            self.split_bucket(index)
            self.add_contact(node)
            return
        self._by_address[key] = node.id  # kept in the replacement cache
        if bucket.head_questionable(self._good_for):
            self._on_bucket_full(bucket.head())

    def _splits(self, bucket: DhtBucket) -> bool:
        return bool(bucket.has_in_range(self.node)) or bucket.depth() % 5 != 0

    def has_room(self, node: Node) -> bool:
        """Whether `node` could join the table itself rather than wait in a replacement cache
        (its bucket has room, would split, or has a questionable contact to ping)."""
        bucket: DhtBucket = self.buckets[self.get_bucket_for(node)]
        return (
            len(bucket) < bucket.ksize
            or self._splits(bucket)
            or bucket.head_questionable(self._good_for)
        )

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

        Looks only in the buckets near the target: the ids that share the target's first n bits
        are all nearer to it than any other id, and they are the ids of a run of neighbouring
        buckets (a bucket is a half of a half of the id space). So the run starts at the bucket
        that holds the target and widens, one shared bit less at a time, until it holds `k`
        contacts. A get_peers request of 48 keys costs 48 of these; a scan of the whole table
        each was most of a node's time.
        """
        k = k or self.ksize
        target = node.long_id
        buckets, lowers = self.buckets, self._lowers
        first = last = bisect.bisect_right(lowers, target) - 1  # the run is [first, last]
        found: list[Node] = []
        for index in range(len(buckets)):  # at most this many widenings
            if index:
                # widen to the next bucket either side, and whatever else shares as many bits
                left = (lowers[first - 1] ^ target).bit_length() if first else 161
                right = (lowers[last + 1] ^ target).bit_length() if last + 1 < len(lowers) else 161
                bits = min(left, right)
                if bits > 160:
                    break
                new = []
                while first and (lowers[first - 1] ^ target).bit_length() <= bits:
                    first -= 1
                    new.append(first)
                while last + 1 < len(lowers) and (lowers[last + 1] ^ target).bit_length() <= bits:
                    last += 1
                    new.append(last)
            else:
                new = [first]
            for at in new:
                for n in buckets[at].nodes.values():
                    if n.id != node.id and (
                        exclude is None or n.ip != exclude.ip or n.port != exclude.port
                    ):
                        found.append(n)
            if len(found) >= k:
                break
        found.sort(key=lambda n: n.long_id ^ target)
        return found[:k]

    def contacts(self) -> list[Node]:
        return [n for bucket in self.buckets for n in bucket.nodes.values()]

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self.buckets)
