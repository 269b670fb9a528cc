"""Holder hints: ask the peers that just served this node whether they hold its next files too.

Owns: a small table of peers that recently delivered verified files to this node (`HolderHints`,
a synchronous core that takes `now`), and the batched "which of these do you hold?" questions
to them (`HaveQueries`, its thin asyncio driver). Trusts: nothing a peer answers — a "yes" only
makes the swarm ask that peer for the file, whose bytes are verified like any other's. A peer
loses its place in the table when it does not answer in time, fails to deliver a file it said it
held, or is banned by a download.

Why: apt fetches an upgrade as hundreds of files in a row. In a fleet, the machine that served
this node one of them most likely holds the rest (it ran the same upgrade earlier). One round trip
on the LAN to it answers for a whole batch of files, where a DHT lookup per file costs several
round trips to the same few nodes and trips their per-source rate limits. The DHT is still asked
for every file of several pieces (more holders to split it among) and for every one-piece file
no hinted holder has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from dhtdeb.discovery import Peer
from dhtdeb.errors import DhtdebError
from dhtdeb.swarm.pieces import MAX_HAVE_QUERY

log = logging.getLogger(__name__)

HINT_TTL = 30 * 60.0  # a holder not heard of for this long is forgotten
MAX_HINTS = 8  # holders remembered
ASK_AT_ONCE = 3  # holders asked about one file (the most recent first)
HAVE_DEADLINE = 0.05  # seconds a file waits for the holders' answers (a LAN round trip is < 1 ms)


class HolderHints:
    """The peers that recently delivered verified files to this node, most recent first."""

    def __init__(self, *, ttl: float = HINT_TTL, size: int = MAX_HINTS) -> None:
        self._ttl = ttl
        self._size = size
        self._seen: OrderedDict[Peer, float] = OrderedDict()

    def delivered(self, peer: Peer, now: float) -> None:
        """`peer` delivered verified bytes of a file to this node."""
        self._seen.pop(peer, None)
        self._seen[peer] = now
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)

    def failed(self, peer: Peer) -> None:
        """`peer` did not answer, or said it held a file it then did not deliver."""
        self._seen.pop(peer, None)

    def candidates(self, now: float, limit: int = ASK_AT_ONCE) -> list[Peer]:
        for peer in [p for p, at in self._seen.items() if now - at > self._ttl]:
            del self._seen[peer]
        return list(reversed(self._seen))[:limit]

    def __len__(self) -> int:
        return len(self._seen)


@dataclass
class _Question:
    sha256: str
    answer: asyncio.Future[bool]


@dataclass
class _Round:
    """Questions to one peer gathered in one turn of the event loop."""

    questions: list[_Question] = field(default_factory=list)


class HaveClient(Protocol):
    """What HaveQueries needs of the peer client (PeerClient.which_hold)."""

    async def which_hold(self, peer: Peer, sha256s: list[str]) -> list[bool]: ...


class HaveQueries:
    """Asks hinted holders about files; questions to one peer in one loop turn share a request."""

    def __init__(self, hints: HolderHints, client: HaveClient) -> None:
        self.hints = hints
        self._client = client
        self._rounds: dict[Peer, _Round] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.asked = 0
        self.answered_yes = 0

    async def holders_of(
        self, sha256: str, now: float, deadline: float = HAVE_DEADLINE
    ) -> list[Peer]:
        """The hinted holders that say they hold `sha256`, as known when `deadline` passes or
        every one asked has answered."""
        candidates = self.hints.candidates(now)
        if not candidates:
            return []
        loop = asyncio.get_running_loop()
        answers: dict[Peer, asyncio.Future[bool]] = {}
        for peer in candidates:
            future: asyncio.Future[bool] = loop.create_future()
            answers[peer] = future
            self._ask(peer, _Question(sha256, future))
        await asyncio.wait(answers.values(), timeout=deadline)
        found = []
        for peer, future in answers.items():
            if future.done() and not future.cancelled() and future.result():
                found.append(peer)
            elif not future.done():
                # Too slow for a hint (the point is a LAN round trip): forgotten until it
                # delivers a file again, so a dead holder costs one deadline, not one per file.
                future.cancel()
                self.hints.failed(peer)
        self.answered_yes += bool(found)
        return found

    def _ask(self, peer: Peer, question: _Question) -> None:
        if self._closed:
            question.answer.set_result(False)
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
                    question.answer.set_result(False)
            return
        task = asyncio.get_running_loop().create_task(self._query(peer, round_.questions))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _query(self, peer: Peer, questions: list[_Question]) -> None:
        try:
            held = await self._client.which_hold(peer, [q.sha256 for q in questions])
        except DhtdebError as exc:
            log.debug("have query to %s failed: %s", peer.url(), exc)
            self.hints.failed(peer)
            held = [False] * len(questions)
        for question, holds in zip(questions, held, strict=True):
            if not question.answer.done():
                question.answer.set_result(holds)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
