"""dhtdeb's DHT: who holds a file, found without a tracker.

Owns: the public entry points (`DhtConfig`, `open_dht`, `DhtNode`, `run_bootstrap_node`). Every
line that knows about the `kademlia` package lives in this package; the rest of dhtdeb sees the
`PeerDiscovery` interface of `dhtdeb.discovery`. See docs/dht.md for the design and the list of
stock kademlia defects covered here.

A file's key is its SHA256 truncated to the DHT's 160 bits (the first 20 bytes). A `Peer` is the
UDP source address an announce came from; the peer's HTTP server listens on TCP at the same port.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dhtdeb.clock import Clock, MonotonicClock
from dhtdeb.dht.protocol import DhtTuning
from dhtdeb.dht.server import DhtServer, dht_key
from dhtdeb.dht.state import load_state
from dhtdeb.dht.transport import DatagramNetwork, MemoryNetwork, UdpNetwork, family_for_listen
from dhtdeb.dht.wire import Contact
from dhtdeb.discovery import DiscoveryStatistics, Peer
from dhtdeb.netaddr import HostPort

__all__ = [
    "DhtConfig",
    "DhtNode",
    "DhtTuning",
    "MemoryNetwork",
    "dht_key",
    "open_dht",
    "run_bootstrap_node",
    "saved_node_id",
]

log = logging.getLogger("dhtdeb.dht")

# Files stored in a row (apt's batches) are announced together: a key waits at most this long
# for others, and one batch holds at most ANNOUNCE_BATCH keys (their lookups and announces to one
# node share datagrams, see protocol.py); the next batch starts when this one is done.
ANNOUNCE_GATHER = 0.1
ANNOUNCE_BATCH = 96
# Between two batches: a machine that fetched an upgrade from the LAN stores 300 files in a few
# seconds, and back-to-back batches of their lookups and announces ran into the other machines'
# per-source limits (8 machines, bench/fleet.py).
ANNOUNCE_PAUSE = 0.5


@dataclass(frozen=True)
class DhtConfig:
    listen: HostPort  # UDP address; port 0 allowed (tests)
    state_dir: Path  # node id + contacts persisted here (JSON)
    bootstrap: tuple[HostPort, ...] = ()
    lan: bool = True  # LAN multicast discovery; --no-lan turns it off
    allow_loopback_peers: bool = True  # one-contact-per-IP rule excepts loopback
    node_id: bytes | None = None  # the daemon's identity; None: the saved one, or a new one


class DhtNode:
    """A running DHT node (implements `dhtdeb.discovery.PeerDiscovery`)."""

    def __init__(self, server: DhtServer, config: DhtConfig) -> None:
        self._server = server
        self._config = config
        self.address = HostPort(server.address[0], server.address[1])
        self._maintenance: asyncio.Task[None] | None = None
        self._announcer: asyncio.Task[None] | None = None
        self._tester: asyncio.Task[None] | None = None
        self._tested = asyncio.Event()  # the last dial test (dial.py) is over: announces may go
        self._queued: dict[str, None] = {}  # announce_later keys, in order
        self._announcing = 0  # keys of the batch being announced
        self._queue_changed = asyncio.Event()
        self._queue_idle = asyncio.Event()
        self._queue_idle.set()
        self._lan: object | None = None
        self._neighbour_callbacks: list[Callable[[Peer], None]] = []
        self._closed = False

    # -- PeerDiscovery ---------------------------------------------------------------------------
    async def announce(self, sha256_hex: str) -> None:
        """Tell the k nodes nearest the file's key that we hold it, now; re-announced until
        close. Announces made in one turn of the event loop share datagrams."""
        self._queued.pop(sha256_hex, None)
        await self._tested.wait()  # a node behind NAT learns it before it announces
        await self._server.announce(sha256_hex)

    def announce_later(self, sha256_hex: str) -> None:
        """Queue an announce: keys queued within ANNOUNCE_GATHER seconds go out together."""
        dht_key(sha256_hex)  # a bad key fails here, in the caller, not in the background
        self._queued[sha256_hex] = None
        self._queue_idle.clear()
        self._queue_changed.set()

    async def announces_done(self) -> None:
        """Wait until every queued announce has been made (tests, shutdown)."""
        await self._queue_idle.wait()

    async def _announce_queued(self) -> None:
        while True:
            await self._queue_changed.wait()
            await self._tested.wait()  # a node behind NAT learns it before it announces
            await asyncio.sleep(ANNOUNCE_GATHER)  # let a batch of apt's files gather
            self._queue_changed.clear()
            await self._announce_batches()
            if not self._queued:
                self._queue_idle.set()

    async def _announce_batches(self) -> None:
        while self._queued:
            batch = list(self._queued)[:ANNOUNCE_BATCH]
            for key in batch:
                del self._queued[key]
            self._announcing = len(batch)
            try:
                await self._server.announce_many(batch)
            except Exception as exc:  # one line: upkeep must go on (the schedule retries them)
                self._server.protocol.quiet.warn("announce", "DHT: announces failed: %r", exc)
            finally:
                self._announcing = 0
            if self._queued:
                await asyncio.sleep(ANNOUNCE_PAUSE)  # pacing, not synchronisation

    async def find_peers(
        self,
        sha256_hex: str,
        deadline: float,
        on_peers: Callable[[list[Peer]], None] | None = None,
    ) -> list[Peer]:
        """Peers for the file, merged from several nodes; what is known once `deadline` passes.
        This node is left out by its id (it listens on the same port as everyone else, under
        an address only the others know). `on_peers` hears of them as they are found."""
        key = dht_key(sha256_hex)

        def peers(found: list[Contact]) -> list[Peer]:  # the server leaves our own entries out
            return [Peer(p.host, p.port, p.node_id) for p in found]

        def tell(found: list[Contact]) -> None:
            if on_peers is not None and (fresh := peers(found)):
                on_peers(fresh)

        found = await self._server.find_peers(
            key, max(0.0, deadline), tell if on_peers is not None else None
        )
        return peers(found)

    async def bootstrap(self, addrs: Sequence[HostPort]) -> None:
        await self._server.bootstrap([(a.host, a.port) for a in addrs])

    def on_neighbour(self, callback: Callable[[Peer], None]) -> None:
        """Call `callback` with every dhtdeb node found on this LAN (by multicast) once it
        answered a ping."""
        self._neighbour_callbacks.append(callback)

    async def _lan_found(self, addrs: Sequence[HostPort]) -> None:
        await self.bootstrap(addrs)
        answered = {(c.ip, c.port): c.id for c in self._server.protocol.router.contacts()}
        for where in addrs:
            node_id = answered.get((where.host, where.port))
            if node_id is not None:
                for callback in self._neighbour_callbacks:
                    callback(Peer(where.host, where.port, node_id))

    def statistics(self) -> DiscoveryStatistics:
        schedule = self._server.schedule
        reached = schedule.reached()
        return DiscoveryStatistics(
            routing_table=len(self._server.protocol.router),
            stored_keys=self._server.storage.key_count(),
            announced=reached,
            unannounced=len(schedule) - reached + len(self._queued) + self._announcing,
            rate_limited=self._server.protocol.counters.get("rate_limited", 0),
            datagrams=dict(sorted(self._server.protocol.counters.items())),
            lookup_seconds={
                purpose: histogram.copy()
                for purpose, histogram in self._server.lookup_seconds.items()
            },
        )

    def _joined(self) -> None:
        """The routing table got its first contact: what no node could take while this one was
        alone (a fleet whose machines start one after another) is announced now, not at the
        next retry a minute or two later."""
        if self._announcer is not None:  # joined while running (not during open_dht's join)
            self._test_reachability()
        for key in self._server.schedule.unreached():
            self.announce_later(key)

    def _test_reachability(self) -> None:
        """Run a dial test (dial.py) now; announces wait for its end."""
        if self._closed or (self._tester is not None and not self._tester.done()):
            return
        self._tested.clear()
        self._tester = asyncio.get_running_loop().create_task(self._dial_test())

    async def _dial_test(self) -> None:
        try:
            await self._server.protocol.dials.test()
        except Exception as exc:  # upkeep must go on: the test is evidence, not a duty
            self._server.protocol.quiet.warn("dial", "DHT: reachability test failed: %r", exc)
        finally:
            self._tested.set()

    def counters(self) -> dict[str, int]:
        """Datagram counters: malformed, rate_limited, bad_tokens, timeouts, bytes_sent, ..."""
        return dict(self._server.protocol.counters)

    async def maintain(self) -> None:
        """One maintenance tick (the loop calls it every minute, sooner while the routing table
        is empty: `DhtServer.maintenance_pause`; simulations call it by hand)."""
        await self._server.maintain(self._config.state_dir)

    def save(self) -> None:
        self._server.save_state(self._config.state_dir)

    @property
    def engine(self) -> DhtServer:
        """The kademlia-based engine (tests, simulation, benchmarks)."""
        return self._server

    async def _maintenance_loop(self) -> None:
        while True:
            await asyncio.sleep(self._server.maintenance_pause())
            try:
                await self.maintain()
            except Exception as exc:  # upkeep must go on; one line, no traceback spam
                self._server.protocol.quiet.warn("maintain", "DHT maintenance failed: %r", exc)

    def _start(self, *, maintenance: bool) -> None:
        loop = asyncio.get_running_loop()
        self._announcer = loop.create_task(self._announce_queued())
        self._test_reachability()
        if maintenance:
            self._maintenance = loop.create_task(self._maintenance_loop())

    async def close(self) -> None:
        """Stop, and save the node id and contacts for the next start."""
        if self._closed:
            return
        self._closed = True
        for task in (self._maintenance, self._announcer, self._tester):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._lan is not None:
            from dhtdeb.lan import LanDiscovery

            assert isinstance(self._lan, LanDiscovery)
            await self._lan.close()
        try:
            self.save()
        except OSError as exc:
            log.warning("DHT: could not save state to %s: %s", self._config.state_dir, exc)
        await self._server.aclose()


def saved_node_id(state_dir: Path) -> bytes | None:
    """The node id a DHT state directory holds, if any (identity kept across upgrades)."""
    saved = load_state(state_dir)
    return saved.node_id if saved else None


async def open_dht(
    config: DhtConfig,
    *,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    tuning: DhtTuning | None = None,
    network: DatagramNetwork | None = None,
    maintenance: bool = True,
) -> DhtNode:
    """Bind, load saved state, join (saved contacts + config.bootstrap + LAN); a running node.

    `clock`, `rng` and `network` are injected for tests and simulation; production uses the
    monotonic clock, `random.SystemRandom` (message ids and token secrets must be unpredictable)
    and real UDP.
    """
    clock = clock or MonotonicClock()
    rng = rng or random.SystemRandom()
    tuning = tuning or DhtTuning()
    family = family_for_listen(config.listen.host)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    saved = load_state(config.state_dir)
    server = DhtServer(
        tuning=tuning,
        clock=clock,
        rng=rng,
        node_id=config.node_id or (saved.node_id if saved else rng.randbytes(20)),
        family=family,
        allow_loopback=config.allow_loopback_peers,
    )
    await server.listen_on(network or UdpNetwork(), config.listen.host, config.listen.port)
    node = DhtNode(server, config)
    server.protocol.on_joined = node._joined
    try:
        join = [*(saved.contacts if saved else ()), *((b.host, b.port) for b in config.bootstrap)]
        if join:
            await server.bootstrap(join)
        if config.lan and network is None:
            from dhtdeb.lan import LanDiscovery

            lan = LanDiscovery(server.node.id, server.address[1], on_found=node._lan_found)
            await lan.start()
            node._lan = lan
        node._start(maintenance=maintenance)
    except BaseException:
        await server.aclose()
        raise
    return node


async def run_bootstrap_node(
    config: DhtConfig, *, ready: asyncio.Event | None = None, tuning: DhtTuning | None = None
) -> None:
    """`dhtdeb bootstrap`: a DHT-only node that runs until cancelled, saving state periodically
    (maintenance) and on exit. `ready` is set once it listens."""
    node = await open_dht(config, tuning=tuning)
    log.info("DHT bootstrap node listening on %s", node.address)
    try:
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
    finally:
        await node.close()
