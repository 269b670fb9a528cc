"""Holder hints: ask the peers that just served this node whether they hold its next files too.

Owns: a small table of peers that recently delivered verified files to this node (`HolderHints`,
a synchronous core that takes `now`), the rule for waiting on another node that is fetching a
file right now (`worth_waiting_for`), and the batched "which of these do you hold?" questions
(`HaveQueries`, a thin asyncio driver). Trusts: nothing a peer answers — a "held" only makes the
swarm ask that peer for the file, whose bytes are verified like any other's, and a "fetching"
only makes a download wait a bounded time. A peer loses its place in the table when it does not
answer in time, fails to deliver a file it said it held, or is banned by a download.

Why: apt fetches an upgrade as hundreds of files in a row. In a fleet, the machine that served
this node one of them most likely holds the rest (it ran the same upgrade earlier). One round trip
on the LAN to it answers for a whole batch of files, where a DHT lookup per file costs several
round trips to the same few nodes and trips their per-source rate limits. The DHT is asked only
for files no hinted holder has (and, while a download runs, as `LookupPlan.later_lookups` paces it).

A classroom (every machine starts the same upgrade at once) asks the other question: the
machines in lockstep each fetch the same small file from the mirror at the same moment, unless
one waits for another. A file of up to WAIT_MAX_PIECES pieces is fetched from the mirror by one
machine and from it by the others when a hinted peer says it is fetching the file: wait for a
peer whose bytes are already coming, and for a peer still starting only if it comes first in the
file's rendezvous order (`rank`). A node waiting for a peer whose bytes are coming says it is
fetching too, so a chain of waiting nodes ends at the one that fetches. No two nodes wait on each
other (`Waiting`): a node chooses whom it waits for once, when its download starts (later
questions go only to those); while some of them have bytes coming it waits for those alone, each
of which said so before this node did; otherwise for those still starting that come strictly
before it in a total order, and meanwhile it says it is only starting. (Waiting on a starting
peer beside a fetching one let two nodes wait on each other for WAIT_FETCHING: a classroom upgrade
took 31 s instead of 12.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dhtdeb.discovery import Peer
from dhtdeb.errors import DhtdebError
from dhtdeb.swarm.peer_client import HaveAnswer
from dhtdeb.swarm.wire import (
    HAVE_FETCHING,
    HAVE_HELD,
    HAVE_NONE,
    HAVE_STARTING,
    MAX_HAVE_QUERY,
)

log = logging.getLogger(__name__)

HINT_TTL = 30 * 60.0  # a holder not heard of for this long is forgotten
MAX_HINTS = 8  # holders remembered, and asked about each file
# Seconds a file waits for the holders' answers. A LAN round trip is under a millisecond, but a
# busy daemon (a classroom: every machine fetching at once) may take a while to answer; a peer
# that misses the deadline is not asked again for QUIET seconds, so a dead one costs one wait.
HAVE_DEADLINE = 0.5
QUIET = 10.0
WAIT_POLL = 0.05  # seconds between questions to a peer this download waits for
WAIT_STARTING = 1.0  # longest wait on peers that are only starting
STALE_ANSWER = 1.0  # seconds a waited-for peer's last answer stands while it misses deadlines
# Longest wait on a peer whose bytes are coming: WAIT_FETCHING, plus the file's size at
# WAIT_RATE (a classroom of 8 sharing a 100 Mbit/s mirror link, 10 files each at a time, gets
# about 150 KB/s per file).
WAIT_FETCHING = 20.0
WAIT_RATE = 100_000.0
# Files of up to this many pieces wait for a fetching peer; bigger ones join it as a flash crowd
# (offers, the split of the mirror's pieces: docs/swarm.md). Measured in an 8-machine classroom
# (bench/fleet.py): waiting on files of up to 8 pieces took 2.3-3.8 times a lone machine's time,
# since a file fetched by one machine at its share of the mirror link arrives slowly; a crowd
# splits its pieces among the machines instead.
WAIT_MAX_PIECES = 1


class HolderHints:
    """The peers that recently delivered verified files to this node, most recent first."""

    def __init__(self, *, ttl: float = HINT_TTL, size: int = MAX_HINTS) -> None:
        self._ttl = ttl
        self._size = size
        self._seen: OrderedDict[Peer, float] = OrderedDict()
        self._quiet_until: dict[Peer, float] = {}

    def delivered(self, peer: Peer, now: float) -> None:
        """`peer` delivered verified bytes of a file to this node."""
        self._seen.pop(peer, None)
        self._quiet_until.pop(peer, None)
        self._seen[peer] = now
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)

    def met(self, peer: Peer, now: float) -> None:
        """`peer` is a dhtdeb node on this LAN (found by multicast): worth asking, after the
        peers that delivered (it goes to the old end of the table unless already in it)."""
        if peer in self._seen or len(self._seen) >= self._size:
            return
        self._seen[peer] = now
        self._seen.move_to_end(peer, last=False)

    def failed(self, peer: Peer) -> None:
        """`peer` could not be asked, or said it held a file it then did not deliver."""
        self._seen.pop(peer, None)
        self._quiet_until.pop(peer, None)

    def slow(self, peer: Peer, now: float) -> None:
        """`peer` did not answer in time: not asked for a while."""
        if peer in self._seen:
            self._quiet_until[peer] = now + QUIET

    def candidates(self, now: float, limit: int = MAX_HINTS) -> list[Peer]:
        for peer in [p for p, at in self._seen.items() if now - at > self._ttl]:
            self.failed(peer)
        return [p for p in reversed(self._seen) if self._quiet_until.get(p, now) <= now][:limit]

    def __len__(self) -> int:
        return len(self._seen)


@dataclass(frozen=True, slots=True)
class Sighting:
    """A peer's answer about one file: the id it answered with and the file's state there."""

    peer: Peer
    node: bytes
    state: int


def rank(node: bytes, sha256: str) -> bytes:
    """A node's place in a file's rendezvous order: the lowest starts first."""
    return hashlib.sha256(node + bytes.fromhex(sha256)).digest()


def worth_waiting_for(sightings: Sequence[Sighting], me: bytes, sha256: str) -> list[Sighting]:
    """The peers fetching `sha256` that this node (`me`) should wait for rather than fetch the
    file from the mirror too: those whose bytes are coming if there are any, else those still
    starting that come before this node in the file's rendezvous order."""
    coming = [s for s in sightings if s.state == HAVE_FETCHING]
    if coming:
        return coming
    mine = rank(me, sha256)
    return [
        s for s in sightings if s.state == HAVE_STARTING and s.node and rank(s.node, sha256) < mine
    ]


