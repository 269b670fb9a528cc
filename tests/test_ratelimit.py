"""TokenBucket: exact arithmetic under a ManualClock; throttle only sleeps what take() says."""

from __future__ import annotations

import asyncio

import pytest

from dhtdeb.clock import ManualClock
from dhtdeb.swarm.ratelimit import TokenBucket, bucket_for, throttle


def test_full_bucket_sends_a_burst_at_once() -> None:
    bucket = TokenBucket(rate=1000, burst=500, clock=ManualClock())
    assert bucket.take(300) == 0.0
    assert bucket.take(200) == 0.0
    assert bucket.tokens == 0.0


def test_debt_schedules_callers_in_order() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=1000, burst=500, clock=clock)
    assert bucket.take(500) == 0.0
    assert bucket.take(250) == pytest.approx(0.25)
    # A second upload queues behind the first one's debt: the node's total rate stays capped.
    assert bucket.take(250) == pytest.approx(0.5)
    clock.advance(0.5)
    assert bucket.tokens == pytest.approx(0.0)
    assert bucket.take(100) == pytest.approx(0.1)


def test_refill_is_capped_at_burst() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=100, burst=50, clock=clock)
    bucket.take(50)
    clock.advance(60.0)
    assert bucket.tokens == 50.0
    assert bucket.take(60) == pytest.approx(0.1)


def test_take_larger_than_burst_waits_for_the_excess() -> None:
    bucket = TokenBucket(rate=10, burst=5, clock=ManualClock())
    assert bucket.take(25) == pytest.approx(2.0)


def test_long_run_rate_equals_the_cap() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=1 << 20, burst=256 * 1024, clock=clock)
    sent = 0
    for _ in range(1000):
        clock.advance(bucket.take(64 * 1024))
        sent += 64 * 1024
    # 1000 steps of 64 KiB at 1 MiB/s after a 256 KiB burst.
    assert clock.now() == pytest.approx((sent - 256 * 1024) / (1 << 20))


def test_rate_change_applies_from_now_on() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=100, burst=1000, clock=clock)
    bucket.take(1000)
    clock.advance(2.0)  # 200 tokens earned at the old rate
    bucket.rate = 400
    assert bucket.rate == 400
    assert bucket.tokens == pytest.approx(200)
    clock.advance(1.0)
    assert bucket.tokens == pytest.approx(600)
    assert bucket.take(1000) == pytest.approx(1.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 10), (-1, 10), (10, 0)])
def test_rejects_nonpositive_settings(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, ManualClock())


def test_rate_setter_rejects_zero_and_take_rejects_negative() -> None:
    bucket = TokenBucket(10, 10, ManualClock())
    with pytest.raises(ValueError):
        bucket.rate = 0
    with pytest.raises(ValueError):
        bucket.take(-1)


def test_no_rate_means_no_bucket() -> None:
    assert bucket_for(None, ManualClock()) is None
    assert bucket_for(0, ManualClock()) is None
    bucket = bucket_for(4 << 20, ManualClock())
    assert bucket is not None and bucket.rate == 4 << 20 and bucket.burst == 1 << 20
    small = bucket_for(1000, ManualClock())
    assert small is not None and small.burst == 256 * 1024


async def test_throttle_sleeps_what_take_says(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    bucket = TokenBucket(rate=100, burst=100, clock=ManualClock())
    await throttle(None, 10**9)
    await throttle(bucket, 100)
    await throttle(bucket, 50)
    assert slept == [pytest.approx(0.5)]
