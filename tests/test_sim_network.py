"""The simulation's bandwidth model (dhtdeb/sim/network.py): equal shares of links, a per-client
cap on the mirror, and rates that change when, and only when, a link's share does."""

from __future__ import annotations

import asyncio

from dhtdeb.sim.loop import VirtualTimeLoop
from dhtdeb.sim.network import Bandwidth, Link


def _run(main: object) -> None:
    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(main)  # type: ignore[arg-type]
    finally:
        loop.close()


def test_a_capped_mirror_gives_each_client_its_rate_until_the_capacity_is_shared() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        bandwidth = Bandwidth(loop)
        mirror = Link(capacity=10.0, per_transfer=4.0)
        downs = [Link(capacity=100.0) for _ in range(3)]
        first = bandwidth.start(40, (mirror, downs[0]))
        second = bandwidth.start(40, (mirror, downs[1]))
        assert (first.rate, second.rate) == (4.0, 4.0)  # under the capacity: the cap each
        third = bandwidth.start(40, (mirror, downs[2]))
        assert first.rate == second.rate == third.rate == 10.0 / 3  # the capacity, shared
        bandwidth.stop(third)
        assert (first.rate, second.rate) == (4.0, 4.0)
        await first.done
        assert loop.time() >= 10.0  # 40 bytes at 4/s, with a while at 10/3
        assert first.moved(loop.time()) == 40

    _run(main())


def test_a_slow_downlink_keeps_its_rate_when_the_uncapped_mirror_gains_clients() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        bandwidth = Bandwidth(loop)
        mirror = Link(capacity=100.0, per_transfer=8.0)
        slow = Link(capacity=2.0)
        fast = Link(capacity=50.0)
        a = bandwidth.start(10, (mirror, slow))
        b = bandwidth.start(10, (mirror, slow))
        assert a.rate == b.rate == 1.0  # the downlink shared by two
        c = bandwidth.start(80, (mirror, fast))
        assert c.rate == 8.0 and a.rate == 1.0
        timers = (a.timer, b.timer)
        d = bandwidth.start(80, (mirror, fast))
        assert (a.timer, b.timer) == timers  # nothing of theirs changed: not re-timed
        assert c.rate == d.rate == 8.0
        await asyncio.gather(a.done, b.done, c.done, d.done)
        assert loop.time() >= 10.0  # each of a and b: 10 bytes at 1/s

    _run(main())
