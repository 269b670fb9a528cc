"""ContentStore: verified files addressed by SHA256, committed atomically.

Owns: the store directory (`<root>/<aa>/<sha256>`), the `incoming/` area for files being written,
size accounting and least-recently-used eviction above a byte limit, the files kept out of that
eviction (pinned ones, listed in `<root>/pinned`; ones being read, see `reading`), and the store's
durability.
Trusts: nothing. `commit` hashes what was written and refuses bytes whose SHA256 or size differ
from what the caller expected, so unverified bytes cannot enter the store whatever the caller does.

Durability is group-committed. `commit` renames a verified file into place without waiting for
the disk, so apt's batch of hundreds of small files does not pay two fsyncs per file; `sync`
(every second or so, on a worker thread) fsyncs what was committed since, with one fsync per
directory. Before the first such file is renamed, a durable marker file `unsynced` is created;
`sync` removes it once nothing is left unsynced. A power loss can only lose or damage files
committed while the marker existed, and they changed (ctime) after it was made: a store opened
with the marker present hashes those files again and removes any whose bytes no longer match
their name. A killed daemon loses nothing (the kernel still writes its files out). If the wall
clock went backwards while the marker existed, the marker's time is set back with it before the
next rename, so that files renamed after the jump still count as changed since the marker.

A file being sent (to apt or a peer) is entered with `reading(sha256)` by the sender around its
open and send: eviction, automatic or asked for, leaves it alone until the last reader is done.
Deleting an open file would not hurt the reader on Linux, but the space would not come back until
it finished, and `dhtdeb cache evict` of a file apt is reading is better refused than half done.

Files being written are `PartialFile`s (partial_file.py); store_check.py is the offline check
(`dhtdeb cache verify`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dhtdeb.errors import DhtdebError, VerificationError
from dhtdeb.partial_file import PartialFile

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"[0-9a-f]{64}")
UNSYNCED_MARKER = "unsynced"
PINNED_LIST = "pinned"  # one SHA256 a line: files LRU eviction never removes
CLOCK_SLACK = 120.0  # seconds: files changed this long before the marker are rechecked too


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _durable_sha256(path: Path) -> str:
    """The file's SHA256, and the file made durable (after a kill its bytes may still be only in
    the page cache: hashed right, not yet on disk)."""
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
        os.fsync(handle.fileno())
    return digest


def stored_name(path: Path) -> bool:
    """`path` is where the store keeps a file: `<root>/<aa>/<sha256>`."""
    return bool(_HEX64.fullmatch(path.name)) and path.parent.name == path.name[:2]


def check_sha256(sha256: str) -> str:
    if not _HEX64.fullmatch(sha256):
        raise ValueError(f"not a lowercase hex SHA256: {sha256!r}")
    return sha256


class NotStored(DhtdebError):
    """The store holds no file with this SHA256."""


class EvictionRefused(DhtdebError):
    """The file may not be evicted now: it is pinned, or being read."""


@dataclass(frozen=True, slots=True)
class StoreEntry:
    """One stored file as `dhtdeb cache list` shows it."""

    sha256: str
    size: int
    last_used: float  # wall clock; from the file's atime for files stored before this start
    pinned: bool
    readers: int  # responses sending it now


@dataclass(frozen=True, slots=True)
class StoredFile:
    sha256: str
    path: Path
    size: int
    mtime: float


class ContentStore:
    def __init__(
        self, root: Path, *, limit_bytes: int = 0, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.root = root
        self.limit_bytes = limit_bytes
        self._wall_clock = wall_clock
        self.incoming = root / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        for leftover in self.incoming.iterdir():
            # A crash or kill mid-download leaves partial files here; they were never verified.
            with contextlib.suppress(OSError):
                leftover.unlink()
        self._sizes: dict[str, int] = {}
        self._last_used: dict[str, float] = {}
        for path in root.glob("??/*"):
            if _HEX64.fullmatch(path.name) and path.parent.name == path.name[:2]:
                st = path.stat()
                self._sizes[path.name] = st.st_size
                self._last_used[path.name] = st.st_atime
        self._bytes = sum(self._sizes.values())
        self._sequence = 0
        # Pins and readers: changed on the event loop (and pins on worker threads), read by the
        # eviction of a commit on a worker thread; one lock makes "not in use, so remove" atomic.
        self._use_lock = threading.Lock()
        self._pins_file_lock = threading.Lock()  # one writer of the pin list at a time
        self._pinned = self._load_pins()
        self._readers: dict[str, int] = {}
        self._over_limit_logged = False
        self._marker = root / UNSYNCED_MARKER
        self._sync_lock = threading.Lock()
        self._unsynced: list[Path] = []
        self._renaming = 0  # commits between _before_rename and _after_rename
        self._marked = False  # the marker exists and is durable
        self._marked_at = 0.0  # the marker's mtime (wall clock)
        self.rechecked = self._recheck_after_crash()
        self.evictions = 0  # files removed by _evict (least recently used, above limit_bytes)

    # -- pins and readers ---------------------------------------------------------------------

    def _load_pins(self) -> set[str]:
        try:
            lines = (self.root / PINNED_LIST).read_text().split()
        except FileNotFoundError:
            return set()
        pinned = {line for line in lines if _HEX64.fullmatch(line) and line in self._sizes}
        if len(pinned) != len(lines):
            log.warning("%d pinned files are no longer stored; unpinned", len(lines) - len(pinned))
            self._save_pins(pinned)
        return pinned

    def _save_pins(self, pinned: set[str]) -> None:
        """Write the pin list atomically and durably (a pin must survive a power loss)."""
        scratch = self.incoming / f"{PINNED_LIST}.{os.getpid()}.{threading.get_ident()}"
        with open(scratch, "w") as out:
            out.writelines(f"{sha256}\n" for sha256 in sorted(pinned))
            out.flush()
            os.fsync(out.fileno())
        os.replace(scratch, self.root / PINNED_LIST)
        _fsync_directory(self.root)

    def pin(self, sha256: str) -> bool:
        """Keep a stored file out of LRU eviction, across restarts too; whether it was not pinned
        already. Raises NotStored. Writes and fsyncs the pin list: run on a worker thread."""
        check_sha256(sha256)
        with self._pins_file_lock:
            with self._use_lock:  # held briefly: the event loop takes it in `reading`
                if sha256 not in self._sizes:
                    raise NotStored(f"{sha256} is not in the store")
                if sha256 in self._pinned:
                    return False
                self._pinned.add(sha256)  # from now on safe from eviction
                pinned = set(self._pinned)
            try:
                self._save_pins(pinned)
            except OSError:
                with self._use_lock:
                    self._pinned.discard(sha256)
                raise
        return True

    def unpin(self, sha256: str) -> bool:
        """Let LRU eviction have the file again; whether it was pinned. Raises NotStored for a
        file neither stored nor pinned. Run on a worker thread, as `pin`."""
        check_sha256(sha256)
        with self._pins_file_lock:
            with self._use_lock:
                if sha256 not in self._pinned:
                    if sha256 not in self._sizes:
                        raise NotStored(f"{sha256} is not in the store")
                    return False
                pinned = self._pinned - {sha256}
            self._save_pins(pinned)  # still safe from eviction until the list says otherwise
            with self._use_lock:
                self._pinned.discard(sha256)
        return True

    def is_pinned(self, sha256: str) -> bool:
        return sha256 in self._pinned

    @property
    def pinned_count(self) -> int:
        return len(self._pinned)

    @property
    def pinned_bytes(self) -> int:
        return sum(self._sizes.get(sha256, 0) for sha256 in list(self._pinned))

    @contextlib.contextmanager
    def reading(self, sha256: str) -> Iterator[None]:
        """Held by a sender around opening and sending the file: no eviction removes it
        meanwhile. Enter it before the open, so that a file evicted first fails the open."""
        with self._use_lock:
            self._readers[sha256] = self._readers.get(sha256, 0) + 1
        try:
            yield
        finally:
            with self._use_lock:
                left = self._readers.pop(sha256) - 1
                if left:
                    self._readers[sha256] = left

    def in_use(self, sha256: str) -> bool:
        """Whether a response is sending this file now."""
        return sha256 in self._readers

    @property
    def readers(self) -> int:
        """Responses sending a stored file now."""
        return sum(self._readers.values())

    def entries(self) -> list[StoreEntry]:
        """Every stored file, most recently used first."""
        with self._use_lock:
            rows = [
                StoreEntry(
                    sha256,
                    size,
                    self._last_used.get(sha256, 0.0),
                    sha256 in self._pinned,
                    self._readers.get(sha256, 0),
                )
                for sha256, size in list(self._sizes.items())
            ]
        rows.sort(key=lambda entry: entry.last_used, reverse=True)
        return rows

    def evict(self, sha256: str) -> int:
        """Remove a stored file now (`dhtdeb cache evict`); the bytes freed. Raises NotStored,
        or EvictionRefused for a pinned file or one being read."""
        check_sha256(sha256)
        with self._use_lock:
            size = self._sizes.get(sha256)
            if size is None:
                raise NotStored(f"{sha256} is not in the store")
            if sha256 in self._pinned:
                raise EvictionRefused(f"{sha256} is pinned (unpin it first)")
            if sha256 in self._readers:
                raise EvictionRefused(f"{sha256} is being sent ({self._readers[sha256]} readers)")
            self._remove(sha256)
        log.info("evicted %s on request", sha256)
        return size

    # -- durability ---------------------------------------------------------------------------

    def _recheck_after_crash(self) -> int:
        """After an unclean stop, hash the files committed since the marker was made; remove
        those whose bytes do not match their name. Returns how many were removed."""
        try:
            since = self._marker.stat().st_mtime - CLOCK_SLACK
        except FileNotFoundError:
            return 0
        removed = 0
        checked = 0
        directories: set[Path] = set()
        for sha256 in list(self._sizes):
            path = self.path_of(sha256)
            try:
                if path.stat().st_ctime < since:
                    continue
                checked += 1
                directories.add(path.parent)
                good = _durable_sha256(path) == sha256
            except OSError:
                good = False
            if not good:
                log.warning("%s: damaged by an unclean stop; removed", sha256)
                self.remove(sha256)
                removed += 1
        log.info("unclean stop: %d recent files hashed again, %d removed", checked, removed)
        for directory in directories:
            _fsync_directory(directory)
        self._marker.unlink()
        _fsync_directory(self.root)
        return removed

    @property
    def unsynced(self) -> int:
        """Files committed but not yet known to be on disk."""
        return len(self._unsynced)

    def _before_rename(self) -> None:
        """A verified file is about to be renamed into place without an fsync: make sure the
        durable marker exists first, and count the rename as in flight until `_after_rename`."""
        with self._sync_lock:
            self._renaming += 1
            now = self._wall_clock()
            if not self._marked:
                with open(self._marker, "wb") as marker:
                    os.utime(marker.fileno(), (now, now))
                    os.fsync(marker.fileno())
                _fsync_directory(self.root)
                self._marked = True
                self._marked_at = now
            elif now < self._marked_at:
                # The wall clock went back: files renamed from now on get ctimes before the
                # marker's mtime, and a recheck after a crash would skip them.
                with open(self._marker, "rb") as marker:
                    os.utime(marker.fileno(), (now, now))
                    os.fsync(marker.fileno())
                log.info(
                    "the wall clock went back %.0f s; store marker reset", self._marked_at - now
                )
                self._marked_at = now

    def _after_rename(self, path: Path | None) -> None:
        with self._sync_lock:
            self._renaming -= 1
            if path is not None:
                self._unsynced.append(path)

    def sync(self) -> int:
        """Make every file committed so far durable (files, then their directories), then drop
        the marker if nothing newer waits. Run on a worker thread. Returns files synced."""
        with self._sync_lock:
            batch, self._unsynced = self._unsynced, []
        directories: set[Path] = set()
        for path in batch:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # evicted meanwhile
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            directories.add(path.parent)
        for directory in directories:
            _fsync_directory(directory)
        with self._sync_lock:
            if self._marked and not self._unsynced and not self._renaming:
                with contextlib.suppress(FileNotFoundError):
                    self._marker.unlink()
                _fsync_directory(self.root)
                self._marked = False
        return len(batch)

    def path_of(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256

    def lookup(self, sha256: str) -> StoredFile | None:
        if sha256 not in self._sizes:
            return None
        path = self.path_of(sha256)
        try:
            st = path.stat()
        except FileNotFoundError:
            self._forget(sha256)
            return None
        self._last_used[sha256] = self._wall_clock()
        return StoredFile(sha256, path, st.st_size, st.st_mtime)

    def __contains__(self, sha256: object) -> bool:
        return isinstance(sha256, str) and sha256 in self._sizes

    def hashes(self) -> Iterator[str]:
        return iter(list(self._sizes))

    @property
    def file_count(self) -> int:
        return len(self._sizes)

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def begin(self, sha256: str, size: int) -> PartialFile:
        check_sha256(sha256)
        self._sequence += 1
        path = self.incoming / f"{sha256}.{os.getpid()}.{self._sequence}"
        return PartialFile(path, sha256, size)

    def commit(self, partial: PartialFile, *, mtime: float | None = None) -> StoredFile:
        """Check the hash, write out, rename into place; durable at the next `sync`. Raises
        VerificationError on mismatch. Run on a worker thread."""
        if not partial.matches():
            partial.discard()
            raise VerificationError(f"{partial.sha256}: content does not match its SHA256")
        try:
            partial.write_out()
        except OSError:
            partial.discard()
            raise
        target = self.path_of(partial.sha256)
        target.parent.mkdir(exist_ok=True)
        if mtime is not None:
            os.utime(partial.path, (self._wall_clock(), mtime))
        self._before_rename()
        try:
            os.replace(partial.path, target)
        except OSError:
            self._after_rename(None)
            partial.discard()
            raise
        self._after_rename(target)
        if partial.sha256 not in self._sizes:
            self._bytes += partial.size
        self._sizes[partial.sha256] = partial.size
        self._last_used[partial.sha256] = self._wall_clock()
        self._evict(keep=partial.sha256)
        st = target.stat()
        return StoredFile(partial.sha256, target, st.st_size, st.st_mtime)

    def remove(self, sha256: str) -> None:
        """Remove a file whatever its pin or readers (a damaged one): also unpinned."""
        with self._pins_file_lock:
            with self._use_lock:
                was_pinned = sha256 in self._pinned
                self._pinned.discard(sha256)
                self._remove(sha256)
                pinned = set(self._pinned)
            if was_pinned:
                self._save_pins(pinned)

    def _remove(self, sha256: str) -> None:
        path = self.path_of(sha256)
        for stale in (path, path.with_name(path.name + ".pieces")):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        self._forget(sha256)

    def _forget(self, sha256: str) -> None:
        size = self._sizes.pop(sha256, None)
        self._last_used.pop(sha256, None)
        if size is not None:
            self._bytes -= size

    def _evict(self, *, keep: str) -> None:
        """Least recently used first, above the limit; never `keep` (just committed), a pinned
        file, or one being read."""
        if not self.limit_bytes or self._bytes <= self.limit_bytes:
            self._over_limit_logged = False
            return
        with self._use_lock:
            last_used = dict(self._last_used)
            for sha256 in sorted(last_used, key=last_used.__getitem__):
                if self._bytes <= self.limit_bytes:
                    break
                if sha256 != keep and sha256 not in self._pinned and sha256 not in self._readers:
                    log.info("cache full: evicting %s", sha256)
                    self._remove(sha256)
                    self.evictions += 1
        if self._bytes > self.limit_bytes and not self._over_limit_logged:
            self._over_limit_logged = True
            log.warning(
                "store above --cache-limit (%d > %d bytes): the rest is pinned (%d bytes) or "
                "being sent",
                self._bytes,
                self.limit_bytes,
                self.pinned_bytes,
            )
