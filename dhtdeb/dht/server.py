"""The DHT node engine: kademlia's `Server`, taught peer lists, fast lookups and JSON state.

Owns: joining, announcing, finding peers, maintenance (expiry, bucket refresh, re-announce) for one
node. Trusts: nothing from the network (see protocol.py); its own state file only after validation.

Extends kademlia's `Server`: `protocol_class`/`_create_protocol` give it `DhtProtocol`, the storage
is a `PeerStore`, `bootstrap` never raises and seeds from pinged responders only, lookups use
`Lookup`, `refresh_table` is driven by `maintain()` (called by a loop in production, by hand in
simulation; while the routing table is empty it bootstraps again, resolving host names anew),
and `save_state`/`load_state` write JSON instead of pickle. The value API (`get`/`set`) is
refused: dhtdeb keeps peer lists, not values.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

from kademlia.network import Server
from kademlia.node import Node

from dhtdeb.clock import Clock
from dhtdeb.dht import state as state_file
from dhtdeb.dht.lookup import Lookup, LookupResult
from dhtdeb.dht.nearest import NearestMemory
from dhtdeb.dht.peer_store import PeerStore
from dhtdeb.dht.protocol import DatagramTransport, DhtProtocol, DhtTuning
from dhtdeb.dht.schedule import AnnounceSchedule
from dhtdeb.dht.transport import DatagramNetwork
from dhtdeb.dht.wire import Address, Contact
from dhtdeb.errors import DhtdebError
from dhtdeb.stats import LOOKUP_PURPOSES, Histogram

log = logging.getLogger("dhtdeb.dht")

_PING_CONCURRENCY = 32
# Re-announces run this many at a time: their lookups and announces to one node share datagrams.
_REANNOUNCE_CONCURRENCY = 96
_REFRESH_PER_TICK = 4
# While the routing table is empty (the first bootstrap failed: the network was not up yet, or no
# bootstrap node answered), the next maintenance tick, which bootstraps again, comes after this
# many seconds, doubling up to the maintenance interval. With the interval alone, a machine of
# the 300-node simulation whose bootstrap failed was alone for a minute: it announced its whole
# store to nobody and its lookups found nobody.
_ALONE_RETRY = 1.0
# Addresses (resolved) and host names kept to bootstrap again from, each list its newest entries.
_JOIN_MEMORY = 64


def dht_key(sha256_hex: str) -> bytes:
    """A file's DHT key: the first 160 bits of its SHA256."""
    try:
        digest = bytes.fromhex(sha256_hex)
    except ValueError:
        raise ValueError(f"not a hex SHA256: {sha256_hex!r}") from None
    if len(digest) != 32:
        raise ValueError(f"not a SHA256 (32 bytes): {sha256_hex!r}")
    return digest[:20]


