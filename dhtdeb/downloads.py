"""Downloads: at most one transfer per file, run to its end even when apt hangs up.

Owns: the table of running transfers and the tasks that feed them. The source today is the mirror
apt asked for; peers plug in here (the swarm). Trusts: nothing downloaded — the store's commit
checks the whole-file SHA256 against the signed index, and only a committed file is announced.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
from collections.abc import Awaitable, Callable

from dhtdeb.archive.index import Expected
from dhtdeb.errors import DhtdebError, MirrorError, VerificationError
from dhtdeb.mirror import MirrorClient
from dhtdeb.stats import Counters
from dhtdeb.store import ContentStore, StoredFile
from dhtdeb.transfer import Transfer, UpstreamRefused

log = logging.getLogger(__name__)

OnStored = Callable[[StoredFile], Awaitable[None]]


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class Downloads:
    def __init__(
        self, store: ContentStore, mirror: MirrorClient, counters: Counters, on_stored: OnStored
    ) -> None:
        self._store = store
        self._mirror = mirror
        self._counters = counters
        self._on_stored = on_stored
        self._running: dict[str, Transfer] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def running(self, sha256: str) -> Transfer | None:
        return self._running.get(sha256)

    def fetch(self, url: str, expected: Expected, *, announce: bool) -> Transfer:
        """The transfer of `expected.sha256`, started from `url` unless one is already running.

        With `announce`, the committed file is handed to `on_stored` (the DHT announce).
        """
        transfer = self._running.get(expected.sha256)
        if transfer is not None:
            return transfer
        transfer = Transfer(self._store.begin(expected.sha256, expected.size))
        self._running[expected.sha256] = transfer
        task = asyncio.create_task(
            self._run(transfer, url, announce), name=f"download {expected.sha256[:12]}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return transfer

    async def _run(self, transfer: Transfer, url: str, announce: bool) -> None:
        try:
            stored = await self._from_mirror(transfer, url)
        except asyncio.CancelledError:
            transfer.partial.discard()
            transfer.failed(MirrorError(f"{url}: download cancelled"))
            raise
        except (DhtdebError, OSError) as exc:
            transfer.partial.discard()
            if isinstance(exc, VerificationError):
                self._counters.verify_failures.mirror += 1
                log.error("mirror sent a bad file for %s: %s", url, exc)
            else:
                log.warning("download of %s failed: %s", url, exc)
            transfer.failed(exc)
            return
        finally:
            self._running.pop(transfer.sha256, None)
        transfer.finished(stored)
        if not announce:
            return
        try:
            await self._on_stored(stored)
        except Exception:
            log.exception("after storing %s", stored.sha256)

    async def _from_mirror(self, transfer: Transfer, url: str) -> StoredFile:
        partial = transfer.partial
        async with await self._mirror.request("GET", url) as response:
            if response.status != 200:
                raise UpstreamRefused(
                    response.status, f"{url}: mirror answered HTTP {response.status}"
                )
            length = response.content_length
            if length is not None and length != partial.size:
                raise VerificationError(
                    f"{url}: mirror announces {length} bytes, the signed index says {partial.size}"
                )
            self._counters.requests.from_mirror += 1
            last_modified = response.headers.get("Last-Modified")
            transfer.started(last_modified)
            async for chunk in response.chunks():
                partial.write(chunk)  # raises VerificationError past the expected size
                partial.flush()
                self._counters.bytes.from_mirror += len(chunk)
                transfer.progress(partial.written)
        return await asyncio.to_thread(self._store.commit, partial, mtime=_http_date(last_modified))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
