"""Where datagrams go: real UDP sockets, or an in-memory network for tests and simulation.

Owns: binding an endpoint and nothing else; the node code above is the same for both. The in-memory
network delivers through the event loop (`call_soon`, or `call_later` with a `latency` hook), can
drop or deliver datagrams through a `route` hook driven by a seeded `random.Random`, and never
touches a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable
from typing import Protocol

from dhtdeb.dht.protocol import DatagramTransport
from dhtdeb.dht.wire import Address
from dhtdeb.errors import ConfigError

# The DHT socket's receive buffer (the kernel caps it at net.core.rmem_max). With the default
# (~208 KiB, about 90 datagrams as the kernel counts them) a node that just fetched an upgrade
# and announced it dropped requests from a neighbour's burst: 41 of ~1900 timed out in an
# 8-machine fleet.
RECEIVE_BUFFER = 1 << 20


class DatagramNetwork(Protocol):
    async def bind(
        self, host: str, port: int, protocol: asyncio.DatagramProtocol
    ) -> tuple[DatagramTransport, Address]: ...


def family_for_listen(host: str) -> socket.AddressFamily:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"DHT listen address must be an IP address, not {host!r}") from None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


class UdpNetwork:
    """Real UDP. An IPv6 socket is IPV6_V6ONLY: a node speaks exactly one address family."""

    async def bind(
        self, host: str, port: int, protocol: asyncio.DatagramProtocol
    ) -> tuple[DatagramTransport, Address]:
        family = family_for_listen(host)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            with contextlib.suppress(OSError):  # a fleet's batches arrive in bursts
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot bind DHT socket on {host}:{port}: {exc}") from None
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: protocol, sock=sock)
        bound = sock.getsockname()
        return transport, (str(bound[0]), int(bound[1]))


RouteHook = Callable[[Address, Address, bytes], bool]
LatencyHook = Callable[[Address, Address], float]  # seconds from src to dst


class MemoryTransport:
    def __init__(self, network: MemoryNetwork, address: Address) -> None:
        self._network = network
        self.address = address
        self.closed = False

    def sendto(self, data: bytes, addr: Address) -> None:
        if not self.closed:
            self._network.deliver(self.address, (addr[0], addr[1]), bytes(data))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._network.unbind(self.address)


class MemoryNetwork:
    """Datagram delivery between in-process endpoints; `route(src, dst, data)` may drop, and
    `latency(src, dst)` delays (the simulation's virtual-time loop makes that cost nothing)."""

    def __init__(self, route: RouteHook | None = None, latency: LatencyHook | None = None) -> None:
        self._endpoints: dict[Address, asyncio.DatagramProtocol] = {}
        self._next_port = 10000
        self.route = route
        self.latency = latency
        self.delivered = 0
        self.dropped = 0

    async def bind(
        self, host: str, port: int, protocol: asyncio.DatagramProtocol
    ) -> tuple[DatagramTransport, Address]:
        family_for_listen(host)
        if port == 0:
            while (host, self._next_port) in self._endpoints:
                self._next_port += 1
            port = self._next_port
            self._next_port += 1
        address = (host, port)
        if address in self._endpoints:
            raise ConfigError(f"{host}:{port} is already bound in this memory network")
        self._endpoints[address] = protocol
        transport = MemoryTransport(self, address)
        protocol.connection_made(transport)  # type: ignore[arg-type]
        return transport, address

    def unbind(self, address: Address) -> None:
        self._endpoints.pop(address, None)

    def deliver(self, src: Address, dst: Address, data: bytes) -> None:
        if self.route is not None and not self.route(src, dst, data):
            self.dropped += 1
            return
        if dst not in self._endpoints:
            self.dropped += 1
            return
        self.delivered += 1
        loop = asyncio.get_running_loop()
        delay = 0.0 if self.latency is None else self.latency(src, dst)
        if delay > 0.0:
            loop.call_later(delay, self._arrive, src, dst, data)
        else:
            loop.call_soon(self._arrive, src, dst, data)

    def _arrive(self, src: Address, dst: Address, data: bytes) -> None:
        protocol = self._endpoints.get(dst)
        if protocol is not None:
            protocol.datagram_received(data, src)
