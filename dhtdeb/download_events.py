"""What downloads tell the rest of the daemon: events on one channel.

Owns: the events (`DownloadStarted`, `FileStored`) and `DownloadEvents`, the queue they travel
on. `Downloads` publishes without waiting and without knowing who reacts; app.py's announcer
(announcer.py) consumes them in a task of the daemon's TaskGroup. Events published before that
task runs wait in the queue. Trusts: its publisher, which sends `FileStored` only for a file the
store committed (its whole-file SHA256 matched the signed index).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from dhtdeb.store import StoredFile
from dhtdeb.swarm.pieces import PieceList


@dataclass(frozen=True, slots=True)
class DownloadStarted:
    """A swarm download of a file of several pieces began: others who start the same download
    should find this node at once, to exchange pieces with it (a flash crowd, docs/swarm.md)."""

    sha256: str


@dataclass(frozen=True, slots=True)
class FileStored:
    """A pool file was committed to the store, with its piece list when the download assembled
    one (confirmed by the whole-file SHA256)."""

    stored: StoredFile
    pieces: PieceList | None


DownloadEvent = DownloadStarted | FileStored


class DownloadEvents:
    """The channel: unbounded (an event is small, and there are no more than files fetched)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[DownloadEvent] = asyncio.Queue()

    def publish(self, event: DownloadEvent) -> None:
        self._queue.put_nowait(event)

    async def next(self) -> DownloadEvent:
        return await self._queue.get()
