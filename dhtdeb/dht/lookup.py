"""Iterative lookups that do not wait for the slowest node.

Owns: one traversal towards a 160-bit target (find_node or get_peers). Trusts: nothing in replies
beyond their shape; contacts found in replies are only *asked*, never added to the routing table
(the protocol adds a node only when it answers).

Extends kademlia's `SpiderCrawl` but replaces its `NodeHeap` (which scanned its whole heap for
every membership test and every look at the k nearest, several times per reply) with `Candidates`,
and replaces `_find`: stock kademlia sends alpha requests, then `gather`s them, so each round lasts
as long as its slowest (or dead: 5 s) node, and `ValueSpiderCrawl` keeps the majority value. Here
up to alpha requests are in flight; a request older than `slow_after` stops holding a slot (another
branch opens, as libtorrent does), peer lists from every responder are merged, and the lookup ends
as soon as enough peers are known, the k nearest live nodes have answered, or the deadline passes.
Peers are also told as they come (`on_peers`): a caller that needs one holder need not wait for
the lookup to converge (on the internet that is a few round trips after the first holder).

Sybils: nodes that chose ids near a key are asked first and may answer with long lists of
non-peers (tests/adversarial/test_dht_sybil.py). So one responder's list counts towards "enough"
for at most `enough_peers / k` (rounded up) peers: fewer than k Sybils cannot end a lookup before
the honest nodes among the k nearest have answered. And the peers returned are at most
`enough_peers`, taken in turn from each responder's list, so no list crowds out the others.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from kademlia.crawling import SpiderCrawl
from kademlia.node import Node

from dhtdeb.dht.wire import Address, Contact, Reply


@dataclass
class LookupResult:
    peers: list[Contact] = field(default_factory=list)  # with the ids they announced with
    closest: list[tuple[Node, bytes | None]] = field(
        default_factory=list
    )  # responders, nearest first
    queried: int = 0
    answered: int = 0
    # Ended because the k nearest live candidates had answered: `closest` are the nearest nodes
    # the network knows of (not cut by the deadline, nor by enough peers found early).
    converged: bool = False


class Candidates:
    """The nodes a lookup knows of, ordered by distance to the target; the k nearest are the ones
    it works on. Same answers as kademlia's `NodeHeap`: a node is known once per id (the first
    address heard wins), `contacted` remembers ids even after they are removed."""

    def __init__(self, target: Node, ksize: int) -> None:
        self._target = target.long_id
        self._ksize = ksize
        self._order: list[tuple[int, bytes]] = []  # (distance, id), nearest first
        self._nodes: dict[bytes, Node] = {}
        self.contacted: set[bytes] = set()

    def push(self, nodes: Iterable[Node]) -> None:
        for node in nodes:
            if node.id not in self._nodes:
                self._nodes[node.id] = node
                bisect.insort(self._order, (node.long_id ^ self._target, node.id))

    def remove(self, node_ids: Iterable[bytes]) -> None:
        for node_id in node_ids:
            node = self._nodes.pop(node_id, None)
            if node is not None:
                self._order.remove((node.long_id ^ self._target, node_id))

    def mark_contacted(self, node: Node) -> None:
        self.contacted.add(node.id)

    def get_uncontacted(self) -> list[Node]:
        """The k nearest that were not asked yet, nearest first."""
        return [n for n in self if n.id not in self.contacted]

    def __iter__(self) -> Iterator[Node]:
        """The k nearest, nearest first."""
        return (self._nodes[node_id] for _, node_id in self._order[: self._ksize])

    def __len__(self) -> int:
        return min(len(self._order), self._ksize)


@dataclass(frozen=True)
class _Answer:
    node: Node
    reply: Reply | None


@dataclass(frozen=True)
class _Slow:
    node_id: bytes


class Lookup(SpiderCrawl):  # type: ignore[misc]
    def __init__(
        self,
        protocol: object,
        target: Node,
        seeds: list[Node],
        *,
        ksize: int,
        alpha: int,
        slow_after: float,
        get_peers: bool,
        enough_peers: int | None = None,
        on_peers: Callable[[list[Contact]], None] | None = None,
    ) -> None:
        super().__init__(protocol, target, [], ksize, alpha)
        self.nearest = Candidates(target, ksize)
        self.nearest.push(seeds)
        self._on_peers = on_peers
        self._slow_after = slow_after
        self._get_peers = get_peers
        self._enough_peers = enough_peers
        self._result = LookupResult()
        self._seen_peers: set[Address] = set()
        self._peers_from: list[list[Contact]] = []  # per responder, in the order they answered
        self._counted = 0  # peers towards enough_peers, at most _share per responder
        self._share = -(-enough_peers // ksize) if enough_peers else 0
        self._answered: dict[bytes, tuple[Node, bytes | None]] = {}
        self._asked_addresses: set[Address] = set()
        # Each request's answer to come: a get_peers call is a future of the node's batches
        # (no task per request), a find_node call a task.
        self._in_flight: dict[bytes, asyncio.Future[Reply | None]] = {}
        # Each request's "slow" timer, cancelled when its answer comes: a lookup outlives most
        # of them, and every one that fired woke the lookup for nothing.
        self._slow_timers: dict[bytes, asyncio.TimerHandle] = {}
        self._slow: set[bytes] = set()
        self._events: asyncio.Queue[_Answer | _Slow] = asyncio.Queue()

    async def find(self, deadline: float = 10.0) -> LookupResult:
        loop = asyncio.get_running_loop()
        try:
            # One deadline for the whole lookup (a timeout per awaited answer cost a timer each).
            async with asyncio.timeout_at(loop.time() + deadline):
                while not self._done():
                    self._launch()
                    if not self._in_flight and not self.nearest.get_uncontacted():
                        break
                    if self._done():
                        break
                    self._handle(await self._events.get())
        except TimeoutError:
            pass
        finally:
            for timer in self._slow_timers.values():
                timer.cancel()
            for ask in self._in_flight.values():
                ask.cancel()
            tasks = [ask for ask in self._in_flight.values() if isinstance(ask, asyncio.Task)]
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        self._result.converged = bool(self._answered) and self._settled()
        self._result.peers = self._merged()
        self._result.closest = sorted(
            self._answered.values(), key=lambda pair: pair[0].distance_to(self.node)
        )[: self.ksize]
        return self._result

    def _merged(self) -> list[Contact]:
        """The responders' lists taken in turn, one peer each, each address once, up to
        enough_peers."""
        limit = self._enough_peers if self._enough_peers is not None else None
        merged: list[Contact] = []
        taken: set[Address] = set()
        for rank in range(max((len(peers) for peers in self._peers_from), default=0)):
            for peers in self._peers_from:
                if rank >= len(peers) or (peers[rank].host, peers[rank].port) in taken:
                    continue
                taken.add((peers[rank].host, peers[rank].port))
                merged.append(peers[rank])
                if limit is not None and len(merged) >= limit:
                    return merged
        return merged

    def _active(self) -> int:
        return sum(1 for node_id in self._in_flight if node_id not in self._slow)

    def _launch(self) -> None:
        loop = asyncio.get_running_loop()
        for node in self.nearest.get_uncontacted():
            if self._active() >= self.alpha:
                return
            self.nearest.mark_contacted(node)
            address = (node.ip, node.port)
            if address in self._asked_addresses or self.protocol.recently_silent(address):
                self.nearest.remove([node.id])  # one question per address; not the dead again
                continue
            self._asked_addresses.add(address)
            self._result.queried += 1
            if self._get_peers:
                ask = self.protocol.get_peers_soon(node, self.node.id)
            else:
                ask = loop.create_task(self.protocol.call_find_node(node, self.node))
            self._in_flight[node.id] = ask
            ask.add_done_callback(functools.partial(self._answered_by, node))
            self._slow_timers[node.id] = loop.call_later(
                self._slow_after, self._events.put_nowait, _Slow(node.id)
            )

    def _answered_by(self, node: Node, ask: asyncio.Future[Reply | None]) -> None:
        if not ask.cancelled() and ask.exception() is None:
            self._events.put_nowait(_Answer(node, ask.result()))

    def _handle(self, event: _Answer | _Slow) -> None:
        if isinstance(event, _Slow):
            if event.node_id in self._in_flight:
                self._slow.add(event.node_id)
            return
        node_id = event.node.id
        self._in_flight.pop(node_id, None)
        self._slow.discard(node_id)
        timer = self._slow_timers.pop(node_id, None)
        if timer is not None:
            timer.cancel()
        reply = event.reply
        if reply is None:
            self.nearest.remove([node_id])
            return
        self._result.answered += 1
        self._answered[node_id] = (event.node, reply.token)
        own = self.protocol.source_node.id
        # Our own entries go before the de-duplication by address: an entry that names another
        # node's address with our id must not hide that node's own entry.
        peers = [peer for peer in reply.peers if peer.node_id != own]
        fresh_peers: list[Contact] = []
        for peer in peers:
            if (peer.host, peer.port) not in self._seen_peers:
                self._seen_peers.add((peer.host, peer.port))
                fresh_peers.append(peer)
        new_peers = len(fresh_peers)
        if fresh_peers and self._on_peers is not None:
            self._on_peers(fresh_peers)
        if peers:
            # Whole, not only its fresh entries: a holder deep in a Sybil's long list must still
            # come in the first round from an honest responder that names it first (_merged).
            self._peers_from.append(peers)
            self._counted += min(new_peers, self._share or new_peers)
        fresh = [
            Node(c.node_id, c.host, c.port)
            for c in reply.nodes
            if c.node_id != own
            and c.node_id not in self.nearest.contacted
            and (c.host, c.port) not in self._asked_addresses
        ]
        self.nearest.push(fresh)

    def _done(self) -> bool:
        if self._enough_peers is not None and self._counted >= self._enough_peers:
            return True
        return self._settled()

    def _settled(self) -> bool:
        # Done when every one of the k nearest live candidates has answered, or is late enough
        # to be presumed dead, and nothing nearer is still waiting to be asked.
        # A get_peers lookup that found nobody yet still waits for its late requests (up to the
        # RPC timeout): returning empty-handed early would send the caller to the mirror.
        wait_for_late = self._get_peers and not self._peers_from
        for node in self.nearest:
            if node.id in self._answered:
                continue
            if node.id in self._in_flight and node.id in self._slow and not wait_for_late:
                continue
            return False
        return True
