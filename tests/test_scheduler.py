"""The swarm scheduling core, driven by hand (exact actions) and by a seeded simulated network.

Pieces are 1000 bytes here so that the arithmetic is readable; the core never looks at bytes, only
at digests, so a "piece" is its SHA256.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import random
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from dhtdeb.clock import ManualClock
from dhtdeb.discovery import Peer
from dhtdeb.swarm.pieces import PIECE_SIZE, PieceList
from dhtdeb.swarm.scheduler import (
    AUDIT_BLOCK,
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
    MirrorWindow,
    ReadMirrorPiece,
    RequestPiece,
    RequestPieceList,
    RetractPiece,
    SchedulerConfig,
    StartMirror,
    SwarmScheduler,
)

PS = 1000
A = Peer("10.0.0.1", 9978)
B = Peer("10.0.0.2", 9978)
C = Peer("10.0.0.3", 9978)


def _digest(tag: str) -> bytes:
    return hashlib.sha256(tag.encode()).digest()


class Harness:
    """One file of `n` pieces and a scheduler for it, on a manual clock."""

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        mirror: bool = True,
        last: int = PS,
        config: SchedulerConfig | None = None,
        node: bytes = b"",
    ) -> None:
        self.n = n
        self.size = (n - 1) * PS + last
        self.true = [_digest(f"piece {i}") for i in range(n)]
        sha = self.true[0].hex() if n == 1 else _digest("whole file").hex()
        self.clock = ManualClock()
        self.s = SwarmScheduler(
            sha,
            self.size,
            rng=random.Random(seed),
            config=config or SchedulerConfig(),
            mirror_available=mirror,
            piece_size=PS,
            node=node,
        )
        self.sha = sha

    @property
    def now(self) -> float:
        return self.clock.now()

    def pieces(self, lies: dict[int, bytes] | None = None) -> PieceList:
        digests = list(self.true)
        for index, digest in (lies or {}).items():
            digests[index] = digest
        return PieceList(self.size, tuple(digests), PS)

    def pop(self) -> list[Action]:
        return self.s.poll_actions()

    def deliver(self, source: Peer | MirrorSource, index: int) -> list[Action]:
        self.s.piece_received(source, index, self.true[index], now=self.clock.now())
        return self.pop()

    def mirror_goes_on(self, index: int) -> bool:
        """The mirror stream, done with the piece before `index`, is ready for a request from
        it: whether it goes on (claiming `index`)."""
        return isinstance(self.s.mirror_stream_ready(index, now=self.now), MirrorWindow)

    def mirror_gives_up(self, index: int) -> bool:
        """No byte of piece `index` has come from the stream yet: whether it gives it up."""
        answer = self.s.mirror_piece_progress(index, 0, now=self.now)
        return isinstance(answer, GiveUpMirrorPiece)


BAD = _digest("not the piece")


def test_one_piece_from_a_peer() -> None:
    h = Harness(1, last=500)
    h.s.peers_found([A], now=h.now)
    assert h.pop() == [RequestPiece(A, 0)]
    h.s.lookup_deadline_passed(now=h.now)
    assert h.pop() == []
    assert h.deliver(A, 0) == [AcceptPiece(0), Finished()]
    assert h.s.finished and h.s.accepted == 1 and h.s.failed is None
    assert h.s.next_deadline() is None
    h.s.peers_found([B], now=h.now)
    h.s.lookup_deadline_passed(now=h.now)
    assert h.pop() == []


def test_one_piece_lying_peer_is_banned_and_the_mirror_serves() -> None:
    h = Harness(1, last=500)
    h.s.peers_found([A], now=h.now)
    assert h.pop() == [RequestPiece(A, 0)]
    h.s.piece_received(A, 0, BAD, now=h.now)
    assert h.pop() == [BanPeer(A, "piece 0 does not match the piece list", True)]
    # The race is not over yet: wait for the lookup rather than go to the mirror.
    assert h.pop() == []
    h.s.peers_found([A], now=h.now)
    assert h.pop() == []
    h.s.lookup_deadline_passed(now=h.now)
    assert h.pop() == [StartMirror(0)]
    assert h.deliver(MIRROR, 0) == [AcceptPiece(0), Finished()]


def test_one_piece_mirror_must_match_the_signed_hash() -> None:
    h = Harness(1, last=500)
    h.s.lookup_deadline_passed(now=h.now)
    assert h.pop() == [StartMirror(0)]
    h.s.piece_received(MIRROR, 0, BAD, now=h.now)
    h.s.mirror_stopped(None, now=h.now)
    assert h.pop() == [Failed("no source left for the missing pieces")]
    assert not h.s.is_accepted(0)


def test_multi_piece_single_peer_list_is_audited_with_one_block_from_the_mirror() -> None:
    h = Harness(6)
    h.s.peers_found([A], now=h.now)
    assert h.pop() == [RequestPieceList(A)]
    h.s.piece_list_received(A, h.pieces(), None, now=h.now)
    # The peer takes the pieces apt needs first; the mirror is not asked for a whole piece.
    assert h.pop() == [RequestPiece(A, i) for i in (0, 1, 2, 3)]
    h.clock.advance(0.1)
    # Held, not accepted: a block of it (here the whole 1000-byte piece) goes to the audit.
    assert h.deliver(A, 0) == [AuditPiece(0, 0, PS, h.true[0]), RequestPiece(A, 4)]
    assert not h.s.is_accepted(0) and not h.s.list_corroborated
    rate = h.s.peer_rate(A)
    assert rate is not None and rate == pytest.approx(PS / 0.1)
    assert h.deliver(A, 1) == [RequestPiece(A, 5)]  # one audit at a time
    h.s.audit_result(0, matched=True, now=h.now)
    assert h.pop() == [AcceptPiece(0), AcceptPiece(1)]
    assert h.s.list_corroborated
    for i in (2, 3, 4):
        assert h.deliver(A, i) == [AcceptPiece(i)]
    assert h.deliver(A, 5) == [AcceptPiece(5), Finished()]


def test_audit_block_is_random_and_inside_the_piece() -> None:
    size = 3 * PIECE_SIZE + 5000
    true = [_digest(f"big {i}") for i in range(4)]
    seen = set()
    for seed in range(20):
        s = SwarmScheduler(_digest("big").hex(), size, rng=random.Random(seed))
        s.peers_found([A], now=0.0)
        s.piece_list_received(A, PieceList(size, tuple(true)), None, now=0.0)
        s.poll_actions()
        s.piece_received(A, 2, true[2], now=0.0)
        audit = next(a for a in s.poll_actions() if isinstance(a, AuditPiece))
        assert audit.index == 2 and audit.digest == true[2]
        assert 2 * PIECE_SIZE <= audit.start < audit.end <= 3 * PIECE_SIZE
        assert audit.end - audit.start == AUDIT_BLOCK
        seen.add(audit.start)
    assert len(seen) > 10


def test_a_failed_audit_bans_the_list_author_and_the_mirror_takes_over() -> None:
    h = Harness(3, config=SchedulerConfig(max_requests_per_peer=1))
    h.s.peers_found([A], now=h.now)
    h.s.lookup_deadline_passed(now=h.now)
    assert h.pop() == [RequestPieceList(A)]
    lies = {i: _digest(f"lie {i}") for i in range(3)}
    h.s.piece_list_received(A, h.pieces(lies), None, now=h.now)
    assert h.pop() == [RequestPiece(A, 0)]
    h.s.piece_received(A, 0, lies[0], now=h.now)  # A's piece matches A's list
    assert h.pop() == [AuditPiece(0, 0, PS, lies[0]), RequestPiece(A, 1)]
    h.s.audit_result(0, matched=False, now=h.now)
    assert h.pop() == [
        BanPeer(A, "piece list contradicted by the mirror inside piece 0", True),
        StartMirror(0),
    ]
    assert not h.s.is_accepted(0)
    for i in range(2):
        assert h.deliver(MIRROR, i) == [AcceptPiece(i)]
        assert h.mirror_goes_on(i + 1)
    assert h.deliver(MIRROR, 2) == [AcceptPiece(2), Finished()]


def test_mirror_errors_on_audits_count_like_stream_errors() -> None:
    h = Harness(3, config=SchedulerConfig(max_requests_per_peer=1, max_mirror_restarts=0))
    h.s.peers_found([A], now=h.now)
    h.s.lookup_deadline_passed(now=h.now)
    h.s.piece_list_received(A, h.pieces(), None, now=h.now)
    assert h.pop() == [RequestPieceList(A), RequestPiece(A, 0)]
    assert h.deliver(A, 0) == [AuditPiece(0, 0, PS, h.true[0]), RequestPiece(A, 1)]
    h.s.audit_failed("mirror answered HTTP 500", now=h.now)
    # No referee left: the lone list is accepted as a last resort once A has delivered all.
    assert h.pop() == []
    assert h.deliver(A, 1) == [RequestPiece(A, 2)]
    assert h.deliver(A, 2) == [AcceptPiece(0), AcceptPiece(1), AcceptPiece(2), Finished()]
    assert not h.s.list_corroborated


def test_two_agreeing_peers_need_no_mirror_traffic() -> None:
    h = Harness(8)
    seen: list[Action] = []
    h.s.peers_found([A, B], now=h.now)
    first = h.pop()
    assert sorted(first, key=repr) == [RequestPieceList(A), RequestPieceList(B)]
    h.s.piece_list_received(A, h.pieces(), None, now=h.now)
    assert h.pop() == [RequestPiece(A, i) for i in range(4)]
    h.s.lookup_deadline_passed(now=h.now)
    assert h.pop() == []
    h.s.piece_list_received(B, h.pieces(), None, now=h.now)
    assert h.pop() == [RequestPiece(B, i) for i in range(4, 8)]
    assert h.s.list_corroborated
    for i in range(8):
        seen += h.deliver(A if i < 4 else B, i)
    assert seen == [*(AcceptPiece(i) for i in range(8)), Finished()]


def test_conflicting_lists_are_refereed_by_the_mirror_honest_first() -> None:
    h = Harness(6)
    h.s.peers_found([A, B], now=h.now)
    h.pop()
    h.s.piece_list_received(A, h.pieces(), None, now=h.now)
    assert h.pop() == [RequestPiece(A, i) for i in range(4)]
    h.s.piece_list_received(B, h.pieces({2: BAD}), None, now=h.now)
    assert h.pop() == [StartMirror(2)]
    assert h.deliver(A, 0) == [RequestPiece(A, 4)]  # held while the lists disagree
    assert not h.s.is_accepted(0)
    assert h.deliver(MIRROR, 2) == [
        BanPeer(B, "piece list contradicted by the mirror", True),
        CancelPiece(A, 2),
        AcceptPiece(0),
        AcceptPiece(2),
        RequestPiece(A, 5),
    ]
    assert h.mirror_goes_on(3) is False


def test_conflicting_lists_are_refereed_by_the_mirror_liar_first() -> None:
    h = Harness(6)
    h.s.peers_found([A, B], now=h.now)
    h.pop()
    h.s.piece_list_received(B, h.pieces({2: BAD, 4: BAD}), None, now=h.now)
    assert h.pop() == [RequestPiece(B, i) for i in range(4)]
    h.s.piece_list_received(A, h.pieces(), None, now=h.now)
    assert h.pop() == [StartMirror(2)]
    assert h.deliver(B, 0) == [RequestPiece(B, 4)]  # held under B's list
    assert h.deliver(MIRROR, 2) == [
        BanPeer(B, "piece list contradicted by the mirror", True),
        AcceptPiece(2),
        *(RequestPiece(A, i) for i in (0, 1, 3, 4)),
    ]
    # What B delivered under its list was held, never accepted, and is fetched again.
    assert not h.s.is_accepted(0)


def test_bad_piece_after_corroboration_bans_and_refetches_elsewhere() -> None:
    h = Harness(4, config=SchedulerConfig(max_requests_per_peer=2))
    h.s.peers_found([A, B], now=h.now)
    h.pop()
    h.s.piece_list_received(A, h.pieces(), None, now=h.now)
    h.s.piece_list_received(B, h.pieces(), None, now=h.now)
    assert h.pop() == [
        RequestPiece(A, 0),
        RequestPiece(A, 1),
        RequestPiece(B, 2),
        RequestPiece(B, 3),
    ]
    h.s.piece_received(A, 0, BAD, now=h.now)
    assert h.pop() == [BanPeer(A, "piece 0 does not match the piece list", True)]
    assert h.deliver(B, 2) == [AcceptPiece(2), RequestPiece(B, 0)]
    assert h.deliver(B, 3) == [AcceptPiece(3), RequestPiece(B, 1)]
    h.s.piece_received(A, 1, h.true[1], now=h.now)  # a banned peer's late answer counts for nothing
    assert h.pop() == []
    assert h.deliver(B, 0) == [AcceptPiece(0)]
    assert h.deliver(B, 1) == [AcceptPiece(1), Finished()]


def test_mirror_piece_contradicting_the_corroborated_list_is_refetched_from_a_peer() -> None:
    h = Harness(2, config=SchedulerConfig(max_requests_per_peer=1))
    h.s.peers_found([A, B], now=h.now)
    h.pop()
    h.s.piece_list_received(A, h.pieces(), None, now=h.now)
    h.s.piece_list_received(B, h.pieces(), None, now=h.now)
    assert h.pop() == [RequestPiece(A, 0), RequestPiece(B, 1)]
    h.clock.advance(2.0)
    h.s.tick(now=h.now)
    assert h.pop() == [StartMirror(0)]  # both overdue; the lowest goes to the web seed
    h.s.piece_received(MIRROR, 0, BAD, now=h.now)
    assert h.pop() == []  # not accepted, nobody banned: the driver counts a mirror failure
    assert h.mirror_goes_on(1) is True  # B's request is overdue too
    assert h.deliver(MIRROR, 1) == [CancelPiece(B, 1), AcceptPiece(1), RequestPiece(B, 0)]
    h.s.mirror_stopped(None, now=h.now)
    assert h.pop() == []  # the refused piece never goes back to the mirror
    assert h.deliver(B, 0) == [CancelPiece(A, 0), AcceptPiece(0), Finished()]


def test_overdue_piece_goes_to_the_mirror_web_seed_and_the_slow_peer_is_cancelled() -> None:
    h = Harness(1, last=800)
    h.s.peers_found([A], now=h.now)
    assert h.pop() == [RequestPiece(A, 0)]
    assert h.s.next_deadline() == 2.0  # min_piece_timeout beats 4 * 800 B / 4 MiB/s
    h.clock.advance(1.5)
    h.s.tick(now=h.now)
    assert h.pop() == []
    h.clock.advance(0.5)
    h.s.tick(now=h.now)
    assert h.pop() == [StartMirror(0)]
    assert h.s.next_deadline() is None
    rate = h.s.peer_rate(A)
    assert rate is not None and rate < SchedulerConfig().default_rate
    assert h.deliver(MIRROR, 0) == [CancelPiece(A, 0), AcceptPiece(0), Finished()]


def test_overdue_without_mirror_is_requested_from_another_peer() -> None:
    h = Harness(3, mirror=False, config=SchedulerConfig(max_requests_per_peer=2))
    h.s.peers_found([A, B], now=h.now)
    h.pop()
    h.s.piece_list_received(A, h.pieces(), None, now=h.now)
    h.s.piece_list_received(B, h.pieces(), None, now=h.now)
    assert h.pop() == [RequestPiece(A, 0), RequestPiece(A, 1), RequestPiece(B, 2)]
    h.clock.advance(1.0)
    assert h.deliver(B, 2) == [AcceptPiece(2)]  # B's free slots: nothing unclaimed yet
    h.clock.advance(1.0)
    h.s.tick(now=h.now)
    assert h.pop() == [RequestPiece(B, 0), RequestPiece(B, 1)]
    assert h.deliver(B, 0) == [CancelPiece(A, 0), AcceptPiece(0)]
    assert h.deliver(A, 1) == [CancelPiece(B, 1), AcceptPiece(1), Finished()]
    rate_a, rate_b = h.s.peer_rate(A), h.s.peer_rate(B)
    assert rate_a is not None and rate_b is not None and rate_a < rate_b


def test_no_peers_means_one_mirror_stream_for_the_whole_file() -> None:
    h = Harness(5, last=10)
    h.s.peers_found([], now=h.now)
    assert h.pop() == []  # before the lookup deadline nothing goes to the mirror
    h.s.lookup_deadline_passed(now=h.now)
    assert h.pop() == [StartMirror(0)]
    for i in range(4):
        assert h.deliver(MIRROR, i) == [AcceptPiece(i)]
        assert h.mirror_goes_on(i + 1) is True
    assert h.deliver(MIRROR, 4) == [AcceptPiece(4), Finished()]
    h.s.mirror_stopped(None, now=h.now)
    assert h.pop() == []


def test_peers_found_mid_stream_take_over_and_the_mirror_stops_at_a_claimed_piece() -> None:
    h = Harness(8)
    h.s.lookup_deadline_passed(now=h.now)
    assert h.pop() == [StartMirror(0)]
    assert h.deliver(MIRROR, 0) == [AcceptPiece(0)]
    assert h.mirror_goes_on(1)
    assert h.deliver(MIRROR, 1) == [AcceptPiece(1)]
    assert h.mirror_goes_on(2)
    h.s.peers_found([A], now=h.now)
    assert h.pop() == [RequestPieceList(A)]
    # The list agrees with the two mirror pieces already accepted: corroborated at once.
    h.s.piece_list_received(A, h.pieces(), None, now=h.now)
    assert h.pop() == [RequestPiece(A, i) for i in (3, 4, 5, 6)]
    assert h.s.list_corroborated
    assert h.deliver(MIRROR, 2) == [AcceptPiece(2)]
    assert h.mirror_goes_on(3) is False
    h.s.mirror_stopped(None, now=h.now)
    assert h.pop() == []
    assert h.deliver(A, 3) == [AcceptPiece(3), RequestPiece(A, 7)]
    for i in (4, 5, 6):
        assert h.deliver(A, i) == [AcceptPiece(i)]
    assert h.deliver(A, 7) == [AcceptPiece(7), Finished()]


def test_a_late_list_contradicting_accepted_mirror_pieces_bans_its_author() -> None:
    h = Harness(4)
    h.s.lookup_deadline_passed(now=h.now)
    assert h.pop() == [StartMirror(0)]
    assert h.deliver(MIRROR, 0) == [AcceptPiece(0)]
    assert h.mirror_goes_on(1)
    h.s.peers_found([A], now=h.now)
    assert h.pop() == [RequestPieceList(A)]
    h.s.piece_list_received(A, h.pieces({0: BAD}), None, now=h.now)
    assert h.pop() == [BanPeer(A, "piece list contradicted by the mirror at 0", True)]
    assert h.deliver(MIRROR, 1) == [AcceptPiece(1)]
    assert h.mirror_goes_on(2)


def test_partial_peers_have_sets_and_not_held() -> None:
    h = Harness(6)
    h.s.peers_found([A, B], now=h.now)
    h.pop()
    h.s.piece_list_received(A, h.pieces(), frozenset({0, 1, 2, 99}), now=h.now)
    assert h.pop() == [RequestPiece(A, i) for i in (0, 1, 2)]
    h.s.piece_list_received(B, h.pieces(), frozenset({2, 3, 4, 5}), now=h.now)
    assert h.pop() == [RequestPiece(B, i) for i in (3, 4, 5)]
    h.s.piece_failed(B, 3, "416 not held", False, now=h.now)
    assert h.pop() == []  # nobody else holds 3, and the lookup race is still on
    h.s.lookup_deadline_passed(now=h.now)
    assert h.pop() == [StartMirror(3)]
    assert h.deliver(MIRROR, 3) == [AcceptPiece(3)]
    assert h.mirror_goes_on(4) is False  # B is fetching it
    h.s.mirror_stopped(None, now=h.now)
    assert h.pop() == []
    for i in (0, 1, 2, 4):
        assert h.deliver(A if i < 3 else B, i) == [AcceptPiece(i)]
    assert h.deliver(B, 5) == [AcceptPiece(5), Finished()]


def test_all_peers_banned_the_mirror_takes_over() -> None:
    h = Harness(4)
    h.s.peers_found([A, B], now=h.now)
    h.pop()
    h.s.piece_list_received(A, h.pieces(), None, now=h.now)
    h.s.piece_list_received(B, h.pieces(), None, now=h.now)
    h.s.lookup_deadline_passed(now=h.now)
    assert h.pop() == [RequestPiece(A, i) for i in range(4)]
    h.s.piece_failed(A, 0, "endless body", True, now=h.now)
    assert h.pop() == [BanPeer(A, "endless body", False), *(RequestPiece(B, i) for i in range(4))]
    h.s.piece_received(B, 1, BAD, now=h.now)
    assert h.pop() == [
        BanPeer(B, "piece 1 does not match the piece list", True),
        StartMirror(0),
    ]
    for i in range(3):
        assert h.deliver(MIRROR, i) == [AcceptPiece(i)]
        assert h.mirror_goes_on(i + 1)
    assert h.deliver(MIRROR, 3) == [AcceptPiece(3), Finished()]


def test_failed_list_requests_ask_other_peers_then_the_mirror() -> None:
    h = Harness(3, config=SchedulerConfig(piece_lists_wanted=1))
    h.s.peers_found([A, B], now=h.now)
    (asked,) = h.pop()
    assert isinstance(asked, RequestPieceList)
    other = B if asked.peer == A else A
    h.s.piece_list_failed(asked.peer, "404", False, now=h.now)
    assert h.pop() == [RequestPieceList(other)]
    h.s.piece_list_failed(other, "piece list of 17 bytes", True, now=h.now)
    assert h.pop() == [BanPeer(other, "piece list of 17 bytes", False)]
    h.s.lookup_deadline_passed(now=h.now)
    assert h.pop() == [StartMirror(0)]


def test_no_mirror_and_no_peers_fails_once() -> None:
    h = Harness(3, mirror=False)
    h.s.peers_found([], now=h.now)
    assert h.pop() == []
    h.s.lookup_deadline_passed(now=h.now)
    assert h.pop() == [Failed("no peer has the file and no mirror is available")]
    assert h.s.failed == "no peer has the file and no mirror is available"
    h.s.lookup_deadline_passed(now=h.now)
    h.s.peers_found([A], now=h.now)
    h.s.whole_file_failed(now=h.now)
    assert h.pop() == []


def test_mirror_errors_allow_two_restarts() -> None:
    h = Harness(3)
    h.s.lookup_deadline_passed(now=h.now)
    assert h.pop() == [StartMirror(0)]
    assert h.deliver(MIRROR, 0) == [AcceptPiece(0)]
    assert h.mirror_goes_on(1)
    h.s.piece_failed(MIRROR, 1, "connection reset", False, now=h.now)
    h.s.mirror_stopped("connection reset", now=h.now)
    assert h.pop() == [StartMirror(1)]
    h.s.mirror_stopped("503", now=h.now)
    assert h.pop() == [StartMirror(1)]
    h.s.mirror_stopped("503", now=h.now)
    assert h.pop() == [Failed("no usable peer left and the mirror failed: 503")]


def test_whole_file_failure_bans_author_and_voucher() -> None:
    h = Harness(3, config=SchedulerConfig(piece_lists_wanted=1, max_requests_per_peer=1))
    h.s.peers_found([A], now=h.now)
    assert h.pop() == [RequestPieceList(A)]
    h.s.peers_found([B], now=h.now)  # B sends no list: a piece from it that matches vouches for A's
    assert h.pop() == []
    h.s.piece_list_received(A, h.pieces(), None, now=h.now)
    assert h.pop() == [RequestPiece(A, 0), RequestPiece(B, 1)]
    assert h.deliver(B, 1) == [AcceptPiece(1), RequestPiece(B, 2)]
    assert h.s.list_corroborated
    assert h.deliver(A, 0) == [AcceptPiece(0)]
    assert h.deliver(B, 2) == [AcceptPiece(2), Finished()]
    h.s.whole_file_failed(now=h.now)
    assert h.pop() == [
        BanPeer(A, "whole-file hash mismatch", True),
        BanPeer(B, "whole-file hash mismatch", True),
        Failed("whole-file hash mismatch"),
    ]
    assert h.s.finished and h.s.failed == "whole-file hash mismatch"


def test_disputed_piece_is_refereed_by_the_mirror() -> None:
    h = Harness(4, config=SchedulerConfig(piece_lists_wanted=1, max_requests_per_peer=1))
    h.s.peers_found([A], now=h.now)
    assert h.pop() == [RequestPieceList(A)]
    h.s.piece_list_received(A, h.pieces({1: BAD}), None, now=h.now)  # A lies about piece 1 only
    assert h.pop() == [RequestPiece(A, 0)]
    h.s.peers_found([B], now=h.now)
    assert h.pop() == [RequestPiece(B, 1)]
    # B's true piece contradicts A's list: a dispute, which the mirror referees.
    assert h.deliver(B, 1) == [StartMirror(1)]
    # A's piece 0 matches its list, but no audit runs while a dispute is open.
    assert h.deliver(A, 0) == [RequestPiece(A, 2)]
    assert not h.s.list_corroborated and not h.s.is_accepted(0)
    assert h.deliver(MIRROR, 1) == [
        BanPeer(A, "piece list contradicted by the mirror", True),
        AcceptPiece(1),  # the mirror's own copy, now with no list in use
        RequestPieceList(B),
    ]
    # B's list is on its way: B may hold everything, so the stream stops rather than race on.
    assert h.mirror_goes_on(2) is False
    h.s.mirror_stopped(None, now=h.now)
    h.s.piece_list_received(B, h.pieces(), None, now=h.now)
    assert h.s.list_corroborated  # B's list agrees with the mirror's piece 1
    assert h.pop() == [RequestPiece(B, 0)]
    assert h.deliver(B, 0) == [AcceptPiece(0), RequestPiece(B, 2)]
    assert h.deliver(B, 2) == [AcceptPiece(2), RequestPiece(B, 3)]
    assert h.deliver(B, 3) == [AcceptPiece(3), Finished()]


def test_offers_from_a_downloading_peer_are_accepted_provisionally() -> None:
    h = Harness(4, config=SchedulerConfig(max_requests_per_peer=1))
    h.s.peers_found([A], now=h.now)
    assert h.pop() == [RequestPieceList(A)]
    h.s.lookup_deadline_passed(now=h.now)
    assert h.pop() == []  # its list is coming
    # A is downloading too: it offers piece 2 (from its mirror) and its mirror is on piece 3.
    h.s.piece_list_received(
        A, h.pieces(), frozenset({2}), offers_only=True, fetching=range(3, 4), now=h.now
    )
    actions = h.pop()
    assert actions[1:] == [RequestPiece(A, 2)]
    # The mirror takes a piece nobody has or fetches (0 or 1, drawn at random), never 2 or 3.
    assert actions[0] in (StartMirror(0), StartMirror(1))
    assert h.deliver(A, 2) == [AcceptPiece(2, provisional=True)]
    assert not h.s.list_corroborated
    h.s.piece_received(A, 2, BAD, now=h.now)  # a late duplicate changes nothing once accepted
    assert h.pop() == []


def test_offer_that_changes_or_contradicts_the_mirror_is_a_lie() -> None:
    h = Harness(4, config=SchedulerConfig(max_requests_per_peer=1))
    h.s.peers_found([A, B], now=h.now)
    h.s.lookup_deadline_passed(now=h.now)
    h.pop()
    h.s.piece_list_received(A, h.pieces(), frozenset({1}), offers_only=True, now=h.now)
    h.s.piece_list_received(B, h.pieces({2: BAD}), frozenset({2}), offers_only=True, now=h.now)
    h.pop()
    h.s.piece_list_received(A, h.pieces({1: BAD}), frozenset({1}), offers_only=True, now=h.now)
    assert h.pop() == [BanPeer(A, "offer for piece 1 contradicts", True)]
    # B's piece matches its own offer: accepted provisionally; the whole-file hash decides.
    h.s.piece_received(B, 2, BAD, now=h.now)
    assert h.pop()[0] == AcceptPiece(2, provisional=True)
    h.s.piece_received(MIRROR, 0, h.true[0], now=h.now)
    h.s.piece_received(MIRROR, 1, h.true[1], now=h.now)
    h.s.piece_received(MIRROR, 3, h.true[3], now=h.now)
    assert h.s.finished
    h.pop()
    h.s.whole_file_failed(now=h.now)
    # The mirror checks B's word: a block of piece 2 (here the whole 1000-byte piece).
    (check,) = h.pop()
    assert isinstance(check, CheckPiece)
    assert check == CheckPiece(2, 2 * PS, 3 * PS) and not h.s.finished
    h.s.check_result(check, matched=False, now=h.now)
    assert h.pop() == [
        BanPeer(B, "piece 2 it offered contradicted by the mirror", True),
        RetractPiece(2),
    ]
    assert h.mirror_goes_on(2)  # the mirror stream of pieces 0, 1 and 3 goes on into it
    assert h.deliver(MIRROR, 2) == [AcceptPiece(2), Finished()]
    assert h.s.failed is None


def test_a_relayed_piece_is_taken_on_its_authors_offer_and_blames_the_author() -> None:
    """B passes on piece 2, which it took on A's offer: usable because A offered this node the
    same digest itself; A, not B, is who the piece was taken on (and who a failed whole-file
    check keeps away)."""
    h = Harness(4, config=SchedulerConfig(max_requests_per_peer=1))
    h.s.peers_found([A, B], now=h.now)
    h.s.lookup_deadline_passed(now=h.now)
    h.pop()
    # B first: its relay of 2 is of no use while nobody has offered 2 on their own word.
    h.s.piece_list_received(
        B, h.pieces({2: BAD}), frozenset({2}), offers_only=True, relayed=frozenset({2}), now=h.now
    )
    assert not any(isinstance(a, RequestPiece) for a in h.pop())
    h.s.piece_list_received(A, h.pieces({2: BAD}), frozenset({2}), offers_only=True, now=h.now)
    requests = [a for a in h.pop() if isinstance(a, RequestPiece)]
    assert requests and requests[0].index == 2
    h.s.piece_received(requests[0].peer, 2, BAD, now=h.now)
    assert AcceptPiece(2, provisional=True) in h.pop()
    for index in (0, 1, 3):
        h.s.piece_received(MIRROR, index, h.true[index], now=h.now)
    h.pop()
    assert h.s.finished
    h.s.whole_file_failed(now=h.now)
    (check,) = h.pop()
    assert isinstance(check, CheckPiece)
    assert check.index == 2
    h.s.check_result(check, matched=False, now=h.now)
    bans = [a for a in h.pop() if isinstance(a, BanPeer)]
    assert [(b.peer, b.lied) for b in bans] == [(A, True)]  # B only passed A's word on


def test_a_relay_whose_digest_nobody_offered_is_not_used_and_lying_bytes_ban_it() -> None:
    h = Harness(4, config=SchedulerConfig(max_requests_per_peer=2))
    h.s.peers_found([A, B], now=h.now)
    h.s.lookup_deadline_passed(now=h.now)
    h.pop()
    h.s.piece_list_received(A, h.pieces(), frozenset({1}), offers_only=True, now=h.now)
    # B relays 1 with A's digest and 3 with a digest nobody offered.
    h.s.piece_list_received(
        B,
        h.pieces({3: BAD}),
        frozenset({1, 3}),
        offers_only=True,
        relayed=frozenset({1, 3}),
        now=h.now,
    )
    asked = {(a.peer, a.index) for a in h.pop() if isinstance(a, RequestPiece)}
    assert (B, 3) not in asked
    # B's bytes for piece 1 are not what it relayed: a lie of its own, at the cost of one piece.
    h.s.piece_received(B, 1, BAD, now=h.now)
    assert BanPeer(B, "piece 1 does not match what it relays", True) in h.pop()


def test_a_relay_that_mended_its_copy_is_not_taken_for_a_liar() -> None:
    """B relayed piece 1 with the digest of a liar's copy, then its own inquiry retracted that
    copy and it got the mirror's: its bytes now differ from what it told, but match what A
    offers from its own mirror. Not a lie: B is simply not asked for piece 1 again."""
    h = Harness(4, config=SchedulerConfig(max_requests_per_peer=2))
    h.s.peers_found([A, B, C], now=h.now)
    h.s.lookup_deadline_passed(now=h.now)
    h.pop()
    h.s.piece_list_received(C, h.pieces({1: BAD}), frozenset({1}), offers_only=True, now=h.now)
    h.s.piece_list_received(
        B, h.pieces({1: BAD}), frozenset({1}), offers_only=True, relayed=frozenset({1}), now=h.now
    )
    h.s.piece_list_received(A, h.pieces(), frozenset({1}), offers_only=True, now=h.now)
    h.pop()
    h.s.piece_received(B, 1, h.true[1], now=h.now)
    assert not any(isinstance(a, BanPeer) and a.peer == B for a in h.pop())


def test_a_relay_is_dropped_when_its_author_is_banned() -> None:
    h = Harness(4, config=SchedulerConfig(max_requests_per_peer=1))
    h.s.peers_found([A, B], now=h.now)
    h.s.lookup_deadline_passed(now=h.now)
    h.pop()
    h.s.piece_list_received(A, h.pieces(), frozenset({2}), offers_only=True, now=h.now)
    h.s.piece_list_received(
        B, h.pieces(), frozenset({2}), offers_only=True, relayed=frozenset({2}), now=h.now
    )
    h.pop()
    h.s.piece_list_received(A, h.pieces({2: BAD}), frozenset({2}), offers_only=True, now=h.now)
    assert BanPeer(A, "offer for piece 2 contradicts", True) in h.pop()
    # Whatever B relays of A's word is no longer taken.
    h.s.piece_received(B, 2, h.true[2], now=h.now)
    assert not any(isinstance(a, AcceptPiece) for a in h.pop())


def test_whole_file_failure_with_offered_pieces_bans_no_list_author_as_a_liar() -> None:
    h = Harness(4, config=SchedulerConfig(max_requests_per_peer=1))
    h.s.peers_found([A], now=h.now)
    h.s.lookup_deadline_passed(now=h.now)
    h.pop()
    h.s.piece_received(MIRROR, 0, h.true[0], now=h.now)
    h.s.piece_list_received(A, h.pieces({2: BAD}), frozenset({2}), offers_only=True, now=h.now)
    h.pop()
    h.s.piece_received(A, 2, BAD, now=h.now)  # matches A's (lying) offer: provisional
    assert AcceptPiece(2, provisional=True) in h.pop()
    h.s.peers_found([B], now=h.now)
    h.pop()
    h.s.piece_list_received(B, h.pieces(), None, now=h.now)  # B finished: the true list
    h.pop()
    for index in (1, 3):
        h.s.piece_received(MIRROR, index, h.true[index], now=h.now)
    h.pop()
    assert h.s.finished
    h.s.whole_file_failed(now=h.now)
    # Which of A's offer and B's list was wrong the mirror tells, for a block of A's piece:
    # A lied, B's list stands, and piece 2 comes from B.
    (check,) = h.pop()
    assert isinstance(check, CheckPiece)
    assert check.index == 2
    h.s.check_result(check, matched=False, now=h.now)
    assert h.pop() == [
        BanPeer(A, "piece 2 it offered contradicted by the mirror", True),
        RetractPiece(2),
        RequestPiece(B, 2),
    ]
    assert h.deliver(B, 2) == [AcceptPiece(2), Finished()]


def _crowd_of_offers(h: Harness, lies: dict[Peer, dict[int, bytes]]) -> None:
    """A and B downloading: A offers pieces 0-2, B pieces 3-5, each with its `lies`; this node
    takes all six on their word and finishes."""
    h.s.peers_found([A, B], now=h.now)
    h.s.lookup_deadline_passed(now=h.now)
    h.pop()
    for peer, have in ((A, range(0, 3)), (B, range(3, 6))):
        told = h.pieces(lies.get(peer))
        h.s.piece_list_received(peer, told, frozenset(have), offers_only=True, now=h.now)
    h.pop()
    for peer, have in ((A, range(0, 3)), (B, range(3, 6))):
        for index in have:
            h.s.piece_received(peer, index, h.pieces(lies.get(peer)).digests[index], now=h.now)
    actions = h.pop()
    assert sum(isinstance(a, AcceptPiece) and a.provisional for a in actions) == 6
    assert h.s.finished


def test_an_inquiry_samples_every_author_before_whole_pieces() -> None:
    """B changed one byte somewhere in piece 4: every sampled block agrees, so whole pieces
    follow, two at a time, each confirmed or convicting; B's conviction retracts all of B's
    pieces and ends the round (A's pieces not yet checked stay as they are)."""
    h = Harness(6, seed=3, config=SchedulerConfig(max_requests_per_peer=3, check_block=100))
    _crowd_of_offers(h, {B: {4: BAD}})
    h.s.whole_file_failed(now=h.now)
    samples = [c for c in h.pop() if isinstance(c, CheckPiece)]
    assert samples and not any(c.whole for c in samples)
    assert {c.index // 3 for c in samples} == {0, 1}  # both authors, 100-byte blocks
    assert all(c.end - c.start == 100 and c.index * PS <= c.start for c in samples)
    for check in samples[:-1]:
        h.s.check_result(check, matched=True, now=h.now)
        assert h.pop() == []
    h.s.check_result(samples[-1], matched=True, now=h.now)
    wholes = [c for c in h.pop() if isinstance(c, CheckPiece)]
    assert len(wholes) == 2 and all(c.whole for c in wholes)
    checked: list[int] = []
    while True:
        check = wholes.pop(0)
        checked.append(check.index)
        h.s.check_result(check, matched=check.index != 4, now=h.now)
        actions = h.pop()
        if check.index == 4:
            break
        assert actions[0] == ConfirmPiece(check.index)
        wholes += [c for c in actions[1:] if isinstance(c, CheckPiece)]
    assert BanPeer(B, "piece 4 it offered contradicted by the mirror", True) in actions
    retracted = [a.index for a in actions if isinstance(a, RetractPiece)]
    assert retracted == [i for i in (3, 4, 5) if i not in checked or i == 4]
    assert not any(isinstance(a, CheckPiece) for a in actions)  # the round is over
    # Whole checks still on their way prove nothing more: the inquiry ignores them now.
    for check in wholes:
        h.s.check_result(check, matched=True, now=h.now)
    assert not any(isinstance(a, (BanPeer, Failed)) for a in h.pop())
    assert h.s.failed is None and not h.s.finished


def test_an_inquiry_that_finds_nobody_fails_the_download_once() -> None:
    """Every piece taken on an offer matches the mirror, yet the file does not: the pieces are
    confirmed, the file goes to the whole-file check once more, and then the download fails."""
    h = Harness(6, config=SchedulerConfig(max_requests_per_peer=3, check_samples=1))
    _crowd_of_offers(h, {})
    h.s.whole_file_failed(now=h.now)
    pending = h.pop()
    confirmed: list[int] = []
    while pending:
        check = pending.pop(0)
        if isinstance(check, CheckPiece):
            h.s.check_result(check, matched=True, now=h.now)
            actions = h.pop()
            confirmed += [a.index for a in actions if isinstance(a, ConfirmPiece)]
            pending += actions
    assert sorted(confirmed) == list(range(6))
    assert h.s.finished
    h.s.whole_file_failed(now=h.now)
    assert h.pop()[-1] == Failed("whole-file hash mismatch")


def test_an_inquiry_without_a_mirror_fails_as_before() -> None:
    h = Harness(6, config=SchedulerConfig(max_requests_per_peer=3, max_mirror_restarts=0))
    _crowd_of_offers(h, {A: {1: BAD}})
    h.s.whole_file_failed(now=h.now)
    check = h.pop()[0]
    assert isinstance(check, CheckPiece)
    h.s.check_failed(check, "mirror answered HTTP 503", now=h.now)
    actions = h.pop()
    assert actions[-1] == Failed("whole-file hash mismatch")
    assert {(a.peer, a.lied) for a in actions if isinstance(a, BanPeer)} == {
        (A, False),
        (B, False),
    }


def test_a_peer_piece_that_does_not_match_its_own_offer_bans_it() -> None:
    h = Harness(3, config=SchedulerConfig(max_requests_per_peer=1))
    h.s.peers_found([A], now=h.now)
    h.s.lookup_deadline_passed(now=h.now)
    h.pop()
    h.s.piece_list_received(A, h.pieces(), frozenset({0}), offers_only=True, now=h.now)
    assert RequestPiece(A, 0) in h.pop()
    h.s.piece_received(A, 0, BAD, now=h.now)
    assert h.pop()[0] == BanPeer(A, "piece 0 does not match its offer", True)
    assert not h.s.is_accepted(0)


def test_offers_are_asked_again_and_fetch_claims_expire() -> None:
    config = SchedulerConfig(max_requests_per_peer=1, offers_refresh=1.0, fetch_claim_ttl=3.0)
    h = Harness(2, config=config)
    h.s.peers_found([A], now=h.now)
    h.s.lookup_deadline_passed(now=h.now)
    h.pop()
    # A's mirror is on both pieces: ours waits for A's offers.
    h.s.piece_list_received(
        A, h.pieces(), frozenset(), offers_only=True, fetching=range(0, 2), now=h.now
    )
    assert h.pop() == []
    assert h.s.next_deadline() == pytest.approx(1.0)
    h.clock.advance(1.0)
    h.s.tick(now=h.now)
    assert h.pop() == [RequestPieceList(A)]
    h.s.piece_list_received(
        A, h.pieces(), frozenset(), offers_only=True, fetching=range(0, 2), now=h.now
    )
    h.clock.advance(2.5)  # A has sat on them for 3.5 s: the mirror takes over
    h.s.tick(now=h.now)
    refresh, mirror = h.pop()
    assert refresh == RequestPieceList(A) and mirror in (StartMirror(0), StartMirror(1))


def test_a_busy_peer_is_asked_again_and_the_mirror_waits_before_taking_over() -> None:
    config = SchedulerConfig(max_requests_per_peer=1, busy_backoff=0.5, busy_overdue=2.0)
    h = Harness(3, config=config)
    h.s.peers_found([A], now=h.now)
    assert h.pop() == [RequestPieceList(A)]
    h.s.lookup_deadline_passed(now=h.now)
    h.s.piece_list_received(A, h.pieces(), None, now=h.now)
    assert h.pop() == [RequestPiece(A, 0)]
    h.s.piece_busy(A, 0, now=h.now)
    # A holds the piece but is at its upload limit: not "not held", no mirror, no failure.
    assert h.pop() == [] and h.s.failed is None
    assert h.s.next_deadline() == pytest.approx(0.5)
    for _ in range(3):
        h.clock.advance(0.5)
        h.s.tick(now=h.now)
        assert h.pop() == [RequestPiece(A, 0)]
        h.s.piece_busy(A, 0, now=h.now)
    # Busy for busy_overdue: the piece is overdue and the mirror takes it as a web seed.
    h.clock.advance(0.5)
    h.s.tick(now=h.now)
    assert h.pop() == [StartMirror(0), RequestPiece(A, 1)]


def test_busy_deadlines_survive_a_late_wake_up() -> None:
    h = Harness(3, config=SchedulerConfig(busy_backoff=0.5, busy_overdue=8.0))
    h.s.peers_found([A], now=h.now)
    h.pop()
    h.s.lookup_deadline_passed(now=h.now)
    h.s.piece_list_received(A, h.pieces(), None, now=h.now)
    assert h.pop() == [RequestPiece(A, i) for i in range(3)]
    for index in range(3):
        h.s.piece_busy(A, index, now=h.now)
    assert h.s.next_deadline() == pytest.approx(0.5)
    h.clock.advance(8.6)  # the driver's timer fired late: nothing may be forgotten
    assert h.s.next_deadline() == pytest.approx(0.5)
    h.s.tick(now=h.now)
    assert h.pop() == [StartMirror(0), RequestPiece(A, 1), RequestPiece(A, 2)]
    assert h.s.next_deadline() is not None and h.s.next_deadline() > h.clock.now()


def _split_key(node: bytes, sha: str, index: int) -> bytes:
    """The rendezvous key every dhtdeb version must compute alike (else downloaders of
    different versions fetch the same pieces)."""
    material = node + bytes.fromhex(sha) + index.to_bytes(8, "big")
    return hashlib.blake2b(material, digest_size=8).digest()


def test_downloaders_split_the_mirror_pieces_by_rendezvous_hashing() -> None:
    ids = {A: b"\x01" * 20, B: b"\x02" * 20, C: b"\x03" * 20}
    me = b"\x09" * 20
    n = 16
    h = Harness(n, node=me, config=SchedulerConfig(max_requests_per_peer=1))
    h.s.peers_found([A, B, C], now=h.now)
    h.s.lookup_deadline_passed(now=h.now)
    h.pop()
    for peer, node in ids.items():  # three other downloaders, nothing to offer yet
        h.s.piece_list_received(
            peer, h.pieces(), frozenset(), offers_only=True, node=node, now=h.now
        )
    rank = {
        i: sum(_split_key(node, h.sha, i) < _split_key(me, h.sha, i) for node in ids.values())
        for i in range(n)
    }
    share = [i for i in range(n) if rank[i] == 0]
    second = [i for i in reversed(range(n)) if rank[i] == 1]
    assert share and second and len(share) + len(second) < n
    # The mirror stream takes this node's share first, in order, going on only through it...
    order: list[int] = []
    starts = [a.first for a in h.pop() if isinstance(a, StartMirror)]
    while starts:
        target = starts[0]
        while True:
            order.append(target)
            h.deliver(MIRROR, target)
            if target + 1 < n and h.mirror_goes_on(target + 1):
                target += 1
            else:
                break
        h.s.mirror_stopped(None, now=h.now)
        starts = [a.first for a in h.pop() if isinstance(a, StartMirror)]
    assert order[: len(share)] == share
    # ...then the pieces it is second in line for, from the top (their owners start at the
    # bottom), and then the rest, which the others never offered.
    assert order[len(share) : len(share) + len(second)] == second
    assert sorted(order) == list(range(n)) and h.s.finished


def test_a_downloader_still_fetching_keeps_its_share_until_it_stops() -> None:
    me, other = b"\x09" * 20, b"\x01" * 20
    n = 8
    h = Harness(n, node=me, config=SchedulerConfig(max_requests_per_peer=1))
    mine = [i for i in range(n) if _split_key(me, h.sha, i) < _split_key(other, h.sha, i)]
    theirs = [i for i in range(n) if i not in mine]
    assert mine and len(theirs) >= 2
    h.s.peers_found([A], now=h.now)
    h.s.lookup_deadline_passed(now=h.now)
    h.pop()
    fetching = range(theirs[0], theirs[0] + 1)
    h.s.piece_list_received(
        A, h.pieces(), frozenset(), offers_only=True, fetching=fetching, node=other, now=h.now
    )
    starts = [a.first for a in h.pop() if isinstance(a, StartMirror)]
    for index in mine:
        assert starts == [index]
        h.deliver(MIRROR, index)
        if index + 1 < n and index + 1 in mine:
            assert h.mirror_goes_on(index + 1)
            starts = [index + 1]
            continue
        assert index + 1 >= n or not h.mirror_goes_on(index + 1)
        h.s.mirror_stopped(None, now=h.now)
        starts = [a.first for a in h.pop() if isinstance(a, StartMirror)]
    # A is still on its share: nothing of it is fetched twice, and nothing has failed.
    assert starts == [] and h.s.failed is None
    # A's mirror request stopped (gone quiet, or given up): its pieces are taken from the top.
    h.s.piece_list_received(A, h.pieces(), frozenset(), offers_only=True, node=other, now=h.now)
    assert [a for a in h.pop() if isinstance(a, StartMirror)] == [StartMirror(theirs[-1])]


def test_no_mirror_single_peer_accepts_held_pieces_together_as_a_last_resort() -> None:
    h = Harness(3, mirror=False)
    h.s.peers_found([A], now=h.now)
    assert h.pop() == [RequestPieceList(A)]
    h.s.piece_list_received(A, h.pieces(), None, now=h.now)
    assert h.pop() == [RequestPiece(A, i) for i in range(3)]
    for i in range(3):
        assert h.deliver(A, i) == []
    assert not h.s.is_accepted(0)
    h.s.lookup_deadline_passed(now=h.now)
    assert h.pop() == [AcceptPiece(0), AcceptPiece(1), AcceptPiece(2), Finished()]
    assert not h.s.list_corroborated  # the whole-file hash is the only check left


def test_no_mirror_conflict_keeps_the_list_in_use_on_a_tie() -> None:
    h = Harness(2, mirror=False)
    h.s.peers_found([A, B], now=h.now)
    h.pop()
    h.s.piece_list_received(A, h.pieces(), None, now=h.now)
    assert h.pop() == [RequestPiece(A, 0), RequestPiece(A, 1)]
    h.s.piece_list_received(B, h.pieces({1: BAD}), None, now=h.now)
    assert h.pop() == []  # B set aside, not banned: nobody can tell who lied
    h.s.peers_found([C], now=h.now)
    assert h.pop() == [RequestPieceList(C)]
    h.s.piece_list_received(C, h.pieces(), None, now=h.now)
    assert h.pop() == []
    assert h.s.list_corroborated
    assert h.deliver(A, 0) == [AcceptPiece(0)]


def test_peer_table_is_bounded() -> None:
    h = Harness(1, config=SchedulerConfig(max_peers=8))
    h.s.peers_found((Peer(f"10.1.0.{i}", 9978) for i in range(100)), now=h.now)
    (request,) = h.pop()
    assert isinstance(request, RequestPiece)
    assert len(h.s._peers) == 8


def test_a_finished_download_is_freed_without_the_cyclic_collector() -> None:
    """A scheduler and its parts form no reference cycle: the last reference gone, it is freed at
    once. The simulation freezes what is alive (sim/loop.py), so a cycle there is kept for the
    whole run: with one per download, a 10,000-node run grew to 10.5 GB."""
    gc.disable()
    try:
        h = Harness(3, config=SchedulerConfig(max_requests_per_peer=1))
        h.s.peers_found([A], now=h.now)
        h.s.lookup_deadline_passed(now=h.now)
        h.pop()
        lies = {i: _digest(f"lie {i}") for i in range(3)}
        h.s.piece_list_received(A, h.pieces(lies), None, now=h.now)  # audited, then banned
        h.pop()
        h.s.piece_received(A, 0, lies[0], now=h.now)
        h.pop()
        h.s.audit_result(0, matched=False, now=h.now)
        assert BanPeer(A, "piece list contradicted by the mirror inside piece 0", True) in h.pop()
        for i in range(3):
            h.deliver(MIRROR, i)
        assert h.s.finished
        freed = weakref.ref(h.s)
        del h
        assert freed() is None
    finally:
        gc.enable()


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        SchedulerConfig(max_requests_per_peer=0)
    with pytest.raises(ValueError):
        SchedulerConfig(rate_smoothing=0.0)
    h = Harness(2)
    with pytest.raises(ValueError):
        h.s.piece_received(MIRROR, 2, BAD, now=h.now)


# ---------------------------------------------------------------------------------------------
# Simulation: the real core, a seeded network of honest and lying peers, a mirror, a virtual
# clock. Every run checks the invariants on every action; a failing run names its seed.

HONEST_KINDS = ("complete", "complete", "partial", "slow")
STRICT_LIARS = ("bad_piece", "bad_list", "staller", "gone", "malformed", "flaky")
LENIENT_LIARS = (*STRICT_LIARS, "partial_list")
LIARS = {"bad_piece", "bad_list", "partial_list"}
STALL_TIMEOUT = 10.0


@dataclass
class SimPeer:
    peer: Peer
    kind: str
    rate: float
    have: frozenset[int] | None
    digests: tuple[bytes, ...]  # what it claims (its list and its pieces, for list liars)


@dataclass(order=True)
class _Event:
    time: float
    seq: int
    run: Callable[[], None] = field(compare=False)
    owner: object = field(compare=False, default=None)
    cancelled: bool = field(compare=False, default=False)


class Simulation:
    def __init__(
        self,
        seed: int,
        *,
        strict: bool,
        kinds: list[str] | None = None,
        one_batch: bool = False,
        config: SchedulerConfig | None = None,
    ) -> None:
        self.seed = seed
        self.strict = strict
        rng = random.Random(seed)
        self.rng = rng
        self.n = rng.choice([1, 1, 2, 3, 5, 8, 12])
        self.size = (self.n - 1) * PS + rng.randint(1, PS)
        self.true = [_digest(f"{seed} piece {i}") for i in range(self.n)]
        sha = self.true[0].hex() if self.n == 1 else _digest(f"{seed} file").hex()
        self.mirror_up = True if strict else rng.random() < 0.7
        self.mirror_flaky = 0.0 if strict else rng.choice([0.0, 0.0, 0.2, 0.6])
        self.config = config or SchedulerConfig(
            max_requests_per_peer=rng.choice([1, 2, 4]),
            piece_lists_wanted=rng.choice([1, 2, 3]),
        )
        self.clock = ManualClock()
        self.s = SwarmScheduler(
            sha,
            self.size,
            rng=random.Random(seed ^ 0x5EED),
            config=self.config,
            mirror_available=self.mirror_up,
            piece_size=PS,
        )
        if kinds is None:
            kinds = [rng.choice(HONEST_KINDS) for _ in range(rng.randint(0, 3))]
            liars = STRICT_LIARS if strict else LENIENT_LIARS
            kinds += [rng.choice(liars) for _ in range(rng.randint(0, 3))]
            rng.shuffle(kinds)
        self.one_batch = one_batch
        self.mirror_starts = 0
        self.mirror_audits = 0
        self.auditing = False
        self.peers = [self._make_peer(i, kind) for i, kind in enumerate(kinds)]
        self.by_peer = {p.peer: p for p in self.peers}
        self.queue: list[_Event] = []
        self.seq = 0
        self.timer: _Event | None = None
        self.mirror_busy = False
        self.disk: dict[int, bytes] = {}
        self.accepted: set[int] = set()
        self.banned: dict[Peer, bool] = {}
        self.inflight: dict[Peer, set[int]] = {p.peer: set() for p in self.peers}
        self.finished = 0
        self.failed = 0
        self.whole_file_checked = False

    def _make_peer(self, i: int, kind: str) -> SimPeer:
        rng = self.rng
        peer = Peer(f"10.9.{self.seed % 250}.{i + 1}", 9978)
        digests = tuple(self.true)
        if kind == "bad_list":
            digests = tuple(_digest(f"{peer} lie {j}") for j in range(self.n))
        elif kind == "partial_list":
            lies = {rng.randrange(self.n)}
            digests = tuple(
                _digest(f"{peer} lie {j}") if j in lies else d for j, d in enumerate(digests)
            )
        have = None
        if kind == "partial":
            have = frozenset(j for j in range(self.n) if rng.random() < 0.6)
        rate = PS / rng.uniform(0.05, 0.5) if kind != "slow" else PS / rng.uniform(3.0, 8.0)
        return SimPeer(peer, kind, rate, have, digests)

    # event plumbing -----------------------------------------------------------------------

    def at(self, delay: float, run: Callable[[], None], owner: object = None) -> _Event:
        self.seq += 1
        event = _Event(self.clock.now() + delay, self.seq, run, owner)
        heapq.heappush(self.queue, event)
        return event

    def cancel_owned(self, owner: object) -> None:
        for event in self.queue:
            if event.owner == owner:
                event.cancelled = True

    def step_all(self) -> None:
        peers = [p.peer for p in self.peers]
        split = len(peers) if self.one_batch else self.rng.randint(0, len(peers))
        self.at(0.0, lambda: self.s.peers_found(peers[:split], now=self.clock.now()))
        self.at(
            self.rng.uniform(0.0, 3.0),
            lambda: self.s.peers_found(peers[split:], now=self.clock.now()),
        )
        self.at(0.5, lambda: self.s.lookup_deadline_passed(now=self.clock.now()))
        steps = 0
        while self.queue and not self.failed and not self.finished:
            steps += 1
            assert steps < 20_000, "no progress"
            event = heapq.heappop(self.queue)
            if event.cancelled:
                continue
            self.clock.advance(event.time - self.clock.now())
            event.run()
            self.dispatch()
        assert self.finished or self.failed, "the scheduler went quiet without an outcome"

    def rearm(self) -> None:
        if self.timer is not None:
            self.timer.cancelled = True
            self.timer = None
        deadline = self.s.next_deadline()
        if deadline is not None:
            self.timer = self.at(
                max(0.0, deadline - self.clock.now()), lambda: self.s.tick(now=self.clock.now())
            )

    # the driver ---------------------------------------------------------------------------

    def dispatch(self) -> None:
        for action in self.s.poll_actions():
            self.check_and_perform(action)
        self.rearm()

    def check_and_perform(self, action: Action) -> None:
        assert not self.failed, f"{action} after Failed"
        if isinstance(action, RequestPieceList):
            assert action.peer not in self.banned, f"list request to banned {action.peer}"
            self.at(self.rng.uniform(0.01, 0.2), lambda: self.answer_list(action.peer), action.peer)
        elif isinstance(action, RequestPiece):
            assert action.peer not in self.banned, f"piece request to banned {action.peer}"
            assert action.index not in self.inflight[action.peer]
            self.inflight[action.peer].add(action.index)
            assert len(self.inflight[action.peer]) <= self.config.max_requests_per_peer
            self.serve_piece(action.peer, action.index)
        elif isinstance(action, CancelPiece):
            assert action.index in self.inflight[action.peer]
            self.inflight[action.peer].discard(action.index)
            if self.rng.random() < 0.7:  # else the piece was already on its way: it arrives
                self.cancel_owned((action.peer, action.index))
        elif isinstance(action, StartMirror):
            assert self.mirror_up and not self.mirror_busy, "second mirror stream"
            self.mirror_starts += 1
            self.mirror_busy = True
            self.mirror_request(action.first)
        elif isinstance(action, AuditPiece):
            assert self.mirror_up and not self.auditing, "second audit"
            self.auditing = True
            self.mirror_audits += 1
            # A wrong piece is assumed to differ in the audited block (a liar does not know it).
            self.at(0.01, lambda: self.audit_answer(action))
        elif isinstance(action, AcceptPiece):
            assert action.index not in self.accepted, f"piece {action.index} accepted twice"
            self.accepted.add(action.index)
            if self.strict:
                assert self.disk.get(action.index) == self.true[action.index], (
                    f"wrong bytes accepted for piece {action.index}"
                )
        elif isinstance(action, BanPeer):
            assert action.peer not in self.banned
            self.banned[action.peer] = action.lied
            self.cancel_owned(action.peer)
            for index in self.inflight[action.peer]:
                self.cancel_owned((action.peer, index))
            self.inflight[action.peer].clear()
            if self.strict:
                assert self.by_peer[action.peer].kind not in HONEST_KINDS, f"honest {action}"
        elif isinstance(action, Finished):
            assert self.finished == 0 and len(self.accepted) == self.n
            self.finished += 1
        else:
            assert isinstance(action, Failed)
            self.failed += 1

    def answer_list(self, peer: Peer) -> None:
        sim = self.by_peer[peer]
        if sim.kind == "gone":
            self.s.piece_list_failed(peer, "404", False, now=self.clock.now())
        elif sim.kind == "malformed":
            self.s.piece_list_failed(peer, "piece list of 3 bytes", True, now=self.clock.now())
        else:
            self.s.piece_list_received(
                peer, PieceList(self.size, sim.digests, PS), sim.have, now=self.clock.now()
            )

    def serve_piece(self, peer: Peer, index: int) -> None:
        sim = self.by_peer[peer]
        owner = (peer, index)

        def done(digest: bytes) -> None:
            self.inflight[peer].discard(index)
            if index not in self.accepted:
                self.disk[index] = digest  # the driver writes before it tells the core
            self.s.piece_received(peer, index, digest, now=self.clock.now())

        def failed(reason: str, misbehaved: bool) -> None:
            self.inflight[peer].discard(index)
            self.s.piece_failed(peer, index, reason, misbehaved, now=self.clock.now())

        if sim.have is not None and index not in sim.have:
            self.at(0.01, lambda: failed("416 not held", False), owner)
        elif sim.kind == "staller":
            self.at(STALL_TIMEOUT, lambda: failed("stall", True), owner)
        elif sim.kind == "flaky" and self.rng.random() < 0.5:
            self.at(0.05, lambda: failed("connection reset", False), owner)
        else:
            digest = sim.digests[index]
            if sim.kind == "bad_piece":
                digest = _digest(f"{peer} garbage {index}")
            delay = PS / sim.rate * self.rng.uniform(0.8, 1.5)
            self.at(delay, lambda: done(digest), owner)

    def mirror_request(self, first: int) -> None:
        """As mirror_stream.py streams: the window the scheduler answers with, piece by piece."""
        window = self.s.mirror_stream_ready(first, now=self.clock.now())
        if isinstance(window, MirrorWindow):
            self.mirror_piece(first, window.last)
        else:
            self.stop_mirror(None)

    def mirror_piece(self, index: int, last: int) -> None:
        if isinstance(self.s.mirror_piece_starting(index, now=self.clock.now()), ReadMirrorPiece):
            self.mirror_read(index, last)
        else:
            self.stop_mirror(None)

    def mirror_read(self, index: int, last: int) -> None:
        def arrived() -> None:
            if self.rng.random() < self.mirror_flaky:
                self.s.piece_failed(MIRROR, index, "connection reset", False, now=self.clock.now())
                self.stop_mirror("connection reset")
                return
            if index not in self.accepted:
                self.disk[index] = self.true[index]
            self.s.piece_received(MIRROR, index, self.true[index], now=self.clock.now())
            if index == last:
                self.mirror_request(index + 1)
            else:
                self.mirror_piece(index + 1, last)

        self.at(PS / 20_000 * self.rng.uniform(0.9, 1.1), arrived, "mirror")

    def audit_answer(self, audit: AuditPiece) -> None:
        self.auditing = False
        if self.rng.random() < self.mirror_flaky:
            self.s.audit_failed("connection reset", now=self.clock.now())
        else:
            self.s.audit_result(
                audit.index, audit.digest == self.true[audit.index], now=self.clock.now()
            )

    def stop_mirror(self, error: str | None) -> None:
        self.mirror_busy = False
        self.s.mirror_stopped(error, now=self.clock.now())

    # outcome ------------------------------------------------------------------------------

    def check_outcome(self) -> None:
        assert bool(self.finished) == (len(self.accepted) == self.n) == self.s.finished
        if self.finished:
            assert self.s.finished and self.s.accepted == self.n
            if all(self.disk[i] == self.true[i] for i in range(self.n)):
                return
            assert not self.strict
            kinds = {p.kind for p in self.peers}
            assert "partial_list" in kinds or "bad_list" in kinds, "wrong bytes without a list liar"
            self.s.whole_file_failed(now=self.clock.now())
            self.dispatch()
            assert self.failed == 1 and self.s.failed == "whole-file hash mismatch"
            assert any(self.by_peer[p].kind in LIARS and lied for p, lied in self.banned.items())
        else:
            assert self.failed == 1 and not self.s.finished
            assert len(self.accepted) < self.n
            if self.strict:
                pytest.fail(f"strict run failed: {self.s.failed}")


def _run(seed: int, *, strict: bool) -> Simulation:
    sim = Simulation(seed, strict=strict)
    try:
        sim.step_all()
        sim.check_outcome()
    except AssertionError as exc:
        kinds = [p.kind for p in sim.peers]
        raise AssertionError(
            f"seed {seed} strict={strict} pieces={sim.n} peers={kinds}: {exc}"
        ) from exc
    return sim


def test_simulation_honest_mirror_never_accepts_a_wrong_byte() -> None:
    """With the mirror up and no list liar that an honest party cannot expose, every run
    finishes, every accepted piece is the true piece, and no honest peer is ever banned."""
    for seed in range(1500):
        _run(seed, strict=True)


def test_simulation_hostile_network_stays_safe() -> None:
    """Mirror down or flaky, peers that lie in one list entry: runs may fail, but a wrong
    piece is accepted only through a list lie, and then the whole-file check bans a liar."""
    outcomes = {"finished": 0, "failed": 0}
    for seed in range(10_000, 11_500):
        sim = _run(seed, strict=False)
        outcomes["finished" if sim.finished else "failed"] += 1
    assert outcomes["finished"] > outcomes["failed"]


def test_simulation_two_agreeing_complete_peers_cost_no_mirror_traffic() -> None:
    for seed in range(200):
        sim = Simulation(
            seed,
            strict=True,
            kinds=["complete", "complete"],
            one_batch=True,
            config=SchedulerConfig(piece_lists_wanted=2, max_requests_per_peer=seed % 4 + 1),
        )
        sim.step_all()
        assert sim.finished == 1, f"seed {seed}: {sim.s.failed}"
        assert sim.mirror_starts == 0, f"seed {seed}: mirror used with two agreeing peers"
        assert sim.mirror_audits == 0, f"seed {seed}: audit with two agreeing peers"


def test_a_blind_mirror_piece_is_given_up_only_to_a_downloader_before_this_one() -> None:
    """Every node of a flash crowd starts its mirror stream at piece 0 before it knows the
    others. Of those fetching one piece, only the first in its rendezvous order keeps it."""
    me = b"\x09" * 20
    h = Harness(4, node=me, config=SchedulerConfig(max_requests_per_peer=1))
    h.s.lookup_deadline_passed(now=h.now)
    assert h.pop() == [StartMirror(0)]  # blind: nobody known yet
    assert not h.mirror_gives_up(0)
    ids = {A: b"\x01" * 20, B: b"\x02" * 20}
    before = [p for p, n in ids.items() if _split_key(n, h.sha, 0) < _split_key(me, h.sha, 0)]
    after = [p for p in ids if p not in before]
    assert before and after  # the ids were chosen so: one on each side of this node
    h.s.peers_found([A, B], now=h.now)
    h.pop()

    def fetching_piece_0(peer: Peer) -> None:
        h.s.piece_list_received(
            peer,
            h.pieces(),
            frozenset(),
            offers_only=True,
            fetching=range(1),
            node=ids[peer],
            now=h.now,
        )

    for peer in after:  # fetching piece 0 too, but after this node in line: keep it
        fetching_piece_0(peer)
    assert not h.mirror_gives_up(0)
    for peer in before:  # one before this node in line: it will offer piece 0
        fetching_piece_0(peer)
    assert h.mirror_gives_up(0)
    assert not h.mirror_gives_up(1)  # nobody else is on piece 1
