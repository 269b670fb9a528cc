"""The parts of the swarm scheduling core on their own: the peer table, the crowd's offers, the
list trust, the accepted pieces and the mirror plan, each driven by hand with `now` passed in.

Pieces are 1000 bytes here; a "piece" is its SHA256. The scheduler as a whole is tested in
test_scheduler.py and test_scheduler_crowd.py.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from dhtdeb.discovery import Peer
from dhtdeb.swarm.actions import (
    AUDIT_BLOCK,
    AuditPiece,
    MirrorWindow,
    ReadMirrorPiece,
    SchedulerConfig,
    StartMirror,
    StopMirror,
)
from dhtdeb.swarm.list_trust import ListTrust
from dhtdeb.swarm.mirror_plan import MirrorPlan, next_window, window_end
from dhtdeb.swarm.offers import Crowd, PieceVerdict
from dhtdeb.swarm.peer_table import PeerTable
from dhtdeb.swarm.pieces import PieceList, piece_span
from dhtdeb.swarm.progress import Progress
from dhtdeb.swarm.rendezvous import Rendezvous

PS = 1000
N = 4
A = Peer("10.0.0.1", 9978)
B = Peer("10.0.0.2", 9978)
C = Peer("10.0.0.3", 9978)
CONFIG = SchedulerConfig()


def _digest(tag: str) -> bytes:
    return hashlib.sha256(tag.encode()).digest()


TRUE = [_digest(f"piece {i}") for i in range(N)]
TRUE_LIST = PieceList(N * PS, tuple(TRUE), PS)
FALSE_LIST = PieceList(N * PS, (*TRUE[:2], _digest("lie"), TRUE[3]), PS)


def _span(index: int) -> tuple[int, int]:
    return piece_span(index, N * PS, PS)


class Verdicts:
    """Records the list trust's verdicts in order."""

    def __init__(self) -> None:
        self.done: list[tuple[str, object]] = []

    def ban(self, peer: Peer, reason: str, *, lied: bool) -> None:
        self.done.append(("ban" if lied else "ban, no lie", peer))

    def set_aside(self, peer: Peer) -> None:
        self.done.append(("set aside", peer))

    def accept(self, index: int) -> None:
        self.done.append(("accept", index))


def _table(*peers: Peer) -> PeerTable:
    table = PeerTable(CONFIG, _span)
    table.admit(peers, random.Random(0))
    return table


# ------------------------------------------------------------------ peer table


def test_peer_table_admits_within_its_bound_and_never_an_excluded_peer() -> None:
    table = PeerTable(SchedulerConfig(max_peers=2), _span)
    assert table.admit([A, B, C], random.Random(0)) == [A, B]
    assert len(table) == 2 and table.seen
    table.remove(A)
    table.exclude(A, banned=True)
    assert table.admit([A, C], random.Random(0)) == [C]
    assert table.is_banned(A) and not table.is_banned(C)


def test_peer_table_request_deadline_overdue_and_rate() -> None:
    table = _table(A)
    state = table.get(A)
    assert state is not None
    table.request(state, 0, now=10.0)
    # 1000 bytes at the default 4 MiB/s is far under the minimum timeout.
    assert table.deadlines() == [10.0 + CONFIG.min_piece_timeout]
    assert table.live_request(0) and table.requesters(0) == [A]
    table.tick(now=10.0 + CONFIG.min_piece_timeout)
    assert state.slow and not table.live_request(0) and table.overdue() == [0]
    assert state.rate == 1000 / CONFIG.min_piece_timeout
    assert table.capacity(state, mirror_usable=True) == 1
    assert table.capacity(state, mirror_usable=False) == CONFIG.max_requests_per_peer
    request = table.take_request(A, 0)
    assert request is not None and request.overdue
    assert not table.any_requests() and table.deadlines() == []


def test_first_requests_to_a_peer_get_the_time_a_home_uplink_needs() -> None:
    """Before a peer has delivered, its deadlines assume `first_request_rate` (a 1 MiB piece:
    4 s); afterwards, its own measured pace (here 8 MiB/s: the 2 s floor)."""
    mib = 1024 * 1024
    table = PeerTable(CONFIG, lambda index: piece_span(index, 4 * mib, mib))
    table.admit([A], random.Random(0))
    state = table.get(A)
    assert state is not None
    table.request(state, 0, now=0.0)
    first = CONFIG.overdue_factor * mib / CONFIG.first_request_rate
    assert first == 4.0 and table.deadlines() == [first]
    table.tick(now=first - 0.01)
    assert not state.slow and table.live_request(0)
    request = table.take_request(A, 0)
    assert request is not None
    table.delivered(state, 0, request, now=0.125)
    table.request(state, 1, now=1.0)
    assert table.deadlines() == [1.0 + CONFIG.min_piece_timeout]


def test_peer_table_assigns_lowest_pieces_to_the_best_ranked_holder() -> None:
    table = _table(A, B)
    a, b = table.get(A), table.get(B)
    assert a is not None and b is not None
    a.rate, b.rate = 1.0, 2.0
    a.have = frozenset({0, 1})
    made = table.assign(
        0.0,
        may_serve=lambda s: True,
        assignable=lambda i: not table.live_request(i),
        ahead=range(N),
        mirror_usable=True,
    )
    # B ranks first and holds everything: it takes as many as it may, A gets nothing left.
    assert made == [(B, 0), (B, 1), (B, 2), (B, 3)]


