"""The fleet harness proves itself: namespaces that behave like machines on one LAN, a capped
mirror, multicast across the bridge, real apt on the Debian-shaped archive, and nothing left behind.

No dhtdeb here (see test_fleet_smoke.py): if these fail, fleet tests of dhtdeb mean nothing.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support.apt import ProxyMode

from . import netns
from .archive import (
    BIG_THRESHOLD,
    KEY_NAMES,
    SIZE_QUANTILES,
    ArchiveSpec,
    FleetArchive,
    draw_sizes,
    size_at,
)
from .conftest import FleetFactory
from .fleet import DEFAULT_MIRROR_RATE, Fleet
from .mirror_host import classify
from .netns import NEEDS_ROOT, FleetNeedsRoot, Namespace, Tag

GROUP, GROUP_PORT = "239.192.77.98", 9979  # dhtdeb's LAN discovery (dhtdeb/lan.py)

_RECEIVER = f"""
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", {GROUP_PORT}))
group = struct.pack("4s4s", socket.inet_aton("{GROUP}"), socket.inet_aton("0.0.0.0"))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group)
s.settimeout(20)
print("ready", flush=True)
data, source = s.recvfrom(2048)
print(data.decode(), source[0], flush=True)
"""
_SENDER = f"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
s.sendto(sys.argv[1].encode(), ("{GROUP}", {GROUP_PORT}))
"""


# --- root -----------------------------------------------------------------------------------------


