"""A daemon stopped right after apt's last byte keeps the file it was committing.

apt gets the held-back tail of a file as soon as the whole file matches its SHA256; the store then
makes it durable in a thread (fsync, rename). A stop that came in between cancelled the download
and threw the verified file away (CI: `dhtdeb cache verify` found 3 of 4 files in a store
stopped right after `apt-get download`).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
from pathlib import Path

from support.mirror import Mirror

from dhtdeb.archive.index import Expected
from dhtdeb.download_events import DownloadEvents
from dhtdeb.downloads import Downloads, RunningDownloads
from dhtdeb.mirror import MirrorClient
from dhtdeb.stats import Counters
from dhtdeb.store import ContentStore

GUARD = 10.0  # bound on waits for what must happen


class _GatedStore(ContentStore):
    """Commits wait for the test: it can stop the daemon while a commit is in its thread."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.committing = threading.Event()
        self.may_commit = threading.Event()

    def _before_rename(self) -> None:  # written out, about to be renamed into place
        self.committing.set()
        self.may_commit.wait(GUARD)
        super()._before_rename()


async def test_a_stop_during_the_commit_of_a_verified_file_keeps_it(tmp_path: Path) -> None:
    data = random.Random(7).randbytes(200_000)
    sha256 = hashlib.sha256(data).hexdigest()
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "pool.deb").write_bytes(data)
    store = _GatedStore(tmp_path / "store")
    mirror_client = MirrorClient()
    with Mirror(tmp_path / "mirror") as mirror:
        downloads = Downloads(
            store, mirror_client, Counters(), DownloadEvents(), RunningDownloads()
        )
        transfer = downloads.fetch(
            mirror.url_for("pool.deb"), Expected(sha256, len(data)), announce=False
        )
        await asyncio.to_thread(store.committing.wait, GUARD)
        assert transfer.servable == len(data)  # apt may read every byte now
        tasks = list(downloads._tasks)
        closing = asyncio.create_task(downloads.close())
        # Yield (no timed wait) until close() has cancelled the download: only then may the
        # commit go on.
        while not all(task.cancelling() for task in tasks):  # noqa: ASYNC110
            await asyncio.sleep(0)
        store.may_commit.set()
        await closing
    await mirror_client.close()
    stored = store.lookup(sha256)
    assert stored is not None, "the verified file was thrown away"
    assert stored.path.read_bytes() == data
