"""SwarmDownload: the asyncio driver around one file's `SwarmScheduler`.

Owns: the loop that polls the scheduler, re-arms its one timer and carries out its actions; the
I/O it asks for on the peers' side — holder questions and DHT lookups (in `PeerSearch`'s order,
as `LookupPlan` paces them), piece-list and piece requests to peers, bans — with the bytes each
peer sent; the audits and inquiry checks that compare a copy with the mirror's bytes. The
mirror's requests are the `MirrorStream`'s (swarm/mirror_stream.py); every received piece and
every verdict on it go to the file's `Assembly` (swarm/assembly.py), which turns accepted pieces
into verified bytes for apt (the `Transfer`) and for the whole-file hash. Trusts: the
scheduler's verdicts, which are based on digests the assembly computes.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from dhtdeb.discovery import Peer
from dhtdeb.errors import DhtdebError, VerificationError
from dhtdeb.swarm.assembly import Assembly, SwarmFailed
from dhtdeb.swarm.context import SwarmContext
from dhtdeb.swarm.holders import (
    WAIT_MAX_PIECES,
    WAIT_POLL,
    Sighting,
    Waiting,
)
from dhtdeb.swarm.lookup_plan import LOOKUP_DEADLINE, LookupPlan
from dhtdeb.swarm.mirror_stream import MirrorStream
from dhtdeb.swarm.peer_client import (
    PeerBusy,
    PeerIsSelf,
    PeerMisbehaved,
    PeerUnavailable,
)
from dhtdeb.swarm.peer_ledger import VIA_DHT, VIA_HOLDER
from dhtdeb.swarm.peer_search import PeerSearch
from dhtdeb.swarm.penalties import BAN_SECONDS, MISBEHAVIOUR_BAN_SECONDS
from dhtdeb.swarm.pieces import PIECE_SIZE, PieceList, piece_count
from dhtdeb.swarm.scheduler import (
    AcceptPiece,
    AuditPiece,
    BanPeer,
    CancelPiece,
    CheckPiece,
    ConfirmPiece,
    Failed,
    Finished,
    RequestPiece,
    RequestPieceList,
    RetractPiece,
    StartMirror,
    SwarmScheduler,
)
from dhtdeb.swarm.wire import HAVE_HELD, HAVE_NONE
from dhtdeb.transfer import Transfer, UpstreamRefused

log = logging.getLogger(__name__)


class SwarmVerificationError(VerificationError):
    """Every piece matched its list, yet the whole file did not match the signed index."""


class SwarmDownload:
    def __init__(self, context: SwarmContext, transfer: Transfer, url: str) -> None:
        self._ctx = context
        self._url = url
        self._sha256 = transfer.sha256
        self._size = transfer.size
        self._piece_count = piece_count(self._size)
        self._scheduler = SwarmScheduler(
            self._sha256, self._size, rng=context.rng, node=context.node
        )
        self._plan = LookupPlan(self._piece_count, context.race)
        self._wake = asyncio.Event()
        self._tasks: dict[object, asyncio.Task[None]] = {}
        self._assembly = Assembly(transfer, context.clock, self._wake)
        self._mirror_stream = MirrorStream(
            context, transfer, url, self._scheduler, self._assembly, self._wake
        )
        self._awaiting_bytes = False  # waiting for a peer that is fetching this file
        self.bytes_from_peers = 0
        self._bytes_by_peer: dict[Peer, int] = {}  # what each peer sent (verified or not)
        self._sighted = False  # a hinted peer said it holds, fetches or starts this file

    # -- what the peer server may share while we download (PartialView) ----------------------

    @property
    def size(self) -> int:
        return self._size

    @property
    def piece_list(self) -> PieceList | None:
        """The corroborated list the accepted pieces were verified against, if any."""
        return self._scheduler.corroborated_list()

    def have(self) -> frozenset[int]:
        return self._assembly.have()

    def fetching_now(self) -> bool:
        """Bytes of this file are on their way: a mirror request or a piece request runs, or
        this download waits for a peer whose bytes are coming (so that others wait too, and a
        chain of waiting nodes ends at the one that fetches)."""
        return self._awaiting_bytes or any(
            key == "mirror" or (isinstance(key, tuple) and key[0] == "piece")
            for key, task in self._tasks.items()
            if not task.done()
        )

    def fetching(self) -> range:
        """The pieces the mirror request in flight is fetching (told to other downloaders)."""
        return self._mirror_stream.fetching

    def node(self) -> bytes:
        """This node's id, told with offers so that downloaders split the mirror's pieces."""
        return self._ctx.node

    def offers(self) -> dict[int, bytes]:
        """Pieces on disk that came from the mirror, by digest: what this node may offer to
        other downloaders before it has a corroborated list, on its own word."""
        return self._assembly.offers()

    def relays(self) -> dict[int, bytes]:
        """Pieces on disk taken on another downloader's offer, by digest: passed on as relayed,
        so that downloaders check them against that downloader's offer, not this node's word."""
        return self._assembly.relays()

    @property
    def bytes_from_mirror(self) -> int:
        """The bytes the mirror sent for this file (audit blocks and given-up pieces included)."""
        return self._mirror_stream.bytes_received

    @property
    def last_modified(self) -> str | None:
        """The mirror's Last-Modified for the file, if a mirror request ran and said it."""
        return self._mirror_stream.last_modified

    @property
    def peers_used(self) -> int:
        return len(self._bytes_by_peer)

    def bytes_by_peer(self) -> dict[Peer, int]:
        """The bytes each peer sent for this file (pieces later found bad included)."""
        return dict(self._bytes_by_peer)

    def assembled_piece_list(self) -> PieceList | None:
        """The digests of the pieces as accepted; it is the file's true piece list once the
        whole-file SHA256 has matched (so the peer server need not hash the file again)."""
        return self._assembly.assembled_piece_list()

    def path(self) -> Path:
        return self._assembly.path

    async def run(self) -> None:
        """Return once every piece is accepted and hashed in order; raise SwarmFailed otherwise."""
        self._spawn("lookup", self._lookup())
        try:
            while True:
                self._wake.clear()
                for action in self._scheduler.poll_actions():
                    self._apply(action)
                if self._assembly.apt_read_a_lie:
                    # Released after PROVISIONAL_HOLD_MAX: apt has bytes of the liar's piece,
                    # so its response must end in an error (apt retries), never be mended.
                    raise SwarmVerificationError(
                        f"{self._sha256}: apt already read a piece taken on a liar's word"
                    )
                if isinstance(self._scheduler.failed, str):
                    raise self._failure(self._scheduler.failed)
                if self._scheduler.finished:
                    if await self._assembly.whole_file_matches():
                        return
                    self._scheduler.whole_file_failed(now=self._now())
                    if self._scheduler.failed is None and not self._scheduler.finished:
                        self._ctx.counters.inquiries.opened += 1
                        log.warning(
                            "%s: whole file does not match; the mirror checks the pieces taken"
                            " on offers",
                            self._sha256[:12],
                        )
                        continue  # an inquiry: CheckPiece actions follow
                    for action in self._scheduler.poll_actions():
                        self._apply(action)
                    raise SwarmVerificationError(
                        f"{self._sha256}: pieces verified but the whole file does not match"
                    )
                deadline = self._scheduler.next_deadline()
                if deadline is None:
                    await self._wake.wait()
                    continue
                delay = deadline - self._ctx.clock.now()
                if delay > 0:
                    try:
                        await asyncio.wait_for(self._wake.wait(), delay)
                        continue
                    except TimeoutError:
                        pass
                self._scheduler.tick(now=self._now())
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            await self._assembly.close()

    def _now(self) -> float:
        """The time of an event reported to the scheduler (read once for each)."""
        return self._ctx.clock.now()

    def _failure(self, reason: str) -> DhtdebError:
        status = self._mirror_stream.status
        if status is not None and status >= 400:
            return UpstreamRefused(status, f"{self._url}: mirror answered {status}")
        return SwarmFailed(f"{self._url}: {reason}")

    # -- actions ------------------------------------------------------------------------------

    def _apply(self, action: object) -> None:
        if isinstance(action, RequestPieceList):
            self._spawn(("list", action.peer), self._fetch_list(action.peer))
        elif isinstance(action, RequestPiece):
            self._spawn(
                ("piece", action.peer, action.index), self._fetch_piece(action.peer, action.index)
            )
        elif isinstance(action, StartMirror):
            log.debug("%s: mirror from piece %d: %s", self._sha256[:12], action.first, action.why)
            self._spawn("mirror", self._mirror_stream.run(action.first))
        elif isinstance(action, AuditPiece):
            self._spawn("audit", self._audit(action))
        elif isinstance(action, CheckPiece):
            self._spawn(("check", action.index, action.start), self._check(action))
        elif isinstance(action, RetractPiece):
            self._assembly.retract(action.index)
            self._ctx.counters.inquiries.retracted_pieces += 1
        elif isinstance(action, ConfirmPiece):
            self._assembly.confirm(action.index)
        elif isinstance(action, CancelPiece):
            task = self._tasks.pop(("piece", action.peer, action.index), None)
            if task is not None:
                task.cancel()
        elif isinstance(action, AcceptPiece):
            self._assembly.accept(action.index, action.digest, action.provisional)
        elif isinstance(action, BanPeer):
            self._ban(action.peer, action.reason, action.lied)
        elif isinstance(action, (Finished, Failed)):
            pass  # seen through scheduler.finished / scheduler.failed

    def _spawn(self, key: object, coroutine: object) -> None:
        assert asyncio.iscoroutine(coroutine)
        previous = self._tasks.get(key)
        if previous is not None and not previous.done():
            coroutine.close()
            return
        task = asyncio.create_task(coroutine)
        self._tasks[key] = task

        def done(finished: asyncio.Task[None], key: object = key) -> None:
            if self._tasks.get(key) is finished:
                del self._tasks[key]
            self._wake.set()

        task.add_done_callback(done)

    def _ban(self, peer: Peer, reason: str, lied: bool) -> None:
        seconds = BAN_SECONDS if lied else MISBEHAVIOUR_BAN_SECONDS
        self._ctx.penalties.ban(peer, seconds)
        now = self._ctx.clock.now()
        self._ctx.ledger.banned(
            peer, f"{'lied' if lied else 'misbehaved'}: {reason}", now + seconds, now
        )
        if self._ctx.holders is not None:
            self._ctx.holders.hints.failed(peer)
        if lied:
            self._ctx.counters.bans.lied += 1
            self._ctx.counters.verify_failures.peer += 1
            log.warning("peer %s lied about %s: %s; banned", peer.url(), self._sha256[:12], reason)
        else:
            self._ctx.counters.bans.misbehaved += 1
            log.info("peer %s misbehaved on %s: %s; banned", peer.url(), self._sha256[:12], reason)
        for key, task in list(self._tasks.items()):
            if isinstance(key, tuple) and len(key) > 1 and key[1] == peer:
                task.cancel()

    # -- I/O tasks ----------------------------------------------------------------------------

    async def _lookup(self) -> None:
        """The hinted holders first, then the DHT, while the mirror waits as `LookupPlan`
        says; then now and then again (swarm/peer_search.py)."""

        async def ask_holders(wait: bool) -> tuple[bool, bool]:
            hinted = await self._ask_holders(wait=wait)
            return bool(hinted), bool(hinted) or self._sighted

        ctx = self._ctx
        search = PeerSearch(
            self._plan,
            self._scheduler,
            ctx.clock,
            self._find_peers,
            self._wake.set,
            ctx.background,
            ask_holders,
        )
        await search.run()

    async def _ask_holders(self, *, wait: bool = True) -> list[Peer]:
        """The hinted peers that hold this file. For a file of a few pieces nobody holds, when a
        hinted peer is fetching it now (a classroom: every machine asks for the same file at
        once), wait for that peer instead of fetching the file from the mirror too
        (holders.py), unless not `wait`."""
        holders = self._ctx.holders
        if holders is None:
            return []
        ctx = self._ctx
        sightings = self._usable(await holders.ask(self._sha256, ctx.clock.now()))
        self._sighted = bool(sightings)
        found = [s.peer for s in sightings if s.state == HAVE_HELD]
        if wait and not found and self._piece_count <= WAIT_MAX_PIECES:
            waiting = Waiting(sightings, ctx.node, self._sha256, self._size, ctx.clock.now())
            if waiting.peers:
                holders.waits += 1
            while waiting.peers and not found:
                self._awaiting_bytes = waiting.bytes_coming
                if not waiting.go_on(ctx.clock.now()):
                    log.debug("%s: gave up waiting for %s", self._sha256[:12], waiting.peers)
                    break
                await asyncio.sleep(WAIT_POLL)  # the peer's download is not ours to await
                asked = await holders.ask_each(self._sha256, ctx.clock.now(), peers=waiting.peers)
                # A peer now banned, or found to be this node, is waited for no longer.
                answers = {
                    p: s if s is None or self._is_usable(s) else Sighting(p, b"", HAVE_NONE)
                    for p, s in asked.items()
                }
                found = [p for p, s in answers.items() if s is not None and s.state == HAVE_HELD]
                waiting.answered(answers, ctx.clock.now())
            self._awaiting_bytes = False
        if found:
            log.debug("%s: %d hinted holders", self._sha256[:12], len(found))
            for peer in found:
                ctx.ledger.found(peer, VIA_HOLDER, ctx.clock.now())
            self._scheduler.peers_found(found, now=self._now())
        return found

    def _usable(self, sightings: list[Sighting]) -> list[Sighting]:
        return [s for s in sightings if self._is_usable(s)]

    def _is_usable(self, sighting: Sighting) -> bool:
        """Neither this node (by address or by id) nor a banned peer."""
        ctx = self._ctx
        return (
            not ctx.is_self(sighting.peer)
            and not (ctx.node and sighting.node == ctx.node)
            and ctx.penalties.allowed(sighting.peer)
        )

    def _unavailable(self, peer: Peer, exc: PeerUnavailable) -> None:
        """Bookkeeping for a peer that cannot help with this file."""
        if isinstance(exc, PeerIsSelf):
            self._ctx.own_addresses.add(peer)
        if self._ctx.holders is not None and not isinstance(exc, PeerBusy):
            self._ctx.holders.hints.failed(peer)

    def delivered_by(self) -> list[Peer]:
        """The peers whose bytes went into this (finished, verified) file and who were not
        caught lying: likely holders of the next files apt asks for."""
        return [p for p in self._bytes_by_peer if self._ctx.penalties.allowed(p)]

    async def _find_peers(self, plan: LookupPlan | None) -> bool:
        """One DHT lookup; whether it found usable peers. They are handed to the scheduler as
        they come, not when the lookup ends: one holder is what a small file needs."""
        ctx = self._ctx
        told: set[Peer] = set()

        def found(peers: list[Peer]) -> None:
            usable = [
                p
                for p in peers
                if p not in told and not ctx.is_self(p) and ctx.penalties.allowed(p)
            ]
            if not usable:
                return
            told.update(usable)
            now = ctx.clock.now()
            for peer in usable:
                ctx.ledger.found(peer, VIA_DHT, now)
            self._scheduler.peers_found(usable, now=now)
            if plan is not None and plan.peers_found(now):
                self._scheduler.lookup_deadline_passed(now=now)
            self._wake.set()

        try:
            peers = await ctx.discovery.find_peers(self._sha256, LOOKUP_DEADLINE, found)
        except DhtdebError as exc:
            log.warning("DHT lookup for %s failed: %s", self._sha256[:12], exc)
            peers = []
        found(peers)  # those a discovery without `on_peers` returns only now
        if plan is not None:
            plan.dht_lookup_ended(ctx.clock.now())
        log.debug("DHT: %d peers for %s, %d usable", len(peers), self._sha256[:12], len(told))
        return bool(told)

    async def _fetch_list(self, peer: Peer) -> None:
        try:
            answer = await self._ctx.peers.piece_list(peer, self._sha256, self._size)
        except PeerUnavailable as exc:
            self._unavailable(peer, exc)
            self._scheduler.piece_list_failed(peer, str(exc), misbehaved=False, now=self._now())
        except (PeerMisbehaved, DhtdebError) as exc:
            self._scheduler.piece_list_failed(peer, str(exc), misbehaved=True, now=self._now())
        else:
            self._plan.list_answered(peer, answer.have, answer.offers_only)
            self._scheduler.piece_list_received(
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
        start = index * PIECE_SIZE
        end = min(start + PIECE_SIZE, self._size)
        try:
            data = await self._ctx.peers.piece(peer, self._sha256, start, end)
        except PeerBusy:
            self._scheduler.piece_busy(peer, index, now=self._now())
            return
        except PeerUnavailable as exc:
            self._unavailable(peer, exc)
            self._scheduler.piece_failed(peer, index, str(exc), misbehaved=False, now=self._now())
            return
        except (PeerMisbehaved, DhtdebError) as exc:
            self._scheduler.piece_failed(peer, index, str(exc), misbehaved=True, now=self._now())
            return
        self._ctx.counters.bytes.from_peers += len(data)
        self.bytes_from_peers += len(data)
        self._bytes_by_peer[peer] = self._bytes_by_peer.get(peer, 0) + len(data)
        self._ctx.ledger.received(peer, len(data), self._ctx.clock.now())
        digest = await self._assembly.hold(index, data)
        if digest is None:
            self._scheduler.piece_failed(
                peer, index, "no room to hold the piece", misbehaved=False, now=self._now()
            )
        else:
            self._scheduler.piece_received(peer, index, digest, now=self._now())

    async def _audit(self, audit: AuditPiece) -> None:
        """Compare a block of a held piece with the same bytes from the mirror."""
        copy = self._assembly.held_copy(audit.index, audit.digest)
        if copy is None:  # accepted or dropped meanwhile: nothing to compare
            self._scheduler.audit_result(audit.index, matched=None, now=self._now())
            return
        try:
            data = await self._mirror_stream.block(audit.start, audit.end)
        except DhtdebError as exc:
            self._scheduler.audit_failed(str(exc), now=self._now())
            return
        offset = audit.start - audit.index * PIECE_SIZE
        self._scheduler.audit_result(
            audit.index, copy[offset : offset + len(data)] == data, now=self._now()
        )

    async def _check(self, check: CheckPiece) -> None:
        """Compare the mirror's bytes [start, end) with the accepted copy of a piece taken on an
        offer (the inquiry after a whole-file mismatch)."""
        assembly = self._assembly
        if not (assembly.is_accepted(check.index) and assembly.is_written(check.index)):
            self._scheduler.check_result(check, matched=None, now=self._now())
            return
        try:
            data = await self._mirror_stream.block(check.start, check.end)
        except DhtdebError as exc:
            self._scheduler.check_failed(check, str(exc), now=self._now())
            return
        self._ctx.counters.inquiries.check_bytes += len(data)
        if not assembly.is_written(check.index):  # retracted while the mirror answered
            self._scheduler.check_result(check, matched=None, now=self._now())
            return
        copy = assembly.peek(check.start, check.end - check.start)
        matched = copy == data
        if not matched:
            log.warning(
                "%s: piece %d taken on an offer differs from the mirror at bytes %d-%d",
                self._sha256[:12],
                check.index,
                check.start,
                check.end - 1,
            )
        self._scheduler.check_result(check, matched=matched, now=self._now())