class Waiting:
    """Whom one download of a small file waits for, from the first answers of the hinted peers
    to the end of the wait (a synchronous core: time comes in as `now`).

    A peer waited for that misses an answer's deadline (a busy daemon) keeps its last answer for
    STALE_ANSWER seconds: dropping it at once left the nodes that waited beside it waiting only
    on each other."""

    def __init__(
        self, sightings: Sequence[Sighting], me: bytes, sha256: str, size: int, now: float
    ) -> None:
        self._me, self._sha256, self._size, self._started = me, sha256, size, now
        self._last = {s.peer: (s, now) for s in worth_waiting_for(sightings, me, sha256)}

    @property
    def peers(self) -> list[Peer]:
        return list(self._last)

    @property
    def bytes_coming(self) -> bool:
        """Some peer waited for has bytes coming: this node says it is fetching too."""
        return any(s.state == HAVE_FETCHING for s, _ in self._last.values())

    def answered(self, answers: Mapping[Peer, Sighting | None], now: float) -> None:
        """The peers' answers to the latest question (None: no answer in time). A peer that
        answered it has no download of the file left is no longer waited for."""
        kept: dict[Peer, tuple[Sighting, float]] = {}
        for peer, (last, at) in self._last.items():
            answer = answers.get(peer)
            if answer is not None and answer.state != HAVE_NONE:
                kept[peer] = (answer, now)
            elif answer is None and now - at < STALE_ANSWER:
                kept[peer] = (last, at)
        chosen = worth_waiting_for([s for s, _ in kept.values()], self._me, self._sha256)
        self._last = {s.peer: kept[s.peer] for s in chosen}

    def go_on(self, now: float) -> bool:
        return keep_waiting([s for s, _ in self._last.values()], now - self._started, self._size)


def keep_waiting(waiting: Sequence[Sighting], elapsed: float, size: int) -> bool:
    """Whether a download of `size` bytes that has waited `elapsed` seconds for these peers
    waits on: at most WAIT_STARTING for peers whose bytes are not coming yet, and in all
    WAIT_FETCHING plus the time the file takes at WAIT_RATE."""
    if not waiting or elapsed >= WAIT_FETCHING + size / WAIT_RATE:
        return False
    return elapsed < WAIT_STARTING or any(s.state == HAVE_FETCHING for s in waiting)


