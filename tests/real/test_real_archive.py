"""`make check-real`: dhtdeb does its job on the real Debian archive.

Two fleet hosts (tests/fleet/) with a NAT uplink to the internet, each with `dhtdeb serve` on the
default addresses and its DEFAULT keyrings (no test key); B joins the DHT through A. Against the
Debian suites of this machine's own apt sources (tests/real/sources.py; never a name written
here), through each daemon in turn:

1. `apt-get update --error-on=any`: every InRelease verified by the daemon (its log names the
   signing keys, no signature failure in /status.json, every response `X-Dhtdeb-Verified: yes`).
2. `apt-get download` of 50 packages picked from the Packages index by a fixed rule
   (tests/real/packages.py), SHA256 checked against the index: B gets >= 95 % of the .deb bytes
   from A.
3. `debootstrap --download-only --variant=minbase` with http_proxy set to the daemon: B gets a
   clear majority of the .deb bytes from A.

Marked `real`: the normal suite never runs it. It needs root (namespaces) and the mirror; without
either it fails with a message saying which, it never skips. A report (suites and their keys,
packages and bytes, B's share from peers, durations) is printed at the end of the run.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import pytest
from fleet import ArchiveSpec, Fleet, FleetHost, build_archive
from fleet.netns import FleetError, root_problem
from support.apt import AptClient, AptResult, ProxyMode

from .packages import PackageRecord, choose_packages, parse_packages
from .sources import AptSources, DebianSource, read_apt_sources

pytestmark = pytest.mark.real

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
APT_HELPER = Path("/usr/lib/apt/apt-helper")
PROXY = "127.0.0.1:9977"
# What B must get from A (of the .deb bytes). Measured: 99.6 % in both phases, on every run; the
# rest is the 16 KiB audit block a lone peer's piece list is checked with, per multi-piece file.
DOWNLOAD_PEER_SHARE = 0.95
DEBOOTSTRAP_PEER_SHARE = 0.90
APT_TIMEOUT = 300.0
DEBOOTSTRAP_TIMEOUT = 600.0
MIRROR_PROBE_TIMEOUT = 20.0
ANNOUNCE_TIMEOUT = 30.0
# Lines in a daemon log that mean dhtdeb failed at its job on the real archive.
FAILURE_LINES = (
    "not verified",
    "signed but",
    "sent a bad file",
    "assembled a bad file",
    "aborting response",
)
_LOG_LINE = re.compile(
    r"^(?P<date>\S+) (?P<time>\S+) (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<message>.*)$"
)
_VERIFIED = re.compile(
    r"^(?P<url>\S+): verified \(good signatures by (?P<keys>[^)]*)\), (?P<files>\d+) index files"
)
_DOWNLOADED = re.compile(
    r"^(?P<file>\S+\.deb): (?P<peers>\d+) bytes from (?P<count>\d+) peers, "
    r"(?P<mirror>\d+) from the mirror, (?P<seconds>[\d.]+) s$"
)
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fail(message: str) -> NoReturn:
    pytest.fail(message, pytrace=False)


# --- apt against the real sources -----------------------------------------------------------------


class SourcesApt(AptClient):
    """An isolated apt-get in a fleet host, through the host's daemon (HTTP proxy), with every
    Debian suite of the machine's sources, all signed-by Debian's archive keyring."""

    def __init__(self, host: FleetHost, name: str, sources: Sequence[DebianSource], arch: str):
        self.sources = tuple(sources)
        workdir = host.workdir / name
        workdir.mkdir(parents=True)
        first = self.sources[0]
        super().__init__(
            workdir,
            mirror_url=first.uri,
            suite=first.suite,
            component="main",
            keyring=KEYRING,
            arch=arch,
            mode=ProxyMode.HTTP_PROXY,
            proxy=PROXY,
            # As a real machine: Translation-en too; every response's headers in the output.
            options={"Acquire::Languages": "en", "Debug::Acquire::http": "true"},
            command_prefix=host.namespace.exec_prefix,
        )

    @property
    def source_line(self) -> str:  # every suite, one line each
        return "\n".join(f"deb [signed-by={self.keyring}] {s.sources_line}" for s in self.sources)

    def packages_file(self, source: DebianSource, component: str = "main") -> Path:
        """The Packages list apt keeps for `source`'s component (after `update`)."""
        result = self.run(["indextargets"]).check()
        for stanza in result.stdout.split("\n\n"):
            fields = dict(
                (k.strip(), v.strip())
                for k, _, v in (line.partition(":") for line in stanza.splitlines())
            )
            if (
                fields.get("Identifier") == "Packages"
                and fields.get("Release") == source.suite
                and fields.get("Component") == component
                and fields.get("Architecture") == self.arch
                and fields.get("Repo-URI", "").rstrip("/") == source.uri
            ):
                return Path(fields["Filename"])
        raise AssertionError(f"apt has no Packages list for {source.sources_line}")


