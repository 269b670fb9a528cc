"""`DhtRoutingTable.find_neighbors` (only the buckets near the target) gives exactly what a scan of
the whole table gives: the k nearest contacts by XOR distance, the asked id and the requester's
address left out."""

from __future__ import annotations

import heapq
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kademlia.node import Node

from dhtdeb.clock import ManualClock
from dhtdeb.dht.routing import DhtBucket, DhtRoutingTable


def _scan(table: DhtRoutingTable, node: Node, k: int, exclude: Node | None) -> list[Node]:
    """The definition: every contact of the table, the k smallest distances."""
    candidates = [
        n
        for n in table.contacts()
        if n.id != node.id and (exclude is None or (n.ip, n.port) != (exclude.ip, exclude.port))
    ]
    return heapq.nsmallest(k, candidates, key=lambda n: n.long_id ^ node.long_id)


def _near(base: bytes, bits: int, low: bytes) -> bytes:
    """An id sharing its first `bits` bits with `base` (then the bits of `low`)."""
    mask = (1 << (160 - bits)) - 1
    value = int.from_bytes(base, "big") & ~mask | int.from_bytes(low, "big") & mask
    return value.to_bytes(20, "big")


ids = st.binary(min_size=20, max_size=20)


@st.composite
def tables(draw: st.DrawFn) -> tuple[DhtRoutingTable, list[Node]]:
    own = draw(ids)
    table = DhtRoutingTable(
        Node(own),
        draw(st.sampled_from([2, 3, 8])),
        ManualClock(),
        socket.AF_INET,
        allow_loopback=False,
        on_bucket_full=lambda node: None,
    )
    added = []
    # ids near our own split the buckets deep (as in a real table); the rest fall anywhere
    for i in range(draw(st.integers(0, 120))):
        node_id = (
            _near(own, draw(st.integers(0, 40)), draw(ids)) if draw(st.booleans()) else draw(ids)
        )
        node = Node(node_id, f"10.0.{i >> 8}.{i & 255}", 1 + draw(st.integers(0, 2)))
        table.add_contact(node)
        added.append(node)
    for node in draw(st.lists(st.sampled_from(added), max_size=10)) if added else []:
        table.remove_contact(node)
    return table, added


@settings(max_examples=300, deadline=None)
@given(
    built=tables(),
    target=ids,
    near_bits=st.integers(0, 160),
    k=st.sampled_from([None, 1, 3, 8, 20]),
    exclude_known=st.booleans(),
    data=st.data(),
)
def test_nearest_contacts_match_a_full_scan(
    built: tuple[DhtRoutingTable, list[Node]],
    target: bytes,
    near_bits: int,
    k: int | None,
    exclude_known: bool,
    data: st.DataObject,
) -> None:
    table, added = built
    contacts = table.contacts()
    if contacts and data.draw(st.booleans()):
        # a target at or near a contact: its own id is left out, its neighbours come first
        target = _near(data.draw(st.sampled_from(contacts)).id, near_bits, target)
    exclude = None
    if exclude_known and added:
        home = data.draw(st.sampled_from(added))
        exclude = Node(data.draw(ids), home.ip, home.port)
    node = Node(target)
    # the bucket of an id, by bisect, is the one whose range holds it
    for probe in [node, *added]:
        bucket = table.buckets[table.get_bucket_for(probe)]
        assert bucket.range[0] <= probe.long_id <= bucket.range[1]
    assert all(table.find(n.id) is n for n in contacts)
    expected = _scan(table, node, k or table.ksize, exclude)
    assert table.find_neighbors(node, k=k, exclude=exclude) == expected


def test_a_bucket_is_a_half_of_a_half_of_the_id_space() -> None:
    clock = ManualClock()
    DhtBucket(2**159, 2**160 - 1, 8, clock)
    DhtBucket(3 * 2**100, 4 * 2**100 - 1, 8, clock)
    for lower, upper in [(0, 2**160 - 2), (1, 2), (2**100, 3 * 2**100 - 1)]:
        with pytest.raises(ValueError):
            DhtBucket(lower, upper, 8, clock)