def test_without_root_a_fleet_fails_with_a_clear_message(
    fleet_archive: FleetArchive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert netns.root_problem(0) is None
    problem = netns.root_problem(1000)
    assert problem is not None and problem.startswith(NEEDS_ROOT)
    assert NEEDS_ROOT == "fleet tests need root: they create network namespaces"
    before = netns.namespaces()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(FleetNeedsRoot, match="fleet tests need root"):
        Fleet(fleet_archive, tmp_path / "fleet").start()
    monkeypatch.undo()
    assert netns.namespaces() == before


# --- the archive ----------------------------------------------------------------------------------


def test_sizes_follow_debians_distribution() -> None:
    spec = ArchiveSpec(packages=20_000, seed=7, max_size=10**9)
    sizes = sorted(draw_sizes(spec, random.Random(7)))
    for share, size in SIZE_QUANTILES[1:-1]:
        measured = sizes[int(share * len(sizes))]
        assert 0.8 * size < measured < 1.25 * size, (share, measured, size)
    assert size_at(0.5) == 59_000
    capped = draw_sizes(ArchiveSpec(packages=300, max_size=4_000_000), random.Random(1))
    assert max(capped) <= 4_000_000
    forced = ArchiveSpec(packages=50, max_size=32 * 2**20, over_10mib=3)
    assert sum(s > BIG_THRESHOLD for s in draw_sizes(forced, random.Random(1))) >= 3


def test_archive_is_shaped_like_debians(fleet_archive: FleetArchive) -> None:
    archive = fleet_archive
    dist = archive.dist_dir
    release = (dist / "Release").read_text()
    head = release.split("MD5Sum:")[0]
    for line in (
        "Codename: bookworm",
        "Acquire-By-Hash: yes",
        "No-Support-for-Architecture-all: Packages",
        "Architectures: all amd64",
        "Date: ",
    ):
        assert line in head
    assert "\nSHA256:\n" in release and "SHA512" not in release and "SHA1:" not in release
    listed = {line.split()[-1] for line in release.split("SHA256:")[1].splitlines() if line}
    for name in ("Packages", "Packages.gz", "Packages.xz", "Release"):
        assert f"main/binary-amd64/{name}" in listed
        assert f"main/binary-all/{name}" in listed
    assert {"main/i18n/Translation-en", "main/i18n/Translation-en.xz"} <= listed
    for line in release.split("SHA256:")[1].splitlines()[1:]:
        digest, _, path = line.split()
        if not path.endswith("/Release"):
            assert (dist / path).parent.joinpath("by-hash", "SHA256", digest).is_file(), path
    # arch:all packages in both Packages files (No-Support-for-Architecture-all), amd64 in one.
    amd64 = (dist / "main/binary-amd64/Packages").read_text()
    all_only = (dist / "main/binary-all/Packages").read_text()
    arch_all = [p for p in archive.packages if p.architecture == "all"]
    assert arch_all and len(arch_all) < len(archive.packages) / 2
    for package in archive.packages:
        assert f"Package: {package.name}\n" in amd64
        assert (f"Package: {package.name}\n" in all_only) == (package.architecture == "all")
        assert archive.path(package.filename).stat().st_size == package.size
    assert "\nDescription-md5: " in amd64
    assert sum(p.size > BIG_THRESHOLD for p in archive.packages) >= 1
    # Three signatures in InRelease and Release.gpg, like bookworm's.
    for signed in ("InRelease", "Release.gpg"):
        args = [str(dist / signed)] + ([str(dist / "Release")] if signed == "Release.gpg" else [])
        full = _gpgv_status(archive.keyring(), args)
        assert full.count("[GNUPG:] GOODSIG") == 3, full
        older = _gpgv_status(archive.keyring(KEY_NAMES[:2]), args)
        assert older.count("[GNUPG:] GOODSIG") == 2 and "NO_PUBKEY" in older, older


def test_hosts_set_up_on_threads_share_one_keyring_file(fleet_archive: FleetArchive) -> None:
    """A fleet sets its hosts up on threads of one process, and each asks for its keyring: the
    first ones to ask all write it (classroom failed with FileNotFoundError when their temporary
    files had one name)."""
    names = KEY_NAMES[1:]
    expected = b"".join(k.keyring.read_bytes() for k in fleet_archive.signing_keys(names))
    for _round in range(5):
        fleet_archive.keyring(names).unlink(missing_ok=True)
        start = threading.Barrier(8)

        def ask(start: threading.Barrier = start) -> Path:
            start.wait()
            return fleet_archive.keyring(names)

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            paths = {f.result() for f in [pool.submit(ask) for _ in range(8)]}
        assert len(paths) == 1
        assert paths.pop().read_bytes() == expected
    assert not list(fleet_archive.keyring(names).parent.glob(".keyring-*"))  # no leftovers


def _gpgv_status(keyring: Path, args: list[str]) -> str:
    result = subprocess.run(
        ["gpgv", "--status-fd", "1", "--keyring", str(keyring), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout


# --- the network ----------------------------------------------------------------------------------


def test_hosts_reach_the_mirror_and_each_other_at_their_own_addresses(
    make_fleet: FleetFactory,
) -> None:
    fleet = make_fleet(hosts=3, mirror_rate=None)
    release = fleet.archive.dist_dir / "Release"
    for host in fleet.hosts:
        status, body = host.http_get(fleet.mirror.url_for("dists/bookworm/Release"))
        assert (status, body) == (200, release.read_bytes())
    # The mirror sees each host at its own address: no NAT, no loopback.
    assert [r.peer[0] for r in fleet.mirror.requests()] == [h.address for h in fleet.hosts]
    # ... and counts the bytes it sent to each one.
    size = len(release.read_bytes())
    assert fleet.mirror.bytes_by_client() == {
        h.address: {"dists/bookworm/Release": size} for h in fleet.hosts
    }
    assert {c: b.index for c, b in fleet.mirror.bytes_by_kind_and_client().items()} == {
        h.address: size for h in fleet.hosts
    }
    h1, h2, h3 = fleet.hosts
    # TCP and UDP on dhtdeb's port in every direction between h1 and h2, with h3 looking on.
    for server, client in ((h1, h2), (h2, h1)):
        listener = server.namespace.call(lambda: socket.create_server(("0.0.0.0", 9978)))
        udp = server.namespace.call(lambda: _udp_socket(("0.0.0.0", 9978)))
        with listener, udp:
            connection = client.namespace.call(
                lambda: socket.create_connection((server.address, 9978), timeout=5)  # noqa: B023
            )
            accepted, (peer, _) = listener.accept()
            with connection, accepted:
                assert peer == client.address
            sender = client.namespace.call(lambda: _udp_socket(("0.0.0.0", 0)))
            with sender:
                sender.sendto(b"ping", (server.address, 9978))
                udp.settimeout(5)
                data, (source, _) = udp.recvfrom(100)
            assert (data, source) == (b"ping", client.address)
    # Each host has its own loopback: a port bound in h3 is not bound in h1.
    h3_listener = h3.namespace.call(lambda: socket.create_server(("127.0.0.1", 9977)))
    with h3_listener, pytest.raises(ConnectionRefusedError):
        h1.namespace.call(lambda: socket.create_connection(("127.0.0.1", 9977), timeout=5))


def _udp_socket(address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(address)
    return sock


def test_the_mirror_link_is_capped(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(hosts=1)
    big = max(fleet.archive.packages, key=lambda p: p.size)
    started = time.monotonic()
    status, body = fleet.hosts[0].http_get(fleet.mirror.url_for(big.filename))
    seconds = time.monotonic() - started
    assert status == 200 and len(body) == big.size > 10 * 2**20
    rate = len(body) / seconds
    print(f"\nmirror link: {len(body)} bytes in {seconds:.2f}s = {rate / 1e6:.1f} MB/s "
          f"(cap {DEFAULT_MIRROR_RATE / 1e6:.1f} MB/s)")  # fmt: skip
    # tbf is real: a generous bound, not a speed test.
    assert rate <= 1.5 * DEFAULT_MIRROR_RATE
    assert fleet.mirror.bytes_sent(big.filename) == big.size


def test_the_mirror_serves_ranges_goes_down_and_comes_back(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(hosts=1, mirror_rate=None)
    host, mirror = fleet.hosts[0], fleet.mirror
    package = fleet.archive.smallest(1)[0]
    data = fleet.archive.path(package.filename).read_bytes()
    assert host.http_get(mirror.url_for(package.filename), {"Range": "bytes=100-"}) == (
        206,
        data[100:],
    )
    mirror.down()
    with pytest.raises(OSError, match="refused"):
        host.http_get(mirror.url_for(package.filename))
    mirror.up()
    assert host.http_get(mirror.url_for(package.filename)) == (200, data)
    # Counters and the log span the outage; reset clears them.
    assert mirror.bytes_sent(package.filename) == 2 * len(data) - 100
    assert mirror.deb_bytes() == mirror.bytes_by_kind().total == 2 * len(data) - 100
    assert [r.status for r in mirror.responses()] == [206, 200]
    assert len(mirror.requests()) == 2 and len(mirror.requests(since=1)) == 1
    mirror.reset()
    assert mirror.bytes_by_path() == {} and mirror.requests() == []


def test_multicast_reaches_every_other_host(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(hosts=3, mirror_rate=None)
    h1, h2, h3 = fleet.hosts
    receivers = []
    for host in (h2, h3):
        process = host.popen(
            [sys.executable, "-I", "-c", _RECEIVER],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        receivers.append(process)
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
    h1.python(_SENDER, "beacon-from-h1")
    for process in receivers:
        out, err = process.communicate(timeout=30)
        assert out.splitlines() == [f"beacon-from-h1 {h1.address}"], err


# --- real apt -------------------------------------------------------------------------------------


def test_real_apt_updates_and_downloads_directly(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(hosts=2, mirror_rate=None, host_keys={2: KEY_NAMES[:2]})
    wanted = fleet.archive.smallest(5)
    for host in fleet.hosts:
        apt = host.apt(mode=ProxyMode.DIRECT)
        # h2 is a machine with an older debian-archive-keyring: it lacks the stable key.
        assert apt.keyring == fleet.archive.keyring(host.keys)
        assert len(host.keys) == (3 if host.number == 1 else 2)
        apt.update().check()
        apt.download([p.name for p in wanted]).check()
        apt.check_downloaded(wanted)
    paths = [r.path for r in fleet.mirror.requests()]
    # apt asks for indexes by hash, skips binary-all (No-Support-for-Architecture-all) and
    # fetches Translation-en like a real machine.
    assert any("binary-amd64/by-hash/SHA256/" in p for p in paths), paths
    assert any("i18n/by-hash/SHA256/" in p for p in paths), paths
    assert not any("binary-all" in p for p in paths), paths
    assert fleet.mirror.deb_bytes() == 2 * sum(p.size for p in wanted)
    assert {classify(p) for p in paths} == {"index", "deb"}


def test_real_apt_upgrade_fetches_every_package(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(hosts=1, mirror_rate=None)
    apt = fleet.hosts[0].apt(mode=ProxyMode.DIRECT)
    apt.update().check()
    result = apt.upgrade().check()
    assert f"{len(fleet.archive.packages)} upgraded" in result.stdout
    apt.check_upgraded()
    assert fleet.mirror.deb_bytes() == fleet.archive.total_bytes
    connections = {r.peer for r in fleet.mirror.requests() if r.path.endswith(".deb")}
    assert len(connections) < len(fleet.archive.packages)  # pipelined on kept-alive connections


# --- cleanup --------------------------------------------------------------------------------------


def test_nothing_remains_after_the_fleet_exits_uplink_included(
    fleet_archive: FleetArchive, tmp_path: Path
) -> None:
    forward_before = netns.ip_forward()
    with Fleet(fleet_archive, tmp_path / "fleet", hosts=2, uplink=True) as fleet:
        assert fleet.tag is not None
        tag = fleet.tag
        present = fleet.leftovers()
        assert len(present.namespaces) == 4  # lan, mirror, h1, h2
        assert present.links == (tag.root_link,) and present.nft_tables == (tag.nft_table,)
        assert netns.ip_forward() == "1"
        # The uplink's root end is the hosts' gateway: reachable from a host (no internet here).
        with socket.create_server((fleet.gateway, 0)) as server:
            port = server.getsockname()[1]
            host = fleet.hosts[0]
            client = host.namespace.call(
                lambda: socket.create_connection((fleet.gateway, port), timeout=5)
            )
            accepted, (peer, _) = server.accept()
            with client, accepted:
                assert peer == host.address
        host.start_daemon(dht=False)  # a process to kill with the namespace
        fleet.mirror.down()  # and one that is still running, but not listening
    assert not netns.leftovers(tag), netns.leftovers(tag)
    assert netns.ip_forward() == forward_before
    assert not host.daemon or not host.daemon.running


def test_a_sweep_removes_what_a_dead_run_left(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])  # its PID names the "dead run"
    gone.wait()
    tag = Tag(gone.pid, 1)
    assert not tag.alive()
    leftover = Namespace.create(tag.netns("h1"))
    resident = subprocess.Popen(
        [*leftover.exec_prefix, sys.executable, "-c", "import signal; signal.pause()"]
    )
    # /etc files of a namespace of the dead run that a reboot took (/etc is on disk)
    rebooted = netns.ETC_NETNS_DIR / tag.netns("h2")
    rebooted.mkdir(parents=True)
    (rebooted / "hosts").write_text("127.0.0.1 localhost\n")
    try:
        assert netns.leftovers(tag).namespaces == (leftover.name,)
        assert netns.leftovers(tag).etc_dirs == (rebooted.name,)
        assert resident.pid in leftover.pids()
        assert tag in netns.sweep_dead_runs()
        assert not netns.leftovers(tag)
        assert not rebooted.exists()
        assert resident.wait(10) == -signal.SIGKILL
    finally:
        netns.remove_tag(tag)
        if resident.poll() is None:
            resident.kill()
            resident.wait()


_CHILD = """
import json, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from fleet.archive import build_archive, ArchiveSpec
from fleet.fleet import Fleet
archive = build_archive(Path(sys.argv[2]), ArchiveSpec(**json.loads(sys.argv[3])))
fleet = Fleet(archive, Path(sys.argv[4]), hosts=2, uplink=True).start()
fleet.hosts[0].start_daemon(dht=False)
print(fleet.tag.pid, fleet.tag.serial, flush=True)
signal.pause()
"""


# SIGTERM and SIGHUP: the handler tears down, then the process dies of the signal. SIGINT: a
# KeyboardInterrupt that nothing catches here; the atexit hook tears down.
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name
)
def test_a_signal_tears_the_fleet_down(
    fleet_archive: FleetArchive, tmp_path: Path, signum: signal.Signals
) -> None:
    tests_dir = Path(__file__).resolve().parent.parent
    spec = json.dumps(dataclasses.asdict(fleet_archive.spec))
    forward_before = netns.ip_forward()
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tests_dir), str(fleet_archive.root.parent.parent),
         spec, str(tmp_path / "fleet")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        pytest.fail(f"child fleet did not start: {child.communicate(timeout=30)[1]}")
    pid, serial = map(int, line.split())
    tag = Tag(pid, serial)
    assert netns.leftovers(tag).namespaces
    child.send_signal(signum)
    _, err = child.communicate(timeout=60)
    assert child.returncode == -signum, err
    assert not netns.leftovers(tag), netns.leftovers(tag)
    assert netns.ip_forward() == forward_before
