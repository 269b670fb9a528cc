"""Benchmark: the real `apt-get update` of this machine's Debian sources through dhtdeb vs
straight to the mirror vs apt-cacher-ng, cold and warm, all in one run.

Targets: dhtdeb cold <= 1.10x direct; the daemon's memory after a cold update (every Packages file
of those suites indexed) <= 80 MiB.

The suites are the http:// Debian entries of /etc/apt/sources.list and sources.list.d (`.list` and
deb822 `.sources`, read by tests/real/sources.py), with their components, all signed-by Debian's
archive keyring. Per round and contender, each apt client fresh and isolated (tests/support/apt.py:
its own APT_CONFIG, state, lists and cache dirs; Languages "en", as on an English machine):
  direct         `apt-get update` straight to the mirror (cold), then the same client once more
                 (`again`: lists kept, so apt asks with If-Modified-Since; for reference);
  dhtdeb         `python -m dhtdeb serve --no-dht --keyring <Debian's>` with a fresh state dir;
                 cold = a first apt client's update, warm = a second fresh client's against the
                 same daemon;
  apt-cacher-ng  the same with a fresh apt-cacher-ng (bench/proxy.py's: own config and cache dirs,
                 loopback, foreground).
The order of the contenders rotates from round to round. Printed: seconds and medians, bytes apt
fetched and bytes each contender got from the mirror, CPU seconds of apt and of the proxy, the
daemon's VmRSS / VmHWM after the cold update and the pool files it learned. Checked: apt exits 0
(`--error-on=any`), dhtdeb logged every suite's InRelease as verified and counted no verification
failure, and every run fetched the same set of index files. Not a test: targets are printed, not
asserted; the exit status is 1 only when a check fails, 0 with a message when the mirror cannot be
reached.

    .venv/bin/python bench/update.py [--rounds 5] [--only CONTENDER ...] [--languages en]
        [--probe-timeout 10] [--keep] [--dhtdeb-tree DIR]

The mirror's host name is read from /etc/apt at run time; it is neither written into the
repository nor printed (work dirs live under the system's temp dir). bench/README.md has details.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import proxy as proxy_bench  # noqa: E402  (bench/proxy.py: apt-cacher-ng, ports, round orders)
from real.sources import DebianSource, read_apt_sources  # noqa: E402
from support.apt import AptClient, AptResult, ProxyMode  # noqa: E402
from support.daemon import DaemonProcess  # noqa: E402

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEFAULT_ROUNDS = 5
DEFAULT_LANGUAGES = "en"
PROBE_TIMEOUT = 10.0
APT_TIMEOUT = 600.0
TARGET_COLD = 1.10  # dhtdeb cold / direct
TARGET_MEMORY_MIB = 80.0  # the daemon's VmHWM after a cold update
MIRROR = "<mirror>"  # stands for the host name wherever a message could carry it

DIRECT, DHTDEB, ACNG = proxy_bench.DIRECT, proxy_bench.DHTDEB, proxy_bench.ACNG
CONTENDERS = (DIRECT, DHTDEB, ACNG)
COLD, WARM, AGAIN = "cold", "warm", "again"

# "Fetched 23.4 MB in 5s (4,321 kB/s)"; apt rounds to three digits and uses SI prefixes.
_FETCHED = re.compile(r"^Fetched ([\d.,]+) ([kMGT]?)B in ", re.MULTILINE)
_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_VERIFIED = re.compile(r" INFO [\w.]+: (\S+): verified \(good signatures by ")
_LEARNED = re.compile(r" INFO [\w.]+: \S+: learned (\d+) pool files( in [\d.]+ s)?$")
# Lines of the daemon's log that mean it did not vouch for what it gave apt.
_DISTRUST = ("not verified", "signed but", "unverifiable", "does not match")
# apt-cacher-ng's transfer log: "<time>|I|<bytes>|<client>|<path>" for bytes it got upstream
# ("O": bytes it sent to a client).
_ACNG_IN = re.compile(r"^\d+\|I\|(\d+)\|")


# --- the machine's sources ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sources:
    suites: tuple[DebianSource, ...]
    files: tuple[str, ...]

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every spelling of the mirrors' names that could appear in a message or file name."""
        names: set[str] = set()
        for suite in self.suites:
            parts = urllib.parse.urlsplit(suite.uri)
            names.update(n for n in (parts.netloc, parts.hostname) if n)
        return tuple(sorted(names, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        """`text` without the mirrors' host names."""
        for name in self.hosts:
            text = text.replace(name, MIRROR)
        return text

    def describe(self) -> str:
        return "; ".join(f"{s.archive} {s.suite} {' '.join(s.components)}" for s in self.suites)


def host_arch() -> str:
    result = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def probe(sources: Sources, timeout: float) -> str | None:
    """None if every mirror answers its first suite's InRelease within `timeout`, else why not
    (scrubbed). No environment proxy: the benchmark measures the path apt takes."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for uri in dict.fromkeys(s.uri for s in sources.suites):
        suite = next(s for s in sources.suites if s.uri == uri)
        try:
            with opener.open(suite.in_release_url, timeout=timeout) as response:
                response.read()
                if response.status != 200:
                    return f"{suite.archive} {suite.suite} InRelease: HTTP {response.status}"
        except (OSError, ValueError) as exc:
            return sources.scrub(f"{suite.archive} {suite.suite} InRelease: {exc!r}")
    return None


class SourcesApt(AptClient):
    """An isolated apt-get with every Debian suite of the machine's sources."""

    def __init__(
        self,
        workdir: Path,
        suites: Sequence[DebianSource],
        arch: str,
        languages: str,
        proxy: str | None,
    ) -> None:
        self.suites = tuple(suites)
        super().__init__(
            workdir,
            mirror_url=self.suites[0].uri,
            suite=self.suites[0].suite,
            component=self.suites[0].components[0],
            keyring=KEYRING,
            arch=arch,
            mode=ProxyMode.DIRECT if proxy is None else ProxyMode.HTTP_PROXY,
            proxy=proxy,
            options={"Acquire::Languages": languages},
        )

    @property
    def source_line(self) -> str:
        return "\n".join(f"deb [signed-by={self.keyring}] {s.sources_line}" for s in self.suites)

    def index_files(self) -> dict[str, int]:
        """The lists apt keeps, by name without the host part (dists/... mangled), and size."""
        found = {}
        for path in self.lists_dir.iterdir():
            if path.is_file() and "_dists_" in path.name:
                found[path.name.split("_dists_", 1)[1]] = path.stat().st_size
        return found


def fetched_bytes(result: AptResult) -> int | None:
    match = _FETCHED.search(result.stdout)
    if match is None:
        return None
    return round(float(match[1].replace(",", "")) * _UNITS[match[2]])


# --- processes ------------------------------------------------------------------------------------


def cpu_with_children(pid: int | None) -> float:
    """utime + stime of a process and of its children it has waited for (gpgv for dhtdeb)."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    ticks = sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024  # kB
    return values["VmRSS"], values["VmHWM"]


def daemon_command(tree: Path | None) -> tuple[list[str] | None, dict[str, str]]:
    """How to start `python -m dhtdeb` from `tree` (None: the installed package)."""
    if tree is None:
        return None, {}
    # -P keeps the current directory off sys.path, so PYTHONPATH wins over the editable install.
    return [sys.executable, "-P", "-m", "dhtdeb"], {"PYTHONPATH": str(tree)}


def wait_learned(daemon: DaemonProcess, timeout: float = 120.0) -> float:
    """Seconds until the daemon says no Packages file is being learned any more."""
    started = time.monotonic()
    while True:
        index = daemon.status().get("index", {})
        if not isinstance(index, dict) or not index.get("learning"):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"the daemon was still learning after {timeout:.0f} s")
        time.sleep(0.05)


def find_counts(status: Any, words: Iterable[str], prefix: str = "") -> dict[str, int]:
    """Integer fields of /status.json whose dotted name contains one of `words`."""
    found: dict[str, int] = {}
    if isinstance(status, dict):
        for key, value in status.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                found.update(find_counts(value, words, name))
            elif isinstance(value, int) and any(w in name for w in words):
                found[name] = value
    return found


def counter_deltas(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    deltas = {}
    for group in ("bytes", "requests", "verify_failures"):
        for key, value in after.get(group, {}).items():
            if isinstance(value, int):
                deltas[f"{group}.{key}"] = value - int(before.get(group, {}).get(key, 0))
    return deltas


# --- one run --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    round: int
    contender: str
    phase: str
    seconds: float
    apt_bytes: int | None  # what apt says it fetched
    mirror_bytes: int | None  # what the contender got from the mirror (None: not known)
    apt_cpu: float  # apt-get and its methods
    proxy_cpu: float  # the daemon (with gpgv) or apt-cacher-ng
    index_files: frozenset[str]


@dataclass(frozen=True, slots=True)
class DaemonMemory:
    round: int
    rss_mib: float
    hwm_mib: float
    learned_from_log: int
    status_counts: dict[str, int]


@dataclass
class Bench:
    sources: Sources
    arch: str
    languages: str
    workdir: Path
    keep: bool
    tree: Path | None
    runs: list[Run] = field(default_factory=list)
    memory: list[DaemonMemory] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    counters: list[tuple[str, dict[str, int]]] = field(default_factory=list)
    _clients: int = 0

    def client(self, proxy: str | None) -> SourcesApt:
        self._clients += 1
        workdir = self.workdir / f"apt-{self._clients}"
        workdir.mkdir(parents=True)
        return SourcesApt(workdir, self.sources.suites, self.arch, self.languages, proxy)

    def update(
        self, round_: int, contender: str, phase: str, client: SourcesApt, proxy_pid: int | None
    ) -> Run:
        apt_before, proxy_before = children_cpu(), cpu_with_children(proxy_pid)
        result = client.update(timeout=APT_TIMEOUT)
        apt_cpu = children_cpu() - apt_before
        proxy_cpu = cpu_with_children(proxy_pid) - proxy_before
        if not result.ok:
            self.failures.append(
                f"round {round_} {contender} {phase}: apt-get update exited {result.returncode}:\n"
                + self.sources.scrub(result.output[-3000:])
            )
        apt_bytes = fetched_bytes(result)
        return Run(
            round_,
            contender,
            phase,
            result.seconds,
            apt_bytes,
            apt_bytes if contender == DIRECT else None,
            apt_cpu,
            proxy_cpu,
            frozenset(client.index_files()),
        )

    def record(self, run: Run, note: str = "") -> None:
        self.runs.append(run)
        print(
            f"  round {run.round} {run.contender:<13} {run.phase:<5} {run.seconds:7.2f} s, "
            f"apt fetched {fmt(run.apt_bytes)}, mirror sent {fmt(run.mirror_bytes)}, "
            f"{len(run.index_files)} lists, CPU s apt {run.apt_cpu:.2f} proxy {run.proxy_cpu:.2f}"
            + (f"; {note}" if note else ""),
            flush=True,
        )

    # --- contenders -------------------------------------------------------------------------------

    def run_direct(self, round_: int) -> None:
        client = self.client(None)
        for phase in (COLD, AGAIN):
            run = self.update(round_, DIRECT, phase, client, None)
            self.record(run)

    def run_dhtdeb(self, round_: int) -> None:
        state = self.workdir / f"dhtdeb-{round_}"
        command, env = daemon_command(self.tree)
        daemon = DaemonProcess(state, [KEYRING], command=command, env=env).start()
        try:
            for phase in (COLD, WARM):
                mark = daemon.log_file.stat().st_size
                before = daemon.status()
                run = self.update(round_, DHTDEB, phase, self.client(daemon.proxy), daemon.pid)
                after = daemon.status()
                deltas = counter_deltas(before, after)
                self.counters.append((f"round {round_} {phase}", deltas))
                run = dataclasses.replace(run, mirror_bytes=deltas.get("bytes.from_mirror"))
                log = read_from(daemon.log_file, mark)
                note = self.check_daemon(round_, phase, log, deltas)
                if phase == COLD:
                    # Pool files are learned off apt's path: wait for the learning to end.
                    tail = wait_learned(daemon)
                    log = read_from(daemon.log_file, mark)
                    after = daemon.status()
                    rss, hwm = memory_mib(daemon.pid)
                    note += f"; learning ended {tail:.2f} s after apt"
                    learned = sum(
                        int(m[1]) for line in log.splitlines() if (m := _LEARNED.search(line))
                    )
                    counts = find_counts(after, ("pool", "learned", "index_files", "known"))
                    self.memory.append(DaemonMemory(round_, rss, hwm, learned, counts))
                    note += f"; VmRSS {rss:.1f} MiB, VmHWM {hwm:.1f} MiB, learned {learned} files"
                self.record(run, note.strip("; "))
        finally:
            daemon.stop()
            if not self.keep:
                shutil.rmtree(state, ignore_errors=True)

    def check_daemon(self, round_: int, phase: str, log: str, deltas: dict[str, int]) -> str:
        """Every suite's InRelease verified, nothing distrusted; returns a note for the line."""
        label = f"round {round_} dhtdeb {phase}"
        verified = {m[1] for line in log.splitlines() if (m := _VERIFIED.search(line))}
        missing = [s for s in self.sources.suites if s.in_release_url not in verified]
        if missing:
            names = ", ".join(f"{s.archive} {s.suite}" for s in missing)
            self.failures.append(f"{label}: the daemon did not log InRelease verified for {names}")
        distrust = [line for line in log.splitlines() if any(w in line for w in _DISTRUST)]
        if distrust:
            self.failures.append(
                f"{label}: the daemon logged:\n    "
                + "\n    ".join(self.sources.scrub(line) for line in distrust[:10])
            )
        failed = {k: v for k, v in deltas.items() if k.startswith("verify_failures.") and v}
        passed = deltas.get("requests.passed_through", 0)
        if failed or passed:
            self.failures.append(
                f"{label}: /status.json: {failed or ''} passed_through {passed} (unverified)"
            )
        return f"{len(verified)}/{len(self.sources.suites)} InRelease verified"

    def run_acng(self, round_: int) -> None:
        acng = proxy_bench.AptCacherNg(self.workdir / f"acng-{round_}").start()
        try:
            for phase in (COLD, WARM):
                before = acng_upstream_bytes(acng.log_dir)
                run = self.update(round_, ACNG, phase, self.client(acng.proxy), acng.pid)
                after = acng_upstream_bytes(acng.log_dir)
                mirror = None if before is None or after is None else after - before
                self.record(dataclasses.replace(run, mirror_bytes=mirror))
        finally:
            acng.stop()
            if not self.keep:
                shutil.rmtree(acng.directory, ignore_errors=True)

    def run_round(self, round_: int, order: Sequence[str]) -> None:
        for contender in order:
            try:
                if contender == DIRECT:
                    self.run_direct(round_)
                elif contender == DHTDEB:
                    self.run_dhtdeb(round_)
                else:
                    self.run_acng(round_)
            except Exception as exc:  # the other contenders of the round still run
                message = self.sources.scrub(f"{type(exc).__name__}: {exc}")
                print(f"  round {round_} {contender}: aborted: {message}")
                self.failures.append(f"round {round_} {contender}: aborted: {message[-2000:]}")
        if not self.keep:
            for path in self.workdir.glob("apt-*"):
                shutil.rmtree(path, ignore_errors=True)


def read_from(path: Path, offset: int) -> str:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


def acng_upstream_bytes(log_dir: Path) -> int | None:
    """Bytes apt-cacher-ng logged as received from upstream (None: no transfer log)."""
    path = log_dir / "apt-cacher.log"
    if not path.is_file():
        return 0 if log_dir.is_dir() else None
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        match = _ACNG_IN.match(line)
        if match:
            total += int(match[1])
    return total


# --- report ---------------------------------------------------------------------------------------


def fmt(n: float | None) -> str:
    return "?" if n is None else proxy_bench.fmt_bytes(n)


def phases(contender: str) -> tuple[str, ...]:
    return (COLD, AGAIN) if contender == DIRECT else (COLD, WARM)


def selected(runs: Sequence[Run], contender: str, phase: str) -> list[Run]:
    return [r for r in runs if r.contender == contender and r.phase == phase]


def median_seconds(runs: Sequence[Run], contender: str, phase: str) -> float | None:
    chosen = selected(runs, contender, phase)
    return statistics.median(r.seconds for r in chosen) if chosen else None


def median_bytes(values: Iterable[int | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def print_report(bench: Bench, rounds: int, contenders: Sequence[str]) -> None:
    runs = bench.runs
    print(f"\n`apt-get update` of {len(bench.sources.suites)} suites, seconds per round")
    print(
        f"{'contender':<15}{'phase':<7}"
        + "".join(f"{'r' + str(r):>8}" for r in range(1, rounds + 1))
        + f"{'median':>9}"
    )
    for contender in contenders:
        for phase in phases(contender):
            by_round = {r.round: r.seconds for r in selected(runs, contender, phase)}
            median = median_seconds(runs, contender, phase)
            if median is None:
                continue
            cells = "".join(
                f"{by_round[r]:>8.2f}" if r in by_round else f"{'-':>8}"
                for r in range(1, rounds + 1)
            )
            print(f"{contender:<15}{phase:<7}{cells}{median:>9.2f}")
    print("  (direct again: the same apt client updated a second time, lists kept; reference)")

    print("\nmedians: bytes apt fetched, bytes the contender got from the mirror, CPU seconds")
    print(f"{'contender':<15}{'phase':<7}{'apt got':>10}{'mirror':>10}{'apt CPU':>9}{'proxy':>8}")
    for contender in contenders:
        for phase in phases(contender):
            chosen = selected(runs, contender, phase)
            if not chosen:
                continue
            apt_got = median_bytes(r.apt_bytes for r in chosen)
            mirror = median_bytes(r.mirror_bytes for r in chosen)
            apt_cpu = statistics.median(r.apt_cpu for r in chosen)
            proxy_cpu = statistics.median(r.proxy_cpu for r in chosen)
            print(
                f"{contender:<15}{phase:<7}{fmt(apt_got):>10}{fmt(mirror):>10}"
                f"{apt_cpu:>9.2f}{proxy_cpu:>8.2f}"
            )
    print(
        "  (apt got: apt's own `Fetched` line, 3 digits; mirror: direct = apt's figure, dhtdeb ="
        "\n  /status.json bytes.from_mirror, apt-cacher-ng = the I records of its transfer log;"
        "\n  proxy CPU: the daemon with the gpgv it ran, or apt-cacher-ng)"
    )

    if bench.memory:
        print("\ndhtdeb daemon after the cold update (every Packages file of the suites indexed)")
        for m in bench.memory:
            print(
                f"  round {m.round}: VmRSS {m.rss_mib:.1f} MiB, VmHWM {m.hwm_mib:.1f} MiB, "
                f"{m.learned_from_log} pool files learned (its log)"
            )
        worst = max(m.hwm_mib for m in bench.memory)
        rss = statistics.median(m.rss_mib for m in bench.memory)
        verdict = "met" if worst <= TARGET_MEMORY_MIB else "MISSED"
        print(
            f"  median VmRSS {rss:.1f} MiB, highest VmHWM {worst:.1f} MiB "
            f"(target <= {TARGET_MEMORY_MIB:.0f} MiB: {verdict})"
        )
        counts = bench.memory[-1].status_counts
        if counts:
            text = ", ".join(f"{k}={v}" for k, v in counts.items())
            print(f"  /status.json: {text}")
        else:
            print("  /status.json does not say how many pool files the daemon knows")
    if bench.counters:
        print("\ndhtdeb /status.json deltas per client, last round")
        last = bench.counters[-2:]
        for label, deltas in last:
            print(f"  {label}: " + ", ".join(f"{k}={v}" for k, v in deltas.items() if v))

    print("\nratios of medians")
    direct = median_seconds(runs, DIRECT, COLD)
    d_cold, d_warm = median_seconds(runs, DHTDEB, COLD), median_seconds(runs, DHTDEB, WARM)
    a_cold, a_warm = median_seconds(runs, ACNG, COLD), median_seconds(runs, ACNG, WARM)

    def ratio(label: str, num: float | None, den: float | None, target: float | None) -> None:
        if num is None or den is None:
            return
        value = num / den
        verdict = ""
        if target is not None:
            verdict = f"  (target <= {target:.2f}x: {'met' if value <= target else 'MISSED'})"
        print(f"  {label:<36}{value:6.2f}x{verdict}")

    ratio("dhtdeb cold / direct", d_cold, direct, TARGET_COLD)
    ratio("dhtdeb warm / apt-cacher-ng warm", d_warm, a_warm, None)
    ratio("apt-cacher-ng cold / direct", a_cold, direct, None)
    ratio("dhtdeb warm / direct", d_warm, direct, None)
    ratio("apt-cacher-ng warm / direct", a_warm, direct, None)

    print("\ncorrectness")
    sets = {r.index_files for r in runs if r.phase != AGAIN and r.index_files}
    if len(sets) == 1:
        names = sorted(next(iter(sets)))
        kinds = sorted({n.rsplit("_", 1)[-1] for n in names})
        print(f"  every update fetched the same {len(names)} lists ({', '.join(kinds)})")
    elif sets:
        union = set().union(*sets)
        common = set.intersection(*(set(s) for s in sets))
        odd = sorted(bench.sources.scrub(n) for n in union - common)
        bench.failures.append(f"the updates fetched different lists: {', '.join(odd[:10])}")
    print(f"  {len(runs)} updates; apt exit status, dhtdeb's InRelease verification checked")
    if bench.failures:
        print(f"  {len(bench.failures)} FAILED checks:")
        for failure in bench.failures:
            print(f"    - {failure}")
    else:
        print(
            "  all passed: apt exited 0 every time; the daemon logged every InRelease verified, "
            "no verification failure, nothing passed through unverified"
        )


# --- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument(
        "--only", action="append", choices=CONTENDERS, help="run only this contender (repeatable)"
    )
    parser.add_argument(
        "--languages",
        default=DEFAULT_LANGUAGES,
        help=f"apt's Acquire::Languages, the same for all (default {DEFAULT_LANGUAGES!r})",
    )
    parser.add_argument("--probe-timeout", type=float, default=PROBE_TIMEOUT)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (daemon logs)")
    parser.add_argument(
        "--dhtdeb-tree",
        type=Path,
        help="run the daemon from this source tree (e.g. `git archive HEAD | tar -x -C DIR`) "
        "instead of the installed package",
    )
    args = parser.parse_args()
    contenders = [c for c in CONTENDERS if not args.only or c in args.only]
    if args.dhtdeb_tree is not None and not (args.dhtdeb_tree / "dhtdeb").is_dir():
        parser.error(f"--dhtdeb-tree {args.dhtdeb_tree}: no dhtdeb/ in it")
    if ACNG in contenders and shutil.which("apt-cacher-ng") is None:
        print("apt-cacher-ng is not installed: `apt-get install apt-cacher-ng` (as root)")
        return 2
    if not KEYRING.is_file():
        print(f"{KEYRING} is missing: `apt-get install debian-archive-keyring`")
        return 2

    arch = host_arch()
    found = read_apt_sources(arch)
    sources = Sources(found.debian, found.files)
    if not sources.suites:
        print(
            "skipped: this machine's apt sources name no http:// Debian suite with main "
            f"(read: {', '.join(sources.files) or 'no sources file'})"
        )
        return 0
    problem = probe(sources, args.probe_timeout)
    if problem is not None:
        print(
            "skipped: the real archive is not reachable (the mirror of this machine's apt "
            f"sources did not answer within {args.probe_timeout:g} s: {problem})"
        )
        return 0

    started = time.monotonic()
    print(
        f"machine: nproc {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, "
        f"{platform.machine()}, Python {platform.python_version()}, "
        f"apt-cacher-ng {proxy_bench.acng_version()}"
    )
    print(
        f"suites: {sources.describe()} ({arch}; from the mirror of this machine's apt sources, "
        f"read from {', '.join(sources.files)})"
    )
    tree = args.dhtdeb_tree.resolve() if args.dhtdeb_tree else ROOT
    state = proxy_bench.source_state(tree)
    if tree != ROOT:
        state += f"; this repository: {proxy_bench.source_state(ROOT)}"
    print(f"dhtdeb: `python -m dhtdeb serve --no-dht --keyring {KEYRING}` from {tree} ({state})")
    print(f"apt: isolated clients, Acquire::Languages {args.languages!r}, no pdiffs (no lists yet)")
    print(f"rounds: {args.rounds}, contenders: {', '.join(contenders)}, order rotating\n")

    workdir = Path(tempfile.mkdtemp(prefix="dhtdeb-bench-update-"))
    bench = Bench(sources, arch, args.languages, workdir, args.keep, args.dhtdeb_tree)
    try:
        for round_, order in enumerate(proxy_bench.round_orders(args.rounds, contenders), start=1):
            print(f"round {round_}: {' -> '.join(order)}", flush=True)
            bench.run_round(round_, order)
    finally:
        if args.keep:
            print(f"work dir kept: {workdir} (holds the mirror's name: do not copy it into git)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(bench, args.rounds, contenders)
    print(
        f"\ntotal wall time {time.monotonic() - started:.0f} s, "
        f"load average at the end {os.getloadavg()[0]:.2f}"
    )
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
