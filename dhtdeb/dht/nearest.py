"""The nodes nearest a key, as its last converged lookup found them.

Owns: for each recently looked-up key, the responders nearest it and when they answered. Trusts:
only what `Lookup` reports as converged (every one of the k nearest live candidates answered);
nothing here is ever taken from a single reply.

Why: a download looks its file up and, seconds to minutes later, announces it (when it starts,
when the file is stored). Both need the same k nodes. BEP 5 clients announce straight to the
nodes of the get_peers lookup with the tokens those replies carried; so does `DhtServer` while
the tokens are fresh (the protocol keeps them per address, `remote_token_max_age`). Past that, the
remembered nodes still seed the next lookup of the key, which then ends after asking them
instead of walking the network again (a re-announce, a download's repeated lookups).

Bounded: the least recently remembered key goes first beyond `capacity`, and an entry older
than `max_age` is not recalled.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from kademlia.node import Node


class NearestMemory:
    def __init__(self, capacity: int, max_age: float) -> None:
        if capacity < 1 or max_age <= 0:
            raise ValueError("NearestMemory needs a capacity of one key or more and a max_age > 0")
        self._capacity = capacity
        self._max_age = max_age
        self._entries: OrderedDict[bytes, tuple[float, tuple[Node, ...]]] = OrderedDict()

    def remember(self, key: bytes, nodes: Sequence[Node], now: float) -> None:
        """The nearest responders of a converged lookup for `key`, nearest first."""
        if not nodes:
            return
        self._entries.pop(key, None)
        self._entries[key] = (now, tuple(nodes))
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def recall(self, key: bytes, now: float, max_age: float | None = None) -> tuple[Node, ...]:
        """The nodes remembered for `key` within `max_age` (default: the memory's), or none."""
        entry = self._entries.get(key)
        if entry is None:
            return ()
        at, nodes = entry
        if now - at > self._max_age:
            del self._entries[key]
            return ()
        if max_age is not None and now - at > max_age:
            return ()
        return nodes

    def __len__(self) -> int:
        return len(self._entries)
