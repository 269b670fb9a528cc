"""The simulated internet: where hosts are, how long a datagram takes, which ones are lost or
filtered by NAT, and how fast bytes flow between hosts and from the mirror.

Owns: host addresses, one-way latency, datagram loss, the NAT filter of hosts that accept no
inbound connection, and the bandwidth model (fair shares of links). Trusts: its seeded
`random.Random`; every decision is made in the order the virtual-time loop delivers events, so one
seed gives one history.

Latency: each host sits at a point of a unit square and has an access delay; one way from a to b
is access(a) + access(b) + distance * `span`. NAT: a NATed host receives a datagram only from an
address it sent one to within `nat_mapping` seconds (a home router's UDP mapping), and no TCP
connection at all. Bandwidth: a transfer crosses links (the sender's uplink or the mirror, the
receiver's downlink); its rate is the smallest equal share of its links, recomputed whenever a
transfer starts or ends on one of them.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dhtdeb.dht.transport import MemoryNetwork
from dhtdeb.dht.wire import Address

DHT_PORT = 9978  # every host of a fleet uses the default port, each under its own address


@dataclass(frozen=True, slots=True)
class HostPlace:
    x: float
    y: float
    access: float  # seconds of one-way delay to the backbone
    nat: bool


class Internet:
    """Hosts, latency, loss and NAT; builds the `MemoryNetwork` the DHT nodes bind to."""

    def __init__(
        self,
        rng: random.Random,
        *,
        loss: float,
        span: float = 0.06,
        nat_mapping: float = 60.0,
    ) -> None:
        self._rng = rng
        self.loss = loss
        self.span = span
        self.nat_mapping = nat_mapping
        self._places: dict[str, HostPlace] = {}
        # A NATed host's open mappings: destination address -> when it last sent there.
        self._mappings: dict[str, dict[Address, float]] = {}
        self.lost = 0
        self.filtered = 0
        self.datagrams = MemoryNetwork(route=self._route, latency=self._latency)

    def add_host(self, host: str, place: HostPlace) -> None:
        self._places[host] = place
        if place.nat:
            self._mappings[host] = {}

    def place(self, host: str) -> HostPlace:
        return self._places[host]

    def one_way(self, a: str, b: str) -> float:
        pa, pb = self._places[a], self._places[b]
        return pa.access + pb.access + math.hypot(pa.x - pb.x, pa.y - pb.y) * self.span

    def _latency(self, src: Address, dst: Address) -> float:
        return self.one_way(src[0], dst[0])

    def _route(self, src: Address, dst: Address, data: bytes) -> bool:
        now = asyncio.get_running_loop().time()
        sent = self._mappings.get(src[0])
        if sent is not None:
            sent[dst] = now
        received = self._mappings.get(dst[0])
        if received is not None:
            opened = received.get(src)
            if opened is None or now - opened > self.nat_mapping:
                self.filtered += 1
                return False
        if self._rng.random() < self.loss:
            self.lost += 1
            return False
        return True

    def forget_mappings(self, host: str) -> None:
        """A host that went offline comes back with a fresh router state."""
        mappings = self._mappings.get(host)
        if mappings is not None:
            mappings.clear()


class Link:
    """A capacity shared equally among the transfers crossing it (bytes per second)."""

    def __init__(self, capacity: float, per_transfer: float = math.inf) -> None:
        self.capacity = capacity
        self.per_transfer = per_transfer
        self.transfers: dict[Transfer, None] = {}

    def share(self, count: int) -> float:
        return min(self.per_transfer, self.capacity / max(1, count))

    def share_changes(self, count: int) -> bool:
        """Whether one transfer more than `count` changes the equal share (under the mirror's
        capacity, each of its first clients has its per-client rate, however many come)."""
        return self.share(count + 1) != self.share(count)


class TransferAborted(Exception):
    """A transfer stopped before its last byte (its sender or receiver went away)."""


class Transfer:
    """Bytes on their way across links; `done` resolves when the last byte has arrived."""

    def __init__(self, size: int, links: tuple[Link, ...], loop: asyncio.AbstractEventLoop) -> None:
        self.size = size
        self.links = links
        self.left = float(size)
        self.rate = 0.0
        self.since = loop.time()
        self.done: asyncio.Future[None] = loop.create_future()
        self.timer: asyncio.TimerHandle | None = None

    def moved(self, now: float) -> int:
        """Bytes that have arrived by `now`."""
        return self.size - math.ceil(max(0.0, self.left - self.rate * (now - self.since)))


class Bandwidth:
    """Starts, re-rates and ends transfers on the virtual-time loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    async def send(self, size: int, links: tuple[Link, ...], count: Callable[[int], None]) -> None:
        """Return once `size` bytes have crossed `links`; cancelling the caller stops the flow
        (the bytes moved so far are lost, as with a closed connection). `count` gets the bytes
        that moved, whatever the outcome."""
        transfer = self.start(size, links)
        try:
            await asyncio.shield(transfer.done)
        finally:
            count(transfer.moved(self._loop.time()))
            self.stop(transfer)

    def start(self, size: int, links: tuple[Link, ...]) -> Transfer:
        transfer = Transfer(size, links, self._loop)
        changed = []
        for link in links:
            if link.share_changes(len(link.transfers)):
                changed.append(link)
            link.transfers[transfer] = None
        if not changed or changed[0] is not links[0]:
            self._rate(transfer, self._loop.time())  # else rated among the first link's
        self._rerate(changed)
        return transfer

    def stop(self, transfer: Transfer, error: Exception | None = None) -> None:
        """End a transfer (finished, cancelled, or aborted with `error`)."""
        if transfer.timer is not None:
            transfer.timer.cancel()
            transfer.timer = None
        # The links it left whose equal share changed: only their transfers may change rate.
        gone = [
            link
            for link in transfer.links
            if link.transfers.pop(transfer, 0) is None and link.share_changes(len(link.transfers))
        ]
        if not transfer.done.done():
            if error is None:
                transfer.done.cancel()
            else:
                transfer.done.set_exception(error)
        if gone:
            self._rerate(gone)

    def _rerate(self, links: Iterable[Link]) -> None:
        """Re-rate the transfers crossing `links`, whose equal shares changed."""
        now = self._loop.time()
        seen: set[int] = set()
        for link in links:
            for transfer in link.transfers:
                if id(transfer) not in seen:
                    seen.add(id(transfer))
                    self._rate(transfer, now)

    def _rate(self, transfer: Transfer, now: float) -> None:
        """Give `transfer` the smallest share of its links, and its arrival timer."""
        rate = min(link.share(len(link.transfers)) for link in transfer.links)
        if rate == transfer.rate and transfer.timer is not None:
            return
        transfer.left = max(0.0, transfer.left - transfer.rate * (now - transfer.since))
        transfer.since = now
        transfer.rate = rate
        if transfer.timer is not None:
            transfer.timer.cancel()
        eta = transfer.left / rate if rate > 0 else math.inf
        transfer.timer = self._loop.call_at(now + eta, self._arrived, transfer)

    def _arrived(self, transfer: Transfer) -> None:
        transfer.timer = None
        transfer.left = 0.0
        if not transfer.done.done():
            transfer.done.set_result(None)
        self.stop(transfer)
