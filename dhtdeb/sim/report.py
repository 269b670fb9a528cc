"""What a simulation run measured: counters while it runs, and the JSON report.

Owns: the byte and file counters (bytes of accepted pieces by source, bytes moved by the mirror
and by peers including waste, files requested, finished, failed or abandoned), each finished
file's stretch (its time over the mirror alone's: what the offload costs apt), the record of first
lookups, the mirror's bytes over virtual time and the DHT's datagram bytes. Trusts: its callers.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dhtdeb.sim.download import SimDownload

SERIES_STEP = 300.0  # seconds per bucket of the mirror's bytes over time
LOOKUP_STEP = 0.01  # seconds per bucket of the lookup durations


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Tally:
    start: float = 0.0  # virtual time at which the workload window opens
    files_requested: int = 0
    files_finished: int = 0
    files_failed: int = 0
    files_abandoned: int = 0  # its node went offline first
    wrong_pieces: int = 0  # accepted pieces whose digest is not the true one (must stay 0)
    bytes_requested: int = 0  # of finished files
    bytes_from_peers: int = 0  # accepted pieces, by who sent them
    bytes_from_mirror: int = 0
    mirror_moved: int = 0  # every byte the mirror sent (audits, duplicates, cut transfers)
    peer_moved: int = 0
    bans: int = 0
    connect_timeouts: int = 0  # requests to peers nobody can connect to (NAT, gone)
    batches: list[int] = field(default_factory=list)
    queued: int = 0  # files of running batches not yet through apt's pipeline (files_queued)
    not_started: int = 0  # files of batches dropped before their turn: the machine left
    # First lookup of each download while some other online node had held the file for a while:
    # (virtual seconds, found a holder).
    lookups: list[tuple[float, bool]] = field(default_factory=list)
    lookups_without_holder: int = 0
    mirror_series: Counter[int] = field(default_factory=Counter)
    dht_counters: Counter[str] = field(default_factory=Counter)
    online_seconds: float = 0.0
    # Ceilings on offload (see `report`): bytes of finished copies that no scheme could have
    # taken from peers, by each of two rules.
    first_copy_bytes: int = 0  # the first finished copy of each file
    before_reachable_bytes: int = 0  # copies finished before a reachable machine had one
    # Mirror bytes of finished files by what their first mirror stream was for, and whether a
    # reachable machine held the file when the download started.
    mirror_reasons: Counter[str] = field(default_factory=Counter)
    stretches: list[float] = field(default_factory=list)  # of finished files: SimDownload.stretch
    _finished_files: set[str] = field(default_factory=set)
    _reachable_holders: set[str] = field(default_factory=set)
    now: float = 0.0  # set by the world before each count (the loop's time)

    @property
    def running(self) -> int:
        """Files asked for that have not ended (finished, failed or abandoned) yet."""
        ended = self.files_finished + self.files_failed + self.files_abandoned
        return self.files_requested - ended

    def requested(self, size: int) -> None:
        self.files_requested += 1

    def finished(self, download: SimDownload, ok: bool) -> None:
        if not ok:
            self.files_failed += 1
            return
        self.files_finished += 1
        self.bytes_requested += download.size
        self.stretches.append(download.stretch())
        if download.from_mirror:
            reason = _reason(download.mirror_reason)
            held = "reachable holder" if download.reachable_holder else "no reachable holder"
            self.mirror_reasons[f"{reason}; {held}"] += download.from_mirror
        sha256 = download.sha256
        if sha256 not in self._finished_files:
            self._finished_files.add(sha256)
            self.first_copy_bytes += download.size
        if sha256 not in self._reachable_holders:
            self.before_reachable_bytes += download.size
            if not download.node.plan.nat:
                self._reachable_holders.add(sha256)
        self.bytes_from_peers += download.from_peers
        self.bytes_from_mirror += download.from_mirror
        self.wrong_pieces += download.wrong_digests

    def abandoned(self, download: SimDownload) -> None:
        self.files_abandoned += 1

    def peer_sent(self, count: int) -> None:
        self.peer_moved += count

    def mirror_sent(self, now: float, count: int) -> None:
        self.mirror_moved += count
        self.mirror_series[int((now - self.start) // SERIES_STEP)] += count

    def lookup(self, seconds: float, announced: bool, found: bool) -> None:
        """A first lookup: its time, whether a holder had announced the file a while before it
        started (else it counts apart), and whether it found one."""
        if not announced:
            self.lookups_without_holder += 1
            return
        self.lookups.append((seconds, found))

    def dht_left(self, counters: dict[str, int]) -> None:
        self.dht_counters.update(counters)


def _reason(why: str | None) -> str:
    """A mirror stream's reason (swarm/mirror_plan.py) without its counts."""
    if why is None:
        return "unrecorded"
    if why.startswith("nobody has it") or why == "nobody else has it":
        return "nobody has it"
    return why


