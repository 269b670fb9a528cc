"""One simulated machine: a real DHT node, a store, a peer server's answers, and apt's batch.

Owns: the machine's life (join, upkeep ticks, leave, rejoin with its saved DHT state), its store
of verified files, its upload slots, and running its upgrade through `SimDownload`s, up to ten at
a time (apt pipelines ten requests and the proxy starts their downloads at once). Trusts: the
world for who is reachable; what it stores is what a download verified.

Like the daemon (app.py): a committed file is announced with `announce_later` (batched), a
download of several pieces is announced when it starts, the whole store is announced again on
every start, and the node knows itself by its id (`find_peers` leaves it out).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path
from typing import TYPE_CHECKING

from dhtdeb.dht import DhtConfig, DhtNode, DhtTuning, open_dht
from dhtdeb.discovery import Peer
from dhtdeb.netaddr import HostPort
from dhtdeb.sim.download import ListAnswer, SimDownload, true_digests
from dhtdeb.sim.network import DHT_PORT, Link, TransferAborted
from dhtdeb.sim.workload import DebFile, MachinePlan
from dhtdeb.swarm.lookup_plan import MirrorRace
from dhtdeb.swarm.peer_server import DEFAULT_MAX_UPLOADS, upload_cap
from dhtdeb.swarm.penalties import PeerPenalties
from dhtdeb.swarm.pieces import PieceList

if TYPE_CHECKING:
    from dhtdeb.sim.scale import World

MAX_UPLOADS = DEFAULT_MAX_UPLOADS  # beyond it (or twice as many for a small file): 503
APT_PIPELINE = 10  # requests apt pipelines on one connection; the proxy reads ahead


def host_address(index: int) -> str:
    return f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"


class SimNode:
    def __init__(
        self, world: World, plan: MachinePlan, rng: random.Random, state_dir: Path
    ) -> None:
        self.world = world
        self.plan = plan
        self.rng = rng
        self.host = host_address(plan.index + 1)
        self.node_id = rng.randbytes(20)
        self.peer = Peer(self.host, DHT_PORT, self.node_id)
        self.up = Link(plan.up)
        self.down = Link(plan.down)
        self.state_dir = state_dir
        self.store: dict[str, DebFile] = {}
        self.stored_at: dict[str, float] = {}
        self.downloads: dict[str, SimDownload] = {}
        self.uploads = 0
        self.race = MirrorRace()
        self.background: set[asyncio.Task[bool]] = set()  # first lookups outliving downloads
        self.penalties = PeerPenalties(world.clock)
        self.dht: DhtNode | None = None
        self.online = False
        self.joins = 0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def announcing(self) -> bool:
        """Online, and its DHT does not take itself to be unreachable (dht/reachability.py)."""
        dht = self.dht
        return self.online and dht is not None and not dht.engine.protocol.reachability.unreachable

    def derived_rng(self) -> random.Random:
        return random.Random(self.rng.getrandbits(64))

    # -- life -----------------------------------------------------------------------------------

    async def join(self, bootstrap: tuple[HostPort, ...], tuning: DhtTuning) -> None:
        world = self.world
        self.dht = await open_dht(
            DhtConfig(
                HostPort(self.host, DHT_PORT),
                self.state_dir,
                bootstrap=bootstrap,
                lan=False,
                allow_loopback_peers=False,
                node_id=self.node_id,
            ),
            clock=world.clock,
            rng=self.derived_rng(),
            tuning=tuning,
            network=world.internet.datagrams,
            maintenance=False,
        )
        self.online = True
        self.joins += 1
        for sha256 in self.store:  # app.py announces the store on every start
            self.dht.announce_later(sha256)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._upkeep(tuning.maintenance_interval)))

    async def _upkeep(self, interval: float) -> None:
        """The DHT's maintenance tick, every `interval` from a random phase, sooner while the
        routing table is empty, as the daemon's loop (`DhtServer.maintenance_pause`; no state
        save: the state is saved when the node leaves)."""
        phase = self.rng.uniform(0.0, interval)
        dht = self.dht
        await asyncio.sleep(phase if dht is None else min(phase, dht.engine.maintenance_pause()))
        while (dht := self.dht) is not None:
            await dht.engine.maintain()
            if (dht := self.dht) is None:
                return
            await asyncio.sleep(dht.engine.maintenance_pause())

    def start_upgrade(self, at: float) -> None:
        """apt-get upgrade at virtual time `at`, if this session lasts until then."""

        async def later() -> None:
            await asyncio.sleep(max(0.0, at - self.world.clock.now()))
            await self.upgrade()

        self._tasks.append(asyncio.get_running_loop().create_task(later()))

    async def leave(self) -> None:
        """Shut down: downloads stop, uploads are cut, the DHT saves its contacts."""
        self.online = False
        tasks, self._tasks = [*self._tasks, *self.background], []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        bandwidth = self.world.bandwidth
        for link in (self.up, self.down):
            for transfer in list(link.transfers):
                bandwidth.stop(transfer, TransferAborted("host went offline"))
        dht, self.dht = self.dht, None
        if dht is not None:
            self.world.tally.dht_left(dht.counters())
            await dht.close()
        self.world.internet.forget_mappings(self.host)

    # -- apt's batch ----------------------------------------------------------------------------

    async def upgrade(self) -> None:
        gate = asyncio.Semaphore(APT_PIPELINE)
        tally = self.world.tally
        tally.batches.append(len(self.plan.batch))
        waiting = len(self.plan.batch)  # neither through apt's pipeline nor dropped yet
        tally.queued += waiting

        def out_of_queue(count: int, *, started: bool) -> None:
            nonlocal waiting
            waiting -= count
            tally.queued -= count
            if not started:
                tally.not_started += count

        async def fetch(debfile: DebFile) -> None:
            try:
                await gate.acquire()  # apt's pipeline
            except asyncio.CancelledError:
                out_of_queue(1, started=False)  # the machine left (or the run ended) first
                raise
            out_of_queue(1, started=True)
            try:
                if debfile.sha256 in self.store:
                    return
                download = SimDownload(self, debfile)
                self.downloads[debfile.sha256] = download
                tally.requested(debfile.size)
                try:
                    ok = await download.run()
                except asyncio.CancelledError:
                    tally.abandoned(download)
                    raise
                finally:
                    del self.downloads[debfile.sha256]
                tally.finished(download, ok)
                if ok:
                    self.store_file(debfile)
            finally:
                gate.release()

        try:
            await asyncio.gather(*(fetch(f) for f in self.plan.batch))
        except asyncio.CancelledError:
            if waiting:  # fetches cancelled before their first line ran (left as gather began)
                out_of_queue(waiting, started=False)
            raise

    def store_file(self, debfile: DebFile) -> None:
        self.store[debfile.sha256] = debfile
        self.stored_at[debfile.sha256] = self.world.clock.now()
        self.world.holders.setdefault(debfile.sha256, []).append(self)
        if self.dht is not None:
            self.dht.announce_later(debfile.sha256)

    async def announce_now(self, sha256: str) -> None:
        if self.dht is not None:
            with contextlib.suppress(Exception):
                await self.dht.announce(sha256)

    # -- the peer server's answers ----------------------------------------------------------

    def list_answer(self, sha256: str) -> ListAnswer | None:
        stored = self.store.get(sha256)
        if stored is not None:
            return ListAnswer(PieceList(stored.size, true_digests(sha256, stored.size)), None)
        download = self.downloads.get(sha256)
        return None if download is None else download.list_answer()

    def serves(self, sha256: str, index: int) -> bool:
        if sha256 in self.store:
            return True
        download = self.downloads.get(sha256)
        return download is not None and download.serves(index)

    def upload_slot(self, size: int) -> bool:
        """Whether an upload of `size` bytes may start now (the peer server's rule)."""
        if self.uploads >= upload_cap(MAX_UPLOADS, size):
            return False
        self.uploads += 1
        return True

    def upload_done(self) -> None:
        self.uploads -= 1

    async def upload(self, size: int, to: SimNode) -> None:
        await self.world.bandwidth.send(size, (self.up, to.down), self.world.tally.peer_sent)

    async def from_mirror(self, size: int) -> None:
        world = self.world

        def count(moved: int) -> None:
            world.tally.mirror_sent(world.clock.now(), moved)

        await world.bandwidth.send(size, (world.mirror, self.down), count)
