"""The swarm core's vocabulary: the sources of pieces, its configuration, and the actions it asks
its driver to carry out (dhtdeb/swarm/scheduler.py decides them; dhtdeb/swarm/download.py, the
asyncio driver, and the crowd simulation carry them out).

Owns: nothing but these value types. Each action is frozen and compared by the fields that name
what to do, so that exact-action tests can write them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from dhtdeb.discovery import Peer

AUDIT_BLOCK = 16 * 1024  # bytes of a held piece compared with the mirror to check a lone list


class MirrorSource:
    """The upstream mirror as a piece source; `MIRROR` is its only instance."""

    _instance: MirrorSource | None = None

    def __new__(cls) -> MirrorSource:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MIRROR"


MIRROR = MirrorSource()
Source: TypeAlias = Peer | MirrorSource


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_requests_per_peer: int = 4
    piece_lists_wanted: int = 2
    min_piece_timeout: float = 2.0
    overdue_factor: float = 4.0
    default_rate: float = 4 * 1024 * 1024
    # The per-request pace the deadlines of a peer's first requests assume, before it has
    # delivered anything (`default_rate` only ranks such a peer). Its first requests share its
    # uplink, up to `max_requests_per_peer` at once: a home uplink of 8 Mbit/s serving four 1 MiB
    # pieces needs 4 s for each. With `default_rate`'s deadlines (the 2 s floor) they went
    # overdue and the mirror took the file: in the 300-node simulation 678 MB of the 12.9 GB
    # fetched went to the mirror that way while a reachable peer held the file, 336 MB with this.
    first_request_rate: float = 1024 * 1024
    rate_smoothing: float = 0.3
    max_peers: int = 64
    max_mirror_restarts: int = 2
    offers_refresh: float = 1.0  # seconds between two asks to a peer that is still downloading
    fetch_claim_ttl: float = 8.0  # how long a peer's "fetching from the mirror" keeps us away
    busy_backoff: float = 0.5  # seconds before asking a peer again that was at its upload limit
    # Seconds of "busy" answers before the mirror takes the piece. Long: in a crowd every holder
    # is busy by design, and the mirror is what the crowd shares.
    busy_overdue: float = 8.0
    # After a whole-file mismatch with pieces taken on offers in the file (inquiry.py): bytes
    # per sampled block, blocks per author, whole pieces checked at once.
    check_block: int = AUDIT_BLOCK
    check_samples: int = 3
    check_parallel: int = 2

    def __post_init__(self) -> None:
        if self.max_requests_per_peer < 1 or self.piece_lists_wanted < 1 or self.max_peers < 1:
            raise ValueError("request, list and peer limits must be at least 1")
        if not 0.0 < self.rate_smoothing <= 1.0:
            raise ValueError("rate_smoothing must be in (0, 1]")
        if self.default_rate <= 0 or self.first_request_rate <= 0:
            raise ValueError("rates must be positive")
        if self.overdue_factor <= 0 or self.min_piece_timeout < 0:
            raise ValueError("the overdue factor must be positive, the timeout not negative")
        if self.max_mirror_restarts < 0:
            raise ValueError("max_mirror_restarts must be >= 0")


DEFAULT_CONFIG = SchedulerConfig()


@dataclass(frozen=True, slots=True)
class RequestPieceList:
    peer: Peer


@dataclass(frozen=True, slots=True)
class RequestPiece:
    peer: Peer
    index: int


@dataclass(frozen=True, slots=True)
class StartMirror:
    first: int
    why: str = field(default="", compare=False)  # for the log: what the mirror is needed for


@dataclass(frozen=True, slots=True)
class AuditPiece:
    """Fetch bytes [start, end) of the file from the mirror and compare them with the held copy
    of piece `index` whose digest is `digest`; report with `audit_result` or `audit_failed`."""

    index: int
    start: int
    end: int
    digest: bytes = field(compare=False)


@dataclass(frozen=True, slots=True)
class CheckPiece:
    """After a whole-file mismatch: fetch bytes [start, end) of the file from the mirror and
    compare them with the accepted copy of piece `index`; report with `check_result` (or
    `check_failed`), passing this action back."""

    index: int
    start: int
    end: int
    whole: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class RetractPiece:
    """The provisional copy of piece `index` was taken on the word of a peer now convicted of a
    lie: it is missing again. The driver forgets it (never serves it, nor lets apt read it) and
    hashes the whole file again once it is complete."""

    index: int


@dataclass(frozen=True, slots=True)
class ConfirmPiece:
    """A provisional piece matched the mirror in full: it is on nobody's word any more."""

    index: int


@dataclass(frozen=True, slots=True)
class CancelPiece:
    peer: Peer
    index: int


@dataclass(frozen=True, slots=True)
class AcceptPiece:
    index: int
    # The digest of the accepted copy: the list's entry, or the mirror's digest when no list is in
    # use. Not part of equality, so that scripted tests can name just the index.
    digest: bytes = field(default=b"", compare=False)
    # Accepted on the word of one downloading peer (its offer): the driver must not let apt or
    # other peers see it before the whole-file SHA256 has matched.
    provisional: bool = False


@dataclass(frozen=True, slots=True)
class BanPeer:
    peer: Peer
    reason: str
    lied: bool


@dataclass(frozen=True, slots=True)
class Finished:
    pass


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str


# The mirror stream's answers (mirror_plan.py, "The stream"): returned by the stream's events,
# never queued for poll_actions().


@dataclass(frozen=True, slots=True)
class MirrorWindow:
    """Request pieces first..last from the mirror in one request (a range of their bytes)."""

    first: int
    last: int

    @property
    def fetching(self) -> range:
        """What the stream is fetching while the request is on its way, as told to other
        downloaders: its first piece (ReadMirrorPiece says more once the mirror answers)."""
        return range(self.first, self.first + 1)


@dataclass(frozen=True, slots=True)
class ReadMirrorPiece:
    """Read piece `index` from the open request. `going_on`: the stream means to go on into
    the next piece of the request (told to other downloaders with `fetching`). While fewer
    than `watch` bytes of the piece have come, report `mirror_piece_progress` after each
    block read (the piece may still be given up); then read the rest at once."""

    index: int
    going_on: bool
    watch: int = field(default=0, compare=False)

    @property
    def fetching(self) -> range:
        """The pieces the stream is fetching, as told to other downloaders."""
        return range(self.index, self.index + 1 + self.going_on)


@dataclass(frozen=True, slots=True)
class GiveUpMirrorPiece:
    """Drop the stream's request on piece `index`: a downloader before this node in the
    piece's rendezvous order is fetching it too and will offer it. Report `mirror_stopped`."""

    index: int


@dataclass(frozen=True, slots=True)
class StopMirror:
    """End the stream: the mirror is not needed for the next piece. Report `mirror_stopped`."""


MirrorStep: TypeAlias = MirrorWindow | ReadMirrorPiece | GiveUpMirrorPiece | StopMirror


Action: TypeAlias = (
    AuditPiece
    | RequestPieceList
    | RequestPiece
    | StartMirror
    | CancelPiece
    | CheckPiece
    | RetractPiece
    | ConfirmPiece
    | AcceptPiece
    | BanPeer
    | Finished
    | Failed
)
