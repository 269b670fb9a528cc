"""Benchmark: packages from peers (issue 4) — offload, flash crowd, one big file from one peer.

Real `dhtdeb bootstrap` and `dhtdeb serve` daemons (DHT on, LAN discovery off, loopback), each used
by its own isolated apt-get in HTTP-proxy mode, and one signed archive served by the harness's
counting mirror (tests/support/). Every round starts fresh daemons and a fresh bootstrap node for
each benchmark, so no round sees another round's announcements.

  offload  N nodes (default 20) fetch the same ~30 packages one after another (`apt-get update` +
           `apt-get download` of all). Before node k starts, the bench polls k's `/peers/<sha>`
           until its DHT returns every earlier node for every file (announce propagation, timed).
           Printed: mirror .deb bytes / unique .deb bytes (target <= 1.05; the physical limit is
           1.00; N direct clients would cost N.00), per-node mirror bytes and times.
  crowd    N nodes run `apt-get download` of one 64 MiB package at the same moment; the mirror's
           total rate (all connections together) and every node's `--upload-rate` are capped to
           the same R. Printed: time until all N have it / time for one node alone from the mirror
           (measured in the same round, same cap; target <= 2.0, mirror-only ~ N), mirror bytes /
           file size, per-node completion times, and a timeline from each node's /status.json,
           its peer server's `/v1/pieces/<sha>` and a DHT lookup, sampled every second.
           `--liar`: the last node's apt goes through a second mirror (same archive, same cap)
           that serves the package with every 4096th byte inverted. Printed besides: each
           mirror's bytes / file size (honest target <= 1.5), honest apt failures (target 0),
           and per honest node verify_failures.peer and whether the inquiry ran or a file
           assembled from the swarm was bad (its log).
  single   node A holds a 256 MiB package (fetched once from the mirror); fresh node B fetches it
           through its proxy (`curl -x`), against `curl` straight from A's peer server
           (`/v1/files/<sha>`). Printed: both throughputs and their ratio (target >= 0.5), B's
           sha256, and the mirror's .deb bytes during B's fetch (<= one piece, for list
           corroboration). In the same round, the same curl runs through bench/floor.py, a
           proxy doing only the work no proxy may skip (receive, hash, store, send): once with
           dhtdeb's work (two hash passes, store through the page cache) and once with the
           least (one pass, store with O_DIRECT). Its ratio bounds what any implementation
           could reach on this machine.

    .venv/bin/python bench/swarm.py [--rounds 3] [--quick] [--only offload|crowd|single ...]
        [--nodes 20] [--rate 12000000] [--crowd-size-mib 64] [--liar] [--seed S] [--keep]

Not a test: targets are printed, not asserted; the exit status is 1 only when a correctness check
fails (a file with the wrong sha256, a daemon that did not come up). Loopback only.
bench/README.md has the details.
"""

from __future__ import annotations

import argparse
import base64
import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import BinaryIO

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import proxy as proxy_bench  # noqa: E402  (bench/proxy.py: the archive recipe)
from floor import FloorProxy  # noqa: E402  (bench/floor.py: the least work a proxy must do)
from support.apt import AptClient, AptResult, ProxyMode, RunningApt  # noqa: E402
from support.archive import (  # noqa: E402
    DebPackage,
    SignedArchive,
    create_key,
    reindex,
)
from support.daemon import BootstrapProcess, DaemonProcess  # noqa: E402
from support.mirror import Mirror  # noqa: E402

DEFAULT_SEED = 20260601
DEFAULT_ROUNDS = 3
DEFAULT_NODES = 20
DEFAULT_RATE = 12_000_000  # bytes/s: 64 MiB alone from the mirror in ~5.6 s
KB, MB, MiB = 1000, 1000 * 1000, 1024 * 1024
PIECE = 1 * MiB  # dhtdeb/swarm/pieces.py
TARGET_OFFLOAD = 1.05
TARGET_CROWD = 2.0
TARGET_NO_PEERS = 1.15  # a file with no peers vs a direct mirror fetch (issue 4, deliverable 2)
TARGET_SINGLE = 0.5
TARGET_LIAR_MIRROR = 1.5  # the honest mirror's bytes / file size with one liar in the crowd
LIAR_STRIDE = 4096  # the tampering mirror inverts every LIAR_STRIDE-th byte of the crowd file
INQUIRY_LOG = "the mirror checks the pieces taken on offers"  # dhtdeb/swarm/download.py
BAD_FILE_LOG = "swarm assembled a bad file"  # dhtdeb/downloads.py: apt's response was cut
ARCHIVE_FORMAT = 2  # bumped whenever the recipe changes
APT_TIMEOUT = 900.0
CURL_TIMEOUT = 600.0
FOUND_TIMEOUT = 60.0  # per node: announce propagation deadline
SAMPLE_INTERVAL = 1.0
ARCH = proxy_bench.ARCH

OFFLOAD, CROWD, SINGLE = "offload", "crowd", "single"
BENCHMARKS = (OFFLOAD, CROWD, SINGLE)

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True, slots=True)
class Sizes:
    """What one run builds and uses."""

    offload_packages: int
    offload_profile: proxy_bench.SizeProfile
    crowd_bytes: int
    single_bytes: int
    nodes: int
    rounds: int


# ~30 packages shaped like proxy.py's pool (log-normal around 120 KB, up to 6 MB) plus three of
# 5-16 MB: about 45 MB, with a handful of multi-piece files.
FULL = Sizes(
    offload_packages=30,
    offload_profile=proxy_bench.SizeProfile(120 * KB, 1.5, 2 * KB, 6 * MB, 3, 5 * MB, 16 * MB),
    crowd_bytes=64 * MiB,
    single_bytes=256 * MiB,
    nodes=DEFAULT_NODES,
    rounds=DEFAULT_ROUNDS,
)
QUICK = Sizes(
    offload_packages=10,
    offload_profile=proxy_bench.SizeProfile(60 * KB, 1.2, 2 * KB, 2 * MB, 1, 3 * MB, 4 * MB),
    crowd_bytes=16 * MiB,
    single_bytes=32 * MiB,
    nodes=5,
    rounds=1,
)


# --- the archive ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchArchive:
    archive: SignedArchive
    offload: tuple[DebPackage, ...]
    crowd: DebPackage
    single: DebPackage

    @property
    def offload_bytes(self) -> int:
        return sum(p.size for p in self.offload)


CROWD_NAME, SINGLE_NAME = "bench-crowd", "bench-single"


