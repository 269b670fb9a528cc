"""Assembly: the file one swarm download puts together from the pieces its scheduler accepts.

Owns: every received copy of a piece, kept in memory under its digest until the scheduler accepts
one (at most HELD_BYTES_LIMIT of them); writing and hashing the accepted copies in acceptance order
on one writer thread; which pieces are on disk and may be served to peers (as offers, or relayed
when taken on another downloader's word); and how far apt may read (`Transfer.progress`). Only the
accepted copy is written, so a late or lying duplicate can never overwrite accepted bytes.
Trusts: the verdicts swarm/download.py hands on from the scheduler, which are based on digests
computed here.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dhtdeb.clock import Clock
from dhtdeb.errors import DhtdebError
from dhtdeb.swarm.pieces import PIECE_SIZE, PieceList, piece_count
from dhtdeb.transfer import Transfer

HELD_BYTES_LIMIT = 64 * 1024 * 1024  # unaccepted piece copies kept in memory per download
INLINE_HASH_MAX = 256 * 1024  # pieces up to this size are hashed on the event loop
# Seconds apt may be kept waiting at a piece taken on a downloading peer's word before the bytes
# after it flow anyway (a wrong one then cuts apt's response, and apt retries): well inside apt's
# own timeout for a silent connection, for a big file in a crowd behind a slow mirror.
PROVISIONAL_HOLD_MAX = 30.0


class SwarmFailed(DhtdebError):
    """No source could deliver the file."""


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


async def _piece_digest(data: bytes) -> bytes:
    """A piece's SHA256: on a worker thread for a large piece, right here for a small one
    (a thread hand-off costs more than hashing a few hundred KiB)."""
    if len(data) <= INLINE_HASH_MAX:
        return _sha256(data)
    return await asyncio.to_thread(_sha256, data)


class Assembly:
    """The pieces of one file, from received copies to bytes on disk that apt and peers read.

    `wake` is set whenever a write ends, so that the download's loop looks at the scheduler
    again."""

    def __init__(self, transfer: Transfer, clock: Clock, wake: asyncio.Event) -> None:
        self._transfer = transfer
        self._partial = transfer.partial
        self._sha256 = transfer.sha256
        self._size = transfer.size
        self._piece_count = piece_count(self._size)
        self._clock = clock
        self._wake = wake
        self._copies: dict[int, dict[bytes, bytes]] = {}
        self._held_bytes = 0
        self._accepted: set[int] = set()
        self._accepted_digests: dict[int, bytes] = {}
        self._provisional: set[int] = set()  # accepted on a peer's offer: never offered on
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dhtdeb-writer")
        self._writes: list[asyncio.Future[int]] = []
        self._room = asyncio.Event()
        self._write_error: BaseException | None = None
        self._on_disk: set[int] = set()  # touched by the writer thread only
        self._written: set[int] = set()  # on disk and hashed; what peers may be served
        self._next_to_hash = 0
        self._trusted = 0  # pieces below are on disk and on nobody's word: apt may read them
        self._rehash = False  # a piece was retracted after the whole file was hashed
        self._held_since: float | None = None  # apt waits at a provisional piece since then
        self._released = 0  # bytes apt may have read
        self._apt_read_a_lie = False  # a retracted piece was among them: apt's response is cut

    # -- what the download shares with peers --------------------------------------------------

    @property
    def path(self) -> Path:
        return self._partial.path

    def have(self) -> frozenset[int]:
        return frozenset(self._written)

    def offers(self) -> dict[int, bytes]:
        """Pieces on disk that came from the mirror, by digest."""
        return {i: self._accepted_digests[i] for i in self._written if i not in self._provisional}

    def relays(self) -> dict[int, bytes]:
        """Pieces on disk taken on another downloader's offer, by digest."""
        return {i: self._accepted_digests[i] for i in self._written if i in self._provisional}

    def assembled_piece_list(self) -> PieceList | None:
        """The digests of the pieces as accepted, once every piece is."""
        if len(self._accepted_digests) != self._piece_count:
            return None
        return PieceList(
            self._size, tuple(self._accepted_digests[i] for i in range(self._piece_count))
        )

    # -- what the download's I/O asks ---------------------------------------------------------

    def is_accepted(self, index: int) -> bool:
        return index in self._accepted

    def is_written(self, index: int) -> bool:
        """The piece is on disk and hashed (and not retracted since)."""
        return index in self._written

    def held_copy(self, index: int, digest: bytes) -> bytes | None:
        """The copy of a piece held under `digest`, unless accepted or dropped meanwhile."""
        return self._copies.get(index, {}).get(digest)

    def peek(self, offset: int, length: int) -> bytes:
        """Bytes of the file as written."""
        return self._partial.peek(offset, length)

    @property
    def apt_read_a_lie(self) -> bool:
        """A retracted piece was among the bytes apt may have read: its response must fail."""
        return self._apt_read_a_lie

    # -- received copies ----------------------------------------------------------------------

    async def hold(self, index: int, data: bytes) -> bytes | None:
        """Keep a received copy of piece `index` under its digest until the scheduler decides,
        once the writer has made room for it: the digest, or None when the memory bound leaves
        no room."""
        digest = await _piece_digest(data)
        await self._room_for(len(data))
        if not self._keep(index, data, digest):
            return None
        return digest

    async def _room_for(self, size: int) -> None:
        """Back-pressure: wait while pieces queued for the writer fill the memory bound."""
        while self._held_bytes + size > HELD_BYTES_LIMIT and any(
            not job.done() for job in self._writes
        ):
            self._room.clear()
            await self._room.wait()

    def _keep(self, index: int, data: bytes, digest: bytes) -> bool:
        """False only when the memory bound leaves no room. A copy of a piece already accepted
        (the loser of a race between a peer and the mirror) is simply dropped."""
        if index in self._accepted:
            return True
        copies = self._copies.setdefault(index, {})
        if digest not in copies:
            if self._held_bytes + len(data) > HELD_BYTES_LIMIT:
                return False
            copies[digest] = data
            self._held_bytes += len(data)
        return True

    # -- the scheduler's verdicts -------------------------------------------------------------

    def accept(self, index: int, digest: bytes, provisional: bool) -> None:
        copies = self._copies.pop(index, {})
        data = copies.pop(digest, None)
        self._held_bytes -= sum(len(d) for d in copies.values())  # the accepted copy stays counted
        if data is None:
            raise SwarmFailed(f"{self._sha256}: accepted piece {index} is not held")
        self._accepted.add(index)
        self._accepted_digests[index] = digest
        if provisional:
            self._provisional.add(index)
        # Writing and hashing run on one writer thread, in acceptance order, so the event loop
        # keeps moving bytes; a piece counts as held (for apt and peers) once it is on disk.
        loop = asyncio.get_running_loop()
        if self._partial.in_memory:
            # A file held in memory (store.py): putting the piece down is a memory copy and its
            # hash at most a megabyte of SHA256, cheaper than a hand-off to the writer thread.
            job: asyncio.Future[int] = loop.create_future()
            try:
                job.set_result(self._write_piece(index, data))
            except (DhtdebError, OSError) as exc:
                job.set_exception(exc)
        else:
            job = loop.run_in_executor(self._writer, self._write_piece, index, data)
        self._writes.append(job)
        job.add_done_callback(functools.partial(self._written_cb, index=index, size=len(data)))

    def confirm(self, index: int) -> None:
        """A piece taken on a downloading peer's word was found good: apt may read it."""
        self._provisional.discard(index)
        self._advance_trusted()

    def retract(self, index: int) -> None:
        """Forget a provisional piece whose author lied: not served, not readable by apt (it
        never was: provisional pieces are beyond `_trusted`), hashed again once replaced."""
        self._accepted.discard(index)
        self._accepted_digests.pop(index, None)
        self._provisional.discard(index)
        self._written.discard(index)
        self._on_disk.discard(index)
        self._rehash = True
        if index * PIECE_SIZE < self._released:
            self._apt_read_a_lie = True

    # -- what apt may read --------------------------------------------------------------------

    def _advance_trusted(self) -> None:
        while self._trusted in self._written and self._trusted not in self._provisional:
            self._trusted += 1

    def _servable(self, hashed: int) -> int:
        """What apt may read: the hashed prefix, up to the first piece that is missing or was
        taken on a downloading peer's word (a liar's piece must be repairable, so apt does not
        see it before the whole-file SHA256 has matched), unless apt has waited there for
        PROVISIONAL_HOLD_MAX."""
        bound = self._trusted * PIECE_SIZE
        if hashed <= bound or self._rehash:
            self._held_since = None
            return min(hashed, bound)
        now = self._clock.now()
        if self._held_since is None:
            self._held_since = now
        if now - self._held_since < PROVISIONAL_HOLD_MAX:
            return bound
        return hashed

    # -- the writer ---------------------------------------------------------------------------

    def _write_piece(self, index: int, data: bytes) -> int:
        """On the writer thread: put the piece down, extend the in-order hash; bytes hashed."""
        self._partial.write_at(index * PIECE_SIZE, data)
        self._on_disk.add(index)
        while self._next_to_hash in self._on_disk:
            piece_start = self._next_to_hash * PIECE_SIZE
            piece_end = min(piece_start + PIECE_SIZE, self._size)
            first = data if self._next_to_hash == index else None
            self._partial.hash_through(piece_end, first)
            self._next_to_hash += 1
        return self._partial.written

    def _written_cb(self, done: asyncio.Future[int], *, index: int, size: int) -> None:
        self._held_bytes -= size
        self._room.set()
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:
            self._write_error = error
        else:
            self._written.add(index)
            # Every piece on disk was verified against a digest (the mirror's bytes, a piece
            # list, or the offering peer's statement); apt reads none taken on a statement,
            # and the transfer holds back the last bytes until the whole-file SHA256 matched,
            # so apt can never complete a wrong file.
            self._advance_trusted()
            servable = self._servable(done.result())
            self._released = max(self._released, servable)
            self._transfer.progress(servable)
        self._wake.set()

    async def whole_file_matches(self) -> bool:
        """Once every piece is accepted: wait for each to be on disk and hashed (hashing the
        file again if a piece was retracted meanwhile), then whether the whole file matches its
        SHA256. Raise SwarmFailed if a write failed."""
        await self._drain_writes()
        if self._rehash:
            self._rehash = False
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._writer, self._partial.rehash)
        return self._partial.matches()

    async def _drain_writes(self) -> None:
        """Wait for every accepted piece to be on disk and hashed."""
        while self._writes:
            pending, self._writes = self._writes, []
            await asyncio.gather(*pending, return_exceptions=True)
        if self._write_error is not None:
            raise SwarmFailed(f"{self._sha256}: writing failed: {self._write_error}")

    async def close(self) -> None:
        """The partial file may be discarded next: no write may still be on its way to it."""
        await asyncio.gather(*self._writes, return_exceptions=True)
        self._writer.shutdown(wait=False)
