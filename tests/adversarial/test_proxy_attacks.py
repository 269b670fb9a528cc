"""What a hostile mirror or network can do, and what dhtdeb does about it (real apt, real gpgv)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from support import rawhttp, wait_until
from support.apt import AptClientFactory, ProxyMode
from support.archive import (
    SignedArchive,
    prepend_unsigned_paragraph,
    resign,
    tampered_deb_bytes,
    tampered_packages_text,
)
from support.daemon import DaemonFactory, DaemonProcess
from support.mirror import Mirror, MirrorFactory

from dhtdeb.store import UNSYNCED_MARKER


def _store_files(daemon: DaemonProcess) -> dict[str, str]:
    """name → actual sha256 of every file in the daemon's content store."""
    found = {}
    for path in (daemon.state_dir / "store").glob("??/*"):
        found[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _assert_store_sound(daemon: DaemonProcess) -> None:
    for name, actual in _store_files(daemon).items():
        assert name == actual, f"store holds {name} with content {actual}"


def test_tampered_deb_from_mirror_is_never_completed_nor_stored(
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    dhtdeb_daemon: DaemonFactory,
    tmp_path: Path,
) -> None:
    daemon = dhtdeb_daemon()
    apt = apt_client(signed_archive, mirror, mode=ProxyMode.HTTP_PROXY, proxy=daemon.proxy)
    apt.update().check()
    small, big = signed_archive.small_packages[0], signed_archive.big
    for package in (small, big):
        mirror.override(package.filename, tampered_deb_bytes(signed_archive, package.name))
    result = apt.download([small.name, big.name], tmp_path / "dl")
    assert not result.ok
    for package in (small, big):  # apt leaves what it got: never the whole file
        received = tmp_path / "dl" / package.download_name
        assert not received.exists() or received.stat().st_size < package.size
    status = daemon.status()
    assert status["verify_failures"]["mirror"] == 2
    assert status["cache"]["files"] == 1  # only the Packages file
    assert small.sha256 not in _store_files(daemon) and big.sha256 not in _store_files(daemon)
    assert list((daemon.state_dir / "store" / "incoming").iterdir()) == []
    _assert_store_sound(daemon)

    # The big file streamed while it downloaded: apt received bytes, but never the last ones.
    response_bytes = [r for r in mirror.responses if r.path == big.filename]
    assert response_bytes and response_bytes[-1].body_bytes == big.size

    # Once the mirror is honest again, the same daemon serves the right file.
    for package in (small, big):
        mirror.override(package.filename, None)
    apt.download([small.name, big.name], tmp_path / "dl").check()
    assert (
        hashlib.sha256((tmp_path / "dl" / big.download_name).read_bytes()).hexdigest() == big.sha256
    )


def test_tampered_packages_is_refused_and_not_learned(
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    dhtdeb_daemon: DaemonFactory,
) -> None:
    victim = signed_archive.small_packages[0]
    evil = tampered_packages_text(signed_archive, victim.name, "0" * 64)
    for path in signed_archive.binary_dir.rglob("*"):
        if path.is_file():
            mirror.override(path.relative_to(signed_archive.root).as_posix(), evil)
    daemon = dhtdeb_daemon()
    apt = apt_client(signed_archive, mirror, mode=ProxyMode.HTTP_PROXY, proxy=daemon.proxy)
    result = apt.update()
    assert not result.ok
    status = daemon.status()
    assert status["verify_failures"]["index"] >= 1
    assert status["verify_failures"]["signature"] == 0
    # Nothing was learned from the bad index: the .deb is only passed through, unverified.
    response = rawhttp.request(daemon.proxy, "GET", f"{mirror.url}/{victim.filename}")
    assert response.headers["X-Dhtdeb-Verified"] == "no"
    assert daemon.status()["cache"]["files"] == 0


def test_unknown_key_passes_through_unverified_and_uncached(
    archive_copy: SignedArchive,
    serve_archive: MirrorFactory,
    apt_client: AptClientFactory,
    dhtdeb_daemon: DaemonFactory,
) -> None:
    resign(archive_copy)
    mirror = serve_archive(archive_copy.root)
    daemon = dhtdeb_daemon()
    apt = apt_client(archive_copy, mirror, mode=ProxyMode.URL_PREFIX, proxy=daemon.proxy)
    assert not apt.update().ok  # apt itself refuses the unknown key too
    in_release = rawhttp.request(
        daemon.proxy, "GET", f"{mirror.url}/dists/{archive_copy.suite}/InRelease"
    )
    assert in_release.status == 200 and in_release.headers["X-Dhtdeb-Verified"] == "no"
    package = archive_copy.small_packages[0]
    response = rawhttp.request(daemon.proxy, "GET", f"{mirror.url}/{package.filename}")
    assert response.status == 200
    assert response.headers["X-Dhtdeb-Verified"] == "no"
    assert hashlib.sha256(response.body).hexdigest() == package.sha256  # passed through untouched
    status = daemon.status()
    assert status["verify_failures"]["signature"] >= 1
    assert status["requests"]["passed_through"] >= 1
    assert status["cache"]["files"] == 0


def test_unsigned_paragraph_prepended_to_in_release_changes_nothing(
    archive_copy: SignedArchive,
    serve_archive: MirrorFactory,
    apt_client: AptClientFactory,
    dhtdeb_daemon: DaemonFactory,
) -> None:
    mirror = serve_archive(archive_copy.root)
    daemon = dhtdeb_daemon()
    apt = apt_client(archive_copy, mirror, mode=ProxyMode.HTTP_PROXY, proxy=daemon.proxy)
    apt.update().check()
    prepend_unsigned_paragraph(archive_copy)
    assert not apt.update().ok
    status = daemon.status()
    assert status["verify_failures"]["signature"] == 1
    # What was learned from the signed payload still holds: files are served verified.
    package = archive_copy.small_packages[0]
    response = rawhttp.request(daemon.proxy, "GET", f"{mirror.url}/{package.filename}")
    assert response.headers["X-Dhtdeb-Verified"] == "yes"
    assert hashlib.sha256(response.body).hexdigest() == package.sha256

    # A daemon that only ever saw the doctored InRelease believes none of the injected hashes.
    fresh = dhtdeb_daemon()
    doctored = rawhttp.request(
        fresh.proxy, "GET", f"{mirror.url}/dists/{archive_copy.suite}/InRelease"
    )
    assert doctored.headers["X-Dhtdeb-Verified"] == "no"
    packages = rawhttp.request(
        fresh.proxy, "GET", f"{mirror.url}/dists/{archive_copy.suite}/main/binary-amd64/Packages"
    )
    assert packages.status == 200 and packages.headers["X-Dhtdeb-Verified"] == "no"
    assert fresh.status()["cache"]["files"] == 0


def test_daemon_killed_mid_download_leaves_no_bad_file(
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    dhtdeb_daemon: DaemonFactory,
    tmp_path: Path,
) -> None:
    daemon = dhtdeb_daemon()
    apt = apt_client(signed_archive, mirror, mode=ProxyMode.HTTP_PROXY, proxy=daemon.proxy)
    apt.update().check()
    big = signed_archive.big
    halfway = big.size // 2
    mirror.stall(big.filename, after_bytes=halfway)
    outcome: list[bool] = []
    # apt's whole batch: the small files are verified and committed (not yet fsynced: the
    # store syncs in groups) while the big one hangs half way; then the daemon dies.
    names = [p.name for p in signed_archive.packages]
    downloader = threading.Thread(
        target=lambda: outcome.append(apt.download(names, tmp_path / "dl", timeout=120).ok)
    )
    downloader.start()
    try:
        mirror.wait_for_bytes(big.filename, halfway)
        daemon.kill()
    finally:
        mirror.release(big.filename)
        downloader.join(timeout=120)
    assert outcome == [False]
    assert big.sha256 not in _store_files(daemon)
    _assert_store_sound(daemon)

    mirror.stall(big.filename, after_bytes=big.size + 1)  # no stall any more
    daemon.restart()
    assert list((daemon.state_dir / "store" / "incoming").iterdir()) == []
    assert not (daemon.state_dir / "store" / UNSYNCED_MARKER).exists()
    _assert_store_sound(daemon)
    apt.proxy = daemon.proxy
    response = rawhttp.request(daemon.proxy, "GET", f"{mirror.url}/{big.filename}", timeout=120)
    assert response.status == 200
    assert hashlib.sha256(response.body).hexdigest() == big.sha256
    # apt gets the tail once the hash matched; the store's commit (fsync, rename) follows.
    wait_until(lambda: big.sha256 in _store_files(daemon), 30, "the big file committed")
    _assert_store_sound(daemon)
