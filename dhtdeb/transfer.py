"""Transfer: one verified download of one file, shared by every request that wants it.

Owns: the progress of a download into the store's `incoming/` area and the rule for what may be
read from it. Bytes are readable as they arrive, except the last `HOLD_BACK` bytes, which become
readable only once the whole-file SHA256 has matched the signed index (`verified`); the store's
commit (fsync, rename) follows without keeping readers waiting. A reader therefore never receives
a complete file that was not verified; a failed transfer makes every reader abort its response.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import BinaryIO

from dhtdeb.errors import DhtdebError
from dhtdeb.partial_file import PartialFile
from dhtdeb.store import ContentStore, StoredFile

HOLD_BACK = 64 * 1024


class UpstreamRefused(DhtdebError):
    """The source answered, but not with the file (e.g. the mirror said 404)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Transfer:
    def __init__(self, partial: PartialFile) -> None:
        self.partial = partial
        self.sha256 = partial.sha256
        self.size = partial.size
        self.last_modified: str | None = None
        self.stored: StoredFile | None = None
        self.error: BaseException | None = None
        self._started = False
        self._verified = False
        self._available = 0
        self._waiters: list[asyncio.Future[None]] = []

    # -- the downloader's side ----------------------------------------------------------------

    def started(self, last_modified: str | None) -> None:
        self.last_modified = last_modified
        self._started = True
        self._wake()

    def progress(self, available: int) -> None:
        self._available = available
        self._wake()

    def verified(self) -> None:
        """The whole file matched its SHA256: every byte may be read."""
        self._verified = True
        self._started = True
        self._wake()

    def finished(self, stored: StoredFile) -> None:
        self.stored = stored
        self._verified = True
        self._started = True
        self._wake()

    def failed(self, error: BaseException) -> None:
        self.error = error
        self._wake()

    @property
    def done(self) -> bool:
        return self.stored is not None or self.error is not None

    @property
    def under_way(self) -> bool:
        """The source delivers the file (or did): the mirror answered, or a swarm began."""
        return self._started

    # -- the readers' side --------------------------------------------------------------------

    @property
    def servable(self) -> int:
        """How many leading bytes may be sent to a client now."""
        if self._verified:
            return self.size
        return max(0, min(self._available, self.size - HOLD_BACK))

    async def wait_started(self) -> None:
        """Return once the source delivers the file; raise its error if it never will."""
        while not self._started:
            if self.error is not None:
                raise self.error
            await self._wait()
        if self.error is not None and self.servable == 0:
            raise self.error

    async def wait_stored(self) -> StoredFile:
        """Return the committed (verified) file; raise the transfer's error if it failed."""
        while self.stored is None:
            if self.error is not None:
                raise self.error
            await self._wait()
        return self.stored

    async def _wait(self) -> None:
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        await future

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)

    def open(self, store: ContentStore) -> BinaryIO | None:
        """The file the bytes are read from, for `spans`; the caller closes it. None for a file
        held in memory: its bytes come from `read`."""
        if self.partial.in_memory:
            return None
        try:
            return open(self.partial.path, "rb")
        except FileNotFoundError:
            # Committed (renamed into the store) between our check and the open.
            return open(store.path_of(self.sha256), "rb")

    def read(self, offset: int, length: int) -> bytes:
        """Servable bytes of a file held in memory (see `open`)."""
        return self.partial.read(offset, length)

    async def spans(self, start: int, end: int) -> AsyncIterator[tuple[int, int]]:
        """Tile [start, end) with (offset, length) spans, each yielded once it is servable: as
        much as is servable at that moment, so a reader keeps up with the download in a few
        large sends. Raise the transfer's error if it fails before the range is covered."""
        position = start
        while position < end:
            if self.error is not None and not self._verified:
                raise self.error
            limit = min(self.servable, end)
            if limit <= position:
                await self._wait()
                continue
            yield position, limit - position
            position = limit
