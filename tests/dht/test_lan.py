"""LAN discovery: beacon format, and two listeners finding each other over loopback multicast."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from dhtdeb.errors import RemoteProtocolError
from dhtdeb.lan import LanDiscovery, decode_beacon, encode_beacon
from dhtdeb.netaddr import HostPort


def test_beacon_round_trip_and_rejects() -> None:
    assert decode_beacon(encode_beacon(b"\x01" * 20, 9978)) == (b"\x01" * 20, 9978)
    for bad in [b"", b"dhtdeb-lan/1 xx 1", b"dhtdeb-lan/1 " + b"0" * 40 + b" 0", b"\xff" * 80]:
        with pytest.raises(RemoteProtocolError):
            decode_beacon(bad)


async def test_two_nodes_find_each_other_by_loopback_multicast() -> None:
    found: asyncio.Queue[HostPort] = asyncio.Queue()

    async def on_found(addrs: Sequence[HostPort]) -> None:
        for addr in addrs:
            found.put_nowait(addr)

    first = LanDiscovery(b"\x01" * 20, 4001, on_found, port=0, interface="127.0.0.1")
    if not await first.start():
        pytest.skip("no multicast on loopback here")
    second = LanDiscovery(b"\x02" * 20, 4002, on_found, port=first.port, interface="127.0.0.1")
    try:
        assert await second.start()
        await second.beacon()
        try:
            async with asyncio.timeout(5):
                where = await found.get()
        except TimeoutError:
            pytest.skip("multicast on loopback is not delivered here")
        assert where.port in (4001, 4002) and where.host.startswith("127.")
    finally:
        await first.close()
        await second.close()
