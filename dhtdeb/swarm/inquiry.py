"""Who lied: after a whole-file mismatch, the mirror checks the pieces taken on offers.

In a flash crowd a downloader accepts pieces on one downloading peer's word (its offer of a piece
it got from its own mirror stream, docs/swarm.md). When the whole-file SHA256 then fails, one of
those words was wrong, and only the mirror can tell whose: no second party saw those bytes. Banning
every author would cost the crowd everything (each downloader fetching the file again from the
mirror); the inquiry instead asks the mirror, cheapest question first:

1. *Samples*: a few random blocks of each author's pieces (`samples` blocks of `block` bytes).
   An author whose pieces are wrong broadly (a tampering mirror, another file's bytes, garbage)
   is caught for a few KiB of mirror traffic.
2. *Whole pieces*, `parallel` at a time, once every sample agreed: a piece that matches the
   mirror in full is confirmed (no longer on anyone's word); one that differs convicts its author.
   This catches a liar that changes a single byte, at a cost bounded by the pieces taken on
   offers, each checked at most once. The order is the caller's `doubt` (lowest first, random
   among equals): a piece that another downloader offers with a different digest (it got the
   piece from its own mirror, or convicted the same liar first) is checked before anything else,
   even before the samples, and one that a second author offered with the same digest last.
   Between those, the caller spreads the crowd's checks (each downloader first checks the pieces
   it comes first for in a rendezvous order): downloaders that took the same lie all fail at
   once, and one of them finds it after a share of the pieces, the others by its offer of the
   true piece, which puts that piece in conflict for them.

A convicted author loses every piece taken on its word (the caller retracts them and fetches them
again) and is banned as a liar. A peer that only passed another's piece on (a relay) is never the
author: the piece was taken on the word of the downloader whose offer it matched. After a
conviction the round stops asking; the whole-file check decides again once the retracted pieces
are back, and a new failure opens the next round with the suspects that are left.

Pure: no I/O, no clock. The scheduler asks `take()` for the checks to start, reports each with
`result()`, and applies the verdicts.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from dhtdeb.discovery import Peer

__all__ = ["Check", "Inquiry", "Verdict"]


@dataclass(frozen=True, slots=True)
class Check:
    """Compare bytes [start, end) of the file at the mirror with the accepted copy of piece
    `index`; `whole` when the span is the whole piece."""

    index: int
    start: int
    end: int
    whole: bool


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one check proved: `liar` convicted (its pieces to retract), or `confirmed` a piece
    that matched the mirror in full."""

    liar: Peer | None = None
    retract: tuple[int, ...] = ()
    confirmed: int | None = None


