"""Pieces: the unit in which files travel between peers.

Owns: the fixed piece size of protocol v1, piece arithmetic, and `PieceList` (the SHA256 of every
piece of one file) with its wire form. Trusts nothing: a piece list from a peer is parsed strictly
and stays a claim until the whole-file SHA256 from the signed index confirms it.

Piece size is 1 MiB for every file (protocol constant, not negotiated): small enough that a lie
costs little and a 64 MiB file spreads over 64 pieces, large enough that the list of a 1 GiB file is
32 KiB and per-request overhead stays small. A file of one piece needs no list: its whole-file
SHA256 is the piece hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dhtdeb.errors import RemoteProtocolError

PIECE_SIZE = 1 << 20
DIGEST_SIZE = 32
# Sent with the piece list of a file the peer is still downloading without a corroborated list:
# "offers" means only the entries of the pieces it holds are digests, the others are void.
LIST_HEADER = "X-Dhtdeb-List"
# Sent with offers: "a-b", the pieces the peer's mirror request is fetching right now.
FETCHING_HEADER = "X-Dhtdeb-Fetching"
# The answering node's id (hex), on every answer of the peer server: a node that reached itself
# (every host of a fleet listens on the same port) knows it by this. With offers it is also the
# id by which downloaders split the mirror's pieces.
NODE_HEADER = "X-Dhtdeb-Node"
# Sent with offers: a bitfield like X-Dhtdeb-Have, the held pieces the peer took on another
# downloader's offer (it passes them on; their digests are that downloader's word, not its own).
RELAYED_HEADER = "X-Dhtdeb-Relayed"


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

    @classmethod
    def from_bytes(cls, size: int, data: bytes, piece_size: int = PIECE_SIZE) -> PieceList:
        """Parse a peer's piece list for a file of `size` bytes. Raises RemoteProtocolError."""
        expected = piece_count(size, piece_size) * DIGEST_SIZE
        if len(data) != expected:
            raise RemoteProtocolError(f"piece list of {len(data)} bytes, expected {expected}")
        digests = tuple(data[i : i + DIGEST_SIZE] for i in range(0, len(data), DIGEST_SIZE))
        return cls(size, digests, piece_size)

    def to_bytes(self) -> bytes:
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


# `POST /v1/have`: "which of these files do you hold, or are fetching now?" The body is the raw
# SHA256 digests (32 bytes each, at most MAX_HAVE_QUERY); the answer is one byte per file, in the
# order asked: HAVE_NONE, HAVE_STARTING (a download runs but no bytes are coming yet: it is still
# looking for holders, or waiting for another node that is fetching it), HAVE_FETCHING (bytes are
# coming, from the mirror or from peers) or HAVE_HELD (whole and verified). One round trip answers
# for a batch of apt's files; the middle states let a classroom that starts an upgrade together
# fetch each small file from the mirror once (see swarm/holders.py).
HAVE_PATH = "/v1/have"
MAX_HAVE_QUERY = 256
HAVE_NONE, HAVE_STARTING, HAVE_FETCHING, HAVE_HELD = 0, 1, 2, 3


def encode_have_query(sha256s: Sequence[str]) -> bytes:
    if not 0 < len(sha256s) <= MAX_HAVE_QUERY:
        raise ValueError(f"a have query asks about 1 to {MAX_HAVE_QUERY} files")
    return b"".join(bytes.fromhex(sha) for sha in sha256s)


def decode_have_query(body: bytes) -> list[str]:
    """The SHA256s (lowercase hex) a have query asks about. Raises RemoteProtocolError."""
    if not body or len(body) % DIGEST_SIZE or len(body) > MAX_HAVE_QUERY * DIGEST_SIZE:
        raise RemoteProtocolError("have query: not 1 to MAX_HAVE_QUERY 32-byte digests")
    return [body[i : i + DIGEST_SIZE].hex() for i in range(0, len(body), DIGEST_SIZE)]


def encode_have_answer(states: Sequence[int]) -> bytes:
    return bytes(states)


def decode_have_answer(data: bytes, count: int) -> list[int]:
    """The state (HAVE_*) of each of `count` asked files. Raises RemoteProtocolError."""
    if len(data) != count:
        raise RemoteProtocolError(f"have answer of {len(data)} bytes for {count} files")
    if any(state > HAVE_HELD for state in data):
        raise RemoteProtocolError("have answer: unknown state")
    return list(data)