def test_peer_table_gives_a_slow_peer_one_piece_from_the_top() -> None:
    table = _table(A)
    state = table.get(A)
    assert state is not None
    state.slow = True
    made = table.assign(
        0.0,
        may_serve=lambda s: True,
        assignable=lambda i: True,
        ahead=range(1, N),
        mirror_usable=True,
    )
    assert made == [(A, 3)]  # one request only, and from the top, away from the mirror stream


# ----------------------------------------------------------------- the crowd


def _crowd(*peers: Peer) -> Crowd:
    crowd = Crowd(CONFIG, N)
    for peer in peers:
        crowd.admit(peer)
    return crowd


def _offer(
    crowd: Crowd,
    peer: Peer,
    have: set[int],
    *,
    relayed: frozenset[int] = frozenset(),
    digests: PieceList = TRUE_LIST,
    now: float = 0.0,
) -> int | None:
    return crowd.take_offers(
        peer, digests, frozenset(have), range(0), relayed, now, truth=lambda i: None, wrong={}
    )


def test_crowd_an_offer_that_changes_is_a_contradiction() -> None:
    crowd = _crowd(A)
    assert _offer(crowd, A, {2}) is None and crowd.is_downloading(A)
    assert _offer(crowd, A, {2}, digests=FALSE_LIST) == 2
    assert crowd.refresh_deadlines() == [CONFIG.offers_refresh]
    assert crowd.due_refreshes(CONFIG.offers_refresh) == [A]
    assert crowd.refresh_deadlines() == []


def test_crowd_a_relay_is_usable_only_where_a_downloader_offered_the_same() -> None:
    crowd = _crowd(A, B)
    _offer(crowd, A, {0})
    _offer(crowd, B, {0, 1}, relayed=frozenset({0, 1}))
    assert crowd.servable(lambda p: True) == {A: frozenset({0}), B: frozenset({0})}
    verdict = crowd.judge(B, 0, TRUE[0], None, lambda p: True)
    assert verdict == PieceVerdict(author=A)
    assert crowd.judge(B, 0, _digest("other"), None, lambda p: True).lie
    # The relay's copy was replaced by the mirror's: no lie, and it relays it no more.
    mended = crowd.judge(B, 1, _digest("mirror's"), _digest("mirror's"), lambda p: True)
    assert mended == PieceVerdict(mended=True)
    assert crowd.servable(lambda p: True)[B] == frozenset({0})


def test_crowd_fetch_claims_expire() -> None:
    crowd = _crowd(A)
    crowd.take_offers(
        A, TRUE_LIST, frozenset(), range(2, 3), frozenset(), 5.0, truth=lambda i: None, wrong={}
    )
    assert crowd.fresh_claims(A, 5.0) == [2] and crowd.any_fetching(5.0)
    assert crowd.fetched(5.0 + CONFIG.fetch_claim_ttl, lambda p: True) == set()


# ------------------------------------------------------------------ list trust


def _trust(*peers: Peer) -> tuple[ListTrust, Verdicts]:
    verdicts = Verdicts()
    return ListTrust(verdicts, _table(*peers), None), verdicts


def test_list_trust_second_author_corroborates_and_held_pieces_are_accepted() -> None:
    trust, verdicts = _trust(A, B)
    trust.add_claim(A, TRUE_LIST)
    trust.peer_piece(A, 1)  # an author's piece: held, no voucher
    trust.settle(mirror_usable=True)
    assert not trust.final and trust.is_held(1)
    trust.add_claim(B, TRUE_LIST)
    trust.settle(mirror_usable=True)
    assert trust.final and verdicts.done == [("accept", 1)]


def test_list_trust_the_mirror_refutes_a_lying_list() -> None:
    trust, verdicts = _trust(A, B)
    trust.add_claim(A, FALSE_LIST)
    trust.add_claim(B, TRUE_LIST)
    assert trust.referee_indices(lambda i: False) == {2}
    trust.mirror_piece(2, TRUE[2])
    assert verdicts.done == [("ban", A)]
    assert trust.in_use == TRUE_LIST and trust.truth(2) == TRUE[2]


def test_list_trust_without_a_mirror_a_disputed_piece_sets_its_sender_aside() -> None:
    trust, verdicts = _trust(A, B)
    trust.add_claim(A, TRUE_LIST)
    trust.peer_contradicts(B, 0, _digest("other"), mirror_usable=False)
    assert verdicts.done == [("set aside", B)]


def test_list_trust_audits_a_random_block_of_a_held_peer_piece() -> None:
    trust, _ = _trust(A, B)
    trust.add_claim(A, TRUE_LIST)
    trust.peer_piece(B, 3)  # a voucher's piece
    audit = trust.start_audit(random.Random(0), _span)
    assert isinstance(audit, AuditPiece) and audit.index == 3
    assert 3000 <= audit.start < audit.end <= 4000 and audit.end - audit.start <= AUDIT_BLOCK
    assert trust.auditing and trust.start_audit(random.Random(0), _span) is None
    claim = trust.end_audit(3)
    assert claim is not None and not trust.auditing


