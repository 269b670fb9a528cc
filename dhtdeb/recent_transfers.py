"""Recent transfers: the last files this daemon fetched for apt or served from its store, and
where their bytes came from (peers, the mirror, or the store: a cache hit).

Owns: a bounded ring of `TransferRecord`s, newest last, the oldest dropped once it is full; what
/status.json's "transfers", `dhtdeb status` and the dashboard list. A synchronous core: a record
carries times on the daemon's monotonic clock (`now`, given by the caller), and `as_dicts` turns
them into Unix times with one offset the daemon fixes at start, so two reads of an unchanged ring
are equal. Trusts nothing it records and checks nothing: URLs are apt's and peer addresses come
from the DHT, so whoever shows them escapes them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

RECENT_TRANSFERS = 20  # records kept (and shown)


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """One file fetched (a download, ended stored or failed) or served from the store (`hit`).

    `url` is the URL the archive index knows the file by; `finished` is on the daemon's
    monotonic clock and `seconds` is how long the download (or the answer to apt) took."""

    url: str
    sha256: str
    size: int
    finished: float
    seconds: float
    hit: bool = False
    peer_bytes: int = 0
    mirror_bytes: int = 0
    cache_bytes: int = 0  # of a hit: the bytes sent to apt (a Range may ask for part)
    peers: int = 0  # distinct peers that sent bytes of it
    top_peer: str | None = None  # the address of the peer that sent the most of them
    top_peer_bytes: int = 0
    error: str | None = None  # why a download ended without a stored file

    @property
    def source(self) -> str:
        """Where the bytes came from: cache, peers, mirror, peers+mirror, or none."""
        if self.hit:
            return "cache"
        sources = [
            name
            for name, count in (("peers", self.peer_bytes), ("mirror", self.mirror_bytes))
            if count
        ]
        return "+".join(sources) or "none"

    def as_dict(self, wall_offset: float) -> dict[str, object]:
        return {
            "url": self.url,
            "sha256": self.sha256,
            "size": self.size,
            "at": round(self.finished + wall_offset, 3),
            "seconds": round(self.seconds, 3),
            "source": self.source,
            "peer_bytes": self.peer_bytes,
            "mirror_bytes": self.mirror_bytes,
            "cache_bytes": self.cache_bytes,
            "peers": self.peers,
            "top_peer": self.top_peer,
            "top_peer_bytes": self.top_peer_bytes,
            "error": self.error,
        }


def top_peer(bytes_by_peer: Mapping[str, int]) -> tuple[str | None, int]:
    """The address that sent the most bytes, and how many (ties: the lowest address, so that the
    answer does not depend on the order the pieces came in)."""
    if not bytes_by_peer:
        return None, 0
    address = min(bytes_by_peer, key=lambda a: (-bytes_by_peer[a], a))
    return address, bytes_by_peer[address]


class RecentTransfers:
    """The ring: at most `size` records, oldest first."""

    def __init__(self, size: int = RECENT_TRANSFERS) -> None:
        if size < 1:
            raise ValueError("the ring holds at least one record")
        self._ring: deque[TransferRecord] = deque(maxlen=size)

    def record(self, record: TransferRecord) -> None:
        self._ring.append(record)

    def hit(self, url: str, sha256: str, size: int, sent: int, started: float, now: float) -> None:
        """apt was answered from the store: `sent` bytes of the file, from `started` to `now`."""
        self.record(
            TransferRecord(url, sha256, size, now, now - started, hit=True, cache_bytes=sent)
        )

    def __iter__(self) -> Iterator[TransferRecord]:
        return iter(self._ring)

    def __len__(self) -> int:
        return len(self._ring)

    def newest_first(self) -> list[TransferRecord]:
        return list(reversed(self._ring))

    def as_dicts(self, wall_offset: float) -> list[dict[str, object]]:
        """The records, newest first, as /status.json has them (`at`: Unix time, `wall_offset`
        being what the daemon adds to its monotonic clock to get Unix time)."""
        return [record.as_dict(wall_offset) for record in self.newest_first()]
