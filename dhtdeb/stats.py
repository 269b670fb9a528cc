"""Counters that /status.json and /metrics report. Plain integers, bumped by the components."""

from __future__ import annotations

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
class Counters:
    bytes: ByteCounters = field(default_factory=ByteCounters)
    requests: RequestCounters = field(default_factory=RequestCounters)
    verify_failures: VerifyFailures = field(default_factory=VerifyFailures)
    bans: BanCounters = field(default_factory=BanCounters)
    inquiries: InquiryCounters = field(default_factory=InquiryCounters)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return asdict(self)
