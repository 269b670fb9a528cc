"""PeerClient: the downloader's side of the peer HTTP API (docs/swarm.md).

Owns: one aiohttp session for all peers, strict checks of every answer (status, Content-Range,
length, no bytes beyond what was asked), and the translation of transport errors into two kinds:
`PeerUnavailable` (the peer simply cannot help: refused, 404, 416, 503) and `PeerMisbehaved` (it
broke the protocol: malformed, short or endless body, stalled). The answers' format is wire.py's,
whose `PeerWireError` becomes `PeerMisbehaved` here. Trusts nothing it receives; the bytes it
returns are still unverified.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp

from dhtdeb.discovery import Peer
from dhtdeb.errors import DhtdebError, PeerWireError, RemoteProtocolError
from dhtdeb.http_session import LazySession
from dhtdeb.swarm.pieces import DIGEST_SIZE, PieceList, piece_count
from dhtdeb.swarm.wire import (
    BODY_TYPE,
    FETCHING_HEADER,
    FILES,
    HAVE_HEADER,
    HAVE_PATH,
    LIST_HEADER,
    LIST_OFFERS,
    NODE_HEADER,
    PIECES,
    RELAYED_HEADER,
    SIZE_HEADER,
    decode_have_answer,
    encode_have_query,
    parse_fetching,
    parse_have,
    parse_node,
    parse_piece_list,
    parse_relayed,
    resource_path,
)

# Piece requests of this node to one peer at once: a peer's upload slots by default
# (peer_server.DEFAULT_MAX_UPLOADS). A node upgrading from one holder runs ten downloads at once;
# without this, 503s and half-second back-offs took host 2 of an 8-host staggered upgrade from
# about 0.2 to 0.42-0.45 times a direct apt's time (bench/fleet.py).
PIECES_PER_PEER = 4


class PeerUnavailable(DhtdebError):
    """The peer cannot serve this (not a protocol violation)."""


class PeerBusy(PeerUnavailable):
    """The peer holds the bytes but is at its upload limit (503): ask it again shortly."""


class PeerIsSelf(PeerUnavailable):
    """The address answered with this node's own id: it is this node (every host of a fleet
    listens on the same port, and a node may find itself under any of its addresses)."""


class PeerMisbehaved(RemoteProtocolError):
    """The peer broke the protocol; it is to be penalised."""


async def _exact_body(peer: Peer, response: aiohttp.ClientResponse, wanted: int) -> bytes:
    """Exactly `wanted` body bytes, however many reads they take, and nothing after them."""
    length = response.content_length
    if length is not None and length != wanted:
        raise PeerMisbehaved(f"{peer.url()}: sends {length} bytes, asked {wanted}")
    data = await response.content.readexactly(wanted)
    if await response.content.read(1):
        raise PeerMisbehaved(f"{peer.url()}: sends more than {wanted} bytes")
    return data


@contextlib.contextmanager
def _translated(peer: Peer, what: str) -> Iterator[None]:
    """The one place transport and wire errors become PeerUnavailable or PeerMisbehaved."""
    try:
        yield
    except PeerWireError as exc:
        raise PeerMisbehaved(f"{peer.url()}: {exc}") from None
    except asyncio.IncompleteReadError:
        raise PeerMisbehaved(f"{peer.url()}: {what} cut short") from None
    # Order matters: aiohttp's read timeout is also a ClientConnectionError, and TimeoutError is
    # an OSError; a stall is misbehaviour, not unavailability.
    except TimeoutError:
        raise PeerMisbehaved(f"{peer.url()}: stalled sending {what}") from None
    except aiohttp.ClientPayloadError as exc:
        raise PeerMisbehaved(f"{peer.url()}: broken body for {what}: {exc}") from None
    except (aiohttp.ClientConnectionError, OSError) as exc:
        raise PeerUnavailable(f"{peer.url()}: {exc or type(exc).__name__}") from None
    except aiohttp.ClientError as exc:
        raise PeerMisbehaved(f"{peer.url()}: {exc}") from None


@dataclass(frozen=True, slots=True)
class ListAnswer:
    """A peer's answer to a piece list request."""

    pieces: PieceList
    have: frozenset[int] | None  # None: the whole file
    # The peer is downloading the file itself: only the entries of the pieces it holds (which
    # it got from the mirror) are digests, and `fetching` is what its mirror stream is on.
    offers_only: bool
    fetching: range
    node: bytes = b""  # with offers: the id the peer splits the mirror's pieces by
    relayed: frozenset[int] = frozenset()  # with offers: held pieces taken on others' offers


@dataclass(frozen=True, slots=True)
class HaveAnswer:
    """A peer's answer to a have query: its node id and the state (HAVE_*) of each file."""

    node: bytes
    states: list[int]