def read_packages(path: Path) -> list[PackageRecord]:
    """A Packages list as apt keeps it (any compression: apt-helper decompresses)."""
    result = subprocess.run(
        [str(APT_HELPER), "cat-file", str(path)], capture_output=True, text=True, check=True
    )
    return parse_packages(result.stdout)


@dataclass(frozen=True, slots=True)
class Answer:
    url: str
    status: int
    verified: str | None  # the X-Dhtdeb-Verified header, None if absent


def answers(result: AptResult) -> list[Answer]:
    """The responses apt's http method printed (Debug::Acquire::http): URL, status, header."""
    found: list[Answer] = []
    lines = (result.stdout + "\n" + result.stderr).splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("Answer for: ") or i + 1 >= len(lines):
            continue
        status_words = lines[i + 1].split()
        status = int(status_words[1]) if len(status_words) > 1 and status_words[1].isdigit() else 0
        verified = None
        for header in lines[i + 2 :]:
            if not header.strip():
                break
            name, _, value = header.partition(":")
            if name.strip().lower() == "x-dhtdeb-verified":
                verified = value.strip()
        found.append(Answer(line.removeprefix("Answer for: ").strip(), status, verified))
    return found


def check_all_verified(result: AptResult, what: str) -> dict[str, int]:
    """Every 200/206 response apt got carries X-Dhtdeb-Verified: yes; counts by kind."""
    got = answers(result)
    assert got, f"{what}: apt printed no responses (Debug::Acquire::http)\n{result.output[-3000:]}"
    unverified = [a for a in got if a.status in (200, 206) and a.verified != "yes"]
    assert not unverified, f"{what}: responses not verified by dhtdeb: {unverified[:10]}"
    kinds: dict[str, int] = {}
    for answer in got:
        kind = "deb" if answer.url.endswith(".deb") else answer.url.rsplit("/", 1)[-1]
        kind = "by-hash" if "/by-hash/" in answer.url else kind
        key = f"{kind} {answer.status}"
        kinds[key] = kinds.get(key, 0) + 1
    return kinds


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_files(directory: Path, expected: Mapping[str, PackageRecord], exact: bool) -> int:
    """The .debs in `directory` are the index's (SHA256, size); with `exact`, exactly
    `expected`'s. Returns their total size."""
    found = {p.name: p for p in directory.glob("*.deb")}
    if exact:
        assert set(found) == set(expected), (
            f"{directory}: missing {sorted(set(expected) - set(found))[:10]}, "
            f"unexpected {sorted(set(found) - set(expected))[:10]}"
        )
    unknown = sorted(set(found) - set(expected))
    assert not unknown, f"{directory}: not in the index: {unknown[:10]}"
    assert found, f"{directory}: no .deb files"
    for name, path in found.items():
        record = expected[name]
        assert path.stat().st_size == record.size, f"{path}: size differs from the index"
        assert sha256_file(path) == record.sha256, f"{path}: SHA256 differs from the index"
    return sum(p.stat().st_size for p in found.values())


# --- the daemons' accounts ------------------------------------------------------------------------


def counters(host: FleetHost) -> dict[str, int]:
    """/status.json's counters, flattened: "bytes.from_peers", "verify_failures.signature", …"""
    status = host.status()
    flat: dict[str, int] = {}
    for group in ("bytes", "requests", "verify_failures"):
        for key, value in status[group].items():
            flat[f"{group}.{key}"] = int(value)
    return flat