class HaveClient(Protocol):
    """What HaveQueries needs of the peer client (PeerClient.which_hold)."""

    async def which_hold(self, peer: Peer, sha256s: list[str]) -> HaveAnswer: ...


@dataclass
class _Question:
    sha256: str
    answer: asyncio.Future[Sighting]


@dataclass
class _Round:
    """Questions to one peer gathered in one turn of the event loop."""

    questions: list[_Question] = field(default_factory=list)


class HaveQueries:
    """Asks hinted holders about files; questions to one peer in one loop turn share a request."""

    def __init__(self, hints: HolderHints, client: HaveClient) -> None:
        self.hints = hints
        self._client = client
        self._rounds: dict[Peer, _Round] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.asked = 0
        self.waits = 0  # downloads that waited for another node fetching the same file

    async def ask(
        self,
        sha256: str,
        now: float,
        *,
        peers: Sequence[Peer] | None = None,
        deadline: float = HAVE_DEADLINE,
    ) -> list[Sighting]:
        """What the hinted peers (or `peers`) say of `sha256`, as known when `deadline` passes
        or every one asked has answered; peers that do not have it are left out."""
        answers = await self.ask_each(sha256, now, peers=peers, deadline=deadline)
        return [s for s in answers.values() if s is not None and s.state != HAVE_NONE]

    async def ask_each(
        self,
        sha256: str,
        now: float,
        *,
        peers: Sequence[Peer] | None = None,
        deadline: float = HAVE_DEADLINE,
    ) -> dict[Peer, Sighting | None]:
        """Each asked peer's answer about `sha256`, None for those that missed `deadline`."""
        asked = list(peers) if peers is not None else self.hints.candidates(now)
        loop = asyncio.get_running_loop()
        futures: dict[Peer, asyncio.Future[Sighting]] = {}
        for peer in asked:
            future: asyncio.Future[Sighting] = loop.create_future()
            futures[peer] = future
            self._ask(peer, _Question(sha256, future))
        if futures:
            await asyncio.wait(futures.values(), timeout=deadline)
        answers: dict[Peer, Sighting | None] = {}
        for peer, future in futures.items():
            if future.done() and not future.cancelled():
                answers[peer] = future.result()
            else:
                # Too slow this time: not asked for a while, so a dead holder costs one
                # deadline, not one per file.
                future.cancel()
                self.hints.slow(peer, now)
                answers[peer] = None
        return answers

    async def holders_of(
        self, sha256: str, now: float, deadline: float = HAVE_DEADLINE
    ) -> list[Peer]:
        """The hinted peers that hold `sha256` whole."""
        return [
            s.peer for s in await self.ask(sha256, now, deadline=deadline) if s.state == HAVE_HELD
        ]

    def _ask(self, peer: Peer, question: _Question) -> None:
        if self._closed:
            question.answer.set_result(Sighting(peer, b"", HAVE_NONE))
            return
        self.asked += 1
        round_ = self._rounds.get(peer)
        if round_ is None:
            round_ = self._rounds[peer] = _Round()
            asyncio.get_running_loop().call_soon(self._send, peer)
        round_.questions.append(question)
        if len(round_.questions) >= MAX_HAVE_QUERY:
            self._send(peer)

    def _send(self, peer: Peer) -> None:
        round_ = self._rounds.pop(peer, None)
        if round_ is None:
            return
        if self._closed:
            for question in round_.questions:
                if not question.answer.done():
                    question.answer.set_result(Sighting(peer, b"", HAVE_NONE))
            return
        task = asyncio.get_running_loop().create_task(self._query(peer, round_.questions))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _query(self, peer: Peer, questions: list[_Question]) -> None:
        try:
            answer = await self._client.which_hold(peer, [q.sha256 for q in questions])
            node, states = answer.node, answer.states
        except DhtdebError as exc:
            log.debug("have query to %s failed: %s", peer.url(), exc)
            self.hints.failed(peer)
            node, states = b"", [HAVE_NONE] * len(questions)
        for question, state in zip(questions, states, strict=True):
            if not question.answer.done():
                question.answer.set_result(Sighting(peer, node, state))

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
