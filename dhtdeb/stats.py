"""Counters that /status.json and /metrics report. Plain integers, bumped by the components.

Also the one histogram kind /metrics needs (`Histogram`: DHT lookup durations): fixed buckets,
bumped by the DHT engine, read by dhtdeb/metrics.py. No prometheus-client here: the components
count, and only metrics.py knows how Prometheus wants it written.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field


@dataclass(slots=True)
class ByteCounters:
    from_peers: int = 0
    from_mirror: int = 0
    to_apt: int = 0
    to_peers: int = 0


@dataclass(slots=True)
class RequestCounters:
    cache_hits: int = 0
    from_peers: int = 0
    from_mirror: int = 0
    passed_through: int = 0
    refused: int = 0
    read_ahead: int = 0  # downloads started for requests apt pipelined behind another
    stale_releases: int = 0  # InReleases answered from the kept copy: the mirror was down


@dataclass(slots=True)
class VerifyFailures:
    signature: int = 0
    index: int = 0
    peer: int = 0
    mirror: int = 0


@dataclass(slots=True)
class BanCounters:
    lied: int = 0  # a proven lie (bad piece, list or offer): an hour
    misbehaved: int = 0  # wrong size, stall, malformed, or a suspect nobody could clear: 10 min


@dataclass(slots=True)
class InquiryCounters:
    """Whole-file mismatches with pieces taken on offers (swarm/inquiry.py)."""

    opened: int = 0
    retracted_pieces: int = 0  # taken on a convicted liar's word, fetched again
    check_bytes: int = 0  # asked of the mirror to find the liar


@dataclass(slots=True)
class DownloadCounters:
    """Downloads of verified files (index and pool files) the store did not hold: cache misses.
    A request that joins a running download of the same file is not counted again."""

    started: int = 0
    failed: int = 0  # ended without a stored file (mirror refused or down, bad bytes, disk)


@dataclass(slots=True)
class Counters:
    bytes: ByteCounters = field(default_factory=ByteCounters)
    requests: RequestCounters = field(default_factory=RequestCounters)
    verify_failures: VerifyFailures = field(default_factory=VerifyFailures)
    bans: BanCounters = field(default_factory=BanCounters)
    inquiries: InquiryCounters = field(default_factory=InquiryCounters)
    downloads: DownloadCounters = field(default_factory=DownloadCounters)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return asdict(self)


# Why a DHT lookup runs (the label of its count and duration): finding the holders of a file,
# finding the nodes to announce a file to, or finding nodes (joining, refreshing buckets).
LOOKUP_PURPOSES = ("find_peers", "announce", "find_node")
# Seconds, 1 ms to 10 s: a LAN lookup answers in a few ms, one with a dead node in it waits for
# the RPC timeout (1 s), and find_peers gives up at its deadline (5 s in the proxy's /peers page).
LOOKUP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True)
class Histogram:
    """Observations counted in buckets with upper bounds `bounds` (inclusive, as Prometheus'
    `le`); `counts[i]` are those in bucket i alone, `counts[-1]` those above every bound."""

    bounds: tuple[float, ...] = LOOKUP_BUCKETS
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0

    def __post_init__(self) -> None:
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError("histogram bounds must be increasing")
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), the last bound being +inf."""
        running = 0
        buckets = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.sum)
