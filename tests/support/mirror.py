"""A real HTTP mirror for tests: serves an archive directory on 127.0.0.1 and counts what it sends.

Owns: an aiohttp server on its own event loop in a background thread (so synchronous tests and
subprocesses such as apt or the daemon can talk to it), per-path body byte counters, a request log,
and per-path behaviour switches: override bytes, throttling, stalling, cutting, forced statuses,
plus one mirror-wide cap on the total body rate (an uplink shared by every connection).
Trusts: nothing it receives; paths are confined to the served directory.

Paths in the API are archive-relative ("dists/…", "pool/…"), i.e. the URL path without the
`/debian/` prefix and percent-decoded. Requests in absolute form (`GET http://host/debian/…`, as
apt sends to a proxy) are served too, so the mirror can stand in for a proxy in harness checks.
"""

from __future__ import annotations

import asyncio
import email.utils
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

from aiohttp import web

CHUNK = 64 * 1024
_START_TIMEOUT = 10.0
_LINK_BURST = 0.05  # seconds of credit an idle rate-capped link may save up


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the mirror received it, logged before the response is written."""

    method: str
    # The request target exactly as sent (absolute form when a client spoke to us as a proxy).
    target: str
    # Archive-relative, percent-decoded path ("" when outside the prefix).
    path: str
    # In the order received, with the original capitalisation.
    headers: tuple[tuple[str, str], ...]
    # Client address of the TCP connection: requests sharing it came on one kept-alive connection.
    peer: tuple[str, int]
    version: str

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


@dataclass(frozen=True, slots=True)
class ResponseRecord:
    path: str
    status: int
    # Body bytes actually written to the connection (less than planned when the client went away).
    body_bytes: int
    completed: bool


@dataclass(frozen=True, slots=True)
class _Range:
    start: int
    end: int  # inclusive


@dataclass
class _Progress:
    sent: int = 0
    completed: bool = False


@dataclass
class _Stall:
    after: int
    # Not bound to a loop until first awaited; set from other threads via call_soon_threadsafe.
    released: asyncio.Event = field(default_factory=asyncio.Event)


def _http_date(timestamp: float) -> str:
    return email.utils.formatdate(int(timestamp), usegmt=True)


def _parse_http_date(value: str) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _parse_range(value: str, size: int) -> _Range | None:
    """One `bytes=` range resolved against `size`; None when malformed or multi-range."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first:
            suffix = int(last)
            if suffix <= 0:
                return None
            return _Range(max(size - suffix, 0), size - 1)
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start > end:
        return None
    return _Range(start, min(end, size - 1))


