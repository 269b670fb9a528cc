"""What the mirror should fetch next for one file's swarm download, and when it stands aside.

Owns: the mirror's streaming request (running or not, the piece it has claimed), its errors and
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
"""

from __future__ import annotations

import random

from dhtdeb.swarm.actions import SchedulerConfig, StartMirror
from dhtdeb.swarm.list_trust import ListTrust
from dhtdeb.swarm.offers import Crowd
from dhtdeb.swarm.peer_table import ListState, PeerTable
from dhtdeb.swarm.progress import Progress
from dhtdeb.swarm.rendezvous import Rendezvous

__all__ = ["MirrorPlan"]


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
