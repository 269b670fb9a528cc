"""apt's batches at fleet scale: many keys per datagram, and a node that knows itself by its id.

A fleet is a handful of machines, each on its own address and the same port (9978): every lookup
and announce reaches the same few nodes. These tests run such fleets in memory (one address per
node, so the one-identity-per-IP rules apply as on a real network) and check that a node
announcing and another finding hundreds of files at once stay inside the per-source limits, while
a flood from one address does not.
"""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path

import pytest
from kademlia.node import Node

from dhtdeb.clock import ManualClock
from dhtdeb.dht import DhtConfig, DhtNode, DhtTuning, MemoryNetwork, dht_key, open_dht
from dhtdeb.dht.protocol import SILENT_AFTER
from dhtdeb.dht.wire import (
    MAX_KEYS,
    Contact,
    KeyAnswer,
    Reply,
    Request,
    decode_datagram,
    encode_answers,
    encode_reply,
    encode_request,
)
from dhtdeb.errors import RemoteProtocolError
from dhtdeb.netaddr import HostPort

from .swarm import FLEET_PORT, GUARD, counter, fleet, sha, until_routed


def test_several_keys_travel_in_one_request_and_reply() -> None:
    keys = [bytes([i]) * 20 for i in range(3)]
    data = encode_request(b"m" * 20, "get_peers", b"n" * 20, b"".join(keys), b"t" * 8)
    request = decode_datagram(data, socket.AF_INET)
    assert isinstance(request, Request)
    assert request.keys == tuple(keys) and request.target == keys[0]

    a, b = Contact(b"a" * 20, "10.0.0.1", 9978), Contact(b"b" * 20, "10.0.0.2", 9978)
    peer = Contact(b"p" * 20, "10.0.0.3", 9978)
    answers = [KeyAnswer((a, b), (peer,)), KeyAnswer((b,), ())]
    nodes, sections = encode_answers([a, b], answers, socket.AF_INET)
    reply = decode_datagram(
        encode_reply(b"m" * 20, {"id": b"r" * 20, "nodes": nodes, "keys": sections}),
        socket.AF_INET,
    )
    assert isinstance(reply, Reply) and reply.answers == tuple(answers)
    view = reply.for_key(0)
    assert view is not None and view.peers == (peer,) and view.nodes == (a, b)
    assert reply.for_key(2) is None  # asked, not answered: the asker asks again


@pytest.mark.parametrize(
    "keys",
    [b"", b"k" * 19, b"k" * 41, b"k" * 40, b"k" * 20 * (MAX_KEYS + 1)],
    ids=["none", "short", "ragged", "twice", "too-many"],
)
def test_malformed_key_lists_are_protocol_errors(keys: bytes) -> None:
    data = encode_request(b"m" * 20, "get_peers", b"n" * 20, keys, b"t" * 8)
    with pytest.raises(RemoteProtocolError):
        decode_datagram(data, socket.AF_INET)


def test_reply_indices_past_the_contacts_are_protocol_errors() -> None:
    body = {"id": b"r" * 20, "nodes": b"", "keys": [[b"\x00", b""]]}
    with pytest.raises(RemoteProtocolError):
        decode_datagram(encode_reply(b"m" * 20, body), socket.AF_INET)


async def test_a_node_finds_itself_in_peer_lists_by_its_id(tmp_path: Path, seed: int) -> None:
    """Listening on the wildcard address, a node does not know the address others see it
    under; it must still leave itself out of what it finds, and others must see its id."""
    nodes = []
    try:
        for name in ("a", "b", "c"):
            bootstrap = (HostPort("127.0.0.1", nodes[0].address.port),) if nodes else ()
            nodes.append(
                await open_dht(
                    DhtConfig(
                        HostPort("0.0.0.0", 0), tmp_path / name, bootstrap=bootstrap, lan=False
                    ),
                    rng=random.Random(seed + len(nodes)),
                    maintenance=False,
                )
            )
        a, b, c = nodes
        assert a.address.host == "0.0.0.0"
        await a.announce(sha("file"))
        await b.announce(sha("file"))
        found = await a.find_peers(sha("file"), GUARD)
        assert [(p.port, p.node) for p in found] == [(b.address.port, b.engine.node.id)]
        by_c = await c.find_peers(sha("file"), GUARD)
        assert {(p.port, p.node) for p in by_c} == {
            (a.address.port, a.engine.node.id),
            (b.address.port, b.engine.node.id),
        }
    finally:
        await asyncio.gather(*(n.close() for n in nodes))