class Mirror:
    """Serve `root` at `http://127.0.0.1:<port>/<prefix>/`; a context manager, or start()/stop().

    Counters and the log are guarded by one condition variable; `wait_for` blocks on it, so a test
    can wait for "the mirror has sent N bytes of this file" without polling."""

    def __init__(
        self,
        root: Path,
        *,
        prefix: str = "debian",
        port: int = 0,
        total_rate: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        """`port` 0 picks a free port; `total_rate` (bytes/s, None: none) caps the sum of all
        body bytes sent, whatever the number of connections (see `set_total_rate`); `host` is
        the address to listen on (the fleet harness serves 0.0.0.0 inside a network namespace)."""
        self.root = root.resolve()
        self.host = host
        self.prefix = "/" + prefix.strip("/") + "/"
        self._cond = threading.Condition()
        self._bytes: defaultdict[str, int] = defaultdict(int)
        self._requests: list[RequestRecord] = []
        self._responses: list[ResponseRecord] = []
        self._overrides: dict[str, tuple[bytes, float]] = {}  # path -> (data, its mtime)
        self._served_mtime: dict[str, float] = {}  # path -> the Last-Modified last served
        self._statuses: dict[str, int] = {}
        self._throttles: dict[str, int] = {}
        self._stalls: dict[str, _Stall] = {}
        self._cuts: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._wanted_port = port
        self._port = 0
        self._total_rate: int | None = None
        # The mirror-wide pacer: the time at which the shared link is free again. Only touched
        # on the mirror's event loop, so it needs no lock.
        self._link_free_at = 0.0
        self.set_total_rate(total_rate)

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Mirror:
        ready = threading.Event()
        errors: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._serve, args=(ready, errors), name=f"mirror:{self.root.name}", daemon=True
        )
        self._thread.start()
        if not ready.wait(_START_TIMEOUT):
            raise RuntimeError("mirror did not start")
        if errors:
            raise RuntimeError("mirror failed to start") from errors[0]
        return self

    def _serve(self, ready: threading.Event, errors: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._open())
        except BaseException as exc:  # reported to start(), which raises it in the test's thread
            errors.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._close())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _open(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Stalled or throttled responses are cut after shutdown_timeout when the mirror stops.
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._wanted_port)
        await site.start()
        address = self._runner.addresses[0]
        self._port = int(address[1])

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        with self._cond:
            for stall in self._stalls.values():
                self._set_released(stall)
            self._cond.notify_all()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_START_TIMEOUT)
        self._thread = None
        self._loop = None

    def __enter__(self) -> Mirror:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- addresses --------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def host_port(self) -> str:
        """The mirror's "HOST:PORT" ("127.0.0.1:PORT" by default), as it appears in URL-prefix
        proxy paths."""
        return f"{self.host}:{self._port}"

    @property
    def url(self) -> str:
        """The archive's base URL, e.g. http://127.0.0.1:PORT/debian (no trailing slash)."""
        return f"http://{self.host_port}{self.prefix.rstrip('/')}"

    def url_for(self, path: str) -> str:
        return f"{self.url}/{path.lstrip('/')}"

    # --- behaviour switches (thread-safe; take effect for the next request) -----------------------

    def override(self, path: str, data: bytes | None) -> None:
        """Serve `data` instead of the file at `path` (None removes the override). Its
        Last-Modified is later, by a whole second, than any served for `path` before: a client's
        If-Modified-Since must not make a new body look unchanged (HTTP dates count seconds)."""
        with self._cond:
            if data is None:
                self._overrides.pop(path, None)
            else:
                served = self._served_mtime.get(path, 0.0)
                self._overrides[path] = (data, max(time.time(), int(served) + 1.0))

    def set_status(self, path: str, status: int | None) -> None:
        """Answer requests for `path` with an empty response of this status (None: normal)."""
        with self._cond:
            if status is None:
                self._statuses.pop(path, None)
            else:
                self._statuses[path] = status

    def throttle(self, path: str, bytes_per_second: int | None) -> None:
        """Send the body of `path` at about this rate (None: full speed)."""
        with self._cond:
            if bytes_per_second is None:
                self._throttles.pop(path, None)
            else:
                self._throttles[path] = max(1, bytes_per_second)

    def stall(self, path: str, after_bytes: int) -> None:
        """Send the first `after_bytes` of each response body for `path`, then hold the connection
        open sending nothing until `release(path)`. Deterministic "mid-download" for kill tests:
        `wait_for_bytes(path, after_bytes)` returns once the stall point is reached."""
        with self._cond:
            self._stalls[path] = _Stall(after_bytes)

    def cut(self, path: str, after_bytes: int | None) -> None:
        """Send the first `after_bytes` of each response body for `path`, then drop the connection
        (a mirror dying mid-transfer). None: serve normally."""
        with self._cond:
            if after_bytes is None:
                self._cuts.pop(path, None)
            else:
                self._cuts[path] = after_bytes

    def set_total_rate(self, bytes_per_second: int | None) -> None:
        """Cap the total body rate of all responses together (None: no cap). Connections share
        the link in the order their chunks queue up, so each of N concurrent downloads gets about
        1/N of it. Takes effect for the next chunk."""
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError("total_rate must be positive (None: no cap)")
        with self._cond:
            self._total_rate = bytes_per_second

    def release(self, path: str) -> None:
        with self._cond:
            stall = self._stalls.pop(path, None)
            if stall is not None:
                self._set_released(stall)

    def reset_counters(self) -> None:
        with self._cond:
            self._bytes.clear()
            self._requests.clear()
            self._responses.clear()

    # --- observations -----------------------------------------------------------------------------

    def bytes_sent(self, path: str | None = None) -> int:
        """Body bytes sent for one archive-relative path, or in total."""
        with self._cond:
            if path is not None:
                return self._bytes.get(path, 0)
            return sum(self._bytes.values())

    def deb_bytes_sent(self) -> int:
        with self._cond:
            return sum(n for p, n in self._bytes.items() if p.endswith(".deb"))

    def bytes_by_path(self) -> dict[str, int]:
        with self._cond:
            return dict(self._bytes)

    @property
    def requests(self) -> list[RequestRecord]:
        with self._cond:
            return list(self._requests)

    @property
    def responses(self) -> list[ResponseRecord]:
        with self._cond:
            return list(self._responses)

    def requests_for(self, path: str) -> list[RequestRecord]:
        return [r for r in self.requests if r.path == path]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Block until `predicate()` (run under the counter lock) holds, else TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"mirror condition not reached in {timeout}s")
                self._cond.wait(remaining)

    def wait_for_bytes(self, path: str, at_least: int, timeout: float = 30.0) -> None:
        self.wait_for(lambda: self._bytes.get(path, 0) >= at_least, timeout)

    # --- serving ----------------------------------------------------------------------------------

    def _relative(self, request: web.Request) -> str:
        # Percent-decoded; for an absolute-form target aiohttp keeps only the path.
        path = request.path
        if not path.startswith(self.prefix):
            return ""
        return path[len(self.prefix) :]

    def _file(self, relative: str) -> Path | None:
        if not relative or "\x00" in relative:
            return None
        candidate = (self.root / relative).resolve()
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate

    def _record_request(self, request: web.Request, relative: str) -> None:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        record = RequestRecord(
            method=request.method,
            target=request.raw_path,  # the request target as sent, absolute form included
            path=relative,
            headers=tuple(
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers
            ),
            peer=(str(peer[0]), int(peer[1])) if peer else ("", 0),
            version=f"{request.version.major}.{request.version.minor}",
        )
        with self._cond:
            self._requests.append(record)
            self._cond.notify_all()

    def _count(self, relative: str, n: int) -> None:
        with self._cond:
            self._bytes[relative] += n
            self._cond.notify_all()

    def _record_response(self, relative: str, status: int, sent: int, completed: bool) -> None:
        with self._cond:
            self._responses.append(ResponseRecord(relative, status, sent, completed))
            self._cond.notify_all()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        relative = self._relative(request)
        self._record_request(request, relative)
        if request.method not in ("GET", "HEAD"):
            self._record_response(relative, 405, 0, True)
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        with self._cond:
            forced = self._statuses.get(relative)
            override = self._overrides.get(relative)
        if forced is not None:
            self._record_response(relative, forced, 0, True)
            return web.Response(status=forced)
        if override is not None:
            data: bytes | None = override[0]
            size, mtime = len(override[0]), override[1]
            path = None
        else:
            path = self._file(relative)
            if path is None:
                self._record_response(relative, 404, 0, True)
                return web.Response(status=404)
            data = None
            stat = path.stat()
            size, mtime = stat.st_size, stat.st_mtime
        last_modified = _http_date(mtime)
        with self._cond:
            self._served_mtime[relative] = max(self._served_mtime.get(relative, 0.0), mtime)
        headers = {
            "Last-Modified": last_modified,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }

        ims = request.headers.get("If-Modified-Since")
        if ims is not None and "Range" not in request.headers:
            since = _parse_http_date(ims)
            if since is not None and int(mtime) <= since:
                self._record_response(relative, 304, 0, True)
                return web.Response(status=304, headers={"Last-Modified": last_modified})

        byte_range: _Range | None = None
        if "Range" in request.headers:
            if_range = request.headers.get("If-Range")
            if if_range is None or _parse_http_date(if_range) == float(int(mtime)):
                byte_range = _parse_range(request.headers["Range"], size)
                if byte_range is None or byte_range.start >= size:
                    self._record_response(relative, 416, 0, True)
                    return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})

        if byte_range is None:
            status, start, end = 200, 0, size - 1
        else:
            status, start, end = 206, byte_range.start, byte_range.end
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(end - start + 1, 0)
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = length
        await response.prepare(request)
        if request.method == "HEAD":
            self._record_response(relative, status, 0, True)
            return response

        progress = _Progress()
        try:
            await self._send_body(response, relative, path, data, start, length, progress)
            if progress.sent < length:
                # Cut: close the connection with the body incomplete. close(), unlike abort(),
                # first flushes what is buffered, so the client gets exactly the bytes counted.
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            progress.completed = True
        finally:
            self._record_response(relative, status, progress.sent, progress.completed)
        return response

    async def _send_body(
        self,
        response: web.StreamResponse,
        relative: str,
        path: Path | None,
        data: bytes | None,
        start: int,
        length: int,
        progress: _Progress,
    ) -> None:
        sent = 0
        began = time.monotonic()
        handle = path.open("rb") if path is not None else None
        try:
            if handle is not None:
                handle.seek(start)
            while sent < length:
                with self._cond:
                    rate = self._throttles.get(relative)
                    stall = self._stalls.get(relative)
                    cut = self._cuts.get(relative)
                    total_rate = self._total_rate
                chunk_size = min(CHUNK, length - sent)
                if rate is not None:
                    chunk_size = min(chunk_size, max(1, rate // 20))
                if stall is not None and not stall.released.is_set():
                    if sent >= stall.after:
                        await stall.released.wait()
                        continue
                    chunk_size = min(chunk_size, stall.after - sent)
                if cut is not None:
                    if start + sent >= cut:
                        return
                    chunk_size = min(chunk_size, cut - start - sent)
                if total_rate is not None:
                    await self._pace_link(chunk_size, total_rate)
                if handle is not None:
                    chunk = handle.read(chunk_size)
                else:
                    assert data is not None
                    chunk = data[start + sent : start + sent + chunk_size]
                if not chunk:
                    break  # file shrank underneath us
                # Counted as it is handed to the socket: a client may have read the last chunk
                # (and the test asserted on the count) before this coroutine runs again.
                self._count(relative, len(chunk))
                try:
                    await response.write(chunk)
                except BaseException:
                    self._count(relative, -len(chunk))  # never handed over
                    raise
                sent += len(chunk)
                progress.sent = sent
                if rate is not None:
                    # Pacing the sender is the point of throttling, not a synchronisation device.
                    delay = began + sent / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
        finally:
            if handle is not None:
                handle.close()

    async def _pace_link(self, size: int, rate: int) -> None:
        """Reserve `size` bytes of the shared link and sleep until they may go out. An idle link
        saves up at most _LINK_BURST seconds of credit."""
        now = time.monotonic()
        start = max(self._link_free_at, now - _LINK_BURST)
        self._link_free_at = start + size / rate
        delay = self._link_free_at - now
        if delay > 0:
            # Pacing the shared link is the point of the cap, not a synchronisation device.
            await asyncio.sleep(delay)

    def _set_released(self, stall: _Stall) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(stall.released.set)


class MirrorFactory:
    """Start mirrors for a test and stop them all at teardown (the `serve_archive` fixture)."""

    def __init__(self) -> None:
        self._mirrors: list[Mirror] = []

    def __call__(self, root: Path, *, prefix: str = "debian") -> Mirror:
        mirror = Mirror(root, prefix=prefix).start()
        self._mirrors.append(mirror)
        return mirror

    def stop_all(self) -> None:
        for mirror in reversed(self._mirrors):
            mirror.stop()
        self._mirrors.clear()
