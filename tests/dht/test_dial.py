"""Dial-back tests (dht/dial.py): a node behind NAT learns it within seconds of joining, before it
announces anything; a reachable one learns that it is; the datagrams of a test parse strictly and
cannot aim a node at a victim."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path

import pytest
import umsgpack

from dhtdeb.clock import ManualClock
from dhtdeb.dht import DhtConfig, DhtNode, MemoryNetwork, open_dht
from dhtdeb.dht.dial import DIAL_SPACING
from dhtdeb.dht.reachability import NAT_WINDOW, Reachability
from dhtdeb.dht.wire import Address, Request, decode_datagram, encode_request, pack_address
from dhtdeb.errors import RemoteProtocolError
from dhtdeb.netaddr import HostPort

from .swarm import FLEET_PORT, GUARD, fleet, sha, until_routed


class HomeRouter:
    """The NAT in front of some hosts: a datagram reaches one of them only from an address it
    sent one to (a home router's UDP mapping; the mappings never expire in these tests)."""

    def __init__(self, behind: set[str]) -> None:
        self.behind = behind
        self.mappings: dict[str, set[Address]] = {host: set() for host in behind}

    def route(self, src: Address, dst: Address, data: bytes) -> bool:
        if src[0] in self.mappings:
            self.mappings[src[0]].add(dst)
        opened = self.mappings.get(dst[0])
        return opened is None or src in opened


async def _join(
    tmp: Path, network: MemoryNetwork, host: str, seed: int, *, bootstrap: bool = True
) -> DhtNode:
    return await open_dht(
        DhtConfig(
            HostPort(host, FLEET_PORT),
            tmp / host,
            bootstrap=(HostPort("10.9.0.1", FLEET_PORT),) if bootstrap else (),
            lan=False,
            allow_loopback_peers=False,
        ),
        rng=random.Random(seed),
        network=network,
        maintenance=False,
    )


@pytest.mark.parametrize("nat", [True, False], ids=["behind-nat", "reachable"])
async def test_a_node_learns_whether_it_is_reachable_before_it_announces(
    tmp_path: Path, seed: int, nat: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """60 machines on the internet; one more joins, behind a home router or not, and queues a
    file it holds at once (the store announced on start). Behind NAT its first test says so,
    and the file is withheld: nobody finds it there. Reachable, the test says that, and the
    file is found."""
    router = HomeRouter({"10.9.1.1"} if nat else set())
    network = MemoryNetwork(route=router.route)
    nodes = await fleet(tmp_path, 60, network, seed)
    newcomer = await _join(tmp_path, network, "10.9.1.1", seed + 1)
    try:
        newcomer.announce_later(sha("hello_2.10-3_amd64.deb"))
        async with asyncio.timeout(GUARD):
            await newcomer.announces_done()
        counters = newcomer.counters()
        assert counters.get("dial_tests_unreachable", 0) == int(nat)
        assert counters.get("dial_tests_reachable", 0) == int(not nat)
        assert counters.get("announces_withheld", 0) == int(nat)
        told = [r for r in caplog.records if "a reachability test found" in r.getMessage()]
        assert len(told) == int(nat)  # the admin is told once, with what to do
        found = await nodes[7].find_peers(sha("hello_2.10-3_amd64.deb"), GUARD)
        assert [p.node for p in found] == ([] if nat else [newcomer.engine.node.id])
    finally:
        await asyncio.gather(*(n.close() for n in [*nodes, newcomer]))


async def test_a_small_fleet_cannot_tell_and_announces_as_before(tmp_path: Path, seed: int) -> None:
    """Five machines that have all written to each other: no dialer can prove anything, the
    test is inconclusive, and announces go out."""
    nodes = await fleet(tmp_path, 5, MemoryNetwork(), seed)
    try:
        last = nodes[-1]
        assert await last.engine.protocol.dials.test() is None
        assert not last.engine.protocol.looks_unreachable()
        await last.announce(sha("a.deb"))
        assert last.statistics().announced == 1
    finally:
        await asyncio.gather(*(n.close() for n in nodes))


async def test_a_dialer_pings_an_address_once_a_minute(tmp_path: Path, seed: int) -> None:
    """Anyone may ask a node to dial; asking again and again for one address (a victim's) gets
    one ping a minute."""
    clock = ManualClock()
    sent: list[tuple[Address, Address]] = []

    def route(src: Address, dst: Address, data: bytes) -> bool:
        sent.append((src, dst))
        return True

    network = MemoryNetwork(route=route)
    nodes = await fleet(tmp_path, 3, network, seed, clock)
    try:
        dialer, asker = nodes[1], nodes[2]
        victim = ("10.66.0.1", 4242)
        target = pack_address(*victim, socket.AF_INET)
        contact = (dialer.address.host, dialer.address.port)
        stranger = await _join(tmp_path, network, "10.9.5.5", seed + 9, bootstrap=False)
        unproven = await stranger.engine.protocol.request(contact, "dial", target, b"x" * 8)
        await stranger.close()
        assert unproven is not None and not unproven.ok  # neither its token nor its contact
        token = asker.engine.protocol.remote_token(contact)
        replies = []
        for _ in range(5):
            replies.append(await asker.engine.protocol.request(contact, "dial", target, token))
        clock.advance(61.0)
        replies.append(await asker.engine.protocol.request(contact, "dial", target, token))
        assert [r is not None and r.ok for r in replies] == [True, False, False, False, False, True]
        loopback = pack_address("127.0.0.1", 4242, socket.AF_INET)
        refused = await asker.engine.protocol.request(contact, "dial", loopback, token)
        assert refused is not None and not refused.ok  # not aimed at the dialer's own host
        pings = [1 for src, dst in sent if dst == victim]
        assert len(pings) == 2
    finally:
        await asyncio.gather(*(n.close() for n in nodes))


async def test_a_helper_relays_only_for_an_address_that_holds_its_token(
    tmp_path: Path, seed: int
) -> None:
    clock = ManualClock()
    nodes = await fleet(tmp_path, 4, MemoryNetwork(), seed, clock)
    try:
        helper, asker = nodes[1], nodes[2]
        contact = (helper.address.host, helper.address.port)
        clock.advance(DIAL_SPACING)  # the dials of the nodes' own tests on joining are past
        forged = await asker.engine.protocol.request(contact, "dial_back", b"", b"x" * 8)
        assert forged is not None and not forged.ok and not forged.nodes
        token = asker.engine.protocol.remote_token(contact)
        assert token is not None
        reply = await asker.engine.protocol.request(contact, "dial_back", b"", token, patience=3)
        assert reply is not None and reply.ok
        # the helper's other contacts, up to DIALERS (a fleet of 4: the other two)
        assert sorted(c.host for c in reply.nodes) == sorted(
            n.address.host for n in nodes if n not in (helper, asker)
        )
    finally:
        await asyncio.gather(*(n.close() for n in nodes))


def test_dial_datagrams_parse_strictly() -> None:
    node = b"n" * 20
    dial = encode_request(b"m" * 20, "dial", node, pack_address("10.1.2.3", 9978, socket.AF_INET))
    request = decode_datagram(dial, socket.AF_INET)
    assert isinstance(request, Request) and request.dial_to == ("10.1.2.3", 9978)
    v6 = pack_address("2001:db8::1", 9978, socket.AF_INET6)
    request = decode_datagram(encode_request(b"m" * 20, "dial", node, v6), socket.AF_INET6)
    assert isinstance(request, Request) and request.dial_to == ("2001:db8::1", 9978)
    for bad in (
        encode_request(b"m" * 20, "dial", node, v6),  # an IPv6 address on an IPv4 socket
        encode_request(b"m" * 20, "dial", node, b"\x0a\x01\x02\x03\x00\x00"),  # port 0
        encode_request(b"m" * 20, "dial", node, b""),
        encode_request(b"m" * 20, "dial_back", node, b"", None),  # no token
    ):
        with pytest.raises(RemoteProtocolError):
            decode_datagram(bad, socket.AF_INET)


def test_reachability_verdict_from_dial_tests() -> None:
    seen = Reachability()
    a, b = ("10.0.0.1", 9978), ("10.0.0.2", 9978)
    seen.sent(a, 100.0)
    assert not seen.dial_expected(a, 150.0)  # our own router lets a's ping in: proves nothing
    assert seen.dial_expected(a, 100.0 + NAT_WINDOW + 1)
    assert seen.dial_expected(b, 300.0)
    seen.dial_test_ended(302.0, heard=False)
    assert seen.judge(302.0, contacts=3)  # a failed test decides even in a small network
    assert seen.request_from(b, 400.0)  # a stranger later: reachable after all
    assert not seen.judge(400.0, contacts=3)
    seen.sent(b, 500.0)
    assert not seen.request_from(b, 510.0)  # an answer to our own request proves nothing
    c = ("10.0.0.3", 9978)
    assert seen.dial_expected(c, 600.0)
    seen.sent(c, 601.0)  # written to after it was named: its router may let it in now
    assert not seen.request_from(c, 602.0)


async def test_a_node_found_unreachable_asks_read_only_and_stays_out_of_tables(
    tmp_path: Path, seed: int
) -> None:
    """BEP 43: once a node knows nobody reaches it unasked, its requests say so, and the nodes it
    asks answer without taking it into their routing tables (every lookup that reached it there
    would wait out a timeout). A node that is reachable is verified and taken in as before."""
    network = MemoryNetwork()
    responder = await _join(tmp_path, network, "10.9.0.1", seed)
    hidden = await _join(tmp_path, network, "10.9.2.1", seed + 1, bootstrap=False)
    open_ = await _join(tmp_path, network, "10.9.2.2", seed + 2, bootstrap=False)
    try:
        hidden.engine.protocol.reachability.dial_test_ended(0.0, heard=False)
        target = b"t" * 20
        for node in (hidden, open_):
            reply = await node.engine.protocol.request(
                ("10.9.0.1", FLEET_PORT), "find_node", target
            )
            assert reply is not None  # answered either way
        assert responder.counters()["requests_find_node"] >= 2
        await until_routed(responder, open_.engine.node.id, open_.address)
        assert responder.engine.protocol.router.find(hidden.engine.node.id) is None
    finally:
        await asyncio.gather(*(n.close() for n in (responder, hidden, open_)))


def test_read_only_requests_parse() -> None:
    node = b"n" * 20
    for method, target, token in (
        ("ping", None, None),
        ("find_node", b"t" * 20, None),
        ("get_peers", b"k" * 20 + b"j" * 20, b"x" * 8),
        ("announce_peer", b"k" * 20, b"x" * 8),
    ):
        for read_only in (False, True):
            data = encode_request(b"m" * 20, method, node, target, token, read_only=read_only)
            request = decode_datagram(data, socket.AF_INET)
            assert isinstance(request, Request) and request.read_only is read_only, method
    # The flags ride in the padding's first byte: four arguments, as older nodes expect, and a
    # padded request keeps its length.
    padded = encode_request(b"m" * 20, "find_node", node, b"t" * 20, None, 100, read_only=True)
    assert len(padded) == len(encode_request(b"m" * 20, "find_node", node, b"t" * 20, None, 100))
    request = decode_datagram(padded, socket.AF_INET)
    assert isinstance(request, Request) and request.read_only
    assert len(umsgpack.unpackb(padded[21:])[1]) == 4
