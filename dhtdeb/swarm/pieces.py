"""Pieces: the unit in which files travel between peers.

Owns: the fixed piece size of protocol v1, piece arithmetic, and `PieceList` (the SHA256 of every
piece of one file) with its byte form. Trusts nothing: a piece list from a peer is parsed strictly
(wire.py) and stays a claim until the whole-file SHA256 from the signed index confirms it.

Piece size is 1 MiB for every file (protocol constant, not negotiated): small enough that a lie
costs little and a 64 MiB file spreads over 64 pieces, large enough that the list of a 1 GiB file is
32 KiB and per-request overhead stays small. A file of one piece needs no list: its whole-file
SHA256 is the piece hash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

PIECE_SIZE = 1 << 20
DIGEST_SIZE = 32


def piece_count(size: int, piece_size: int = PIECE_SIZE) -> int:
    return max(1, -(-size // piece_size))


def piece_span(index: int, size: int, piece_size: int = PIECE_SIZE) -> tuple[int, int]:
    """Byte range [start, end) of piece `index` in a file of `size` bytes."""
    start = index * piece_size
    if index < 0 or start >= max(size, 1):
        raise IndexError(f"piece {index} outside a file of {size} bytes")
    return start, min(start + piece_size, size)


@dataclass(frozen=True, slots=True)
class PieceList:
    size: int
    digests: tuple[bytes, ...]
    piece_size: int = PIECE_SIZE

    def __post_init__(self) -> None:
        if len(self.digests) != piece_count(self.size, self.piece_size):
            raise ValueError("piece list length does not fit the file size")

    def to_bytes(self) -> bytes:
        """The list on the wire and in its cache file (read back by wire.parse_piece_list)."""
        return b"".join(self.digests)

    def __len__(self) -> int:
        return len(self.digests)

    def matches(self, index: int, digest: bytes) -> bool:
        return 0 <= index < len(self.digests) and self.digests[index] == digest

    def span(self, index: int) -> tuple[int, int]:
        return piece_span(index, self.size, self.piece_size)


def digest_file(path: Path, size: int, piece_size: int = PIECE_SIZE) -> PieceList:
    """The piece list of a file on disk (run it in a thread: it reads the whole file)."""
    digests = []
    with open(path, "rb") as handle:
        for _ in range(piece_count(size, piece_size)):
            digests.append(hashlib.sha256(handle.read(piece_size)).digest())
    return PieceList(size, tuple(digests), piece_size)
