"""Defences against hostile senders: write tokens, per-source rate limits, quiet warnings.

Owns: the small synchronous cores that decide whether a datagram deserves work. Trusts: only the
UDP source address (and even that only as far as a token round-trip proves it). Time comes from an
injected `Clock`, randomness from an injected `random.Random`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
import random
from collections import OrderedDict

from dhtdeb.clock import Clock

Address = tuple[str, int]

TOKEN_ROTATION = 300.0  # BEP 5: rotate every 5 minutes, accept the current and previous secret
TOKEN_SIZE = 8


class WriteTokens:
    """Tokens bound to a requester's (host, port): proof that it receives datagrams there.

    A get_peers/find_node reply carries a token; an announce_peer must bring it back from the same
    address. A spoofed source never sees the reply, so it cannot announce a victim's address.
    """

    def __init__(self, clock: Clock, rng: random.Random, rotation: float = TOKEN_ROTATION) -> None:
        self._clock = clock
        self._rng = rng
        self._rotation = rotation
        self._secret = rng.randbytes(16)
        self._previous: bytes | None = None
        self._rotated_at = clock.now()

    def _rotate_if_due(self) -> None:
        now = self._clock.now()
        if now - self._rotated_at >= 2 * self._rotation:
            self._previous = None  # idle long enough that both secrets are stale
            self._secret = self._rng.randbytes(16)
            self._rotated_at = now
        elif now - self._rotated_at >= self._rotation:
            self._previous = self._secret
            self._secret = self._rng.randbytes(16)
            self._rotated_at = now

    @staticmethod
    def _mac(secret: bytes, peer: Address) -> bytes:
        message = f"{peer[0]}|{peer[1]}".encode()
        return hashlib.blake2b(message, key=secret, digest_size=TOKEN_SIZE).digest()

    def issue(self, peer: Address) -> bytes:
        self._rotate_if_due()
        return self._mac(self._secret, peer)

    def check(self, token: bytes | None, peer: Address) -> bool:
        if token is None:
            return False
        self._rotate_if_due()
        if hmac.compare_digest(token, self._mac(self._secret, peer)):
            return True
        return self._previous is not None and hmac.compare_digest(
            token, self._mac(self._previous, peer)
        )


@functools.lru_cache(maxsize=1 << 16)
def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address. Asked for every datagram sent and received:
    parsing it each time was 3 % of a simulated fleet's time. The cache is the process's, so
    it holds a simulated fleet's every host (at 4,096 entries a 10,000-node fleet missed it
    on nearly every datagram: 2 % of its time); a daemon's few thousand take a few hundred KB."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def source_key(peer: Address, allow_loopback: bool) -> str:
    """One identity per IP; on loopback (tests: many nodes on 127.0.0.1) one per socket."""
    host, port = peer
    if allow_loopback and is_loopback(host):
        return f"{host}|{port}"
    return host


class SourceLimiter:
    """Token bucket per source; the table of sources is an LRU of bounded size."""

    def __init__(self, clock: Clock, *, rate: float, burst: float, max_sources: int = 4096) -> None:
        self._clock = clock
        self._rate = rate
        self._burst = burst
        self._max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, source: str, cost: float = 1.0) -> bool:
        now = self._clock.now()
        tokens, stamp = self._buckets.pop(source, (self._burst, now))
        tokens = min(self._burst, tokens + (now - stamp) * self._rate)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        self._buckets[source] = (tokens, now)
        while len(self._buckets) > self._max_sources:
            self._buckets.popitem(last=False)
        return allowed

    def charge(self, source: str, cost: float) -> None:
        """Debit work found out after the request was allowed (a batch's extra keys); the
        balance may go down to -burst, so the source waits longer before its next request."""
        now = self._clock.now()
        tokens, stamp = self._buckets.pop(source, (self._burst, now))
        tokens = min(self._burst, tokens + (now - stamp) * self._rate)
        self._buckets[source] = (max(-self._burst, tokens - cost), now)
        while len(self._buckets) > self._max_sources:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


class QuietLog:
    """At most one warning per kind per interval, never a traceback; the rest are counted."""

    def __init__(self, logger: logging.Logger, clock: Clock, interval: float = 60.0) -> None:
        self._logger = logger
        self._clock = clock
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, kind: str, message: str, *args: object) -> None:
        now = self._clock.now()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        suffix = f" ({suppressed} similar suppressed)" if suppressed else ""
        self._logger.warning(message + suffix, *args)
