"""PartialFile: one file being written into the store's `incoming/` area, and its running SHA256
over the verified prefix (see the class). Trusts nothing: it refuses bytes outside the file, and
`ContentStore.commit` compares its hash with the expected one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
from pathlib import Path
from typing import BinaryIO

from dhtdeb.errors import VerificationError

log = logging.getLogger(__name__)

READBACK_SIZE = 1 << 20  # bytes read back per step when hashing pieces written out of order
# Files up to this size stay in memory until committed (one swarm piece: a file the peer server
# never serves before it is whole). Debian's median package is about 60 KiB.
IN_MEMORY_MAX = 1 << 20


def _log_if_full(exc: OSError, sha256: str, size: int) -> None:
    """A full disk is the operator's to fix: say so plainly, once per failed file."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        log.error(
            "store full: no space left on device for %s (%d bytes); this download fails, "
            "the daemon carries on (free space on the state directory's disk)",
            sha256,
            size,
        )


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
        self._full_logged = False
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
            self._pwrite(data, self.written)
        self._hash.update(data)
        self.written += len(data)

    def write_at(self, offset: int, data: bytes) -> None:
        """Put bytes down at `offset` without hashing them (a piece, not yet accepted)."""
        if offset < 0 or offset + len(data) > self.size:
            raise VerificationError(f"{self.sha256}: bytes {offset}+{len(data)} outside the file")
        if self._memory is not None:
            self._memory[offset : offset + len(data)] = data
        else:
            self._pwrite(data, offset)

    def _pwrite(self, data: bytes, offset: int) -> None:
        assert self._file is not None
        try:
            os.pwrite(self._file.fileno(), data, offset)
        except OSError as exc:
            self._note_failure(exc)
            raise

    def _note_failure(self, exc: OSError) -> None:
        if not self._full_logged:
            self._full_logged = True
            _log_if_full(exc, self.sha256, self.size)

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

    def rehash(self) -> None:
        """Hash the whole file again from its first byte (pieces were replaced after the hashed
        prefix had passed them)."""
        self._hash = hashlib.sha256()
        self.written = 0
        self.hash_through(self.size)

    def peek(self, offset: int, length: int) -> bytes:
        """Bytes as they are now, held in memory or on disk (whatever their state)."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"{self.sha256}: bytes {offset}+{length} outside the file")
        if self._memory is not None:
            return bytes(memoryview(self._memory)[offset : offset + length])
        assert self._file is not None
        return os.pread(self._file.fileno(), length, offset)

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
        """Put the whole file at `path` (the store's commit, on a worker thread)."""
        if self._memory is not None:
            try:
                with open(self.path, "wb") as out:
                    out.write(self._memory)
            except OSError as exc:
                self._note_failure(exc)
                raise
            return
        assert self._file is not None
        self._file.close()

    def discard(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