def _share(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def histogram(values: list[float], step: float) -> list[int]:
    counts: Counter[int] = Counter(int(v // step) for v in values)
    return [counts.get(i, 0) for i in range(max(counts, default=-1) + 1)]


def report(
    tally: Tally,
    *,
    nodes: int,
    seed: int,
    hours: float,
    params: dict[str, Any],
    wall: float,
    cpu: float,
) -> dict[str, Any]:
    """The JSON report (docs/simulation.md lists the fields)."""
    durations = [seconds for seconds, _ in tally.lookups]
    found = sum(1 for _, ok in tally.lookups if ok)
    requested = tally.bytes_requested
    dht_bytes = tally.dht_counters.get("bytes_sent", 0)
    series = [
        tally.mirror_series.get(i, 0) for i in range(max(tally.mirror_series, default=-1) + 1)
    ]
    return {
        "nodes": nodes,
        "seed": seed,
        "virtual_hours": hours,
        "offload": _share(tally.bytes_from_peers, requested),
        "offload_ceiling": _share(requested - tally.first_copy_bytes, requested),
        "offload_ceiling_nat": _share(requested - tally.before_reachable_bytes, requested),
        "lookup_success": round(found / len(tally.lookups), 6) if tally.lookups else 0.0,
        "lookup_p50_s": round(percentile(durations, 0.50), 6),
        "lookup_p95_s": round(percentile(durations, 0.95), 6),
        "lookup_histogram": {"step_s": LOOKUP_STEP, "counts": histogram(durations, LOOKUP_STEP)},
        "lookups_with_holder": len(tally.lookups),
        "lookups_without_holder": tally.lookups_without_holder,
        "download_stretch_p50": round(percentile(tally.stretches, 0.50), 3),
        "download_stretch_p95": round(percentile(tally.stretches, 0.95), 3),
        "upkeep_bytes_per_s_per_node": (
            round(dht_bytes / tally.online_seconds, 3) if tally.online_seconds else 0.0
        ),
        "mirror_bytes_per_node": round(tally.mirror_moved / nodes, 1),
        "bytes_requested": requested,
        "bytes_from_peers": tally.bytes_from_peers,
        "bytes_from_mirror": tally.bytes_from_mirror,
        "bytes_mirror_sent": tally.mirror_moved,
        "bytes_peers_sent": tally.peer_moved,
        "files_requested": tally.files_requested,
        "files_finished": tally.files_finished,
        "files_failed": tally.files_failed,
        "files_abandoned": tally.files_abandoned,
        "files_not_started": tally.not_started,
        "wrong_pieces": tally.wrong_pieces,
        "bans": tally.bans,
        "peer_connect_timeouts": tally.connect_timeouts,
        "batch_files_p50": percentile([float(b) for b in tally.batches], 0.5),
        "batch_files_max": max(tally.batches, default=0),
        "dht_datagrams": {
            key: tally.dht_counters[key]
            for key in sorted(tally.dht_counters)
            if key.startswith(("lookups_", "requests_", "announces_", "datagrams_", "dial_tests_"))
            or key in ("bytes_sent", "timeouts", "rate_limited", "batched_requests")
        },
        "mirror_bytes_series": {"step_s": SERIES_STEP, "bytes": series},
        "mirror_bytes_by_reason": dict(sorted(tally.mirror_reasons.items())),
        "params": params,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
    }


# The fields of a report that measure the machine, not the simulation: two runs of one seed and
# the same parameters differ in these alone.
TIMINGS = ("wall_s", "cpu_s")


def without_timings(result: dict[str, Any]) -> dict[str, Any]:
    """The report minus its `TIMINGS`: what two runs of one seed must agree on."""
    return {key: value for key, value in result.items() if key not in TIMINGS}


TARGETS = {1_000: 240.0, 10_000: 600.0}  # nodes -> wall seconds (issue 15)


def targets_line(result: dict[str, Any]) -> str:
    """The issue's targets and how this run stands against them (printed, never asserted)."""
    nodes = result["nodes"]
    wall_target = next((t for n, t in sorted(TARGETS.items()) if nodes <= n), None)
    checks = [
        (
            "offload",
            result["offload"] >= 0.8,
            f"{result['offload']:.3f} (>= 0.8; this workload's ceiling"
            f" {result['offload_ceiling']:.3f}, with its NAT {result['offload_ceiling_nat']:.3f})",
        ),
        ("lookup p95", result["lookup_p95_s"] <= 1.0, f"{result['lookup_p95_s']:.3f} s (<= 1)"),
        (
            "lookup success",
            result["lookup_success"] >= 0.99,
            f"{result['lookup_success']:.3f} (>= 0.99)",
        ),
    ]
    if wall_target is not None:
        checks.append(
            (
                "wall",
                result["wall_s"] <= wall_target,
                f"{result['wall_s']:.0f} s (<= {wall_target:.0f})",
            )
        )
    return "; ".join(f"{name} {text} {'met' if ok else 'MISSED'}" for name, ok, text in checks)
