"""The order of one download's searches for peers, shared by the daemon's driver
(swarm/download.py) and the simulation's (sim/download.py): the simulation runs this sequence,
not a copy of it.

Owns: the sequence. First the holders hinted before the DHT (the daemon's peers of late, asked in
one LAN round trip); unless one of them holds the file, the first DHT lookup, while the mirror
waits as `LookupPlan` says; then the later lookups, now and then, while the plan wants more
peers: peers that start the same download later (a flash crowd) announce themselves too.
`LookupPlan` decides every wait and whether to look again; the scheduler hears when the mirror
may start; the driver's callables do the I/O and hand the peers they find to the scheduler.
Trusts: the driver's callables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from dhtdeb.clock import Clock
from dhtdeb.swarm.lookup_plan import LookupPlan
from dhtdeb.swarm.scheduler import SwarmScheduler

# One DHT lookup: the first (given the plan, which it tells when holders come) or a later one
# (None); whether it found usable peers.
FindPeers = Callable[[LookupPlan | None], Awaitable[bool]]
# The hinted holders, asked before the DHT (waiting for a hinted peer that is fetching the file
# unless told not to): whether one of them holds the file, and whether any was seen at all.
AskHolders = Callable[[bool], Awaitable[tuple[bool, bool]]]


@dataclass
class PeerSearch:
    plan: LookupPlan
    scheduler: SwarmScheduler
    clock: Clock
    find_peers: FindPeers
    wake: Callable[[], None]  # the driver's scheduling round is due
    # First lookups run to their end after their download (for the race's history): kept here.
    background: set[asyncio.Task[bool]]
    ask_holders: AskHolders | None = None

    async def run(self) -> None:
        plan = self.plan
        if plan.alone():
            # Nobody had any of the last files: the mirror starts now, the lookups run beside.
            self._mirror_may_start()
        found = hinted = False
        if self.ask_holders is not None:
            hinted, found = await self.ask_holders(not plan.alone())
        if hinted:
            plan.hinted()
        else:
            first = asyncio.ensure_future(self.find_peers(plan))
            try:
                await asyncio.wait({first}, timeout=plan.mirror_wait(self.clock.now()))
                self._mirror_may_start()
                found = await asyncio.shield(first) or found
            finally:
                self.background.add(first)  # runs to its end for the race's history
                first.add_done_callback(self.background.discard)
        plan.first_lookup_ended(found)
        self._mirror_may_start()
        for pause in plan.later_lookups():
            await asyncio.sleep(pause)
            if plan.wants_more_peers():
                known = self.scheduler.peers_admitted
                await self.find_peers(None)
                admitted = self.scheduler.peers_admitted
                plan.later_lookup_ended(admitted > known, admitted > 0)
                self.wake()

    def _mirror_may_start(self) -> None:
        self.scheduler.lookup_deadline_passed(now=self.clock.now())
        self.wake()
