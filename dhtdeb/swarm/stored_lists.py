"""The piece lists of stored files, for the peer server's answers (protocol v1, docs/swarm.md).

Owns: each stored file's list, computed once (hashing the file on a worker thread, a few files at
a time), cached next to the file as `<store>/<aa>/<sha256>.pieces` and in a small in-memory LRU;
lists of files just downloaded are adopted as they are, never hashed again.
Trusts: the `ContentStore` (only verified files enter it) and callers of `adopt` (a list the
whole-file SHA256 confirmed). A cache file that cannot be read or parsed is ignored and the file
hashed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable

from dhtdeb.errors import PeerWireError
from dhtdeb.store import ContentStore, StoredFile
from dhtdeb.swarm.pieces import PIECE_SIZE, PieceList, digest_file
from dhtdeb.swarm.wire import is_sha256, parse_piece_list

log = logging.getLogger(__name__)

PIECES_SUFFIX = ".pieces"
LIST_CACHE_ENTRIES = 64
DIGESTS_AT_ONCE = 2


class StoredPieceLists:
    def __init__(self, store: ContentStore, on_computed: Callable[[], None]) -> None:
        """`on_computed`: called for each file hashed (the peer server counts them)."""
        self._store = store
        self._on_computed = on_computed
        self._lists: OrderedDict[str, PieceList] = OrderedDict()
        self._computing: dict[str, asyncio.Future[tuple[PieceList | None, bool]]] = {}
        self._digest_slots = asyncio.Semaphore(DIGESTS_AT_ONCE)

    def cancel(self) -> None:
        """Stop waiting for the lists being computed (the server closes)."""
        for pending in list(self._computing.values()):
            pending.cancel()

    async def piece_list(self, sha256: str) -> PieceList | None:
        """The piece list of a stored file, or None if the store does not hold it."""
        if not is_sha256(sha256):
            return None
        stored = self._store.lookup(sha256)  # first: the file may have been evicted
        if stored is None:
            return None
        cached = self._lists.get(sha256)
        if cached is not None:
            self._lists.move_to_end(sha256)
            return cached
        if stored.size <= PIECE_SIZE:
            # One piece: the whole-file SHA256 is the piece hash; nothing to read or cache.
            single = PieceList(stored.size, (bytes.fromhex(sha256),))
            self._remember(sha256, single)
            return single
        pending = self._computing.get(sha256)
        if pending is None:
            pending = asyncio.ensure_future(self._digest_in_thread(stored))
            self._computing[sha256] = pending
            pending.add_done_callback(lambda done: self._digested(sha256, done))
        pieces, _ = await asyncio.shield(pending)
        return pieces

    async def _digest_in_thread(self, stored: StoredFile) -> tuple[PieceList | None, bool]:
        # Few at a time: a peer asking for the lists of many big files must not occupy every
        # executor thread (the proxy uses them too) or the disk.
        async with self._digest_slots:
            return await asyncio.to_thread(self._load_or_digest, stored)

    async def adopt(self, sha256: str, pieces: PieceList) -> None:
        """Cache the list of a file just committed to the store, so it is never hashed again.
        Only for a list the whole-file SHA256 confirmed (the download verified every piece
        against it and the store accepted the file)."""
        stored = self._store.lookup(sha256)
        if stored is None or stored.size != pieces.size or len(pieces) == 1:
            return
        self._remember(sha256, pieces)
        await asyncio.to_thread(self._write_cache, stored, pieces)

    def _digested(self, sha256: str, done: asyncio.Future[tuple[PieceList | None, bool]]) -> None:
        self._computing.pop(sha256, None)
        if done.cancelled():
            return
        if (exc := done.exception()) is not None:
            log.warning("piece list of %s failed: %s", sha256, exc)
            return
        pieces, computed = done.result()
        if computed:
            self._on_computed()
        if pieces is not None:
            self._remember(sha256, pieces)

    def _remember(self, sha256: str, pieces: PieceList) -> None:
        self._lists[sha256] = pieces
        self._lists.move_to_end(sha256)
        while len(self._lists) > LIST_CACHE_ENTRIES:
            self._lists.popitem(last=False)

    def _load_or_digest(self, stored: StoredFile) -> tuple[PieceList | None, bool]:
        """In a thread: the cached list next to the file, else hash the file and cache the list.
        Returns (list or None if the file vanished, whether the file was hashed)."""
        cache = stored.path.with_name(stored.sha256 + PIECES_SUFFIX)
        try:
            return parse_piece_list(stored.size, cache.read_bytes()), False
        except FileNotFoundError:
            pass
        except (OSError, PeerWireError) as exc:
            log.debug("ignoring unusable piece list cache %s: %s", cache, exc)
        try:
            pieces = digest_file(stored.path, stored.size)
        except OSError as exc:
            log.debug("cannot hash %s: %s", stored.path, exc)
            return None, False
        self._write_cache(stored, pieces)
        return pieces, True

    def _write_cache(self, stored: StoredFile, pieces: PieceList) -> None:
        """In a thread. Atomic: a crash leaves at most a temporary in incoming/, which the store
        clears on start."""
        cache = stored.path.with_name(stored.sha256 + PIECES_SUFFIX)
        scratch = self._store.incoming / (
            f"{stored.sha256}{PIECES_SUFFIX}.{os.getpid()}.{threading.get_ident()}"
        )
        try:
            with open(scratch, "wb") as handle:
                handle.write(pieces.to_bytes())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(scratch, cache)
        except OSError as exc:
            log.debug("cannot cache piece list %s: %s", cache, exc)
            with contextlib.suppress(OSError):
                scratch.unlink()
