"""PeerServer over real sockets on 127.0.0.1: what it serves, what it refuses, how it protects
itself (upload cap, idle timeouts). Synchronisation is by events and server state, never sleeps;
no assertion depends on speed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.store import put

from dhtdeb.stats import Counters
from dhtdeb.store import ContentStore, StoredFile
from dhtdeb.swarm.peer_server import SMALL_UPLOAD, PeerServer
from dhtdeb.swarm.pieces import PIECE_SIZE, PieceList, digest_file
from dhtdeb.swarm.wire import have_bitfield, parse_fetching, parse_node, parse_relayed

Address = tuple[str, int]
StartServer = Callable[..., Awaitable[tuple[PeerServer, Address]]]
GUARD = 10.0  # upper bound on waits for events that must happen; a failure, not a timing


class SpyStore(ContentStore):
    """Records every lookup and path built, to prove hostile requests never reach the store."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.touched: list[tuple[str, str]] = []

    def lookup(self, sha256: str) -> StoredFile | None:
        self.touched.append(("lookup", sha256))
        return super().lookup(sha256)

    def path_of(self, sha256: str) -> Path:
        self.touched.append(("path_of", sha256))
        return super().path_of(sha256)


@dataclass
class FakePartial:
    size: int
    piece_list: PieceList
    held: set[int]
    file: Path
    complete_list: bool = True
    relays: frozenset[int] = frozenset()

    def have(self) -> frozenset[int]:
        return frozenset(self.held)

    def relayed(self) -> frozenset[int]:
        return self.relays

    def fetching(self) -> range:
        return range(0) if self.complete_list else range(1, 2)

    def node(self) -> bytes:
        return bytes(range(1, 21))

    def path(self) -> Path:
        return self.file


@dataclass
class FakePartials:
    views: dict[str, FakePartial] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    def partial(self, sha256: str) -> FakePartial | None:
        self.asked.append(sha256)
        return self.views.get(sha256)