async def test_an_upgrades_worth_of_keys_stays_within_the_rate_limits(
    tmp_path: Path, seed: int
) -> None:
    """Five hosts: one announces the 300 files it just fetched, another finds all 300 at once
    (an upgrade: apt asks for hundreds of files). No request is rate limited, the keys share
    datagrams, and every file is found."""
    network = MemoryNetwork()
    nodes = await fleet(tmp_path, 5, network, seed)
    try:
        first, second = nodes[1], nodes[2]
        files = [sha(f"package-{i}") for i in range(300)]
        for sha256 in files:
            first.announce_later(sha256)
        async with asyncio.timeout(GUARD):
            await first.announces_done()
        assert first.statistics().announced == len(files)
        found = await asyncio.gather(*(second.find_peers(f, GUARD) for f in files))
        assert all([p.node for p in peers] == [first.engine.node.id] for peers in found)
        assert counter(nodes, "rate_limited") == 0
        # 300 keys to up to 4 nodes each, twice (announce: lookup + announce; find: lookup)
        requests = counter(nodes, "requests_get_peers") + counter(nodes, "requests_announce_peer")
        assert requests < 300 * 3, f"{requests} requests: keys did not share datagrams"
        assert counter(nodes, "batched_keys") > 0
    finally:
        await asyncio.gather(*(n.close() for n in nodes))


async def test_a_flood_from_one_address_is_still_limited(tmp_path: Path, seed: int) -> None:
    network = MemoryNetwork()
    clock = ManualClock()  # no refill while the flood arrives
    nodes = await fleet(tmp_path, 2, network, seed, clock)
    target = nodes[0]
    try:
        # 2000 single-key requests in one burst from one address (a flood, not a fleet host)
        flooder = ("10.9.0.66", FLEET_PORT)
        rng = random.Random(seed)
        for _ in range(2000):
            datagram = encode_request(
                rng.randbytes(20), "get_peers", rng.randbytes(20), dht_key(sha("x")), None
            )
            target.engine.protocol.datagram_received(datagram, flooder)
        limited = target.counters().get("rate_limited", 0)
        assert limited >= 2000 - DhtTuning().request_burst
    finally:
        await asyncio.gather(*(n.close() for n in nodes))


async def _two(tmp: Path, seed: int, tuning: DhtTuning | None = None) -> list[DhtNode]:
    network = MemoryNetwork()
    rng = random.Random(seed)
    nodes = []
    for i in (1, 2):
        nodes.append(
            await open_dht(
                DhtConfig(
                    HostPort(f"10.9.0.{i}", FLEET_PORT),
                    tmp / f"host{i}",
                    bootstrap=(HostPort("10.9.0.1", FLEET_PORT),) if i == 2 else (),
                    lan=False,
                    allow_loopback_peers=False,
                ),
                rng=random.Random(rng.getrandbits(64)),
                tuning=tuning if i == 1 else None,
                network=network,
                maintenance=False,
            )
        )
    return nodes


async def test_keys_with_many_peers_are_all_answered_without_tripping_the_limit(
    tmp_path: Path, seed: int
) -> None:
    """A fleet of 40 that all ran the same upgrade: every key has 40 peers, so a reply holds
    few keys; the asker sends the rest again, and no key is lost, no request limited."""
    responder, asker = await _two(tmp_path, seed)
    try:
        keys = [dht_key(sha(f"pkg{i}")) for i in range(MAX_KEYS)]
        for key in keys:
            for host in range(40):
                responder.engine.storage.add(
                    key, (f"10.8.0.{host}", FLEET_PORT), bytes([host]) * 20
                )
        contact = next(iter(asker.engine.protocol.router.contacts()))
        replies = await asyncio.gather(
            *(asker.engine.protocol.call_get_peers(contact, key) for key in keys)
        )
        assert all(r is not None and len(r.peers) >= 8 for r in replies)
        assert responder.counters().get("rate_limited", 0) == 0
        assert responder.counters()["requests_get_peers"] < len(keys)  # keys shared datagrams
        assert asker.engine.protocol.router.find(responder.engine.node.id) is not None
    finally:
        await asyncio.gather(*(n.close() for n in (responder, asker)))


