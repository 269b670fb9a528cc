"""PeerServer: the HTTP face other nodes download pieces from (protocol v1, docs/swarm.md).

Owns: the peer TCP port, request routing (the format of requests and answers is wire.py's; the
piece lists of stored files are stored_lists.py's), the upload rate cap (one `TokenBucket` for
the whole node), the cap on concurrent uploads and the idle timeouts. A body is sent by
upload_body.py, paced by that bucket.

Trusts: the `ContentStore` (only verified files enter it) and the swarm driver's `PartialSource`
(its piece lists are corroborated and the pieces it reports as held are verified). Everything a
client sends is untrusted: the only thing taken from a request path is a SHA256 that must be 64
lowercase hex digits before anything touches the filesystem, and files are reached only through
`store.path_of` of that hash or the driver's own path for it. Nothing else is ever served.

Peers on an open port send garbage: such requests are answered (400/404/405) or dropped, counted
in `PeerServer.stats`, and logged at debug level only, never with a traceback above debug.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from dhtdeb.clock import Clock, MonotonicClock
from dhtdeb.errors import PeerWireError
from dhtdeb.proxy.ranges import Unsatisfiable, parse_range
from dhtdeb.stats import Counters
from dhtdeb.store import ContentStore
from dhtdeb.swarm.peer_ledger import PeerLedger
from dhtdeb.swarm.pieces import DIGEST_SIZE, PIECE_SIZE, PieceList
from dhtdeb.swarm.ratelimit import TokenBucket, bucket_for, throttle
from dhtdeb.swarm.stored_lists import StoredPieceLists
from dhtdeb.swarm.upload_body import UploadEnd, send_range
from dhtdeb.swarm.wire import (
    BODY_TYPE,
    FETCHING_HEADER,
    HAVE_ALL,
    HAVE_HEADER,
    HAVE_HELD,
    HAVE_NONE,
    HAVE_PATH,
    LIST_HEADER,
    LIST_OFFERS,
    MAX_FIELD,
    MAX_HAVE_QUERY,
    MAX_HEADERS,
    MAX_LINE,
    NODE_HEADER,
    PIECES,
    RELAYED_HEADER,
    SIZE_HEADER,
    decode_have_query,
    encode_have_answer,
    fetching_header,
    have_bitfield,
    is_sha256,
    node_header,
    parse_resource,
)

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
# Concurrent uploads; beyond, 503 (busy). Few, as BitTorrent's four unchoked peers: the upload
# cap is shared by the uploads running, so with 16 each piece took 16 times its own time to
# arrive, and a downloader can pass a piece on only once it has all of it. One downloader
# asks for at most 4 pieces at once (SchedulerConfig.max_requests_per_peer). In the 20-node
# flash crowd (bench/swarm.py) 4 instead of 16 took the ratio from about 2.0 to 1.82-1.87.
DEFAULT_MAX_UPLOADS = 4
# An upload of at most this many bytes (a small file, or a file's last piece) may run while
# fewer than `SMALL_UPLOADS_FACTOR` times the cap do: it is over within a round trip or two, and
# refused it cost its downloader seconds of retries and, often, the mirror. Most of apt's files
# are this small (median ~60 KiB). In the 300-node simulation (docs/simulation.md) the slowest
# 5 % of downloads took 16.9 times the mirror's time instead of 24.3, at the same offload;
# uploads of whole pieces keep the cap the flash crowd above was tuned with.
SMALL_UPLOAD = 256 * 1024
SMALL_UPLOADS_FACTOR = 2
SHUTDOWN_GRACE = 1.0
# Seconds a connection may sit without a complete request (idle, or headers trickled) and an
# upload may make no progress.
DEFAULT_IDLE_TIMEOUT = 30.0


def upload_cap(max_uploads: int, size: int) -> int:
    """How many uploads may be running for one more of `size` bytes to start."""
    return max_uploads * SMALL_UPLOADS_FACTOR if size <= SMALL_UPLOAD else max_uploads


class PartialView(Protocol):
    """A file the swarm driver is downloading: what of it may be served."""

    size: int
    # The corroborated list the downloader verifies pieces against or, without `complete_list`,
    # the digests of the pieces it got from the mirror (the others are zeros): its offers.
    piece_list: PieceList
    complete_list: bool

    def fetching(self) -> range:
        """Pieces the downloader's mirror request is fetching now (told with offers)."""
        ...

    def node(self) -> bytes:
        """The downloading node's id (told with offers; empty: none)."""
        ...

    def relayed(self) -> frozenset[int]:
        """Of `have()` with offers: the pieces taken on another downloader's offer."""
        ...

    def have(self) -> frozenset[int]:
        """Indices of verified pieces; their bytes in `path()` are final."""
        ...

    def path(self) -> Path: ...


