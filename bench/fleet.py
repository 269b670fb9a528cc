"""Benchmark: a fleet's `apt-get upgrade` through dhtdeb vs apt straight to the mirror (issue 11).

Namespace hosts of the fleet harness (tests/fleet/): each machine has its own address and runs
`dhtdeb serve` with default settings on the default ports, joined as README's "A fleet" says (host
1 first, the others `--bootstrap` it); real apt-get `update` + `--download-only -y upgrade` of every
package of a Debian-shaped archive (Debian's size distribution); the mirror's link capped with tbf
(default 12.5 MB/s, a 100 Mbit/s office line), the LAN uncapped. The scenarios are those of
tests/fleet/scenarios.py, which the tests assert on; here they are timed and compared.

  direct     the reference, in every round: one host, no daemon, apt straight to the mirror.
  staggered  N hosts (default 8) upgrade one after another (the next starts when the previous
             finished and its daemon announced what it stored). Printed: mirror .deb bytes /
             unique .deb bytes (target <= 1.02), each later host's download time / direct
             (target <= 0.8), the first host's / direct (target <= 1.10).
  classroom  N hosts start the same upgrade at the same moment. Printed: mirror .deb bytes /
             unique (target <= 1.3), time until all are done / direct (target <= 2.0).
  first-host every daemon up, only host 1 upgrades: nobody to find, so this is what the DHT
             (lookups raced by the mirror, announces) costs a lone host. Issue 12's third row:
             `--only first-host --hosts 3 --mirror-rate 0 --packages 200` (mirror uncapped).
             Printed: host 1 / direct (target <= 1.10) and the added seconds per file.

    .venv/bin/python bench/fleet.py [--rounds 3] [--hosts 8] [--packages 300]
        [--only staggered|classroom ...] [--seed S] [--mirror-rate 12500000] [--keep]

Times are apt-get upgrade's wall time (the update before it is printed apart); figures are medians
over rounds of per-round ratios. Needs root (network namespaces). Not a test: targets are printed,
not asserted; the exit status is 1 only when a host ended with a wrong or missing file or a step
failed. bench/README.md has the details.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
# tests/ first: this script is bench/fleet.py, and `import fleet` must find the harness package
# tests/fleet/, not this file (Python puts the script's own directory on sys.path).
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import proxy as proxy_bench  # noqa: E402  (bench/proxy.py: fmt_bytes, source_state, round_orders)
from fleet import ArchiveSpec, Fleet, FleetArchive, build_archive  # noqa: E402
from fleet.archive import KEY_NAMES  # noqa: E402
from fleet.scenarios import (  # noqa: E402
    ScenarioResult,
    classroom,
    direct,
    first_host,
    staggered,
)

DEFAULT_SEED = 20260601
DEFAULT_ROUNDS = 3
DEFAULT_HOSTS = 8
DEFAULT_PACKAGES = 300
DEFAULT_MIRROR_RATE = 12_500_000  # bytes/s: 100 Mbit/s
APT_TIMEOUT = 1800.0
TARGET_STAGGERED_MIRROR = 1.02
TARGET_LATER_HOST = 0.8
TARGET_FIRST_HOST = 1.10
TARGET_CLASSROOM_MIRROR = 1.3
TARGET_CLASSROOM_TIME = 2.0
# Two hosts with an older keyring (one of the three signing keys missing), as in a real fleet.
HOST_KEYS = {2: (KEY_NAMES[0], KEY_NAMES[1]), 5: (KEY_NAMES[0], KEY_NAMES[2])}

DIRECT, STAGGERED, CLASSROOM, FIRST = "direct", "staggered", "classroom", "first-host"
SCENARIOS = (STAGGERED, CLASSROOM, FIRST)
DEFAULT_SCENARIOS = (STAGGERED, CLASSROOM)
fmt_bytes = proxy_bench.fmt_bytes


@dataclass
class Round:
    number: int
    results: dict[str, ScenarioResult] = field(default_factory=dict)

    @property
    def direct_seconds(self) -> float:
        return self.results[DIRECT].hosts[0].seconds


@dataclass
class Bench:
    archive: FleetArchive
    hosts: int
    mirror_rate: int
    seed: int
    keep: Path | None
    failures: list[str] = field(default_factory=list)

    def play(self, name: str, round_: int) -> ScenarioResult:
        """One scenario on a fresh fleet (new namespaces, state dirs, apt dirs)."""
        count = 1 if name == DIRECT else self.hosts
        workdir = None if self.keep is None else self.keep / f"round{round_}-{name}"
        keys = {n: k for n, k in HOST_KEYS.items() if n <= count}
        started = time.monotonic()
        with Fleet(
            self.archive,
            workdir,
            hosts=count,
            mirror_rate=self.mirror_rate or None,
            host_keys=keys,
        ) as fleet:
            play: Callable[..., ScenarioResult] = {
                DIRECT: direct,
                STAGGERED: staggered,
                CLASSROOM: classroom,
                FIRST: first_host,
            }[name]
            result = play(fleet, seed=self.seed, apt_timeout=APT_TIMEOUT)
        wrong = [h.name for h in result.hosts if not h.correct]
        if wrong:
            detail = "; ".join(f"{h.name}: {h.problem[-600:]}" for h in result.hosts if h.problem)
            self.failures.append(f"round {round_} {name}: wrong files on {wrong}: {detail}")
        print(
            f"  {name:<9} {time.monotonic() - started:6.1f} s on the clock; wall "
            f"{result.wall:6.2f} s, mirror .deb {result.mirror_ratio:.3f}x unique"
            + (f", WRONG files on {', '.join(wrong)}" if wrong else ""),
            flush=True,
        )
        return result


def verdict(value: float, target: float, below: bool = True) -> str:
    met = value <= target if below else value >= target
    return f"(target {'<=' if below else '>='} {target:.2f}: {'met' if met else 'MISSED'})"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def spread(values: Sequence[float], digits: int = 3) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


# --- reports --------------------------------------------------------------------------------------


def report_direct(rounds: Sequence[Round]) -> None:
    times = [r.direct_seconds for r in rounds]
    one = rounds[0].results[DIRECT]
    print(
        f"\n== direct: one host, apt straight to the mirror: upgrade median {median(times):.2f} s "
        f"(rounds: {spread(times, 2)}), {fmt_bytes(one.unique_deb / median(times))}/s; "
        f"update {median([r.results[DIRECT].hosts[0].update_seconds for r in rounds]):.2f} s"
    )


def host_table(results: Sequence[ScenarioResult], direct_times: Sequence[float]) -> None:
    """Per host, medians over rounds."""
    print(
        f"  {'host':<4} {'keys':>4} {'start s':>8} {'apt s':>7} {'/direct':>8} {'update s':>8} "
        f"{'waited s':>8} {'mirror .deb':>12} {'from peers':>11} {'from mirror':>12} "
        f"{'to peers':>10}"
    )
    for i, first in enumerate(results[0].hosts):
        cells = [r.hosts[i] for r in results]
        ratio = median([c.seconds / d for c, d in zip(cells, direct_times, strict=True)])
        print(
            f"  {first.name:<4} {len(first.keys):>4} {median([c.started for c in cells]):>8.1f} "
            f"{median([c.seconds for c in cells]):>7.2f} {ratio:>8.2f} "
            f"{median([c.update_seconds for c in cells]):>8.2f} "
            f"{median([c.waited for c in cells]):>8.2f} "
            f"{fmt_bytes(median([c.mirror_deb for c in cells])):>12} "
            f"{fmt_bytes(median([c.from_peers for c in cells])):>11} "
            f"{fmt_bytes(median([c.from_mirror for c in cells])):>12} "
            f"{fmt_bytes(median([c.to_peers for c in cells])):>10}"
        )


def report_findings(results: Sequence[ScenarioResult]) -> None:
    for r, result in enumerate(results, 1):
        for note in result.notes:
            print(f"  round {r} note: {note}")
        for line in result.log_lines[:12]:
            print(f"  round {r} daemon log: {line[:300]}")
        if len(result.log_lines) > 12:
            print(
                f"  round {r} daemon log: … {len(result.log_lines) - 12} more WARNING/ERROR lines"
            )


def report_staggered(rounds: Sequence[Round]) -> None:
    results = [r.results[STAGGERED] for r in rounds]
    direct_times = [r.direct_seconds for r in rounds]
    first = results[0]
    count = len(first.hosts)
    print(
        f"\n== staggered: {count} hosts upgrade one after another, {first.packages} packages "
        f"({fmt_bytes(first.unique_deb)}), mirror capped, LAN uncapped"
    )
    ratios = [r.mirror_ratio for r in results]
    print(
        f"mirror .deb bytes / unique: median {median(ratios):.3f} "
        f"{verdict(median(ratios), TARGET_STAGGERED_MIRROR)} (rounds: {spread(ratios)}; "
        f"{count} direct hosts would cost {count:.2f})"
    )
    links = [r.results[STAGGERED].mirror_link / r.results[DIRECT].mirror_link for r in rounds]
    print(
        f"  what left the mirror's link / what it took for one direct host: median "
        f"{median(links):.3f} {verdict(median(links), TARGET_STAGGERED_MIRROR)} "
        f"(rounds: {spread(links)})"
    )
    later_first = [r.hosts[1].mirror_deb for r in results] if count > 1 else [0]
    later_rest = [sum(h.mirror_deb for h in r.hosts[2:]) for r in results]
    index = median([r.mirror.index for r in results])
    print(
        f"  of which host 1: {fmt_bytes(median([r.hosts[0].mirror_deb for r in results]))}, "
        f"host 2: {fmt_bytes(median(later_first))}, hosts 3..{count}: "
        f"{fmt_bytes(median(later_rest))}; index bytes {fmt_bytes(index)}"
    )
    firsts = [r.hosts[0].seconds / d for r, d in zip(results, direct_times, strict=True)]
    print(
        f"host 1 (nobody to share with) / direct: median {median(firsts):.3f} "
        f"{verdict(median(firsts), TARGET_FIRST_HOST)} (rounds: {spread(firsts)})"
    )
    per_host = []
    for i in range(1, count):
        values = [r.hosts[i].seconds / d for r, d in zip(results, direct_times, strict=True)]
        per_host.append(median(values))
        print(
            f"host {i + 1} / direct: median {median(values):.3f} "
            f"{verdict(median(values), TARGET_LATER_HOST)} (rounds: {spread(values)})"
        )
    if per_host:
        worst = max(per_host)
        print(
            f"each later host / direct: worst host's median {worst:.3f} "
            f"{verdict(worst, TARGET_LATER_HOST)}; median of all later hosts "
            f"{median(per_host):.3f}"
        )
    print(
        f"  CPU busy during the upgrades: median {median([r.cpu_busy for r in results]):.0%} of "
        f"{os.cpu_count()} cores"
    )
    print("per host (medians over rounds; /direct = its apt time over the same round's direct):")
    host_table(results, direct_times)
    report_findings(results)


def report_classroom(rounds: Sequence[Round]) -> None:
    results = [r.results[CLASSROOM] for r in rounds]
    direct_times = [r.direct_seconds for r in rounds]
    first = results[0]
    count = len(first.hosts)
    print(
        f"\n== classroom: {count} hosts start the same upgrade at once, {first.packages} "
        f"packages ({fmt_bytes(first.unique_deb)})"
    )
    ratios = [r.mirror_ratio for r in results]
    print(
        f"mirror .deb bytes / unique: median {median(ratios):.3f} "
        f"{verdict(median(ratios), TARGET_CLASSROOM_MIRROR)} (rounds: {spread(ratios)}; "
        f"mirror-only {count:.2f})"
    )
    links = [r.results[CLASSROOM].mirror_link / r.results[DIRECT].mirror_link for r in rounds]
    print(
        f"  what left the mirror's link / what it took for one direct host: median "
        f"{median(links):.3f} {verdict(median(links), TARGET_CLASSROOM_MIRROR)} "
        f"(rounds: {spread(links)}; the mirror counts a chunk once its socket took it, and a "
        "stream a daemon cuts short leaves counted bytes unsent)"
    )
    one = [r.one_piece_ratio for r in results]
    multi = [r.multi_piece_ratio for r in results]
    print(
        f"  one-piece files (<= 1 MiB, {fmt_bytes(first.unique_one_piece)}): median "
        f"{median(one):.2f}x; multi-piece files: median {median(multi):.2f}x"
    )
    times = [r.wall / d for r, d in zip(results, direct_times, strict=True)]
    print(
        f"time until all {count} are done / one host alone from the mirror (direct): median "
        f"{median(times):.3f} {verdict(median(times), TARGET_CLASSROOM_TIME)} "
        f"(rounds: {spread(times)}; mirror-only ~{count})"
    )
    print(
        f"  all done: median {median([r.wall for r in results]):.2f} s; direct "
        f"{median(direct_times):.2f} s; CPU busy during the upgrades: median "
        f"{median([r.cpu_busy for r in results]):.0%} of {os.cpu_count()} cores (direct "
        f"{median([r.results[DIRECT].cpu_busy for r in rounds]):.0%})"
    )
    for number, result in enumerate(results, 1):
        done = " ".join(f"{h.seconds:.1f}" for h in sorted(result.hosts, key=lambda h: h.seconds))
        print(f"  round {number} completion times (s, sorted): {done}")
    print("per host (medians over rounds):")
    host_table(results, direct_times)
    report_findings(results)


def report_first_host(rounds: Sequence[Round]) -> None:
    results = [r.results[FIRST] for r in rounds]
    direct_times = [r.direct_seconds for r in rounds]
    first = results[0]
    print(
        f"\n== first host: {len(rounds[0].results[FIRST].hosts)} of the fleet's daemons "
        f"upgrading, nobody holds anything, {first.packages} packages "
        f"({fmt_bytes(first.unique_deb)})"
    )
    ratios = [r.hosts[0].seconds / d for r, d in zip(results, direct_times, strict=True)]
    extra = [
        (r.hosts[0].seconds - d) / r.packages * 1000
        for r, d in zip(results, direct_times, strict=True)
    ]
    print(
        f"host 1 / direct: median {median(ratios):.3f} {verdict(median(ratios), TARGET_FIRST_HOST)}"
        f" (rounds: {spread(ratios)}); {median([r.hosts[0].seconds for r in results]):.2f} s vs "
        f"direct {median(direct_times):.2f} s; added per file: median {median(extra):.1f} ms"
    )
    report_findings(results)


# --- main -----------------------------------------------------------------------------------------


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the fleets' teardown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--hosts", type=int, default=DEFAULT_HOSTS)
    parser.add_argument("--packages", type=int, default=DEFAULT_PACKAGES)
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="repeatable")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--max-size",
        type=int,
        help="bytes: no .deb larger (default: the harness's, 32 MiB; 1048576: small packages only)",
    )
    parser.add_argument(
        "--mirror-rate",
        type=int,
        default=DEFAULT_MIRROR_RATE,
        help="bytes/s of the mirror link (0: uncapped)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep every fleet's directory (daemon logs)"
    )
    args = parser.parse_args()
    if args.hosts < 2:
        parser.error("--hosts must be at least 2")
    chosen = [s for s in SCENARIOS if (s in args.only if args.only else s in DEFAULT_SCENARIOS)]
    signal.signal(signal.SIGTERM, _terminate)

    started = time.monotonic()
    spec = ArchiveSpec(packages=args.packages, seed=args.seed)
    if args.max_size:
        spec = dataclasses.replace(spec, max_size=args.max_size)
    archive = build_archive(OUT / "fleet-archives", spec)
    sizes = sorted(p.size for p in archive.packages)
    print(
        f"machine: nproc {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, "
        f"{platform.machine()}, Python {platform.python_version()}"
    )
    print(
        f"archive: seed {args.seed}, {len(sizes)} packages, {fmt_bytes(sum(sizes))} (median "
        f"{fmt_bytes(sizes[len(sizes) // 2])}, largest {fmt_bytes(sizes[-1])}, "
        f"{sum(s > 2**20 for s in sizes)} over 1 MiB, {sum(s > 10 * 2**20 for s in sizes)} over "
        f"10 MiB); {archive.root.parent.relative_to(ROOT)}"
    )
    print(
        f"daemons: `python -m dhtdeb serve` from {ROOT} ({proxy_bench.source_state(ROOT)}), "
        f"default settings; fleet: {args.hosts} hosts, mirror "
        + (f"{args.mirror_rate / 1e6:.1f} MB/s (tbf)" if args.mirror_rate else "uncapped")
        + f", LAN uncapped; hosts {sorted(HOST_KEYS)} trust two of the three keys"
    )
    print(f"rounds: {args.rounds}, scenarios: direct + {', '.join(chosen)}\n", flush=True)

    keep = Path(tempfile.mkdtemp(prefix="dhtdeb-bench-fleet-")) if args.keep else None
    bench = Bench(archive, args.hosts, args.mirror_rate, args.seed, keep)
    rounds: list[Round] = []
    try:
        orders = proxy_bench.round_orders(args.rounds, [DIRECT, *chosen])
        for number, order in enumerate(orders, 1):
            print(f"round {number}: {', '.join(order)}", flush=True)
            current = Round(number)
            for name in order:
                current.results[name] = bench.play(name, number)
            rounds.append(current)
    except Exception as exc:  # report what was measured before the failure
        print(f"aborted: {type(exc).__name__}: {exc}")
        bench.failures.append(f"aborted: {type(exc).__name__}: {exc}")
    finally:
        if keep is not None:
            print(f"fleet directories kept (daemon logs in */h*/state/daemon.log): {keep}")
    if rounds:
        report_direct(rounds)
        if STAGGERED in chosen:
            report_staggered(rounds)
        if CLASSROOM in chosen:
            report_classroom(rounds)
        if FIRST in chosen:
            report_first_host(rounds)
    print("\ncorrectness")
    if bench.failures:
        for failure in bench.failures:
            print(f"  FAILED: {failure}")
    else:
        print("  every host ended with exactly the archive's files, each with its SHA256")
    print(
        f"\ntotal wall time {time.monotonic() - started:.0f} s, seed {args.seed}, "
        f"load average at the end {os.getloadavg()[0]:.2f}"
    )
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
