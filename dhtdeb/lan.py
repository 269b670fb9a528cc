"""LAN discovery: DHT nodes on one network segment find each other by UDP multicast.

Owns: one multicast socket (asyncio-dgram), a beacon sent at start, again when a newcomer's beacon
arrives (at most every ANSWER_EVERY seconds, so that machines switched on one after another all
learn of each other at once) and every few minutes with jitter, TTL 1 so that it never leaves the
segment. Trusts: nothing in a beacon beyond its shape; a
beacon only causes the DHT to *ping* the sender's address (so a forged beacon costs one ping, and
each address is acted on at most once per `REPEAT` seconds, from a bounded table).

A beacon is one line of ASCII: `dhtdeb-lan/1 <node id hex> <dht udp port>`; the host is the
beacon's source address, never a claim inside it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import socket
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

import asyncio_dgram

from dhtdeb.clock import Clock, MonotonicClock
from dhtdeb.errors import RemoteProtocolError
from dhtdeb.netaddr import HostPort

log = logging.getLogger("dhtdeb.lan")

GROUP = "239.192.77.98"  # organisation-local scope (RFC 2365)
PORT = 9979
INTERVAL = 300.0
REPEAT = 600.0
ANSWER_EVERY = 2.0
_MAX_KNOWN = 1024
_BEACON = re.compile(rb"dhtdeb-lan/1 ([0-9a-f]{40}) ([0-9]{1,5})\n?")

OnFound = Callable[[Sequence[HostPort]], Awaitable[None]]


def encode_beacon(node_id: bytes, port: int) -> bytes:
    return f"dhtdeb-lan/1 {node_id.hex()} {port}\n".encode("ascii")


def decode_beacon(data: bytes) -> tuple[bytes, int]:
    """(node id, DHT port) of a beacon, or RemoteProtocolError."""
    match = _BEACON.fullmatch(data)
    if match is None:
        raise RemoteProtocolError("not a dhtdeb LAN beacon")
    port = int(match.group(2))
    if not 0 < port < 65536:
        raise RemoteProtocolError("LAN beacon: bad port")
    return bytes.fromhex(match.group(1).decode("ascii")), port


class LanDiscovery:
    def __init__(
        self,
        node_id: bytes,
        dht_port: int,
        on_found: OnFound,
        *,
        group: str = GROUP,
        port: int = PORT,
        interface: str = "0.0.0.0",
        interval: float = INTERVAL,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._node_id = node_id
        self._dht_port = dht_port
        self._on_found = on_found
        self._group = group
        self.port = port
        self._interface = interface
        self._interval = interval
        self._clock = clock or MonotonicClock()
        self._rng = rng or random.Random()
        self._known: OrderedDict[tuple[str, int], float] = OrderedDict()
        self._last_answer = float("-inf")
        self._stream: asyncio_dgram.aio.DatagramServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[None]] = set()
        self.malformed = 0

    def _socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("", self.port))
            membership = struct.pack(
                "4s4s", socket.inet_aton(self._group), socket.inet_aton(self._interface)
            )
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            if self._interface != "0.0.0.0":
                sock.setsockopt(
                    socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(self._interface)
                )
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def start(self) -> bool:
        """Join the group; False (and a warning) when this host cannot do multicast."""
        try:
            sock = self._socket()
        except OSError as exc:
            log.warning("LAN discovery unavailable: %s", exc)
            return False
        self.port = sock.getsockname()[1]
        stream = await asyncio_dgram.from_socket(sock)
        assert isinstance(stream, asyncio_dgram.aio.DatagramServer)  # the socket is unconnected
        self._stream = stream
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._receive()), loop.create_task(self._beacons())]
        return True

    async def beacon(self) -> None:
        if self._stream is None:
            return
        try:
            beacon = encode_beacon(self._node_id, self._dht_port)
            await self._stream.send(beacon, (self._group, self.port))
        except OSError as exc:
            log.debug("LAN beacon not sent: %s", exc)

    async def _beacons(self) -> None:
        while True:
            await self.beacon()
            await asyncio.sleep(self._interval * (0.75 + 0.5 * self._rng.random()))

    async def _receive(self) -> None:
        assert self._stream is not None
        while True:
            try:
                data, source = await self._stream.recv()
            except asyncio_dgram.TransportClosed:
                return
            if isinstance(source, tuple):
                self.handle(data, (str(source[0]), int(source[1])))

    def handle(self, data: bytes, source: tuple[str, int]) -> None:
        try:
            node_id, port = decode_beacon(data)
        except RemoteProtocolError:
            self.malformed += 1
            return
        if node_id == self._node_id:
            return
        address = (source[0], port)
        now = self._clock.now()
        seen = self._known.get(address)
        if seen is not None and now - seen < REPEAT:
            return
        self._known.pop(address, None)
        self._known[address] = now
        while len(self._known) > _MAX_KNOWN:
            self._known.popitem(last=False)
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._found(HostPort(*address)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        # A newcomer has not heard our beacon (sent when we started): tell the segment again,
        # at most every ANSWER_EVERY seconds (to the group, never to a claimed address).
        if now - self._last_answer >= ANSWER_EVERY:
            self._last_answer = now
            answer = loop.create_task(self.beacon())
            self._pending.add(answer)
            answer.add_done_callback(self._pending.discard)

    async def _found(self, where: HostPort) -> None:
        try:
            await self._on_found([where])
        except Exception as exc:  # one line: a LAN neighbour must not take the node down
            log.warning("LAN discovery: joining %s failed: %r", where, exc)

    async def close(self) -> None:
        tasks = [*self._tasks, *self._pending]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._stream is not None:
            self._stream.close()
            self._stream = None
