"""How far one file's swarm download has come: which of its pieces are accepted.

Owns: the accepted flag of every piece, their count, and the lowest piece not accepted (apt reads
in order, so most questions start there). Trusts: the scheduler, which accepts a piece only after
it was checked (scheduler.py, list_trust.py), and retracts one only on the inquiry's verdict.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["Progress"]


class Progress:
    def __init__(self, piece_count: int) -> None:
        self.piece_count = piece_count
        self.all_pieces = frozenset(range(piece_count))
        self.count = 0
        self.low = 0  # lowest index not accepted
        self._flags = [False] * piece_count

    def has(self, index: int) -> bool:
        return self._flags[index]

    @property
    def complete(self) -> bool:
        return self.count == self.piece_count

    def accept(self, index: int) -> bool:
        """Accept `index`; false when it already was."""
        if self._flags[index]:
            return False
        self._flags[index] = True
        self.count += 1
        while self.low < self.piece_count and self._flags[self.low]:
            self.low += 1
        return True

    def retract(self, index: int) -> bool:
        """`index` is missing again; false when it was not accepted."""
        if not self._flags[index]:
            return False
        self._flags[index] = False
        self.count -= 1
        self.low = min(self.low, index)
        return True

    def ahead(self) -> range:
        """The pieces from the lowest one not accepted to the last."""
        return range(self.low, self.piece_count)

    def missing(self) -> Iterator[int]:
        """The pieces not accepted, lowest first."""
        return (i for i in self.ahead() if not self._flags[i])
