"""A lying peer for swarm tests: a real DHT node plus a peer HTTP server that breaks the rules.

Owns: a background thread with its own asyncio loop running a real dhtdeb DHT node (it announces
the files it is given, like any peer) and an aiohttp server on 127.0.0.1 at the same port number
over TCP, speaking the peer API of docs/swarm.md with one chosen lie (`Lie`). It counts every
request it receives by (path, piece), so a test can tell whether a banned peer was asked again.
Trusts: nothing it receives; it serves only the files given to it.

Unlike the rest of `support`, this module imports dhtdeb: the lying peer must be found through the
real DHT, so it runs the real DHT node (`dhtdeb.dht.open_dht`). It never uses dhtdeb's swarm code
to compute what it serves: piece lists are computed here from the bytes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import hashlib
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from dhtdeb.dht import DhtConfig, DhtNode, open_dht
from dhtdeb.netaddr import HostPort, parse_host_port
from dhtdeb.swarm.pieces import PIECE_SIZE

from .archive import SignedArchive

_START_TIMEOUT = 30.0
_PORT_ATTEMPTS = 20
_ENDLESS_LIMIT = 256 * 1024 * 1024  # an "endless" body gives up after this, client or not
_ENDLESS_CHUNK = 64 * 1024
_SPLIT_PAUSE = 0.1  # seconds between the two parts of a SPLIT_LIST piece list
_DRIP_CHUNK = 4096
_DRIP_PAUSE = 0.05  # seconds between two chunks of a DRIP body (pacing the sender)
_FILLER = "x" * 65536
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")
_ROUTE = re.compile(r"/v1/(pieces|files)/([0-9a-f]{64})")


class Lie(enum.Enum):
    """How the peer misbehaves. Unless stated, lists are honest and answers well formed."""

    HONEST = "honest"  # a control: the real bytes, the real list
    # Honest, but the piece list body reaches the client in two parts, as it would over a link
    # whose segments are smaller than the list (a list of more than ~45 pieces on Ethernet).
    SPLIT_LIST = "split_list"
    # Flips bytes inside the body of piece `piece` (every piece when `piece` is None).
    CORRUPT = "corrupt"
    # The list's entry for `piece` is the hash of altered bytes, and those altered bytes are what
    # it serves for that piece: a consistent liar that only the whole-file hash or a second
    # party can catch.
    BAD_LIST = "bad_list"
    # As BAD_LIST, but every byte of the piece is altered: a forgery that any block of the piece
    # compared with the mirror exposes (the downloader's audit of a lone list).
    FORGED_LIST = "forged_list"
    # Poses as a downloader whose mirror tampers: it offers every piece but the first (as got
    # from its mirror, X-Dhtdeb-List: offers) with the digests of what it serves, every byte of
    # each offered piece altered. Pieces taken on such offers are checked by nobody until the
    # whole-file hash fails; then the downloader's inquiry samples blocks at the mirror.
    OFFERED_FORGERY = "offered_forgery"
    # As OFFERED_FORGERY, but only 16 bytes of piece `piece` are altered: samples miss it, and
    # the inquiry must check whole pieces.
    OFFERED_FLIP = "offered_flip"
    # Honest list; the bytes it serves for a file are another file's (repeated to the length).
    OTHER_FILE = "other_file"
    # Honest bytes, trickled: 4 KiB every 50 ms (80 KiB/s), never silent long enough for the
    # peer timeout: a slowloris that holds the downloader's request slots.
    DRIP = "drip"
    # Every answer carries a 64 KiB header line.
    HUGE_HEADERS = "huge_headers"
    WRONG_SIZE_LIST = "wrong_size_list"  # X-Dhtdeb-Size is one more than the file's size
    # 206 with the right Content-Range, but Content-Length and body one byte longer than asked.
    WRONG_SIZE_BODY = "wrong_size_body"
    TRUNCATED = "truncated"  # Content-Length as asked, half the body, then the connection closes
    ENDLESS = "endless"  # chunked body: the asked bytes, then more and more
    STALL = "stall"  # piece requests: headers (206, lengths right), then nothing
    NOTHING = "nothing"  # every request: the connection is accepted, no answer ever comes
    REFUSE = "refuse"  # the TCP port is bound but not listening: connections are refused


@dataclass(frozen=True, slots=True)
class PeerRequest:
    """One request the evil peer received: its path and the piece a Range starts in."""

    path: str
    piece: int | None


def piece_digests(data: bytes) -> list[bytes]:
    """SHA256 of each PIECE_SIZE piece (one entry for an empty file)."""
    if not data:
        return [hashlib.sha256(b"").digest()]
    return [
        hashlib.sha256(data[i : i + PIECE_SIZE]).digest() for i in range(0, len(data), PIECE_SIZE)
    ]


def _flip_piece(data: bytes, index: int, whole: bool = False) -> bytes:
    """`data` with 16 bytes in the middle of piece `index` inverted (every byte of the piece
    with `whole`); same length."""
    start = index * PIECE_SIZE
    end = min(start + PIECE_SIZE, len(data))
    offset, count = (start, end - start) if whole else (start + (end - start) // 2, 16)
    flipped = bytes(b ^ 0xFF for b in data[offset : offset + count])
    return data[:offset] + flipped + data[offset + count :]


@dataclass(frozen=True, slots=True)
class _Offer:
    """What the peer serves for one file: bytes (maybe altered) and the list it claims."""

    real_size: int
    served: bytes
    piece_list: bytes


class EvilPeer:
    """`EvilPeer(files, bootstrap="127.0.0.1:PORT", state_dir=D, lie=Lie.CORRUPT, piece=3)`.

    `files` maps a SHA256 (hex) to the file's real bytes; each is announced in the DHT once
    started. `piece` selects the piece CORRUPT and BAD_LIST alter in each file that has one
    (None: every piece). With `serial` (default) file requests are answered one at a time in
    arrival order, so the pieces a downloader asked for before the lie are delivered before it:
    what a test may then expect from the downloader is exact rather than racy.
    """

    def __init__(
        self,
        files: Mapping[str, bytes],
        *,
        bootstrap: str,
        state_dir: Path,
        lie: Lie,
        piece: int | None = 0,
        serial: bool = True,
    ) -> None:
        self.lie = lie
        self.piece = piece
        self.serial = serial
        self._bootstrap = parse_host_port(bootstrap)
        self._state_dir = state_dir
        self._offers = {sha: self._offer(data) for sha, data in files.items()}
        if lie is Lie.OTHER_FILE:
            self._offers = {
                sha: self._other_file(offer, files, sha) for sha, offer in self._offers.items()
            }
        self._lock = threading.Lock()
        self._counts: Counter[PeerRequest] = Counter()
        self._log: list[PeerRequest] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._release: asyncio.Event | None = None
        self._serial_lock: asyncio.Lock | None = None
        self._node: DhtNode | None = None
        self._runner: web.AppRunner | None = None
        self._refusing: socket.socket | None = None
        self._port = 0

    def _offer(self, data: bytes) -> _Offer:
        served = data
        forging = (Lie.FORGED_LIST, Lie.OFFERED_FORGERY)
        if self.lie is Lie.OFFERED_FORGERY:
            for index in range(1, len(piece_digests(data))):
                served = _flip_piece(served, index, whole=True)
        elif self.lie in (Lie.CORRUPT, Lie.BAD_LIST, Lie.FORGED_LIST, Lie.OFFERED_FLIP):
            count = len(piece_digests(data))
            # A file without piece `piece` (a small one) is served honestly.
            indices = range(count) if self.piece is None else range(self.piece, count)[:1]
            for index in indices:
                served = _flip_piece(served, index, whole=self.lie in forging)
        lying_lists = (Lie.BAD_LIST, Lie.FORGED_LIST, Lie.OFFERED_FORGERY, Lie.OFFERED_FLIP)
        listed = served if self.lie in lying_lists else data
        return _Offer(len(data), served, b"".join(piece_digests(listed)))

    @staticmethod
    def _other_file(offer: _Offer, files: Mapping[str, bytes], sha256: str) -> _Offer:
        other = next((d for s, d in sorted(files.items()) if s != sha256 and d), b"\xa5")
        served = (other * (offer.real_size // len(other) + 1))[: offer.real_size]
        return _Offer(offer.real_size, served, offer.piece_list)

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> EvilPeer:
        ready = threading.Event()
        errors: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(ready, errors), name=f"evil-peer:{self.lie.value}", daemon=True
        )
        self._thread.start()
        if not ready.wait(_START_TIMEOUT):
            raise RuntimeError("evil peer did not start")
        if errors:
            self._thread.join(_START_TIMEOUT)
            raise RuntimeError("evil peer failed to start") from errors[0]
        return self

    def _run(self, ready: threading.Event, errors: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main(ready, errors))
        finally:
            # Handlers or DHT calls still pending end here, not as "Task was destroyed" noise.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self, ready: threading.Event, errors: list[BaseException]) -> None:
        self._stopped = asyncio.Event()
        self._release = asyncio.Event()
        self._serial_lock = asyncio.Lock()
        try:
            await self._open()
            for sha256 in self._offers:
                assert self._node is not None
                await self._node.announce(sha256)
        except BaseException as exc:  # reported to start(), which raises it in the test's thread
            errors.append(exc)
            await self._close()
            ready.set()
            return
        ready.set()
        try:
            await self._stopped.wait()
        finally:
            await self._close()

    async def _open(self) -> None:
        """A DHT node on a free UDP port, and the TCP side on the same port number; a new node
        (new port) when that TCP port is taken."""
        for attempt in range(_PORT_ATTEMPTS):
            config = DhtConfig(
                listen=HostPort("127.0.0.1", 0),
                # A fresh node id per attempt: the others never see a known id at a new port.
                state_dir=self._state_dir / f"dht-{attempt}",
                bootstrap=(self._bootstrap,),
                lan=False,
            )
            node = await open_dht(config)
            port = node.address.port
            try:
                if self.lie is Lie.REFUSE:
                    self._refusing = _bind_without_listening(port)
                else:
                    self._runner = await self._serve_http(port)
            except OSError:
                await node.close()
                continue
            self._node, self._port = node, port
            return
        raise RuntimeError(f"no port free for both UDP and TCP after {_PORT_ATTEMPTS} tries")

    async def _serve_http(self, port: int) -> web.AppRunner:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
        except OSError:
            await runner.cleanup()
            raise
        return runner

    async def _close(self) -> None:
        if self._release is not None:
            self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._refusing is not None:
            self._refusing.close()
            self._refusing = None
        if self._node is not None:
            await self._node.close()
            self._node = None

    def stop(self) -> None:
        loop, thread, stopped = self._loop, self._thread, self._stopped
        if loop is None or thread is None or stopped is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended (failed start)
            loop.call_soon_threadsafe(stopped.set)
        thread.join(_START_TIMEOUT)
        self._thread = None
        self._loop = None

    def __enter__(self) -> EvilPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- addresses and observations ---------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """As a downloader's peer lookup names it: http://127.0.0.1:PORT."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def requests(self) -> list[PeerRequest]:
        with self._lock:
            return list(self._log)

    def request_count(self, sha256: str | None = None) -> int:
        """Requests received in all, or those naming `sha256` (piece list and file ranges)."""
        with self._lock:
            if sha256 is None:
                return len(self._log)
            return sum(n for r, n in self._counts.items() if r.path.endswith(f"/{sha256}"))

    def count(self, path: str, piece: int | None = None) -> int:
        with self._lock:
            return self._counts[PeerRequest(path, piece)]

    def wait_for_requests(self, at_least: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.request_count() < at_least:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"evil peer got fewer than {at_least} requests in {timeout}s")
            time.sleep(0.01)  # polling a condition with a deadline

    def _record(self, request: PeerRequest) -> None:
        with self._lock:
            self._counts[request] += 1
            self._log.append(request)

    # --- serving ----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        match = _ROUTE.fullmatch(request.path)
        wanted = _RANGE.fullmatch(request.headers.get("Range", ""))
        start = int(wanted.group(1)) if wanted else None
        piece = None if start is None else start // PIECE_SIZE
        self._record(PeerRequest(request.path, piece))
        if self.lie is Lie.NOTHING:
            await self._wait_released()
            return web.Response(status=503)
        if request.method != "GET" or match is None:
            return web.Response(status=404)
        kind, sha256 = match.groups()
        offer = self._offers.get(sha256)
        if offer is None:
            return web.Response(status=404)
        if kind == "pieces":
            if self.lie is Lie.SPLIT_LIST:
                return await self._split_piece_list(request, offer)
            return self._piece_list(offer)
        if wanted is None:
            return web.Response(status=200, body=offer.served)
        first, last = int(wanted.group(1)), int(wanted.group(2))
        if first > last or last >= offer.real_size:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{offer.real_size}"})
        if self.lie is Lie.STALL:
            return await self._stall(request, offer, first, last)
        assert self._serial_lock is not None
        async with self._serial_lock if self.serial else contextlib.nullcontext():
            return await self._send_range(request, offer, first, last)

    def _piece_list(self, offer: _Offer) -> web.Response:
        size = offer.real_size + (1 if self.lie is Lie.WRONG_SIZE_LIST else 0)
        headers = {"X-Dhtdeb-Size": str(size), "X-Dhtdeb-Have": "all"}
        if self.lie is Lie.HUGE_HEADERS:
            headers["X-Filler"] = _FILLER
        count = len(offer.piece_list) // 32
        if self.lie in (Lie.OFFERED_FORGERY, Lie.OFFERED_FLIP) and count > 1:
            # docs/swarm.md: a downloader's answer. Offered: every piece but the first
            # (bitfield, most significant bit first).
            field = bytearray((count + 7) // 8)
            for index in range(1, count):
                field[index // 8] |= 0x80 >> (index % 8)
            headers["X-Dhtdeb-Have"] = base64.b64encode(bytes(field)).decode("ascii")
            headers["X-Dhtdeb-List"] = "offers"
        return web.Response(status=200, body=offer.piece_list, headers=headers)

    async def _split_piece_list(self, request: web.Request, offer: _Offer) -> web.StreamResponse:
        headers = {"X-Dhtdeb-Size": str(offer.real_size), "X-Dhtdeb-Have": "all"}
        response = web.StreamResponse(status=200, headers=headers)
        response.content_length = len(offer.piece_list)
        await response.prepare(request)
        half = len(offer.piece_list) // 2
        await response.write(offer.piece_list[:half])
        # Pacing the sender (the second segment comes later), not synchronising the test.
        await asyncio.sleep(_SPLIT_PAUSE)
        await response.write(offer.piece_list[half:])
        await response.write_eof()
        return response

    def _range_response(self, offer: _Offer, first: int, last: int) -> web.StreamResponse:
        headers = {
            "Content-Range": f"bytes {first}-{last}/{offer.real_size}",
            "Content-Type": "application/octet-stream",
        }
        if self.lie is Lie.HUGE_HEADERS:
            headers["X-Filler"] = _FILLER
        return web.StreamResponse(status=206, headers=headers)

    async def _send_range(
        self, request: web.Request, offer: _Offer, first: int, last: int
    ) -> web.StreamResponse:
        body = offer.served[first : last + 1]
        response = self._range_response(offer, first, last)
        if self.lie is Lie.ENDLESS:
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(body)
            sent = len(body)
            with contextlib.suppress(ConnectionError):
                while sent < _ENDLESS_LIMIT:
                    await response.write(b"\x00" * _ENDLESS_CHUNK)
                    sent += _ENDLESS_CHUNK
            return response
        if self.lie is Lie.WRONG_SIZE_BODY:
            body += b"\x00"
        response.content_length = len(body)
        await response.prepare(request)
        if self.lie is Lie.DRIP:
            with contextlib.suppress(ConnectionError):
                for offset in range(0, len(body), _DRIP_CHUNK):
                    await response.write(body[offset : offset + _DRIP_CHUNK])
                    await asyncio.sleep(_DRIP_PAUSE)
                await response.write_eof()
            return response
        if self.lie is Lie.TRUNCATED:
            await response.write(body[: len(body) // 2])
            # close(), unlike abort(), flushes what is buffered first: the client gets the half.
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write(body)
        await response.write_eof()
        return response

    async def _stall(
        self, request: web.Request, offer: _Offer, first: int, last: int
    ) -> web.StreamResponse:
        response = self._range_response(offer, first, last)
        response.content_length = last - first + 1
        await response.prepare(request)
        await self._wait_released()
        if request.transport is not None:
            request.transport.close()
        return response

    async def _wait_released(self) -> None:
        assert self._release is not None
        await self._release.wait()


def _bind_without_listening(port: int) -> socket.socket:
    """Hold a TCP port without accepting: every connection to it is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


def files_of(archive: SignedArchive, *names: str) -> dict[str, bytes]:
    """{sha256: real bytes} of the archive's packages `names`, for `EvilPeer(files=…)`."""
    files: dict[str, bytes] = {}
    for name in names:
        package = archive.package(name)
        files[package.sha256] = archive.path(package.filename).read_bytes()
    return files