async def test_a_batch_reply_fits_one_datagram_whatever_the_routing_table_holds(
    tmp_path: Path, seed: int
) -> None:
    """A responder with 300 contacts asked about 48 keys at once answers the keys that fit in
    one datagram (each key worked out only if it fits), never more than 256 contacts."""
    responder, asker = await _two(tmp_path, seed)
    try:
        rng = random.Random(seed)
        router = responder.engine.protocol.router
        # Random ids fill ~8 contacts per bucket: 600 of them keep 250-300 (seed 57604038: 253).
        for i in range(3000):
            if len(router) > 300:
                break
            router.add_contact(Node(rng.randbytes(20), f"10.{i // 250}.{i % 250}.1", FLEET_PORT))
        assert len(router) > 256
        token = responder.engine.protocol.tokens.issue(("10.9.0.2", FLEET_PORT))
        keys = b"".join(rng.randbytes(20) for _ in range(MAX_KEYS))
        sent: list[bytes] = []
        network_send = responder.engine.protocol._send
        responder.engine.protocol._send = lambda data, address: sent.append(data)
        try:
            datagram = encode_request(b"m" * 20, "get_peers", b"q" * 20, keys, token)
            responder.engine.protocol.datagram_received(datagram, ("10.9.0.2", FLEET_PORT))
        finally:
            responder.engine.protocol._send = network_send
        [reply_bytes] = [d for d in sent if d[1:21] == b"m" * 20]
        reply = decode_datagram(reply_bytes, socket.AF_INET)
        assert isinstance(reply, Reply) and 1 <= len(reply.answers) < MAX_KEYS
        assert len(reply_bytes) <= DhtTuning().max_reply
        assert responder.counters().get("internal_errors", 0) == 0
    finally:
        await asyncio.gather(*(n.close() for n in (responder, asker)))


async def test_a_forged_entry_with_our_id_does_not_hide_an_honest_peer(
    tmp_path: Path, seed: int
) -> None:
    """A hostile node lists an honest peer's address under our id (ours is public): we must
    still find the honest peer through the others, not drop it as ourselves."""
    network = MemoryNetwork()
    nodes = await fleet(tmp_path, 5, network, seed)
    try:
        asker, honest = nodes[0], nodes[1]
        await honest.announce(sha("file"))
        key = dht_key(sha("file"))
        honest_address = (honest.address.host, honest.address.port)
        for liar in nodes[2:]:
            liar.engine.storage.add(key, honest_address, asker.engine.node.id)
        # the honest entry survives at one node only; the others now lie about it
        nodes[2].engine.storage.add(key, honest_address, honest.engine.node.id)
        found = await asker.find_peers(sha("file"), GUARD)
        assert [(p.host, p.node) for p in found] == [(honest.address.host, honest.engine.node.id)]
    finally:
        await asyncio.gather(*(n.close() for n in nodes))


async def test_an_announce_batch_reports_each_key(tmp_path: Path, seed: int) -> None:
    """A node whose store is full keeps some keys of a batch and not others: each announce
    learns its own outcome (a refused key is retried soon, a kept one in half an hour)."""
    responder, asker = await _two(tmp_path, seed, DhtTuning(max_keys=3))
    try:
        protocol = asker.engine.protocol
        contact = next(iter(protocol.router.contacts()))
        token = protocol.remote_token((contact.ip, contact.port))
        assert token is not None
        keys = [dht_key(sha(f"k{i}")) for i in range(5)]
        results = await asyncio.gather(*(protocol.call_announce(contact, k, token) for k in keys))
        assert results == [True, True, True, False, False]
    finally:
        await asyncio.gather(*(n.close() for n in (responder, asker)))


async def test_what_a_node_announced_alone_is_announced_when_its_first_neighbour_comes(
    tmp_path: Path, seed: int
) -> None:
    """Machines of a fleet switched on one after another: the first fetches files while it is
    alone in the DHT. Once another node joins, the first announces them at once (not a minute
    or two later), and a third finds them."""
    network = MemoryNetwork()
    rng = random.Random(seed)

    async def host(i: int, bootstrap: tuple[HostPort, ...]) -> DhtNode:
        return await open_dht(
            DhtConfig(
                HostPort(f"10.9.0.{i}", FLEET_PORT),
                tmp_path / f"host{i}",
                bootstrap=bootstrap,
                lan=False,
                allow_loopback_peers=False,
            ),
            rng=random.Random(rng.getrandbits(64)),
            network=network,
            maintenance=False,
        )

    first = await host(1, ())
    nodes = [first]
    try:
        first.announce_later(sha("alone"))
        await first.announces_done()
        assert first.statistics().announced == 0 and first.statistics().unannounced == 1
        second = await host(2, (first.address,))
        nodes.append(second)
        await until_routed(first, second.engine.node.id, second.address)
        async with asyncio.timeout(GUARD):
            await first.announces_done()
        assert first.statistics().announced == 1
        third = await host(3, (second.address,))
        nodes.append(third)
        found = await third.find_peers(sha("alone"), GUARD)
        assert [p.node for p in found] == [first.engine.node.id]
    finally:
        await asyncio.gather(*(n.close() for n in nodes))


