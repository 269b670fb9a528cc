"""MirrorStream: the mirror's side of one file's swarm download.

Owns: the range requests to the mirror for one file — the stream of pieces in the windows the
scheduler answers with (bounded windows that grow while it goes on: swarm/mirror_plan.py), read
piece by piece with progress reports while a piece may still be given up, and the single blocks an
audit or an inquiry compares with a copy held here — with what they leave behind: the bytes counted
as mirror traffic, the mirror's last status, the file's Last-Modified, and the pieces the request
in flight is on (told to other downloaders). Trusts: the scheduler's answers (whether to go on,
which piece to read, when to give one up); the mirror's answer only as far as its status and
Content-Range check out here. Its pieces go to the file's `Assembly` (swarm/assembly.py) under
the digest computed there, and the scheduler decides what they are worth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from dhtdeb.errors import DhtdebError, MirrorError
from dhtdeb.mirror import MirrorResponse
from dhtdeb.swarm.assembly import Assembly, SwarmFailed
from dhtdeb.swarm.context import SwarmContext
from dhtdeb.swarm.pieces import PIECE_SIZE, piece_count
from dhtdeb.swarm.scheduler import (
    MIRROR,
    GiveUpMirrorPiece,
    MirrorWindow,
    ReadMirrorPiece,
    SwarmScheduler,
)
from dhtdeb.transfer import Transfer

log = logging.getLogger(__name__)

YIELD_STEP = 128 * 1024  # bytes of a mirror piece between two progress reports (it may be given up)


class MirrorStream:
    """The mirror requests of one file's swarm download, one stream at a time (the download
    spawns `run` when the scheduler says StartMirror). `wake` is set whenever the scheduler has
    news: a piece received, the stream stopped."""

    def __init__(
        self,
        context: SwarmContext,
        transfer: Transfer,
        url: str,
        scheduler: SwarmScheduler,
        assembly: Assembly,
        wake: asyncio.Event,
    ) -> None:
        self._ctx = context
        self._transfer = transfer
        self._url = url
        self._sha256 = transfer.sha256
        self._size = transfer.size
        self._piece_count = piece_count(self._size)
        self._scheduler = scheduler
        self._assembly = assembly
        self._wake = wake
        self._fetching: range = range(0)  # the pieces the mirror request is on
        self.status: int | None = None  # of the mirror's last answer
        self.bytes_received = 0  # counted as mirror traffic, given-up pieces' bytes included
        self.last_modified: str | None = None

    @property
    def fetching(self) -> range:
        """The pieces the mirror request in flight is fetching (told to other downloaders)."""
        return self._fetching

    def _now(self) -> float:
        """The time of an event reported to the scheduler (read once for each)."""
        return self._ctx.clock.now()

    async def block(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the file from the mirror, counted as mirror traffic (an audit's
        or a check's block, which the download compares with a copy it holds)."""
        async with self._range(start, end) as (response, _):
            data = await response.read_exactly(end - start)
        self._received(len(data))
        return data

    def _received(self, count: int) -> None:
        """Bytes the mirror sent for this file: the node's mirror traffic and this file's."""
        self._ctx.counters.bytes.from_mirror += count
        self.bytes_received += count

    @contextlib.asynccontextmanager
    async def _range(self, start: int, end: int) -> AsyncIterator[tuple[MirrorResponse, bool]]:
        """The mirror's answer to a request for bytes [start, end), positioned at `start`, and
        whether the mirror ignored the Range (then the body goes on to the end of the file)."""
        headers = {"Range": f"bytes={start}-{end - 1}"}
        async with await self._ctx.mirror.request("GET", self._url, headers) as response:
            self.status = response.status
            if response.status == 200:
                await response.read_exactly(start)
            elif response.status != 206:
                raise MirrorError(f"{self._url}: mirror answered HTTP {response.status}")
            elif not response.headers.get("Content-Range", "").startswith(
                f"bytes {start}-{end - 1}/"
            ):
                raise MirrorError(f"{self._url}: wrong Content-Range from the mirror")
            yield response, response.status == 200

    async def run(self, first: int) -> None:
        """Pieces from the mirror, from `first` on, in the requests the scheduler answers with
        (bounded windows that grow while it goes on: mirror_plan.py), until it says stop."""
        error: str | None = None
        try:
            step = self._scheduler.mirror_stream_ready(first, now=self._now())
            while isinstance(step, MirrorWindow):
                after = await self._window(step)
                if after is None:
                    break
                step = self._scheduler.mirror_stream_ready(after, now=self._now())
        except DhtdebError as exc:
            error = str(exc)
        except asyncio.CancelledError:
            error = "cancelled"
            raise
        finally:
            self._scheduler.mirror_stopped(error, now=self._now())
            self._wake.set()

    async def _window(self, window: MirrorWindow) -> int | None:
        """Fetch the window's pieces in one request: the next index, or None once the scheduler
        ended the stream inside the window."""
        self._fetching = window.fetching
        try:
            return await self._request(window.first, window.last)
        finally:
            self._fetching = range(0)

    def _gave_up(self, index: int, got: int) -> None:
        self._received(got)
        log.debug("%s: mirror gives piece %d up after %d bytes", self._sha256[:12], index, got)

    async def _piece(
        self, response: MirrorResponse, read: ReadMirrorPiece, size: int
    ) -> bytes | None:
        """The piece's bytes from the stream, or None when the scheduler gives the piece up
        while less than `read.watch` bytes of it have come (the request is then dropped)."""
        parts: list[bytes] = []
        got = 0
        while got < read.watch:
            parts.append(await response.read_exactly(min(YIELD_STEP, size - got)))
            got += len(parts[-1])
            if (
                got < read.watch
                and self._scheduler.mirror_piece_progress(read.index, got, now=self._now())
                is not None
            ):
                self._gave_up(read.index, got)
                return None
        parts.append(await response.read_exactly(size - got))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _request(self, first: int, last: int) -> int | None:
        start = first * PIECE_SIZE
        end = min((last + 1) * PIECE_SIZE, self._size)
        async with self._range(start, end) as (response, whole_file):
            if whole_file:
                last = self._piece_count - 1  # take pieces as they come
                self._scheduler.mirror_range_ignored(now=self._now())
            last_modified = response.headers.get("Last-Modified")
            if last_modified:
                self.last_modified = last_modified
                if self._transfer.last_modified is None:
                    self._transfer.last_modified = last_modified
            for index in range(first, last + 1):
                step = self._scheduler.mirror_piece_starting(index, now=self._now())
                if isinstance(step, GiveUpMirrorPiece):
                    self._gave_up(index, 0)
                if not isinstance(step, ReadMirrorPiece):
                    return None  # stopped, or given up to a downloader before this one
                # Told to other downloaders: the piece on its way, and the next one if this
                # request covers it and the stream means to go on into it (a claim on a piece
                # the stream will not take would keep that piece's owner away for nothing).
                self._fetching = step.fetching
                piece_start = index * PIECE_SIZE
                data = await self._piece(response, step, min(PIECE_SIZE, self._size - piece_start))
                if data is None:
                    return None  # given up to a downloader before this one: it offers it
                log.debug(
                    "%s: piece %d from the mirror%s",
                    self._sha256[:12],
                    index,
                    " (already accepted)" if self._assembly.is_accepted(index) else "",
                )
                self._received(len(data))
                digest = await self._assembly.hold(index, data)
                if digest is None:
                    raise SwarmFailed("no room to hold the piece")
                self._scheduler.piece_received(MIRROR, index, digest, now=self._now())
                self._wake.set()
        return last + 1
