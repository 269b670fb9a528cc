"""PeerSearch, the order of one download's lookups, on a virtual clock: when each lookup runs."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random

from dhtdeb.discovery import Peer
from dhtdeb.sim.loop import LoopClock, VirtualTimeLoop
from dhtdeb.swarm.lookup_plan import LOOKUP_INTERVAL, LOOKUP_INTERVAL_MAX, LookupPlan, MirrorRace
from dhtdeb.swarm.peer_search import PeerSearch
from dhtdeb.swarm.scheduler import SwarmScheduler

SHA256 = hashlib.sha256(b"one piece").hexdigest()


def run_search(found_at: dict[int, list[Peer]], lookups: int) -> list[float]:
    """Run a one-piece download's search until `lookups` lookups ran; the n-th lookup (0: the
    first) finds `found_at[n]` (else the peers of the first). Returns when each one ran."""
    loop = VirtualTimeLoop()
    times: list[float] = []

    async def search() -> None:
        clock = LoopClock(loop)
        scheduler = SwarmScheduler(SHA256, 1000, rng=random.Random(1))
        done = asyncio.Event()

        async def find_peers(plan: LookupPlan | None) -> bool:
            times.append(clock.now())
            peers = found_at.get(len(times) - 1, found_at[0])
            scheduler.peers_found(peers, now=clock.now())
            if len(times) == lookups:
                done.set()
            return bool(peers)

        background: set[asyncio.Task[bool]] = set()
        plan = LookupPlan(1, MirrorRace())
        runner = asyncio.ensure_future(
            PeerSearch(plan, scheduler, clock, find_peers, lambda: None, background).run()
        )
        await done.wait()
        runner.cancel()
        await asyncio.gather(runner, *background, return_exceptions=True)

    try:
        loop.run_until_complete(search())
    finally:
        loop.close()
    return times


def test_later_lookups_that_find_nobody_new_come_ever_more_slowly() -> None:
    a, b = Peer("10.0.0.1", 9978), Peer("10.0.0.2", 9978)
    times = run_search({0: [a], 4: [a, b]}, lookups=8)
    pauses = [round(later - earlier, 6) for earlier, later in itertools.pairwise(times)]
    assert pauses == [
        LOOKUP_INTERVAL,  # the first lookup found a; the second finds nobody new
        2 * LOOKUP_INTERVAL,
        4 * LOOKUP_INTERVAL,
        8 * LOOKUP_INTERVAL,  # the fifth lookup finds b
        LOOKUP_INTERVAL,  # so the pause is short again, and grows again
        2 * LOOKUP_INTERVAL,
        4 * LOOKUP_INTERVAL,
    ]
    assert max(pauses) == LOOKUP_INTERVAL_MAX


def test_a_download_whose_lookups_find_nobody_looks_every_interval() -> None:
    """The start of a crowd whose announces are still on their way, or a file nobody holds
    yet: no reason to look less often."""
    times = run_search({0: []}, lookups=6)
    pauses = [round(later - earlier, 6) for earlier, later in itertools.pairwise(times)]
    assert pauses == [LOOKUP_INTERVAL] * 5
