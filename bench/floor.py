"""The least work a caching proxy must do to pass one file from a peer on to its client.

The single-peer benchmark (bench/swarm.py) compares dhtdeb's proxy with curl straight from the
peer. That reference does not verify or store anything, so its ratio alone cannot tell how much of
the gap is dhtdeb's and how much is work no proxy may skip. `FloorProxy` does only that work, with
as little overhead as this machine allows, and is measured in the same round, from the same peer,
into the same sink:

- receive the body from the peer's server into a few reused 1 MiB buffers (no fresh memory);
- `hashes=2`: a SHA-256 per 1 MiB piece (what checking pieces against a peer's list costs) and the
  whole-file SHA-256 (the signed index's check); `hashes=1`: the whole-file hash only, the least
  any design may do;
- write the file into a new file of a store directory (kept until `close`, as a node keeps it);
  `direct=True` writes it with O_DIRECT, around the page cache: on a VM whose never-touched
  memory costs a fault into the host per page, putting 256 MiB into new page-cache pages costs
  more CPU than the whole reference transfer, and O_DIRECT is the one way a proxy could avoid it;
- send it to the client, the last piece only once the whole-file hash matched.

Each step is its own thread joined by queues, so the stages overlap on every core the machine
has; hashlib and the system calls release the GIL. No Python step per byte; one per 1 MiB.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import queue
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

MiB = 1024 * 1024
BUFFERS = 8  # 1 MiB buffers in flight between the stages
ALIGN = 4096  # O_DIRECT: buffer address, file offset and length in whole blocks


class FloorError(Exception):
    """The peer's answer was not the file, or its hash did not match."""


# One buffer between two stages: (buffer, bytes used); None ends the stream.
_Item = tuple[mmap.mmap, int] | None


class FloorProxy:
    """An HTTP server on loopback that answers every GET with the file at `upstream` (a peer's
    `/v1/files/<sha256>`), doing only the work described in the module docstring.
    `direct` says afterwards whether O_DIRECT was used (the file system may refuse it)."""

    def __init__(
        self, upstream: str, sha256: str, size: int, store: Path, *, hashes: int, direct: bool
    ) -> None:
        if hashes not in (1, 2):
            raise ValueError("hashes is 1 or 2")
        self.direct = direct
        self._upstream = urlsplit(upstream)
        self._sha256 = sha256
        self._size = size
        self._store = store
        self._hashes = hashes
        self._stored: list[Path] = []
        self.errors: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True, name="floor-accept")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def close(self) -> None:
        self._listener.close()
        for path in self._stored:
            path.unlink(missing_ok=True)

    # -- serving ------------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with client:
                try:
                    _read_head(client)
                    self._relay(client)
                except (OSError, FloorError) as exc:
                    self.errors.append(str(exc))

    def _relay(self, client: socket.socket) -> None:
        path = self._store / f"floor-{self._hashes}-{len(self._stored)}"
        self._stored.append(path)
        with (
            socket.create_connection((self._upstream.hostname, self._upstream.port)) as peer,
            open(self._open_store(path), "wb", buffering=0) as out,
        ):
            peer.sendall(
                f"GET {self._upstream.path} HTTP/1.1\r\nHost: {self._upstream.netloc}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            head, early = _read_head(peer)
            status = head.split(b"\r\n", 1)[0]
            if b" 200 " not in status or f"content-length: {self._size}".encode() not in (
                head.lower()
            ):
                raise FloorError(f"peer answered {status!r} without the whole file")
            client.sendall(
                f"HTTP/1.1 200 OK\r\nContent-Length: {self._size}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            self._pipeline(peer, early, out.fileno(), client)

    def _open_store(self, path: Path) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        if self.direct:
            try:
                return os.open(path, flags | os.O_DIRECT, 0o644)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.direct = False  # e.g. a file system without O_DIRECT
        return os.open(path, flags, 0o644)

    def _pipeline(self, peer: socket.socket, early: bytes, out: int, client: socket.socket) -> None:
        free: queue.Queue[mmap.mmap] = queue.Queue()
        for _ in range(BUFFERS):
            free.put(mmap.mmap(-1, MiB))  # page-aligned, as O_DIRECT wants
        # recv -> [piece hash ->] whole-file hash + write -> send
        to_hash: queue.Queue[_Item] = queue.Queue()
        to_store: queue.Queue[_Item] = queue.Queue()
        to_send: queue.Queue[_Item] = queue.Queue()
        whole = hashlib.sha256()
        matched = threading.Event()
        failures: list[BaseException] = []

        def stage(
            work: Callable[[mmap.mmap, int], None],
            inbox: queue.Queue[_Item],
            outbox: queue.Queue[_Item] | None,
        ) -> None:
            while (item := inbox.get()) is not None:
                if failures:
                    free.put(item[0])  # drain: the receiver stops at the next buffer
                    continue
                try:
                    work(*item)
                except BaseException as exc:  # raised by _pipeline once every stage ended
                    failures.append(exc)
                    matched.set()
                    free.put(item[0])
            if outbox is not None:
                outbox.put(None)

        def piece_hash(buffer: mmap.mmap, used: int) -> None:
            hashlib.sha256(memoryview(buffer)[:used]).digest()
            to_store.put((buffer, used))

        offset = 0

        def store(buffer: mmap.mmap, used: int) -> None:
            nonlocal offset
            view = memoryview(buffer)[:used]
            whole.update(view)
            if self.direct and used % ALIGN:  # the file's tail: whole blocks, then cut
                os.pwrite(out, memoryview(buffer)[: -(-used // ALIGN) * ALIGN], offset)
                os.ftruncate(out, offset + used)
            else:
                os.pwrite(out, view, offset)
            offset += used
            if offset == self._size:
                matched.set()
            to_send.put((buffer, used))

        sent = 0

        def send(buffer: mmap.mmap, used: int) -> None:
            nonlocal sent
            if sent + used == self._size:
                matched.wait()  # the last bytes wait for the whole-file hash
                if whole.hexdigest() != self._sha256:
                    raise FloorError("the whole file does not match its sha256")
            client.sendall(memoryview(buffer)[:used])
            sent += used
            free.put(buffer)

        stages = [(send, to_send, None), (store, to_store, to_send)]
        if self._hashes == 2:
            stages.append((piece_hash, to_hash, to_store))
        first_stage = stages[-1][1]
        threads = [threading.Thread(target=stage, args=args, name="floor") for args in stages]
        for thread in threads:
            thread.start()
        received = 0
        try:
            while received < self._size and not failures:
                buffer = free.get()
                want = min(MiB, self._size - received)
                used = min(len(early), want)
                buffer[:used] = early[:used]
                early = early[used:]
                view = memoryview(buffer)
                while used < want:
                    got = peer.recv_into(view[used:want])
                    if not got:
                        raise FloorError(f"peer closed after {received + used} bytes")
                    used += got
                received += used
                first_stage.put((buffer, used))
        finally:
            first_stage.put(None)  # each stage passes the end on once its work is done
            for thread in threads:
                thread.join()
        if failures:
            raise FloorError(f"floor proxy failed: {failures[0]}")


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """An HTTP message head and the bytes that came after it in the same reads."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk or len(data) > 65536:
            raise FloorError("no complete HTTP head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest
