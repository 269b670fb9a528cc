"""The one place that builds the running system.

`serve()` opens the state directory, loads the trusted keys, and starts every component; a reader
sees each of them start here, in order, and stop in reverse when the daemon is told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import random
import secrets
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from dhtdeb import __version__
from dhtdeb.announcer import announce_downloads
from dhtdeb.archive.chain import TrustChain
from dhtdeb.archive.index import ArchiveIndex
from dhtdeb.archive.last_signed import LastSigned
from dhtdeb.archive.signature import TrustedKeys
from dhtdeb.clock import MonotonicClock
from dhtdeb.discovery import NoDiscovery, Peer, PeerDiscovery
from dhtdeb.download_events import DownloadEvents
from dhtdeb.downloads import Downloads, RunningDownloads
from dhtdeb.errors import ConfigError, DhtdebError
from dhtdeb.metrics import metrics_renderer
from dhtdeb.mirror import MirrorClient
from dhtdeb.netaddr import HostPort
from dhtdeb.proxy.server import AccessPolicy, ProxyServer, build_server
from dhtdeb.recent_transfers import RecentTransfers
from dhtdeb.sdnotify import Notifier, keepalive
from dhtdeb.stats import Counters
from dhtdeb.store import ContentStore
from dhtdeb.swarm.context import SwarmContext
from dhtdeb.swarm.holders import HaveQueries, HolderHints
from dhtdeb.swarm.peer_client import PeerClient
from dhtdeb.swarm.peer_ledger import VIA_LAN, PeerLedger
from dhtdeb.swarm.peer_server import DEFAULT_MAX_UPLOADS, PeerServer
from dhtdeb.swarm.penalties import PeerPenalties

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from dhtdeb.dht import DhtConfig as DhtConfigLike

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_PROXY = HostPort("127.0.0.1", 9977)
DEFAULT_PEER = HostPort("0.0.0.0", 9978)


@dataclass(frozen=True)
class ServeConfig:
    state_dir: Path
    proxy: HostPort = DEFAULT_PROXY
    peer: HostPort = DEFAULT_PEER
    keyrings: tuple[Path, ...] = ()
    dht: bool = True
    lan: bool = True
    bootstrap: tuple[HostPort, ...] = ()
    allow_cidr: tuple[Network, ...] = field(default=())
    mirrors: tuple[HostPort, ...] = ()  # the only hosts the proxy fetches from; (): any
    cache_limit: int = 0
    announce: bool = True
    upload_rate: float | None = None  # bytes/s for all uploads to peers together; None: no cap
    max_uploads: int = DEFAULT_MAX_UPLOADS
    peer_timeout: float = 10.0  # seconds without a byte before a peer request counts as stalled


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/dhtdeb")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dhtdeb"


def load_node_id(state_dir: Path) -> str:
    """This daemon's node id (40 hex digits), kept in `<state-dir>/node_id`: its identity in the
    DHT and towards peers. Every host of a fleet listens on the same port, so this id, never an
    address, is how a node recognises itself in a peer list or at the other end of a request."""
    path = state_dir / "node_id"
    try:
        text = path.read_text().strip()
        bytes.fromhex(text)
        if len(text) == 40:
            return text
    except (FileNotFoundError, ValueError):
        pass
    from dhtdeb.dht import saved_node_id  # a state dir from before the id had its own file

    saved = saved_node_id(state_dir / "dht")
    node_id = saved.hex() if saved else secrets.token_hex(20)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(node_id + "\n")
    os.replace(tmp, path)
    return node_id


def write_addresses(state_dir: Path, addresses: dict[str, object]) -> None:
    """Tell local tools (and tests binding port 0) where this daemon listens."""
    path = state_dir / "addresses.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(addresses) + "\n")
    os.replace(tmp, path)


async def _open_peer_side(
    config: ServeConfig, peer_server: PeerServer, node_id: str
) -> tuple[PeerDiscovery, HostPort]:
    """The peer server on TCP and the DHT on UDP, on the same port number.

    The DHT joins only once both sockets are bound. A node that joined and then moved to another
    port would stay listed at its first address in the routing tables of the nodes it met (the
    bootstrap node first), silent, and every lookup near its id would wait for it. With port 0
    the TCP port is picked first: on loopback many TCP port numbers are held by the client ends
    of connections (established or in TIME_WAIT for a minute, which SO_REUSEADDR does not
    override), while few UDP sockets exist, and a UDP bind that fails does so before the DHT
    sends anything; then both are tried again on another number.
    """
    if not config.dht:
        return NoDiscovery(), config.peer
    from dhtdeb.dht import DhtConfig, open_dht

    attempts = 5 if config.peer.port == 0 else 1
    for attempt in range(attempts):
        try:
            _, port = await peer_server.start(config.peer.host, config.peer.port)
        except OSError as exc:
            raise SystemExit(
                f"dhtdeb: cannot listen on {config.peer}/tcp: {exc.strerror}"
            ) from None
        try:
            node = await open_dht(
                DhtConfig(
                    listen=HostPort(config.peer.host, port),
                    state_dir=config.state_dir / "dht",
                    bootstrap=config.bootstrap,
                    lan=config.lan,
                    node_id=bytes.fromhex(node_id),
                )
            )
        except ConfigError:  # the UDP port is taken (nothing was sent from it)
            await peer_server.close()
            if attempt + 1 == attempts:
                raise
            log.debug("DHT: UDP port %d is taken, trying another port", port)
            continue
        return node, node.address
    raise AssertionError("unreachable")


def _announce_store(discovery: PeerDiscovery, store: ContentStore) -> None:
    """After a restart, tell the DHT again about every verified file in the store (queued: the
    DHT announces them in batches while apt is served)."""
    count = 0
    for sha256 in store.hashes():
        try:
            discovery.announce_later(sha256)
            count += 1
        except (DhtdebError, ValueError) as exc:
            log.warning("not re-announcing %s: %s", sha256[:12], exc)
    if count:
        log.info("re-announcing %d stored files", count)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping")


async def bootstrap(config: DhtConfigLike, state_dir: Path) -> None:
    """`dhtdeb bootstrap`: a DHT-only node (no proxy, no store) for others to join."""
    from dhtdeb.dht import open_dht

    node = await open_dht(config)
    try:
        write_addresses(state_dir, {"dht": str(node.address), "pid": os.getpid()})
        log.info("DHT bootstrap node listening on %s/udp", node.address)
        await _until_signalled()
    finally:
        with contextlib.suppress(FileNotFoundError):
            (state_dir / "addresses.json").unlink()
        await node.close()


def _bound(site: web.TCPSite) -> HostPort:
    server = site._server
    assert server is not None and isinstance(server, asyncio.base_events.Server)
    sockname = server.sockets[0].getsockname()
    return HostPort(str(sockname[0]), int(sockname[1]))


async def serve(config: ServeConfig) -> None:
    notifier = Notifier.from_environment()  # systemd's Type=notify; does nothing without it
    state_dir = config.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    keys = await asyncio.to_thread(TrustedKeys.load, config.keyrings, state_dir / "keys")
    index = ArchiveIndex(state_dir / "index.sqlite")
    store = ContentStore(state_dir / "store", limit_bytes=config.cache_limit)
    counters = Counters()
    mirror = MirrorClient()
    clock = MonotonicClock()
    # What /status.json adds to the clock's times to tell them as Unix times (fixed, so that
    # an unchanged record reads the same twice).
    wall_offset = time.time() - clock.now()
    recent = RecentTransfers()  # the last files fetched or served, with their sources
    ledger = PeerLedger()  # the peers known, and the bytes exchanged with them
    # This daemon's identity (DHT node id, told to peers); never an address: every host of a
    # fleet listens on the same port.
    node_id = load_node_id(state_dir)

    # The downloads in progress: kept by `downloads`, shared by the peer server (made first, as
    # the DHT, which the swarm downloads need, opens on the peer server's port).
    running = RunningDownloads()
    peer_server = PeerServer(
        store,
        counters,
        partials=running,
        upload_rate=config.upload_rate,
        max_uploads=config.max_uploads,
        clock=clock,
        node=bytes.fromhex(node_id),
        ledger=ledger,
    )
    discovery, peer_address = await _open_peer_side(config, peer_server, node_id)
    peer_client = PeerClient(idle_timeout=config.peer_timeout, node=bytes.fromhex(node_id))
    holders = HaveQueries(HolderHints(), peer_client)

    def met(peer: Peer) -> None:
        holders.hints.met(peer, clock.now())
        ledger.found(peer, VIA_LAN, clock.now())

    discovery.on_neighbour(met)
    swarm = (
        SwarmContext(
            discovery=discovery,
            peers=peer_client,
            mirror=mirror,
            counters=counters,
            penalties=PeerPenalties(clock),
            clock=clock,
            rng=random.Random(),
            node=bytes.fromhex(node_id),
            holders=holders,
            ledger=ledger,
        )
        if config.dht
        else None
    )
    # What downloads tell the others (a swarm download started, a file stored) goes through
    # `events` to the announcer, a task of the TaskGroup below.
    events = DownloadEvents()
    downloads = Downloads(
        store, mirror, counters, events, running, swarm=swarm, recent=recent, clock=clock
    )
    chain = TrustChain(keys, index, counters)

    def status() -> dict[str, object]:
        dht = discovery.statistics()
        return {
            "version": __version__,
            "node_id": node_id,
            **counters.as_dict(),
            "dht": {
                "enabled": config.dht,
                "routing_table": dht.routing_table,
                "stored_keys": dht.stored_keys,
                "announced": dht.announced,
                "unannounced": dht.unannounced,
                "rate_limited": dht.rate_limited,
            },
            "dht_datagrams": dht.datagrams,
            # Lookups that had a node to ask, and their seconds, by purpose (all lookups:
            # dht_datagrams.lookups_<purpose>; the buckets: dhtdeb_dht_lookup_duration_seconds).
            "dht_lookups": {
                key: value
                for purpose, histogram in dht.lookup_seconds.items()
                for key, value in (
                    (f"{purpose}_timed", histogram.count),
                    (f"{purpose}_seconds", round(histogram.sum, 6)),
                )
            },
            "downloads": {
                **counters.as_dict()["downloads"],
                "active": downloads.active,
                "active_in_swarm": downloads.active_in_swarm,
            },
            "peer_server": {
                **asdict(peer_server.stats),
                "active_uploads": peer_server.active_uploads,
                "max_uploads": peer_server.max_uploads,
            },
            "index": {
                "learning": chain.learning,
                "pool_files": index.pool_file_count(),
            },
            "cache": {
                "files": store.file_count,
                "bytes": store.total_bytes,
                "limit_bytes": store.limit_bytes,
                "pinned": store.pinned_count,
                "pinned_bytes": store.pinned_bytes,
                "readers": store.readers,
                "unsynced": store.unsynced,
                "rechecked_after_crash": store.rechecked,
                "evictions": store.evictions,
            },
            # Lists, not groups of counters: the last files fetched or served (newest first)
            # and the peers known (most recently seen first).
            "transfers": recent.as_dicts(wall_offset),
            "peers": ledger.as_dicts(clock.now(), wall_offset),
        }

    async def find_peers(sha256: str) -> list[str]:
        return [peer.url() for peer in await discovery.find_peers(sha256, 5.0)]

    proxy = ProxyServer(
        chain=chain,
        store=store,
        downloads=downloads,
        mirror=mirror,
        counters=counters,
        access=AccessPolicy(config.allow_cidr, config.mirrors),
        status=status,
        find_peers=find_peers,
        metrics=metrics_renderer(status, lambda: discovery.statistics().lookup_seconds),
        last_signed=LastSigned(config.state_dir / "signed"),
        recent=recent,
        clock=clock,
    )
    runner = web.ServerRunner(build_server(proxy), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.proxy.host, config.proxy.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise SystemExit(f"dhtdeb: cannot listen on {config.proxy}: {exc.strerror}") from None
        proxy_address = _bound(site)
        write_addresses(
            state_dir, {"proxy": str(proxy_address), "peer": str(peer_address), "pid": os.getpid()}
        )
        log.info(
            "dhtdeb %s serving apt on http://%s (node %s, %d files in store)",
            __version__,
            proxy_address,
            node_id[:12],
            store.file_count,
        )
        if config.announce and config.dht:
            _announce_store(discovery, store)

        serving = f"serving apt on http://{proxy_address}"
        if config.dht:
            serving += f", peers on {peer_address}"

        def service_status() -> str:
            return f"{serving}, {store.file_count} files in store"

        # READY only now: the proxy's socket is bound and served by this loop, so apt's first
        # request is answered. The watchdog pings come from this loop too (see dhtdeb.sdnotify).
        notifier.ready(service_status())
        async with asyncio.TaskGroup() as tasks:
            alive = tasks.create_task(keepalive(notifier, service_status))
            announcer = tasks.create_task(
                announce_downloads(
                    events, peer_server, discovery, announce=config.announce and config.dht
                )
            )
            await _until_signalled()
            alive.cancel()
            announcer.cancel()
    finally:
        notifier.stopping()
        with contextlib.suppress(FileNotFoundError):
            (state_dir / "addresses.json").unlink()
        await runner.cleanup()
        await peer_server.close()
        await downloads.close()
        await holders.close()
        await peer_client.close()
        await mirror.close()
        await discovery.close()
        index.close()
        notifier.close()
