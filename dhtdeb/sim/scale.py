"""`dhtdeb sim scale`: a fleet of simulated machines on one virtual-time loop.

Owns: building the world (internet, mirror, bootstrap node, machines) from one seed, running every
machine's sessions through the workload window, and the report. Trusts: nothing outside the
process; the DHT state directories live in a temporary directory.

Timeline (virtual seconds): the machines online when the update appears join during a warm-up;
the window of `hours` opens with the update; machines come and go as their sessions say; after
the window, a drain lets running downloads end (nothing new starts), then every machine leaves.
A run can end sooner: at the virtual time `until`, or at Ctrl-C (`SimInterrupted`); its report
then says when it stopped and how many files were still on their way (see `report`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import random
import resource
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dhtdeb.dht import DhtConfig, DhtNode, DhtTuning, open_dht
from dhtdeb.discovery import Peer
from dhtdeb.netaddr import HostPort
from dhtdeb.sim.loop import LoopClock, VirtualTimeLoop
from dhtdeb.sim.network import DHT_PORT, Bandwidth, HostPlace, Internet, Link
from dhtdeb.sim.node import SimNode
from dhtdeb.sim.report import Tally, report
from dhtdeb.sim.workload import WorkloadParams, plan_fleet

BOOTSTRAP_HOST = "10.255.255.254"
MIRROR_HOST = "10.255.255.253"
# A holder counts for the lookup statistics once its file has been stored this long (the
# announce gathers for 0.1 s, then a lookup and the announce itself take some round trips).
ANNOUNCED_AFTER = 5.0
# Virtual seconds between two freezes of the objects alive (sim/loop.py): the 300-node run's CPU
# time fell from 196 s to 142 s, its full collections' from 29 s to 7 s.
FREEZE_EVERY = 60.0
# The collector's thresholds during a run (the process's own are restored after it). With
# Python's (700, 10, 10) a 10,000-node run spent 22 % of its first 300 s of CPU collecting, and
# 35 % of it in the middle of the update (py-spy --native: gc_collect_main), mostly in full
# collections of what had been allocated since the last freeze; with these, 5 % and 3.5 %. The
# 1,000-node run: 44 s of collections become 8 s, and its report is the same (the collector
# frees nothing the simulation still uses).
GC_THRESHOLDS = (50_000, 20, 100)
# Progress lines (`sim scale --progress`): wall seconds between two, looked at each time the
# virtual clock passes another second.
PROGRESS_EVERY = 60.0
PROGRESS_CHECK = 1.0


@dataclass(frozen=True)
class ScaleParams:
    nodes: int
    seed: int
    workload: WorkloadParams = field(default_factory=WorkloadParams)
    loss: float = 0.01  # of datagrams
    mirror_capacity: float = 1.25e9  # bytes/s, all clients together (10 Gbit/s)
    mirror_per_connection: float = 12.5e6  # bytes/s to one client (100 Mbit/s)
    warmup: float = 600.0
    drain: float = 900.0
    tuning: DhtTuning = field(default_factory=DhtTuning)
    until: float | None = None  # virtual time at which to stop, if before the drain's end

    def summary(self) -> dict[str, Any]:
        described = dataclasses.asdict(self)
        described.pop("nodes")
        described.pop("seed")
        if self.until is None:
            described.pop("until")  # so that the reports of runs to the end stay as they were
        return described


class SimInterrupted(Exception):
    """The run was stopped by Ctrl-C; `report` is what it had measured by then."""

    def __init__(self, partial: dict[str, Any]) -> None:
        super().__init__(f"interrupted at virtual {partial['stopped_at_s']:.1f} s")
        self.report = partial


class World:
    """Everything the machines share: the clock, the internet, the mirror and the tally."""

    def __init__(
        self, params: ScaleParams, loop: asyncio.AbstractEventLoop, tmp: Path, elapsed: _Elapsed
    ) -> None:
        """`elapsed`: the run's wall and CPU time, for its progress lines and report."""
        self.params = params
        self.clock = LoopClock(loop)
        rng = random.Random(params.seed)
        self.internet = Internet(random.Random(rng.getrandbits(64)), loss=params.loss)
        self.bandwidth = Bandwidth(loop)
        self.mirror = Link(params.mirror_capacity, params.mirror_per_connection)
        self.tally = Tally(start=params.warmup)
        self.archive, plans = plan_fleet(params.workload, params.nodes, params.seed)
        self.nodes = [
            SimNode(self, plan, random.Random(rng.getrandbits(64)), tmp / f"node{plan.index}")
            for plan in plans
        ]
        self.by_host = {node.host: node for node in self.nodes}
        for node in self.nodes:
            plan = node.plan
            self.internet.add_host(node.host, HostPlace(plan.x, plan.y, plan.access, plan.nat))
        self.internet.add_host(MIRROR_HOST, HostPlace(0.5, 0.5, 0.001, nat=False))
        self.internet.add_host(BOOTSTRAP_HOST, HostPlace(0.5, 0.5, 0.002, nat=False))
        self._join_rng = random.Random(rng.getrandbits(64))
        self.tmp = tmp
        self.holders: dict[str, list[SimNode]] = {}  # machines that stored a file, in order
        self.stopped_at: float | None = None  # virtual time of a stop before the drain's end
        self._main: asyncio.Task[None] | None = None  # the task running `run`
        self.elapsed = elapsed

    # -- what a download asks of the world --------------------------------------------------

    def reachable(self, peer: Peer, asker: SimNode) -> SimNode | None:
        """The machine at `peer` if a TCP connection to it can be made."""
        node = self.by_host.get(peer.host)
        if node is None or node is asker or not node.online or node.plan.nat:
            return None
        return node

    def rtt_half(self, a: SimNode, b: SimNode) -> float:
        return self.internet.one_way(a.host, b.host)

    def mirror_half(self, a: SimNode) -> float:
        return self.internet.one_way(a.host, MIRROR_HOST)

    def _settled_holders(self, sha256: str, now: float, asker: SimNode) -> Iterator[SimNode]:
        """Machines other than `asker` that stored the file a while ago (online or not)."""
        return (
            node
            for node in self.nodes_holding(sha256)
            if node is not asker and node.stored_at[sha256] <= now - ANNOUNCED_AFTER
        )

    def announced_holder(self, sha256: str, now: float, asker: SimNode) -> bool:
        """Whether an online machine other than `asker` stored the file a while ago and
        announces it (a machine that found itself unreachable withholds its announces)."""
        return any(node.announcing for node in self._settled_holders(sha256, now, asker))

    def reachable_holder(self, sha256: str, asker: SimNode) -> bool:
        """Whether some online machine that accepts connections had stored the file a while
        ago (the diagnosis of mirror bytes in the report)."""
        return any(
            node.online and not node.plan.nat
            for node in self._settled_holders(sha256, self.clock.now(), asker)
        )

    def holding(self, sha256: str, peers: list[Peer]) -> int:
        nodes = (self.by_host.get(peer.host) for peer in peers)
        return sum(1 for node in nodes if node is not None and sha256 in node.store)

    def nodes_holding(self, sha256: str) -> list[SimNode]:
        return self.holders.get(sha256, [])

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> None:
        params = self.params
        main = self._main = asyncio.current_task()
        assert main is not None  # run() is the runner's task
        boot: DhtNode | None = None
        try:
            boot = await open_dht(
                DhtConfig(
                    HostPort(BOOTSTRAP_HOST, DHT_PORT),
                    self.tmp / "bootstrap",
                    lan=False,
                    allow_loopback_peers=False,
                ),
                clock=self.clock,
                rng=random.Random(params.seed ^ 0xB007),
                tuning=params.tuning,
                network=self.internet.datagrams,
            )
            await asyncio.gather(*(self._sessions(node) for node in self.nodes))
        except asyncio.CancelledError:
            if self.stopped_at is None:
                raise  # Ctrl-C
            main.uncancel()  # the stop asked for (`stop`): the run ends here
        finally:
            if boot is not None:
                await boot.close()

    def stop(self) -> None:
        """End the run now (the loop's `stop_at`): the machines' sessions are cancelled."""
        self.note_stop()
        if self._main is not None:
            self._main.cancel()

    def progress_line(self) -> str:
        """Where the run is: virtual time, files, and what it has cost so far."""
        tally = self.tally
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux
        return (
            f"virtual {int(self.clock.now())} s: {tally.files_requested:,} files asked for,"
            f" {tally.files_finished:,} finished, {tally.running:,} running,"
            f" {tally.queued:,} queued;"
            f" CPU {self.elapsed.cpu():,.0f} s, peak memory {peak:.1f} GB"
        )

    def note_stop(self) -> None:
        """A stop before the drain's end: its time, and the DHT counters of the machines still
        online, counted as if they left (once: a Ctrl-C may follow `stop`)."""
        if self.stopped_at is not None:
            return
        self.stopped_at = self.clock.now()
        for node in self.nodes:
            if node.dht is not None:
                self.tally.dht_left(node.dht.counters())

    async def _sessions(self, node: SimNode) -> None:
        params = self.params
        window = params.workload.hours * 3600.0
        end = params.warmup + window + params.drain
        # machines online at the start join during the warm-up, in a random order
        warm_join = self._join_rng.uniform(0.0, 0.8 * params.warmup)
        bootstrap = (HostPort(BOOTSTRAP_HOST, DHT_PORT),)
        for number, (on, off) in enumerate(node.plan.sessions):
            at = warm_join if on == 0.0 else params.warmup + on
            await _sleep_until(at)
            await node.join(bootstrap, params.tuning)
            joined = self.clock.now()
            if number == 0:
                node.start_upgrade(params.warmup + node.plan.upgrade_at)
            leave = min(end, params.warmup + off)
            try:
                await _sleep_until(leave)
            finally:  # a stopped run counts the time its machines were online until then
                self.tally.online_seconds += self.clock.now() - joined
            await node.leave()
            if leave >= end:
                return


