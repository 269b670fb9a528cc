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
from support.mirror import Mirror
from support.store import put

from dhtdeb.archive.index import Expected
from dhtdeb.discovery import Peer
from dhtdeb.download_events import DownloadEvents
from dhtdeb.downloads import Downloads, RunningDownloads
from dhtdeb.errors import RemoteProtocolError
from dhtdeb.mirror import MirrorClient
from dhtdeb.stats import Counters
from dhtdeb.store import ContentStore
from dhtdeb.swarm.holders import (
    QUIET,
    STALE_ANSWER,
    WAIT_FETCHING,
    WAIT_POLL,
    WAIT_STARTING,
    HaveQueries,
    HolderHints,
    Sighting,
    Waiting,
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


def test_a_node_with_bytes_coming_from_one_peer_does_not_wait_on_a_starting_one() -> None:
    """B comes after A in the order, and F is fetching: B waits for F alone, and says it is
    fetching; A then waits for B. Were B to wait for A as well, F missing a deadline once would
    leave A and B waiting on each other (a classroom upgrade: 20 s on one small file)."""
    sha = hashlib.sha256(b"small.deb").hexdigest()
    first, second = sorted((NODE_A, NODE_B), key=lambda node: rank(node, sha))
    a, b, f = Peer("10.0.0.1", 9978), Peer("10.0.0.2", 9978), Peer("10.0.0.3", 9978)
    node_f = bytes(20)
    starting_a = Sighting(a, first, HAVE_STARTING)
    fetching_f = Sighting(f, node_f, HAVE_FETCHING)
    waits_b = Waiting([starting_a, fetching_f], second, sha, 1000, now=0.0)
    assert waits_b.peers == [f] and waits_b.bytes_coming
    waits_a = Waiting([Sighting(b, second, HAVE_FETCHING)], first, sha, 1000, now=0.0)
    assert waits_a.peers == [b]
    # F misses a deadline: its last answer stands for a while, then it is given up
    waits_b.answered({f: None}, now=WAIT_POLL)
    assert waits_b.peers == [f] and waits_b.go_on(WAIT_POLL)
    waits_b.answered({f: None}, now=STALE_ANSWER)
    assert waits_b.peers == [] and not waits_b.go_on(STALE_ANSWER)
    # a peer that says it has no download of the file left is given up at once
    waits = Waiting([fetching_f], second, sha, 1000, now=0.0)
    waits.answered({f: Sighting(f, node_f, HAVE_NONE)}, now=WAIT_POLL)
    assert waits.peers == []


@pytest.mark.parametrize("seed", range(40))
def test_a_classroom_of_waiting_nodes_never_waits_in_a_circle(seed: int) -> None:
    """Eight nodes ask for one small file at random moments, each asking three others (its
    hints), whose answers come up to 0.25 s later, and then those it waits for every WAIT_POLL;
    every answer misses its deadline with probability 0.3 (busy daemons). A
    node that waits for nobody fetches from the mirror (2-10 polls); one that sees a holder
    fetches from it. No two nodes ever wait on each other, and nobody waits anywhere near
    WAIT_FETCHING (a circle of nodes waiting on each other, each saying it is fetching)."""
    rng = random.Random(seed)
    sha = hashlib.sha256(b"small.deb").hexdigest()
    n = 8
    ids = [rng.randbytes(20) for _ in range(n)]
    peers = [Peer(f"10.0.0.{i + 1}", 9978) for i in range(n)]
    start = [rng.randrange(6) for _ in range(n)]
    hints = [rng.sample([j for j in range(n) if j != i], 3) for i in range(n)]
    first_answers = [rng.randrange(6) for _ in range(n)]  # polls until the first answers come
    waits: dict[int, Waiting] = {}
    waited_since: dict[int, float] = {}
    done_at: dict[int, int] = {}  # fetching until this step, then held
    held: set[int] = set()
    longest = 0.0

    def state(i: int, step: int) -> int:
        if i in held or done_at.get(i, step + 1) <= step:
            return HAVE_HELD
        if i in done_at:
            return HAVE_FETCHING
        if i in waits:
            return HAVE_FETCHING if waits[i].bytes_coming else HAVE_STARTING
        return HAVE_STARTING if step >= start[i] else HAVE_NONE

    def ask(i: int, asked: list[int], step: int) -> dict[Peer, Sighting | None]:
        return {
            peers[j]: None if rng.random() < 0.3 else Sighting(peers[j], ids[j], state(j, step))
            for j in asked
        }

    def fetch(i: int, step: int, from_peer: bool) -> None:
        nonlocal longest
        waits.pop(i, None)
        longest = max(longest, step * WAIT_POLL - waited_since.get(i, step * WAIT_POLL))
        done_at[i] = step + (1 if from_peer else rng.randint(2, 10))

    for step in range(int(2 * WAIT_FETCHING / WAIT_POLL)):
        now = step * WAIT_POLL
        for i in rng.sample(range(n), n):
            if i in done_at:
                if done_at[i] <= step:
                    held.add(i)
                continue
            if step < start[i]:
                continue
            others = hints[i]
            if i not in waits:
                if i in waited_since or step < start[i] + first_answers[i]:
                    continue  # its first question is on its way (it says it is starting)
                answers = ask(i, others, step)
                sightings = [s for s in answers.values() if s is not None and s.state != HAVE_NONE]
                if any(s.state == HAVE_HELD for s in sightings):
                    fetch(i, step, from_peer=True)
                    continue
                waits[i], waited_since[i] = Waiting(sightings, ids[i], sha, 1000, now), now
                if not waits[i].peers:
                    fetch(i, step, from_peer=False)
                continue
            wait = waits[i]
            if not wait.go_on(now):
                fetch(i, step, from_peer=False)
                continue
            answers = ask(i, [peers.index(p) for p in wait.peers], step)
            if any(s is not None and s.state == HAVE_HELD for s in answers.values()):
                fetch(i, step, from_peer=True)
            else:
                wait.answered(answers, now)
        for i, wait in waits.items():
            for j in [peers.index(peer) for peer in wait.peers]:
                assert j not in waits or peers[i] not in waits[j].peers, (
                    f"seed {seed}, {now:.2f} s: nodes {i} and {j} wait on each other"
                )
        if len(held) == n:
            break
    assert len(held) == n, f"seed {seed}: {n - len(held)} nodes never got the file"
    assert longest < 5.0, f"seed {seed}: a node waited {longest:.2f} s"


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


async def test_a_download_whose_task_has_not_begun_is_only_starting(tmp_path: Path) -> None:
    """apt's batch registers a transfer before its task runs; a have query answered meanwhile
    must say "starting" (waited for only by rank, for a second), not "fetching": a node that
    waited for it as fetching was then waited for by it, each saying it was fetching, for
    WAIT_FETCHING (a classroom upgrade: 31 s instead of 12)."""
    data = random.Random(5).randbytes(30_000)
    sha256 = hashlib.sha256(data).hexdigest()
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "small.deb").write_bytes(data)
    running = RunningDownloads()
    mirror_client = MirrorClient()
    with Mirror(tmp_path / "mirror") as mirror:
        downloads = Downloads(
            ContentStore(tmp_path / "store"), mirror_client, Counters(), DownloadEvents(), running
        )
        transfer = downloads.fetch(
            mirror.url_for("small.deb"), Expected(sha256, len(data)), announce=False
        )
        assert running.fetch_state(sha256) == HAVE_STARTING  # its task has not run yet
        await asyncio.wait_for(transfer.wait_started(), GUARD)
        assert running.fetch_state(sha256) == HAVE_FETCHING  # the mirror answered
        await asyncio.wait_for(transfer.wait_stored(), GUARD)
        await downloads.close()
    await mirror_client.close()
    assert running.fetch_state(sha256) == HAVE_NONE  # stored: the store answers "held"


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
