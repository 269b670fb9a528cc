"""Holder hints and "which of these do you hold?": apt's next files asked of the peers that just
served this node, in one round trip; and a node that reaches itself knows it by its id.

Real PeerServer and PeerClient over 127.0.0.1; the hint table is a core with `now` passed in.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from support.store import put

from dhtdeb.discovery import Peer
from dhtdeb.errors import RemoteProtocolError
from dhtdeb.stats import Counters
from dhtdeb.store import ContentStore
from dhtdeb.swarm.holders import (
    QUIET,
    WAIT_FETCHING,
    WAIT_STARTING,
    HaveQueries,
    HolderHints,
    Sighting,
    keep_waiting,
    rank,
    worth_waiting_for,
)
from dhtdeb.swarm.peer_client import (
    HaveAnswer,
    PeerClient,
    PeerIsSelf,
    PeerMisbehaved,
    PeerUnavailable,
)
from dhtdeb.swarm.peer_server import PeerServer
from dhtdeb.swarm.wire import (
    HAVE_FETCHING,
    HAVE_HELD,
    HAVE_NONE,
    HAVE_PATH,
    HAVE_STARTING,
    MAX_HAVE_QUERY,
    NODE_HEADER,
    decode_have_answer,
    decode_have_query,
    encode_have_answer,
)

NODE_A = bytes(range(1, 21))
NODE_B = bytes(range(21, 41))
GUARD = 10.0


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[PeerServer, Peer, list[str]]]:
    """A peer server (node A) holding three files."""
    store = ContentStore(tmp_path / "store")
    rng = random.Random(7)
    held = [put(store, rng.randbytes(1000 + i)) for i in range(3)]
    server = PeerServer(store, Counters(), node=NODE_A)
    host, port = await server.start("127.0.0.1", 0)
    try:
        yield server, Peer(host, port), held
    finally:
        await server.close()


async def test_one_request_says_which_files_a_peer_holds(
    served: tuple[PeerServer, Peer, list[str]],
) -> None:
    server, peer, held = served
    missing = [hashlib.sha256(f"missing {i}".encode()).hexdigest() for i in range(9)]
    asked = [missing[0], held[0], *missing[1:5], held[2], *missing[5:], held[1]]
    client = PeerClient(node=NODE_B)
    try:
        answer = await client.which_hold(peer, asked)
    finally:
        await client.close()
    assert answer.node == NODE_A
    assert answer.states == [HAVE_HELD if sha in held else HAVE_NONE for sha in asked]
    assert server.stats.have_queries == 1


async def test_a_node_that_reaches_itself_knows_it_by_its_id(
    served: tuple[PeerServer, Peer, list[str]],
) -> None:
    """Every host of a fleet listens on port 9978: the address a peer list shows may be this
    node's own. Its answers carry its id, and its own client refuses them."""
    _, peer, held = served
    itself = PeerClient(node=NODE_A)
    other = PeerClient(node=NODE_B)
    try:
        with pytest.raises(PeerIsSelf):
            await itself.piece_list(peer, held[0], 1000)
        with pytest.raises(PeerIsSelf):
            await itself.piece(peer, held[0], 0, 1000)
        with pytest.raises(PeerIsSelf):
            await itself.which_hold(peer, held)
        answer = await other.piece_list(peer, held[0], 1000)
        assert answer.have is None
        assert len(await other.piece(peer, held[0], 0, 1000)) == 1000
        with pytest.raises(PeerUnavailable) as not_held:  # a 404 tells the id too
            await itself.piece(peer, "ab" * 32, 0, 10)
        assert isinstance(not_held.value, PeerIsSelf)
    finally:
        await itself.close()
        await other.close()


@pytest.mark.parametrize(
    ("method", "body", "status"),
    [
        ("GET", b"", 405),
        ("POST", b"", 400),
        ("POST", b"x" * 31, 400),
        ("POST", b"x" * 32 * (MAX_HAVE_QUERY + 1), 413),
    ],
    ids=["get", "empty", "ragged", "too-many"],
)
async def test_bad_have_queries_are_refused_and_counted(
    served: tuple[PeerServer, Peer, list[str]], method: str, body: bytes, status: int
) -> None:
    server, peer, _ = served
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{peer.url()}{HAVE_PATH}", data=body) as response,
    ):
        assert response.status == status
        assert response.headers[NODE_HEADER] == NODE_A.hex()
    assert server.stats.bad_requests == 1 and server.stats.have_queries == 0