class PeerClient:
    def __init__(
        self, *, connect_timeout: float = 3.0, idle_timeout: float = 10.0, node: bytes = b""
    ) -> None:
        """`node`: this node's id; an answer that carries it comes from this node itself."""
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=idle_timeout
        )
        self._session = LazySession(timeout, limit=256, limit_per_host=8)
        self._node = node
        self._piece_slots: dict[Peer, asyncio.Semaphore] = {}

    def _answering_node(self, peer: Peer, response: aiohttp.ClientResponse) -> bytes:
        """The id the peer's answer carries (b"" without one); PeerIsSelf when it is ours."""
        node = parse_node(response.headers.get(NODE_HEADER))
        if node is None:
            raise PeerMisbehaved(f"{peer.url()}: malformed {NODE_HEADER}")
        if self._node and node == self._node:
            raise PeerIsSelf(f"{peer.url()} is this node")
        return node

    async def which_hold(self, peer: Peer, sha256s: list[str]) -> HaveAnswer:
        """Ask the peer which of these files it holds whole or is fetching (one round trip);
        unverified."""
        body = encode_have_query(sha256s)
        with _translated(peer, "its have answer"):
            async with self._session.get().post(
                f"{peer.url()}{HAVE_PATH}",
                data=body,
                headers={"Content-Type": BODY_TYPE},
            ) as response:
                node = self._answering_node(peer, response)
                if response.status in (404, 405, 503):
                    raise PeerUnavailable(f"{peer.url()}: no have queries ({response.status})")
                if response.status != 200:
                    raise PeerMisbehaved(f"{peer.url()}: have query answered {response.status}")
                answer = await _exact_body(peer, response, len(sha256s))
                return HaveAnswer(node, decode_have_answer(answer, len(sha256s)))

    async def piece_list(self, peer: Peer, sha256: str, size: int) -> ListAnswer:
        """The peer's piece list and what it holds; unverified."""
        count = piece_count(size)
        with _translated(peer, "its piece list"):
            async with self._session.get().get(
                peer.url() + resource_path(PIECES, sha256)
            ) as response:
                node = self._answering_node(peer, response)
                if response.status in (404, 503):
                    raise PeerUnavailable(f"{peer.url()}: has no {sha256[:12]} ({response.status})")
                if response.status != 200:
                    raise PeerMisbehaved(f"{peer.url()}: piece list answered {response.status}")
                if response.headers.get(SIZE_HEADER) != str(size):
                    raise PeerMisbehaved(f"{peer.url()}: piece list for the wrong file size")
                have = parse_have(response.headers.get(HAVE_HEADER), count)
                body = await _exact_body(peer, response, count * DIGEST_SIZE)
                offers_only = response.headers.get(LIST_HEADER) == LIST_OFFERS
                if offers_only and have is None:
                    raise PeerMisbehaved(f"{peer.url()}: offers without a Have bitfield")
                fetching = parse_fetching(response.headers.get(FETCHING_HEADER), count)
                if fetching is None:
                    raise PeerMisbehaved(f"{peer.url()}: malformed {FETCHING_HEADER}")
                relayed = parse_relayed(response.headers.get(RELAYED_HEADER), count, have)
                if relayed is None or (relayed and not offers_only):
                    raise PeerMisbehaved(f"{peer.url()}: malformed {RELAYED_HEADER}")
                return ListAnswer(
                    parse_piece_list(size, body), have, offers_only, fetching, node, relayed
                )

    def _slots(self, peer: Peer) -> asyncio.Semaphore:
        slots = self._piece_slots.get(peer)
        if slots is None:
            if len(self._piece_slots) >= 1024:  # forget peers nobody is waiting on
                for idle in [p for p, s in self._piece_slots.items() if not s.locked()]:
                    del self._piece_slots[idle]
            slots = self._piece_slots[peer] = asyncio.Semaphore(PIECES_PER_PEER)
        return slots

    async def piece(self, peer: Peer, sha256: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of the file from the peer, exactly; unverified. At most
        PIECES_PER_PEER such requests of this node run at once to one peer (whichever files
        they are for): the peer has that many upload slots by default, and beyond them it
        answers "busy", which sends the piece to the back of the queue for half a second."""
        async with self._slots(peer):
            return await self._piece(peer, sha256, start, end)

    async def _piece(self, peer: Peer, sha256: str, start: int, end: int) -> bytes:
        headers = {"Range": f"bytes={start}-{end - 1}"}
        with _translated(peer, f"bytes {start}-{end - 1}"):
            async with self._session.get().get(
                peer.url() + resource_path(FILES, sha256), headers=headers
            ) as response:
                self._answering_node(peer, response)
                if response.status == 503:
                    raise PeerBusy(f"{peer.url()}: busy, bytes {start}-{end - 1} not sent")
                if response.status in (404, 416):
                    raise PeerUnavailable(f"{peer.url()}: does not hold bytes {start}-{end - 1}")
                if response.status != 206:
                    raise PeerMisbehaved(f"{peer.url()}: answered {response.status} to a Range")
                content_range = response.headers.get("Content-Range", "")
                if not content_range.startswith(f"bytes {start}-{end - 1}/"):
                    raise PeerMisbehaved(f"{peer.url()}: wrong Content-Range {content_range!r}")
                return await _exact_body(peer, response, end - start)

    async def close(self) -> None:
        await self._session.close()
