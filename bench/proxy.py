"""Benchmark: `apt-get download` of ~200 packages through dhtdeb vs straight to the mirror vs
apt-cacher-ng, cold and warm, all in one run.

Issue 2's targets: dhtdeb cold <= 1.15x direct, dhtdeb warm <= 1.0x apt-cacher-ng warm; with
`--profile small` (200 packages of 4-400 KiB) issue 12's: <= 1.10x and <= 0.8x.

One signed archive (seeded, log-normal .deb sizes plus a few of 10-30 MB; built with dpkg-deb and
the test harness's apt-ftparchive/gpg helpers, cached in bench/out/ by seed) is served by the
harness's loopback mirror, the same one for every contender. Per round and contender:
  direct         a fresh apt client, `apt-get update`, timed `apt-get download` of every package;
  dhtdeb         a fresh state dir and daemon (--no-dht); cold = a fresh apt client (update, timed
                 download), warm = a second fresh apt client against the now populated daemon;
  apt-cacher-ng  the same with a fresh apt-cacher-ng (own config and cache dirs, loopback,
                 foreground).
Both proxies are used as `Acquire::http::Proxy`. Only the `apt-get download` is timed. The order of
the contenders rotates from round to round. Every run checks the sha256 of every downloaded file and
counts the .deb bytes the mirror sent during the timed download (cold: the archive's size; warm: 0).
Not a test: targets are printed, not asserted; the exit status is 1 only when a correctness check
fails.

    .venv/bin/python bench/proxy.py [--rounds 5] [--packages 200] [--seed S] [--quick]
        [--only CONTENDER ...] [--keep] [--dhtdeb-tree DIR] [--compare NAME=DIR ...]

Loopback only: nothing here talks to the internet. bench/README.md has the details (apt-cacher-ng
quirks, comparing daemon versions, profiling).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT / "tests"))

from aiohttp import web  # noqa: E402
from support.apt import AptClient, AptResult, ProxyMode  # noqa: E402
from support.archive import (  # noqa: E402
    SOURCE_DATE_EPOCH,
    DebPackage,
    SignedArchive,
    SigningKey,
    create_key,
    reindex,
    sha256_file,
)
from support.daemon import DaemonProcess  # noqa: E402
from support.mirror import Mirror  # noqa: E402

DEFAULT_SEED = 20260601
DEFAULT_PACKAGES = 200
DEFAULT_ROUNDS = 5
QUICK_PACKAGES = 24
QUICK_ROUNDS = 1
# (dhtdeb cold / direct, dhtdeb warm / apt-cacher-ng warm) by profile: issue 2's, and issue 12's
# for the everyday batch of small packages.
TARGETS = {"full": (1.15, 1.0), "quick": (1.15, 1.0), "small": (1.10, 0.8)}
APT_TIMEOUT = 900.0
ACNG_START_TIMEOUT = 15.0
ACNG_STOP_TIMEOUT = 15.0
# Bumped whenever the archive recipe changes, so that a stale cached archive is never reused.
ARCHIVE_FORMAT = 3
SUITE, COMPONENT, ARCH = "bench", "main", "amd64"
KB, MB = 1000, 1000 * 1000
GZIP_BELOW = 1 * MB
PAYLOAD_SLICE = 64 * 1024 * 1024  # random payload generated in slices of this size

DIRECT, DHTDEB, ACNG = "direct", "dhtdeb", "apt-cacher-ng"
CONTENDERS = (DIRECT, DHTDEB, ACNG)
COLD, WARM = "cold", "warm"


# --- the archive ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PackageSpec:
    name: str
    version: str
    architecture: str
    payload_bytes: int


@dataclass(frozen=True, slots=True)
class SizeProfile:
    """Log-normal payload sizes clipped to [low, high], plus `big_count` of uniform big sizes."""

    median: int
    sigma: float
    low: int
    high: int
    big_count: int
    big_low: int
    big_high: int


# Shaped after a Debian pool: most .debs are tens to hundreds of KB, a long tail reaches MBs, and a
# few (toolchains, firmware, data) weigh tens of MB. 200 packages come to roughly 150-250 MB.
FULL_PROFILE = SizeProfile(120 * KB, 1.5, 2 * KB, 6 * MB, 5, 10 * MB, 30 * MB)
QUICK_PROFILE = SizeProfile(20 * KB, 1.2, 2 * KB, 1 * MB, 1, 3 * MB, 5 * MB)
# Issue 12's everyday batch: small packages only, 4-400 KiB around Debian's median of ~60 KiB.
SMALL_PROFILE = SizeProfile(60 * KB, 1.0, 4 * KB, 400 * KB, 0, 0, 0)
PROFILES = {"full": FULL_PROFILE, "small": SMALL_PROFILE, "quick": QUICK_PROFILE}


def package_specs(seed: int, count: int, profile: SizeProfile) -> list[PackageSpec]:
    rng = random.Random(seed)
    big = min(profile.big_count, count)
    sizes = [
        int(min(profile.high, max(profile.low, rng.lognormvariate(math.log(profile.median), s))))
        for s in [profile.sigma] * (count - big)
    ]
    sizes += [rng.randint(profile.big_low, profile.big_high) for _ in range(big)]
    rng.shuffle(sizes)
    specs = []
    for index, size in enumerate(sizes):
        # Some Architecture: all packages and some '+' and '~' in versions, as in a real pool.
        architecture = "all" if index % 7 == 3 else ARCH
        version = ("1.0-1", "2.4+dfsg-3", "0.9~rc2-1", "1:3.1-2")[index % 4]
        specs.append(PackageSpec(f"bench-{index:03d}", version, architecture, size))
    return specs


def build_deb(spec: PackageSpec, seed: int, work: Path, pool: Path) -> None:
    """One .deb with a seeded random payload. An uncompressed data.tar is padded to 10 KiB
    records, so small packages are gzipped (-z1: random bytes do not shrink, the padding does);
    big ones stay -Znone to keep the build fast."""
    tree = work / spec.name
    debian = tree / "DEBIAN"
    debian.mkdir(parents=True)
    doc = tree / "usr" / "share" / "doc" / spec.name
    doc.mkdir(parents=True)
    # A string seed is hashed deterministically, so each package is reproducible on its own.
    # Slices: `Random.randbytes` cannot make 256 MiB at once (its bit count overflows a C int);
    # a payload of one slice is the same bytes as a single call.
    rng = random.Random(f"{seed}:{spec.name}")
    with (doc / "payload.bin").open("wb") as payload:
        for start in range(0, spec.payload_bytes, PAYLOAD_SLICE):
            payload.write(rng.randbytes(min(PAYLOAD_SLICE, spec.payload_bytes - start)))
    (debian / "control").write_text(
        f"Package: {spec.name}\n"
        f"Version: {spec.version}\n"
        f"Architecture: {spec.architecture}\n"
        "Maintainer: dhtdeb bench <bench@dhtdeb.invalid>\n"
        f"Installed-Size: {spec.payload_bytes // 1024 + 1}\n"
        "Section: misc\n"
        "Priority: optional\n"
        f"Description: dhtdeb benchmark package {spec.name}\n"
        f" Payload of {spec.payload_bytes} seeded random bytes.\n"
    )
    for path in [tree, *tree.rglob("*")]:
        os.utime(path, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH), follow_symlinks=False)
    upstream = spec.version.split(":", 1)[-1]
    directory = pool / spec.name[:4] / spec.name
    directory.mkdir(parents=True, exist_ok=True)
    deb = directory / f"{spec.name}_{upstream}_{spec.architecture}.deb"
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}
    compression = ["-Zgzip", "-z1"] if spec.payload_bytes < GZIP_BELOW else ["-Znone"]
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", *compression, "--build", str(tree), str(deb)],
        env=env,
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    os.utime(deb, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))
    shutil.rmtree(tree)


def _key_to_json(key: SigningKey) -> dict[str, str]:
    return {
        "name": key.name,
        "gnupghome": str(key.gnupghome),
        "fingerprint": key.fingerprint,
        "keyring": str(key.keyring),
    }


def _key_from_json(data: dict[str, str], base: Path) -> SigningKey:
    # Paths are stored relative to the cache directory so that it may be moved.
    return SigningKey(
        name=data["name"],
        gnupghome=base / data["gnupghome"],
        fingerprint=data["fingerprint"],
        keyring=base / data["keyring"],
    )


def build_archive(directory: Path, seed: int, count: int, profile: SizeProfile) -> None:
    """Build into `directory` (keys/, archive/, manifest.json written last)."""
    key = create_key(directory / "keys", "bench")
    root = directory / "archive"
    pool = root / "pool" / COMPONENT
    work = directory / "build"
    specs = package_specs(seed, count, profile)
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool_exec:
        for future in [pool_exec.submit(build_deb, s, seed, work, pool) for s in specs]:
            future.result()
    shutil.rmtree(work)
    biggest = max(specs, key=lambda s: s.payload_bytes).name
    archive = SignedArchive(
        root=root,
        suite=SUITE,
        component=COMPONENT,
        arch=ARCH,
        key=key,
        unknown_key=key,  # no attack runs here
        packages=(),
        big_package=biggest,
        seed=seed,
    )
    write_manifest(directory, reindex(archive), key, ARCHIVE_FORMAT)


def write_manifest(
    directory: Path, archive: SignedArchive, key: SigningKey, archive_format: int
) -> None:
    """Record a built archive (last, so a half-built directory is never taken for a cache)."""
    key_json = _key_to_json(key)
    for field in ("gnupghome", "keyring"):
        key_json[field] = str(Path(key_json[field]).relative_to(directory))
    manifest = {
        "format": archive_format,
        "seed": archive.seed,
        "key": key_json,
        "big_package": archive.big_package,
        "packages": [dataclasses.asdict(p) for p in archive.packages],
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))


def load_archive(directory: Path) -> SignedArchive:
    manifest = json.loads((directory / "manifest.json").read_text())
    key = _key_from_json(manifest["key"], directory)
    return SignedArchive(
        root=directory / "archive",
        suite=SUITE,
        component=COMPONENT,
        arch=ARCH,
        key=key,
        unknown_key=key,
        packages=tuple(DebPackage(**p) for p in manifest["packages"]),
        big_package=manifest["big_package"],
        seed=int(manifest["seed"]),
    )


def cached_archive(seed: int, count: int, profile_name: str) -> tuple[SignedArchive, Path, bool]:
    """The archive for (seed, count, profile) from bench/out/, built first when missing.
    Returns (archive, its directory, whether it was built now)."""
    profile = PROFILES[profile_name]
    suffix = "" if profile_name == "full" else f"-{profile_name}"
    name = f"proxy-archive-v{ARCHIVE_FORMAT}-seed{seed}-n{count}{suffix}"
    directory = OUT / name
    if (directory / "manifest.json").is_file():
        return load_archive(directory), directory, False
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(directory, ignore_errors=True)
    partial = OUT / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    build_archive(partial, seed, count, profile)
    partial.rename(directory)
    return load_archive(directory), directory, True


# --- apt-cacher-ng --------------------------------------------------------------------------------


# apt-cacher-ng 3.7.4 keeps its port in a signed 16-bit integer: 45123 becomes the service name
# "-2041" (sic, also truncated) and getaddrinfo fails with "Error resolving address for binding".
# Linux hands out ephemeral ports from 32768 up, so binding port 0 and passing it on never works.
ACNG_PORTS = range(20_000, 32_768)


def free_port() -> int:
    """A port below 32768 that was free a moment ago (apt-cacher-ng cannot bind port 0 and
    report it)."""
    chooser = random.SystemRandom()
    for _attempt in range(100):
        port = chooser.choice(ACNG_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {ACNG_PORTS}")


class AptCacherNg:
    """apt-cacher-ng as our own foreground process: config, cache and logs under `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def proxy(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def cache_dir(self) -> Path:
        return self.directory / "cache"

    @property
    def log_dir(self) -> Path:
        return self.directory / "log"

    def start(self) -> AptCacherNg:
        conf = self.directory / "conf"
        for d in (conf, self.cache_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        # The stock acng.conf without its Remap- rules: requests go to whatever host apt names.
        # AllowUserPorts: 0 lets it reach the mirror's ephemeral port (default: port 80 only).
        (conf / "acng.conf").write_text(
            f"CacheDir: {self.cache_dir}\n"
            f"LogDir: {self.log_dir}\n"
            "SupportDir: /usr/lib/apt-cacher-ng\n"
            f"SocketPath: {self.directory / 'socket'}\n"
            "ForeGround: 1\n"
            "AllowUserPorts: 0\n"
            "ReportPage: acng-report.html\n"
            "ExThreshold: 4\n"
        )
        last_error = ""
        for _attempt in range(5):  # the port may be taken between free_port() and the bind
            self.port = free_port()
            log = (self.log_dir / "stdout.log").open("ab")
            env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
            self._process = subprocess.Popen(
                [
                    "apt-cacher-ng",
                    "-c",
                    str(conf),
                    f"Port={self.port}",
                    "BindAddress=127.0.0.1",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
            log.close()
            if self._wait_listening():
                return self
            self.stop()
            last_error = (self.log_dir / "stdout.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"apt-cacher-ng did not start:\n{last_error}")

    def _wait_listening(self) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + ACNG_START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                return True
            time.sleep(0.02)  # polling a condition with a deadline
        return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(ACNG_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(ACNG_STOP_TIMEOUT)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def cached_debs(self) -> int:
        return sum(1 for _ in self.cache_dir.rglob("*.deb"))


class LowPortMirror(Mirror):
    """The harness mirror on a port below 32768: apt-cacher-ng 3.7.4 has the same 16-bit bug for
    the port of the upstream server it connects to (a mirror on an ephemeral port gets "503
    Connection refused"). The harness Mirror always binds port 0, so `_open` is repeated here
    with a port; a `port=` argument on Mirror would make this class unnecessary."""

    def __init__(self, root: Path, port: int) -> None:
        super().__init__(root)
        self._wanted_port = port

    async def _open(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self._wanted_port).start()
        self._port = self._wanted_port


def start_mirror(root: Path) -> Mirror:
    for _attempt in range(5):  # the port may be taken between free_port() and the bind
        with contextlib.suppress(RuntimeError):
            return LowPortMirror(root, free_port()).start()
    raise RuntimeError("could not start the mirror on a port below 32768")


def source_state(tree: Path) -> str:
    """The git commit of the daemon's source tree and whether it has local changes."""
    result = subprocess.run(
        ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=normal", "dhtdeb"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return "not a git work tree"
    head = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    changed = len(result.stdout.splitlines())
    return f"commit {head}" + (f" + {changed} changed/new paths under dhtdeb/" if changed else "")


def acng_version() -> str:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "apt-cacher-ng"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or "?"


# --- one run --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    round: int
    contender: str
    phase: str
    seconds: float
    # Body bytes the mirror sent during the timed `apt-get download`.
    mirror_deb_bytes: int
    mirror_other_bytes: int
    files_ok: int
    files_bad: tuple[str, ...]
    cpu: CpuSeconds
    note: str = ""


@dataclass(frozen=True, slots=True)
class CpuSeconds:
    """user + system CPU seconds spent during the timed download, by process."""

    apt: float  # apt-get and its http method (waited-for children of this process)
    mirror: float  # this process: the mirror's thread (the main thread only waits for apt)
    proxy: float  # the dhtdeb daemon or apt-cacher-ng (0 for direct)


def process_cpu_seconds(pid: int | None) -> float:
    """utime + stime of a running process (all its threads) from /proc/PID/stat."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime


@dataclass
class Bench:
    archive: SignedArchive
    mirror: Mirror
    workdir: Path
    keep: bool
    # Contender name -> the source tree `python -m dhtdeb` imports from (None: the installed,
    # editable package). "dhtdeb" is the one measured against the targets; others come from
    # --compare.
    dhtdeb_trees: dict[str, Path | None] = dataclasses.field(default_factory=dict)
    runs: list[Run] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)
    daemon_status: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    _clients: int = 0

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.archive.packages]

    @property
    def unique_bytes(self) -> int:
        return sum(p.size for p in self.archive.packages)

    def client(self, mode: ProxyMode, proxy: str | None) -> AptClient:
        self._clients += 1
        workdir = self.workdir / f"apt-{self._clients}"
        workdir.mkdir(parents=True)
        return AptClient(
            workdir,
            mirror_url=self.mirror.url,
            suite=self.archive.suite,
            component=self.archive.component,
            keyring=self.archive.keyring,
            arch=self.archive.arch,
            mode=mode,
            proxy=proxy,
        )

    def _checked(self, result: AptResult, what: str) -> AptResult:
        if not result.ok:
            self.failures.append(f"{what}: {result.output[-3000:]}")
            raise RuntimeError(f"{what} failed:\n{result.output[-3000:]}")
        return result

    def timed_download(
        self,
        round_: int,
        contender: str,
        phase: str,
        client: AptClient,
        proxy_pid: int | None,
        note: str = "",
    ) -> Run:
        self._checked(client.update(timeout=APT_TIMEOUT), f"{contender} {phase} apt-get update")
        dest = client.workdir / "downloads"
        self.mirror.reset_counters()
        self_before, children_before = own_cpu_seconds()
        proxy_before = process_cpu_seconds(proxy_pid)
        result = self._checked(
            client.download(self.names, dest, timeout=APT_TIMEOUT),
            f"{contender} {phase} apt-get download",
        )
        self_after, children_after = own_cpu_seconds()
        cpu = CpuSeconds(
            apt=children_after - children_before,
            mirror=self_after - self_before,
            proxy=process_cpu_seconds(proxy_pid) - proxy_before,
        )
        deb_bytes = self.mirror.deb_bytes_sent()
        other_bytes = self.mirror.bytes_sent() - deb_bytes
        cut = [r for r in self.mirror.responses if r.path.endswith(".deb") and not r.completed]
        if cut:
            wasted = sum(r.body_bytes for r in cut)
            note = ", ".join(
                filter(
                    None,
                    [note, f"{len(cut)} .deb responses cut by the client ({fmt_bytes(wasted)})"],
                )
            )
        ok, bad = verify_downloads(self.archive.packages, dest)
        if not self.keep:
            shutil.rmtree(dest)
        run = Run(
            round_, contender, phase, result.seconds, deb_bytes, other_bytes, ok, bad, cpu, note
        )
        self.runs.append(run)
        self.check_run(run)
        print(
            f"  round {round_} {contender:<13} {phase}: {run.seconds:7.2f} s, mirror sent "
            f"{fmt_bytes(deb_bytes)} of .deb, {ok}/{len(self.archive.packages)} files ok, "
            f"CPU s apt {cpu.apt:.2f} mirror {cpu.mirror:.2f} proxy {cpu.proxy:.2f}"
            + (f", {note}" if note else ""),
            flush=True,
        )
        return run

    def check_run(self, run: Run) -> None:
        label = f"round {run.round} {run.contender} {run.phase}"
        if run.files_bad:
            self.failures.append(f"{label}: bad or missing files: {', '.join(run.files_bad)}")
        if run.phase == COLD and run.mirror_deb_bytes < self.unique_bytes:
            self.failures.append(
                f"{label}: mirror sent {run.mirror_deb_bytes} .deb bytes, fewer than the "
                f"{self.unique_bytes} bytes downloaded: something else served them"
            )
        if run.phase == WARM and run.mirror_deb_bytes != 0:
            self.failures.append(
                f"{label}: mirror sent {run.mirror_deb_bytes} .deb bytes on a warm run"
            )

    # --- contenders -------------------------------------------------------------------------------

    def run_direct(self, round_: int) -> None:
        self.timed_download(round_, DIRECT, COLD, self.client(ProxyMode.DIRECT, None), None)

    def run_dhtdeb(self, round_: int, name: str) -> None:
        state = self.workdir / f"{name}-{round_}"
        command: list[str] | None = None
        env: dict[str, str] = {}
        tree = self.dhtdeb_trees[name]
        if tree is not None:
            # -P: no current directory on sys.path, so PYTHONPATH wins over the editable install
            # (whose finder sits at the end of sys.meta_path).
            command = [sys.executable, "-P", "-m", "dhtdeb"]
            env["PYTHONPATH"] = str(tree)
        daemon = DaemonProcess(state, [self.archive.keyring], command=command, env=env).start()
        try:
            for phase in (COLD, WARM):
                before = daemon.status()
                client = self.client(ProxyMode.HTTP_PROXY, daemon.proxy)
                self.timed_download(round_, name, phase, client, daemon.pid)
                after = daemon.status()
                self.daemon_status.append(
                    {
                        "round": round_,
                        "name": name,
                        "phase": phase,
                        "before": before,
                        "after": after,
                    }
                )
        finally:
            daemon.stop()
            if not self.keep:
                shutil.rmtree(state, ignore_errors=True)

    def run_acng(self, round_: int) -> None:
        acng = AptCacherNg(self.workdir / f"acng-{round_}").start()
        try:
            for phase in (COLD, WARM):
                client = self.client(ProxyMode.HTTP_PROXY, acng.proxy)
                note = ""
                if phase == WARM:
                    note = f"{acng.cached_debs()} .debs in its cache before"
                self.timed_download(round_, ACNG, phase, client, acng.pid, note)
        finally:
            acng.stop()
            if not self.keep:
                shutil.rmtree(acng.directory, ignore_errors=True)

    def run_round(self, round_: int, order: Sequence[str]) -> None:
        for contender in order:
            if contender == DIRECT:
                self.run_direct(round_)
            elif contender == ACNG:
                self.run_acng(round_)
            else:
                self.run_dhtdeb(round_, contender)
        if not self.keep:
            for path in self.workdir.glob("apt-*"):
                shutil.rmtree(path, ignore_errors=True)


def verify_downloads(packages: Sequence[DebPackage], dest: Path) -> tuple[int, tuple[str, ...]]:
    """(files whose size and sha256 match, names of the others and of unexpected files)."""
    expected = {p.download_name: p for p in packages}
    bad: list[str] = []
    ok = 0
    for name, package in expected.items():
        path = dest / name
        if (
            path.is_file()
            and path.stat().st_size == package.size
            and sha256_file(path) == package.sha256
        ):
            ok += 1
        else:
            bad.append(name)
    bad += sorted(p.name for p in dest.iterdir() if p.name not in expected)
    return ok, tuple(bad)


# --- report ---------------------------------------------------------------------------------------


def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def round_orders(rounds: int, contenders: Sequence[str]) -> Iterator[list[str]]:
    """Rotate the order each round, and reverse it every other cycle, so each contender runs in
    each position (first after a cold page cache, last on a busy machine) about equally often."""
    n = len(contenders)
    for r in range(rounds):
        shift = r % n
        order = list(contenders[shift:]) + list(contenders[:shift])
        if (r // n) % 2 == 1:
            order.reverse()
        yield order


def median_of(runs: Sequence[Run], contender: str, phase: str) -> float | None:
    seconds = [r.seconds for r in runs if r.contender == contender and r.phase == phase]
    return statistics.median(seconds) if seconds else None


def print_report(
    bench: Bench, rounds: int, contenders: Sequence[str], targets: tuple[float, float]
) -> None:
    target_cold, target_warm = targets
    runs = bench.runs
    n = len(bench.archive.packages)
    unique = bench.unique_bytes
    print(f"\n`apt-get download` of {n} packages ({fmt_bytes(unique)}), seconds per round")
    width = max(14, *(len(c) + 2 for c in contenders))
    header = f"{'contender':<{width}}{'phase':<6}" + "".join(
        f"{'r' + str(r):>8}" for r in range(1, 1 + rounds)
    )
    header += f"{'median':>9}{'MB/s':>8}"
    print(header)
    for contender in contenders:
        for phase in (COLD, WARM) if contender != DIRECT else (COLD,):
            by_round = {r.round: r for r in runs if r.contender == contender and r.phase == phase}
            if not by_round:
                continue
            cells = "".join(
                f"{by_round[r].seconds:>8.2f}" if r in by_round else f"{'-':>8}"
                for r in range(1, 1 + rounds)
            )
            median = median_of(runs, contender, phase)
            assert median is not None
            mb_s = unique / median / MB
            print(f"{contender:<{width}}{phase:<6}{cells}{median:>9.2f}{mb_s:>8.1f}")

    print("\nmedian CPU seconds (user + system) during the timed download, and their sum / wall")
    print(f"{'contender':<{width}}{'phase':<6}{'apt':>8}{'mirror':>8}{'proxy':>8}{'sum/wall':>10}")
    for contender in contenders:
        for phase in (COLD, WARM) if contender != DIRECT else (COLD,):
            selected = [r for r in runs if r.contender == contender and r.phase == phase]
            if not selected:
                continue
            apt = statistics.median(r.cpu.apt for r in selected)
            mirror_cpu = statistics.median(r.cpu.mirror for r in selected)
            proxy = statistics.median(r.cpu.proxy for r in selected)
            busy = statistics.median(
                (r.cpu.apt + r.cpu.mirror + r.cpu.proxy) / r.seconds for r in selected
            )
            print(
                f"{contender:<{width}}{phase:<6}{apt:>8.2f}{mirror_cpu:>8.2f}{proxy:>8.2f}"
                f"{busy:>10.2f}"
            )

    print("\nmirror body bytes during the timed download (.deb / other), per round")
    for contender in contenders:
        for phase in (COLD, WARM) if contender != DIRECT else (COLD,):
            selected = [r for r in runs if r.contender == contender and r.phase == phase]
            if not selected:
                continue
            cells = ", ".join(
                f"{fmt_bytes(r.mirror_deb_bytes)} / {fmt_bytes(r.mirror_other_bytes)}"
                for r in selected
            )
            print(f"  {contender:<{width}}{phase:<6}{cells}")
    print(f"  (unique .deb bytes in the archive: {fmt_bytes(unique)} = {unique} B)")

    if bench.daemon_status:
        print("\ndhtdeb /status.json deltas during each client (update + download), last round")
        last = max(s["round"] for s in bench.daemon_status)
        for entry in (s for s in bench.daemon_status if s["round"] == last):
            label = f"{entry['name']} {entry['phase']}"
            before, after = entry["before"], entry["after"]
            deltas = {
                f"{group}.{key}": after[group][key] - before[group].get(key, 0)
                for group in ("requests", "bytes")
                for key in after.get(group, {})
                if isinstance(after[group][key], int)
                and after[group][key] - before[group].get(key, 0)
            }
            text = ", ".join(f"{k}={v}" for k, v in deltas.items())
            print(f"  {label}: {text}")

    print("\nratios of medians")
    direct = median_of(runs, DIRECT, COLD)
    d_cold = median_of(runs, DHTDEB, COLD)
    d_warm = median_of(runs, DHTDEB, WARM)
    a_cold = median_of(runs, ACNG, COLD)
    a_warm = median_of(runs, ACNG, WARM)

    label_width = max(36, *(len(c) + 18 for c in bench.dhtdeb_trees))

    def ratio(label: str, num: float | None, den: float | None, target: float | None) -> None:
        if num is None or den is None:
            return
        value = num / den
        verdict = ""
        if target is not None:
            verdict = f"  (target <= {target:.2f}x: {'met' if value <= target else 'MISSED'})"
        print(f"  {label:<{label_width}}{value:6.2f}x{verdict}")

    ratio("dhtdeb cold / direct", d_cold, direct, target_cold)
    ratio("dhtdeb warm / apt-cacher-ng warm", d_warm, a_warm, target_warm)
    ratio("apt-cacher-ng cold / direct", a_cold, direct, None)
    ratio("dhtdeb warm / direct", d_warm, direct, None)
    ratio("apt-cacher-ng warm / direct", a_warm, direct, None)
    for name in bench.dhtdeb_trees:
        if name != DHTDEB:
            ratio(f"{name} cold / direct", median_of(runs, name, COLD), direct, target_cold)
            ratio(f"{name} warm / acng warm", median_of(runs, name, WARM), a_warm, target_warm)

    print("\ncorrectness")
    checked = sum(r.files_ok for r in runs)
    print(f"  {len(runs)} timed downloads, {checked} files with matching size and sha256")
    if bench.failures:
        print(f"  {len(bench.failures)} FAILED checks:")
        for failure in bench.failures:
            print(f"    - {failure}")
    else:
        print(
            "  all files verified; cold runs: mirror sent >= the archive's .deb bytes; "
            "warm runs: mirror sent 0 .deb bytes"
        )


# --- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, help=f"default {DEFAULT_ROUNDS} ({QUICK_ROUNDS} quick)"
    )
    parser.add_argument(
        "--packages", type=int, help=f"default {DEFAULT_PACKAGES} ({QUICK_PACKAGES} quick)"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--quick", action="store_true", help="a small archive for a smoke run")
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        help="package sizes: full (default; 2 KB-6 MB plus 5 of 10-30 MB), small (4-400 KiB "
        "only, issue 12's everyday batch), quick (as --quick)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=CONTENDERS,
        help="run only this contender (repeatable; for profiling)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work dir (daemon logs, acng cache)"
    )
    parser.add_argument(
        "--dhtdeb-tree",
        type=Path,
        help="run the daemon from this source tree (e.g. `git archive HEAD | tar -x -C DIR`) "
        "instead of the installed package",
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also run the daemon from source tree DIR as contender dhtdeb[NAME], interleaved "
        "with the others (repeatable; e.g. to measure a change on a busy machine)",
    )
    args = parser.parse_args()
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)
    count = args.packages or (QUICK_PACKAGES if args.quick else DEFAULT_PACKAGES)
    contenders = [c for c in CONTENDERS if not args.only or c in args.only]
    trees: dict[str, Path | None] = {DHTDEB: args.dhtdeb_tree}
    for spec in args.compare:
        name, sep, directory_arg = spec.partition("=")
        if not sep or not name or not Path(directory_arg, "dhtdeb").is_dir():
            parser.error(f"--compare {spec!r}: expected NAME=DIR with DIR/dhtdeb/")
        trees[f"dhtdeb[{name}]"] = Path(directory_arg).resolve()
        contenders.append(f"dhtdeb[{name}]")
    if ACNG in contenders and shutil.which("apt-cacher-ng") is None:
        print("apt-cacher-ng is not installed: `apt-get install apt-cacher-ng` (as root)")
        return 2

    # apt-cacher-ng sometimes closes an upstream connection with pipelined requests in flight;
    # aiohttp logs a traceback for each. The cut responses are counted per run instead.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    started = time.monotonic()
    profile_name = args.profile or ("quick" if args.quick else "full")
    archive, directory, built = cached_archive(args.seed, count, profile_name)
    sizes = sorted(p.size for p in archive.packages)
    load = os.getloadavg()[0]
    print(
        f"machine: nproc {os.cpu_count()}, load average {load:.2f}, {platform.machine()}, "
        f"Python {platform.python_version()}, apt-cacher-ng {acng_version()}"
    )
    print(
        f"archive: seed {args.seed}, {len(sizes)} packages, {fmt_bytes(sum(sizes))} of .deb "
        f"(min {fmt_bytes(sizes[0])}, median {fmt_bytes(statistics.median(sizes))}, "
        f"max {fmt_bytes(sizes[-1])}; {sum(s >= 10 * MB for s in sizes)} of >= 10 MB)"
    )
    how = f"built in {time.monotonic() - started:.0f} s" if built else "cached"
    print(f"         {how}: {directory.relative_to(ROOT)}")
    for name, tree in trees.items():
        if name not in contenders:
            continue
        tree = tree.resolve() if tree else ROOT
        print(f"{name}: `python -m dhtdeb serve --no-dht` from {tree} ({source_state(tree)})")
    print(f"rounds: {rounds}, contenders: {', '.join(contenders)}; only `apt-get download` timed")

    workdir = Path(tempfile.mkdtemp(prefix="dhtdeb-bench-proxy-"))
    mirror = start_mirror(archive.root)
    print(
        f"mirror: {mirror.url} (tests/support/mirror.py, aiohttp in a thread of this "
        "process; a port below 32768 for apt-cacher-ng)\n"
    )
    bench = Bench(archive, mirror, workdir, args.keep, trees)
    try:
        for round_, order in enumerate(round_orders(rounds, contenders), start=1):
            print(f"round {round_}: {' -> '.join(order)}", flush=True)
            bench.run_round(round_, order)
    except Exception as exc:  # report what was measured before the failure
        print(f"aborted: {type(exc).__name__}: {exc}")
        last_line = (str(exc).strip().splitlines() or [""])[-1]
        bench.failures.append(f"aborted: {type(exc).__name__} (see above): {last_line}")
    finally:
        mirror.stop()
        if args.keep:
            print(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(bench, rounds, contenders, TARGETS[profile_name])
    print(
        f"\ntotal wall time {time.monotonic() - started:.0f} s, "
        f"load average at the end {os.getloadavg()[0]:.2f}"
    )
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