class Inquiry:
    def __init__(
        self,
        rng: random.Random,
        span: Callable[[int], tuple[int, int]],
        *,
        block: int,
        samples: int = 3,
        parallel: int = 2,
    ) -> None:
        if block < 1 or samples < 1 or parallel < 1:
            raise ValueError("block, samples and parallel must be at least 1")
        self._rng = rng
        self._span = span
        self._block = block
        self._samples = samples
        self._parallel = parallel
        self._suspects: dict[int, Peer] = {}  # piece taken on an offer -> its author
        self._sampled: set[Peer] = set()
        self._queue: list[Check] = []
        self._pending: set[Check] = set()
        self._convicted_this_round = False
        self.rounds = 0
        self.checked_bytes = 0  # asked of the mirror, for the log and the counters

    @property
    def busy(self) -> bool:
        """Checks are queued or running."""
        return bool(self._queue or self._pending)

    def open(self, provisional: dict[int, Peer]) -> bool:
        """A whole-file mismatch with `provisional` pieces (by author) in the file: start a
        round. False when there is nothing left to ask (every suspect piece already checked)."""
        self._suspects = dict(provisional)
        self._convicted_this_round = False
        self._queue = [c for c in self._queue if c.index in self._suspects]
        fresh = sorted({a for a in self._suspects.values() if a not in self._sampled})
        for author in fresh:
            self._queue.extend(self._sample_checks(author))
            self._sampled.add(author)
        if not self._queue:
            self._queue_whole_pieces()
        if not self.busy:
            return False
        self.rounds += 1
        return True

    def take(self, doubt: Callable[[int], tuple[int, int]] = lambda index: (1, 0)) -> list[Check]:
        """The checks to start now (samples all at once, whole pieces `parallel` at a time).
        `doubt(index)`: (0, _) for a piece in conflict (checked whole first), (2, _) for one
        that a second author vouches for (checked whole last), (1, rank) for the rest."""
        conflicts = [i for i in self._suspects if doubt(i)[0] == 0 and not self._asked_whole(i)]
        for index in sorted(conflicts):
            start, end = self._span(index)
            self._queue.insert(0, Check(index, start, end, whole=True))
        samples = [c for c in self._queue if not c.whole]
        wholes = [c for c in self._queue if c.whole]
        wholes.sort(key=lambda c: doubt(c.index))  # stable: random among equals
        if conflicts:
            self._queue = wholes + samples
        else:
            self._queue = samples + wholes
        started: list[Check] = []
        while self._queue:
            check = self._queue[0]
            if check.whole and len(self._pending) >= self._parallel:
                break
            self._queue.pop(0)
            self._pending.add(check)
            self.checked_bytes += check.end - check.start
            started.append(check)
        return started

    def result(self, check: Check, matched: bool | None) -> Verdict:
        """The mirror's answer to `check` (None: nothing to compare, the copy was gone)."""
        if check not in self._pending:
            return Verdict()
        self._pending.discard(check)
        author = self._suspects.get(check.index)
        if author is None or matched is None:
            return self._next_phase()
        if not matched:
            return self._convict(author)
        if check.whole:
            del self._suspects[check.index]
            return Verdict(confirmed=check.index)
        return self._next_phase()

    def failed(self, check: Check) -> None:
        """The mirror could not answer: ask again later."""
        if check in self._pending:
            self._pending.discard(check)
            self._queue.insert(0, check)
            self.checked_bytes -= check.end - check.start

    # ------------------------------------------------------------------ internals

    def _asked_whole(self, index: int) -> bool:
        return any(c.whole and c.index == index for c in (*self._queue, *self._pending))

    def _convict(self, author: Peer) -> Verdict:
        pieces = tuple(sorted(i for i, a in self._suspects.items() if a == author))
        for index in pieces:
            del self._suspects[index]
        # Samples of other authors still run (cheap, and a second liar is caught in the same
        # round); whole pieces wait for the next round, which the retracted pieces may not need.
        self._queue = [c for c in self._queue if c.index in self._suspects and not c.whole]
        self._convicted_this_round = True
        return Verdict(liar=author, retract=pieces)

    def _next_phase(self) -> Verdict:
        if not self.busy and not self._convicted_this_round:
            self._queue_whole_pieces()
        return Verdict()

    def _queue_whole_pieces(self) -> None:
        pieces = sorted(self._suspects)
        self._rng.shuffle(pieces)
        for index in pieces:
            start, end = self._span(index)
            self._queue.append(Check(index, start, end, whole=True))

    def _sample_checks(self, author: Peer) -> list[Check]:
        pieces = sorted(i for i, a in self._suspects.items() if a == author)
        chosen = self._rng.sample(pieces, min(self._samples, len(pieces)))
        while len(chosen) < self._samples:  # fewer pieces than samples: more blocks of them
            chosen.append(self._rng.choice(pieces))
        checks: list[Check] = []
        for index in chosen:
            start, end = self._span(index)
            offset = start + self._rng.randrange(max(1, end - start - self._block + 1))
            check = Check(index, offset, min(end, offset + self._block), whole=False)
            if check not in checks:
                checks.append(check)
        return checks
