"""ContentStore: verified files addressed by SHA256, committed atomically.

Owns: the store directory (`<root>/<aa>/<sha256>`), the `incoming/` area for files being written,
size accounting and least-recently-used eviction above a byte limit. Trusts: nothing. `commit`
hashes what was written and refuses bytes whose SHA256 or size differ from what the caller
expected, so unverified bytes cannot enter the store whatever the caller does.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dhtdeb.errors import VerificationError

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"[0-9a-f]{64}")
READBACK_SIZE = 1 << 20  # bytes read back per step when hashing pieces written out of order
# Files up to this size stay in memory until committed (one swarm piece: a file the peer server
# never serves before it is whole). Debian's median package is about 60 KiB.
IN_MEMORY_MAX = 1 << 20


def check_sha256(sha256: str) -> str:
    if not _HEX64.fullmatch(sha256):
        raise ValueError(f"not a lowercase hex SHA256: {sha256!r}")
    return sha256


@dataclass(frozen=True, slots=True)
class StoredFile:
    sha256: str
    path: Path
    size: int
    mtime: float


class PartialFile:
    """A file being downloaded, bound for `incoming/` and then the store.

    Bytes arrive either in order (`write`, a mirror stream) or at any offset (`write_at`, pieces
    from peers). Either way the whole-file SHA256 runs over the verified prefix in order: `write`
    hashes as it appends, `hash_through` hashes what `write_at` put down once the caller has
    accepted it. `commit` compares that hash with the expected one.

    A file of at most `IN_MEMORY_MAX` bytes (most of apt's packages) is held in memory until the
    store commits it, on a worker thread: the event loop never creates, writes or reads a file
    for it, and readers take its bytes with `read`. Larger files are written to `path` as they
    come, where readers (and the peer server) open them.
    """

    def __init__(self, path: Path, sha256: str, size: int) -> None:
        self.path = path
        self.sha256 = sha256
        self.size = size
        self.written = 0  # length of the prefix that has been hashed
        self._hash = hashlib.sha256()
        self._memory: bytearray | None = None
        self._file: BinaryIO | None = None
        if size <= IN_MEMORY_MAX:
            self._memory = bytearray(size)
        else:
            self._file = open(path, "w+b", buffering=0)  # closed by commit/discard
        self._readback: bytearray | None = None  # for hash_through, made on first use

    @property
    def in_memory(self) -> bool:
        return self._memory is not None

    def write(self, data: bytes) -> None:
        if self.written + len(data) > self.size:
            raise VerificationError(f"{self.sha256}: more bytes than the expected {self.size}")
        if self._memory is not None:
            self._memory[self.written : self.written + len(data)] = data
        else:
            assert self._file is not None
            os.pwrite(self._file.fileno(), data, self.written)
        self._hash.update(data)
        self.written += len(data)

    def write_at(self, offset: int, data: bytes) -> None:
        """Put bytes down at `offset` without hashing them (a piece, not yet accepted)."""
        if offset < 0 or offset + len(data) > self.size:
            raise VerificationError(f"{self.sha256}: bytes {offset}+{len(data)} outside the file")
        if self._memory is not None:
            self._memory[offset : offset + len(data)] = data
        else:
            assert self._file is not None
            os.pwrite(self._file.fileno(), data, offset)

    def hash_through(self, end: int, first: bytes | None = None) -> None:
        """Extend the hashed prefix to `end`; `first` may hold the bytes right after the prefix."""
        if first is not None and self.written + len(first) <= end:
            self._hash.update(first)
            self.written += len(first)
        if self.written >= end:
            return
        if self._memory is not None:
            self._hash.update(memoryview(self._memory)[self.written : end])
            self.written = end
            return
        assert self._file is not None
        if self._readback is None:
            self._readback = bytearray(READBACK_SIZE)
        buffer = memoryview(self._readback)
        while self.written < end:
            # Read back into one reused buffer: a fresh buffer per call costs new memory pages.
            view = buffer[: min(READBACK_SIZE, end - self.written)]
            got = os.preadv(self._file.fileno(), [view], self.written)
            if not got:
                raise VerificationError(f"{self.sha256}: bytes missing at {self.written}")
            self._hash.update(view[:got])
            self.written += got

    def read(self, offset: int, length: int) -> bytes:
        """Bytes of an in-memory file (the caller knows they are servable)."""
        if self._memory is None:
            raise ValueError(f"{self.sha256}: not held in memory; open {self.path}")
        return bytes(memoryview(self._memory)[offset : offset + length])

    def flush(self) -> None:
        """Nothing to do: bytes are written with pwrite, visible to readers of the same path."""

    def matches(self) -> bool:
        return self.written == self.size and self._hash.hexdigest() == self.sha256

    def write_out(self) -> None:
        """Put the whole file on disk at `path` and fsync it (the store's commit, on a worker
        thread)."""
        if self._memory is not None:
            with open(self.path, "wb") as out:
                out.write(self._memory)
                out.flush()
                os.fsync(out.fileno())
            return
        assert self._file is not None
        os.fsync(self._file.fileno())
        self._file.close()

    def discard(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class ContentStore:
    def __init__(self, root: Path, *, limit_bytes: int = 0) -> None:
        self.root = root
        self.limit_bytes = limit_bytes
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
        self._last_used[sha256] = time.time()
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
        """fsync, check the hash, rename into place. Raises VerificationError on mismatch."""
        try:
            partial.write_out()
        except OSError:
            partial.discard()
            raise
        if not partial.matches():
            partial.discard()
            raise VerificationError(f"{partial.sha256}: content does not match its SHA256")
        target = self.path_of(partial.sha256)
        target.parent.mkdir(exist_ok=True)
        if mtime is not None:
            os.utime(partial.path, (time.time(), mtime))
        os.replace(partial.path, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        if partial.sha256 not in self._sizes:
            self._bytes += partial.size
        self._sizes[partial.sha256] = partial.size
        self._last_used[partial.sha256] = time.time()
        self._evict(keep=partial.sha256)
        st = target.stat()
        return StoredFile(partial.sha256, target, st.st_size, st.st_mtime)

    def remove(self, sha256: str) -> None:
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
        if not self.limit_bytes or self._bytes <= self.limit_bytes:
            return
        for sha256 in sorted(self._last_used, key=self._last_used.__getitem__):
            if self._bytes <= self.limit_bytes:
                break
            if sha256 != keep:
                log.info("cache full: evicting %s", sha256)
                self.remove(sha256)
