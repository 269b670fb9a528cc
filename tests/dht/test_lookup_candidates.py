"""A lookup's `Candidates` answer as kademlia's `NodeHeap` did, whatever is pushed, removed and
marked in whatever order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from kademlia.node import Node, NodeHeap

from dhtdeb.dht.lookup import Candidates

ids = st.binary(min_size=20, max_size=20)
# a few ids, so that pushes repeat them (at another address too) and removals hit
pool = st.lists(ids, min_size=1, max_size=30, unique=True)


@settings(max_examples=300, deadline=None)
@given(target=ids, ksize=st.integers(1, 10), known=pool, data=st.data())
def test_candidates_match_kademlias_node_heap(
    target: bytes, ksize: int, known: list[bytes], data: st.DataObject
) -> None:
    heap = NodeHeap(Node(target), ksize)
    candidates = Candidates(Node(target), ksize)
    some_ids = st.lists(st.sampled_from(known), max_size=8)
    for step in data.draw(st.lists(st.sampled_from(["push", "remove", "mark"]), max_size=40)):
        if step == "push":
            nodes = [
                Node(node_id, "10.0.0.1", data.draw(st.integers(1, 3)))
                for node_id in data.draw(some_ids)
            ]
            heap.push(nodes)
            candidates.push(nodes)
        elif step == "remove":
            gone = data.draw(some_ids)
            heap.remove(gone)
            candidates.remove(gone)
        else:
            node = Node(data.draw(st.sampled_from(known)))
            heap.mark_contacted(node)
            candidates.mark_contacted(node)
        homes = [(n.id, n.ip, n.port) for n in heap]
        assert [(n.id, n.ip, n.port) for n in candidates] == homes
        assert [n.id for n in candidates.get_uncontacted()] == [
            n.id for n in heap.get_uncontacted()
        ]
        assert len(candidates) == len(heap)
        assert candidates.contacted == heap.contacted