def build_archive(directory: Path, seed: int, sizes: Sizes) -> None:
    key = create_key(directory / "keys", "bench")
    root = directory / "archive"
    pool = root / "pool" / proxy_bench.COMPONENT
    work = directory / "build"
    specs = proxy_bench.package_specs(seed, sizes.offload_packages, sizes.offload_profile)
    specs += [
        proxy_bench.PackageSpec(CROWD_NAME, "1.0-1", ARCH, sizes.crowd_bytes),
        proxy_bench.PackageSpec(SINGLE_NAME, "1.0-1", ARCH, sizes.single_bytes),
    ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool_exec:
        for future in [pool_exec.submit(proxy_bench.build_deb, s, seed, work, pool) for s in specs]:
            future.result()
    shutil.rmtree(work)
    archive = SignedArchive(
        root=root,
        suite=proxy_bench.SUITE,
        component=proxy_bench.COMPONENT,
        arch=ARCH,
        key=key,
        unknown_key=key,
        packages=(),
        big_package=SINGLE_NAME,
        seed=seed,
    )
    proxy_bench.write_manifest(directory, reindex(archive), key, ARCHIVE_FORMAT)


def cached_archive(seed: int, sizes: Sizes, quick: bool) -> tuple[BenchArchive, Path, bool]:
    """The archive from bench/out/, built first when missing: (archive, directory, built now)."""
    name = (
        f"swarm-archive-v{ARCHIVE_FORMAT}-seed{seed}-n{sizes.offload_packages}"
        f"-c{sizes.crowd_bytes // MiB}-s{sizes.single_bytes // MiB}{'-quick' if quick else ''}"
    )
    directory = OUT / name
    built = False
    if not (directory / "manifest.json").is_file():
        OUT.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(directory, ignore_errors=True)
        # Short: gpg-agent's socket lives in the key's GNUPGHOME, and a Unix socket path is
        # limited to 108 bytes.
        partial = OUT / f".swarm-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        build_archive(partial, seed, sizes)
        partial.rename(directory)
        built = True
    archive = proxy_bench.load_archive(directory)
    offload = tuple(p for p in archive.packages if p.name not in (CROWD_NAME, SINGLE_NAME))
    bench = BenchArchive(
        archive, offload, archive.package(CROWD_NAME), archive.package(SINGLE_NAME)
    )
    return bench, directory, built


# --- processes ------------------------------------------------------------------------------------


class Processes:
    """Every daemon the bench started, so that each one is stopped whatever happens."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._daemons: list[DaemonProcess] = []

    def add(self, daemon: DaemonProcess) -> DaemonProcess:
        with self._lock:
            self._daemons.append(daemon)
        return daemon

    def stop(self, daemons: Sequence[DaemonProcess] | None = None) -> None:
        with self._lock:
            chosen = list(self._daemons if daemons is None else daemons)
            self._daemons = [d for d in self._daemons if d not in chosen]
        if not chosen:
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(chosen)) as pool:
            list(pool.map(lambda d: d.stop(), chosen))


@dataclass
class Swarm:
    """A bootstrap node and `serve` daemons joining it, for one benchmark round."""

    bootstrap: BootstrapProcess
    nodes: list[DaemonProcess]


def http_get(url: str, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """GET without any proxy: (status, headers, body); HTTP errors are answers too."""
    try:
        with _DIRECT.open(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def peers_of(node: DaemonProcess, sha256: str) -> set[str]:
    status, _, body = http_get(f"{node.proxy_url}/peers/{sha256}", timeout=40.0)
    if status != 200:
        return set()
    return set(json.loads(body)["peers"])


def peer_url(node: DaemonProcess) -> str:
    return f"http://{node.addresses.peer}"


@dataclass
class Bench:
    data: BenchArchive
    mirror: Mirror
    workdir: Path
    processes: Processes
    keep: bool
    log_level: str = "info"  # the daemons' --log-level
    liar_mirror: Mirror | None = None  # --liar: the tampering mirror of the crowd's last node
    failures: list[str] = field(default_factory=list)
    _count: int = 0

    def _dir(self, prefix: str) -> Path:
        self._count += 1
        path = self.workdir / f"{prefix}-{self._count}"
        path.mkdir(parents=True)
        return path

    def start_swarm(self, count: int, extra: Sequence[str] = ()) -> Swarm:
        bootstrap = BootstrapProcess(self._dir("bootstrap"))
        self.processes.add(bootstrap)
        bootstrap.start()
        nodes = [
            self.processes.add(
                DaemonProcess(
                    self._dir("node"),
                    [self.data.archive.keyring],
                    no_dht=False,
                    extra_args=(
                        "--bootstrap",
                        bootstrap.dht,
                        "--no-lan",
                        "--log-level",
                        self.log_level,
                        *extra,
                    ),
                )
            )
            for _ in range(count)
        ]
        # In parallel: each start waits for the daemon's addresses.json (imports, keyring load).
        with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
            list(pool.map(lambda d: d.start(), nodes))
        return Swarm(bootstrap, nodes)

    def stop_swarm(self, swarm: Swarm) -> None:
        self.processes.stop([*swarm.nodes, swarm.bootstrap])

    def discard(self, swarm: Swarm) -> None:
        """Remove a stopped swarm's state dirs (their stores) unless --keep: left behind, the
        crowd's 20 x 64 MiB per round fill the disk and the page cache, and writeback of
        earlier rounds competes with later ones."""
        if not self.keep:
            for node in swarm.nodes:
                shutil.rmtree(node.state_dir, ignore_errors=True)

    def client(self, proxy: str | None, mirror: Mirror | None = None) -> AptClient:
        mode = ProxyMode.DIRECT if proxy is None else ProxyMode.HTTP_PROXY
        archive = self.data.archive
        return AptClient(
            self._dir("apt"),
            mirror_url=(mirror or self.mirror).url,
            suite=archive.suite,
            component=archive.component,
            keyring=archive.keyring,
            arch=archive.arch,
            mode=mode,
            proxy=proxy,
        )

    def checked(self, result: AptResult, what: str) -> AptResult:
        if not result.ok:
            self.failures.append(f"{what}: {result.output[-2000:]}")
            raise RuntimeError(f"{what} failed:\n{result.output[-2000:]}")
        return result

    def verify(self, packages: Sequence[DebPackage], dest: Path, what: str) -> None:
        for package in packages:
            path = dest / package.download_name
            if not path.is_file() or sha256_of(path) != package.sha256:
                self.failures.append(f"{what}: {package.download_name} missing or wrong sha256")

    def wait_found(
        self, asker: DaemonProcess, holders: Sequence[DaemonProcess], files: Sequence[str]
    ) -> tuple[float, int, bool]:
        """Poll `asker`'s DHT until every holder is returned for every file: (seconds, fewest
        holders found for one file, whether all were found before FOUND_TIMEOUT)."""
        wanted = {peer_url(h) for h in holders}
        found: dict[str, int] = dict.fromkeys(files, 0)
        pending = list(files)
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            while pending:
                answers = list(pool.map(lambda sha: peers_of(asker, sha), pending))
                for sha, answer in zip(pending, answers, strict=True):
                    found[sha] = len(wanted & answer)
                pending = [sha for sha in pending if found[sha] < len(wanted)]
                if pending and time.monotonic() - started > FOUND_TIMEOUT:
                    return time.monotonic() - started, min(found.values()), False
                if pending:
                    time.sleep(0.1)  # polling a condition with a deadline
        return time.monotonic() - started, min(found.values()), True


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def status_bytes(node: DaemonProcess) -> dict[str, int]:
    try:
        data = node.status()
    except (OSError, ValueError):
        return {}
    flat = {f"bytes.{k}": v for k, v in data.get("bytes", {}).items()}
    flat.update({f"requests.{k}": v for k, v in data.get("requests", {}).items()})
    flat.update({f"verify.{k}": v for k, v in data.get("verify_failures", {}).items()})
    return flat


def log_lines(node: DaemonProcess, *words: str) -> list[str]:
    try:
        text = node.log_file.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if any(w in line for w in words)]


# --- 1. offload -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OffloadNode:
    index: int
    propagation: float  # seconds until k's DHT returned every earlier node for every file
    holders_found: int  # fewest earlier nodes returned for one file
    complete: bool  # all found before the deadline
    update_seconds: float
    download_seconds: float
    mirror_deb_bytes: int
    from_peers: int
    from_mirror: int
    to_peers: int  # this node's uploads over the whole round


@dataclass(frozen=True, slots=True)
class OffloadRound:
    round: int
    nodes: tuple[OffloadNode, ...]
    direct_seconds: float  # one plain apt-get download straight from the mirror

    @property
    def mirror_deb_bytes(self) -> int:
        return sum(n.mirror_deb_bytes for n in self.nodes)


def run_offload(bench: Bench, round_: int, count: int) -> OffloadRound:
    packages = bench.data.offload
    names = [p.name for p in packages]
    shas = [p.sha256 for p in packages]
    direct = bench.client(None)
    bench.checked(direct.update(timeout=APT_TIMEOUT), "offload direct update")
    dest = direct.workdir / "downloads"
    direct_seconds = bench.checked(
        direct.download(names, dest, timeout=APT_TIMEOUT), "offload direct download"
    ).seconds
    bench.verify(packages, dest, f"round {round_} offload direct")

    swarm = bench.start_swarm(count)
    rows: list[tuple[float, int, bool, float, float, int]] = []
    try:
        for k, node in enumerate(swarm.nodes):
            propagation, found, complete = 0.0, 0, True
            if k:
                propagation, found, complete = bench.wait_found(node, swarm.nodes[:k], shas)
                if not complete:
                    print(
                        f"    node {k + 1}: DHT returned only {found}/{k} earlier nodes for "
                        f"some file after {FOUND_TIMEOUT:.0f} s; going on",
                        flush=True,
                    )
            client = bench.client(node.proxy)
            update = bench.checked(client.update(timeout=APT_TIMEOUT), f"offload node {k + 1}")
            before = bench.mirror.deb_bytes_sent()
            dest = client.workdir / "downloads"
            download = bench.checked(
                client.download(names, dest, timeout=APT_TIMEOUT), f"offload node {k + 1}"
            )
            mirror_bytes = bench.mirror.deb_bytes_sent() - before
            bench.verify(packages, dest, f"round {round_} offload node {k + 1}")
            if not bench.keep:
                shutil.rmtree(dest)
            rows.append(
                (propagation, found, complete, update.seconds, download.seconds, mirror_bytes)
            )
        statuses = [status_bytes(n) for n in swarm.nodes]
    finally:
        bench.stop_swarm(swarm)
        bench.discard(swarm)
    nodes = tuple(
        OffloadNode(
            k + 1,
            *row,
            from_peers=st.get("bytes.from_peers", 0),
            from_mirror=st.get("bytes.from_mirror", 0),
            to_peers=st.get("bytes.to_peers", 0),
        )
        for k, (row, st) in enumerate(zip(rows, statuses, strict=True))
    )
    result = OffloadRound(round_, nodes, direct_seconds)
    ratio = result.mirror_deb_bytes / bench.data.offload_bytes
    prop = [n.propagation for n in nodes[1:]] or [0.0]
    print(
        f"  round {round_} offload: mirror .deb bytes / unique = {ratio:.3f}; node 1 "
        f"{nodes[0].download_seconds:.2f} s, nodes 2..{count} median "
        f"{statistics.median(n.download_seconds for n in nodes[1:] or nodes):.2f} s; direct "
        f"{direct_seconds:.2f} s; propagation median {statistics.median(prop):.2f} s, "
        f"max {max(prop):.2f} s",
        flush=True,
    )
    return result


# --- 2. flash crowd -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # seconds since the crowd started
    node: int  # 1-based
    from_mirror: int
    from_peers: int
    to_peers: int
    to_apt: int
    pieces_offered: int  # verified pieces its peer server offers (-1: 404, nothing)


@dataclass(frozen=True, slots=True)
class CrowdNode:
    index: int
    done: float  # seconds since the crowd started
    from_mirror: int
    from_peers: int
    to_peers: int
    verify_failures: int
    bans: int  # "banned" lines in its log
    liar: bool = False  # --liar: its apt is behind the tampering mirror
    apt_ok: bool = True
    inquiry: bool = False  # its log: a whole-file mismatch opened an inquiry (INQUIRY_LOG)
    bad_file: bool = False  # its log: an apt response was cut (BAD_FILE_LOG)


@dataclass(frozen=True, slots=True)
class CrowdRound:
    round: int
    single_seconds: float  # one dhtdeb node alone, same mirror cap
    started_at: float  # wall clock (time.time()) when the crowd started, to match daemon logs
    direct_seconds: float  # plain apt straight from the mirror, same cap
    nodes: tuple[CrowdNode, ...]
    mirror_bytes: int  # of the crowd file during the crowd
    mirror_requests: int
    mirror_first_pieces: tuple[int, ...]  # the piece each mirror request for the file starts at
    samples: tuple[Sample, ...]
    lookups: tuple[tuple[float, int], ...]  # (t, peers node 1's DHT returns for the file)
    liar_mirror_bytes: int | None = None  # --liar: the tampering mirror's, of the crowd file

    @property
    def honest(self) -> tuple[CrowdNode, ...]:
        return tuple(n for n in self.nodes if not n.liar)

    @property
    def all_done(self) -> float:
        """Until the last honest node was done (every node without --liar)."""
        return max(n.done for n in self.honest)


class Sampler:
    """Every SAMPLE_INTERVAL: each node's counters and what its peer server offers for `sha`;
    in a second thread, node 1's DHT lookup for `sha`."""

    def __init__(self, nodes: Sequence[DaemonProcess], sha: str, pieces: int, t0: float) -> None:
        self._nodes = nodes
        self._sha = sha
        self._pieces = pieces
        self._t0 = t0
        self._stop = threading.Event()
        self.samples: list[Sample] = []
        self.lookups: list[tuple[float, int]] = []
        self._threads = [
            threading.Thread(target=self._counters, daemon=True),
            threading.Thread(target=self._lookup, daemon=True),
        ]

    def __enter__(self) -> Sampler:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _offered(self, node: DaemonProcess) -> int:
        with contextlib.suppress(OSError):
            status, headers, _ = http_get(f"{peer_url(node)}/v1/pieces/{self._sha}", 5.0)
            if status != 200:
                return -1
            have = headers.get("X-Dhtdeb-Have", "")
            if have == "all":
                return self._pieces
            return sum(bin(b).count("1") for b in base64.b64decode(have))
        return -1

    def _counters(self) -> None:
        while not self._stop.is_set():
            for i, node in enumerate(self._nodes, start=1):
                t = time.monotonic() - self._t0
                st = status_bytes(node)
                self.samples.append(
                    Sample(
                        t,
                        i,
                        st.get("bytes.from_mirror", 0),
                        st.get("bytes.from_peers", 0),
                        st.get("bytes.to_peers", 0),
                        st.get("bytes.to_apt", 0),
                        self._offered(node),
                    )
                )
            self._stop.wait(SAMPLE_INTERVAL)

    def _lookup(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic() - self._t0
            with contextlib.suppress(OSError, ValueError):
                self.lookups.append((t, len(peers_of(self._nodes[0], self._sha))))
            self._stop.wait(SAMPLE_INTERVAL)


def tampered(data: bytes) -> bytes:
    """`data` with every LIAR_STRIDE-th byte inverted (from the first): the same length, and
    every 1 MiB piece wrong in 256 places."""
    out = bytearray(data)
    out[::LIAR_STRIDE] = bytes(b ^ 0xFF for b in out[::LIAR_STRIDE])
    return bytes(out)


def run_crowd(bench: Bench, round_: int, count: int, rate: int) -> CrowdRound:
    """With `bench.liar_mirror`, node `count` is the liar: its apt goes through that mirror."""
    package = bench.data.crowd
    liar = count if bench.liar_mirror is not None else None
    upload = ("--upload-rate", str(rate))

    # The reference: one node alone (its own DHT, nobody to find), then plain apt, same cap.
    alone = bench.start_swarm(1, upload)
    try:
        client = bench.client(alone.nodes[0].proxy)
        bench.checked(client.update(timeout=APT_TIMEOUT), "crowd reference update")
        bench.mirror.set_total_rate(rate)
        dest = client.workdir / "downloads"
        single_seconds = bench.checked(
            client.download([package.name], dest, timeout=APT_TIMEOUT), "crowd reference"
        ).seconds
        bench.verify([package], dest, f"round {round_} crowd reference")
    finally:
        bench.mirror.set_total_rate(None)
        bench.stop_swarm(alone)
        bench.discard(alone)
    direct = bench.client(None)
    bench.checked(direct.update(timeout=APT_TIMEOUT), "crowd direct update")
    bench.mirror.set_total_rate(rate)
    try:
        dest = direct.workdir / "downloads"
        direct_seconds = bench.checked(
            direct.download([package.name], dest, timeout=APT_TIMEOUT), "crowd direct"
        ).seconds
    finally:
        bench.mirror.set_total_rate(None)
    bench.verify([package], dest, f"round {round_} crowd direct")
    if not bench.keep:
        shutil.rmtree(dest)

    swarm = bench.start_swarm(count, upload)
    try:
        clients = [
            bench.client(node.proxy, bench.liar_mirror if k == liar else None)
            for k, node in enumerate(swarm.nodes, start=1)
        ]
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            for k, result in enumerate(
                pool.map(lambda c: c.update(timeout=APT_TIMEOUT), clients), start=1
            ):
                bench.checked(result, f"crowd node {k} update")
        for client in clients:
            (client.workdir / "downloads").mkdir()
        bench.mirror.reset_counters()
        bench.mirror.set_total_rate(rate)
        if bench.liar_mirror is not None:
            bench.liar_mirror.reset_counters()
            bench.liar_mirror.set_total_rate(rate)
        pieces = -(-package.size // PIECE)
        t0 = time.monotonic()
        started_at = time.time()
        done: dict[int, float] = {}
        results: dict[int, AptResult] = {}
        lock = threading.Lock()

        def wait(k: int, running: RunningApt) -> None:
            result = running.wait(APT_TIMEOUT)
            with lock:
                done[k] = time.monotonic() - t0
                results[k] = result

        with Sampler(swarm.nodes, package.sha256, pieces, t0) as sampler:
            running = [
                c.start(["download", package.name], cwd=c.workdir / "downloads") for c in clients
            ]
            waiters = [
                threading.Thread(target=wait, args=(k, r), daemon=True)
                for k, r in enumerate(running, start=1)
            ]
            for waiter in waiters:
                waiter.start()
            for waiter in waiters:
                waiter.join()
        bench.mirror.set_total_rate(None)
        liar_bytes = None
        if bench.liar_mirror is not None:
            bench.liar_mirror.set_total_rate(None)
            liar_bytes = bench.liar_mirror.bytes_sent(package.filename)
        for k in sorted(results):
            if k == liar:
                continue  # behind a lying mirror: its failure is expected, and printed
            if liar is None:
                bench.checked(results[k], f"crowd node {k} download")
            elif not results[k].ok:  # counted and reported, without ending the run
                output = results[k].output[-2000:]
                bench.failures.append(f"round {round_} crowd node {k} download: {output}")
        mirror_bytes = bench.mirror.bytes_sent(package.filename)
        mirror_records = bench.mirror.requests_for(package.filename)
        mirror_requests = len(mirror_records)
        mirror_first_pieces = tuple(first_piece(r.headers) for r in mirror_records)
        statuses = [status_bytes(n) for n in swarm.nodes]
        bans = [len(log_lines(n, "banned")) for n in swarm.nodes]
        inquiries = [bool(log_lines(n, INQUIRY_LOG)) for n in swarm.nodes]
        bad_files = [bool(log_lines(n, BAD_FILE_LOG)) for n in swarm.nodes]
        for k, client in enumerate(clients, start=1):
            if liar is None or results[k].ok:
                bench.verify([package], client.workdir / "downloads", f"round {round_} crowd {k}")
            if not bench.keep:
                shutil.rmtree(client.workdir / "downloads")
    finally:
        bench.mirror.set_total_rate(None)
        bench.stop_swarm(swarm)
        bench.discard(swarm)
    nodes = tuple(
        CrowdNode(
            k,
            done[k],
            st.get("bytes.from_mirror", 0),
            st.get("bytes.from_peers", 0),
            st.get("bytes.to_peers", 0),
            st.get("verify.peer", 0),
            bans[k - 1],
            k == liar,
            results[k].ok,
            inquiries[k - 1],
            bad_files[k - 1],
        )
        for k, st in enumerate(statuses, start=1)
    )
    result = CrowdRound(
        round_,
        single_seconds,
        started_at,
        direct_seconds,
        nodes,
        mirror_bytes,
        mirror_requests,
        mirror_first_pieces,
        tuple(sampler.samples),
        tuple(sampler.lookups),
        liar_bytes,
    )
    if liar is not None:
        print_liar_round(result, package.size)
        return result
    print(
        f"  round {round_} crowd: all {count} done in {result.all_done:.2f} s, one node alone "
        f"{single_seconds:.2f} s (direct apt {direct_seconds:.2f} s): ratio "
        f"{result.all_done / single_seconds:.2f}; mirror sent {mirror_bytes / package.size:.2f}x "
        f"the file in {mirror_requests} requests",
        flush=True,
    )
    return result


def yes_no(flags: Sequence[bool]) -> str:
    return " ".join("y" if f else "n" for f in flags)


def print_liar_round(crowd: CrowdRound, size: int) -> None:
    honest = crowd.honest
    failed = sum(not n.apt_ok for n in honest)
    print(
        f"  round {crowd.round} crowd with a liar: all {len(honest)} honest done in "
        f"{crowd.all_done:.2f} s, one node alone {crowd.single_seconds:.2f} s (direct apt "
        f"{crowd.direct_seconds:.2f} s): ratio {crowd.all_done / crowd.single_seconds:.2f}; "
        f"honest mirror sent {crowd.mirror_bytes / size:.2f}x the file in "
        f"{crowd.mirror_requests} requests, tampering mirror "
        f"{(crowd.liar_mirror_bytes or 0) / size:.2f}x"
    )
    for n in crowd.nodes:
        if n.liar:
            print(
                f"    liar node {n.index}: apt {'succeeded' if n.apt_ok else 'failed'} at "
                f"t={n.done:.1f} s, verify_failures.peer {n.verify_failures}, bans {n.bans}, "
                f"inquiry {yes_no([n.inquiry])}, bad file {yes_no([n.bad_file])}"
            )
    print(
        f"    honest apt failed: {failed}/{len(honest)}; per honest node "
        f"{' '.join(str(n.index) for n in honest)}: verify_failures.peer "
        f"{' '.join(str(n.verify_failures) for n in honest)}, inquiry "
        f"{yes_no([n.inquiry for n in honest])}, "
        f"bad file {yes_no([n.bad_file for n in honest])}, bans "
        f"{' '.join(str(n.bans) for n in honest)}",
        flush=True,
    )


# --- 3. single peer -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SingleRound:
    round: int
    via_proxy: float  # seconds, curl -x B
    reference: float  # seconds, curl from A's peer server
    # seconds, curl through bench/floor.py in front of A's peer server: dhtdeb's work (two
    # hashes, store through the page cache) and the least work (one hash, store with O_DIRECT)
    floor_two: float
    floor_least: float
    floor_direct: bool  # the least-work floor could use O_DIRECT here
    mirror_deb_bytes: int  # during B's fetch
    sha_ok: bool
    b_status: dict[str, int]


def curl(args: Sequence[str], body: BinaryIO | None = None) -> tuple[float, int, int]:
    """Run curl; (time_total, size_download, http_code). With `body`, curl writes the response
    body to that open file (pass `-o -`) and its -w report to stderr."""
    report = "%{time_total} %{size_download} %{http_code}"
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "--noproxy",
            "",
            "-w",
            report if body is None else "%{stderr}" + report,
            *args,
        ],
        stdout=subprocess.PIPE if body is None else body,
        stderr=subprocess.PIPE,
        text=True,
        timeout=CURL_TIMEOUT,
        check=False,
        env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
    )
    if result.returncode != 0:
        raise RuntimeError(f"curl {' '.join(args)} failed: {result.stderr.strip()}")
    seconds, size, code = (result.stdout if body is None else result.stderr).split()[-3:]
    return float(seconds), int(size), int(code)


