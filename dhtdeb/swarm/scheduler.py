"""The scheduling core of one file's swarm download: events in, actions out, time injected.

Owns: the event entry points and the order in which its parts decide, which pieces are accepted
and when the download has finished or failed. The parts: the peers and their requests
(peer_table.py), the crowd's offers (offers.py), which piece list is trusted and the pieces held
on its word (list_trust.py), what the mirror fetches (mirror_plan.py), the pieces taken on offers
and the inquiry into them (provisional.py), the accepted pieces (progress.py); the actions and
configuration are in actions.py. It is the longest module of the core because it is the one
place where the parts' decisions are put in order, event by event; what each part decides is in
its own module. Performs no I/O: the asyncio driver calls the event methods,
pops `poll_actions()`, and re-arms one timer at `next_deadline()` (the aioquic split). It reads
no clock: every event method takes `now` (the driver's clock, read once per event) and hands it to
its parts; `next_deadline()` is an absolute time on that clock. Trusts nothing a peer says;
the whole-file SHA256 from the signed index is the only ground truth (a one-piece file's list *is*
that hash), and the mirror is the referee for piece lists that no second party has confirmed.

Theory of operation
-------------------
Each piece is *missing*, *held* or *accepted*. A piece's bytes are on disk once the driver reports
`piece_received` (the driver writes every copy it receives, so the last copy reported is the one on
disk; it must not write a copy of a piece already accepted). A copy that matches the list in use
is *held* while that list is not yet corroborated and *accepted* once it is; a held piece
whose list is refuted goes back to missing, so nothing accepted is ever taken back (except a piece
taken on a downloader's offer that the inquiry convicts: RetractPiece).

Scheduling: the lowest missing, unclaimed piece goes to the best-ranked peer that holds it and has a
free slot (ranking: EWMA of per-request throughput divided by 1 + errors; ties broken by a random
key drawn at admission, so a crowd of downloaders spreads over the seeders). After each event the
parts decide in a fixed order: settle the lists, ask for lists, last resort, inquiry checks, audit,
mirror, peer requests, and whether nothing moves any more.

Driver contract: StartMirror(first) claims `first`; the stream then reports its progress with
`mirror_stream_ready`, `mirror_piece_starting`, `mirror_piece_progress` (and
`mirror_range_ignored`), whose return values say what it does next (mirror_plan.py, "The
stream"), and ends with `mirror_stopped`. BanPeer means: drop every request to that peer (the
core has already forgotten them). A copy that arrives after its CancelPiece may still be
reported (it is evaluated like any other, unless already accepted). The per-request rate
includes the time shared with the peer's other requests in flight: it ranks peers against each
other and sets overdue deadlines, it is not the peer's link speed.
"""

from __future__ import annotations

import functools
import random
import weakref
from collections.abc import Callable, Iterable

from dhtdeb.discovery import Peer
from dhtdeb.swarm.actions import (
    AUDIT_BLOCK,
    DEFAULT_CONFIG,
    MIRROR,
    AcceptPiece,
    Action,
    AuditPiece,
    BanPeer,
    CancelPiece,
    CheckPiece,
    ConfirmPiece,
    Failed,
    Finished,
    GiveUpMirrorPiece,
    MirrorSource,
    MirrorStep,
    MirrorWindow,
    ReadMirrorPiece,
    RequestPiece,
    RequestPieceList,
    RetractPiece,
    SchedulerConfig,
    Source,
    StartMirror,
    StopMirror,
)
from dhtdeb.swarm.list_trust import ListTrust
from dhtdeb.swarm.mirror_plan import MirrorPlan
from dhtdeb.swarm.offers import Crowd
from dhtdeb.swarm.peer_table import PeerState, PeerTable
from dhtdeb.swarm.pieces import PIECE_SIZE, PieceList, piece_count, piece_span
from dhtdeb.swarm.progress import Progress
from dhtdeb.swarm.provisional import ProvisionalPieces
from dhtdeb.swarm.rendezvous import Rendezvous

__all__ = [
    "AUDIT_BLOCK",
    "MIRROR",
    "AcceptPiece",
    "Action",
    "AuditPiece",
    "BanPeer",
    "CancelPiece",
    "CheckPiece",
    "ConfirmPiece",
    "Failed",
    "Finished",
    "GiveUpMirrorPiece",
    "MirrorSource",
    "MirrorStep",
    "MirrorWindow",
    "ReadMirrorPiece",
    "RequestPiece",
    "RequestPieceList",
    "RetractPiece",
    "SchedulerConfig",
    "Source",
    "StartMirror",
    "StopMirror",
    "SwarmScheduler",
]