def test_have_query_and_answer_are_parsed_strictly() -> None:
    assert decode_have_query(bytes(64)) == ["00" * 32, "00" * 32]
    for bad in (b"", bytes(33), bytes(32 * (MAX_HAVE_QUERY + 1))):
        with pytest.raises(RemoteProtocolError):
            decode_have_query(bad)
    states = [HAVE_HELD, HAVE_NONE, HAVE_STARTING, HAVE_FETCHING]
    assert decode_have_answer(encode_have_answer(states), 4) == states
    with pytest.raises(RemoteProtocolError):
        decode_have_answer(b"\x04", 1)  # no such state
    with pytest.raises(RemoteProtocolError):
        decode_have_answer(b"\x03", 2)  # too short


def test_hints_keep_the_recent_holders_first_and_forget_the_silent() -> None:
    hints = HolderHints(ttl=100.0, size=3)
    a, b, c, d = (Peer(f"10.0.0.{i}", 9978) for i in range(1, 5))
    for at, peer in enumerate((a, b, c, d)):
        hints.delivered(peer, float(at))
    assert hints.candidates(5.0, limit=5) == [d, c, b]  # a fell out (size 3)
    hints.delivered(b, 6.0)
    assert hints.candidates(6.0, limit=2) == [b, d]
    hints.failed(d)
    assert hints.candidates(6.0) == [b, c]
    assert hints.candidates(104.0) == [b]  # c not heard of for over ttl


class _CountingClient:
    """Stands in for PeerClient.which_hold: counts requests, answers from a table."""

    def __init__(self, holds: dict[Peer, set[str]], silent: set[Peer]) -> None:
        self.holds = holds
        self.silent = silent
        self.requests: list[tuple[Peer, int]] = []

    async def which_hold(self, peer: Peer, sha256s: list[str]) -> HaveAnswer:
        self.requests.append((peer, len(sha256s)))
        if peer in self.silent:
            raise PeerMisbehaved("no answer")
        held = self.holds.get(peer, set())
        return HaveAnswer(b"", [HAVE_HELD if sha in held else HAVE_NONE for sha in sha256s])


async def test_questions_asked_together_share_one_request_per_peer() -> None:
    a, b = Peer("10.0.0.1", 9978), Peer("10.0.0.2", 9978)
    files = [hashlib.sha256(bytes([i])).hexdigest() for i in range(10)]
    client = _CountingClient({a: set(files[:5]), b: set(files[3:])}, silent=set())
    hints = HolderHints()
    hints.delivered(a, 0.0)
    hints.delivered(b, 1.0)
    queries = HaveQueries(hints, client)
    try:
        async with asyncio.timeout(GUARD):
            found = await asyncio.gather(
                *(queries.holders_of(f, 2.0, deadline=GUARD) for f in files)
            )
    finally:
        await queries.close()
    assert [set(peers) for peers in found] == [
        {p for p, held in ((a, files[:5]), (b, files[3:])) if f in held} for f in files
    ]
    assert sorted(client.requests) == [(a, 10), (b, 10)]


async def test_a_holder_that_fails_to_answer_is_forgotten() -> None:
    a, b = Peer("10.0.0.1", 9978), Peer("10.0.0.2", 9978)
    sha = hashlib.sha256(b"x").hexdigest()
    client = _CountingClient({b: {sha}}, silent={a})
    hints = HolderHints()
    hints.delivered(a, 0.0)
    hints.delivered(b, 0.0)
    queries = HaveQueries(hints, client)
    try:
        assert await queries.holders_of(sha, 1.0, deadline=GUARD) == [b]
    finally:
        await queries.close()
    assert hints.candidates(1.0) == [b]


class _SilentClient:
    """A holder that never answers (a machine gone from the LAN)."""

    def __init__(self) -> None:
        self.never = asyncio.Event()

    async def which_hold(self, peer: Peer, sha256s: list[str]) -> HaveAnswer:
        await self.never.wait()
        return HaveAnswer(b"", [HAVE_NONE] * len(sha256s))


async def test_a_holder_too_slow_for_the_deadline_costs_one_wait_not_one_per_file() -> None:
    a = Peer("10.0.0.1", 9978)
    hints = HolderHints()
    hints.delivered(a, 0.0)
    queries = HaveQueries(hints, _SilentClient())
    try:
        sha = hashlib.sha256(b"y").hexdigest()
        assert await queries.holders_of(sha, 1.0, deadline=0.01) == []
        assert hints.candidates(1.0) == []  # the next file is not kept waiting
        assert await queries.holders_of(sha, 1.0, deadline=GUARD) == []
        assert hints.candidates(1.0 + QUIET) == [a]  # asked again later
    finally:
        await queries.close()


