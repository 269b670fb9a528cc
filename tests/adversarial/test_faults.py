"""Faults (issue 13): crashes, a full disk, a damaged index, a dead mirror, a jumping clock.

Real daemons, the real apt and the test mirror, except for the clock, which only the components'
injected wall clocks can move. Each case says in its docstring what must happen. Randomness is
seeded (`DHTDEB_FAULT_SEED`, printed: pytest shows it when a case fails).
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import rawhttp, wait_until
from support.apt import AptClient, AptClientFactory, ProxyMode
from support.archive import DebPackage, SignedArchive
from support.daemon import DaemonFactory, DaemonProcess
from support.mirror import Mirror
from typer.testing import CliRunner

from dhtdeb.archive.index import ArchiveIndex
from dhtdeb.archive.release import Release, ReleaseEntry
from dhtdeb.cli import app as cli_app
from dhtdeb.store import UNSYNCED_MARKER, ContentStore

FAULT_SEED = int(os.environ.get("DHTDEB_FAULT_SEED", "1313"))
MiB = 1 << 20


# -- helpers --------------------------------------------------------------------------------------


def _store_files(state_dir: Path) -> dict[str, str]:
    """name → actual sha256 of every file in a content store (hashed by the test itself)."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in (state_dir / "store").glob("??/*")
    }


def _assert_store_sound(state_dir: Path) -> None:
    for name, actual in _store_files(state_dir).items():
        assert name == actual, f"store holds {name} with content {actual}"


@dataclass(frozen=True)
class _Verdict:
    code: int
    stdout: str
    stderr: str


def _cache_verify(state_dir: Path, *, subprocess_: bool = False) -> _Verdict:
    """`dhtdeb cache verify --state-dir STATE_DIR`, as a process or (faster) in this one."""
    argv = ["cache", "verify", "--state-dir", str(state_dir)]
    if subprocess_:
        done = subprocess.run(
            [sys.executable, "-m", "dhtdeb", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return _Verdict(done.returncode, done.stdout, done.stderr)
    result = CliRunner().invoke(cli_app, argv)
    return _Verdict(result.exit_code, result.stdout, result.stderr)


def _assert_verify_clean(state_dir: Path) -> None:
    verdict = _cache_verify(state_dir)
    assert verdict.code == 0, verdict.stdout + verdict.stderr
    assert ", 0 bad" in verdict.stdout


def _apt(
    factory: AptClientFactory, archive: SignedArchive, mirror: Mirror | str, daemon: DaemonProcess
) -> AptClient:
    return factory(archive, mirror, mode=ProxyMode.HTTP_PROXY, proxy=daemon.proxy)


def _assert_received(directory: Path, packages: list[DebPackage]) -> None:
    for package in packages:
        got = hashlib.sha256((directory / package.download_name).read_bytes()).hexdigest()
        assert got == package.sha256, f"{package.name}: apt got a wrong file"


def _sent_at_least(mirror: Mirror, count: int) -> bool:
    return mirror.deb_bytes_sent() >= count


def _committed_at_least(state_dir: Path, packages: list[DebPackage], count: int) -> bool:
    store = state_dir / "store"
    return sum(1 for p in packages if (store / p.sha256[:2] / p.sha256).exists()) >= count


# -- 1. dhtdeb cache verify ----------------------------------------------------------------------


def test_cache_verify_passes_a_clean_store_and_names_a_corrupted_file(
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    dhtdeb_daemon: DaemonFactory,
    tmp_path: Path,
) -> None:
    """Expected: on a stopped daemon's store, `dhtdeb cache verify` exits 0 and counts every file
    and byte; once the test flips a byte of one stored file it exits 1 and names that file; a
    missing store exits 2."""
    daemon = dhtdeb_daemon()
    apt = _apt(apt_client, signed_archive, mirror, daemon)
    apt.update().check()
    names = [p.name for p in signed_archive.small_packages[:3]]
    apt.download(names, tmp_path / "dl").check()
    daemon.stop()
    stored = sorted((daemon.state_dir / "store").glob("??/*"))
    assert len(stored) == 4  # three packages and the Packages file

    clean = _cache_verify(daemon.state_dir, subprocess_=True)  # the installed command, once
    assert clean.code == 0, clean.stderr
    size = sum(p.stat().st_size for p in stored)
    assert clean.stdout.strip() == f"4 files, {size} bytes, 0 bad"

    victim = stored[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    bad = _cache_verify(daemon.state_dir)
    assert bad.code == 1
    assert f"bad: {victim}: content hashes to {hashlib.sha256(data).hexdigest()}" in bad.stderr
    assert bad.stdout.strip() == f"4 files, {size} bytes, 1 bad"

    missing = _cache_verify(tmp_path / "nowhere")
    assert missing.code == 2 and "no store" in missing.stderr


# -- 2. kill -9 at random points, repeated --------------------------------------------------------


def test_kill_9_at_random_points_of_downloads_and_commits_leaves_a_sound_store(
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    dhtdeb_daemon: DaemonFactory,
    tmp_path: Path,
) -> None:
    """Expected: five rounds (seeded) of "start a daemon on the same state dir, apt downloads the
    whole archive (eight small packages and a 20 MiB one), SIGKILL when the mirror has sent a
    random number of bytes (even rounds), or right after a random number of files were committed
    (odd rounds: before their group fsync, the unsynced marker present)". After every kill
    `dhtdeb cache verify` is clean and the test's own hashes of the store agree. Then a fresh
    daemon on that state dir starts with nothing in incoming/ and no unsynced marker, and apt
    gets every file right."""
    print(f"fault seed: DHTDEB_FAULT_SEED={FAULT_SEED}")
    rng = random.Random(FAULT_SEED)
    state = tmp_path / "state"
    packages = list(signed_archive.packages)
    names = [p.name for p in packages]
    mirror.set_total_rate(64 * MiB)  # about 0.3 s for the batch: room for a kill in the middle
    for round_number in range(5):
        # Offline, between daemons: forget the big file and a random half of the others, so
        # that every round downloads and commits something.
        for package in packages:
            if package is signed_archive.big or rng.random() < 0.5:
                path = state / "store" / package.sha256[:2] / package.sha256
                path.unlink(missing_ok=True)
        daemon = dhtdeb_daemon(state_dir=state)
        apt = _apt(apt_client, signed_archive, mirror, daemon)
        apt.update().check()
        present = set(_store_files(state))
        missing = [p for p in packages if p.sha256 not in present]
        remaining = sum(p.size for p in missing)
        base = mirror.deb_bytes_sent()
        # Even rounds: mid-download; odd rounds: right after a commit (before its fsync).
        point = (
            ("commits", rng.randint(1, len(missing)))
            if round_number % 2
            else ("bytes", rng.randrange(1, remaining))
        )
        print(f"round {round_number}: kill after {point[1]} {point[0]}")
        dl = tmp_path / f"dl-{round_number}"
        dl.mkdir()
        running = apt.start(["download", *names], cwd=dl)
        if point[0] == "bytes":
            mirror.wait_for(functools.partial(_sent_at_least, mirror, base + point[1]), 60)
        else:
            condition = functools.partial(_committed_at_least, state, missing, point[1])
            wait_until(condition, 60, f"{point[1]} files committed")
        daemon.kill()
        running.wait(timeout=60)
        _assert_verify_clean(state)
        _assert_store_sound(state)

    mirror.set_total_rate(None)
    daemon = dhtdeb_daemon(state_dir=state)
    assert list((state / "store" / "incoming").iterdir()) == []
    assert not (state / "store" / UNSYNCED_MARKER).exists()
    apt = _apt(apt_client, signed_archive, mirror, daemon)
    apt.update().check()
    apt.download(names, tmp_path / "final").check()
    _assert_received(tmp_path / "final", packages)
    daemon.stop()
    _assert_verify_clean(state)


# -- 3. disk full ---------------------------------------------------------------------------------


class _LogOutside(DaemonProcess):
    """A daemon whose log lives outside its (full) state directory."""

    def __init__(self, state_dir: Path, keyrings: tuple[Path, ...], log_file: Path) -> None:
        super().__init__(state_dir, keyrings)
        self._log_path = log_file

    @property
    def log_file(self) -> Path:
        return self._log_path


@pytest.fixture
def small_disk(tmp_path: Path, dhtdeb_daemon: DaemonFactory) -> Iterator[Path]:
    """A 24 MiB tmpfs (the big package is 20 MiB); daemons are stopped before it is unmounted."""
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        dhtdeb_daemon.stop_all()
        subprocess.run(["umount", str(mountpoint)], check=True)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_disk_full_fails_the_file_that_does_not_fit_and_serves_again_once_space_returns(
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    dhtdeb_daemon: DaemonFactory,
    small_disk: Path,
    tmp_path: Path,
) -> None:
    """Expected: with the state dir on a disk that has 4 MiB left, apt's download of the 20 MiB
    package fails (apt exits non-zero and never holds the whole file, no hang), the small packages
    reach apt intact, the daemon stays up, logs "store full: no space left on device" for the big
    file, and leaves nothing in incoming/. Once the filler file is deleted the next apt run gets
    the big package right and the store keeps it."""
    state = small_disk / "state"
    daemon = _LogOutside(state, (signed_archive.keyring,), tmp_path / "daemon.log")
    dhtdeb_daemon.daemons.append(daemon)
    daemon.start()
    apt = _apt(apt_client, signed_archive, mirror, daemon)
    apt.update().check()

    filler = small_disk / "filler"
    with open(filler, "wb") as out:
        os.posix_fallocate(out.fileno(), 0, _free(small_disk) - 4 * MiB)
    big = signed_archive.big
    smalls = list(signed_archive.small_packages)
    result = apt.download([p.name for p in [*smalls, big]], tmp_path / "dl", timeout=60)
    assert not result.ok
    assert big.download_name in result.output
    received = tmp_path / "dl" / big.download_name
    assert not received.exists() or received.stat().st_size < big.size
    _assert_received(tmp_path / "dl", smalls)  # verified before the store's commit
    assert daemon.running and daemon.get("/health") == b"ok\n"
    log = daemon.log_file.read_text()
    assert f"store full: no space left on device for {big.sha256}" in log
    assert "Traceback" not in log
    assert list((state / "store" / "incoming").iterdir()) == []
    assert big.sha256 not in _store_files(state)
    _assert_store_sound(state)

    filler.unlink()
    apt.download([big.name], tmp_path / "dl2", timeout=60).check()
    _assert_received(tmp_path / "dl2", [big])
    wait_until(lambda: big.sha256 in _store_files(state), 30, "the big file committed")
    _assert_store_sound(state)


# -- 4. a damaged SQLite index ------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_index_database_is_moved_aside_and_learned_again(
    damage: str,
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    dhtdeb_daemon: DaemonFactory,
    tmp_path: Path,
) -> None:
    """Expected: a daemon whose index.sqlite was overwritten with garbage, or truncated to half,
    starts anyway: it logs "archive index … is damaged", moves the file to
    index.sqlite.damaged-<time> and makes an empty index; the next apt-get update learns the
    archive again and apt downloads the right files (the one already stored, from the store)."""
    print(f"fault seed: DHTDEB_FAULT_SEED={FAULT_SEED}")
    rng = random.Random(f"{FAULT_SEED}-{damage}")
    daemon = dhtdeb_daemon()
    apt = _apt(apt_client, signed_archive, mirror, daemon)
    apt.update().check()
    first = signed_archive.small_packages[0]
    apt.download([first.name], tmp_path / "dl").check()
    daemon.stop()
    database = daemon.state_dir / "index.sqlite"
    size = database.stat().st_size
    assert size > 8192 and not database.with_name("index.sqlite-wal").exists()
    if damage == "garbage":
        offset = rng.randrange(0, 100)  # the header: "SQLite format 3", page size, counts
        with open(database, "r+b") as handle:
            handle.seek(offset)
            handle.write(rng.randbytes(4096))
    else:
        os.truncate(database, size // 2)

    daemon = dhtdeb_daemon(state_dir=daemon.state_dir)
    assert "is damaged" in daemon.log_tail()
    aside = list(daemon.state_dir.glob("index.sqlite.damaged-*"))
    assert len(aside) == 1
    apt = _apt(apt_client, signed_archive, mirror, daemon)
    apt.update().check()
    wanted = list(signed_archive.small_packages[:3])
    mirror.reset_counters()
    apt.download([p.name for p in wanted], tmp_path / "dl2").check()
    _assert_received(tmp_path / "dl2", wanted)
    assert mirror.bytes_sent(first.filename) == 0  # served from the store
    assert daemon.status()["index"]["pool_files"] > 0


# -- 5. the mirror is down ------------------------------------------------------------------------


def test_a_warm_node_serves_what_it_holds_while_the_mirror_is_down(
    signed_archive: SignedArchive,
    mirror: Mirror,
    apt_client: AptClientFactory,
    dhtdeb_daemon: DaemonFactory,
    tmp_path: Path,
) -> None:
    """Expected, with the mirror stopped after a warm-up (apt-get update, four packages
    downloaded): InRelease is answered from the last verified copy (archive/last_signed.py),
    verified again, with a Warning header (304 to apt's If-Modified-Since), so `apt-get update`
    succeeds even with --error-on=any and keeps its lists, and `requests.stale_releases`
    counts it; the Packages file, by name and by hash, is served from the store (200, verified;
    Packages.gz, which apt never fetched, gets 502); the four cached packages download right; a
    package never fetched fails at once with 502. A kept copy changed on disk is refused (its
    signature no longer verifies): apt then gets 502 as with no copy at all."""
    daemon = dhtdeb_daemon()
    apt = _apt(apt_client, signed_archive, mirror, daemon)
    apt.update().check()
    cached = [*signed_archive.small_packages[:3], signed_archive.big]
    uncached = signed_archive.small_packages[3]
    apt.download([p.name for p in cached], tmp_path / "warm").check()
    lists_before = {p.name: p.read_bytes() for p in apt.lists_dir.iterdir() if p.is_file()}
    mirror_url = mirror.url
    mirror.stop()

    apt.update().check()  # --error-on=any
    lists_after = {p.name: p.read_bytes() for p in apt.lists_dir.iterdir() if p.is_file()}
    assert lists_after == lists_before
    assert daemon.status()["requests"]["stale_releases"] >= 1

    in_release_url = f"{mirror_url}/dists/{signed_archive.suite}/InRelease"
    in_release = rawhttp.request(daemon.proxy, "GET", in_release_url)
    assert in_release.status == 200, in_release.status
    assert (
        in_release.body
        == (signed_archive.root / "dists" / signed_archive.suite / "InRelease").read_bytes()
    )
    assert in_release.headers["X-Dhtdeb-Verified"] == "yes"
    assert "Stale" in in_release.headers["Warning"]
    binary = signed_archive.binary_dir.relative_to(signed_archive.root).as_posix()
    xz = (signed_archive.binary_dir / "Packages.xz").read_bytes()
    xz_sha256 = hashlib.sha256(xz).hexdigest()
    for path in (f"{binary}/Packages.xz", f"{binary}/by-hash/SHA256/{xz_sha256}"):
        response = rawhttp.request(daemon.proxy, "GET", f"{mirror_url}/{path}")
        assert response.status == 200 and response.headers["X-Dhtdeb-Verified"] == "yes"
        assert response.body == xz
    # Packages.gz: listed in the verified Release, but apt fetched the .xz; nothing to serve.
    assert rawhttp.request(daemon.proxy, "GET", f"{mirror_url}/{binary}/Packages.gz").status == 502

    apt.download([p.name for p in cached], tmp_path / "cold").check()
    _assert_received(tmp_path / "cold", cached)
    missing = apt.download([uncached.name], tmp_path / "none", timeout=30)
    assert not missing.ok and "502" in missing.output
    assert daemon.running

    # A kept copy that changed on disk is refused: no longer what a trusted key signed.
    (kept,) = (daemon.state_dir / "signed").iterdir()
    kept.write_bytes(kept.read_bytes().replace(b"Packages", b"PackageZ", 1))
    assert rawhttp.request(daemon.proxy, "GET", in_release_url).status == 502
    assert daemon.running


# -- 6. the wall clock jumps ----------------------------------------------------------------------


class _WallClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _release(valid_until: float | None, sha256: str) -> Release:
    entry = ReleaseEntry("main/binary-amd64/Packages", sha256, 123)
    return Release("s", "s", 1_000.0, valid_until, False, {entry.path: entry})


def test_index_follows_the_wall_clock_both_ways_and_loses_nothing(tmp_path: Path) -> None:
    """Expected: an index whose wall clock jumps a day ahead stops answering for a Release past
    its Valid-Until (and for its pool files), without deleting anything; when the clock jumps
    back, the same entries are answered again; a clock set before the Release's learning time
    changes nothing."""
    clock = _WallClock(1_800_000_000.0)
    index = ArchiveIndex(tmp_path / "index.sqlite", wall_clock=clock)
    suite = "http://m/debian/dists/s/"
    packages_sha, deb_sha = "a" * 64, "b" * 64
    index.learn_release(suite, "http://m/debian/", _release(clock.now + 3600, packages_sha), "F")
    index.learn_packages(
        suite,
        suite + "main/binary-amd64/",
        "http://m/debian/",
        packages_sha,
        [("pool/x.deb", deb_sha, 9)],
    )
    deb = "http://m/debian/pool/x.deb"

    def answers() -> tuple[bool, object, object]:
        return (
            index.has_release(suite),
            index.index_file(suite, "main/binary-amd64/Packages"),
            index.pool_file(deb),
        )

    assert answers()[0] and answers()[2] is not None
    start = clock.now
    clock.now = start + 86_400
    assert answers() == (False, None, None)
    clock.now = start - 86_400 * 365
    has, listed, pool = answers()
    assert has and listed is not None and pool is not None and pool.sha256 == deb_sha
    clock.now = start
    assert answers()[0]
    index.close()


def test_store_rechecks_files_renamed_after_the_wall_clock_went_back(tmp_path: Path) -> None:
    """Expected: the store's crash recheck covers files renamed after "the unsynced marker was
    made, then the wall clock went back an hour": the marker's time is set back with the clock,
    so a file damaged by the crash is hashed again and removed when the store reopens. (Before
    the fix, its ctime lay before the marker's mtime and the damaged file was kept and served.)"""
    clock = _WallClock(0.0)
    root = tmp_path / "store"
    store = ContentStore(root, wall_clock=clock)

    def put(data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        partial = store.begin(sha256, len(data))
        partial.write(data)
        store.commit(partial)
        return sha256

    # The marker is made by a clock an hour ahead of the kernel's; the clock is then corrected.
    real = os.stat(tmp_path).st_mtime
    clock.now = real + 3600
    before = put(b"committed before the jump")
    clock.now = real
    after = put(b"committed after the jump")
    # A power cut without the group fsync: the late file's bytes are lost. Reopen (a new daemon).
    store.path_of(after).write_bytes(b"garbage left by the crash")
    reopened = ContentStore(root, wall_clock=clock)
    assert reopened.rechecked == 1
    assert after not in reopened and before in reopened
    assert not (root / UNSYNCED_MARKER).exists()


def test_store_and_index_survive_the_clock_jumping_forward_and_back(tmp_path: Path) -> None:
    """Expected: commits, lookups and eviction with a wall clock that jumps ten years ahead and
    then back raise nothing, keep the byte limit, and never evict the file just committed."""
    clock = _WallClock(1_800_000_000.0)
    store = ContentStore(tmp_path / "store", limit_bytes=3000, wall_clock=clock)
    kept: list[str] = []
    for step, jump in enumerate([0.0, 315_360_000.0, -315_360_000.0, -3600.0, 7200.0]):
        clock.now += jump
        data = bytes([step]) * 1000
        sha256 = hashlib.sha256(data).hexdigest()
        partial = store.begin(sha256, len(data))
        partial.write(data)
        store.commit(partial)
        kept.append(sha256)
        assert sha256 in store and store.lookup(sha256) is not None
        assert store.total_bytes <= 3000
    store.sync()
    assert not (tmp_path / "store" / UNSYNCED_MARKER).exists()
