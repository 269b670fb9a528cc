"""What the mirror should fetch next for one file's swarm download, and when it stands aside.

Owns: the mirror's streaming request (running or not, the piece it has claimed, its window),
its errors and
whether it is still usable, whether the lookup deadline has passed, the pieces the mirror sent
wrong (refused: fetched from a peer instead), and the pieces whose holders keep answering "busy".
Trusts: the other parts of the scheduler for what they know (peer table, the crowd's offers, the
list trust, the accepted pieces), and downloading peers' node ids and fetch claims only for the
order in which pieces are taken: a peer that lies about them changes which pieces come first,
never which bytes are accepted. Pure: time comes in as `now`; a random draw (from the
scheduler's injected `random.Random`) picks a piece only when downloaders tell no id.

Theory of operation
-------------------
The mirror runs one streaming request at a time (and at most one audit beside it); it starts for,
in order of priority: a referee piece, an overdue peer piece (web seed), a corroboration piece
when there is no held peer piece to audit, or (after the lookup deadline) the lowest piece no
usable peer can serve. `continue_into` lets the stream go on only through pieces that are
missing and not claimed by a live peer request.

Downloaders that know each other (offers) split the pieces nobody offers yet by rendezvous
hashing: piece i is this node's share when hash(node, file, i) is the lowest among this node and
the downloading peers that told their node id. The mirror stream takes its share first, lowest
index first, and goes on only through its share; then pieces of downloaders whose mirror
requests are idle (gone or stuck), nearest in line first and from the top, never those of one
still working through its share. Two nodes with the same view never pick the same piece; a
partial view costs a few duplicates, and a peer that lies about its id only changes which
pieces come first. A downloader that tells no id gets no share: pieces only it could fetch are
taken at random.

The stream
----------
The driver does the stream's I/O and reports what happens; the plan answers with what the
stream does next. StartMirror(first) starts it; then, through SwarmScheduler:
`mirror_stream_ready(first)` (at the start, and after a request delivered its whole window)
answers MirrorWindow(first, last) or StopMirror; `mirror_piece_starting(i)` (once the mirror has
answered, and after each piece reported with `piece_received`) answers ReadMirrorPiece, whose
`going_on` says whether the stream means to go on into the request's next piece (the driver
tells other downloaders: `fetching`), GiveUpMirrorPiece or StopMirror; `mirror_piece_progress`
(while less than half of a piece has come) may answer GiveUpMirrorPiece; `mirror_range_ignored`
says the mirror's answer runs to the file's end. The driver reports `mirror_stopped` when the
stream ends, whatever the reason. A request's first piece is claimed with the request; each
following one only when the stream starts it, so a peer or another downloader that takes it
meanwhile keeps it. Windows start at one piece and double up to MIRROR_WINDOW_MAX while the
stream goes on, never past the file nor into an accepted piece: an open-ended request would
push megabytes into socket buffers, wasted once peers take over.

Why these answers are the events' return values and not poll_actions(): the stream is one
sequential task that needs its answer before its next read, and the answers move no other part
(they claim or release a piece, decide nothing for the peers), so they neither wait for the
driver's next poll nor run the scheduling round that other events run. The exact-action lists of
poll_actions() (tests/test_scheduler.py) therefore stay what they were: the stream's decisions
are made at the same moments as before, by the same rules, and show up in poll_actions() only
through the events that follow them (`piece_received`, `mirror_stopped`).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from dhtdeb.swarm.actions import (
    GiveUpMirrorPiece,
    MirrorWindow,
    ReadMirrorPiece,
    SchedulerConfig,
    StartMirror,
    StopMirror,
)
from dhtdeb.swarm.list_trust import ListTrust
from dhtdeb.swarm.offers import Crowd
from dhtdeb.swarm.peer_table import ListState, PeerTable
from dhtdeb.swarm.progress import Progress
from dhtdeb.swarm.rendezvous import Rendezvous

__all__ = ["MIRROR_WINDOW_MAX", "MirrorPlan", "next_window", "window_end"]

MIRROR_WINDOW_MAX = 64  # pieces per mirror request once the window has grown


def next_window(window: int) -> int:
    """The mirror's next request window, in pieces: doubling from one up to the maximum (an
    open-ended request would push megabytes into socket buffers, wasted once peers take over)."""
    return min(window * 2, MIRROR_WINDOW_MAX)


def window_end(first: int, window: int, pieces: int, accepted: Callable[[int], bool]) -> int:
    """The last piece of a window from `first`: never past the file, and never into a piece
    already accepted (e.g. the last one, checked early)."""
    last = min(pieces, first + window) - 1
    return next((j - 1 for j in range(first + 1, last + 1) if accepted(j)), last)


class MirrorPlan:
    def __init__(
        self,
        config: SchedulerConfig,
        *,
        available: bool,
        node: bytes,
        rendezvous: Rendezvous,
        rng: random.Random,
        peers: PeerTable,
        crowd: Crowd,
        trust: ListTrust,
        progress: Progress,
    ) -> None:
        self._config = config
        self.available = available
        self._node = node
        self._rendezvous = rendezvous
        self._rng = rng
        self._peers = peers
        self._crowd = crowd
        self._trust = trust
        self._progress = progress
        self.deadline_passed = False  # the lookup deadline: the mirror may fetch what nobody has
        self.active = False
        self.claim: int | None = None
        self._errors = 0
        self.last_error: str | None = None
        self._refused: set[int] = set()  # the mirror's copy contradicted the final list
        self._busy_since: dict[int, float] = {}  # piece -> first "busy" answer since a request
        self._busy_late: set[int] = set()  # of those, busy for busy_overdue (seen by tick)
        self._window = 1  # pieces in the stream's next request
        self._request: tuple[int, int] | None = None  # the open request's first and last piece
        self._unread: int | None = None  # its first piece, until the driver starts it

    # ------------------------------------------------------------------ state

    def usable(self) -> bool:
        return self.available and self._errors <= self._config.max_mirror_restarts

    def allowed(self) -> bool:
        return self.usable() and (self.deadline_passed or self._peers.seen)

    def failed(self, error: str) -> None:
        """A request to the mirror (stream, audit or check) failed."""
        self._errors += 1
        self.last_error = error

    def stopped(self, error: str | None) -> bool:
        """The stream ended (with `error`, or not); false when none was running."""
        if not self.active:
            return False
        self.active = False
        self.claim = None
        self._request = self._unread = None
        if error is not None:
            self.failed(error)
        return True

    def piece_done(self, index: int) -> None:
        """The stream delivered `index`, or failed on it."""
        if self.claim == index:
            self.claim = None

    def refuse(self, index: int) -> None:
        """The mirror's copy of `index` contradicts the final list: a peer must send it."""
        self._refused.add(index)

    def clear_refusals(self) -> None:
        self._refused.clear()

    def busy(self, index: int, now: float) -> None:
        """A holder of `index` answered "busy"."""
        self._busy_since.setdefault(index, now)

    def tick(self, now: float) -> None:
        for index, since in self._busy_since.items():
            if since + self._config.busy_overdue <= now:
                self._busy_late.add(index)

    def deadlines(self) -> list[float]:
        timeout = self._config.busy_overdue
        return [
            since + timeout for i, since in self._busy_since.items() if i not in self._busy_late
        ]

    # ---------------------------------------------------------------- starting

    def start(self, now: float) -> StartMirror | None:
        """Start the stream if the mirror is needed for a piece."""
        if self.active or not self.allowed():
            return None
        target, why = self._choice(now)
        return None if target is None else self.begin(target, why)

    def begin(self, target: int, why: str) -> StartMirror:
        self.active = True
        self.claim = target
        self._window = 1
        self._request = self._unread = None
        return StartMirror(target, why)

    def last_resort_piece(self) -> int | None:
        """The lowest missing piece the mirror has not already sent wrong, if the mirror is
        usable."""
        if not self.usable():
            return None
        for index in self._progress.ahead():
            if not (self._progress.has(index) or self._fetched_or_refused(index)):
                return index
        return None

    # ----------------------------------------------------------- the stream

    def next_request(self, first: int, now: float, *, done: bool) -> MirrorWindow | StopMirror:
        """The stream is ready for a request from `first`: the window it asks for (claiming
        `first`), or the end of the stream."""
        self._request = self._unread = None
        if done or not self.continue_into(first, now):
            return StopMirror()
        last = window_end(first, self._window, self._progress.piece_count, self._progress.has)
        self._window = next_window(self._window)
        self._request, self._unread = (first, last), first
        return MirrorWindow(first, last)

    def whole_file(self) -> None:
        """The mirror ignored the request's range: its answer goes on to the file's end."""
        if self._request is not None:
            self._request = (self._request[0], self._progress.piece_count - 1)

    def piece_starting(
        self, index: int, size: int, now: float, *, done: bool
    ) -> ReadMirrorPiece | GiveUpMirrorPiece | StopMirror:
        """The stream is about to read piece `index` (of `size` bytes) of its open request.
        The first piece was claimed with the request; each following one is claimed now, or
        the stream ends before it."""
        request = self._request
        if request is None or not request[0] <= index <= request[1]:
            raise ValueError(f"piece {index} is not in the mirror stream's open request")
        first, self._unread = index == self._unread, None
        if not first and (done or not self.continue_into(index, now)):
            return StopMirror()
        going_on = not done and index < request[1] and self.would_continue(index + 1, now)
        watch = size // 2  # a piece may be given up while less than half of it has come
        if watch > 0 and not done and self.yields(index, now):
            return GiveUpMirrorPiece(index)
        return ReadMirrorPiece(index, going_on, watch)

    def piece_progress(
        self, index: int, got: int, size: int, now: float, *, done: bool
    ) -> GiveUpMirrorPiece | None:
        """`got` bytes of piece `index` have come: give it up (`yields`) while less than half
        of it has."""
        if done or got >= size // 2 or not self.yields(index, now):
            return None
        return GiveUpMirrorPiece(index)

    def continue_into(self, index: int, now: float) -> bool:
        """Whether the stream goes on into `index` (claiming it if so)."""
        if not self.active or not 0 <= index < self._progress.piece_count:
            return False
        if index == self.claim:
            return True
        wanted = self._wants(index, now)
        self.claim = index if wanted else None
        return wanted

    def would_continue(self, index: int, now: float) -> bool:
        """Whether the stream would go on into `index` now (a question, no claim)."""
        if not self.active or not 0 <= index < self._progress.piece_count:
            return False
        return index == self.claim or self._wants(index, now)

    def yields(self, index: int, now: float) -> bool:
        """Whether the stream gives piece `index` up: a downloader before this node in the
        piece's rendezvous order says its own mirror stream is on it too (it will offer it).
        Of the downloaders fetching one piece, the first in that order never yields, so
        somebody always finishes it. What matters: in a flash crowd every node's first request,
        made before any lookup found the others, is for piece 0."""
        if not self.active or not self._node:
            return False
        mine = self._rendezvous.key(self._node, index)
        return any(
            self._rendezvous.key(node, index) < mine
            and index in self._crowd.fresh_claims(peer, now)
            for peer, node in self._crowd.partners(self._node, self._trust.usable)
        )

    # --------------------------------------------------------------- internals

    def _fetched_or_refused(self, index: int) -> bool:
        return self._trust.is_held(index) or index in self._refused

    def _choice(self, now: float) -> tuple[int | None, str]:
        """The piece the mirror is needed for most, and what for."""
        trust = self._trust
        referee = trust.referee_indices(self._progress.has)
        if referee:
            return min(referee), "referee"
        overdue = [
            index
            for index in self._peers.overdue()
            if not self._progress.has(index) and not self._fetched_or_refused(index)
        ]
        busy = self._busy_too_long()
        if trust.in_use is None and self.deadline_passed:
            target, why = self._fallback_choice(now)  # pieces nobody has come before overdue ones
            if target is not None:
                return target, why
        if overdue or busy:
            target = min(overdue + busy)
            return target, "overdue at peers" if target in overdue else "peers busy"
        if (
            trust.in_use is not None
            and not trust.final
            and not self._peers.lists_pending()
            and not trust.auditing
            and not trust.peer_held()
            and not self._peers.any_requests()
            and not self._peers_can_deliver()
        ):
            # No peer piece is held or on its way to audit the list with: a whole mirror piece
            # checks it instead.
            missing = list(self._progress.missing())
            unheld = [i for i in missing if not trust.is_held(i)]
            candidates = unheld or missing
            if candidates:
                # Corroborating costs one piece of mirror traffic: take the last piece, the only
                # one that can be shorter than a full piece, when it is still to be fetched.
                last = self._progress.piece_count - 1
                return (last if last in candidates else candidates[0]), "corroborate the list"
        if not self.deadline_passed:
            return None, ""
        return self._fallback_choice(now)

    def _busy_too_long(self) -> list[int]:
        """Pieces whose holders have answered "busy" for `busy_overdue` with no request
        to anyone since: overdue, like a piece no peer delivers in time."""
        for index in [
            i for i in self._busy_since if self._progress.has(i) or self._trust.is_held(i)
        ]:
            del self._busy_since[index]
            self._busy_late.discard(index)
        return [
            index
            for index in sorted(self._busy_late)
            if index not in self._refused and not self._peers.requested(index)
        ]

    def _fallback_choice(self, now: float) -> tuple[int | None, str]:
        """A missing, unclaimed piece that no usable peer can serve: the lowest (apt reads in
        order); while other downloaders are known, the lowest of this node's share, else the
        highest of those it comes next in line for, so that their mirror streams fetch
        different pieces for the swarm."""
        unserved = self._unserved(now)
        if not unserved:
            return None, ""
        ranks = self._split_ranks(unserved, now)
        if ranks:
            share = [i for i in unserved if ranks[i][0] == 0]
            if share:
                return share[0], "this node's share of what nobody has"
            # Then pieces whose owners (and the others before this node in line) are not
            # fetching anything: gone, or stuck. An owner that is still working through its
            # share keeps it; the mirror's bandwidth is shared, so taking its pieces would
            # only fetch them twice. Nearest in line first, from the top (owners go up).
            free = {i: rank for i, (rank, waits) in ranks.items() if not waits}
            if not free:
                return None, ""
            nearest = min(free.values())
            target = max(i for i, rank in free.items() if rank == nearest)
            return target, f"nobody has it, {nearest} idle downloader(s) before this one"
        if self._crowd.any_downloading():
            return self._rng.choice(unserved), "nobody has it (downloaders without ids)"
        return unserved[0], "nobody else has it"

    def _split_ranks(self, indices: list[int], now: float) -> dict[int, tuple[int, bool]]:
        """For each index: how many downloading peers (that told their id) come before this
        node in its rendezvous order (0: its share), and whether one of those is fetching
        from the mirror now (it may still get there). Empty when there is nobody to split with."""
        partners = [
            (node, self._crowd.is_fetching(peer, now))
            for peer, node in self._crowd.partners(self._node, self._trust.usable)
        ]
        if not partners or not self._node:
            return {}
        return self._rendezvous.ranks(self._node, partners, indices)

    def _unserved(self, now: float) -> list[int]:
        trust = self._trust
        if trust.in_use is None:
            if self._peers.lists_pending() or trust.askable():
                return []  # a list is coming: the peers may have everything
            servers = [
                s for s in self._peers if self._crowd.is_downloading(s.peer) and trust.eligible(s)
            ]
        else:
            servers = [
                s for s in self._peers if s.list_state is ListState.PENDING or trust.eligible(s)
            ]
            if any(s.have is None and not s.not_held and not s.slow for s in servers):
                return []  # a complete peer can serve every piece
        # A slow peer (one that let a request go overdue) covers nothing: what it holds is the
        # mirror's to fetch too, or a slowloris would set the pace of the whole download.
        servers = [s for s in servers if not s.slow]
        # One pass over the peers, then one over the pieces: this runs on every event.
        covered = self._crowd.fetched(now, trust.usable)
        for s in servers:
            covered |= (s.have if s.have is not None else self._progress.all_pieces) - s.not_held
        return [
            index
            for index in self._progress.ahead()
            if not (
                self._progress.has(index)
                or self._fetched_or_refused(index)
                or index in covered
                or self._peers.live_request(index)
            )
        ]

    def _wants(self, index: int, now: float) -> bool:
        """The stream goes on into `index` only if the mirror would be asked for it anyway
        (referee, overdue piece, corroboration, or no usable peer can serve it): once peers
        can deliver, every piece the stream takes is mirror traffic the swarm could have saved."""
        if self._progress.has(index) or index in self._refused:
            return False
        if index in self._trust.referee_indices(self._progress.has):
            return True
        if self._trust.is_held(index) or self._peers.live_request(index):
            return False
        if self.deadline_passed:
            unserved = self._unserved(now)
            if index in unserved:
                # Among downloaders, only into this node's share (the rest is others' first).
                ranks = self._split_ranks(unserved, now)
                if not ranks or ranks[index][0] == 0:
                    return True
        return self._choice(now)[0] == index

    def _peers_can_deliver(self) -> bool:
        """Some eligible peer holds a piece that is still to be fetched."""
        missing = [i for i in self._progress.missing() if not self._trust.is_held(i)]
        return any(
            self._trust.eligible(s) and any(s.holds(i) for i in missing) for s in self._peers
        )
