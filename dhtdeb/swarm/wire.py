"""The peer protocol v1 on the wire (docs/swarm.md): routes, header names, limits, encoders and
parsers, used by both ends (peer_server.py answers, peer_client.py asks).

Owns: the shape of every request and answer between peers, and nothing about what to do with them.
Trusts: nothing it parses. Every parser here either returns a value of its documented type or
raises `PeerWireError`; the `None` some of them return is documented with each (a header that is
absent, or one the caller refuses in its own words). tests/test_peer_wire.py fuzzes them for
exactly that. The piece list's bytes are `PieceList.to_bytes()` (pieces.py), read back here.

This is the swarm's HTTP protocol; the DHT's datagrams are dht/wire.py.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from dhtdeb.errors import PeerWireError
from dhtdeb.swarm.pieces import DIGEST_SIZE, PIECE_SIZE, PieceList, piece_count

# -- routes -------------------------------------------------------------------------------------

PIECES: Final = (
    "pieces"  # GET /v1/pieces/<sha256>: the piece list and what the peer holds of the file
)
FILES: Final = "files"  # GET /v1/files/<sha256> (+ Range): the file's bytes
HAVE_PATH = "/v1/have"  # POST: which of these files do you hold, or are fetching now?

_ROUTE = re.compile(r"/v1/(pieces|files)/([^/]*)")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Resource:
    """What a GET target names: a file's piece list or its bytes."""

    kind: Literal["pieces", "files"]
    name: str  # what stands where the SHA256 goes; is_sha256() tells whether it is one


def resource_path(kind: Literal["pieces", "files"], sha256: str) -> str:
    return f"/v1/{kind}/{sha256}"


def parse_resource(target: str) -> Resource | None:
    """The resource a raw (undecoded) request target names, its query ignored; None when it
    names none (404). Undecoded: `%2e%2e` stays literal and can never pass is_sha256()."""
    route = _ROUTE.fullmatch(target.partition("?")[0])
    if route is None:
        return None
    return Resource(PIECES if route[1] == PIECES else FILES, route[2])


def is_sha256(text: str) -> bool:
    """Whether `text` is a SHA256 as v1 writes it: 64 lowercase hex digits, nothing else."""
    return _SHA256.fullmatch(text) is not None


# -- limits -------------------------------------------------------------------------------------

# A v1 request line is ~90 bytes; a peer has no reason to send big headers.
MAX_LINE = 1024
MAX_FIELD = 4096
MAX_HEADERS = 32
MAX_HAVE_QUERY = 256  # files asked about in one have query
BODY_TYPE = "application/octet-stream"  # of piece lists, file bytes, have queries and answers

# -- piece list answers -------------------------------------------------------------------------

# The file's size, on piece list answers and file answers.
SIZE_HEADER = "X-Dhtdeb-Size"
# On piece list answers: HAVE_ALL for a complete file, else a bitfield (have_bitfield) of the
# verified pieces.
HAVE_HEADER = "X-Dhtdeb-Have"
HAVE_ALL = "all"
# Sent with the piece list of a file the peer is still downloading without a corroborated list:
# LIST_OFFERS means only the entries of the pieces it holds are digests, the others are void.
LIST_HEADER = "X-Dhtdeb-List"
LIST_OFFERS = "offers"
# Sent with offers: "a-b", the pieces the peer's mirror request is fetching right now.
FETCHING_HEADER = "X-Dhtdeb-Fetching"
# The answering node's id (hex), on every answer of the peer server: a node that reached itself
# (every host of a fleet listens on the same port) knows it by this. With offers it is also the
# id by which downloaders split the mirror's pieces.
NODE_HEADER = "X-Dhtdeb-Node"
# Sent with offers: a bitfield like X-Dhtdeb-Have, the held pieces the peer took on another
# downloader's offer (it passes them on; their digests are that downloader's word, not its own).
RELAYED_HEADER = "X-Dhtdeb-Relayed"

_NODE_HEX = re.compile(r"[0-9a-fA-F]{8,64}")
_FETCHING = re.compile(r"([0-9]+)-([0-9]+)")
_MAX_FETCHING = 16  # characters of a fetching header: two piece numbers and a dash


def parse_piece_list(size: int, body: bytes, piece_size: int = PIECE_SIZE) -> PieceList:
    """A piece list (the body of a piece list answer, or its cached copy) for a file of `size`
    bytes: `piece_count(size)` digests of DIGEST_SIZE bytes, concatenated."""
    expected = piece_count(size, piece_size) * DIGEST_SIZE
    if len(body) != expected:
        raise PeerWireError(f"piece list of {len(body)} bytes, expected {expected}")
    digests = tuple(body[i : i + DIGEST_SIZE] for i in range(0, len(body), DIGEST_SIZE))
    return PieceList(size, digests, piece_size)


