"""Real apt through a real `dhtdeb serve` against a real signed archive on a loopback mirror."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from support import rawhttp, wait_until
from support.apt import AptClientFactory, ProxyMode
from support.archive import SignedArchive
from support.daemon import DaemonFactory
from support.mirror import Mirror

MODES = [ProxyMode.HTTP_PROXY, ProxyMode.URL_PREFIX]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_downloaded(archive: SignedArchive, directory: Path, names: list[str]) -> None:
    for name in names:
        package = archive.package(name)
        path = directory / package.download_name
        assert path.is_file(), f"{path} missing"
        assert _sha256(path) == package.sha256


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_second_client_is_a_cache_hit(
    mode: ProxyMode,
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    dhtdeb_daemon: DaemonFactory,
    tmp_path: Path,
) -> None:
    daemon = dhtdeb_daemon()
    names = [p.name for p in signed_archive.packages]
    first = apt_client(signed_archive, mirror, mode=mode, proxy=daemon.proxy)
    first.update().check()
    first.download(names, tmp_path / "first").check()
    _assert_downloaded(signed_archive, tmp_path / "first", names)
    unique = sum(p.size for p in signed_archive.packages)
    assert mirror.deb_bytes_sent() == unique  # each .deb crossed the mirror link once

    mirror.reset_counters()
    second = apt_client(signed_archive, mirror, mode=mode, proxy=daemon.proxy)
    second.update().check()
    second.download(names, tmp_path / "second").check()
    _assert_downloaded(signed_archive, tmp_path / "second", names)
    assert mirror.deb_bytes_sent() == 0

    wait_until(lambda: daemon.status()["cache"]["files"] >= len(names), 30, "all committed")
    status = daemon.status()
    assert status["requests"]["cache_hits"] >= len(names)
    assert status["requests"]["from_mirror"] >= len(names)
    assert status["cache"]["files"] >= len(names)
    assert status["bytes"]["to_apt"] >= 2 * unique
    assert status["verify_failures"] == {"signature": 0, "index": 0, "peer": 0, "mirror": 0}


def test_restart_between_update_and_download_serves_verified(
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    dhtdeb_daemon: DaemonFactory,
    tmp_path: Path,
) -> None:
    daemon = dhtdeb_daemon()
    apt = apt_client(signed_archive, mirror, mode=ProxyMode.HTTP_PROXY, proxy=daemon.proxy)
    apt.update().check()
    daemon.restart()  # the proxy listens on a new port; apt keeps its lists
    apt = apt.through(ProxyMode.HTTP_PROXY, daemon.proxy)
    names = [p.name for p in signed_archive.small_packages]
    apt.download(names, tmp_path / "after-restart").check()
    _assert_downloaded(signed_archive, tmp_path / "after-restart", names)
    # The .debs and the Packages file from before; the last commit may trail apt by a moment.
    wait_until(lambda: daemon.status()["cache"]["files"] == len(names) + 1, 30, "all committed")
    status = daemon.status()
    # Every .deb was known from the persisted index: nothing passed through unverified.
    assert status["requests"]["passed_through"] == 0
    assert status["requests"]["from_mirror"] == len(names)
    package = signed_archive.small_packages[0]
    response = rawhttp.request(daemon.proxy, "GET", f"{mirror.url}/{package.filename}")
    assert response.status == 200
    assert response.headers["X-Dhtdeb-Verified"] == "yes"
    assert hashlib.sha256(response.body).hexdigest() == package.sha256


def test_apt_with_current_lists_gets_verified_packages_from_a_new_daemon(
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    dhtdeb_daemon: DaemonFactory,
    tmp_path: Path,
) -> None:
    """dhtdeb installed on a machine whose apt lists are current: apt's update through it fetches
    the InRelease only (its Packages files did not change), so the daemon must learn the
    Packages file on its own when the first .deb comes (found by tests/test_deb.py: everything
    passed through unverified and uncached)."""
    direct = apt_client(signed_archive, mirror)
    direct.update().check()
    daemon = dhtdeb_daemon()
    apt = direct.through(ProxyMode.HTTP_PROXY, daemon.proxy)
    apt.update().check()
    assert daemon.status()["requests"]["from_mirror"] <= 1, "apt fetched only the InRelease"
    names = [p.name for p in signed_archive.small_packages]
    apt.download(names, tmp_path / "through-dhtdeb").check()
    _assert_downloaded(signed_archive, tmp_path / "through-dhtdeb", names)
    wait_until(lambda: daemon.status()["cache"]["files"] == len(names) + 1, 30, "all committed")
    status = daemon.status()
    assert status["requests"]["passed_through"] == 0, status
    assert status["requests"]["from_mirror"] >= len(names) + 1, status  # + the Packages file
    assert status["verify_failures"] == {"signature": 0, "index": 0, "peer": 0, "mirror": 0}
