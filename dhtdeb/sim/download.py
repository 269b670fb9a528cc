"""One simulated swarm download: the real `SwarmScheduler`, driven as dhtdeb/swarm/download.py
drives it, with the simulated network in place of sockets and bytes.

Owns: the I/O the scheduler asks for, done on the simulated internet: DHT lookups (the node's
real `DhtNode.find_peers`), piece lists and pieces from other simulated nodes, one mirror stream
at a time in the windows the scheduler answers with, audit blocks. The policy is the daemon's
own: the daemon's sequence of lookups (`PeerSearch`, swarm/peer_search.py) paced by `LookupPlan`
and `MirrorRace` (swarm/lookup_plan.py), which also set the mirror's wait,
the scheduler's stream events for the mirror (swarm/mirror_plan.py), bans as in `PeerPenalties`.
Trusts: the scheduler's verdicts. Every piece carries its
true digest (the simulated peers are honest), so the check that each accepted piece has the true
digest stands for the whole-file SHA256.

Not modelled: holder hints (`POST /v1/have`), waiting for a peer that is fetching the same
one-piece file, apt reading the bytes as they come, giving up a mirror piece half-way (a piece
is given up only at its start: no `mirror_piece_progress` reports).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dhtdeb.discovery import Peer
from dhtdeb.sim.network import TransferAborted
from dhtdeb.swarm.lookup_plan import LOOKUP_DEADLINE, LookupPlan
from dhtdeb.swarm.peer_search import PeerSearch
from dhtdeb.swarm.penalties import BAN_SECONDS, MISBEHAVIOUR_BAN_SECONDS
from dhtdeb.swarm.pieces import PieceList, piece_count, piece_span
from dhtdeb.swarm.scheduler import (
    MIRROR,
    AcceptPiece,
    AuditPiece,
    BanPeer,
    CancelPiece,
    CheckPiece,
    ConfirmPiece,
    MirrorWindow,
    ReadMirrorPiece,
    RequestPiece,
    RequestPieceList,
    RetractPiece,
    Source,
    StartMirror,
    SwarmScheduler,
)

if TYPE_CHECKING:
    from dhtdeb.sim.node import SimNode
    from dhtdeb.sim.workload import DebFile

CONNECT_TIMEOUT = 3.0  # PeerClient's: a host that is gone or behind NAT never answers the SYN


def piece_digest(sha256: str, index: int) -> bytes:
    """The true digest of piece `index` of the file (a one-piece file's is its SHA256)."""
    return hashlib.sha256(f"{sha256} piece {index}".encode()).digest()


def true_digests(sha256: str, size: int) -> tuple[bytes, ...]:
    count = piece_count(size)
    if count == 1:
        return (bytes.fromhex(sha256),)
    return tuple(piece_digest(sha256, i) for i in range(count))


@dataclass(frozen=True, slots=True)
class ListAnswer:
    """What a peer answers to `GET /v1/pieces/<sha256>` (docs/swarm.md)."""

    pieces: PieceList
    have: frozenset[int] | None
    offers_only: bool = False
    fetching: range = range(0)
    node: bytes = b""
    relayed: frozenset[int] = frozenset()


class SimDownload:
    def __init__(self, node: SimNode, debfile: DebFile) -> None:
        self.node = node
        self.file = debfile
        self.sha256 = debfile.sha256
        self.size = debfile.size
        self.digests = true_digests(debfile.sha256, debfile.size)
        self.pieces = len(self.digests)
        self.scheduler = SwarmScheduler(
            self.sha256,
            self.size,
            rng=node.derived_rng(),
            node=node.node_id,
        )
        self._plan = LookupPlan(self.pieces, node.race)
        self._wake = asyncio.Event()
        self._tasks: dict[object, asyncio.Task[None]] = {}
        self._first_source: dict[int, Source] = {}
        self.accepted: dict[int, bytes] = {}
        self.provisional: set[int] = set()
        self.from_peers = 0  # bytes of accepted pieces, by who sent them
        self.from_mirror = 0
        self.wrong_digests = 0
        self.mirror_window: range = range(0)
        self.started = node.world.clock.now()
        # The diagnosis of its mirror bytes: what the first mirror stream was for, and whether
        # a reachable machine held the file when this download started.
        self.mirror_reason: str | None = None
        self.reachable_holder = node.world.reachable_holder(self.sha256, node)

    def stretch(self) -> float:
        """How much longer this download took than the mirror alone would have: one round trip,
        then the file at the slower of this node's downlink and the mirror's rate per client."""
        node, world = self.node, self.node.world
        rate = min(node.plan.down, world.params.mirror_per_connection)
        alone = 2.0 * world.mirror_half(node) + self.size / rate
        return (world.clock.now() - self.started) / alone

    # -- what this node's peer server may share while it downloads (Downloads.partial) -------

    def list_answer(self) -> ListAnswer | None:
        corroborated = self.scheduler.corroborated_list()
        if corroborated is not None:
            held = frozenset(i for i in self.accepted if i not in self.provisional)
            return ListAnswer(corroborated, held)
        if self.pieces == 1:
            return None
        void = bytes(32)
        relayed = frozenset(self.provisional)
        digests = tuple(self.accepted.get(i, void) for i in range(self.pieces))
        return ListAnswer(
            PieceList(self.size, digests),
            frozenset(self.accepted),
            offers_only=True,
            fetching=self.mirror_window,
            node=self.node.node_id,
            relayed=relayed,
        )

    def serves(self, index: int) -> bool:
        return index in self.accepted

    # -- the loop of SwarmDownload.run ----------------------------------------------------------

    async def run(self) -> bool:
        """True once every piece is accepted with its true digest (the whole file matches)."""
        clock = self.node.world.clock
        if self.pieces > 1:  # Downloads' on_started: a crowd must find each other
            self._spawn("announce", self.node.announce_now(self.sha256))
        self._spawn("lookup", self._lookup())
        try:
            while True:
                self._wake.clear()
                for action in self.scheduler.poll_actions():
                    self._apply(action)
                if self.scheduler.failed is not None:
                    return False
                if self.scheduler.finished:
                    if self._whole_file_matches():
                        return True
                    self.scheduler.whole_file_failed(now=self._now())
                    if self.scheduler.failed is None and not self.scheduler.finished:
                        continue
                    return False
                deadline = self.scheduler.next_deadline()
                if deadline is None:
                    await self._wake.wait()
                    continue
                delay = deadline - clock.now()
                if delay > 0:
                    try:
                        await asyncio.wait_for(self._wake.wait(), delay)
                        continue
                    except TimeoutError:
                        pass
                self.scheduler.tick(now=self._now())
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def _now(self) -> float:
        """The virtual time, read once for each event reported to the scheduler."""
        return self.node.world.clock.now()

    def _whole_file_matches(self) -> bool:
        return len(self.accepted) == self.pieces and all(
            self.accepted[i] == self.digests[i] for i in range(self.pieces)
        )

    def _apply(self, action: object) -> None:
        if isinstance(action, RequestPieceList):
            self._spawn(("list", action.peer), self._fetch_list(action.peer))
        elif isinstance(action, RequestPiece):
            key = ("piece", action.peer, action.index)
            self._spawn(key, self._fetch_piece(action.peer, action.index))
        elif isinstance(action, StartMirror):
            if self.mirror_reason is None:
                self.mirror_reason = action.why
            self._spawn("mirror", self._mirror_stream(action.first))
        elif isinstance(action, AuditPiece):
            self._spawn("audit", self._mirror_check(action.index, action.end - action.start))
        elif isinstance(action, CheckPiece):
            self._spawn(("check", action.index, action.start), self._inquiry_check(action))
        elif isinstance(action, RetractPiece):
            self._unaccept(action.index)
        elif isinstance(action, ConfirmPiece):
            self.provisional.discard(action.index)
        elif isinstance(action, CancelPiece):
            task = self._tasks.pop(("piece", action.peer, action.index), None)
            if task is not None:
                task.cancel()
        elif isinstance(action, AcceptPiece):
            self._accept(action)
        elif isinstance(action, BanPeer):
            self._ban(action)

    def _spawn(self, key: object, coroutine: Coroutine[Any, Any, None]) -> None:
        previous = self._tasks.get(key)
        if previous is not None and not previous.done():
            coroutine.close()
            return
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks[key] = task

        def done(finished: asyncio.Task[None], key: object = key) -> None:
            if self._tasks.get(key) is finished:
                del self._tasks[key]
            self._wake.set()

        task.add_done_callback(done)

    def _accept(self, action: AcceptPiece) -> None:
        index = action.index
        if action.digest != self.digests[index]:
            self.wrong_digests += 1
        self.accepted[index] = action.digest
        if action.provisional:
            self.provisional.add(index)
        start, end = piece_span(index, self.size)
        size = end - start
        if isinstance(self._first_source.get(index), Peer):
            self.from_peers += size
        else:
            self.from_mirror += size

    def _unaccept(self, index: int) -> None:
        if self.accepted.pop(index, None) is not None:
            start, end = piece_span(index, self.size)
            if isinstance(self._first_source.pop(index, None), Peer):
                self.from_peers -= end - start
            else:
                self.from_mirror -= end - start
        self.provisional.discard(index)

    def _ban(self, action: BanPeer) -> None:
        self.node.penalties.ban(
            action.peer, BAN_SECONDS if action.lied else MISBEHAVIOUR_BAN_SECONDS
        )
        self.node.world.tally.bans += 1
        for key, task in list(self._tasks.items()):
            if isinstance(key, tuple) and len(key) > 1 and key[1] == action.peer:
                task.cancel()

    def _received(self, source: Source, index: int) -> None:
        self._first_source.setdefault(index, source)
        self.scheduler.piece_received(source, index, self.digests[index], now=self._now())
        self._wake.set()

    # -- finding peers ------------------------------------------------------------------------

    async def _lookup(self) -> None:
        """The daemon's sequence of lookups (swarm/peer_search.py), without the holders asked
        before the DHT."""
        node = self.node
        search = PeerSearch(
            self._plan,
            self.scheduler,
            node.world.clock,
            self._find_peers,
            self._wake.set,
            node.background,
        )
        await search.run()

    async def _find_peers(self, plan: LookupPlan | None) -> bool:
        """One lookup, its peers handed over as they come; for the first (`plan`), the tally
        gets the time to the first peer that holds the file (or the lookup's whole time)."""
        node = self.node
        dht = node.dht
        if dht is None:
            return False
        world = node.world
        started = world.clock.now()
        announced = plan is not None and world.announced_holder(self.sha256, started, node)
        told: set[Peer] = set()
        holder_after: float | None = None

        def found(peers: list[Peer]) -> None:
            nonlocal holder_after
            usable = [
                p
                for p in peers
                if p not in told and p.node != node.node_id and node.penalties.allowed(p)
            ]
            if not usable:
                return
            told.update(usable)
            now = world.clock.now()
            self.scheduler.peers_found(usable, now=now)
            if plan is not None:
                if holder_after is None and world.holding(self.sha256, usable):
                    holder_after = now - started
                if plan.peers_found(now):
                    self.scheduler.lookup_deadline_passed(now=now)
            self._wake.set()

        found(await dht.find_peers(self.sha256, LOOKUP_DEADLINE, found))
        if plan is not None:
            plan.dht_lookup_ended(world.clock.now())
            seconds = holder_after if holder_after is not None else world.clock.now() - started
            world.tally.lookup(seconds, announced, holder_after is not None)
        return bool(told)

    # -- peers ----------------------------------------------------------------------------------

    async def _fetch_list(self, peer: Peer) -> None:
        world = self.node.world
        target = world.reachable(peer, self.node)
        if target is None:
            world.tally.connect_timeouts += 1
            await asyncio.sleep(CONNECT_TIMEOUT)
            self.scheduler.piece_list_failed(
                peer, "connect timeout", misbehaved=False, now=self._now()
            )
            return
        await asyncio.sleep(2 * world.rtt_half(self.node, target))
        answer = target.list_answer(self.sha256) if target.online else None
        if answer is None:
            self.scheduler.piece_list_failed(peer, "404", misbehaved=False, now=self._now())
            return
        self._plan.list_answered(peer, answer.have, answer.offers_only)
        self.scheduler.piece_list_received(
            peer,
            answer.pieces,
            answer.have,
            offers_only=answer.offers_only,
            fetching=answer.fetching,
            node=answer.node,
            relayed=answer.relayed,
            now=self._now(),
        )

    async def _fetch_piece(self, peer: Peer, index: int) -> None:
        world = self.node.world
        target = world.reachable(peer, self.node)
        if target is None:
            world.tally.connect_timeouts += 1
            await asyncio.sleep(CONNECT_TIMEOUT)
            self.scheduler.piece_failed(
                peer, index, "connect timeout", misbehaved=False, now=self._now()
            )
            return
        half = world.rtt_half(self.node, target)
        await asyncio.sleep(half)
        if not target.online or not target.serves(self.sha256, index):
            await asyncio.sleep(half)
            self.scheduler.piece_failed(peer, index, "416", misbehaved=False, now=self._now())
            return
        start, end = piece_span(index, self.size)
        if not target.upload_slot(end - start):
            await asyncio.sleep(half)
            self.scheduler.piece_busy(peer, index, now=self._now())
            return
        try:
            await asyncio.sleep(half)
            await target.upload(end - start, self.node)
        except TransferAborted:
            self.scheduler.piece_failed(peer, index, "cut short", misbehaved=True, now=self._now())
            return
        finally:
            target.upload_done()
        self._received(peer, index)

    # -- the mirror -----------------------------------------------------------------------------

    async def _mirror_stream(self, first: int) -> None:
        error: str | None = None
        try:
            step = self.scheduler.mirror_stream_ready(first, now=self._now())
            while isinstance(step, MirrorWindow):
                after = await self._mirror_request(step.first, step.last)
                if after is None:
                    break
                step = self.scheduler.mirror_stream_ready(after, now=self._now())
        except TransferAborted as exc:
            error = str(exc) or "mirror transfer aborted"
        finally:
            self.mirror_window = range(0)
            self.scheduler.mirror_stopped(error, now=self._now())
            self._wake.set()

    async def _mirror_request(self, first: int, last: int) -> int | None:
        await asyncio.sleep(2 * self.node.world.mirror_half(self.node))
        for index in range(first, last + 1):
            step = self.scheduler.mirror_piece_starting(index, now=self._now())
            if not isinstance(step, ReadMirrorPiece):
                return None  # stopped, or given up to a downloader before this one
            self.mirror_window = step.fetching
            start, end = piece_span(index, self.size)
            await self.node.from_mirror(end - start)
            self._received(MIRROR, index)
        return last + 1

    async def _mirror_check(self, index: int, size: int) -> None:
        """An audit: a block of a held piece compared with the mirror's bytes."""
        with contextlib.suppress(TransferAborted):
            await asyncio.sleep(2 * self.node.world.mirror_half(self.node))
            await self.node.from_mirror(size)
            self.scheduler.audit_result(index, matched=True, now=self._now())
            return
        self.scheduler.audit_failed("mirror transfer aborted", now=self._now())

    async def _inquiry_check(self, check: CheckPiece) -> None:
        try:
            await asyncio.sleep(2 * self.node.world.mirror_half(self.node))
            await self.node.from_mirror(check.end - check.start)
        except TransferAborted:
            self.scheduler.check_failed(check, "mirror transfer aborted", now=self._now())
            return
        self.scheduler.check_result(check, matched=check.index in self.accepted, now=self._now())