def delta(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


class DaemonLog:
    """A host's daemon log, read from where the previous `since_mark` left off."""

    def __init__(self, host: FleetHost) -> None:
        self.host = host
        self.path = host.daemon_log
        self._mark = 0

    def lines(self, start: int = 0) -> list[str]:
        with self.path.open("rb") as handle:
            handle.seek(start)
            return handle.read().decode(errors="replace").splitlines()

    def mark(self) -> int:
        self._mark = self.path.stat().st_size
        return self._mark

    def since_mark(self) -> list[str]:
        return self.lines(self._mark)

    def messages(self, lines: Iterable[str]) -> Iterable[tuple[str, str, str]]:
        for line in lines:
            match = _LOG_LINE.match(line)
            if match:
                yield match["level"], match["logger"], match["message"]

    def verified(self) -> dict[str, tuple[str, ...]]:
        """InRelease/Release URL -> the fingerprints of the good signatures dhtdeb logged."""
        found: dict[str, tuple[str, ...]] = {}
        for _, _, message in self.messages(self.lines()):
            match = _VERIFIED.match(message)
            if match:
                found[match["url"]] = tuple(k.strip() for k in match["keys"].split(","))
        return found

    def downloads(self, lines: Iterable[str]) -> list[tuple[str, int, int]]:
        """(file, bytes from peers, bytes from the mirror) of each pool file the swarm fetched."""
        found = []
        for _, _, message in self.messages(lines):
            match = _DOWNLOADED.match(message)
            if match:
                found.append((match["file"], int(match["peers"]), int(match["mirror"])))
        return found

    def span(self, lines: Iterable[str]) -> float:
        """Seconds from the first to the last pool-file download logged in `lines`."""
        times = []
        for line in lines:
            match = _LOG_LINE.match(line)
            if match and _DOWNLOADED.match(match["message"]):
                stamp = datetime.strptime(
                    f"{match['date']} {match['time']}", "%Y-%m-%d %H:%M:%S,%f"
                )
                times.append(stamp.timestamp())
        return max(times) - min(times) if times else 0.0

    def problems(self) -> list[str]:
        """WARNING and worse, and traceback lines."""
        out = []
        for line in self.lines():
            match = _LOG_LINE.match(line)
            if match and match["level"] in ("WARNING", "ERROR", "CRITICAL"):
                out.append(line)
            elif line.startswith("Traceback") or (out and line.startswith("  File ")):
                out.append(line)
        return out


def announced(host: FleetHost, count: int) -> Callable[[], bool]:
    """Whether `host` has announced at least `count` files to the DHT."""
    return lambda: int(host.status()["dht"]["announced"]) >= count


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll another process's state until `condition` holds; False if `timeout` passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)  # polling the daemon's status, with a deadline
    return True


# --- the machine ----------------------------------------------------------------------------------


def host_arch() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()


def machine_sources(arch: str, report: list[str]) -> AptSources:
    """The Debian suites to check, or a failure saying why there are none."""
    sources = read_apt_sources(arch)
    report.append(f"apt sources read: {', '.join(sources.files) or '(none)'}")
    for skipped in sources.skipped:
        report.append(f"  {skipped}")
    if not sources.debian:
        fail(
            "make check-real: this machine's apt sources name no http:// Debian suite with the "
            f"main component (read: {', '.join(sources.files) or 'no sources file'}); add e.g. a "
            "deb822 entry with `URIs: http://<your Debian mirror>/debian` to "
            "/etc/apt/sources.list.d/debian.sources"
        )
    if sources.release() is None:
        fail("make check-real: no release suite of a .../debian archive for debootstrap")
    return sources


def probe_mirrors(host: FleetHost, sources: Sequence[DebianSource]) -> None:
    """Fail clearly if a mirror cannot be reached from the fleet (and say whether this machine
    itself reaches it, to tell a dead mirror from a broken uplink)."""
    for uri in dict.fromkeys(s.uri for s in sources):
        source = next(s for s in sources if s.uri == uri)
        url = source.in_release_url
        try:
            status, _ = host.http_get(url, timeout=MIRROR_PROBE_TIMEOUT)
            if status == 200:
                continue
            problem = f"HTTP {status}"
        except OSError as exc:
            problem = repr(exc)
        try:
            with _NO_PROXY.open(url, timeout=MIRROR_PROBE_TIMEOUT) as response:
                here = (
                    f"this machine itself gets HTTP {response.status}: the uplink/NAT is at fault"
                )
        except OSError as exc:
            here = f"this machine cannot reach it either ({exc!r})"
        fail(f"make check-real: mirror unreachable from the fleet: GET {url}: {problem}; {here}")


def key_names(gnupg_home: Path) -> dict[str, str]:
    """Fingerprint (primary keys and subkeys) -> user id, for Debian's keyrings and keys/."""
    gnupg_home.mkdir(mode=0o700, parents=True, exist_ok=True)
    rings = sorted(Path("/usr/share/keyrings").glob("debian-archive-*.gpg"))
    rings += sorted((Path(__file__).resolve().parents[2] / "keys").glob("*.gpg"))
    names: dict[str, str] = {}
    for ring in rings:
        result = subprocess.run(
            ["gpg", "--homedir", str(gnupg_home), "--batch", "--with-colons", "--show-keys",
             str(ring)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        fingerprints: list[str] = []
        for line in result.stdout.splitlines():
            fields = line.split(":")
            if fields[0] == "pub":
                fingerprints = []
            elif fields[0] == "fpr":
                fingerprints.append(fields[9])
            elif fields[0] == "uid" and fingerprints:
                for fingerprint in fingerprints:
                    names.setdefault(fingerprint, fields[9])
    return names


def debootstrap(host: FleetHost, suite: str, mirror: str, target: Path, arch: str) -> float:
    """`debootstrap --download-only --variant=minbase` in `host`, through its daemon
    (http_proxy); returns the seconds it took."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env |= {"http_proxy": f"http://{PROXY}", "LC_ALL": "C.UTF-8"}
    argv = [
        *host.namespace.exec_prefix, "debootstrap", "--download-only", "--variant=minbase",
        f"--arch={arch}", f"--keyring={KEYRING}", suite, str(target), mirror,
    ]  # fmt: skip
    started = time.monotonic()
    try:
        result = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=DEBOOTSTRAP_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{host.name}: debootstrap did not finish in {exc.timeout}s") from exc
    seconds = time.monotonic() - started
    if result.returncode != 0:
        log = target / "debootstrap" / "debootstrap.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise AssertionError(
            f"{host.name}: {' '.join(argv)} exited {result.returncode}\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}\n{tail}"
        )
    return seconds


# --- the check ------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.phases: list[tuple[str, float]] = []
        self._last = self.start

    def lap(self, phase: str) -> float:
        now = time.monotonic()
        seconds = now - self._last
        self.phases.append((phase, seconds))
        self._last = now
        print(f"[check-real {now - self.start:6.1f}s] {phase}: {seconds:.1f}s", flush=True)
        return seconds

    @property
    def total(self) -> float:
        return time.monotonic() - self.start


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def test_dhtdeb_on_the_real_archive(tmp_path: Path, real_report: list[str]) -> None:
    """Measured on a 2-CPU VM with an 11 MB/s line to the mirror: 70-80 s in all; B got 99.6 %
    of the 42.8 MB download and of debootstrap's 31.9 MB from A. debootstrap spends about 16 s
    on its own work (InRelease, parsing Packages) before the first .deb on either host."""
    report = real_report
    clock = Clock()
    problem = root_problem(os.geteuid())
    if problem is not None:
        fail(f"make check-real: {problem}")
    if not KEYRING.is_file():
        fail(f"make check-real needs {KEYRING} (apt-get install debian-archive-keyring)")
    arch = host_arch()
    sources = machine_sources(arch, report)
    release = sources.release()
    assert release is not None
    report.append("Debian suites checked: " + "; ".join(s.sources_line for s in sources.debian))

    # The fleet's own mirror is not used: one tiny archive keeps the harness happy.
    archive = build_archive(tmp_path / "unused-archive", ArchiveSpec(packages=1))
    fleet = Fleet(archive, tmp_path / "fleet", hosts=2, uplink=True, mirror_rate=None)
    logs: list[DaemonLog] = []
    try:
        with fleet:
            a, b = fleet.hosts
            a.start_daemon(keyrings=())
            b.start_daemon(bootstrap=[a], keyrings=())
            logs = [DaemonLog(a), DaemonLog(b)]
            probe_mirrors(a, sources.debian)
            clock.lap("fleet up, mirror reachable")
            run_check(logs[0], logs[1], sources, release, arch, tmp_path, clock, report)
    except FleetError as exc:
        fail(f"make check-real: the fleet harness failed: {exc}")
    finally:
        for log in logs:
            lines = log.problems()
            report.append(
                f"{log.host.name} daemon log {log.path}: {len(lines)} WARNING/ERROR lines"
            )
            report += [f"  {line}" for line in lines[:40]]
        phases = [f"{name} {seconds:.1f}s" for name, seconds in clock.phases]
        report.append(f"durations: {', '.join([*phases, f'total {clock.total:.1f}s'])}")
    for log in logs:
        bad = [line for line in log.problems() if any(f in line for f in FAILURE_LINES)]
        assert not bad, f"{log.host.name}: dhtdeb failed on the real archive:\n" + "\n".join(bad)


def run_check(
    log_a: DaemonLog,
    log_b: DaemonLog,
    sources: AptSources,
    release: DebianSource,
    arch: str,
    tmp_path: Path,
    clock: Clock,
    report: list[str],
) -> None:
    a, b = log_a.host, log_b.host
    names = key_names(tmp_path / "gnupg")

    # 1. apt-get update through each daemon: every InRelease verified.
    apts: dict[str, SourcesApt] = {}
    for host, log in ((a, log_a), (b, log_b)):
        apt = SourcesApt(host, "apt", sources.debian, arch)
        apts[host.name] = apt
        before = counters(host)
        result = apt.update(timeout=APT_TIMEOUT)
        if not result.ok:
            fail(f"{host.name}: apt-get update through dhtdeb failed:\n{result.output[-4000:]}")
        kinds = check_all_verified(result, f"{host.name} update")
        seconds = clock.lap(f"{host.name} apt-get update")
        moved = delta(counters(host), before)
        verified = log.verified()
        for source in sources.debian:
            assert source.in_release_url in verified, (
                f"{host.name}: dhtdeb did not log {source.in_release_url} as verified:\n"
                + host.log_tail(30)
            )
        status = counters(host)
        failures = {k: v for k, v in status.items() if k.startswith("verify_failures.") and v}
        assert not failures, f"{host.name}: /status.json verify failures {failures}"
        report.append(
            f"{host.name} apt-get update {seconds:.1f}s: responses {kinds}; "
            f"{mb(moved['bytes.from_mirror'])} from the mirror, "
            f"{mb(moved['bytes.from_peers'])} from peers"
        )
    for source in sources.debian:
        keys = log_a.verified()[source.in_release_url]
        report.append(f"verified {source.suite} ({source.uri}) by both daemons, signed by:")
        report += [f"  {k} {names.get(k, '(not in the Debian keyrings)')}" for k in keys]

    # 2. 50 packages on A, then on B: B gets them from A.
    index = read_packages(apts[a.name].packages_file(release))
    by_name = {r.download_name: r for r in index}
    chosen = choose_packages(index, arch)
    assert len(chosen) >= 45, f"only {len(chosen)} packages fit the choice rule"
    wanted = {r.download_name: r for r in chosen}
    total = sum(r.size for r in chosen)
    report.append(
        f"download: {len(chosen)} packages of {release.suite}/main ({len(index)} in the index), "
        f"{mb(total)}, sizes {min(r.size for r in chosen)}..{max(r.size for r in chosen)} bytes"
    )
    pins = [r.pin for r in chosen]
    shares: dict[str, float] = {}
    for host, log in ((a, log_a), (b, log_b)):
        apt = apts[host.name]
        before, a_before = counters(host), counters(a)
        log.mark()
        dest = host.workdir / "downloads"
        result = apt.download(pins, dest, timeout=APT_TIMEOUT)
        if not result.ok:
            fail(f"{host.name}: apt-get download through dhtdeb failed:\n{result.output[-4000:]}")
        seconds = clock.lap(f"{host.name} apt-get download")
        kinds = check_all_verified(result, f"{host.name} download")
        check_files(dest, wanted, exact=True)
        moved = delta(counters(host), before)
        peers, mirror = moved["bytes.from_peers"], moved["bytes.from_mirror"]
        shares[host.name] = share(peers, peers + mirror)
        logged = log.downloads(log.since_mark())
        report.append(
            f"{host.name} apt-get download {seconds:.1f}s: {mb(peers)} from peers, "
            f"{mb(mirror)} from the mirror ({shares[host.name]:.1%} from peers; "
            f"{len(logged)} files in the log, {sum(1 for f in logged if f[1])} with peer bytes); "
            f"requests {_requests(moved)}; responses {kinds}"
        )
        if host is a:
            # A tells the DHT in batches; B asks only once A has, so that B's numbers say
            # whether peers were used, not how fast A announces.
            if not wait_for(announced(a, len(chosen)), ANNOUNCE_TIMEOUT):
                report.append(f"a had not announced its files after {ANNOUNCE_TIMEOUT}s")
        else:
            sent = delta(counters(a), a_before)["bytes.to_peers"]
            report.append(f"a sent {mb(sent)} to peers meanwhile")
    assert shares[b.name] >= DOWNLOAD_PEER_SHARE, (
        f"b got {shares[b.name]:.1%} of the .deb bytes from peers, "
        f"expected >= {DOWNLOAD_PEER_SHARE:.0%}:\n" + b.log_tail(40)
    )

    # 3. debootstrap through A, then B.
    debs: dict[str, tuple[int, int, int]] = {}
    for host, log in ((a, log_a), (b, log_b)):
        before, a_before = counters(host), counters(a)
        log.mark()
        target = host.workdir / "debootstrap"
        seconds = debootstrap(host, release.suite, release.uri, target, arch)
        clock.lap(f"{host.name} debootstrap")
        deb_bytes = check_files(target / "var" / "cache" / "apt" / "archives", by_name, False)
        files = list((target / "var" / "cache" / "apt" / "archives").glob("*.deb"))
        moved = delta(counters(host), before)
        logged = log.downloads(log.since_mark())
        peer_deb = sum(f[1] for f in logged)
        mirror_deb = sum(f[2] for f in logged)
        debs[host.name] = (deb_bytes, peer_deb, mirror_deb)
        overlap = sum(1 for f in files if f.name in wanted)
        report.append(
            f"{host.name} debootstrap {seconds:.1f}s ({log.span(log.since_mark()):.1f}s from its "
            f"first .deb to its last): {len(files)} .debs, {mb(deb_bytes)}; "
            f".debs fetched {mb(peer_deb)} from peers, {mb(mirror_deb)} from the mirror "
            f"({share(peer_deb, peer_deb + mirror_deb):.1%} from peers; {len(logged)} files, "
            f"{overlap} already in the store from the download); status: "
            f"{mb(moved['bytes.from_peers'])} from peers, "
            f"{mb(moved['bytes.from_mirror'])} from the mirror incl. indexes; "
            f"requests {_requests(moved)}"
        )
        if host is a and not wait_for(announced(a, len(chosen) + len(logged)), ANNOUNCE_TIMEOUT):
            report.append(f"a had not announced its debootstrap files after {ANNOUNCE_TIMEOUT}s")
        if host is b:
            sent = delta(counters(a), a_before)["bytes.to_peers"]
            report.append(f"a sent {mb(sent)} to peers meanwhile")
    _, peer_deb, mirror_deb = debs[b.name]
    b_share = share(peer_deb, peer_deb + mirror_deb)
    report.append(
        f"B's share from peers: download {shares[b.name]:.1%} (>= {DOWNLOAD_PEER_SHARE:.0%} "
        f"asserted), debootstrap {b_share:.1%} (>= {DEBOOTSTRAP_PEER_SHARE:.0%} asserted)"
    )
    assert b_share >= DEBOOTSTRAP_PEER_SHARE, (
        f"b's debootstrap got {b_share:.1%} of its .deb bytes from peers, expected >= "
        f"{DEBOOTSTRAP_PEER_SHARE:.0%}:\n" + b.log_tail(40)
    )


def _requests(moved: Mapping[str, Any]) -> str:
    keys = ("cache_hits", "read_ahead", "from_peers", "from_mirror", "passed_through", "refused")
    return ", ".join(f"{k} {moved[f'requests.{k}']}" for k in keys if moved.get(f"requests.{k}"))