def have_bitfield(have: Iterable[int], pieces: int) -> str:
    """Base64 of a bitfield of `pieces` bits, bit i (MSB first) set when piece i is held."""
    field = bytearray(-(-pieces // 8))
    for index in have:
        if 0 <= index < pieces:
            field[index // 8] |= 0x80 >> (index % 8)
    return base64.b64encode(bytes(field)).decode("ascii")


def parse_have(header: str | None, pieces: int) -> frozenset[int] | None:
    """X-Dhtdeb-Have of a file of `pieces` pieces: HAVE_ALL → None (complete), else the pieces
    its bitfield holds. Absent or malformed: PeerWireError."""
    if header is None:
        raise PeerWireError(f"no {HAVE_HEADER} header")
    if header.strip() == HAVE_ALL:
        return None
    try:
        bits = base64.b64decode(header.strip(), validate=True)
    except ValueError:  # binascii.Error, or a character outside ASCII
        raise PeerWireError(f"malformed {HAVE_HEADER} bitfield") from None
    if len(bits) != (pieces + 7) // 8:
        raise PeerWireError(f"{HAVE_HEADER} bitfield of the wrong length")
    return frozenset(i for i in range(pieces) if bits[i // 8] & (0x80 >> (i % 8)))


def fetching_header(fetching: range) -> str:
    """X-Dhtdeb-Fetching of a non-empty run of pieces."""
    return f"{fetching[0]}-{fetching[-1]}"


def parse_fetching(header: str | None, pieces: int) -> range | None:
    """`X-Dhtdeb-Fetching: a-b` (pieces a..b); an empty range without the header, None when
    malformed or outside the file."""
    if header is None:
        return range(0)
    match = _FETCHING.fullmatch(header) if len(header) <= _MAX_FETCHING else None
    if match is None:
        return None
    a, b = int(match[1]), int(match[2])
    return range(a, b + 1) if a <= b < pieces else None


def node_header(node: bytes) -> str:
    return node.hex()


def parse_node(header: str | None) -> bytes | None:
    """`X-Dhtdeb-Node: <hex>` (4 to 32 bytes); empty without the header, None when malformed."""
    if header is None:
        return b""
    if len(header) % 2 or _NODE_HEX.fullmatch(header) is None:
        return None
    return bytes.fromhex(header)


def parse_relayed(
    header: str | None, pieces: int, have: frozenset[int] | None
) -> frozenset[int] | None:
    """`X-Dhtdeb-Relayed: <bitfield>` (pieces among `have`); empty without the header, None
    when malformed or naming a piece the peer does not say it has."""
    if header is None:
        return frozenset()
    try:
        relayed = parse_have(header, pieces)
    except PeerWireError:
        return None
    if relayed is None or have is None or not relayed <= have:
        return None
    return relayed


# -- have queries -------------------------------------------------------------------------------

# `POST /v1/have`: "which of these files do you hold, or are fetching now?" The body is the raw
# SHA256 digests (32 bytes each, at most MAX_HAVE_QUERY); the answer is one byte per file, in the
# order asked: HAVE_NONE, HAVE_STARTING (a download runs but no bytes are coming yet: it is still
# looking for holders, or waiting for another node that is fetching it), HAVE_FETCHING (bytes are
# coming, from the mirror or from peers) or HAVE_HELD (whole and verified). One round trip answers
# for a batch of apt's files; the middle states let a classroom that starts an upgrade together
# fetch each small file from the mirror once (see swarm/holders.py).
HAVE_NONE, HAVE_STARTING, HAVE_FETCHING, HAVE_HELD = 0, 1, 2, 3


def encode_have_query(sha256s: Sequence[str]) -> bytes:
    if not 0 < len(sha256s) <= MAX_HAVE_QUERY:
        raise ValueError(f"a have query asks about 1 to {MAX_HAVE_QUERY} files")
    return b"".join(bytes.fromhex(sha) for sha in sha256s)


def decode_have_query(body: bytes) -> list[str]:
    """The SHA256s (lowercase hex) a have query asks about."""
    if not body or len(body) % DIGEST_SIZE or len(body) > MAX_HAVE_QUERY * DIGEST_SIZE:
        raise PeerWireError("have query: not 1 to MAX_HAVE_QUERY 32-byte digests")
    return [body[i : i + DIGEST_SIZE].hex() for i in range(0, len(body), DIGEST_SIZE)]


def encode_have_answer(states: Sequence[int]) -> bytes:
    return bytes(states)


def decode_have_answer(data: bytes, count: int) -> list[int]:
    """The state (HAVE_*) of each of `count` asked files."""
    if len(data) != count:
        raise PeerWireError(f"have answer of {len(data)} bytes for {count} files")
    if any(state > HAVE_HELD for state in data):
        raise PeerWireError("have answer: unknown state")
    return list(data)