class PartialSource(Protocol):
    def partial(self, sha256: str) -> PartialView | None:
        """The download of `sha256` if one is running and has a piece list, else None."""
        ...

    def fetch_state(self, sha256: str) -> int:
        """HAVE_NONE, HAVE_STARTING or HAVE_FETCHING: whether a download of `sha256` runs, and
        whether its bytes are coming."""
        ...


@dataclass(slots=True)
class PeerServerStats:
    requests: int = 0
    bad_requests: int = 0  # malformed HTTP, bad paths, bad hashes, wrong methods
    busy: int = 0  # answered 503: too many uploads
    uploads: int = 0  # file bodies (whole or a range) whose sending began
    stalled: int = 0  # uploads cut because the client stopped reading
    piece_lists_computed: int = 0  # store files hashed to build a piece list
    have_queries: int = 0  # "which of these do you hold?" answered


@dataclass(frozen=True, slots=True)
class _Source:
    """What a files request reads from: a stored file (every piece held) or a partial one."""

    path: Path
    size: int
    have: frozenset[int] | None  # None: complete

    def holds(self, start: int, end: int) -> bool:
        if self.have is None or start >= end:
            return True
        return all(i in self.have for i in range(start // PIECE_SIZE, (end - 1) // PIECE_SIZE + 1))


class _QuietHttpLog(logging.Logger):
    """aiohttp's per-connection logger. A bad request from a peer is routine on an open port:
    aiohttp reports it with `logger.exception` (or `debug` for a non-HTTP first line); here every
    such report becomes one debug line and one count."""

    def __init__(self, on_error: Callable[[], None]) -> None:
        super().__init__(f"{__name__}.http")
        self.parent = log
        self._on_error = on_error

    def exception(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._on_error()
        super().debug(msg, *args, **kwargs)

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._on_error()
        super().debug(msg, *args, **kwargs)

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if isinstance(msg, str) and msg.startswith("Error handling request"):
            self._on_error()
        super().debug(msg, *args, **kwargs)


class PeerServer:
    def __init__(
        self,
        store: ContentStore,
        counters: Counters,
        *,
        partials: PartialSource | None = None,
        upload_rate: float | None = None,
        max_uploads: int = DEFAULT_MAX_UPLOADS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        clock: Clock | None = None,
        node: bytes = b"",
        ledger: PeerLedger | None = None,
    ) -> None:
        """`node`: this node's id, told with every answer (NODE_HEADER); `ledger`: where the
        bytes sent are counted by the requester's address."""
        if max_uploads < 1 or idle_timeout <= 0:
            raise ValueError("max_uploads must be >= 1 and idle_timeout > 0")
        self._store = store
        self._counters = counters
        self._node_header = {NODE_HEADER: node_header(node)} if node else {}
        self._partials = partials
        self._ledger = ledger
        self._clock = clock or MonotonicClock()
        self._bucket: TokenBucket | None = bucket_for(upload_rate, self._clock)
        self._max_uploads = max_uploads
        self._idle_timeout = idle_timeout
        self.stats = PeerServerStats()
        self._lists = StoredPieceLists(store, self._count_computed)
        self._uploads: set[asyncio.Task[Any]] = set()
        self._uploads_changed = asyncio.Event()
        self._runner: web.ServerRunner | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on host:port (port 0: any free port); return the bound address."""
        if self._runner is not None:
            raise RuntimeError("PeerServer already started")
        server = web.Server(
            self._handle,
            handler_cancellation=True,  # a client that goes away ends its upload at once
            keepalive_timeout=self._idle_timeout,  # also bounds the wait for complete headers
            lingering_time=0,
            max_line_size=MAX_LINE,
            max_field_size=MAX_FIELD,
            max_headers=MAX_HEADERS,
            access_log=None,
            logger=_QuietHttpLog(self._count_bad_request),
        )
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        listening = site._server
        assert isinstance(listening, asyncio.base_events.Server)
        sockname = listening.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def close(self) -> None:
        """Stop listening and cut running uploads (peers fetch the rest elsewhere)."""
        for task in list(self._uploads):
            task.cancel()
        self._lists.cancel()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # -- settings and state ---------------------------------------------------------------------

    @property
    def upload_rate(self) -> float | None:
        return self._bucket.rate if self._bucket is not None else None

    @upload_rate.setter
    def upload_rate(self, rate: float | None) -> None:
        if not rate:
            self._bucket = None
        elif self._bucket is None:
            self._bucket = bucket_for(rate, self._clock)
        else:
            self._bucket.rate = rate

    @property
    def active_uploads(self) -> int:
        return len(self._uploads)

    @property
    def max_uploads(self) -> int:
        return self._max_uploads

    async def wait_uploads(self, at_most: int = 0) -> None:
        """Return once no more than `at_most` uploads are running."""
        while len(self._uploads) > at_most:
            await self._uploads_changed.wait()

    # -- piece lists ----------------------------------------------------------------------------

    async def piece_list(self, sha256: str) -> PieceList | None:
        """The piece list of a stored file, or None if the store does not hold it."""
        return await self._lists.piece_list(sha256)

    async def adopt_piece_list(self, sha256: str, pieces: PieceList) -> None:
        """Cache the list of a file just committed to the store (stored_lists.py)."""
        await self._lists.adopt(sha256, pieces)

    # -- requests -------------------------------------------------------------------------------

    def _count_computed(self) -> None:
        self.stats.piece_lists_computed += 1

    def _count_bad_request(self) -> None:
        self.stats.bad_requests += 1

    def _refuse(self, status: int, reason: str, **headers: str) -> web.Response:
        """A request no honest peer sends."""
        self._count_bad_request()
        log.debug("peer request refused: %d %s", status, reason)
        return web.Response(
            status=status, text=f"dhtdeb: {reason}\n", headers={**self._node_header, **headers}
        )

    def _not_held(self) -> web.Response:
        """Asking for a file this node lacks is normal (the DHT is eventually consistent)."""
        return web.Response(status=404, text="dhtdeb: not held\n", headers=self._node_header)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.stats.requests += 1
        try:
            return await self._dispatch(request)
        except ConnectionError:
            raise  # the peer went away; aiohttp drops the connection quietly
        except Exception:
            # Not the peer's fault: a bug here, so loud (the quiet logger is for bad requests).
            log.exception("peer request %s %s failed", request.method, request.path)
            return web.Response(status=500, text="dhtdeb: internal error\n")

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        # The raw target, undecoded: `%2e%2e` stays literal and can never match a hash.
        if request.raw_path == HAVE_PATH:
            return await self._have_response(request)
        resource = parse_resource(request.raw_path)
        if resource is None:
            return self._refuse(404, "no such resource")
        if request.method not in ("GET", "HEAD"):
            return self._refuse(405, "method not allowed", Allow="GET, HEAD")
        if not is_sha256(resource.name):
            return self._refuse(400, "not a lowercase hex SHA256")
        if resource.kind == PIECES:
            return await self._piece_list_response(request, resource.name)
        return await self._file_response(request, resource.name)

    async def _have_response(self, request: web.BaseRequest) -> web.StreamResponse:
        """`POST /v1/have`: which of the asked files this node holds, or is fetching now."""
        if request.method != "POST":
            return self._refuse(405, "method not allowed", Allow="POST")
        length = request.content_length
        if length is None:
            return self._refuse(411, "a have query needs a Content-Length")
        if not 0 < length <= MAX_HAVE_QUERY * DIGEST_SIZE:
            return self._refuse(413 if length else 400, "have query of 1 to 256 digests")
        try:
            body = await request.content.readexactly(length)
            asked = decode_have_query(body)
        except (asyncio.IncompleteReadError, PeerWireError) as exc:
            return self._refuse(400, f"bad have query: {exc}")
        self.stats.have_queries += 1
        # `in`, not `lookup`: a question must not count as a use of the file (the cache's
        # least-recently-used order is apt's, and a peer must not be able to pin files in it).
        states = [
            HAVE_HELD
            if sha256 in self._store
            else (self._partials.fetch_state(sha256) if self._partials else HAVE_NONE)
            for sha256 in asked
        ]
        return web.Response(
            body=encode_have_answer(states),
            content_type=BODY_TYPE,
            headers=self._node_header,
        )

    def _partial(self, sha256: str) -> PartialView | None:
        if self._partials is None:
            return None
        view = self._partials.partial(sha256)
        if view is None or view.piece_list.size != view.size:
            return None
        return view

    async def _piece_list_response(
        self, request: web.BaseRequest, sha256: str
    ) -> web.StreamResponse:
        pieces = await self.piece_list(sha256)
        extra: dict[str, str] = {}
        if pieces is not None:
            have = HAVE_ALL
        else:
            view = self._partial(sha256)
            if view is None:
                return self._not_held()
            pieces = view.piece_list
            have = have_bitfield(view.have(), len(pieces))
            if not view.complete_list:
                extra[LIST_HEADER] = LIST_OFFERS
                fetching = view.fetching()
                if fetching:
                    extra[FETCHING_HEADER] = fetching_header(fetching)
                node = view.node()
                if node:
                    extra[NODE_HEADER] = node_header(node)
                relayed = view.relayed()
                if relayed:
                    extra[RELAYED_HEADER] = have_bitfield(relayed, len(pieces))
        body = pieces.to_bytes()
        if request.method == "GET":
            await throttle(self._bucket, len(body))
            self._sent(request, len(body))
        return web.Response(
            body=body,
            content_type=BODY_TYPE,
            headers={
                SIZE_HEADER: str(pieces.size),
                HAVE_HEADER: have,
                **self._node_header,
                **extra,
            },
        )

    def _source(self, sha256: str) -> _Source | None:
        stored = self._store.lookup(sha256)
        if stored is not None:
            return _Source(stored.path, stored.size, None)
        view = self._partial(sha256)
        if view is None:
            return None
        return _Source(view.path(), view.size, view.have())

    async def _file_response(self, request: web.BaseRequest, sha256: str) -> web.StreamResponse:
        source = self._source(sha256)
        if source is None:
            return self._not_held()
        unheld = {"Content-Range": f"bytes */{source.size}", **self._node_header}
        try:
            wanted = parse_range(request.headers.get("Range"), source.size)
        except Unsatisfiable:
            return web.Response(status=416, headers=unheld)
        start, end = (0, source.size) if wanted is None else (wanted.start, wanted.end)
        if not source.holds(start, end):
            return web.Response(status=416, headers=unheld)
        response = web.StreamResponse(status=200 if wanted is None else 206)
        response.content_type = BODY_TYPE
        response.content_length = end - start
        response.headers["Accept-Ranges"] = "bytes"
        response.headers[SIZE_HEADER] = str(source.size)
        response.headers.update(self._node_header)
        if wanted is not None:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{source.size}"
        if request.method == "HEAD":
            return response
        if len(self._uploads) >= upload_cap(self._max_uploads, end - start):
            self.stats.busy += 1
            return web.Response(
                status=503,
                text="dhtdeb: busy\n",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS), **self._node_header},
            )
        with self._store.reading(sha256):  # no eviction while it is sent (store.py)
            try:
                # Opened before answering, so a file evicted meanwhile is a clean 404.
                handle = open(source.path, "rb")  # noqa: ASYNC230 - local disk, microseconds
            except OSError:
                return self._not_held()
            task = asyncio.current_task()
            assert task is not None
            self._uploads.add(task)
            try:
                with handle:
                    await response.prepare(request)
                    self.stats.uploads += 1
                    ended = await send_range(
                        request,
                        response,
                        handle,
                        start,
                        end,
                        bucket=self._bucket,
                        idle_timeout=self._idle_timeout,
                        sent=lambda count: self._sent(request, count),
                    )
                    if ended is UploadEnd.STALLED:
                        self.stats.stalled += 1
            finally:
                self._uploads.discard(task)
                self._uploads_changed.set()
                self._uploads_changed = asyncio.Event()
        return response

    def _sent(self, request: web.BaseRequest, count: int) -> None:
        self._counters.bytes.to_peers += count
        if self._ledger is not None and request.remote:
            self._ledger.sent(request.remote, count, self._clock.now())
