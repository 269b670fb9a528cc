"""A lying mirror (issue 13): wrong indexes, replayed Releases, wrong, short, long and cut pool
files, lies about byte ranges, and Releases by a key nobody trusts, against a real `dhtdeb serve`
and real apt.

Each case says in its docstring what must happen, then checks what apt sees (exit status, and the
SHA256 of every file it wrote), the daemon's /status.json counters, and the store: every file in
it hashes to its name and nothing the lie touched is there. Only the mirror lies here; the
swarm's liars are in test_lying_peers.py, the tampered .deb / tampered Packages / prepended
paragraph / unknown-key-alone cases in test_proxy_attacks.py (both beside this file), the
expired-Release case in tests/test_proxy_http.py.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import lzma
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from support import rawhttp, wait_until
from support.apt import AptClientFactory, ProxyMode
from support.archive import (
    SignedArchive,
    reindex,
    sha256_file,
    sign,
    tampered_packages_text,
)
from support.daemon import DaemonFactory, DaemonProcess
from support.mirror import Mirror, MirrorFactory
from support.swarm import SwarmNode, bootstrap_node, swarm_node

__all__ = ["bootstrap_node", "swarm_node"]

# --- a mirror that lies about ranges --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RangeLie:
    """How the mirror answers requests for one path.

    `ignore_range`: a Range request gets 200 and the whole file. `shift`: a Range request gets
    206 with the Content-Range asked for but the bytes from this many bytes earlier.
    `wrong_content_range`: a Range request gets 206 with the bytes and Content-Range of the
    whole file. `partial_for_plain`: a plain GET gets 206 and only the first half of the file."""

    ignore_range: bool = False
    shift: int = 0
    wrong_content_range: bool = False
    partial_for_plain: bool = False


class RangeLyingMirror(Mirror):
    """`Mirror`, except for the paths given a `RangeLie`."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._lies: dict[str, RangeLie] = {}
        self._lies_lock = threading.Lock()
        self.lies_told = 0

    def lie(self, path: str, how: RangeLie | None) -> None:
        with self._lies_lock:
            if how is None:
                self._lies.pop(path, None)
            else:
                self._lies[path] = how

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        relative = self._relative(request)
        with self._lies_lock:
            how = self._lies.get(relative)
        wanted = request.headers.get("Range")
        if how is None or request.method != "GET":
            return await super()._handle(request)
        data = (self.root / relative).read_bytes()
        size = len(data)
        if wanted is None:
            if not how.partial_for_plain:
                return await super()._handle(request)
            status, start, end = 206, 0, size // 2
        else:
            spec = wanted.partition("=")[2]
            first, _, last = spec.partition("-")
            asked_start, asked_end = int(first), int(last) + 1 if last else size
            if how.ignore_range:
                status, start, end = 200, 0, size
            elif how.wrong_content_range:
                status, start, end = 206, 0, size
            elif how.shift:
                status = 206
                start, end = asked_start - how.shift, asked_end - how.shift
                if start < 0:
                    start, end = asked_start + how.shift, asked_end + how.shift
            else:
                return await super()._handle(request)
        self._record_request(request, relative)
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if status == 206:
            # The header the client wants to see, whatever bytes follow (`shift`).
            if how.shift and wanted is not None:
                headers["Content-Range"] = f"bytes {asked_start}-{asked_end - 1}/{size}"
            else:
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        body = data[start:end]
        with self._lies_lock:
            self.lies_told += 1
        self._count(relative, len(body))
        self._record_response(relative, status, len(body), True)
        return web.Response(status=status, headers=headers, body=body)


@pytest.fixture
def range_liar(signed_archive: SignedArchive) -> Iterator[RangeLyingMirror]:
    mirror = RangeLyingMirror(signed_archive.root)
    mirror.start()
    yield mirror
    mirror.stop()


# --- helpers --------------------------------------------------------------------------------------