class _Verdicts:
    """The list trust's verdicts, carried out by the scheduler (list_trust.Verdicts).

    It holds its scheduler by a weak reference: the scheduler owns the list trust, which owns
    this, so a strong one would make every download a reference cycle, freed only by the cyclic
    collector (in the simulation, whose loop freezes what is alive, never during the run)."""

    def __init__(self, scheduler: SwarmScheduler) -> None:
        self._scheduler = weakref.proxy(scheduler)

    def ban(self, peer: Peer, reason: str, *, lied: bool) -> None:
        self._scheduler._ban(peer, reason, lied=lied)

    def set_aside(self, peer: Peer) -> None:
        self._scheduler._set_aside(peer)

    def accept(self, index: int) -> None:
        self._scheduler._accept(index)


class SwarmScheduler:
    def __init__(
        self,
        sha256: str,
        size: int,
        *,
        rng: random.Random,
        config: SchedulerConfig = DEFAULT_CONFIG,
        mirror_available: bool = True,
        piece_size: int = PIECE_SIZE,
        node: bytes = b"",
    ) -> None:
        """`node`: this node's id, to split the mirror's pieces with other downloaders (none
        when empty)."""
        if size < 0 or piece_size < 1:
            raise ValueError("size must be >= 0 and piece_size >= 1")
        digest = bytes.fromhex(sha256)
        if len(digest) != 32:
            raise ValueError("sha256 must be 64 hex digits")
        rendezvous = Rendezvous(digest)
        self._size = size
        self._piece_size = piece_size
        # a plain function of the index, not a bound method: the parts keep it (no cycle)
        self._span: Callable[[int], tuple[int, int]] = functools.partial(
            piece_span, size=size, piece_size=piece_size
        )
        self._rng = rng
        self._config = config
        self.piece_count: int = piece_count(size, piece_size)
        self.finished: bool = False
        self.failed: str | None = None

        self._actions: list[Action] = []
        self._table = PeerTable(config, self._span)
        self._crowd = Crowd(config, self.piece_count)
        self._progress = Progress(self.piece_count)

        whole = PieceList(size, (digest,), piece_size) if self.piece_count == 1 else None
        self._trust = ListTrust(_Verdicts(self), self._table, whole)
        self._mirror = MirrorPlan(
            config,
            available=mirror_available,
            node=node,
            rendezvous=rendezvous,
            rng=rng,
            peers=self._table,
            crowd=self._crowd,
            trust=self._trust,
            progress=self._progress,
        )
        self._offered = ProvisionalPieces(
            config,
            rng,
            self._span,
            crowd=self._crowd,
            trust=self._trust,
            rendezvous=rendezvous,
            node=node,
        )

    # ------------------------------------------------------------------ events

    def peers_found(self, peers: Iterable[Peer], *, now: float) -> None:
        if self._done():
            return
        for peer in self._table.admit(peers, self._rng):
            self._crowd.admit(peer)
        self._schedule(now)

    def lookup_deadline_passed(self, *, now: float) -> None:
        self._mirror.deadline_passed = True
        self._schedule(now)

    def piece_list_received(
        self,
        peer: Peer,
        pieces: PieceList,
        have: frozenset[int] | None,
        *,
        offers_only: bool = False,
        fetching: range = range(0),
        node: bytes = b"",
        relayed: frozenset[int] = frozenset(),
        now: float,
    ) -> None:
        """A peer's piece list. With `offers_only` the peer is itself downloading and only the
        entries of the pieces in `have` mean anything: those it got from the mirror, and the
        `relayed` ones it took on another downloader's offer; `fetching` are the pieces its
        mirror stream is fetching now (left to it for a while), `node` the id it splits the
        mirror's pieces by."""
        state = self._table.get(peer)
        if self._done() or state is None:
            return
        if (
            pieces.size != self._size
            or pieces.piece_size != self._piece_size
            or len(pieces) != self.piece_count
        ):
            self._ban(peer, "piece list for a different file size", lied=False)
            self._schedule(now)
            return
        if offers_only and not self._trust.single:
            if self._offers_received(state, pieces, have or frozenset(), fetching, relayed, now):
                self._crowd.set_node(peer, node)
            self._schedule(now)
            return
        self._table.took_list(state, have, self.piece_count)
        self._crowd.took_list(peer)
        if not self._trust.single:
            self._trust.add_claim(peer, pieces)
        self._schedule(now)

    def piece_list_failed(self, peer: Peer, reason: str, misbehaved: bool, *, now: float) -> None:
        if self._done() or peer not in self._table:
            return
        if misbehaved:
            self._ban(peer, reason, lied=False)
        else:
            self._set_aside(peer)
        self._schedule(now)

    def piece_received(self, source: Source, index: int, digest: bytes, *, now: float) -> None:
        self._check_index(index)
        if self._done():
            return
        if isinstance(source, MirrorSource):
            self._mirror_piece(index, digest)
        else:
            self._peer_piece(source, index, digest, now)
        self._schedule(now)

    def piece_failed(
        self, source: Source, index: int, reason: str, misbehaved: bool, *, now: float
    ) -> None:
        self._check_index(index)
        if self._done():
            return
        if isinstance(source, MirrorSource):
            self._mirror.piece_done(index)
        else:
            state = self._table.get(source)
            if state is not None and self._table.take_request(source, index) is not None:
                if misbehaved:
                    self._ban(source, reason, lied=False)
                else:
                    self._table.lacks(state, index, error=True)
        self._schedule(now)

    def piece_busy(self, peer: Peer, index: int, *, now: float) -> None:
        """The peer holds the piece but is at its upload limit: ask it (or another holder)
        again after `busy_backoff`. The piece stays served, so a crowd's busy peers do not send
        everyone to the mirror; after `busy_overdue` of busy answers it counts as overdue."""
        self._check_index(index)
        state = self._table.get(peer)
        if self._done() or state is None or self._table.take_request(peer, index) is None:
            return
        self._table.back_off(state, now)
        self._mirror.busy(index, now)
        self._schedule(now)

    # The mirror stream's events answer with what the stream does next (mirror_plan.py, "The
    # stream"); they queue nothing for poll_actions().

    def mirror_stream_ready(self, first: int, *, now: float) -> MirrorWindow | StopMirror:
        """The stream is ready for a request from `first`: StartMirror's `first` when it
        starts, or the piece after a window it has delivered in full. Answers the window to
        request, or StopMirror."""
        return self._mirror.next_request(first, now, done=self._done())

    def mirror_range_ignored(self, *, now: float) -> None:
        """The mirror answered the open request with the whole file: the stream takes pieces as
        they come, up to the file's end."""
        del now  # nothing to decide yet: the next piece's event decides
        self._mirror.whole_file()

    def mirror_piece_starting(
        self, index: int, *, now: float
    ) -> ReadMirrorPiece | GiveUpMirrorPiece | StopMirror:
        """The stream is about to read piece `index` of its open request (the first piece once
        the mirror has answered, each following one once the one before was reported with
        `piece_received`)."""
        self._check_index(index)
        size = self._span(index)[1] - self._span(index)[0]
        return self._mirror.piece_starting(index, size, now, done=self._done())

    def mirror_piece_progress(
        self, index: int, got: int, *, now: float
    ) -> GiveUpMirrorPiece | None:
        """`got` bytes of piece `index` have come from the stream (reported while fewer than
        ReadMirrorPiece.watch have): GiveUpMirrorPiece when a downloader before this node in the
        piece's rendezvous order says its own mirror stream is on it too (it will offer it)."""
        self._check_index(index)
        size = self._span(index)[1] - self._span(index)[0]
        return self._mirror.piece_progress(index, got, size, now, done=self._done())

    def mirror_stopped(self, error: str | None, *, now: float) -> None:
        if self._mirror.stopped(error):
            self._schedule(now)

    def audit_result(self, index: int, matched: bool | None, *, now: float) -> None:
        """The mirror's bytes inside held piece `index` agree with the held copy (or not; None:
        the copy was gone before the comparison, which proves nothing)."""
        self._check_index(index)
        claim = self._trust.end_audit(index)
        if self._done() or claim is None:
            return
        self._trust.audited(claim, index, matched)
        self._schedule(now)

    def audit_failed(self, error: str, *, now: float) -> None:
        """The mirror could not deliver the audit's bytes."""
        if not self._trust.auditing:
            return
        self._trust.end_audit()
        self._mirror.failed(error)
        self._schedule(now)

    def whole_file_failed(self, *, now: float) -> None:
        """The whole file, every piece accepted, does not match its SHA256. With pieces taken
        on offers in it and a usable mirror, an inquiry finds the author of the wrong piece
        (inquiry.py): `finished` is false again, CheckPiece actions follow, and the download
        goes on after the liar's pieces are retracted. Otherwise the download fails."""
        if self.failed is not None:
            return
        if self._offered and self._mirror.usable() and self._offered.open_inquiry():
            self.finished = False
            self._schedule(now)
            return
        self._whole_file_lost()

    def check_result(self, check: CheckPiece, matched: bool | None, *, now: float) -> None:
        """The mirror's bytes for `check` equal the accepted copy's, or not (None: the copy was
        retracted meanwhile, which proves nothing)."""
        if self.failed is not None or not self._offered.inquiring:
            return
        verdict = self._offered.result(check, matched)
        if verdict.liar is not None:
            liar = verdict.liar
            wrong = self._offered.digest(check.index)
            if wrong is not None:
                self._trust.contradicted[check.index] = wrong
            reason = f"piece {check.index} it offered contradicted by the mirror"
            self._ban(liar, reason, lied=True)
            for index in self._offered.taken_from(liar, verdict.retract):
                self._retract(index)
            if wrong is not None and self._trust.says(check.index, wrong):
                # The list in use says what the mirror contradicted: it goes, with its rivals,
                # and a plain download goes on (list_trust.py, `abandon`).
                self._mirror.clear_refusals()
                self._trust.abandon()
        if verdict.confirmed is not None and self._offered.confirm(verdict.confirmed):
            self._emit(ConfirmPiece(verdict.confirmed))
        if not self._offered.busy and self._progress.complete and not self.finished:
            # Nothing was retracted and nothing is left to ask: the file as it is goes to the
            # whole-file check again (which fails it for good when nothing changed).
            self.finished = True
            self._emit(Finished())
            return
        self._schedule(now)

    def check_failed(self, check: CheckPiece, error: str, *, now: float) -> None:
        """The mirror could not answer `check`; it is asked again while the mirror is usable."""
        if self.failed is not None or not self._offered.inquiring:
            return
        self._offered.failed(check)
        self._mirror.failed(error)
        if not self._mirror.usable():
            self._whole_file_lost()
            return
        self._schedule(now)

    def _whole_file_lost(self) -> None:
        parties = self._trust.parties()
        offerers = self._offered.offerers()
        # With pieces taken on offers in the file, the list may be right and an offer wrong:
        # then the list's parties are suspects like the offerers, not proven liars.
        for peer in parties:
            if offerers:
                self._ban(peer, "whole-file hash mismatch with offered pieces", lied=False)
            else:
                self._ban(peer, "whole-file hash mismatch", lied=True)
        # One of them offered a wrong piece, but which one only the mirror could tell: each is
        # kept away for a while (not counted as a lie).
        for peer in offerers:
            self._ban(peer, "whole-file hash mismatch after its offered pieces", lied=False)
        self._fail("whole-file hash mismatch")

    def tick(self, *, now: float) -> None:
        if self._done():
            return
        self._table.tick(now)
        self._mirror.tick(now)
        for peer in self._crowd.due_refreshes(now):
            self._emit(RequestPieceList(peer))
        self._schedule(now)

    # ----------------------------------------------------------------- outputs

    def poll_actions(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    def next_deadline(self) -> float | None:
        if self._done():
            return None
        deadlines = self._table.deadlines() + self._crowd.refresh_deadlines()
        return min(deadlines + self._mirror.deadlines(), default=None)

    # ------------------------------------------------------------------- views

    def peer_rate(self, peer: Peer) -> float | None:
        state = self._table.get(peer)
        return None if state is None else state.rate

    @property
    def peers_admitted(self) -> int:
        """Peers admitted so far, ever (PeerSearch: whether a lookup brought new ones)."""
        return self._table.admitted

    @property
    def accepted(self) -> int:
        """How many pieces are accepted."""
        return self._progress.count

    def is_accepted(self, index: int) -> bool:
        """True once `index` is accepted: the driver must then not overwrite its bytes."""
        return 0 <= index < self.piece_count and self._progress.has(index)

    @property
    def list_corroborated(self) -> bool:
        """The list in use agrees with a second party (always true for a one-piece file).
        False after a last-resort acceptance: the driver may then keep the accepted pieces
        from other peers until the whole-file hash has matched."""
        return self._trust.final and not self._trust.last_resort_used

    def corroborated_list(self) -> PieceList | None:
        """The list accepted pieces were checked against, once a second party confirmed it
        (what a partial seed may hand to other peers)."""
        if not self.list_corroborated or self._trust.single:
            return None
        return self._trust.in_use

    @property
    def _peers(self) -> PeerTable:
        """The admitted peers (tests/test_scheduler.py counts them)."""
        return self._table

    # ------------------------------------------------------- piece evaluation

    def _offers_received(
        self,
        state: PeerState,
        pieces: PieceList,
        have: frozenset[int],
        fetching: range,
        relayed: frozenset[int],
        now: float,
    ) -> bool:
        """Take a downloading peer's offers (offers.py); false when one contradicts what is
        known, and the peer is banned for it."""
        wrong = self._crowd.take_offers(
            state.peer,
            pieces,
            have,
            fetching,
            relayed,
            now,
            truth=self._trust.truth,
            wrong=self._trust.contradicted,
        )
        if wrong is not None:
            self._ban(state.peer, f"offer for piece {wrong} contradicts", lied=True)
            return False
        self._table.took_offers(state)
        self._refresh_relays()
        return True

    def _refresh_relays(self) -> None:
        for peer, have in self._crowd.servable(self._trust.usable).items():
            self._table.set_have(peer, have)

    def _peer_piece(self, peer: Peer, index: int, digest: bytes, now: float) -> None:
        state = self._table.get(peer)
        request = self._table.take_request(peer, index)
        if state is not None and request is not None:
            self._table.delivered(state, index, request, now)
        if self._progress.has(index):
            return
        # The driver wrote this copy: whatever was held for `index` is gone.
        self._trust.release(index)
        claim = self._trust.in_use
        if state is None:
            return
        if claim is None:  # a downloader's offer, or what it relays (offers.py)
            mirror = self._trust.mirror_digests.get(index)
            verdict = self._crowd.judge(peer, index, digest, mirror, self._trust.usable)
            if verdict.mended:
                self._table.lacks(state, index, error=False)
            elif verdict.lie:
                self._ban(peer, verdict.lie, lied=True)
            elif verdict.author is not None:
                self._cancel_others(index, keep=peer)
                self._offered.take(index, verdict.author)
                self._accept(index, digest=digest, provisional=True)
            return
        if claim.matches(index, digest):
            self._cancel_others(index, keep=peer)
            self._trust.peer_piece(peer, index)
        else:
            self._trust.peer_contradicts(peer, index, digest, self._mirror.usable())

    def _mirror_piece(self, index: int, digest: bytes) -> None:
        self._mirror.piece_done(index)
        if self._progress.has(index):
            return
        self._trust.release(index)
        self._trust.mirror_piece(index, digest)
        claim = self._trust.in_use
        if claim is None:
            self._cancel_others(index, keep=None)
            self._accept(index)
        elif claim.matches(index, digest):
            self._cancel_others(index, keep=None)
            if self._trust.final:
                self._accept(index)
            else:
                self._trust.hold_mirror_piece(index)
        else:
            self._mirror.refuse(index)

    # ------------------------------------------------------------ piece lists

    def _last_resort(self) -> None:
        """No mirror and nobody left to ask: accept what the one list says (list_trust.py)."""
        if not self._mirror.deadline_passed or self._mirror.usable():
            return
        if self._table.lists_pending() or self._trust.askable():
            return
        self._trust.last_resort(self.is_accepted, self.piece_count)

    def _ask_for_lists(self) -> None:
        wanted = self._config.piece_lists_wanted
        is_downloading = self._crowd.is_downloading
        for peer in self._trust.lists_to_ask(wanted, self._mirror.usable(), is_downloading):
            self._emit(RequestPieceList(peer))

    # --------------------------------------------------------------- schedule

    def _schedule(self, now: float) -> None:
        if self._done():
            return
        self._trust.settle(self._mirror.usable())
        self._ask_for_lists()
        self._last_resort()
        if self._done():
            return
        self._start_checks()
        if not self._table.lists_pending() and self._mirror.allowed():
            audit = self._trust.start_audit(self._rng, self._span)
            if audit is not None:
                self._emit(audit)
        self._start_mirror(now)
        self._assign_peers(now)
        self._check_stuck(now)

    def _start_checks(self) -> None:
        for check in self._offered.checks():
            self._emit(check)

    def _retract(self, index: int) -> None:
        if not self._progress.retract(index):
            return
        self.finished = False
        self._offered.forget(index)
        self._emit(RetractPiece(index))

    def _start_mirror(self, now: float) -> None:
        start = self._mirror.start(now)
        if start is not None:
            self._emit(start)

    def _assign_peers(self, now: float) -> None:
        referee = self._trust.referee_indices(self.is_accepted)
        in_use = self._trust.in_use is not None

        def may_serve(state: PeerState) -> bool:
            return self._trust.eligible(state) and (
                in_use or self._crowd.is_downloading(state.peer)
            )

        def assignable(index: int) -> bool:
            return not (
                self._progress.has(index)
                or self._trust.is_held(index)
                or index == self._mirror.claim
                or index in referee
                or self._table.live_request(index)
            )

        made = self._table.assign(
            now,
            may_serve=may_serve,
            assignable=assignable,
            ahead=self._progress.ahead(),
            mirror_usable=self._mirror.usable(),
        )
        for peer, index in made:
            self._emit(RequestPiece(peer, index))

    def _check_stuck(self, now: float) -> None:
        if (
            not self._mirror.deadline_passed
            or self._mirror.active
            or self._trust.auditing
            or self._table.lists_pending()
            or self._table.any_requests()
            or self._offered.busy
            or self._table.busy(now)
            or self._crowd.any_fetching(now)
            or any(i >= self._progress.low for i in self._crowd.fetched(now, self._trust.usable))
        ):
            return
        if not self._table.seen and not self._mirror.available:
            self._fail("no peer has the file and no mirror is available")
        elif self._mirror.available and not self._mirror.usable():
            self._fail(f"no usable peer left and the mirror failed: {self._mirror.last_error}")
        elif (target := self._mirror.last_resort_piece()) is not None:
            # Nothing moves, yet the mirror works: the split of the mirror's pieces left this
            # node waiting on a downloader that will not fetch them (seen in an 8-machine
            # classroom). The mirror rather than a failed response to apt.
            self._emit(self._mirror.begin(target, "nothing else moves"))
        else:
            self._fail("no source left for the missing pieces")

    # ---------------------------------------------------------------- helpers

    def _cancel_others(self, index: int, keep: Peer | None) -> None:
        for peer in self._table.requesters(index):
            if peer != keep:
                self._table.take_request(peer, index)
                self._emit(CancelPiece(peer, index))

    def _accept(self, index: int, *, digest: bytes = b"", provisional: bool = False) -> None:
        if not self._progress.accept(index):
            return
        self._trust.release(index)
        if not digest:
            digest = self._trust.digest(index)
        if provisional:
            self._offered.record(index, digest)
        self._emit(AcceptPiece(index, digest, provisional))
        if self._progress.complete:
            self.finished = True
            self._emit(Finished())

    def _remove_peer(self, peer: Peer) -> None:
        state = self._table.remove(peer)
        if state is not None and self._crowd.forget(peer):
            self._refresh_relays()  # what others relay of its offers is of no use any more
        self._trust.forget(peer)

    def _ban(self, peer: Peer, reason: str, *, lied: bool) -> None:
        if self._table.is_banned(peer):
            return
        self._remove_peer(peer)
        self._table.exclude(peer, banned=True)
        self._emit(BanPeer(peer, reason, lied))

    def _set_aside(self, peer: Peer) -> None:
        if self._table.is_excluded(peer):
            return
        self._remove_peer(peer)
        self._table.exclude(peer, banned=False)

    def _fail(self, reason: str) -> None:
        if self.failed is None:
            self.failed = reason
            self._emit(Failed(reason))

    def _done(self) -> bool:
        return self.finished or self.failed is not None

    def _emit(self, action: Action) -> None:
        self._actions.append(action)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.piece_count:
            raise ValueError(f"piece {index} outside a file of {self.piece_count} pieces")