def test_list_trust_asks_the_best_ranked_peers_for_lists() -> None:
    trust, _ = _trust(A, B, C)
    asked = trust.lists_to_ask(2, mirror_usable=True, downloading=lambda p: False)
    assert len(asked) == 2 and not trust.lists_to_ask(2, True, lambda p: False)


# ------------------------------------------------------------ accepted pieces


def test_progress_tracks_the_lowest_missing_piece() -> None:
    progress = Progress(N)
    assert progress.accept(1) and not progress.accept(1)
    assert progress.low == 0 and list(progress.missing()) == [0, 2, 3]
    progress.accept(0)
    assert progress.low == 2 and progress.ahead() == range(2, N)
    assert progress.retract(0) and progress.low == 0 and progress.count == 1
    for i in range(N):
        progress.accept(i)
    assert progress.complete


# ----------------------------------------------------------------- mirror plan


def _plan(*peers: Peer, node: bytes = b"") -> tuple[MirrorPlan, PeerTable, ListTrust, Progress]:
    table = _table(*peers)
    crowd = Crowd(CONFIG, N)
    for peer in peers:
        crowd.admit(peer)
    trust = ListTrust(Verdicts(), table, None)
    progress = Progress(N)
    plan = MirrorPlan(
        CONFIG,
        available=True,
        node=node,
        rendezvous=Rendezvous(_digest("whole file")),
        rng=random.Random(0),
        peers=table,
        crowd=crowd,
        trust=trust,
        progress=progress,
    )
    return plan, table, trust, progress


def test_mirror_plan_waits_for_the_lookup_then_takes_what_nobody_has() -> None:
    plan, _, _, progress = _plan()
    assert plan.start(0.0) is None  # no peer seen, lookup not over
    plan.deadline_passed = True
    assert plan.start(0.0) == StartMirror(0)
    assert plan.active and plan.claim == 0 and plan.start(0.0) is None
    progress.accept(0)
    plan.piece_done(0)
    assert plan.continue_into(1, 0.0) and plan.claim == 1


def test_mirror_plan_streams_in_windows_that_double() -> None:
    plan, _, _, progress = _plan()
    plan.deadline_passed = True
    assert plan.start(0.0) == StartMirror(0)
    assert plan.next_request(0, 0.0, done=False) == MirrorWindow(0, 0)
    with pytest.raises(ValueError):
        plan.piece_starting(1, PS, 0.0, done=False)  # not in the request
    plan.whole_file()  # the mirror ignored the range: its answer runs to the file's end
    step = plan.piece_starting(0, PS, 0.0, done=False)
    assert step == ReadMirrorPiece(0, going_on=True) and step.fetching == range(0, 2)
    assert step.watch == PS // 2
    progress.accept(0)
    plan.piece_done(0)
    assert plan.next_request(1, 0.0, done=False) == MirrorWindow(1, 2)  # twice as long
    assert plan.piece_starting(1, PS, 0.0, done=False) == ReadMirrorPiece(1, going_on=True)
    progress.accept(1)
    plan.piece_done(1)
    assert plan.piece_starting(2, PS, 0.0, done=True) == StopMirror()
    assert plan.piece_progress(2, 0, PS, 0.0, done=False) is None  # no id: never given up
    assert plan.next_request(4, 0.0, done=False) == StopMirror()  # past the file


def test_mirror_plan_referees_a_rival_list_first() -> None:
    plan, table, trust, _ = _plan(A, B)
    for peer in (A, B):
        state = table.get(peer)
        assert state is not None
        table.took_list(state, None, N)
    trust.add_claim(A, FALSE_LIST)
    trust.add_claim(B, TRUE_LIST)
    start = plan.start(0.0)
    assert start == StartMirror(2) and start.why == "referee"


def test_mirror_plan_stops_being_usable_after_its_restarts() -> None:
    plan, _, _, _ = _plan()
    for _ in range(CONFIG.max_mirror_restarts + 1):
        plan.failed("503")
    assert not plan.usable() and plan.last_error == "503" and plan.last_resort_piece() is None


def test_mirror_plan_busy_pieces_go_overdue() -> None:
    plan, _, _, _ = _plan(A)
    plan.busy(1, 3.0)
    assert plan.deadlines() == [3.0 + CONFIG.busy_overdue]
    plan.tick(3.0 + CONFIG.busy_overdue)
    assert plan.deadlines() == []
    start = plan.start(20.0)
    assert start == StartMirror(1) and start.why == "peers busy"


def test_mirror_windows_double_and_stop_before_accepted_pieces() -> None:
    assert [next_window(w) for w in (1, 2, 32, 64)] == [2, 4, 64, 64]
    assert window_end(0, 1, 10, lambda i: False) == 0
    assert window_end(2, 8, 10, lambda i: False) == 9  # the file's end
    assert window_end(2, 8, 10, lambda i: i == 6) == 5  # not into an accepted piece