def store_files(daemon: DaemonProcess) -> dict[str, str]:
    """name → actual SHA256 of every file in the daemon's content store."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in (daemon.state_dir / "store").glob("??/*")
    }


def assert_store_sound(daemon: DaemonProcess, *, absent: tuple[str, ...] = ()) -> dict[str, str]:
    """Every stored file hashes to its name, none of `absent` is there, `incoming/` is empty."""
    files = store_files(daemon)
    for name, actual in files.items():
        if name.endswith(".pieces"):  # a stored file's piece list (swarm)
            assert name.removesuffix(".pieces") in files, f"{name} beside no stored file"
            continue
        assert name == actual, f"store holds {name} with content {actual}"
    for sha256 in absent:
        assert sha256 not in files, f"{sha256} is in the store"
    incoming = daemon.state_dir / "store" / "incoming"
    assert not incoming.exists() or list(incoming.iterdir()) == []
    return files


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def failures(daemon: DaemonProcess) -> dict[str, int]:
    counts: dict[str, int] = daemon.status()["verify_failures"]
    return counts


def get(daemon: DaemonProcess, url: str, headers: dict[str, str] | None = None) -> Any:
    return rawhttp.request(daemon.proxy, "GET", url, headers, timeout=60)


def drop_from_release(archive: SignedArchive, names: tuple[str, ...]) -> None:
    """Re-sign a Release that no longer lists the index files `names` (paths below the suite)."""
    release = archive.dist_dir / "Release"
    kept = [
        line
        for line in release.read_text().splitlines()
        if not (line.startswith(" ") and line.split()[-1] in names)
    ]
    release.write_text("\n".join(kept) + "\n")
    sign(archive)


# --- 1. index files the Release does not vouch for ------------------------------------------------


def test_packages_not_listed_or_listed_with_another_hash_is_never_learned(
    archive_copy: SignedArchive,
    serve_archive: MirrorFactory,
    apt_client: AptClientFactory,
    dhtdeb_daemon: DaemonFactory,
    tmp_path: Path,
) -> None:
    """A Packages file the signed Release does not list (`Packages.gz` dropped from the
    Release, and a by-hash name no Release lists) is passed through unverified: never stored,
    never learned, counted as passed through. A Packages.xz listed with another hash is refused
    (`verify_failures.index`), apt's update fails, and nothing of it is learned or stored. Either
    way the victim's swapped .deb, which the lying index vouches for, is never served verified:
    the daemon that learned the true index refuses it (`verify_failures.mirror`)."""
    victim = archive_copy.small_packages[0]
    evil_deb = archive_copy.path(archive_copy.small_packages[1].filename).read_bytes()
    evil_text = tampered_packages_text(
        archive_copy, victim.name, hashlib.sha256(evil_deb).hexdigest()
    )
    binary = f"{archive_copy.component}/binary-{archive_copy.arch}"
    drop_from_release(archive_copy, (f"{binary}/Packages.gz",))
    # The unlisted Packages.gz and a by-hash copy of it: well-formed, and they lie.
    evil_gz = gzip.compress(evil_text, mtime=0)
    (archive_copy.binary_dir / "Packages.gz").write_bytes(evil_gz)
    evil_sha = hashlib.sha256(evil_gz).hexdigest()
    (archive_copy.binary_dir / "by-hash" / "SHA256" / evil_sha).write_bytes(evil_gz)
    mirror = serve_archive(archive_copy.root)
    mirror.override(victim.filename, evil_deb)

    daemon = dhtdeb_daemon()
    apt = apt_client(archive_copy, mirror, mode=ProxyMode.HTTP_PROXY, proxy=daemon.proxy)
    apt.update().check()
    # apt gets the tail once the hash matched; the store's commit follows.
    wait_until(lambda: daemon.status()["cache"]["files"] == 1, 30, "Packages.xz stored")
    stored = assert_store_sound(daemon)
    assert set(stored) == {sha256_file(archive_copy.binary_dir / "Packages.xz")}
    suite = f"{mirror.url}/dists/{archive_copy.suite}"
    before = daemon.status()["requests"]["passed_through"]
    for url in (f"{suite}/{binary}/Packages.gz", f"{suite}/{binary}/by-hash/SHA256/{evil_sha}"):
        response = get(daemon, url)
        assert response.status == 200 and response.headers["X-Dhtdeb-Verified"] == "no"
        assert response.body == evil_gz  # passed on as it is: apt would refuse it itself
    status = daemon.status()
    assert status["requests"]["passed_through"] == before + 2
    assert status["verify_failures"] == {"signature": 0, "index": 0, "peer": 0, "mirror": 0}
    assert_store_sound(daemon, absent=(evil_sha,))
    assert set(store_files(daemon)) == set(stored)
    # Not learned: the victim's path still expects the true .deb, so the swapped one is refused.
    result = apt.download([victim.name], tmp_path / "dl")
    assert not result.ok
    assert not (tmp_path / "dl" / victim.download_name).exists()
    assert failures(daemon)["mirror"] == 1
    assert_store_sound(daemon, absent=(hashlib.sha256(evil_deb).hexdigest(),))

    # Listed, with another hash: well-formed Packages and Packages.xz, not the ones signed for.
    evil_xz = lzma.compress(evil_text, format=lzma.FORMAT_XZ)
    dist = f"dists/{archive_copy.suite}/{binary}"
    for name, evil in (("Packages", evil_text), ("Packages.xz", evil_xz)):
        true_sha = sha256_file(archive_copy.binary_dir / name)
        mirror.override(f"{dist}/{name}", evil)
        mirror.override(f"{dist}/by-hash/SHA256/{true_sha}", evil)
    fresh = dhtdeb_daemon()
    apt = apt_client(archive_copy, mirror, mode=ProxyMode.HTTP_PROXY, proxy=fresh.proxy)
    assert not apt.update().ok
    counts = failures(fresh)
    assert counts["index"] >= 2 and counts["signature"] == 0 and counts["mirror"] == 0
    assert fresh.status()["index"]["pool_files"] == 0
    assert fresh.status()["cache"]["files"] == 0
    assert_store_sound(fresh, absent=(evil_sha, hashlib.sha256(evil_xz).hexdigest()))
    swapped = get(fresh, f"{mirror.url}/{victim.filename}")
    assert swapped.headers["X-Dhtdeb-Verified"] == "no"  # passed through, as apt would see it
    assert fresh.status()["cache"]["files"] == 0


# --- 2. an old InRelease replayed -----------------------------------------------------------------


def _state_without(
    archive: SignedArchive,
    missing: Any,
    tmp_path: Path,
    *,
    date: datetime,
    valid_until: datetime | None = None,
) -> tuple[bytes, str]:
    """Sign a state of the archive that lacks the package `missing` (its pool file stays): its
    InRelease, and the SHA256 of its Packages.xz (kept in by-hash/ when the archive moves on)."""
    aside = tmp_path / "aside.deb"
    shutil.move(archive.path(missing.filename), aside)
    try:
        reindex(archive, date=date, valid_until=valid_until)
    finally:
        shutil.move(aside, archive.path(missing.filename))
    return (archive.dist_dir / "InRelease").read_bytes(), sha256_file(
        archive.binary_dir / "Packages.xz"
    )


def test_replayed_older_or_expired_in_release_is_not_believed(
    archive_copy: SignedArchive,
    serve_archive: MirrorFactory,
    apt_client: AptClientFactory,
    dhtdeb_daemon: DaemonFactory,
    tmp_path: Path,
) -> None:
    """Three validly signed states of one suite: an old one (two days ago, without the package
    `late`), an expired one (yesterday, Valid-Until an hour ago) and the current one.
    A daemon that saw the current InRelease refuses the old one replayed (Date going backwards)
    and the expired one (`verify_failures.signature` each), passes them to apt unverified, and
    still serves every package of the current index verified, `late` included; the replayed
    Packages is not vouched for (passed through, never stored). A daemon that knew only the old
    state refuses the expired one although its Date is newer, and keeps the old."""
    late, later = archive_copy.small_packages[-1], archive_copy.small_packages[-2]
    now = datetime.now(UTC)
    old_in_release, old_xz = _state_without(
        archive_copy, late, tmp_path, date=now - timedelta(days=2)
    )
    expired_in_release, expired_xz = _state_without(
        archive_copy,
        later,
        tmp_path,
        date=now - timedelta(days=1),
        valid_until=now - timedelta(hours=1),
    )
    current = reindex(archive_copy, date=now - timedelta(minutes=5))
    assert len({old_xz, expired_xz, sha256_file(archive_copy.binary_dir / "Packages.xz")}) == 3
    by_hash = archive_copy.binary_dir / "by-hash" / "SHA256"
    assert f"Package: {late.name}\n".encode() not in lzma.decompress(
        (by_hash / old_xz).read_bytes()
    )
    assert late in current.packages

    mirror = serve_archive(archive_copy.root)
    in_release = f"dists/{archive_copy.suite}/InRelease"
    suite = f"{mirror.url}/dists/{archive_copy.suite}"
    binary = f"{archive_copy.component}/binary-{archive_copy.arch}"
    daemon = dhtdeb_daemon()
    apt = apt_client(current, mirror, mode=ProxyMode.HTTP_PROXY, proxy=daemon.proxy)
    apt.update().check()
    wait_until(lambda: daemon.status()["cache"]["files"] == 1, 30, "Packages.xz stored")

    for replayed in (old_in_release, expired_in_release):
        before = failures(daemon)["signature"]
        mirror.override(in_release, replayed)
        response = get(daemon, f"{suite}/InRelease")
        assert response.status == 200 and response.body == replayed
        assert response.headers["X-Dhtdeb-Verified"] == "no"
        assert failures(daemon)["signature"] == before + 1
    # apt's view: replayed the older InRelease it exits 0 but keeps its newer lists (it fetches
    # no index of the replay), so `late` is still installable and comes verified; the expired
    # one it refuses.
    mirror.override(in_release, old_in_release)
    mirror.reset_counters()
    apt.update().check()
    assert [r.path for r in mirror.requests] == [in_release]
    apt.download([late.name], tmp_path / "dl").check()
    assert sha256_of(tmp_path / "dl" / late.download_name) == late.sha256
    mirror.override(in_release, expired_in_release)
    assert not apt.update().ok
    for sha in (old_xz, expired_xz):
        stale = get(daemon, f"{suite}/{binary}/by-hash/SHA256/{sha}")
        assert stale.status == 200 and stale.headers["X-Dhtdeb-Verified"] == "no"
    counts = failures(daemon)
    assert counts["signature"] == 4 and counts["index"] == 0 and counts["mirror"] == 0

    # The current index still holds: every package of it is served verified, `late` too.
    mirror.override(in_release, None)
    for package in current.packages:
        if package.name == current.big_package:
            continue
        answer = get(daemon, f"{mirror.url}/{package.filename}")
        assert answer.status == 200 and answer.headers["X-Dhtdeb-Verified"] == "yes"
        assert hashlib.sha256(answer.body).hexdigest() == package.sha256
    wait_until(
        lambda: daemon.status()["cache"]["files"] == len(current.packages),
        30,
        "the small packages stored",
    )
    assert_store_sound(daemon, absent=(old_xz, expired_xz))

    # Valid-Until alone: a daemon that knows only the old state, then sees the expired one.
    knows_old = dhtdeb_daemon()
    mirror.override(in_release, old_in_release)
    assert get(knows_old, f"{suite}/InRelease").headers["X-Dhtdeb-Verified"] == "yes"
    mirror.override(in_release, expired_in_release)
    assert get(knows_old, f"{suite}/InRelease").headers["X-Dhtdeb-Verified"] == "no"
    assert failures(knows_old)["signature"] == 1
    kept = get(knows_old, f"{suite}/{binary}/by-hash/SHA256/{old_xz}")
    assert kept.headers["X-Dhtdeb-Verified"] == "yes"
    refused = get(knows_old, f"{suite}/{binary}/by-hash/SHA256/{expired_xz}")
    assert refused.headers["X-Dhtdeb-Verified"] == "no"
    wait_until(lambda: knows_old.status()["cache"]["files"] == 1, 30, "old Packages.xz stored")
    assert set(assert_store_sound(knows_old)) == {old_xz}


# --- 3. wrong, short, long and cut pool files -----------------------------------------------------


def test_wrong_short_long_and_cut_debs_are_never_stored_nor_completed(
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    dhtdeb_daemon: DaemonFactory,
    tmp_path: Path,
) -> None:
    """The mirror sends, for five packages of one apt batch: another package's bytes (a real,
    validly signed file of the archive, wrong for this path), the file less its last 100 bytes,
    the file plus 100 bytes, the file cut half way under a Content-Length that promised all of
    it, and the big file cut half way likewise. apt fails and writes none of them whole; the
    three wrong files are counted in `verify_failures.mirror`, once per download of them (the
    two cut ones are transfer failures, not lies: no wrong byte arrived); nothing of them is
    stored or left in `incoming/`; the honest package of the batch is stored. With the mirror
    honest again the same daemon gives apt every file right."""
    small = signed_archive.small_packages
    other, short, long_, cut, honest = small[0], small[1], small[2], small[5], small[6]
    big = signed_archive.big
    data = {p.name: signed_archive.path(p.filename).read_bytes() for p in signed_archive.packages}
    mirror.override(other.filename, data[small[3].name])
    mirror.override(short.filename, data[short.name][:-100])
    mirror.override(long_.filename, data[long_.name] + b"\0" * 100)
    mirror.cut(cut.filename, cut.size // 2)
    mirror.cut(big.filename, big.size // 2)
    lied = (other, short, long_, cut, big)

    daemon = dhtdeb_daemon()
    apt = apt_client(signed_archive, mirror, mode=ProxyMode.HTTP_PROXY, proxy=daemon.proxy)
    apt.update().check()
    result = apt.download([p.name for p in (*lied, honest)], tmp_path / "dl")
    assert not result.ok
    for package in lied:
        received = tmp_path / "dl" / package.download_name
        assert not received.exists() or received.stat().st_size < package.size, package.name
    wait_until(lambda: daemon.status()["cache"]["files"] == 2, 30, "Packages.xz and 1 .deb")
    # Each lie counted once per download of it: apt's read-ahead may start one, which fails,
    # and apt's own request then a second.
    counts = failures(daemon)
    bad = counts.pop("mirror")
    assert 3 <= bad <= 6
    assert counts == {"signature": 0, "index": 0, "peer": 0}
    stored = assert_store_sound(daemon, absent=tuple(p.sha256 for p in lied))
    assert honest.sha256 in stored
    assert daemon.status()["dht"]["announced"] == 0  # --no-dht: nothing is ever announced
    # A Content-Length that contradicts the signed size is a 502 for apt, not a handler crash.
    assert "Traceback" not in daemon.log_file.read_text(errors="replace"), daemon.log_tail()

    for package in (other, short, long_):
        mirror.override(package.filename, None)
    for package in (cut, big):
        mirror.cut(package.filename, None)
    again = tmp_path / "again"
    apt.download([p.name for p in (*lied, honest)], again).check()
    for package in (*lied, honest):
        assert sha256_of(again / package.download_name) == package.sha256
    assert failures(daemon)["mirror"] == bad
    wait_until(lambda: daemon.status()["cache"]["files"] == 7, 30, "all six .debs stored")
    assert_store_sound(daemon)


# --- 4. lies about byte ranges --------------------------------------------------------------------


def test_range_lies_never_reach_apt(
    signed_archive: SignedArchive,
    range_liar: RangeLyingMirror,
    apt_client: AptClientFactory,
    dhtdeb_daemon: DaemonFactory,
    tmp_path: Path,
) -> None:
    """apt resumes a half-downloaded big file with Range + If-Range while the mirror answers
    every Range request with lies (200 and the whole file; 206 with the asked-for Content-Range
    over the wrong bytes): the daemon never asks the mirror for a range, so apt's file is right
    and only the missing half crosses the proxy. A raw Range request is answered from the
    verified download. A mirror that answers a plain GET with 206 and half the file is refused:
    apt gets an error, nothing is stored (a refusal, not a wrong file: no counter moves)."""
    big, small = signed_archive.big, signed_archive.small_packages[3]
    source = signed_archive.path(big.filename).read_bytes()
    daemon = dhtdeb_daemon()
    apt = apt_client(signed_archive, range_liar, mode=ProxyMode.HTTP_PROXY, proxy=daemon.proxy)
    apt.update().check()
    for lie in (RangeLie(ignore_range=True), RangeLie(shift=4096)):
        range_liar.lie(big.filename, lie)
        range_liar.lie(small.filename, lie)
    half = big.size // 2
    apt.seed_partial(
        big.download_name, source[:half], os.stat(signed_archive.path(big.filename)).st_mtime
    )
    before = daemon.status()["bytes"]["to_apt"]
    apt.fetch([big.name]).check()
    assert sha256_of(apt.archive_file(big.download_name)) == big.sha256
    assert daemon.status()["bytes"]["to_apt"] - before == big.size - half
    small_bytes = signed_archive.path(small.filename).read_bytes()
    ranged = get(daemon, f"{range_liar.url}/{small.filename}", {"Range": "bytes=100-"})
    assert ranged.status == 206 and ranged.body == small_bytes[100:]
    assert all(r.header("Range") is None for r in range_liar.requests if r.path.startswith("pool/"))
    assert range_liar.lies_told == 0

    victim = signed_archive.small_packages[4]
    for package in (victim, signed_archive.small_packages[7]):
        range_liar.lie(package.filename, RangeLie(partial_for_plain=True))
    names = [victim.name, signed_archive.small_packages[7].name]
    assert not apt.download(names, tmp_path / "dl").ok
    for package in (victim, signed_archive.small_packages[7]):
        assert not (tmp_path / "dl" / package.download_name).exists()
    assert range_liar.lies_told == 2
    assert failures(daemon) == {"signature": 0, "index": 0, "peer": 0, "mirror": 0}
    wait_until(lambda: daemon.status()["cache"]["files"] == 3, 30, "index, big and small stored")
    stored = assert_store_sound(daemon, absent=(victim.sha256,))
    assert set(stored) >= {big.sha256, small.sha256}


# --- 5. a Release by a key nobody trusts, beside the real one -------------------------------------


def test_untrusted_in_release_beside_the_known_one_stores_nothing(
    archive_copy: SignedArchive,
    serve_archive: MirrorFactory,
    apt_client: AptClientFactory,
    dhtdeb_daemon: DaemonFactory,
) -> None:
    """After the daemon verified the real suite, the mirror serves an InRelease for it signed by
    an untrusted key that lists a swapped Packages.xz, and a second suite of the same archive
    signed only by that key. Both are passed through unverified (`verify_failures.signature`),
    apt refuses them; the index files they list, true or swapped, are passed through and never
    stored, not even a by-hash file whose bytes do hash to its name; what was learned before
    still holds (the real suite's Packages and a real package are served verified)."""
    binary = f"{archive_copy.component}/binary-{archive_copy.arch}"
    mirror = serve_archive(archive_copy.root)
    daemon = dhtdeb_daemon()
    apt = apt_client(archive_copy, mirror, mode=ProxyMode.HTTP_PROXY, proxy=daemon.proxy)
    apt.update().check()
    wait_until(lambda: daemon.status()["cache"]["files"] == 1, 30, "Packages.xz stored")
    true_xz = sha256_file(archive_copy.binary_dir / "Packages.xz")

    # A second suite, signed only by the untrusted key, whose index is the real one plus a lie.
    victim = archive_copy.small_packages[0]
    evil_text = tampered_packages_text(archive_copy, victim.name, "0" * 64)
    evil_xz = lzma.compress(evil_text, format=lzma.FORMAT_XZ)
    evil_sha = hashlib.sha256(evil_xz).hexdigest()
    rogue = dataclasses.replace(archive_copy, suite="rogue")
    shutil.copytree(archive_copy.dist_dir, rogue.dist_dir)
    (rogue.binary_dir / "by-hash" / "SHA256" / evil_sha).write_bytes(evil_xz)
    # The real suite, re-signed by the untrusted key with the swapped Packages.xz listed.
    (archive_copy.binary_dir / "by-hash" / "SHA256" / evil_sha).write_bytes(evil_xz)
    for archive in (rogue, archive_copy):
        release = archive.dist_dir / "Release"
        release.write_text(
            release.read_text()
            .replace(true_xz, evil_sha)
            .replace(f"Suite: {archive_copy.suite}", f"Suite: {archive.suite}")
            .replace(f"Codename: {archive_copy.suite}", f"Codename: {archive.suite}")
        )
        sign(archive, archive.unknown_key)

    assert not apt.update().ok
    rogue_apt = apt_client(rogue, mirror, mode=ProxyMode.HTTP_PROXY, proxy=daemon.proxy)
    assert not rogue_apt.update().ok
    assert failures(daemon) == {"signature": 2, "index": 0, "peer": 0, "mirror": 0}
    for suite in (archive_copy.suite, "rogue"):
        base = f"{mirror.url}/dists/{suite}"
        assert get(daemon, f"{base}/InRelease").headers["X-Dhtdeb-Verified"] == "no"
        swapped = get(daemon, f"{base}/{binary}/by-hash/SHA256/{evil_sha}")
        assert swapped.status == 200 and swapped.headers["X-Dhtdeb-Verified"] == "no"
        assert hashlib.sha256(swapped.body).hexdigest() == evil_sha
    # The real suite's plain Packages is still vouched for by the Release verified before; the
    # rogue suite's is not.
    plain = "Packages"
    assert (
        get(daemon, f"{mirror.url}/dists/{archive_copy.suite}/{binary}/{plain}").headers[
            "X-Dhtdeb-Verified"
        ]
        == "yes"
    )
    assert (
        get(daemon, f"{mirror.url}/dists/rogue/{binary}/{plain}").headers["X-Dhtdeb-Verified"]
        == "no"
    )
    # The true index under the rogue suite: its bytes match a stored file, yet nothing vouches
    # for it there, so it is passed through, not served from the store.
    rogue_true = get(daemon, f"{mirror.url}/dists/rogue/{binary}/by-hash/SHA256/{true_xz}")
    assert rogue_true.headers["X-Dhtdeb-Verified"] == "no"
    assert failures(daemon)["signature"] == 4
    true_plain = sha256_file(archive_copy.binary_dir / "Packages")
    wait_until(lambda: daemon.status()["cache"]["files"] == 2, 30, "plain Packages stored")
    assert set(assert_store_sound(daemon, absent=(evil_sha,))) == {true_xz, true_plain}

    real = get(daemon, f"{mirror.url}/{victim.filename}")
    assert real.headers["X-Dhtdeb-Verified"] == "yes"
    assert hashlib.sha256(real.body).hexdigest() == victim.sha256
    wait_until(lambda: daemon.status()["cache"]["files"] == 3, 30, "the real .deb stored")
    assert_store_sound(daemon, absent=(evil_sha,))


@pytest.mark.parametrize(
    "lie",
    [RangeLie(ignore_range=True), RangeLie(wrong_content_range=True), RangeLie(shift=4096)],
    ids=["200-for-range", "wrong-content-range", "right-header-wrong-bytes"],
)
def test_range_lies_to_a_swarm_node_never_reach_apt(
    lie: RangeLie,
    signed_archive: SignedArchive,
    range_liar: RangeLyingMirror,
    apt_client: AptClientFactory,
    swarm_node: SwarmNode,
    tmp_path: Path,
) -> None:
    """With the DHT on, a pool file comes through the swarm, which asks the mirror (its web
    seed) for piece ranges. A 200 with the whole file is read from the right offset and apt
    gets the right file; a wrong Content-Range (refused, not counted), or the right one over the
    wrong bytes (the whole file fails: `verify_failures.mirror`), never completes apt's
    response; either way nothing wrong is stored."""
    big = signed_archive.big
    daemon = swarm_node()
    apt = apt_client(signed_archive, range_liar, mode=ProxyMode.HTTP_PROXY, proxy=daemon.proxy)
    apt.update().check()
    range_liar.lie(big.filename, lie)
    result = apt.download([big.name], tmp_path / "dl")
    received = tmp_path / "dl" / big.download_name
    if lie.ignore_range:
        result.check()
        assert sha256_of(received) == big.sha256
    else:
        assert not result.ok
        assert not received.exists() or received.stat().st_size < big.size
    assert range_liar.lies_told >= 1
    # Only wrong bytes count as the mirror's lie; a wrong Content-Range is refused unread.
    counts = failures(daemon)
    assert counts.pop("mirror") == (1 if lie.shift else 0)
    assert counts == {"signature": 0, "index": 0, "peer": 0}
    if lie.ignore_range:
        wait_until(lambda: big.sha256 in store_files(daemon), 30, "the big file stored")
    assert_store_sound(daemon, absent=() if lie.ignore_range else (big.sha256,))
