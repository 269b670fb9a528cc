"""When to re-announce: per-key due times with jitter, handed out in bounded batches.

Owns: the set of keys this node announces and when each is due again. Trusts: its callers. A peer
entry expires on the storing nodes after `peer_ttl` (45 min); each key is re-announced after
`interval * (1 - jitter * u)` (u uniform in [0, 1)), so thousands of keys announced together at
start-up spread out instead of coming back as one burst, and a maintenance tick re-announces at
most a batch.
"""

from __future__ import annotations

import heapq
import random

from dhtdeb.clock import Clock

RETRY_AFTER = 60.0


class AnnounceSchedule:
    def __init__(self, clock: Clock, rng: random.Random, interval: float, jitter: float) -> None:
        self._clock = clock
        self._rng = rng
        self._interval = interval
        self._jitter = jitter
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._reached: set[str] = set()  # keys whose last announce some node accepted
        self._withheld: set[str] = set()  # keys not announced: this node looks unreachable

    def _set(self, key: str, at: float) -> None:
        self._due[key] = at
        heapq.heappush(self._heap, (at, key))

    def announced(self, key: str, ok: bool) -> None:
        """Record an announce attempt; a failed one is retried soon (with jitter)."""
        now = self._clock.now()
        self._withheld.discard(key)
        if ok:
            self._reached.add(key)
            self._set(key, now + self._interval * (1.0 - self._jitter * self._rng.random()))
        else:
            self._reached.discard(key)
            self._set(key, now + RETRY_AFTER * (1.0 + self._rng.random()))

    def withheld(self, key: str) -> None:
        """Not announced (this node looks unreachable): tried again after RETRY_AFTER, and not
        among the `unreached` keys that are queued again at once (nor counted as reached)."""
        self._reached.discard(key)
        self._withheld.add(key)
        self._set(key, self._clock.now() + RETRY_AFTER * (1.0 + self._rng.random()))

    def forget(self, key: str) -> None:
        self._due.pop(key, None)

    def unreached(self) -> list[str]:
        """Keys whose last announce no node accepted (a node alone in the network)."""
        return [key for key in self._due if key not in self._reached and key not in self._withheld]

    def reached(self) -> int:
        return sum(1 for key in self._due if key in self._reached)

    def due(self, limit: int) -> list[str]:
        """Up to `limit` keys whose time has come, earliest first; they leave the schedule until
        `announced` puts them back."""
        now = self._clock.now()
        batch: list[str] = []
        while self._heap and len(batch) < limit and self._heap[0][0] <= now:
            at, key = heapq.heappop(self._heap)
            if self._due.get(key) == at:
                del self._due[key]
                batch.append(key)
        if len(self._heap) > 4 * len(self._due) + 64:  # drop stale heap entries
            self._heap = [(at, key) for key, at in self._due.items()]
            heapq.heapify(self._heap)
        return batch

    def next_due(self, key: str) -> float | None:
        return self._due.get(key)

    def keys(self) -> list[str]:
        return list(self._due)

    def __len__(self) -> int:
        return len(self._due)
