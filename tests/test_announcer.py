"""The announcer (dhtdeb/announcer.py) follows the downloads' events: a started swarm download is
announced at once, a stored file's piece list goes to the peer server and the file is queued for
announcing; announcing off keeps the piece lists; a failing reaction stops nothing. Fakes record
the calls; synchronisation is by events, never sleeps."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path

from dhtdeb.announcer import announce_downloads
from dhtdeb.discovery import NoDiscovery
from dhtdeb.download_events import DownloadEvents, DownloadStarted, FileStored
from dhtdeb.errors import DhtdebError
from dhtdeb.store import StoredFile
from dhtdeb.swarm.pieces import PieceList

GUARD = 10.0  # upper bound on waits for events that must happen; a failure, not a timing
SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.changed = asyncio.Event()

    def note(self, what: str, sha256: str) -> None:
        self.calls.append((what, sha256))
        self.changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(GUARD):
            while not done():
                self.changed.clear()
                await self.changed.wait()


class FakeDiscovery(NoDiscovery):
    def __init__(self, recorder: Recorder, failing: set[str]) -> None:
        self._recorder = recorder
        self._failing = failing

    async def announce(self, sha256: str) -> None:
        self._recorder.note("announce", sha256)
        if sha256 in self._failing:
            raise DhtdebError("no node accepted it")

    def announce_later(self, sha256: str) -> None:
        self._recorder.note("announce_later", sha256)


class FakePeerServer:
    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    async def adopt_piece_list(self, sha256: str, pieces: PieceList) -> None:
        self._recorder.note("adopt_piece_list", sha256)


def _stored(sha256: str, pieces: bool) -> FileStored:
    size = 3 << 20
    digests = tuple(bytes([i]) * 32 for i in range(3))
    stored = StoredFile(sha256, Path("/nonexistent") / sha256, size, 0.0)
    return FileStored(stored, PieceList(size, digests) if pieces else None)


async def _run(
    announce: bool, published: list[DownloadStarted | FileStored]
) -> list[tuple[str, str]]:
    recorder = Recorder()
    events = DownloadEvents()
    for event in published:  # published before the announcer runs: they wait in the queue
        events.publish(event)
    announcer = asyncio.create_task(
        announce_downloads(
            events,
            FakePeerServer(recorder),
            FakeDiscovery(recorder, failing={SHA_A}),
            announce=announce,
        )
    )
    expected = 4 if announce else 1
    try:
        await recorder.until(lambda: len(recorder.calls) >= expected)
        # After a failing announce the announcer still reacts.
        events.publish(DownloadStarted(SHA_B))
        await recorder.until(lambda: len(recorder.calls) >= expected + announce)
    finally:
        announcer.cancel()
        await asyncio.gather(announcer, return_exceptions=True)
    assert announcer.cancelled()
    return recorder.calls


async def test_started_and_stored_files_are_announced_and_piece_lists_kept() -> None:
    calls = await _run(
        True, [DownloadStarted(SHA_A), _stored(SHA_A, pieces=True), _stored(SHA_B, pieces=False)]
    )
    assert sorted(calls) == sorted(
        [
            ("announce", SHA_A),  # fails: logged, nothing else
            ("adopt_piece_list", SHA_A),
            ("announce_later", SHA_A),
            ("announce_later", SHA_B),  # no piece list: nothing to adopt
            ("announce", SHA_B),
        ]
    )
    assert calls.index(("adopt_piece_list", SHA_A)) < calls.index(("announce_later", SHA_A))


async def test_without_announcing_only_the_piece_lists_are_kept() -> None:
    calls = await _run(False, [DownloadStarted(SHA_A), _stored(SHA_A, pieces=True)])
    assert calls == [("adopt_piece_list", SHA_A)]