async def _sleep_until(at: float) -> None:
    delay = at - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


def _loop() -> VirtualTimeLoop:
    return VirtualTimeLoop(freeze_every=FREEZE_EVERY)


def run_scale(
    params: ScaleParams,
    *,
    progress: Callable[[str], object] | None = None,
    progress_every: float = PROGRESS_EVERY,
) -> dict[str, Any]:
    """Run one simulation; the report (same seed, same numbers, except `report.TIMINGS`).

    `progress` is given a line (`World.progress_line`) each `progress_every` wall seconds.
    Raises SimInterrupted, with the report so far, when Ctrl-C stops the run."""
    logger = logging.getLogger("dhtdeb")
    level = logger.level
    logger.setLevel(logging.ERROR)  # thousands of nodes, one stderr (restored after the run)
    started = _Elapsed()
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    partial: dict[str, Any] | None = None
    interrupted = False
    try:
        with tempfile.TemporaryDirectory(prefix="dhtdeb-sim-") as tmp:
            with asyncio.Runner(loop_factory=_loop) as runner:
                loop = runner.get_loop()
                assert isinstance(loop, VirtualTimeLoop)
                world = World(params, loop, Path(tmp), started)
                if params.until is not None:
                    loop.stop_at(params.until, world.stop)
                if progress is not None:
                    loop.every(PROGRESS_CHECK, _progress_check(world, progress, progress_every))
                try:
                    runner.run(world.run())
                except KeyboardInterrupt:
                    interrupted = True
                    world.note_stop()
                if world.stopped_at is not None:
                    # counted now: closing the runner cancels the downloads still running
                    partial = _report(world, params)
    except KeyboardInterrupt:
        if partial is None:
            raise  # before the run began: nothing measured
        interrupted = True  # another Ctrl-C while the runner closed: the report stands
    finally:
        gc.unfreeze()  # what the loop froze is collectable again (a sweep's next point)
        gc.set_threshold(*thresholds)
        logger.setLevel(level)
    if partial is None:
        return _report(world, params)
    if interrupted:
        raise SimInterrupted(partial)
    return partial


def _progress_check(
    world: World, progress: Callable[[str], object], every: float
) -> Callable[[], None]:
    due = time.monotonic() + every

    def check() -> None:
        nonlocal due
        now = time.monotonic()
        if now >= due:
            due = now + every
            progress(world.progress_line())

    return check


class _Elapsed:
    """Wall and CPU seconds since it was made (the CPU: this process's, user and system)."""

    def __init__(self) -> None:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def wall(self) -> float:
        return time.perf_counter() - self._wall

    def cpu(self) -> float:
        return time.process_time() - self._cpu


def _report(world: World, params: ScaleParams) -> dict[str, Any]:
    result = report(
        world.tally,
        nodes=params.nodes,
        seed=params.seed,
        hours=params.workload.hours,
        params=params.summary(),
        wall=world.elapsed.wall(),
        cpu=world.elapsed.cpu(),
    )
    if world.stopped_at is not None:
        result["stopped_at_s"] = round(world.stopped_at, 3)
        result["files_running"] = world.tally.running
        result["files_queued"] = world.tally.queued
    return result