def content(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def store(tmp_path: Path) -> SpyStore:
    return SpyStore(tmp_path / "store")


@pytest.fixture
def counters() -> Counters:
    return Counters()


@pytest.fixture
def partials() -> FakePartials:
    return FakePartials()


@pytest.fixture
async def start_server(
    store: SpyStore, counters: Counters, partials: FakePartials
) -> AsyncIterator[StartServer]:
    servers: list[PeerServer] = []

    async def start(**options: Any) -> tuple[PeerServer, Address]:
        server = PeerServer(store, counters, partials=partials, **options)
        servers.append(server)
        return server, await server.start("127.0.0.1", 0)

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def url(address: Address, path: str) -> str:
    return f"http://{address[0]}:{address[1]}{path}"


@dataclass(frozen=True)
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


async def raw_request(address: Address, data: bytes) -> RawAnswer:
    """Send bytes exactly as given (no client-side path normalisation); read one answer."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(data)
        status, headers = await read_head(reader)
        length = 0 if data.startswith(b"HEAD ") else int(headers.get("content-length", "0"))
        return RawAnswer(status, headers, await reader.readexactly(length))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def get(target: str, extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: peer\r\n{extra}\r\n".encode("latin-1")


# -- stored files ---------------------------------------------------------------------------------


async def test_stored_file_whole_ranges_and_head(
    store: SpyStore,
    counters: Counters,
    start_server: StartServer,
    session: aiohttp.ClientSession,
) -> None:
    data = content(3 * PIECE_SIZE + 12345, seed=1)
    sha256 = put(store, data)
    server, address = await start_server()
    target = url(address, f"/v1/files/{sha256}")
    sent = 0

    async with session.get(target) as response:
        assert response.status == 200
        assert await response.read() == data
        assert response.headers["X-Dhtdeb-Size"] == str(len(data))
        assert response.headers["Accept-Ranges"] == "bytes"
        sent += len(data)

    cases = {
        "bytes=10-19": (10, 20),
        "bytes=-5": (len(data) - 5, len(data)),
        f"bytes={PIECE_SIZE - 3}-": (PIECE_SIZE - 3, len(data)),  # any range of a stored file
        f"bytes=100-{len(data) * 2}": (100, len(data)),
    }
    for header, (start, end) in cases.items():
        async with session.get(target, headers={"Range": header}) as response:
            assert response.status == 206, header
            assert await response.read() == data[start:end]
            assert response.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(data)}"
            sent += end - start

    async with session.get(target, headers={"Range": f"bytes={len(data)}-"}) as response:
        assert response.status == 416
        assert response.headers["Content-Range"] == f"bytes */{len(data)}"

    async with session.head(target) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(len(data))
        assert await response.read() == b""
    async with session.head(target, headers={"Range": "bytes=0-99"}) as response:
        assert response.status == 206
        assert response.headers["Content-Length"] == "100"

    await asyncio.wait_for(server.wait_uploads(0), GUARD)
    assert counters.bytes.to_peers == sent
    assert server.stats.bad_requests == 0


async def test_unknown_hash_is_404(start_server: StartServer, partials: FakePartials) -> None:
    server, address = await start_server()
    missing = "ab" * 32
    for path in (f"/v1/files/{missing}", f"/v1/pieces/{missing}"):
        assert (await raw_request(address, get(path))).status == 404
    assert partials.asked == [missing, missing]
    assert server.stats.bad_requests == 0  # asking for what a node lacks is normal


# -- piece lists ----------------------------------------------------------------------------------


async def test_piece_list_of_stored_file_is_computed_once_and_cached(
    store: SpyStore,
    start_server: StartServer,
    session: aiohttp.ClientSession,
) -> None:
    data = content(2 * PIECE_SIZE + 7, seed=2)
    sha256 = put(store, data)
    expected = digest_file(store.path_of(sha256), len(data))
    cache = store.path_of(sha256).with_name(sha256 + ".pieces")
    server, address = await start_server()

    for _ in range(2):
        async with session.get(url(address, f"/v1/pieces/{sha256}")) as response:
            assert response.status == 200
            assert await response.read() == expected.to_bytes()
            assert response.headers["X-Dhtdeb-Size"] == str(len(data))
            assert response.headers["X-Dhtdeb-Have"] == "all"
    assert server.stats.piece_lists_computed == 1
    assert cache.read_bytes() == expected.to_bytes()
    assert not list(store.incoming.iterdir())  # the temporary was renamed into place

    # A restarted node (empty memory cache) reads the list from disk instead of the file.
    restarted, _ = await start_server()
    assert await restarted.piece_list(sha256) == expected
    assert restarted.stats.piece_lists_computed == 0

    # Without the cache file, concurrent first requests share one computation.
    cache.unlink()
    fresh, _ = await start_server()
    lists = await asyncio.gather(*(fresh.piece_list(sha256) for _ in range(5)))
    assert lists == [expected] * 5
    assert fresh.stats.piece_lists_computed == 1
    assert cache.exists()

    # Evicted from the store: no longer offered, even though the list is still in memory.
    store.remove(sha256)
    assert await fresh.piece_list(sha256) is None
    assert (await raw_request(address, get(f"/v1/pieces/{sha256}"))).status == 404


async def test_adopted_piece_list_is_never_computed(
    store: SpyStore, start_server: StartServer
) -> None:
    data = content(PIECE_SIZE + 1, seed=11)
    sha256 = put(store, data)
    pieces = digest_file(store.path_of(sha256), len(data))
    server, _ = await start_server()
    await server.adopt_piece_list("cd" * 32, pieces)  # not in the store: ignored
    await server.adopt_piece_list(sha256, PieceList(5, (b"x" * 32,)))  # wrong size: ignored
    assert not store.path_of(sha256).with_name(sha256 + ".pieces").exists()
    await server.adopt_piece_list(sha256, pieces)
    assert store.path_of(sha256).with_name(sha256 + ".pieces").read_bytes() == pieces.to_bytes()
    assert await server.piece_list(sha256) == pieces
    restarted, _ = await start_server()
    assert await restarted.piece_list(sha256) == pieces
    assert server.stats.piece_lists_computed == restarted.stats.piece_lists_computed == 0


async def test_single_piece_file_list_is_its_hash(
    store: SpyStore, start_server: StartServer
) -> None:
    data = content(5000, seed=3)
    sha256 = put(store, data)
    server, address = await start_server()
    answer = await raw_request(address, get(f"/v1/pieces/{sha256}"))
    assert answer.status == 200
    assert answer.body == bytes.fromhex(sha256)
    assert answer.headers["x-dhtdeb-have"] == "all"
    assert not store.path_of(sha256).with_name(sha256 + ".pieces").exists()
    ranged = await raw_request(address, get(f"/v1/files/{sha256}", "Range: bytes=100-199\r\n"))
    assert (ranged.status, ranged.body) == (206, data[100:200])
    assert server.stats.piece_lists_computed == 0


# -- partial files ------------------------------------------------------------------------------


async def test_partial_file_serves_only_verified_pieces(
    tmp_path: Path, partials: FakePartials, start_server: StartServer
) -> None:
    data = content(3 * PIECE_SIZE + PIECE_SIZE // 2, seed=4)
    sha256 = hashlib.sha256(data).hexdigest()
    real = tmp_path / "real"
    real.write_bytes(data)
    pieces = digest_file(real, len(data))
    # On disk: only the verified pieces 0 and 2 are written; the rest is still zeros.
    partial_path = tmp_path / "incoming-file"
    on_disk = bytearray(len(data))
    for index in (0, 2):
        start, end = pieces.span(index)
        on_disk[start:end] = data[start:end]
    partial_path.write_bytes(bytes(on_disk))
    view = FakePartial(len(data), pieces, {0, 2}, partial_path)
    partials.views[sha256] = view
    server, address = await start_server()

    listed = await raw_request(address, get(f"/v1/pieces/{sha256}"))
    assert listed.status == 200
    assert listed.body == pieces.to_bytes()
    assert listed.headers["x-dhtdeb-size"] == str(len(data))
    assert listed.headers["x-dhtdeb-have"] == base64.b64encode(b"\xa0").decode()
    assert "x-dhtdeb-list" not in listed.headers  # a corroborated list: every entry counts

    view.complete_list = False  # still downloading without a list: only its offers count
    offered = await raw_request(address, get(f"/v1/pieces/{sha256}"))
    assert offered.headers["x-dhtdeb-list"] == "offers"
    assert offered.headers["x-dhtdeb-fetching"] == "1-1"
    assert offered.headers["x-dhtdeb-node"] == bytes(range(1, 21)).hex()
    assert offered.headers["x-dhtdeb-have"] == base64.b64encode(b"\xa0").decode()
    assert "x-dhtdeb-relayed" not in offered.headers  # everything from its own mirror stream
    view.relays = frozenset({2})  # piece 2 was taken on another downloader's offer
    relaying = await raw_request(address, get(f"/v1/pieces/{sha256}"))
    assert relaying.headers["x-dhtdeb-relayed"] == base64.b64encode(b"\x20").decode()
    assert relaying.headers["x-dhtdeb-have"] == base64.b64encode(b"\xa0").decode()
    view.complete_list, view.relays = True, frozenset()

    def ranged(start: int, end: int) -> bytes:
        return get(f"/v1/files/{sha256}", f"Range: bytes={start}-{end - 1}\r\n")

    held = {
        (0, PIECE_SIZE),
        (10, 20),
        (2 * PIECE_SIZE, 3 * PIECE_SIZE),
        (2 * PIECE_SIZE + 5, 3 * PIECE_SIZE - 5),
    }
    for start, end in held:
        answer = await raw_request(address, ranged(start, end))
        assert (answer.status, answer.body) == (206, data[start:end]), (start, end)

    not_held = {
        (PIECE_SIZE - 1, PIECE_SIZE + 1),  # crosses into piece 1
        (PIECE_SIZE, PIECE_SIZE + 10),
        (3 * PIECE_SIZE, len(data)),  # last piece
        (0, len(data)),
    }
    for start, end in not_held:
        answer = await raw_request(address, ranged(start, end))
        assert answer.status == 416, (start, end)
        assert answer.headers["content-range"] == f"bytes */{len(data)}"
    assert (await raw_request(address, get(f"/v1/files/{sha256}"))).status == 416

    # Once every piece is verified, the whole file is served without Range.
    partial_path.write_bytes(data)
    view.held = set(range(len(pieces)))
    whole = await raw_request(address, get(f"/v1/files/{sha256}"))
    assert (whole.status, whole.body) == (200, data)
    listed = await raw_request(address, get(f"/v1/pieces/{sha256}"))
    assert listed.headers["x-dhtdeb-have"] == base64.b64encode(b"\xf0").decode()
    assert server.stats.bad_requests == 0


async def test_partial_file_shorter_than_its_held_pieces_is_cut(
    tmp_path: Path, partials: FakePartials, start_server: StartServer
) -> None:
    data = content(2 * PIECE_SIZE, seed=10)
    sha256 = hashlib.sha256(data).hexdigest()
    short = tmp_path / "short"
    short.write_bytes(data[:1000])  # a driver bug: piece 0 reported held but not on disk
    pieces = PieceList(
        len(data), tuple(hashlib.sha256(data[i : i + PIECE_SIZE]).digest() for i in (0, PIECE_SIZE))
    )
    partials.views[sha256] = FakePartial(len(data), pieces, {0}, short)
    server, address = await start_server()
    reader, writer = await asyncio.open_connection(*address)
    writer.write(get(f"/v1/files/{sha256}", f"Range: bytes=0-{PIECE_SIZE - 1}\r\n"))
    status, headers = await read_head(reader)
    assert (status, headers["content-length"]) == (206, str(PIECE_SIZE))
    received = b""
    with contextlib.suppress(ConnectionResetError):
        received = await asyncio.wait_for(reader.read(), GUARD)  # ends: the server cut it
    assert len(received) <= 1000  # never the promised length; RST may drop what was queued
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    await asyncio.wait_for(server.wait_uploads(0), GUARD)


def test_have_bitfield_is_msb_first() -> None:
    assert base64.b64decode(have_bitfield({0, 7, 8, 16}, 17)) == b"\x81\x80\x80"
    assert base64.b64decode(have_bitfield(set(), 1)) == b"\x00"
    assert base64.b64decode(have_bitfield({3, 99, -1}, 9)) == b"\x10\x00"


# -- hostile requests ---------------------------------------------------------------------------


async def test_hostile_paths_never_touch_the_filesystem(
    store: SpyStore,
    partials: FakePartials,
    start_server: StartServer,
) -> None:
    sha256 = put(store, content(100, seed=5))
    server, address = await start_server()
    store.touched.clear()
    targets = [
        "/v1/files/../../etc/passwd",
        "/v1/files/%2e%2e/%2e%2e/etc/passwd",
        "/v1/files/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/v1/pieces/..%2F..%2Fetc%2Fpasswd",
        "/v1/files/" + sha256.upper(),
        "/v1/files/" + sha256[:63],
        "/v1/files/" + sha256 + "0",
        "/v1/files/" + sha256 + "/",
        "/v1/files/" + sha256 + "%00",
        "/v1/files/" + sha256[:62] + "%2e",
        "/v1/files/",
        "/v1/files",
        "/v1/store/" + sha256,
        "/" + sha256[:2] + "/" + sha256,
        "//v1/files/" + sha256,
        "/",
        "/etc/passwd",
    ]
    for target in targets:
        answer = await raw_request(address, get(target))
        assert answer.status in (400, 404), target
        assert b"root:" not in answer.body
    assert store.touched == []
    assert partials.asked == []
    assert server.stats.bad_requests == len(targets)


async def test_other_methods_are_405(store: SpyStore, start_server: StartServer) -> None:
    sha256 = put(store, content(100, seed=6))
    server, address = await start_server()
    store.touched.clear()
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        request = f"{method} /v1/files/{sha256} HTTP/1.1\r\nHost: p\r\nContent-Length: 0\r\n\r\n"
        answer = await raw_request(address, request.encode())
        assert answer.status == 405, method
        assert answer.headers["allow"] == "GET, HEAD"
    answer = await raw_request(
        address, b"POST /upload HTTP/1.1\r\nHost: p\r\nContent-Length: 0\r\n\r\n"
    )
    assert answer.status == 404
    assert store.touched == []
    assert server.stats.bad_requests == 5


async def test_malformed_requests_are_counted_without_tracebacks(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server, address = await start_server()
    huge = get("/v1/files/" + "a" * 64, "X-Junk: " + "x" * 10000 + "\r\n")
    assert (await raw_request(address, huge)).status in (400, 431)
    many = get("/v1/files/" + "a" * 64, "".join(f"X-{i}: y\r\n" for i in range(100)))
    assert (await raw_request(address, many)).status in (400, 431)
    assert (await raw_request(address, b"GARBAGE\r\n\r\n")).status == 400
    long_line = get("/v1/files/" + "a" * 2000)
    assert (await raw_request(address, long_line)).status in (400, 414)
    assert server.stats.bad_requests == 4
    loud = [r for r in caplog.records if r.levelno > logging.DEBUG and r.name.startswith("aio")]
    assert loud == []
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.exc_info)


# -- self-protection -----------------------------------------------------------------------------


async def test_uploads_beyond_the_cap_get_503(store: SpyStore, start_server: StartServer) -> None:
    sha256 = put(store, content(2 * PIECE_SIZE, seed=7))
    # A 1 byte/s cap holds an upload open deterministically once the burst is spent.
    server, address = await start_server(max_uploads=1, upload_rate=1)
    request = get(f"/v1/files/{sha256}")

    reader, writer = await asyncio.open_connection(*address)
    writer.write(request)
    assert (await read_head(reader))[0] == 200  # the upload holds the only slot now
    assert server.active_uploads == 1

    busy = await raw_request(address, request)
    assert busy.status == 503
    assert busy.headers["retry-after"].isdigit()
    assert server.stats.busy == 1
    # Cheap requests are not uploads: still answered.
    head = f"HEAD /v1/files/{sha256} HTTP/1.1\r\nHost: p\r\n\r\n".encode()
    assert (await raw_request(address, head)).status == 200

    writer.close()  # the peer goes away: its slot is freed at once
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    await asyncio.wait_for(server.wait_uploads(0), GUARD)

    reader, writer = await asyncio.open_connection(*address)
    writer.write(request)
    assert (await read_head(reader))[0] == 200
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_a_small_file_is_served_beyond_the_cap_of_piece_uploads(
    store: SpyStore, start_server: StartServer
) -> None:
    big = put(store, content(2 * PIECE_SIZE, seed=9))
    small = put(store, content(SMALL_UPLOAD, seed=10))
    server, address = await start_server(max_uploads=1, upload_rate=1)
    held = []
    for sha256 in (big, small):  # a piece upload holds the only slot; a small file gets one more
        reader, writer = await asyncio.open_connection(*address)
        writer.write(get(f"/v1/files/{sha256}"))
        assert (await read_head(reader))[0] == 200
        held.append(writer)
    assert server.active_uploads == 2

    assert (await raw_request(address, get(f"/v1/files/{small}"))).status == 503  # 2 x the cap
    # A range of a big file no bigger than a small file is as cheap: its cap is the same.
    tail = get(f"/v1/files/{big}", f"Range: bytes={2 * PIECE_SIZE - 1000}-\r\n")
    assert (await raw_request(address, tail)).status == 503
    assert server.stats.busy == 2

    held.pop().close()  # the small upload ends: a small file may start, a piece may not
    await asyncio.wait_for(server.wait_uploads(1), GUARD)
    assert (await raw_request(address, get(f"/v1/files/{big}"))).status == 503
    reader, writer = await asyncio.open_connection(*address)
    writer.write(tail)
    assert (await read_head(reader))[0] == 206
    held.append(writer)
    for writer in held:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_client_that_stops_reading_is_cut(
    store: SpyStore, counters: Counters, start_server: StartServer
) -> None:
    size = 16 * PIECE_SIZE  # more than the kernel buffers of both ends can absorb
    sha256 = put(store, content(size, seed=8))
    server, address = await start_server(idle_timeout=0.2)
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
        await loop.sock_sendall(sock, get(f"/v1/files/{sha256}"))
        first = await asyncio.wait_for(loop.sock_recv(sock, 1024), GUARD)
        assert first.startswith(b"HTTP/1.1 200")
        # The upload is running; it ends only when the server gives up on this reader.
        await asyncio.wait_for(server.wait_uploads(0), GUARD)
        assert server.stats.stalled == 1
        received = len(first)
        with contextlib.suppress(ConnectionResetError):
            while chunk := await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), GUARD):
                received += len(chunk)
    assert received < size
    assert counters.bytes.to_peers < size


async def test_slow_headers_and_silent_clients_are_dropped(start_server: StartServer) -> None:
    _, address = await start_server(idle_timeout=0.2)
    silent_reader, silent = await asyncio.open_connection(*address)
    loris_reader, loris = await asyncio.open_connection(*address)
    loris.write(b"GET /v1/files/")
    await loris.drain()
    for reader, writer in ((silent_reader, silent), (loris_reader, loris)):
        assert await asyncio.wait_for(reader.read(), GUARD) == b""  # closed by the server
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_close_cuts_running_uploads(store: SpyStore, start_server: StartServer) -> None:
    sha256 = put(store, content(2 * PIECE_SIZE, seed=9))
    server, address = await start_server(upload_rate=1)
    reader, writer = await asyncio.open_connection(*address)
    writer.write(get(f"/v1/files/{sha256}"))
    assert (await read_head(reader))[0] == 200
    await asyncio.wait_for(server.close(), GUARD)
    assert server.active_uploads == 0
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_upload_rate_can_change_at_runtime(start_server: StartServer) -> None:
    server, _ = await start_server()
    assert server.upload_rate is None
    server.upload_rate = 1000.0
    assert server.upload_rate == 1000.0
    server.upload_rate = 2000.0
    assert server.upload_rate == 2000.0
    server.upload_rate = None
    assert server.upload_rate is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, b""),
        ("0102030405060708", bytes(range(1, 9))),
        ("AbCd" * 10, bytes.fromhex("abcd" * 10)),
        ("0102", None),  # shorter than 4 bytes
        ("ab" * 33, None),  # longer than 32 bytes
        ("0102030405060708a", None),  # odd length
        ("01 02 03 04 05 06", None),  # bytes.fromhex would take the spaces
        ("0102030405060g08", None),
    ],
)
def test_a_peers_node_id_header_is_parsed_strictly(
    header: str | None, expected: bytes | None
) -> None:
    assert parse_node(header) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, range(0)),
        ("3-4", range(3, 5)),
        ("4-4", range(4, 5)),
        ("4-3", None),
        ("3-10", None),  # beyond the file's 10 pieces
        ("-1-3", None),
        ("3", None),
        ("1" * 20 + "-2", None),
    ],
)
def test_a_peers_fetching_header_is_parsed_strictly(
    header: str | None, expected: range | None
) -> None:
    assert parse_fetching(header, 10) == expected


@pytest.mark.parametrize(
    ("header", "have", "expected"),
    [
        (None, frozenset({1}), frozenset()),
        (base64.b64encode(b"\x40\x00").decode(), frozenset({1, 2}), frozenset({1})),
        (base64.b64encode(b"\x00\x00").decode(), frozenset({1}), frozenset()),
        (base64.b64encode(b"\x60\x00").decode(), frozenset({1}), None),  # 2 is not held
        (base64.b64encode(b"\x40").decode(), frozenset({1}), None),  # too short for 10 pieces
        ("all", frozenset({1}), None),
        ("not base64!", frozenset({1}), None),
        (base64.b64encode(b"\x40\x00").decode(), None, None),  # a complete peer relays nothing
    ],
)
def test_a_peers_relayed_header_is_parsed_strictly(
    header: str | None, have: frozenset[int] | None, expected: frozenset[int] | None
) -> None:
    assert parse_relayed(header, 10, have) == expected
