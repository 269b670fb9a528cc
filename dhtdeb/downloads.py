"""Downloads: at most one transfer per file, run to its end even when apt hangs up.

Owns: the tasks that feed the running transfers, and their table (`RunningDownloads`, which the
peer server reads too). The source is the mirror apt asked for, or with peer discovery on the swarm.
What others should know of a download it publishes as events (download_events.py): the start of a
swarm download, and a pool file stored. Trusts: nothing downloaded — the store's commit checks the
whole-file SHA256 against the signed index, and only a committed file is published as stored.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from dhtdeb.archive.index import Expected
from dhtdeb.clock import Clock, MonotonicClock
from dhtdeb.download_events import DownloadEvents, DownloadStarted, FileStored
from dhtdeb.errors import DhtdebError, MirrorError, VerificationError
from dhtdeb.mirror import MirrorClient
from dhtdeb.partial_file import PartialFile
from dhtdeb.recent_transfers import RecentTransfers, TransferRecord, top_peer
from dhtdeb.stats import Counters
from dhtdeb.store import ContentStore, StoredFile
from dhtdeb.swarm.context import SwarmContext
from dhtdeb.swarm.download import SwarmDownload, SwarmVerificationError
from dhtdeb.swarm.peer_ledger import address
from dhtdeb.swarm.pieces import DIGEST_SIZE, PieceList, piece_count
from dhtdeb.swarm.wire import HAVE_FETCHING, HAVE_NONE, HAVE_STARTING
from dhtdeb.transfer import Transfer, UpstreamRefused

log = logging.getLogger(__name__)

SYNC_GATHER = 0.5  # seconds between the first commit of a burst and its group fsync


@dataclass
class SharedPartial:
    """What the peer server may serve of a file still being downloaded (its PartialView): with a
    corroborated list, every verified piece; before that, the pieces it got from the mirror."""

    size: int
    piece_list: PieceList
    complete_list: bool
    download: SwarmDownload
    offered: frozenset[int] | None = None
    relayed_pieces: frozenset[int] = frozenset()  # of `offered`: taken on others' offers

    def have(self) -> frozenset[int]:
        return self.download.have() if self.offered is None else self.offered

    def relayed(self) -> frozenset[int]:
        return self.relayed_pieces

    def fetching(self) -> range:
        return self.download.fetching()

    def node(self) -> bytes:
        return self.download.node()

    def path(self) -> Path:
        return self.download.path()


class RunningDownloads:
    """The downloads running now, by SHA256: every transfer apt's requests read and, of them,
    the swarm downloads. `Downloads` keeps it; the peer server reads it (its PartialSource), so
    it is made before either and neither needs the other."""

    def __init__(self) -> None:
        self.transfers: dict[str, Transfer] = {}
        self.swarming: dict[str, SwarmDownload] = {}

    def partial(self, sha256: str) -> SharedPartial | None:
        """For the peer server: a running download whose verified pieces may be shared (only
        once its piece list is corroborated)."""
        download = self.swarming.get(sha256)
        if download is None:
            return None
        pieces = download.piece_list
        if pieces is not None:
            return SharedPartial(download.size, pieces, True, download)
        count = piece_count(download.size)
        if count == 1:
            return None  # nothing to offer before the whole file is verified
        offers = download.offers()
        relays = download.relays()
        void = bytes(DIGEST_SIZE)
        digests = tuple(offers.get(i, relays.get(i, void)) for i in range(count))
        return SharedPartial(
            download.size,
            PieceList(download.size, digests),
            False,
            download,
            frozenset(offers).union(relays),
            frozenset(relays),
        )

    def fetch_state(self, sha256: str) -> int:
        """For other nodes' have queries: whether this file is being downloaded here, and
        whether its bytes are coming (HAVE_FETCHING) or not yet (HAVE_STARTING).

        A transfer whose task has not begun yet is only starting: had it said "fetching", a
        node could wait for it, and it then (its swarm download asking that node) for the
        waiting node, each saying it was fetching (holders.py: no node waits on another that
        waits on it; a classroom upgrade lost 20 s on one small file)."""
        download = self.swarming.get(sha256)
        if download is not None:
            return HAVE_FETCHING if download.fetching_now() else HAVE_STARTING
        transfer = self.transfers.get(sha256)
        if transfer is None:
            return HAVE_NONE
        return HAVE_FETCHING if transfer.under_way else HAVE_STARTING


@dataclass(slots=True)
class _Sources:
    """Where one download's bytes came from, as they come."""

    mirror_bytes: int = 0
    peer_bytes: dict[str, int] = field(default_factory=dict)  # by peer address


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class Downloads:
    def __init__(
        self,
        store: ContentStore,
        mirror: MirrorClient,
        counters: Counters,
        events: DownloadEvents,
        running: RunningDownloads,
        *,
        swarm: SwarmContext | None = None,
        recent: RecentTransfers | None = None,
        clock: Clock | None = None,
    ) -> None:
        """`events`: where it publishes that a swarm download of several pieces started and
        that a pool file was stored; `running`: the table of downloads in progress it keeps;
        `swarm`: with peer discovery on, what pool files come through; `recent`: where every
        download, once ended, is recorded with its sources."""
        self._store = store
        self._mirror = mirror
        self._counters = counters
        self._events = events
        self._swarm = swarm
        self._recent = recent
        self._clock = clock or MonotonicClock()
        # The table's own dicts: the peer server sees every change.
        self._running = running.transfers
        self._swarming = running.swarming
        self._tasks: set[asyncio.Task[None]] = set()
        self._committed = asyncio.Event()
        self._syncer: asyncio.Task[None] | None = None

    def running(self, sha256: str) -> Transfer | None:
        return self._running.get(sha256)

    @property
    def active(self) -> int:
        """Downloads running now, through the swarm or straight from the mirror."""
        return len(self._running)

    @property
    def active_in_swarm(self) -> int:
        """Of `active`, the swarm downloads (pool files with the DHT on)."""
        return len(self._swarming)

    def swarming(self, sha256: str) -> SwarmDownload | None:
        """The swarm download of this file, if one is running."""
        return self._swarming.get(sha256)

    def fetch(self, url: str, expected: Expected, *, announce: bool) -> Transfer:
        """The transfer of `expected.sha256`, started from `url` unless one is already running.

        Pool files (`announce`) come through the swarm when peer discovery is on, else straight
        from the mirror. With `announce`, the committed file is published (FileStored).
        """
        transfer = self._running.get(expected.sha256)
        if transfer is not None:
            return transfer
        transfer = Transfer(self._store.begin(expected.sha256, expected.size))
        self._running[expected.sha256] = transfer
        self._counters.downloads.started += 1
        task = asyncio.create_task(
            self._run(transfer, url, announce), name=f"download {expected.sha256[:12]}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return transfer

    async def _run(self, transfer: Transfer, url: str, announce: bool) -> None:
        partial = transfer.partial
        pieces: PieceList | None = None
        sources = _Sources()
        started = self._clock.now()
        committing = False
        try:
            if announce and self._swarm is not None:
                last_modified, pieces = await self._from_swarm(self._swarm, transfer, url, sources)
            else:
                last_modified = await self._from_mirror(transfer, url, sources)
            if not partial.matches():
                raise VerificationError(f"{url}: content does not match its SHA256")
            # Verified: the held-back tail may go to apt now. Making the file durable (fsync,
            # rename, directory fsync) need not keep apt waiting.
            transfer.verified()
            committing = True
            stored = await self._commit(partial, last_modified)
        except asyncio.CancelledError:
            if not committing:
                partial.discard()
            transfer.failed(MirrorError(f"{url}: download cancelled"))
            raise
        except (DhtdebError, OSError) as exc:
            partial.discard()
            if isinstance(exc, SwarmVerificationError):
                log.error("swarm assembled a bad file for %s: %s", url, exc)
            elif isinstance(exc, VerificationError):
                if announce:
                    self._counters.verify_failures.mirror += 1
                else:  # an index file: it does not match the signed Release
                    self._counters.verify_failures.index += 1
                log.error("mirror sent a bad file for %s: %s", url, exc)
            else:
                log.warning("download of %s failed: %s", url, exc)
            self._counters.downloads.failed += 1
            self._record(url, transfer, sources, started, str(exc) or type(exc).__name__)
            transfer.failed(exc)
            return
        finally:
            self._running.pop(transfer.sha256, None)
        self._note_committed()
        self._record(url, transfer, sources, started, None)
        transfer.finished(stored)
        if announce:
            self._events.publish(FileStored(stored, pieces))

    async def _commit(self, partial: PartialFile, last_modified: str | None) -> StoredFile:
        """Commit a verified file. A stop that comes meanwhile (apt has had every byte, and the
        daemon is stopped right after apt's last request) waits for the commit to end, then
        goes on: the file is kept, not thrown away while a thread renames it into place."""
        thread_done = threading.Event()  # the thread's own end, whatever becomes of the task

        def commit_now() -> StoredFile:
            try:
                return self._store.commit(partial, mtime=_http_date(last_modified))
            finally:
                thread_done.set()

        commit = asyncio.ensure_future(asyncio.to_thread(commit_now))
        try:
            return await asyncio.shield(commit)
        except asyncio.CancelledError:
            await asyncio.to_thread(thread_done.wait)
            if self._store.lookup(partial.sha256) is not None:
                self._note_committed()
            else:
                partial.discard()  # the commit failed; the stop is what is reported
            raise

    def _record(
        self, url: str, transfer: Transfer, sources: _Sources, started: float, error: str | None
    ) -> None:
        if self._recent is None:
            return
        now = self._clock.now()
        peer, peer_bytes = top_peer(sources.peer_bytes)
        self._recent.record(
            TransferRecord(
                url=url,
                sha256=transfer.sha256,
                size=transfer.size,
                finished=now,
                seconds=now - started,
                peer_bytes=sum(sources.peer_bytes.values()),
                mirror_bytes=sources.mirror_bytes,
                peers=len(sources.peer_bytes),
                top_peer=peer,
                top_peer_bytes=peer_bytes,
                error=error,
            )
        )

    async def _from_mirror(self, transfer: Transfer, url: str, sources: _Sources) -> str | None:
        """Stream the file from the mirror into the partial file; its Last-Modified."""
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
                sources.mirror_bytes += len(chunk)
                transfer.progress(partial.written)
        return last_modified

    async def _from_swarm(
        self, swarm: SwarmContext, transfer: Transfer, url: str, sources: _Sources
    ) -> tuple[str | None, PieceList | None]:
        """Assemble the file from peers and the mirror: the mirror's Last-Modified if it served,
        and the piece list as assembled."""
        download = SwarmDownload(swarm, transfer, url)
        self._swarming[transfer.sha256] = download
        if piece_count(transfer.size) > 1:
            self._events.publish(DownloadStarted(transfer.sha256))
        transfer.started(None)
        started = swarm.clock.now()
        try:
            await download.run()
            if swarm.holders is not None:
                for peer in download.delivered_by():
                    swarm.holders.hints.delivered(peer, swarm.clock.now())
        except SwarmVerificationError:
            if not download.bytes_from_peers:  # every byte came from the mirror: its lie
                self._counters.verify_failures.mirror += 1
            raise
        finally:
            del self._swarming[transfer.sha256]
            sources.mirror_bytes = download.bytes_from_mirror
            sources.peer_bytes = {
                address(peer): count for peer, count in download.bytes_by_peer().items()
            }
            if download.bytes_from_peers:
                self._counters.requests.from_peers += 1
            if download.bytes_from_mirror:
                self._counters.requests.from_mirror += 1
            log.info(
                "%s: %d bytes from %d peers, %d from the mirror, %.2f s",
                url.rsplit("/", 1)[-1],
                download.bytes_from_peers,
                download.peers_used,
                download.bytes_from_mirror,
                swarm.clock.now() - started,
            )
        return download.last_modified, download.assembled_piece_list()

    def _note_committed(self) -> None:
        self._committed.set()
        if self._syncer is None:
            self._syncer = asyncio.create_task(self._sync_store(), name="store sync")

    async def _sync_store(self) -> None:
        """Group commit: what the store committed lately becomes durable together, a moment
        after a burst began (store.py), not with two fsyncs per file."""
        while True:
            await self._committed.wait()
            await asyncio.sleep(SYNC_GATHER)
            self._committed.clear()
            try:
                await asyncio.to_thread(self._store.sync)
            except OSError as exc:
                log.error("cannot make the store durable: %s", exc)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._syncer is not None:
            self._syncer.cancel()
            await asyncio.gather(self._syncer, return_exceptions=True)
        try:
            await asyncio.to_thread(self._store.sync)
        except OSError as exc:
            log.error("cannot make the store durable: %s", exc)
