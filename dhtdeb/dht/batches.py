"""get_peers and announce_peer calls to one address, made in one turn of the event loop, sent in
one datagram.

Owns: the calls waiting for the end of the loop turn, and the split of a reply among them. apt
fetches hundreds of files at once, and each file means a lookup and, once stored, an announce; in
a fleet of a few machines every one of them reaches the same few nodes. So the calls to one
address that are made in the same turn travel in one request (up to `MAX_KEYS` keys; see
wire.py), once that address gave us a token (before, a request must be padded to earn its reply,
and one key is asked: protocol.py). A get_peers reply answers the keys in order, as many as it has
room for (replies.py); the keys left unanswered are asked again, in requests of as many keys as
the reply answered, side by side. The per-source rate limit charges a datagram 1 and each key
answered beyond the first a quarter more, so it still stops floods but no longer a fleet's
upgrade. Trusts: the protocol's verdict on a reply (its sender and message id).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from kademlia.node import Node

from dhtdeb.dht.wire import MAX_KEYS, Address, Reply

if TYPE_CHECKING:
    from dhtdeb.dht.protocol import DhtProtocol


@dataclass
class _Batch:
    """get_peers or announce_peer calls to one address waiting for the end of this loop turn."""

    node: Node
    token: bytes | None
    keys: list[bytes]
    waiters: list[asyncio.Future[Reply | None]]


class KeyBatches:
    def __init__(self, protocol: DhtProtocol) -> None:
        self._protocol = protocol
        self._batches: dict[tuple[str, Address], _Batch] = {}

    async def call(self, method: str, node: Node, key: bytes, token: bytes | None) -> Reply | None:
        """A get_peers (`token` None) or announce_peer call for one key: its own reply, or
        None (no reply, or the node is closing)."""
        return await self.waiter(method, node, key, token)

    def waiter(
        self, method: str, node: Node, key: bytes, token: bytes | None
    ) -> asyncio.Future[Reply | None]:
        """`call` as a future, resolved with what `call` returns or cancelled when the node
        closes; cancelling it gives up waiting, not the request."""
        waiter: asyncio.Future[Reply | None] = asyncio.get_running_loop().create_future()
        self._enqueue(method, node, key, token, waiter)
        return waiter

    def _enqueue(
        self,
        method: str,
        node: Node,
        key: bytes,
        token: bytes | None,
        waiter: asyncio.Future[Reply | None],
    ) -> None:
        if self._protocol.closing:
            waiter.set_result(None)
            return
        slot = (method, (node.ip, node.port))
        batch = self._batches.get(slot)
        if batch is None or key in batch.keys:
            if batch is not None:  # the same key twice: the first batch goes now
                self._flush(slot)
            batch = self._batches[slot] = _Batch(node, token, [], [])
            asyncio.get_running_loop().call_soon(self._flush, slot, batch)
        batch.keys.append(key)
        batch.waiters.append(waiter)
        if token is not None:
            batch.token = token
        if len(batch.keys) >= MAX_KEYS:
            self._flush(slot)

    def _flush(self, slot: tuple[str, Address], batch: _Batch | None = None) -> None:
        current = self._batches.get(slot)
        if current is None or (batch is not None and current is not batch):
            return  # already sent
        del self._batches[slot]
        self._start(slot[0], current)

    def _start(self, method: str, batch: _Batch) -> None:
        if self._protocol.closing:
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_result(None)
            return
        address = (batch.node.ip, batch.node.port)
        token = batch.token if method == "announce_peer" else None

        def then(reply: Reply | None) -> None:
            self._answered(method, batch, reply)

        def closed() -> None:
            for waiter in batch.waiters:
                waiter.cancel()

        self._protocol.request_then(address, method, b"".join(batch.keys), token, then, closed)

    def _answered(self, method: str, batch: _Batch, reply: Reply | None) -> None:
        reply = self._protocol.settle(batch.node, reply)
        if len(batch.keys) > 1:
            self._protocol.counters["batched_requests"] += 1
        if reply is None:
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_result(None)
            return
        if method == "announce_peer":
            for index, waiter in enumerate(batch.waiters):
                if not waiter.done():
                    waiter.set_result(replace(reply, ok=reply.stored_key(index)))
            return
        answered = len(reply.answers)
        rest: list[tuple[bytes, asyncio.Future[Reply | None]]] = []
        for index, (key, waiter) in enumerate(zip(batch.keys, batch.waiters, strict=True)):
            if waiter.done():
                continue
            if index < answered:
                waiter.set_result(reply.for_key(index))
            elif answered:  # the reply was full: ask again for the rest
                rest.append((key, waiter))
            else:
                waiter.set_result(None)
        # The rest goes in requests of as many keys as this reply had room for, side by side.
        for start in range(0, len(rest), answered or 1):
            chunk = rest[start : start + answered]
            self._start(
                method, _Batch(batch.node, None, [k for k, _ in chunk], [w for _, w in chunk])
            )

    def close(self) -> None:
        """The node closes: calls still waiting for their loop turn end (cancelled)."""
        for batch in self._batches.values():
            for waiter in batch.waiters:
                waiter.cancel()
        self._batches.clear()
