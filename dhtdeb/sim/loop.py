"""A virtual-time asyncio event loop: the real asyncio code of dhtdeb, run on simulated time.

Owns: the loop's clock. `time()` returns virtual seconds; the selector never waits, it moves the
clock to the next timer instead, so `asyncio.sleep`, `asyncio.timeout`, `call_later` and the
DHT's timeouts all run on the same virtual time, in a fixed order, as fast as the CPU allows.
Trusts: nothing; there is no real I/O under this loop (the datagram network is in memory), and a
loop with no ready callback and no timer is a deadlock, raised as `Stalled`.

Garbage collection: a fleet of simulated machines keeps millions of objects alive (routing tables,
peer stores, downloads), and CPython's full collections scan them all, again and again: at 300
machines they took a fifth of the run. With `freeze_every`, each time the virtual clock passes
another such interval the objects alive then are frozen (`gc.freeze`) and later collections
scan only younger ones. Frozen cyclic garbage is never freed, which costs memory, not results:
the freeze runs inside the clock's jump (`every`), so it adds no callback and moves no event.
So what a run makes by the hundred thousand must not be a reference cycle: a download's
scheduler was one, and a 10,000-node run kept every finished download (10.5 GB;
tests/test_scheduler.py checks that a finished one is freed without the collector).

Stopping early (`stop_at`): the stop is checked inside the clock's jump too, not set as a timer,
because one more timer in the heap would change the order in which timers due at the same instant
run, and so the history; a run stopped at a time is the full run up to that time.
"""

from __future__ import annotations

import asyncio
import gc
import math
import selectors
import socket
from collections.abc import Callable, Mapping
from typing import Any


class Stalled(RuntimeError):
    """Nothing is ready and no timer is set: the awaited result can never come."""


class _TimeJumpSelector(selectors.BaseSelector):
    """Holds the loop's self-pipe registration, never reports an event, and advances the
    loop's virtual clock by the timeout it is asked to wait."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop
        self._keys: dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._keys.pop(fd)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise Stalled("no callback is ready and no timer is set")
        self._loop.jump_to_next_timer()
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return dict(self._keys)

    def close(self) -> None:
        self._keys.clear()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock is virtual and jumps to the next timer."""

    def __init__(self, start: float = 0.0, *, freeze_every: float | None = None) -> None:
        self._virtual_now = start
        super().__init__(_TimeJumpSelector(self))
        self._clock_resolution = 0.0  # a timer runs once the clock has passed its deadline
        # (next time, interval, callback) of what runs each time the clock passes an interval
        self._periodic: list[tuple[float, float, Callable[[], object]]] = []
        if freeze_every:
            self.every(freeze_every, gc.freeze)
        self._stop_at = math.inf
        self._on_stop: Callable[[], object] | None = None

    def time(self) -> float:
        return self._virtual_now

    def every(self, interval: float, callback: Callable[[], object]) -> None:
        """Call `callback` each time the clock passes another `interval` (from now), inside the
        clock's jump: no timer, no callback of the loop, no event moved (`gc.freeze`, progress
        lines)."""
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self._periodic.append((self._virtual_now + interval, interval, callback))

    def stop_at(self, when: float, callback: Callable[[], object]) -> None:
        """Call `callback` once, with the clock at `when`, when every timer due by then has run
        and the clock would move past it."""
        self._stop_at, self._on_stop = when, callback

    def jump_to_next_timer(self) -> None:
        """With no callback ready, move the clock just past the earliest timer, so that the
        loop runs it with `time()` at or after its deadline (the loop's own `now + timeout`
        may round below it, and a core woken one ulp early would be woken again and again)."""
        # BaseEventLoop's deque of ready callbacks and heap of TimerHandles (not in typeshed)
        if getattr(self, "_ready"):  # noqa: B009
            return
        timers: list[asyncio.TimerHandle] = getattr(self, "_scheduled")  # noqa: B009
        if self._on_stop is not None and (not timers or timers[0].when() > self._stop_at):
            self._virtual_now = max(self._virtual_now, self._stop_at)
            callback, self._on_stop = self._on_stop, None
            callback()
            return
        if timers and timers[0].when() >= self._virtual_now:
            self._virtual_now = math.nextafter(timers[0].when(), math.inf)
        for number, (due, interval, callback) in enumerate(self._periodic):
            if self._virtual_now >= due:
                while due <= self._virtual_now:
                    due += interval
                self._periodic[number] = (due, interval, callback)
                callback()

    async def getaddrinfo(  # type: ignore[override]
        self,
        host: str | None,
        port: str | int | None,
        *,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[Any]:
        """Numeric addresses only, answered at once: no resolver thread (whose result would
        come in real time) and no DNS."""
        return socket.getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)


class LoopClock:
    """`dhtdeb.clock.Clock` reading the running loop's time: the cores and the loop agree."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def now(self) -> float:
        return self._loop.time()
