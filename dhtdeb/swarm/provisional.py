"""The pieces one file's swarm download took on a downloading peer's word, and who vouched.

Owns: each piece accepted on one downloader's offer (provisional: the driver lets neither apt nor
other peers see it before the whole-file SHA256 has matched), with its author and digest, and the
inquiry (inquiry.py) that finds the author of a wrong piece after a whole-file mismatch, with the
doubt that orders its checks. Trusts: nobody's offer; the mirror's answers to the checks are the
referee. Its verdicts (ban the liar, retract its pieces, confirm a piece) are carried out by the
scheduler. Pure: no clock; the inquiry draws from the scheduler's injected `random.Random`.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from dhtdeb.discovery import Peer
from dhtdeb.swarm.actions import CheckPiece, SchedulerConfig
from dhtdeb.swarm.inquiry import Check, Inquiry, Verdict
from dhtdeb.swarm.list_trust import ListTrust
from dhtdeb.swarm.offers import Crowd
from dhtdeb.swarm.rendezvous import Rendezvous

__all__ = ["ProvisionalPieces"]


class ProvisionalPieces:
    def __init__(
        self,
        config: SchedulerConfig,
        rng: random.Random,
        span: Callable[[int], tuple[int, int]],
        *,
        crowd: Crowd,
        trust: ListTrust,
        rendezvous: Rendezvous,
        node: bytes,
    ) -> None:
        self._config = config
        self._rng = rng
        self._span = span
        self._crowd = crowd
        self._trust = trust
        self._rendezvous = rendezvous
        self._node = node
        self._authors: dict[int, Peer] = {}  # accepted on one downloading peer's offer
        self._digests: dict[int, bytes] = {}
        self._inquiry: Inquiry | None = None  # who lied, after a whole-file mismatch

    def __bool__(self) -> bool:
        return bool(self._authors)

    def take(self, index: int, author: Peer) -> None:
        """Piece `index` is accepted on the word of `author` (its offer)."""
        self._authors[index] = author

    def record(self, index: int, digest: bytes) -> None:
        """The digest of the provisional copy of `index`."""
        self._digests[index] = digest

    def digest(self, index: int) -> bytes | None:
        return self._digests.get(index)

    def offerers(self) -> list[Peer]:
        return sorted(set(self._authors.values()))

    def forget(self, index: int) -> None:
        """`index` was retracted."""
        self._authors.pop(index, None)
        self._digests.pop(index, None)

    def confirm(self, index: int) -> bool:
        """`index` matched the mirror in full: on nobody's word any more (false when it was
        not provisional)."""
        return self._authors.pop(index, None) is not None

    def taken_from(self, liar: Peer, retract: tuple[int, ...]) -> list[int]:
        """The pieces to retract after `liar` was convicted: its own and `retract`."""
        return [i for i, author in sorted(self._authors.items()) if author == liar or i in retract]

    # ----------------------------------------------------------------- inquiry

    @property
    def inquiring(self) -> bool:
        return self._inquiry is not None

    @property
    def busy(self) -> bool:
        """Checks are queued or running."""
        return self._inquiry is not None and self._inquiry.busy

    def open_inquiry(self) -> bool:
        """A whole-file mismatch: start a round of checks (false when nothing is left to ask)."""
        if self._inquiry is None:
            config = self._config
            self._inquiry = Inquiry(
                self._rng,
                self._span,
                block=config.check_block,
                samples=config.check_samples,
                parallel=config.check_parallel,
            )
        return self._inquiry.open(self._authors)

    def checks(self) -> list[CheckPiece]:
        """The checks to start now."""
        if self._inquiry is None:
            return []
        return [
            CheckPiece(c.index, c.start, c.end, c.whole) for c in self._inquiry.take(self._doubt)
        ]

    def result(self, check: CheckPiece, matched: bool | None) -> Verdict:
        assert self._inquiry is not None
        return self._inquiry.result(
            Check(check.index, check.start, check.end, check.whole), matched
        )

    def failed(self, check: CheckPiece) -> None:
        assert self._inquiry is not None
        self._inquiry.failed(Check(check.index, check.start, check.end, check.whole))

    def _doubt(self, index: int) -> tuple[int, int]:
        """How suspect a piece taken on an offer is (inquiry.py): (0, 0) when a usable
        downloader offers it with another digest, (2, 0) when one other than its author offers
        the same, else (1, how many downloaders come before this node to check it)."""
        mine = self._digests.get(index)
        author = self._authors.get(index)
        offered = self._crowd.others_offer(index, self._trust.usable, author)
        if any(digest != mine for digest in offered):
            return (0, 0)
        if offered:
            return (2, 0)
        if not self._node:
            return (1, 0)
        mine_key = self._rendezvous.key(self._node + b"check", index)
        before = sum(
            1
            for peer, node in self._crowd.partners(self._node, self._trust.usable)
            if peer != author and self._rendezvous.key(node + b"check", index) < mine_key
        )
        return (1, before)