async def test_a_have_query_does_not_count_as_a_use_of_the_file(tmp_path: Path) -> None:
    """The cache evicts what apt used least recently; a peer asking must not pin files."""
    store = ContentStore(tmp_path / "store", limit_bytes=2500)
    rng = random.Random(3)
    oldest, newer = put(store, rng.randbytes(1000)), put(store, rng.randbytes(1000))
    server = PeerServer(store, Counters(), node=NODE_A)
    host, port = await server.start("127.0.0.1", 0)
    client = PeerClient(node=NODE_B)
    try:
        assert (await client.which_hold(Peer(host, port), [oldest])).states == [HAVE_HELD]
    finally:
        await client.close()
        await server.close()
    put(store, rng.randbytes(1000))
    assert oldest not in store and newer in store


def test_a_node_waits_only_for_a_peer_with_bytes_coming_or_before_it_in_the_order() -> None:
    """A classroom: every machine asks for the same small file at once. Each waits for a peer
    already fetching it, or for one still starting that comes first in the file's rendezvous
    order; so exactly one of two machines starting together fetches, and none waits on a node
    that waits on it."""
    sha = hashlib.sha256(b"small.deb").hexdigest()
    a, b = Peer("10.0.0.1", 9978), Peer("10.0.0.2", 9978)
    first, second = sorted((NODE_A, NODE_B), key=lambda node: rank(node, sha))
    peer_of = {NODE_A: a, NODE_B: b}
    # both starting: the second in the order waits for the first, never the reverse
    assert worth_waiting_for([Sighting(peer_of[first], first, HAVE_STARTING)], second, sha)
    assert not worth_waiting_for([Sighting(peer_of[second], second, HAVE_STARTING)], first, sha)
    # bytes coming: anyone waits, whatever the order
    fetching = Sighting(peer_of[second], second, HAVE_FETCHING)
    assert worth_waiting_for([fetching], first, sha) == [fetching]
    # a peer that did not say who it is is not waited for while it only starts
    assert not worth_waiting_for([Sighting(a, b"", HAVE_STARTING)], NODE_B, sha)


def test_a_wait_is_bounded() -> None:
    starting = [Sighting(Peer("10.0.0.1", 9978), NODE_A, HAVE_STARTING)]
    fetching = [Sighting(Peer("10.0.0.1", 9978), NODE_A, HAVE_FETCHING)]
    assert keep_waiting(starting, 0.0, 1000) and not keep_waiting(starting, WAIT_STARTING, 1000)
    assert keep_waiting(fetching, WAIT_STARTING, 0)
    assert not keep_waiting(fetching, WAIT_FETCHING, 0)
    assert keep_waiting(fetching, WAIT_FETCHING, 8 << 20)  # a bigger file takes longer
    assert not keep_waiting([], 0.0, 0)


async def test_the_peer_server_tells_which_files_it_is_fetching(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    coming, starting, absent = (hashlib.sha256(bytes([i])).hexdigest() for i in range(3))

    class Downloads:
        def partial(self, sha256: str) -> None:
            return None

        def fetch_state(self, sha256: str) -> int:
            return {coming: HAVE_FETCHING, starting: HAVE_STARTING}.get(sha256, HAVE_NONE)

    server = PeerServer(store, Counters(), partials=Downloads(), node=NODE_A)
    host, port = await server.start("127.0.0.1", 0)
    client = PeerClient(node=NODE_B)
    try:
        answer = await client.which_hold(Peer(host, port), [coming, starting, absent])
    finally:
        await client.close()
        await server.close()
    assert answer.states == [HAVE_FETCHING, HAVE_STARTING, HAVE_NONE]


def test_lan_neighbours_are_asked_after_the_peers_that_delivered() -> None:
    hints = HolderHints(ttl=100.0, size=3)
    a, b, c, d = (Peer(f"10.0.0.{i}", 9978) for i in range(1, 5))
    hints.delivered(a, 0.0)
    hints.met(b, 1.0)
    hints.met(a, 2.0)  # already known as a deliverer: stays first
    assert hints.candidates(2.0) == [a, b]
    hints.delivered(c, 3.0)
    hints.met(d, 4.0)  # the table is full: a neighbour does not push a deliverer out
    assert hints.candidates(4.0) == [c, a, b]
