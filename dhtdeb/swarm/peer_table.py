"""The peers of one file's swarm download, as its scheduler (scheduler.py) sees them.

Owns: which peers are admitted and which are excluded (banned, or set aside without a ban), what
each one holds, the requests in flight to each (with their overdue deadlines), each peer's
per-request rate and errors, how it ranks against the others, and how many requests it may have
in flight. Trusts nothing a peer says: `have` and `not_held` only steer requests, every byte is
checked by the scheduler against a piece list or the mirror. Pure: time comes in as `now`,
randomness from the scheduler's injected `random.Random` (one tiebreak per admitted peer, drawn in
the order the peers were found).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum

from dhtdeb.discovery import Peer
from dhtdeb.swarm.actions import SchedulerConfig

__all__ = ["ListState", "PeerState", "PeerTable", "Request"]

_MIN_ELAPSED = 1e-6


class ListState(Enum):
    NOT_ASKED = "not asked"
    PENDING = "pending"
    RECEIVED = "received"


@dataclass(slots=True)
class Request:
    start: float
    deadline: float
    overdue: bool = False


@dataclass(slots=True)
class PeerState:
    peer: Peer
    tiebreak: float
    list_state: ListState = ListState.NOT_ASKED
    have: frozenset[int] | None = None  # None: complete (announced, or said "all")
    not_held: set[int] = field(default_factory=set)
    rate: float | None = None
    errors: int = 0
    inflight: dict[int, Request] = field(default_factory=dict)
    busy_until: float = 0.0  # it answered "busy": no requests to it before then
    # A request of it went overdue, and none has come in time since: one request at a time,
    # for the highest missing piece, so that a slow peer (or a slowloris) never holds the
    # pieces the mirror stream is about to take.
    slow: bool = False

    def holds(self, index: int) -> bool:
        return (self.have is None or index in self.have) and index not in self.not_held


class PeerTable:
    def __init__(self, config: SchedulerConfig, span: Callable[[int], tuple[int, int]]) -> None:
        """`span(index)`: the byte range of piece `index`, for request deadlines and rates."""
        self._config = config
        self._span = span
        self._peers: dict[Peer, PeerState] = {}
        self._excluded: dict[Peer, bool] = {}  # peer -> banned (True) or set aside (False)
        self._requests: dict[int, dict[Peer, Request]] = {}
        # Peers whose piece list was asked for and has not come: asked after every event (a
        # scan of the table was 4 % of a 10,000-node simulation, whose crowds hold hundreds).
        self._lists_pending: set[Peer] = set()
        # Peers that may have requests in flight or a "busy" back-off: what tick(), deadlines()
        # and busy() look at, instead of every admitted peer (kept by request() and back_off(),
        # pruned by tick()).
        self._active: dict[Peer, PeerState] = {}
        self.admitted = 0  # peers admitted, ever (banned and removed ones too)

    # ------------------------------------------------------------ membership

    def admit(self, peers: Iterable[Peer], rng: random.Random) -> list[Peer]:
        """Admit the peers not known yet, within `max_peers`; returns those admitted."""
        admitted = []
        for peer in peers:
            if peer in self._peers or peer in self._excluded:
                continue
            if len(self._peers) >= self._config.max_peers:
                break
            if len(self._excluded) >= 4 * self._config.max_peers:
                break  # cannot remember more exclusions, so admit nobody new
            self._peers[peer] = PeerState(peer, tiebreak=rng.random())
            admitted.append(peer)
        self.admitted += len(admitted)
        return admitted

    @property
    def seen(self) -> bool:
        """Some peer was admitted, ever."""
        return self.admitted > 0

    def get(self, peer: Peer) -> PeerState | None:
        return self._peers.get(peer)

    def __contains__(self, peer: Peer) -> bool:
        return peer in self._peers

    def __iter__(self) -> Iterator[PeerState]:
        """The admitted peers, in the order they were admitted."""
        return iter(self._peers.values())

    def __len__(self) -> int:
        return len(self._peers)

    def remove(self, peer: Peer) -> PeerState | None:
        """Forget `peer` and its requests (the driver drops them on BanPeer)."""
        state = self._peers.pop(peer, None)
        self._lists_pending.discard(peer)
        self._active.pop(peer, None)
        if state is not None:
            for index in list(state.inflight):
                self._drop(peer, index)
        return state

    def is_banned(self, peer: Peer) -> bool:
        return self._excluded.get(peer, False)

    def is_excluded(self, peer: Peer) -> bool:
        return peer in self._excluded

    def exclude(self, peer: Peer, *, banned: bool) -> None:
        self._excluded[peer] = banned

    # ------------------------------------------------------- what peers said

    def took_list(self, state: PeerState, have: frozenset[int] | None, piece_count: int) -> None:
        """It sent its piece list, with the pieces it holds (None: all)."""
        state.list_state = ListState.RECEIVED
        self._lists_pending.discard(state.peer)
        state.have = None if have is None else frozenset(i for i in have if 0 <= i < piece_count)

    def took_offers(self, state: PeerState) -> None:
        """It is downloading and told its offers: what it holds is `set_have`'s from now on."""
        state.list_state = ListState.RECEIVED
        self._lists_pending.discard(state.peer)
        state.not_held.clear()

    def asked_list(self, state: PeerState) -> None:
        state.list_state = ListState.PENDING
        self._lists_pending.add(state.peer)

    def set_have(self, peer: Peer, have: frozenset[int]) -> None:
        state = self._peers.get(peer)
        if state is not None:
            state.have = have

    def lacks(self, state: PeerState, index: int, *, error: bool) -> None:
        """It does not have `index` after all (an `error` when it failed a request for it)."""
        state.not_held.add(index)
        if error:
            state.errors += 1

    def back_off(self, state: PeerState, now: float) -> None:
        """It answered "busy": no requests to it for `busy_backoff`."""
        state.busy_until = now + self._config.busy_backoff
        self._active[state.peer] = state

    def delivered(self, state: PeerState, index: int, request: Request, now: float) -> None:
        """A request of it came back with a copy: a rate sample, and no longer slow if in time."""
        self.sample_rate(state, index, now - request.start)
        if not request.overdue:
            state.slow = False

    # -------------------------------------------------------------- requests

    def request(self, state: PeerState, index: int, now: float) -> None:
        start, end = self._span(index)
        rate = state.rate if state.rate is not None else self._config.first_request_rate
        timeout = max(
            self._config.min_piece_timeout, self._config.overdue_factor * (end - start) / rate
        )
        request = Request(start=now, deadline=now + timeout)
        state.inflight[index] = request
        self._active[state.peer] = state
        self._requests.setdefault(index, {})[state.peer] = request

    def assign(
        self,
        now: float,
        *,
        may_serve: Callable[[PeerState], bool],
        assignable: Callable[[int], bool],
        ahead: range,
        mirror_usable: bool,
    ) -> list[tuple[Peer, int]]:
        """Request pieces of `ahead` that are `assignable` (asked again after each request)
        from the peers with a free slot that `may_serve`: each piece, lowest first, from the
        best-ranked free peer that holds it; a slow peer gets one piece, from the top while the
        mirror is usable (away from the mirror stream). Returns the requests made, in order."""
        if not any(assignable(index) for index in ahead):
            # Nothing to ask for (a small file's one piece in flight, say): no peer is ranked.
            # Called after every event of a download with dozens of peers, this was most of it.
            return []
        free = [
            s
            for s in self._peers.values()
            if len(s.inflight) < self.capacity(s, mirror_usable)
            and s.busy_until <= now
            and may_serve(s)
        ]
        if not free:
            return []
        free.sort(key=self.rank, reverse=True)
        made: list[tuple[Peer, int]] = []
        for state in [s for s in free if s.slow]:
            free.remove(state)
            for index in reversed(ahead) if mirror_usable else ahead:
                if assignable(index) and index not in state.inflight and state.holds(index):
                    self.request(state, index, now)
                    made.append((state.peer, index))
                    break
        for index in ahead:
            if not free:
                break
            if not assignable(index):
                continue
            for state in free:
                if index not in state.inflight and state.holds(index):
                    self.request(state, index, now)
                    made.append((state.peer, index))
                    if len(state.inflight) >= self._config.max_requests_per_peer:
                        free.remove(state)
                    break
        return made

    def take_request(self, peer: Peer, index: int) -> Request | None:
        state = self._peers.get(peer)
        request = None if state is None else state.inflight.pop(index, None)
        self._drop(peer, index)
        return request

    def requesters(self, index: int) -> list[Peer]:
        """The peers with a request for `index` in flight, in a stable order."""
        return sorted(self._requests.get(index, {}))

    def any_requests(self) -> bool:
        return bool(self._requests)

    def requested(self, index: int) -> bool:
        return bool(self._requests.get(index))

    def live_request(self, index: int) -> bool:
        """A request for `index` is in flight and not overdue."""
        requests = self._requests.get(index)
        if requests:  # asked of every piece ahead after every event: no generator, no {}
            for request in requests.values():
                if not request.overdue:
                    return True
        return False

    def overdue(self) -> list[int]:
        """The pieces whose every request in flight is overdue."""
        return [
            index
            for index, requests in self._requests.items()
            if requests and all(r.overdue for r in requests.values())
        ]

    def _drop(self, peer: Peer, index: int) -> None:
        by_peer = self._requests.get(index)
        if by_peer is not None:
            by_peer.pop(peer, None)
            if not by_peer:
                del self._requests[index]

    # ------------------------------------------------------------ rates, time

    def sample_rate(self, state: PeerState, index: int, elapsed: float) -> None:
        start, end = self._span(index)
        sample = (end - start) / max(elapsed, _MIN_ELAPSED)
        if state.rate is None:
            state.rate = sample
        else:
            weight = self._config.rate_smoothing
            state.rate = (1.0 - weight) * state.rate + weight * sample

    def rank(self, state: PeerState) -> tuple[float, float]:
        """Throughput over errors, then the random tiebreak: higher is better."""
        rate = state.rate if state.rate is not None else self._config.default_rate
        return (rate / (1 + state.errors), state.tiebreak)

    def capacity(self, state: PeerState, mirror_usable: bool) -> int:
        """Requests a peer may have in flight: one while it is slow and the mirror can help."""
        if state.slow and mirror_usable:
            return 1
        return self._config.max_requests_per_peer

    def tick(self, now: float) -> None:
        """Mark requests overdue (and their peers slow); end "busy" back-offs that are over."""
        idle = []
        for peer, state in self._active.items():
            for index, request in state.inflight.items():
                if not request.overdue and request.deadline <= now:
                    request.overdue = True
                    state.slow = True
                    self.sample_rate(state, index, now - request.start)
            if 0.0 < state.busy_until <= now:
                state.busy_until = 0.0
            if not state.inflight and state.busy_until == 0.0:
                idle.append(peer)
        for peer in idle:
            del self._active[peer]

    def deadlines(self) -> list[float]:
        """Request deadlines, and the ends of "busy" back-offs that tick() has not handled yet,
        passed or not (else a wake-up that comes late would lose them)."""
        active = self._active.values()
        deadlines = [
            request.deadline
            for state in active
            for request in state.inflight.values()
            if not request.overdue
        ]
        return deadlines + [s.busy_until for s in active if s.busy_until > 0.0]

    def busy(self, now: float) -> bool:
        """Some peer is in a "busy" back-off now."""
        return any(s.busy_until > now for s in self._active.values())

    # ------------------------------------------------------------ piece lists

    def lists_pending(self) -> bool:
        """Some admitted peer's piece list was asked for and has not come (PeerState.list_state
        changes only through this table)."""
        return bool(self._lists_pending)

    def not_asked(self) -> list[PeerState]:
        return [s for s in self._peers.values() if s.list_state is ListState.NOT_ASKED]