class BodySink:
    """Where both timed curls of the single-peer benchmark put the body, so that they pay the
    same for it: one file of the package's size, zeroed beforehand and overwritten in place
    (curl writes to its stdout, this file opened without truncation). Into a fresh file, curl
    takes 0.3-0.8 s for 256 MiB straight from A on the 2-core bench VM (new page-cache pages),
    into /dev/null 0.1 s; with a fresh file on B's side only, the ratio measured the client's
    disk more than the proxy. tmpfs when there is one: no writeback meanwhile."""

    def __init__(self, directory: Path, size: int) -> None:
        shm = Path("/dev/shm")
        self.path = (shm if shm.is_dir() and os.access(shm, os.W_OK) else directory) / (
            f"dhtdeb-bench-single-{os.getpid()}.body"
        )
        self.size = size

    def curl(self, args: Sequence[str]) -> tuple[float, int, int, str]:
        """curl into the sink after zeroing it (no leftover of an earlier body can pass the
        check): (time_total, size_download, http_code, sha256 of the sink)."""
        zeros = bytes(4 * MiB)
        with self.path.open("r+b" if self.path.exists() else "w+b") as handle:
            for offset in range(0, self.size, len(zeros)):
                handle.write(zeros[: self.size - offset])
            handle.truncate(self.size)
            handle.flush()
            handle.seek(0)
            seconds, size, code = curl(["-o", "-", *args], body=handle)
        return seconds, size, code, sha256_of(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def run_single(bench: Bench, round_: int) -> SingleRound:
    package = bench.data.single
    url = f"{bench.mirror.url}/{package.filename}"
    swarm = bench.start_swarm(2)
    a, b = swarm.nodes
    sink = BodySink(bench.workdir, package.size)
    try:
        bench.checked(bench.client(a.proxy).update(timeout=APT_TIMEOUT), "single A update")
        _, size, code = curl(["-x", f"http://{a.proxy}", "-o", "/dev/null", url])
        if code != 200 or size != package.size:
            raise RuntimeError(f"A's fetch from the mirror: HTTP {code}, {size} bytes")
        bench.checked(bench.client(b.proxy).update(timeout=APT_TIMEOUT), "single B update")
        _, _, complete = bench.wait_found(b, [a], [package.sha256])
        if not complete:
            raise RuntimeError("B's DHT never found A for the big file")

        file_url = f"{peer_url(a)}/v1/files/{package.sha256}"
        floors = {
            "two": FloorProxy(
                file_url, package.sha256, package.size, bench.workdir, hashes=2, direct=False
            ),
            "least": FloorProxy(
                file_url, package.sha256, package.size, bench.workdir, hashes=1, direct=True
            ),
        }

        def timed(url: str, what: str, *proxy: str) -> float:
            seconds, size, code, sha = sink.curl([*proxy, url])
            if code != 200 or size != package.size or sha != package.sha256:
                raise RuntimeError(f"{what}: HTTP {code}, {size} bytes, sha256 {sha}")
            return seconds

        def via_b() -> float:
            nonlocal mirror_bytes, sha_ok
            bench.mirror.reset_counters()
            seconds, size, code, sha = sink.curl(["-x", f"http://{b.proxy}", url])
            mirror_bytes = bench.mirror.deb_bytes_sent()
            sha_ok = code == 200 and size == package.size and sha == package.sha256
            if not sha_ok:
                bench.failures.append(f"round {round_} single: B's file is wrong (HTTP {code})")
            return seconds

        # Each measurement writes or reads 256 MiB; the order decides who meets a warm page
        # cache, so it turns with the round.
        runs: list[tuple[str, Callable[[], float]]] = [
            ("b", via_b),
            ("ref", lambda: timed(file_url, "A's peer server")),
            ("two", lambda: timed(floors["two"].url, "floor proxy, dhtdeb's work")),
            ("least", lambda: timed(floors["least"].url, "floor proxy, least work")),
        ]
        turn = (round_ - 1) % len(runs)
        mirror_bytes, sha_ok = 0, False
        try:
            times = {name: run() for name, run in runs[turn:] + runs[:turn]}
        finally:
            errors = [e for f in floors.values() for e in f.errors]
            for floor in floors.values():
                floor.close()
        if errors:
            raise RuntimeError(f"floor proxy: {errors[0]}")
        seconds, ref_seconds = times["b"], times["ref"]
        b_status = status_bytes(b)
    finally:
        sink.remove()
        bench.stop_swarm(swarm)
        # Each round leaves two copies of the package in the nodes' stores; kept, they pile up
        # in the page cache, and a later round's B writes its copy into memory the VM has to
        # fault in from the host (~0.5 s more CPU on 2 cores): rounds would differ.
        bench.discard(swarm)
    result = SingleRound(
        round_,
        seconds,
        ref_seconds,
        times["two"],
        times["least"],
        floors["least"].direct,
        mirror_bytes,
        sha_ok,
        b_status,
    )
    print(
        f"  round {round_} single: via B's proxy {package.size / seconds / MB:.0f} MB/s "
        f"({seconds:.2f} s), A's peer server {package.size / ref_seconds / MB:.0f} MB/s "
        f"({ref_seconds:.2f} s): ratio {ref_seconds / seconds:.2f}; floor proxy "
        f"{result.floor_two:.2f} s (dhtdeb's work), {result.floor_least:.2f} s (least work); "
        f"mirror sent {proxy_bench.fmt_bytes(mirror_bytes)} of .deb; "
        f"sha256 {'ok' if sha_ok else 'WRONG'}",
        flush=True,
    )
    return result


# --- report ---------------------------------------------------------------------------------------


def verdict(value: float, target: float, below: bool = True) -> str:
    met = value <= target if below else value >= target
    sign = "<=" if below else ">="
    return f"(target {sign} {target:.2f}: {'met' if met else 'MISSED'})"


def report_offload(rounds: Sequence[OffloadRound], data: BenchArchive) -> None:
    unique = data.offload_bytes
    count = len(rounds[0].nodes)
    multi = sum(p.size > PIECE for p in data.offload)
    print(
        f"\n== offload: {count} nodes one after another, {len(data.offload)} packages "
        f"({proxy_bench.fmt_bytes(unique)}, {multi} larger than one 1 MiB piece)"
    )
    print("per node, medians over rounds:")
    print(
        f"{'node':>4} {'propagation s':>13} {'found':>6} {'update s':>9} {'download s':>11} "
        f"{'mirror .deb':>12} {'from peers':>11} {'uploaded':>10}"
    )
    for k in range(count):
        cells = [r.nodes[k] for r in rounds]
        found = min(c.holders_found for c in cells)
        print(
            f"{k + 1:>4} {statistics.median(c.propagation for c in cells):>13.2f} "
            f"{f'{found}/{k}':>6} {statistics.median(c.update_seconds for c in cells):>9.2f} "
            f"{statistics.median(c.download_seconds for c in cells):>11.2f} "
            f"{proxy_bench.fmt_bytes(statistics.median(c.mirror_deb_bytes for c in cells)):>12} "
            f"{proxy_bench.fmt_bytes(statistics.median(c.from_peers for c in cells)):>11} "
            f"{proxy_bench.fmt_bytes(statistics.median(c.to_peers for c in cells)):>10}"
        )
    ratios = [r.mirror_deb_bytes / unique for r in rounds]
    props = [n.propagation for r in rounds for n in r.nodes[1:]]
    later = [n.download_seconds for r in rounds for n in r.nodes[1:]]
    print(
        "announce propagation (node k's DHT returns nodes 1..k-1 for every file; timed from "
        f"the end of node k-1's download): median {statistics.median(props):.2f} s, "
        f"max {max(props):.2f} s"
    )
    incomplete = sum(not n.complete for r in rounds for n in r.nodes[1:])
    if incomplete:
        print(f"  {incomplete} nodes started before every earlier node was found (deadline)")
    print(
        "mirror .deb bytes / unique .deb bytes per round: " + ", ".join(f"{x:.3f}" for x in ratios)
    )
    median = statistics.median(ratios)
    print(f"  median {median:.3f} {verdict(median, TARGET_OFFLOAD)}")
    print(f"  mirror-only reference ({count} direct clients): {count:.2f}")
    second = statistics.median(r.nodes[1].mirror_deb_bytes for r in rounds) if count > 1 else 0
    rest = statistics.median(sum(n.mirror_deb_bytes for n in r.nodes[2:]) for r in rounds)
    first = statistics.median(r.nodes[0].mirror_deb_bytes for r in rounds)
    print(
        f"  of which node 1: {proxy_bench.fmt_bytes(first)}"
        f", node 2 (one peer): {proxy_bench.fmt_bytes(second)}, nodes 3..{count}: "
        f"{proxy_bench.fmt_bytes(rest)}"
    )
    print(
        f"per-node download time: node 1 (mirror) "
        f"{statistics.median(r.nodes[0].download_seconds for r in rounds):.2f} s, later nodes "
        f"(peers) median {statistics.median(later):.2f} s, direct apt from the mirror "
        f"{statistics.median(r.direct_seconds for r in rounds):.2f} s"
    )


def first_piece(headers: Sequence[tuple[str, str]]) -> int:
    """The piece a mirror request starts at: its Range's first byte (0 without a Range)."""
    for name, value in headers:
        if name.lower() == "range" and value.startswith("bytes="):
            return int(value[len("bytes=") :].split("-", 1)[0] or 0) // PIECE
    return 0


def first_time(
    samples: Sequence[Sample], node: int, test: Callable[[Sample], bool]
) -> float | None:
    for sample in samples:
        if sample.node == node and test(sample):
            return sample.t
    return None


def report_crowd(rounds: Sequence[CrowdRound], data: BenchArchive, rate: int) -> None:
    size = data.crowd.size
    count = len(rounds[0].honest)
    with_liar = rounds[0].liar_mirror_bytes is not None
    print(
        f"\n== flash crowd: {count} nodes, one {proxy_bench.fmt_bytes(size)} package at once; "
        f"mirror total and each node's upload capped to {rate / MB:.1f} MB/s"
    )
    if with_liar:
        print(
            f"  plus a liar: node {len(rounds[0].nodes)}, whose apt goes through a second mirror "
            f"(same cap) serving the package with every {LIAR_STRIDE}th byte inverted; the "
            "figures below are the honest nodes' and the honest mirror's"
        )
    for r in rounds:
        times = " ".join(f"{n.done:.1f}" for n in sorted(r.honest, key=lambda n: n.done))
        print(f"  round {r.round} completion times (s, sorted): {times}")
    all_done = statistics.median(r.all_done for r in rounds)
    single = statistics.median(r.single_seconds for r in rounds)
    direct = statistics.median(r.direct_seconds for r in rounds)
    ratio = statistics.median(r.all_done / r.single_seconds for r in rounds)
    print(f"time until all {count} have it: median {all_done:.2f} s")
    print(
        f"one dhtdeb node alone from the mirror: median {single:.2f} s (direct apt {direct:.2f} s)"
    )
    alone = statistics.median(r.single_seconds / r.direct_seconds for r in rounds)
    print(
        f"  a file no peer has, dhtdeb / direct apt (median of per-round ratios) {alone:.3f} "
        f"{verdict(alone, TARGET_NO_PEERS)}"
    )
    print(f"  ratio (median of per-round ratios) {ratio:.2f} {verdict(ratio, TARGET_CROWD)}")
    print(f"  mirror-only reference: ~{count}")
    mirror = statistics.median(r.mirror_bytes / size for r in rounds)
    print(f"mirror bytes / file size: median {mirror:.2f}")
    if with_liar:
        report_liar(rounds, size)

    last = rounds[-1]
    clock = time.strftime("%H:%M:%S", time.localtime(last.started_at))
    print(
        f"\nround {last.round} in detail (t = seconds since the {count} apt-get started, "
        f"at {clock}.{int(last.started_at % 1 * 1000):03d} in the daemon logs' clock):"
    )
    print(
        f"{'node':>4} {'done s':>7} {'from mirror':>12} {'from peers':>11} {'uploaded':>10} "
        f"{'1st peer byte':>13} {'offers pieces':>13} {'bans':>5} {'verify fail':>11}"
    )
    for n in sorted(last.nodes, key=lambda n: n.done):
        peer_t = first_time(last.samples, n.index, lambda s: s.from_peers > 0)
        offer_t = first_time(last.samples, n.index, lambda s: s.pieces_offered > 0)
        print(
            f"{f'{n.index}L' if n.liar else n.index:>4} {n.done:>7.2f} "
            f"{proxy_bench.fmt_bytes(n.from_mirror):>12} "
            f"{proxy_bench.fmt_bytes(n.from_peers):>11} {proxy_bench.fmt_bytes(n.to_peers):>10} "
            f"{'-' if peer_t is None else f'{peer_t:.1f}':>13} "
            f"{'-' if offer_t is None else f'{offer_t:.1f}':>13} {n.bans:>5} "
            f"{n.verify_failures:>11}"
        )
    print(
        "  (uploaded includes the bench's own /v1/pieces probes: ~2 KB each once a node holds "
        "the file)"
    )
    if with_liar:
        print("  (L: the liar; its `from mirror` came from the tampering mirror)")
    went_mirror = sum(n.from_mirror > PIECE for n in last.honest)
    got_peers = sum(n.from_peers > 0 for n in last.honest)
    print(
        f"  {went_mirror}/{count} nodes took more than one piece from the mirror, "
        f"{got_peers}/{count} got any byte from a peer; mirror requests for the file: "
        f"{last.mirror_requests}"
    )
    starts = collections.Counter(last.mirror_first_pieces)
    print(
        "  mirror requests starting at the same piece (piece: requests), the most first: "
        + ", ".join(f"{p}: {n}" for p, n in starts.most_common(8) if n > 1)
    )
    partial_offers = [s for s in last.samples if 0 < s.pieces_offered]
    first_offer = min((s.t for s in partial_offers), default=None)
    first_done = min(n.done for n in last.nodes)
    partial_before_done = sum(1 for s in partial_offers if s.t < first_done)
    print(
        f"  peer servers offering any piece of the file (/v1/pieces/<sha> 200): first at "
        f"{'never' if first_offer is None else f't={first_offer:.1f} s'}; samples offering "
        f"pieces before the first node finished (t={first_done:.1f} s): {partial_before_done}"
    )
    found = [(t, n) for t, n in last.lookups if n > 0]
    print(
        f"  node 1's DHT lookup for the file: {len(last.lookups)} lookups, first non-empty at "
        f"{'never' if not found else f't={found[0][0]:.1f} s ({found[0][1]} peers)'}"
    )
    steps = [i for i in range(0, len(last.lookups), max(1, len(last.lookups) // 12))]
    print(
        "  peers returned over time: "
        + ", ".join(f"t={last.lookups[i][0]:.0f}:{last.lookups[i][1]}" for i in steps)
    )
    print(
        "  all nodes together, MB received (mirror + peers) / MB sent to apt, by second: "
        + ", ".join(
            f"t={t}: {got / MB:.0f}/{sent / MB:.0f}" for t, got, sent in crowd_timeline(last)
        )
    )


def report_liar(rounds: Sequence[CrowdRound], size: int) -> None:
    honest = statistics.median(r.mirror_bytes / size for r in rounds)
    lying = statistics.median((r.liar_mirror_bytes or 0) / size for r in rounds)
    ratio = statistics.median(r.all_done / r.single_seconds for r in rounds)
    failed = [sum(not n.apt_ok for n in r.honest) for r in rounds]
    print("with the liar, per round and median:")
    print(
        "  honest mirror bytes / file size: "
        + ", ".join(f"{r.mirror_bytes / size:.2f}" for r in rounds)
        + f"; median {honest:.2f} {verdict(honest, TARGET_LIAR_MIRROR)} (no liar: ~1.15)"
    )
    print(
        "  tampering mirror bytes / file size (the liar's own traffic): "
        + ", ".join(f"{(r.liar_mirror_bytes or 0) / size:.2f}" for r in rounds)
        + f"; median {lying:.2f}"
    )
    print(
        "  all honest done / one node alone: "
        + ", ".join(f"{r.all_done / r.single_seconds:.2f}" for r in rounds)
        + f"; median {ratio:.2f}"
    )
    print(
        "  honest apt downloads failed: "
        + ", ".join(str(f) for f in failed)
        + f"; median {statistics.median(failed):g} (target 0)"
    )
    liars = [n for r in rounds for n in r.nodes if n.liar]
    print(
        "  liar's apt (expected to fail, behind a lying mirror): "
        + ", ".join(f"{'ok' if n.apt_ok else 'failed'} at t={n.done:.1f} s" for n in liars)
    )
    for label, of in (
        ("verify_failures.peer", lambda n: str(n.verify_failures)),
        (f"log: {INQUIRY_LOG!r}", lambda n: "y" if n.inquiry else "n"),
        (f"log: {BAD_FILE_LOG!r}", lambda n: "y" if n.bad_file else "n"),
        ("bans", lambda n: str(n.bans)),
    ):
        print(
            f"  honest nodes, {label}: "
            + "; ".join(f"round {r.round}: {' '.join(of(n) for n in r.honest)}" for r in rounds)
        )
    verify = statistics.median(sum(n.verify_failures for n in r.honest) for r in rounds)
    inquiry = statistics.median(sum(n.inquiry for n in r.honest) for r in rounds)
    bad = statistics.median(sum(n.bad_file for n in r.honest) for r in rounds)
    print(
        f"  medians over rounds: verify_failures.peer summed over honest nodes {verify:g}, "
        f"honest nodes whose inquiry ran {inquiry:g}, with a bad file from the swarm {bad:g}"
    )


def crowd_timeline(crowd: CrowdRound) -> list[tuple[int, int, int]]:
    """(second, bytes all nodes received, bytes all nodes sent to apt) at each whole second:
    each node's last sample up to then (a node's apt lagging its download shows here)."""
    end = int(crowd.all_done) + 1
    rows = []
    for second in range(end + 1):
        latest: dict[int, Sample] = {}
        for sample in crowd.samples:
            if sample.t <= second:
                latest[sample.node] = sample
        got = sum(s.from_mirror + s.from_peers for s in latest.values())
        rows.append((second, got, sum(s.to_apt for s in latest.values())))
    return rows


def report_single(rounds: Sequence[SingleRound], data: BenchArchive) -> None:
    size = data.single.size
    print(f"\n== single peer: one {proxy_bench.fmt_bytes(size)} package from one peer")
    via = statistics.median(r.via_proxy for r in rounds)
    ref = statistics.median(r.reference for r in rounds)
    for r in rounds:
        print(
            f"  round {r.round}: B's proxy {r.via_proxy:.2f} s, A's peer server "
            f"{r.reference:.2f} s, mirror .deb {proxy_bench.fmt_bytes(r.mirror_deb_bytes)}, "
            f"B from_peers {proxy_bench.fmt_bytes(r.b_status.get('bytes.from_peers', 0))}, "
            f"from_mirror {proxy_bench.fmt_bytes(r.b_status.get('bytes.from_mirror', 0))}"
        )
    print(
        f"curl -x B-proxy (B fetches from A):      {size / via / MB:7.1f} MB/s (median {via:.2f} s)"
    )
    print(
        f"curl A's peer server /v1/files/<sha256>: {size / ref / MB:7.1f} MB/s (median {ref:.2f} s)"
    )
    ratio = statistics.median(r.reference / r.via_proxy for r in rounds)
    print(
        f"  ratio (median of per-round ratios) {ratio:.2f}x {verdict(ratio, TARGET_SINGLE, False)}"
    )
    # The floor proxy (bench/floor.py) does only what no proxy may skip; its ratio bounds what
    # any implementation could reach on this machine, and dhtdeb's distance to it is its own.
    direct = "O_DIRECT" if all(r.floor_direct for r in rounds) else "page cache: no O_DIRECT here"
    for label, floor_of in (
        ("dhtdeb's work (2 hashes, page cache)", lambda r: r.floor_two),
        (f"least work (whole-file hash, {direct})", lambda r: r.floor_least),
    ):
        floor = statistics.median(floor_of(r) for r in rounds)
        best = statistics.median(r.reference / floor_of(r) for r in rounds)
        behind = statistics.median(r.via_proxy / floor_of(r) for r in rounds)
        print(
            f"floor proxy, {label}: median {floor:.2f} s; ratio to A {best:.2f}x, "
            f"dhtdeb takes {behind:.2f}x its time"
        )
    most = max(r.mirror_deb_bytes for r in rounds)
    print(
        f"mirror .deb bytes during B's fetch: at most {proxy_bench.fmt_bytes(most)} "
        f"({'<=' if most <= PIECE else 'MORE THAN'} one piece); B's sha256: "
        f"{'ok in every round' if all(r.sha_ok for r in rounds) else 'WRONG'}"
    )


# --- main -----------------------------------------------------------------------------------------


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the daemons


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, help=f"default {DEFAULT_ROUNDS} (1 quick)")
    parser.add_argument("--nodes", type=int, help=f"default {DEFAULT_NODES} (5 quick)")
    parser.add_argument(
        "--rate", type=int, default=DEFAULT_RATE, help="flash crowd cap, bytes/s (mirror, uploads)"
    )
    parser.add_argument(
        "--crowd-size-mib",
        type=int,
        help=f"the crowd package's payload (default {FULL.crowd_bytes // MiB}, "
        f"{QUICK.crowd_bytes // MiB} quick)",
    )
    parser.add_argument(
        "--liar",
        action="store_true",
        help="crowd: the last node's apt goes through a mirror that tampers with the package",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--quick", action="store_true", help="small files, 5 nodes, 1 round")
    parser.add_argument("--only", action="append", choices=BENCHMARKS, help="repeatable")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (daemon logs)")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="the daemons' (debug: where each mirror piece came from and why)",
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.crowd_size_mib:
        sizes = dataclasses.replace(sizes, crowd_bytes=args.crowd_size_mib * MiB)
    rounds = args.rounds or sizes.rounds
    count = args.nodes or sizes.nodes
    chosen = [b for b in BENCHMARKS if not args.only or b in args.only]
    if args.liar and count < 2:
        parser.error("--liar needs --nodes 2 or more (the last node is the liar)")
    signal.signal(signal.SIGTERM, _terminate)

    started = time.monotonic()
    data, directory, built = cached_archive(args.seed, sizes, args.quick)
    print(
        f"machine: nproc {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, "
        f"{platform.machine()}, Python {platform.python_version()}"
    )
    print(
        f"archive: seed {args.seed}; offload set {len(data.offload)} packages "
        f"({proxy_bench.fmt_bytes(data.offload_bytes)}, max "
        f"{proxy_bench.fmt_bytes(max(p.size for p in data.offload))}); crowd package "
        f"{data.crowd.size} B; single-peer package {data.single.size} B"
    )
    how = f"built in {time.monotonic() - started:.0f} s" if built else "cached"
    print(f"         {how}: {directory.relative_to(ROOT)}")
    source_before = proxy_bench.source_state(ROOT)
    print(
        f"daemons: `python -m dhtdeb serve` from {ROOT} ({source_before}), "
        f"DHT on, --no-lan, one bootstrap node per benchmark and round"
    )
    print(f"rounds: {rounds}, nodes: {count}, benchmarks: {', '.join(chosen)}\n", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="dhtdeb-bench-swarm-"))
    processes = Processes()
    mirror = Mirror(data.archive.root).start()
    liar_mirror = None
    if args.liar and CROWD in chosen:
        liar_mirror = Mirror(data.archive.root).start()
        original = (data.archive.root / data.crowd.filename).read_bytes()
        liar_mirror.override(data.crowd.filename, tampered(original))
        del original
        print(
            f"liar: crowd node {count} goes through {liar_mirror.url}, which serves "
            f"{data.crowd.filename} with every {LIAR_STRIDE}th byte inverted\n",
            flush=True,
        )
    bench = Bench(data, mirror, workdir, processes, args.keep, args.log_level, liar_mirror)
    offload: list[OffloadRound] = []
    crowd: list[CrowdRound] = []
    single: list[SingleRound] = []
    try:
        for round_ in range(1, rounds + 1):
            print(f"round {round_}", flush=True)
            if SINGLE in chosen:
                single.append(run_single(bench, round_))
            if OFFLOAD in chosen:
                offload.append(run_offload(bench, round_, count))
            if CROWD in chosen:
                crowd.append(run_crowd(bench, round_, count, args.rate))
    except Exception as exc:  # report what was measured before the failure
        print(f"aborted: {type(exc).__name__}: {exc}")
        bench.failures.append(f"aborted: {type(exc).__name__}")
    finally:
        processes.stop()
        mirror.stop()
        if liar_mirror is not None:
            liar_mirror.stop()
        if args.keep:
            print(f"work dir kept (daemon logs in */daemon.log): {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if offload:
        report_offload(offload, data)
    if crowd:
        report_crowd(crowd, data, args.rate)
    if single:
        report_single(single, data)
    print("\ncorrectness")
    if bench.failures:
        for failure in bench.failures:
            print(f"  FAILED: {failure}")
    else:
        print("  every file apt or curl received had the signed index's sha256")
    source_after = proxy_bench.source_state(ROOT)
    if source_after != source_before:
        print(f"\nNOTE: the daemon's source changed during the run: now {source_after}")
    print(
        f"\ntotal wall time {time.monotonic() - started:.0f} s, seed {args.seed}, "
        f"load average at the end {os.getloadavg()[0]:.2f}"
    )
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
