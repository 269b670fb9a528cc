"""Upload rate cap: one token bucket per node, shared by every upload (`--upload-rate`).

Owns: the token arithmetic (`TokenBucket`, synchronous, injected clock) and `throttle`, the one
asyncio line that sleeps what the bucket says. Trusts: its clock to be monotonic.

Tokens are bytes. `take(n)` always succeeds and returns how long the caller must wait before
sending: the bucket goes into debt, so concurrent uploads queue behind each other in the order
they asked (each later caller's wait includes the earlier callers' debt) and the node's total rate
never exceeds `rate` over any window longer than `burst / rate`. A request larger than `burst`
is allowed; it just waits longer.
"""

from __future__ import annotations

import asyncio

from dhtdeb.clock import Clock


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock: Clock) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("a token bucket needs a positive rate and burst")
        self._rate = float(rate)
        self._burst = float(burst)
        self._clock = clock
        self._tokens = self._burst
        self._stamp = clock.now()

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, rate: float) -> None:
        """Change the rate from now on; tokens earned so far were earned at the old rate.
        Waits already handed out by `take` are not revised."""
        if rate <= 0:
            raise ValueError("a token bucket needs a positive rate (use no bucket for no cap)")
        self._refill()
        self._rate = float(rate)

    @property
    def burst(self) -> float:
        return self._burst

    @property
    def tokens(self) -> float:
        """Tokens available now; negative while earlier takers are still being paced."""
        self._refill()
        return self._tokens

    def take(self, n: float) -> float:
        """Spend `n` tokens; return seconds to wait before the `n` bytes may be sent (0: now)."""
        if n < 0:
            raise ValueError("cannot take a negative number of tokens")
        self._refill()
        self._tokens -= n
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self._rate

    def _refill(self) -> None:
        now = self._clock.now()
        elapsed = now - self._stamp
        self._stamp = now
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)


def bucket_for(
    rate: float | None, clock: Clock, *, burst: float | None = None
) -> TokenBucket | None:
    """The node's bucket for `--upload-rate` (bytes/s); None or 0 means no cap and no bucket.

    Default burst: a quarter second of traffic, at least 256 KiB, so that pacing in 64 KiB steps
    never stalls on an empty bucket and a short burst cannot exceed the cap by much."""
    if not rate:
        return None
    return TokenBucket(rate, burst if burst is not None else max(rate / 4, 256 * 1024), clock)


async def throttle(bucket: TokenBucket | None, n: int) -> None:
    """Wait until `n` bytes may be sent under `bucket` (no bucket: at once)."""
    if bucket is None:
        return
    delay = bucket.take(n)
    if delay > 0:
        await asyncio.sleep(delay)