async def test_a_lookup_does_not_wait_again_on_a_node_that_let_it_time_out(
    tmp_path: Path, seed: int
) -> None:
    """A dead machine stays in the tables of nodes that never ask it, and they keep handing it
    out; a node whose request to it timed out does not ask it again for a while."""
    network = MemoryNetwork()
    nodes = await fleet(tmp_path, 5, network, seed)
    try:
        asker, dead = nodes[1], nodes[4]
        await dead.close()
        nodes.remove(dead)
        for name in ("one", "two", "three", "four"):
            await asker.find_peers(sha(name), GUARD)
        # asked twice (one timeout may be a busy node), then left alone
        assert asker.counters().get("timeouts", 0) == SILENT_AFTER
    finally:
        await asyncio.gather(*(n.close() for n in nodes))


async def test_a_node_given_its_own_address_to_join_skips_itself(tmp_path: Path, seed: int) -> None:
    """The same --bootstrap list on every machine names each machine's own address too."""
    node = await open_dht(
        DhtConfig(HostPort("0.0.0.0", 0), tmp_path / "self", lan=False),
        rng=random.Random(seed),
        maintenance=False,
    )
    try:
        await node.bootstrap([HostPort("127.0.0.1", node.address.port)])
        assert node.statistics().routing_table == 0
        assert node.counters().get("internal_errors", 0) == 0
    finally:
        await node.close()


async def test_a_lookups_calls_are_futures_that_give_up_waiting_not_the_request(
    tmp_path: Path, seed: int
) -> None:
    """A lookup asks through futures, not a task per call (`DhtProtocol.get_peers_soon`): a
    future answers what `call_get_peers` answers, first call or batched; one given up before
    its reply leaves the reply unread, as a cancelled call did (no token learnt from it); and
    one still in flight when the node closes is cancelled, not left pending. (`sleep(0)`: one
    turn of the loop, for the callbacks of a reply or a sent batch; no time passes.)"""
    responder, asker = await _two(tmp_path, seed)
    closed = False
    try:
        key = dht_key(sha("file"))
        responder.engine.storage.add(key, ("10.8.0.1", FLEET_PORT), b"p" * 20)
        protocol = asker.engine.protocol
        contact = next(iter(protocol.router.contacts()))
        address = (contact.ip, contact.port)
        protocol._remote_tokens.clear()
        first = await protocol.get_peers_soon(contact, key)
        assert first is not None and [p.host for p in first.peers] == ["10.8.0.1"]
        assert protocol.remote_token(address) is not None
        batched = await protocol.get_peers_soon(contact, key)
        called = await protocol.call_get_peers(contact, key)
        assert batched is not None and called is not None
        assert batched.peers == called.peers == first.peers

        replied = asyncio.Event()
        accept = protocol._accept_reply

        def accept_and_tell(reply: Reply, source: tuple[str, int]) -> None:
            accept(reply, source)
            replied.set()

        protocol._accept_reply = accept_and_tell  # type: ignore[method-assign]
        protocol._remote_tokens.clear()
        given_up = protocol.get_peers_soon(contact, key)
        given_up.cancel()
        await asyncio.wait_for(replied.wait(), GUARD)
        await asyncio.sleep(0)
        assert not protocol._outstanding
        assert protocol.remote_token(address) is None

        assert await protocol.get_peers_soon(contact, key) is not None  # a token again
        await responder.close()  # nobody answers now
        in_flight = protocol.get_peers_soon(contact, key)
        await asyncio.sleep(0)
        assert protocol._outstanding
        await asker.close()
        closed = True
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(in_flight, GUARD)
    finally:
        if not closed:
            await asyncio.gather(*(n.close() for n in (responder, asker)))
