"""Packages from peers: real `dhtdeb bootstrap`, real `dhtdeb serve` daemons, real apt."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from support.apt import AptClientFactory, ProxyMode
from support.archive import SignedArchive
from support.daemon import BootstrapProcess
from support.mirror import Mirror
from support.swarm import SwarmNode, bootstrap_node, peers_of, swarm_node, wait_until_found

from dhtdeb.swarm.scheduler import AUDIT_BLOCK

__all__ = ["bootstrap_node", "swarm_node"]  # fixtures, which pytest finds by name


def _check_files(archive: SignedArchive, directory: Path, names: list[str]) -> None:
    for name in names:
        package = archive.package(name)
        data = (directory / package.download_name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == package.sha256, name


def test_second_node_gets_packages_from_the_first(
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    swarm_node: SwarmNode,
    tmp_path: Path,
) -> None:
    names = [p.name for p in signed_archive.packages]
    a, b = swarm_node(), swarm_node()
    apt_a = apt_client(signed_archive, mirror, mode=ProxyMode.HTTP_PROXY, proxy=a.proxy)
    apt_a.update().check()
    apt_a.download(names, tmp_path / "a").check()
    unique = sum(p.size for p in signed_archive.packages)
    assert mirror.deb_bytes_sent() == unique
    for package in signed_archive.packages:
        wait_until_found(b, [a], package.sha256)
    # The piece list assembled during the download is kept: A's peer server never hashes it.
    big = signed_archive.big.sha256
    assert (a.state_dir / "store" / big[:2] / f"{big}.pieces").stat().st_size == 32 * -(
        -signed_archive.big.size // (1 << 20)
    )

    mirror.reset_counters()
    apt_b = apt_client(signed_archive, mirror, mode=ProxyMode.URL_PREFIX, proxy=b.proxy)
    apt_b.update().check()
    apt_b.download(names, tmp_path / "b").check()
    _check_files(signed_archive, tmp_path / "b", names)
    # One peer only: its piece list of the big file is audited with one block from the mirror.
    assert mirror.deb_bytes_sent() <= AUDIT_BLOCK, mirror.bytes_by_path()
    status = b.status()
    assert status["requests"]["from_peers"] == len(names)
    assert status["bytes"]["from_peers"] >= unique - 1024 * 1024
    assert status["verify_failures"]["peer"] == 0
    assert a.status()["bytes"]["to_peers"] >= status["bytes"]["from_peers"]
    assert a.status()["dht"]["announced"] >= len(names)


def test_peers_command_and_reannounce_after_restart(
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    bootstrap_node: BootstrapProcess,
    swarm_node: SwarmNode,
    tmp_path: Path,
) -> None:
    small = signed_archive.small_packages[0]
    a, b = swarm_node(), swarm_node()
    apt_a = apt_client(signed_archive, mirror, mode=ProxyMode.HTTP_PROXY, proxy=a.proxy)
    apt_a.update().check()
    apt_a.download([small.name], tmp_path / "a").check()
    wait_until_found(b, [a], small.sha256)

    # `dhtdeb peers` asks the local daemon, found through its state directory.
    command = [sys.executable, "-m", "dhtdeb", "peers", small.sha256, "--state-dir"]
    answer = subprocess.run([*command, str(b.state_dir)], capture_output=True, text=True)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.split() == [f"http://{a.addresses.peer}"]
    bad = subprocess.run([*command[:4], "not-a-hash"], capture_output=True, text=True)
    assert bad.returncode == 2 and "SHA256" in bad.stderr

    # The DHT forgets: every node stops and a fresh bootstrap node starts an empty network.
    a.stop()
    b.stop()
    bootstrap_node.stop()
    fresh = BootstrapProcess(tmp_path / "bootstrap-2").start()
    try:
        for node in (a, b):
            node.extra_args = ("--bootstrap", fresh.dht, "--no-lan")
        b.start()
        assert peers_of(b, small.sha256) == []
        # A comes back and announces what its store holds, with no new download.
        a.start()
        wait_until_found(b, [a], small.sha256)
        assert a.status()["requests"]["from_mirror"] == 0
    finally:
        fresh.stop()
