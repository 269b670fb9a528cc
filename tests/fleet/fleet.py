"""A fleet of machines on one LAN, as deployed, built from network namespaces on this machine.

    bridge namespace ──br0── h1 (eth0 10.77.0.11/24) … hN (10.77.0.(10+N))
                        ├─── mirror (eth0 10.77.0.2/24, port 80; its link capped with tbf)
                        └─── gateway 10.77.0.1: br0's own address, or with `uplink=True` a veth
                             to the root namespace, forwarding + NAT to the real network

Owns: the topology (a bridge in a namespace of its own, so the root namespace is left alone unless
an uplink is asked for; multicast snooping off so that LAN discovery's group traffic reaches every
host; a default route in every host, so multicast and unknown destinations behave as on a real
LAN host), the mirror process, the hosts, and tearing all of it down (see cleanup.py).
Trusts: netns.py for the kernel objects, mirror_host.py and host.py for what runs on them.

Usage:

    archive = build_archive(cache_dir, ArchiveSpec(packages=300))
    with Fleet(archive, workdir, hosts=3) as fleet:
        h1, h2, h3 = fleet.hosts
        h1.start_daemon()
        h2.start_daemon(bootstrap=[h1])
        apt = h2.apt()                       # through h2's daemon on 127.0.0.1:9977
        apt.update().check()
        apt.upgrade().check()
        apt.check_upgraded()
        print(fleet.mirror.bytes_by_kind())
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from . import cleanup, netns
from .archive import FleetArchive
from .host import FleetHost
from .mirror_host import MirrorHost
from .netns import FleetError, Namespace, Tag

DEFAULT_NETWORK = "10.77.0.0/24"
# 100 Mbit/s: a small office's or a classroom's line to the internet.
DEFAULT_MIRROR_RATE = 12_500_000
BRIDGE = "br0"
HOST_OFFSET = 10
_DAEMON_STOP_TIMEOUT = 5.0


class Fleet:
    """`hosts` machines and a mirror on one bridged LAN; a context manager (or start()/close()).

    `mirror_rate`: bytes/s of the mirror's link (tbf, both directions; None: uncapped).
    `lan_rate`: the same for every host's link (None, the default: uncapped).
    `host_keys`: host number -> names of the archive keys it trusts (apt's signed-by keyring and
    the daemon's --keyring); hosts not listed trust all three.
    `network`: an IPv4 network with room for the hosts (default 10.77.0.0/24; with an uplink, the
    first 10.77.X.0/24 the root namespace does not route yet).
    `uplink`: connect the LAN to the root namespace through NAT, so hosts reach the internet
    (`make check-real`); off by default, needs nft.
    `workdir`: where hosts keep their state and apt files (default: a new temporary directory,
    removed on close; a given one is kept)."""

    def __init__(
        self,
        archive: FleetArchive,
        workdir: Path | None = None,
        *,
        hosts: int = 2,
        mirror_rate: int | None = DEFAULT_MIRROR_RATE,
        lan_rate: int | None = None,
        host_keys: Mapping[int, Sequence[str]] | None = None,
        network: str | None = None,
        uplink: bool = False,
    ) -> None:
        if hosts < 0:
            raise ValueError("hosts must be >= 0")
        self.archive = archive
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="dhtdeb-fleet-"))
        self.host_count = hosts
        self.mirror_rate = mirror_rate
        self.lan_rate = lan_rate
        self.host_keys = dict(host_keys or {})
        self._network_arg = network
        self.uplink = uplink
        self.tag: Tag | None = None
        self.network = ipaddress.IPv4Network(network or DEFAULT_NETWORK)
        self.hosts: list[FleetHost] = []
        self._mirror: MirrorHost | None = None
        self._bridge_ns: Namespace | None = None
        self._closed = False

    # --- addresses --------------------------------------------------------------------------------

    def _address(self, offset: int) -> str:
        address = self.network.network_address + offset
        if address not in self.network or address == self.network.broadcast_address:
            raise FleetError(f"{self.network} has no room for address offset {offset}")
        return str(address)

    @property
    def gateway(self) -> str:
        return self._address(1)

    @property
    def mirror_address(self) -> str:
        return self._address(2)

    def host_address(self, number: int) -> str:
        return self._address(HOST_OFFSET + number)

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    @property
    def mirror(self) -> MirrorHost:
        if self._mirror is None:
            raise RuntimeError("fleet not started")
        return self._mirror

    def host(self, number: int) -> FleetHost:
        """Host `number`, 1-based (h1 is hosts[0])."""
        return self.hosts[number - 1]

    # --- building ---------------------------------------------------------------------------------

    def start(self) -> Fleet:
        if self.tag is not None:
            raise RuntimeError("fleet already started")
        netns.require_root()
        netns.require_tools(self.uplink)
        netns.sweep_dead_runs()
        self.tag = Tag.new()
        self.workdir.mkdir(parents=True, exist_ok=True)
        cleanup.register(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        assert self.tag is not None
        bridge_ns = Namespace.create(self.tag.netns("lan"))
        self._bridge_ns = bridge_ns
        netns.add_bridge(bridge_ns, BRIDGE)
        if self.uplink:
            with netns.root_lock():
                if self._network_arg is None:
                    self.network = _free_network()
                self._add_uplink(bridge_ns)
        else:
            bridge_ns.ip("addr", "add", f"{self.gateway}/{self.prefixlen}", "dev", BRIDGE)
        mirror_ns = self._add_machine("mirror", self.mirror_address, self.mirror_rate)
        self._mirror = MirrorHost(
            mirror_ns,
            self.mirror_address,
            self.archive.root,
            log_file=self.workdir / "mirror.log",
        ).start()
        for _ in range(self.host_count):
            self.add_host()

    def _add_machine(self, role: str, address: str, rate: int | None) -> Namespace:
        """A namespace with eth0 on the bridge, `address`, a default route via the gateway, and
        (if `rate`) its link capped in both directions."""
        assert self.tag is not None and self._bridge_ns is not None
        namespace = Namespace.create(self.tag.netns(role))
        netns.add_veth(self._bridge_ns, role, namespace, "eth0", a_master=BRIDGE)
        namespace.ip("addr", "add", f"{address}/{self.prefixlen}", "dev", "eth0")
        namespace.ip("route", "add", "default", "via", self.gateway)
        if rate is not None:
            netns.shape(namespace, "eth0", rate)
            netns.shape(self._bridge_ns, role, rate)
        return namespace

    def add_host(self, keys: Sequence[str] | None = None) -> FleetHost:
        """One more machine on the LAN (h<N+1>), e.g. one that joins later."""
        if self.tag is None or self._mirror is None:
            raise RuntimeError("fleet not started")
        number = len(self.hosts) + 1
        address = self.host_address(number)
        namespace = self._add_machine(f"h{number}", address, self.lan_rate)
        host = FleetHost(
            number=number,
            namespace=namespace,
            address=address,
            workdir=self.workdir / f"h{number}",
            archive=self.archive,
            mirror=self._mirror,
            keys=keys if keys is not None else self.host_keys.get(number),
        )
        self.hosts.append(host)
        return host

    def _add_uplink(self, bridge_ns: Namespace) -> None:
        """A veth from the bridge to the root namespace, which holds the gateway address and
        forwards with NAT (an nft table of this fleet's own)."""
        assert self.tag is not None
        link = self.tag.root_link
        netns.add_veth(None, link, bridge_ns, "uplink")
        bridge_ns.ip("link", "set", "uplink", "master", BRIDGE)
        netns.ip("addr", "add", f"{self.gateway}/{self.prefixlen}", "dev", link)
        netns.enable_ip_forward(self.tag)
        netns.add_nat(self.tag, self.network, link)

    # --- teardown ---------------------------------------------------------------------------------

    def close(self) -> list[str]:
        """Stop every process and remove every namespace, link and table of this fleet.
        Idempotent; never raises: returns what could not be removed."""
        if self._closed or self.tag is None:
            self._closed = True
            return []
        self._closed = True
        errors: list[str] = []
        daemons = [h.daemon for h in self.hosts if h.daemon is not None and h.daemon.running]
        for daemon in daemons:
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon.pid, signal.SIGTERM)
        for daemon in daemons:
            try:
                daemon.stop(_DAEMON_STOP_TIMEOUT)
            except Exception as exc:  # teardown carries on; the namespace kill follows
                errors.append(f"stopping daemon {daemon.state_dir}: {exc!r}")
        if self._mirror is not None:
            try:
                self._mirror.stop()
            except Exception as exc:
                errors.append(f"stopping the mirror: {exc!r}")
        try:
            errors += netns.remove_tag(self.tag)
        except Exception as exc:
            errors.append(f"removing {self.tag.stem}: {exc!r}")
        cleanup.unregister(self)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return errors

    def leftovers(self) -> netns.Leftovers:
        """What of this fleet still exists in the kernel (nothing, once closed)."""
        if self.tag is None:
            raise RuntimeError("fleet not started")
        return netns.leftovers(self.tag)

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        errors = self.close()
        if errors and exc is None:
            raise FleetError("fleet teardown left things behind:\n" + "\n".join(errors))


def _free_network() -> ipaddress.IPv4Network:
    used = netns.used_ipv4_networks()
    for third in range(256):
        candidate = ipaddress.IPv4Network(f"10.77.{third}.0/24")
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise FleetError("no free 10.77.X.0/24 network for the uplink")
