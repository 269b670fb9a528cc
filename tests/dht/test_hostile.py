"""Hostile input: fuzzed datagrams, bad replies, spoofed announces, floods, amplification."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from pathlib import Path

import asyncio_dgram
import pytest
import umsgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dhtdeb.dht import DhtTuning
from dhtdeb.dht.wire import Reply, Request, decode_datagram, encode_request
from dhtdeb.errors import RemoteProtocolError
from dhtdeb.netaddr import HostPort

from .swarm import Swarm, sha, until_routed

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=60)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=20,
)


def _framed(kind: bytes, body: object, msgid: bytes = b"m" * 20) -> bytes:
    return kind + msgid + umsgpack.packb(body)


datagrams = st.one_of(
    st.binary(max_size=1600),
    st.builds(_framed, st.sampled_from([b"\x00", b"\x01", b"\x02"]), msgpack_values),
    st.builds(
        _framed,
        st.just(b"\x00"),
        st.tuples(
            st.sampled_from(["ping", "find_node", "get_peers", "announce_peer", "store"]),
            st.lists(
                st.binary(min_size=18, max_size=22)
                | st.binary(min_size=38, max_size=62)
                | msgpack_values,
                max_size=5,
            ),
        ).map(list),
    ),
    st.builds(
        _framed,
        st.just(b"\x01"),
        st.fixed_dictionaries(
            {"id": st.binary(min_size=19, max_size=21)},
            optional={
                "nodes": st.binary(max_size=100) | msgpack_values,
                "peers": st.lists(st.binary(max_size=20)) | msgpack_values,
                "keys": st.lists(
                    st.tuples(st.binary(max_size=10), st.binary(max_size=60)).map(list)
                    | msgpack_values,
                    max_size=4,
                )
                | msgpack_values,
                "token": st.binary(max_size=40) | msgpack_values,
                "ok": msgpack_values,
            },
        ),
    ),
)


@settings(max_examples=600, deadline=None)
@given(data=datagrams, family=st.sampled_from([socket.AF_INET, socket.AF_INET6]))
def test_parser_returns_a_message_or_raises_remote_protocol_error(
    data: bytes, family: socket.AddressFamily
) -> None:
    try:
        message = decode_datagram(data, family)
    except RemoteProtocolError:
        return
    assert isinstance(message, Request | Reply)


def test_deeply_nested_msgpack_is_a_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_datagram(b"\x00" + b"m" * 20 + b"\x91" * 1400, socket.AF_INET)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.lists(datagrams, min_size=1, max_size=10))
def test_live_node_counts_fuzzed_datagrams_without_raising(
    tmp_path: Path, data: list[bytes]
) -> None:
    async def scenario() -> None:
        swarm = Swarm(tmp_path, random.Random(1))
        node = await swarm.spawn()
        protocol = node.engine.protocol
        for datagram in data:
            protocol.datagram_received(datagram, ("127.0.0.1", 5555))
        counters = node.counters()
        assert counters.get("internal_errors", 0) == 0
        await swarm.close()

    asyncio.run(scenario())


async def test_garbage_over_the_socket_is_counted_and_logged_quietly(
    swarm: Swarm, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(seed)
    node = await swarm.spawn()
    other = await swarm.spawn((node.address,))
    attacker = await asyncio_dgram.connect(("127.0.0.1", node.address.port))
    try:
        with caplog.at_level(logging.DEBUG):
            for _ in range(50):
                await attacker.send(rng.randbytes(rng.randrange(0, 300)))
            await attacker.send(b"\x00" + b"m" * 20 + b"\x91" * 1400)
            # a real request after the garbage: once answered, everything before it was handled
            await other.engine.protocol.ping_address(("127.0.0.1", node.address.port))
        counters = node.counters()
        assert counters["malformed"] >= 50
        assert counters.get("internal_errors", 0) == 0
        assert not [r for r in caplog.records if r.exc_info]
        assert len([r for r in caplog.records if "malformed" in r.getMessage()]) <= 1
    finally:
        attacker.close()


class ScriptedNode:
    """A fake DHT node that answers every request with the next scripted (bad) reply body."""

    def __init__(self, bodies: list[object]) -> None:
        self.bodies = bodies
        self.answered = 0
        self.stream: asyncio_dgram.aio.DatagramServer | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> HostPort:
        self.stream = await asyncio_dgram.bind(("127.0.0.1", 0))
        self.task = asyncio.get_running_loop().create_task(self._serve())
        return HostPort("127.0.0.1", self.stream.sockname[1])

    async def _serve(self) -> None:
        assert self.stream is not None
        while True:
            data, source = await self.stream.recv()
            if umsgpack.unpackb(data[21:])[0] == "ping":
                body: object = {"id": b"L" * 20}  # answer pings well, so the node routes to us
            else:
                body = self.bodies[self.answered % len(self.bodies)]
                self.answered += 1
            raw = body if isinstance(body, bytes) else umsgpack.packb(body)
            await self.stream.send(b"\x01" + data[1:21] + raw, source)

    async def stop(self) -> None:
        assert self.task is not None and self.stream is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.stream.close()


BAD_REPLIES: list[object] = [
    b"\xc1",  # never-used msgpack byte
    b"\x91" * 1000,
    ["not", "a", "map"],
    {"id": b"short"},
    {"id": b"i" * 20, "nodes": b"x" * 25},
    {"id": b"i" * 20, "nodes": "text"},
    {"id": b"i" * 20, "nodes": b"\x00" * 20 + b"\x7f\x00\x00\x01" + b"\x00\x00"},  # port 0
    {"id": b"i" * 20, "peers": [b"\x7f\x00\x00\x01"]},
    {"id": b"i" * 20, "peers": "x"},
    {"id": b"i" * 20, "token": 7},
    {"id": b"i" * 20, "ok": "yes"},
    {"id": b"i" * 20, "token": b"t" * 8, "nodes": b"i" * 20 + b"\x7f\x00\x00\x01\x00\x09" * 1},
]


async def test_scripted_bad_replies_never_raise_from_public_api(swarm: Swarm) -> None:
    swarm.tuning = DhtTuning(rpc_timeout=1.0, slow_after=0.5)  # well above scheduling jitter
    liar = ScriptedNode(BAD_REPLIES)
    where = await liar.start()
    try:
        node = await swarm.spawn((where,))
        for _ in range(len(BAD_REPLIES) // 2):
            await node.bootstrap([where])
            assert await node.find_peers(sha("x"), 2.0) == []
            await node.announce(sha("x"))
        assert liar.answered >= len(BAD_REPLIES)
        assert node.counters()["malformed"] >= 8
        assert node.counters().get("internal_errors", 0) == 0
    finally:
        await liar.stop()


async def test_spoofed_source_cannot_announce_a_victim(swarm: Swarm) -> None:
    storer = await swarm.spawn()
    honest = await swarm.spawn((storer.address,))
    key = bytes.fromhex(sha("file"))[:20]
    # the attacker got a token for its own address, then sends it "from" the victim's address
    attacker = ("127.0.0.1", 40001)
    token = storer.engine.protocol.tokens.issue(attacker)
    for source in [("127.0.0.1", 40002), attacker]:
        datagram = encode_request(b"a" * 20, "announce_peer", b"z" * 20, key, token)
        storer.engine.protocol.datagram_received(datagram, source)
    assert storer.engine.storage.peers(key, 10) == [attacker]
    assert storer.counters()["bad_tokens"] == 1
    # and a token-less or forged announce over the real socket stores nothing
    stream = await asyncio_dgram.connect(("127.0.0.1", storer.address.port))
    try:
        await stream.send(encode_request(b"b" * 20, "announce_peer", b"y" * 20, key, b"f" * 8))
        await honest.engine.protocol.ping_address(("127.0.0.1", storer.address.port))
    finally:
        stream.close()
    assert storer.counters()["bad_tokens"] == 2
    assert storer.engine.storage.peers(key, 10) == [attacker]


async def test_store_flood_from_thousands_of_node_ids_stays_within_caps(
    swarm: Swarm, seed: int
) -> None:
    rng = random.Random(seed)
    swarm.tuning = DhtTuning(
        max_keys=300, max_peers_per_key=50, request_rate=1e6, request_burst=1e6
    )
    node = await swarm.spawn()
    protocol = node.engine.protocol
    sources = [("127.0.0.1", 20000 + i) for i in range(400)]
    for i in range(4000):
        source = sources[i % len(sources)]
        key = (i % 600).to_bytes(20, "big")
        token = protocol.tokens.issue(source)
        protocol.datagram_received(
            encode_request(rng.randbytes(20), "announce_peer", rng.randbytes(20), key, token),
            source,
        )
    storage = node.engine.storage
    assert storage.key_count() == 300
    assert max(len(storage.peers(k, 10_000)) for k, _ in storage) <= 50
    assert node.statistics().routing_table == 0  # nobody answered a ping: nobody was added
    assert len(protocol._probing) <= swarm.tuning.max_probes
    assert len(protocol._outstanding) <= swarm.tuning.max_outstanding


async def test_claimant_of_a_live_nodes_id_does_not_take_its_place(swarm: Swarm) -> None:
    node = await swarm.spawn()
    honest = await swarm.spawn((node.address,))
    honest_id = honest.engine.node.id
    await until_routed(node, honest_id, honest.address)
    pings = honest.counters()["requests_ping"]
    protocol = node.engine.protocol
    for _ in range(20):  # requests with the honest node's id, from elsewhere
        protocol.datagram_received(
            encode_request(b"c" * 20, "find_node", honest_id, b"t" * 20), ("127.0.0.1", 40003)
        )
    await asyncio.gather(*protocol._tasks)
    known = protocol.router.find(honest_id)
    assert known is not None and (known.ip, known.port) == (
        honest.address.host,
        honest.address.port,
    )
    assert honest.counters()["requests_ping"] == pings + 1  # re-checked once, and it answered
    assert len(protocol._probing) == 0


async def test_requests_are_rate_limited_per_source(swarm: Swarm) -> None:
    swarm.tuning = DhtTuning(request_rate=10, request_burst=20)
    node = await swarm.spawn()
    for _ in range(200):
        node.engine.protocol.datagram_received(
            encode_request(b"r" * 20, "ping", b"p" * 20), ("127.0.0.1", 30001)
        )
    node.engine.protocol.datagram_received(
        encode_request(b"r" * 20, "ping", b"q" * 20), ("127.0.0.1", 30002)
    )
    counters = node.counters()
    assert counters["requests_ping"] <= 21
    assert counters["rate_limited"] >= 179


async def _ask(stream: asyncio_dgram.aio.DatagramClient, request: bytes) -> bytes:
    """Send a request; its reply (skipping the node's own probes of us)."""
    await stream.send(request)
    while True:
        data, _ = await stream.recv()
        if data[:21] == b"\x01" + request[1:21]:
            return data


async def test_reply_to_unproven_address_is_a_small_multiple_of_the_request(
    swarm: Swarm,
) -> None:
    await swarm.grow(30)
    node = swarm.nodes[0]
    stream = await asyncio_dgram.connect(("127.0.0.1", node.address.port))
    try:
        sizes = []
        for method, token, padding in [
            ("find_node", None, 0),
            ("get_peers", None, 0),
            ("find_node", None, 400),
        ]:
            request = encode_request(b"s" * 20, method, b"u" * 20, b"\x55" * 20, token, padding)
            reply = await _ask(stream, request)
            assert len(reply) <= 3 * len(request)
            sizes.append(len(reply))
        token = decode_datagram(reply, socket.AF_INET)
        assert isinstance(token, Reply) and token.token is not None
        request = encode_request(b"s" * 20, "find_node", b"u" * 20, b"\x55" * 20, token.token)
        await stream.send(request)
        proven, _ = await stream.recv()
        # the padded request, and the token, both earn the full reply (8 contacts)
        assert len(proven) > sizes[0] and sizes[2] > sizes[0]
        full = decode_datagram(proven, socket.AF_INET)
        assert isinstance(full, Reply) and len(full.nodes) == 8
    finally:
        stream.close()