def _is_name(host: str) -> bool:
    """Whether `host` is a host name (resolved by DNS) rather than an IP address."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def _remember(memory: list[Address], addresses: Sequence[Address]) -> None:
    """Append the addresses `memory` lacks, keeping its newest `_JOIN_MEMORY`."""
    for address in addresses:
        if address not in memory:
            memory.append(address)
    del memory[:-_JOIN_MEMORY]


class DhtServer(Server):  # type: ignore[misc]
    protocol_class = DhtProtocol

    def __init__(
        self,
        *,
        tuning: DhtTuning,
        clock: Clock,
        rng: random.Random,
        node_id: bytes,
        family: socket.AddressFamily,
        allow_loopback: bool,
    ) -> None:
        storage = PeerStore(
            clock,
            rng,
            max_keys=tuning.max_keys,
            max_peers_per_key=tuning.max_peers_per_key,
            ttl=tuning.peer_ttl,
        )
        super().__init__(ksize=tuning.ksize, alpha=tuning.alpha, node_id=node_id, storage=storage)
        self.tuning = tuning
        self.clock = clock
        self.rng = rng
        self.family = family
        self.allow_loopback = allow_loopback
        self.schedule = AnnounceSchedule(
            clock, rng, tuning.reannounce_interval, tuning.reannounce_jitter
        )
        self.protocol: DhtProtocol = self._create_protocol()
        self.transport: DatagramTransport | None = None
        self.address: Address = ("", 0)
        # What to bootstrap again from while the routing table is empty: the addresses joined
        # through (host names resolved), and the host names given as such (host, port), kept
        # unresolved: a name that did not resolve at start (DNS not up yet at boot, a laptop
        # offline) or whose host was renumbered is resolved again on each retry.
        self.join_addresses: list[Address] = []
        self.join_names: list[Address] = []
        self._alone_retry = _ALONE_RETRY
        self._last_save = clock.now()
        # Durations (by the injected clock) of lookups that had nodes to ask, by purpose; the
        # counts of all lookups are in protocol.counters ("lookups_<purpose>").
        self.lookup_seconds = {purpose: Histogram() for purpose in LOOKUP_PURPOSES}
        self.nearest = NearestMemory(tuning.remembered_keys, tuning.remembered_for)

    def _create_protocol(self) -> DhtProtocol:
        return DhtProtocol(
            self.node,
            self.storage,
            self.tuning,
            clock=self.clock,
            rng=self.rng,
            family=self.family,
            allow_loopback=self.allow_loopback,
        )

    async def listen_on(self, network: DatagramNetwork, host: str, port: int) -> Address:
        self.transport, self.address = await network.bind(host, port, self.protocol)
        return self.address

    async def listen(self, port: int, interface: str = "0.0.0.0") -> None:
        raise DhtdebError("use listen_on(network, host, port)")

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    async def aclose(self) -> None:
        await self.protocol.aclose()
        self.stop()

    # -- joining -------------------------------------------------------------------------------
    async def _resolve(self, host: str, port: int) -> list[Address]:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, family=self.family, type=socket.SOCK_DGRAM
            )
        except (OSError, UnicodeError):
            # Once a minute per name: an empty table retries every few seconds (maintain).
            self.protocol.quiet.warn(
                f"resolve {host}", "DHT: cannot resolve bootstrap host %s", host
            )
            return []
        return list(dict.fromkeys((str(info[4][0]), int(info[4][1])) for info in infos))

    async def bootstrap(self, addrs: Sequence[Address]) -> int:
        """Ping `addrs` (host names allowed), then look up our own id. Returns contacts known.

        The addresses and the host names are remembered (`join_addresses`, `join_names`) for
        `maintain` to bootstrap again while the routing table is empty."""
        resolved: list[Address] = []
        for host, port in addrs:
            if (host, port) == self.address:
                continue
            if _is_name(host):
                _remember(self.join_names, [(host, port)])
            resolved += await self._resolve(host, port)
        return await self._join(resolved)

    async def _rejoin(self) -> int:
        """Bootstrap again (the routing table is empty): the addresses joined through, and the
        host names resolved anew."""
        addresses = list(self.join_addresses)
        for host, port in self.join_names:
            addresses += await self._resolve(host, port)
        return await self._join(list(dict.fromkeys(addresses)))

    async def _join(self, resolved: list[Address]) -> int:
        _remember(self.join_addresses, resolved)
        gate = asyncio.Semaphore(_PING_CONCURRENCY)

        async def ping(address: Address) -> None:
            async with gate:
                await self.protocol.ping_address(address)

        await asyncio.gather(*(ping(a) for a in resolved if a != self.address))
        if len(self.protocol.router):
            await self.lookup(self.node.id, get_peers=False)
        return len(self.protocol.router)

    def bootstrappable_neighbors(self) -> list[Address]:
        return [(n.ip, n.port) for n in self.protocol.router.contacts()]

    # -- lookups -------------------------------------------------------------------------------
    async def lookup(
        self,
        target: bytes,
        *,
        get_peers: bool,
        enough_peers: int | None = None,
        deadline: float = 10.0,
        purpose: str | None = None,
        on_peers: Callable[[list[Contact]], None] | None = None,
    ) -> LookupResult:
        purpose = purpose or ("announce" if get_peers else "find_node")
        self.protocol.counters[f"lookups_{purpose}"] += 1
        node = Node(target)
        started = self.clock.now()
        # Twice k from the table: when the k nearest it lists are dead (a node that has not
        # asked them since they left keeps them), the next ones are there to ask.
        seeds = self.protocol.router.find_neighbors(node, k=2 * self.ksize)
        if get_peers:  # the nodes its last lookup ended at, if any: they answer first
            known = {seed.id for seed in seeds}
            seeds += [n for n in self.nearest.recall(target, started) if n.id not in known]
        if not seeds:
            return LookupResult()
        crawl = Lookup(
            self.protocol,
            node,
            seeds,
            ksize=self.ksize,
            alpha=self.alpha,
            slow_after=self.tuning.slow_after,
            get_peers=get_peers,
            enough_peers=enough_peers,
            on_peers=on_peers,
        )
        result: LookupResult = await crawl.find(deadline)
        now = self.clock.now()
        self.lookup_seconds[purpose].observe(now - started)
        if get_peers and result.converged:
            self.nearest.remember(target, [n for n, _ in result.closest], now)
        return result

    async def find_peers(
        self,
        key: bytes,
        deadline: float,
        on_peers: Callable[[list[Contact]], None] | None = None,
    ) -> list[Contact]:
        """Peers for `key` (with the ids they announced with; this node's own entries left out),
        merged from the lookup and this node's own store. `on_peers` is told each batch as it
        is learnt (this node's own store first), before the lookup ends."""
        local = self.storage.entries(key, self.tuning.enough_peers)
        own = self.node.id
        told: set[Address] = set()

        def tell(peers: list[Contact]) -> None:
            new = [p for p in peers if p.node_id != own and (p.host, p.port) not in told]
            told.update((p.host, p.port) for p in new)
            if new and on_peers is not None:
                on_peers(new)

        tell(local)
        result = await self.lookup(
            key,
            get_peers=True,
            enough_peers=self.tuning.enough_peers,
            deadline=deadline,
            purpose="find_peers",
            on_peers=tell if on_peers is not None else None,
        )
        merged: dict[Address, Contact] = {}
        for peer in [*result.peers, *local]:
            if peer.node_id != self.node.id:  # ours go first: see Lookup._handle
                merged.setdefault((peer.host, peer.port), peer)
        return list(merged.values())

    async def announce_key(self, key: bytes) -> int:
        """Announce this node for `key` to the k nearest nodes; how many accepted."""
        (accepted,) = await self._announce_keys([key])
        return accepted

    async def announce_many(self, sha256s: Sequence[str]) -> int:
        """Announce many files at once (see `_announce_keys`). How many files some node
        accepted."""
        for sha256 in sha256s:
            self.schedule.forget(sha256)
        if self._withhold(sha256s):
            return 0
        accepted = await self._announce_keys([dht_key(sha256) for sha256 in sha256s])
        for sha256, count in zip(sha256s, accepted, strict=True):
            self.schedule.announced(sha256, count > 0)
            self._count_announce(count > 0)
        return sum(1 for count in accepted if count)

    async def announce(self, sha256_hex: str) -> bool:
        return await self.announce_many([sha256_hex]) > 0

    async def _announce_keys(self, keys: Sequence[bytes]) -> list[int]:
        """Announce each key to its k nearest nodes; how many accepted, per key.

        A key looked up lately (a download's find_peers) goes straight to the nodes that lookup
        ended at, with the tokens they gave (BEP 5's get_peers then announce_peer). The others,
        and a key none of whose remembered nodes accepted, are looked up first. Every lookup
        runs first, then the announces go out in one loop turn, so that each node near several
        keys gets them in one datagram (a machine that just fetched an upgrade stores hundreds
        of files; one announce datagram per key and node, sent as each lookup ended, arrived
        at the others in bursts their sockets dropped)."""
        now = self.clock.now()
        remembered = [self._remembered_targets(key, now) for key in keys]
        direct = [i for i, targets in enumerate(remembered) if targets]
        fresh = [i for i, targets in enumerate(remembered) if not targets]
        direct_accepted, fresh_targets = await asyncio.gather(
            self._announce_to([keys[i] for i in direct], [remembered[i] for i in direct]),
            self._looked_up([keys[i] for i in fresh]),
        )
        accepted = dict(zip(direct, direct_accepted, strict=True))
        self.protocol.counters["announces_direct"] += sum(1 for count in direct_accepted if count)
        # Nobody of the remembered accepted (gone, or their token aged): look those up too.
        again = [i for i in direct if not accepted[i]]
        fresh_targets += await self._looked_up([keys[i] for i in again])
        fresh += again
        fresh_accepted = await self._announce_to([keys[i] for i in fresh], fresh_targets)
        accepted.update(zip(fresh, fresh_accepted, strict=True))
        return [accepted[i] for i in range(len(keys))]

    async def _looked_up(self, keys: Sequence[bytes]) -> list[list[tuple[Node, bytes]]]:
        """Each key's nearest responders with the tokens they gave, by a lookup per key."""
        results = await asyncio.gather(*(self.lookup(key, get_peers=True) for key in keys))
        return [
            [(node, token) for node, token in result.closest if token is not None]
            for result in results
        ]

    def _remembered_targets(self, key: bytes, now: float) -> list[tuple[Node, bytes]]:
        """The nodes of the key's last lookup with young tokens, if at least half of them
        still have one (otherwise a lookup finds the current nearest)."""
        nodes = self.nearest.recall(key, now, max_age=self.tuning.remote_token_max_age)
        targets = [
            (node, token)
            for node in nodes
            if (token := self.protocol.remote_token((node.ip, node.port))) is not None
        ]
        return targets if targets and 2 * len(targets) >= len(nodes) else []

    async def _announce_to(
        self, keys: Sequence[bytes], targets: Sequence[Sequence[tuple[Node, bytes]]]
    ) -> list[int]:
        """One announce_peer per key and node, all sent in this loop turn; accepted per key."""
        batches = self.protocol.batches
        calls = [  # futures of the batches, not a task per call
            [batches.waiter("announce_peer", node, key, token) for node, token in per_key]
            for key, per_key in zip(keys, targets, strict=True)
        ]
        flat = await asyncio.gather(*(call for per_key in calls for call in per_key))
        accepted: list[int] = []
        position = 0
        for per_key in calls:
            replies = flat[position : position + len(per_key)]
            accepted.append(sum(1 for reply in replies if reply is not None and reply.ok))
            position += len(per_key)
        return accepted

    def _withhold(self, sha256s: Sequence[str]) -> bool:
        """Whether this node looks unreachable (reachability.py): then nothing is announced,
        and the keys wait in the schedule."""
        if not self.protocol.looks_unreachable():
            return False
        for sha256 in sha256s:
            self.schedule.withheld(sha256)
        self.protocol.counters["announces_withheld"] += len(sha256s)
        return True

    def _count_announce(self, accepted: bool) -> None:
        """One announce of one of this node's files: some node accepted it, or none did."""
        self.protocol.counters["announces_accepted" if accepted else "announces_unaccepted"] += 1

    async def get(self, key: object) -> object:
        raise DhtdebError("dhtdeb keeps peer lists: use find_peers")

    async def set(self, key: object, value: object) -> bool:
        raise DhtdebError("dhtdeb keeps peer lists: use announce")

    # -- upkeep --------------------------------------------------------------------------------
    async def maintain(self, state_dir: Path | None = None) -> None:
        """One maintenance tick; every decision reads the injected clock."""
        self.storage.expire()
        self.protocol.looks_unreachable()  # the evidence is judged every tick
        if not len(self.protocol.router) and (self.join_addresses or self.join_names):
            await self._rejoin()
        await self._refresh_table()
        if self.protocol.dials.due(self.clock.now()):
            await self.protocol.dials.test()  # still behind NAT? (its files wait meanwhile)
        due = self.schedule.due(self.tuning.reannounce_batch)
        for start in range(0, len(due), _REANNOUNCE_CONCURRENCY):
            await self.announce_many(due[start : start + _REANNOUNCE_CONCURRENCY])
        if (
            state_dir is not None
            and self.clock.now() - self._last_save >= self.tuning.save_interval
        ):
            self.save_state(state_dir)

    def maintenance_pause(self) -> float:
        """Seconds until the next `maintain`: the maintenance interval, or, while the routing
        table is empty and there are nodes to join through (addresses, or host names that may
        resolve by now), a short pause that doubles on each call (from `_ALONE_RETRY` up to the
        interval)."""
        interval = self.tuning.maintenance_interval
        if len(self.protocol.router) or not (self.join_addresses or self.join_names):
            self._alone_retry = _ALONE_RETRY
            return interval
        pause = min(self._alone_retry, interval)
        self._alone_retry = min(2 * self._alone_retry, interval)
        return pause

    async def _refresh_table(self) -> None:
        ids = self.protocol.get_refresh_ids()
        self.rng.shuffle(ids)
        for target in ids[:_REFRESH_PER_TICK]:
            await self.lookup(target, get_peers=False)

    def refresh_table(self, interval: int = 3600) -> None:
        raise DhtdebError("refresh is driven by maintain()")

    # -- state ---------------------------------------------------------------------------------
    def save_state(self, fname: Path) -> None:
        """`fname` is the state directory (JSON file inside it). Saves the routing table's
        contacts, or else the addresses joined through (host names are not saved: they come
        from the configuration on every start)."""
        contacts = self.bootstrappable_neighbors() or self.join_addresses
        state_file.save_state(fname, state_file.SavedState(self.node.id, tuple(contacts)))
        self._last_save = self.clock.now()

    @classmethod
    async def load_state(cls, fname: object, port: int, interface: str = "0.0.0.0") -> Server:
        raise DhtdebError("use dhtdeb.dht.open_dht")
