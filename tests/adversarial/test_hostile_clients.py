"""Hostile clients against one real `dhtdeb serve`: fuzzed request lines, headers, Range values,
targets and bodies on the proxy port and on the peer port, and slowloris senders on both.

Each case says its expected outcome in its docstring. After every batch the daemon must still
answer /health, its counters must have moved exactly as the batch implies, its log must hold no
traceback and at most one line per bad request, and no answer may carry a canary: files placed
outside the store and outside the mirror's archive directory. Randomness is seeded; a failing
batch prints its seed. One daemon and one mirror serve the whole module; the slowloris senders
start with them and are judged by the last test, so their wait overlaps the other batches.
"""

from __future__ import annotations

import hashlib
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import wait_until
from support.archive import SignedArchive
from support.daemon import DaemonFactory, DaemonProcess
from support.mirror import Mirror, MirrorFactory

from dhtdeb.proxy.server import HEADER_TIMEOUT
from dhtdeb.proxy.target import BadTarget, parse_target
from dhtdeb.swarm.peer_server import DEFAULT_IDLE_TIMEOUT
from dhtdeb.swarm.pieces import DIGEST_SIZE
from dhtdeb.swarm.wire import MAX_HAVE_QUERY

Address = tuple[str, int]
ANSWER_TIMEOUT = 15.0  # a bound on one answer that must come; a failure, not a timing
SLOWLORIS_CONNECTIONS = 4
SLOWLORIS_PACE = 0.5  # seconds between the bytes a slowloris sends (pacing, not synchronisation)
CUT_MARGIN = 10.0  # beyond the daemon's header timeout, before a slowloris counts as never cut
TRACEBACK = "Traceback (most recent call last)"


@dataclass(frozen=True)
class Answer:
    """One HTTP answer read off a raw socket; `status` 0: the connection closed without one."""

    status: int
    head: bytes
    body: bytes


@dataclass
class Slowloris:
    """A client trickling a request head that never ends, one byte per SLOWLORIS_PACE.
    Midway it asks `probe` on a second connection: another client must be served meanwhile."""

    address: Address
    probe: bytes
    started: float = 0.0
    cut_after: float | None = None
    probe_status: int | None = None
    probe_while_open: bool = False
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 10_000
        self.started = time.monotonic()
        deadline = self.started + DEFAULT_IDLE_TIMEOUT + HEADER_TIMEOUT + CUT_MARGIN
        with socket.create_connection(self.address, timeout=SLOWLORIS_PACE) as sock:
            for sent, byte in enumerate(head):
                if time.monotonic() > deadline:
                    return
                try:
                    sock.sendall(bytes([byte]))
                    if sock.recv(1) == b"":
                        break
                except TimeoutError:
                    pass  # nothing to read: the daemon still holds the connection
                except OSError:
                    break
                if sent == 3:
                    self.probe_status = exchange(self.address, self.probe).status
                    self.probe_while_open = True
            self.cut_after = time.monotonic() - self.started


@dataclass
class Hostile:
    daemon: DaemonProcess
    mirror: Mirror
    archive: SignedArchive
    stored_url: str  # a verified .deb in the store, by its mirror URL
    stored_sha256: str
    stored_data: bytes
    canaries: tuple[bytes, ...]
    slowloris: list[Slowloris] = field(default_factory=list)

    @property
    def proxy(self) -> Address:
        host, port = self.daemon.proxy.rsplit(":", 1)
        return host, int(port)

    @property
    def peer(self) -> Address:
        host, port = self.daemon.addresses.peer.rsplit(":", 1)
        return host, int(port)


def _read_answer(sock: socket.socket, head_only: bool) -> Answer:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return Answer(0, data, b"")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if head_only or status in (204, 304) or status < 200:
        length = 0
    while (length is None or len(body) < length) and (chunk := sock.recv(65536)):
        body += chunk
    return Answer(status, head, body if length is None else body[:length])


def exchange(address: Address, data: bytes, *, head_only: bool = False) -> Answer:
    """Write `data` exactly as given on a new connection; read one answer (or the close)."""
    with socket.create_connection(address, timeout=ANSWER_TIMEOUT) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon may refuse before all of a huge request is written
        try:
            return _read_answer(sock, head_only)
        except ConnectionResetError:
            return Answer(0, b"", b"")


def request(target: str, headers: str = "", method: str = "GET", body: bytes = b"") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode("latin-1") + body


def have_query(body: bytes) -> bytes:
    return request("/v1/have", f"Content-Length: {len(body)}\r\n", "POST", body)


@dataclass
class Snapshot:
    status: dict[str, dict[str, int]]
    log_lines: int


def snapshot(env: Hostile) -> Snapshot:
    status = env.daemon.status()
    return Snapshot(status, len(env.daemon.log_file.read_text(errors="replace").splitlines()))


def check_batch(
    env: Hostile,
    before: Snapshot,
    answers: list[Answer],
    *,
    seed: int | None,
    refused: int,
    to_peers: int = 0,
    lines_per_request: int = 1,
) -> None:
    """The invariants after a batch of hostile requests (see the module docstring)."""
    where = f"(seed {seed})" if seed is not None else ""
    assert env.daemon.running, f"daemon died {where}:\n{env.daemon.log_tail()}"
    assert env.daemon.get("/health") == b"ok\n", where
    after = snapshot(env)
    moved = after.status["requests"]["refused"] - before.status["requests"]["refused"]
    assert moved == refused, f"requests.refused moved by {moved}, not {refused} {where}"
    sent = after.status["bytes"]["to_peers"] - before.status["bytes"]["to_peers"]
    assert sent == to_peers, f"bytes.to_peers moved by {sent}, not {to_peers} {where}"
    log = env.daemon.log_file.read_text(errors="replace")
    assert TRACEBACK not in log, f"traceback in the daemon log {where}:\n{env.daemon.log_tail()}"
    added = after.log_lines - before.log_lines
    bound = lines_per_request * len(answers)
    assert added <= bound, f"{added} log lines for {len(answers)} requests {where}"
    for answer in answers:
        for canary in env.canaries:
            assert canary not in answer.head + answer.body, f"a canary was served {where}"


def refusals(answers: list[Answer]) -> int:
    """Answers that refused the request: dhtdeb's own and those of its HTTP parser."""
    return sum(1 for a in answers if 400 <= a.status < 500 or a.status == 505)


# -- the daemon, the mirror and the slowloris senders, one set per module --------------------------


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, signed_archive: SignedArchive
) -> Iterator[Hostile]:
    base = tmp_path_factory.mktemp("hostile")
    canaries = []
    for place in (base, signed_archive.root.parent, Path("/tmp")):
        canary = f"dhtdeb-canary-{random.Random(str(place)).getrandbits(64):016x}".encode()
        path = place / f"canary-{hashlib.sha256(canary).hexdigest()[:12]}"
        path.write_bytes(canary)
        canaries.append((path, canary))
    mirrors = MirrorFactory()
    daemons = DaemonFactory(base / "daemons", [signed_archive.keyring])
    try:
        mirror = mirrors(signed_archive.root)
        # The DHT on (no bootstrap node, no LAN discovery): the peer port is open only with it.
        daemon = daemons(no_dht=False, extra_args=("--no-lan",))
        env = _learned(daemon, mirror, signed_archive, tuple(c for _, c in canaries))
        for address, probe in (
            (env.proxy, request("/health")),
            # A have query: a probe that moves no counter the batches check.
            (env.peer, have_query(bytes.fromhex(env.stored_sha256))),
        ):
            for _ in range(SLOWLORIS_CONNECTIONS):
                slow = Slowloris(address, probe)
                slow.start()
                env.slowloris.append(slow)
        yield env
    finally:
        daemons.stop_all()
        mirrors.stop_all()
        for path, _ in canaries:
            path.unlink(missing_ok=True)


def _learned(
    daemon: DaemonProcess, mirror: Mirror, archive: SignedArchive, canaries: tuple[bytes, ...]
) -> Hostile:
    """Verify the archive through the proxy as apt would, and store one .deb."""
    proxy_host, proxy_port = daemon.proxy.rsplit(":", 1)
    proxy = (proxy_host, int(proxy_port))
    suite = f"{mirror.url}/dists/{archive.suite}"
    for url in (
        f"{suite}/InRelease",
        f"{suite}/{archive.component}/binary-{archive.arch}/Packages.xz",
    ):
        answer = exchange(proxy, request(url))
        assert answer.status == 200 and b"X-Dhtdeb-Verified: yes" in answer.head, url
    package = archive.small_packages[0]
    url = f"{mirror.url}/{package.filename}"
    files = daemon.status()["cache"]["files"]
    answer = exchange(proxy, request(url))
    assert answer.status == 200 and b"X-Dhtdeb-Verified: yes" in answer.head, answer.head
    wait_until(lambda: daemon.status()["cache"]["files"] > files, 30, "the .deb stored")
    return Hostile(
        daemon,
        mirror,
        archive,
        url,
        package.sha256,
        archive.path(package.filename).read_bytes(),
        canaries,
    )


# -- proxy port -----------------------------------------------------------------------------------


def test_proxy_fuzzed_request_lines(env: Hostile) -> None:
    """Seeded random bytes, bad methods, bad versions and very long request lines: every one is
    answered 4xx (505 for HTTP/0.9 and HTTP/2.0 heads, which aiohttp parses) or the connection
    is closed, never 2xx (but the status page for `GET  /`) nor another 5xx; only the refusals
    made by dhtdeb itself (after parsing: 400/404/405/414/505) count in requests.refused; the
    mirror sees none of them."""
    seed = 1301
    rng = random.Random(seed)
    lines = [rng.randbytes(rng.randrange(1, 300)) for _ in range(40)]
    lines += [
        bytes(rng.choice(b"GET /HTP1.\x00\x7f\xff:%") for _ in range(rng.randrange(1, 60)))
        for _ in range(40)
    ]
    url = f"{env.mirror.url}/dists/x/InRelease"
    lines += [f"{m} {url} HTTP/1.1".encode() for m in ("get", "GETT", "PROPFIND", "BREW", "X" * 90)]
    lines += [b"G\x00T / HTTP/1.1", b" GET / HTTP/1.1", b"GET  / HTTP/1.1", b"\xffGET / HTTP/1.1"]
    lines += [f"GET {url} {v}".encode() for v in ("HTTP/0.9", "HTTP/2.0", "HTTP/1.10", "HTTPS/1.1")]
    lines += [f"GET {url} {v}".encode() for v in ("HTTP/x.y", "HTTP/1.1 extra", "", "HTTP/")]
    lines += [b"GET /" + b"a" * 10_000 + b" HTTP/1.1", b"GET /" + b"a" * 100_000 + b" HTTP/1.1"]
    lines += [b"GET " + b"/" * 5000 + b" HTTP/1.1", b"GET " + url.encode() + b"?" + b"q" * 8000]
    before = snapshot(env)
    mirror_requests = len(env.mirror.requests)
    answers = []
    for line in lines:
        answer = exchange(env.proxy, line.replace(b"\r\n\r\n", b"") + b"\r\nHost: x\r\n\r\n")
        served = answer.status == 200 and line.split()[1:2] == [b"/"]  # the status page
        refused = answer.status == 505 or 400 <= answer.status < 500
        assert served or refused or answer.status == 0, (line[:80], answer.status, seed)
        answers.append(answer)
    assert len(env.mirror.requests) == mirror_requests, (
        env.mirror.requests[mirror_requests:],
        seed,
    )
    check_batch(env, before, answers, seed=seed, refused=refusals(answers))


def test_proxy_fuzzed_headers(env: Hostile) -> None:
    """A huge header, many headers, NUL/CR/LF injections and non-ASCII names and values on a
    request for /health: each is answered 200 (harmless, accepted) or 400/431 (refused by the
    HTTP parser, counted in requests.refused), never 5xx; a header's CR/LF never splits into an
    extra header of the answer."""
    seed = 1302
    rng = random.Random(seed)
    heads = [
        b"X-Big: " + b"a" * 100_000 + b"\r\n",
        b"".join(b"X-H%d: v\r\n" % i for i in range(500)),
        b"X-Nul: a\x00b\r\n",
        b"X-Cr: a\rInjected: yes\r\n",
        b"X-Lf: a\nInjected: yes\r\n",
        b"X-Utf8: \xc3\xa9t\xc3\xa9\r\n",
        b"X-Latin1: \xe9t\xe9\r\n",
        b"X-\xc3\xa9: v\r\n",
        b"No colon here\r\n",
        b"X-Fold: a\r\n b\r\n",
        b": empty name\r\n",
        b"Host: y\r\nHost: z\r\n",
        b"Content-Length: 1\r\nContent-Length: 2\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        b"Transfer-Encoding: gzip, chunked, x\r\n",
        b"Range: bytes=\xd9\xa3-\r\n",
        b"Connection: upgrade\r\nUpgrade: websocket\r\n",
    ]
    heads += [rng.randbytes(rng.randrange(1, 200)) + b"\r\n" for _ in range(40)]
    before = snapshot(env)
    answers = []
    for extra in heads:
        answer = exchange(env.proxy, b"GET /health HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
        assert answer.status in (0, 200, 400, 413, 431, 501), (extra[:80], answer, seed)
        assert b"\r\nInjected" not in answer.head, (extra, seed)
        answers.append(answer)
    check_batch(env, before, answers, seed=seed, refused=refusals(answers))


RANGES_ON_A_STORED_FILE = [
    # (Range value, expected status, (start, end) of the body, None: no body check)
    ("bytes=0-9", 206, (0, 10)),
    ("bytes=0-0,5-9", 200, None),  # multi-range: the whole file, which HTTP allows
    ("bytes=0-9, 20-29, 40-", 200, None),
    ("bytes=-5", 206, (-5, None)),  # suffix
    ("bytes=-0", 416, None),
    ("bytes=5-2", 200, None),  # last before first: ignored
    ("bytes=-1-5", 200, None),
    ("bytes=0-99999999999999999999", 206, (0, None)),  # overflowing int64
    ("bytes=99999999999999999999-", 416, None),
    ("bytes=99999999999999999999-99999999999999999999", 416, None),
    ("bytes=-99999999999999999999", 206, (0, None)),
    ("bytes=" + "9" * 5000 + "-", 200, None),  # beyond Python's int-from-str digit limit
    ("bytes=1e3-", 200, None),
    ("bytes=0x10-", 200, None),
    ("bytes=--", 200, None),
    ("bytes=", 200, None),
    ("bytes", 200, None),
    ("items=0-9", 200, None),
    ("=0-9", 200, None),
    ("bytes=a-b", 200, None),
    ("bytes=0-9;x", 200, None),
]


def test_proxy_fuzzed_ranges_on_a_stored_file(env: Hostile) -> None:
    """Range values on a verified, stored .deb: multi-range and unparseable ones get the whole
    file (200), satisfiable ones exactly their bytes (206), overflowing starts 416 with
    `Content-Range: bytes */size`; then seeded garbage: 200, 206 or 416, never 5xx. None of it is
    a refusal and the mirror sends nothing (every answer comes from the store)."""
    seed = 1303
    rng = random.Random(seed)
    data = env.stored_data
    cases = list(RANGES_ON_A_STORED_FILE)
    alphabet = "bytes=0123456789-, +_\t"
    cases += [
        ("".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40))), 0, None)
        for _ in range(60)
    ]
    before = snapshot(env)
    mirror_bytes = env.mirror.deb_bytes_sent()
    answers = []
    for value, status, span in cases:
        for method in ("GET", "HEAD"):
            answer = exchange(
                env.proxy,
                request(env.stored_url, f"Range: {value}\r\n", method),
                head_only=method == "HEAD",
            )
            answers.append(answer)
            what = (value, method, answer.status, seed)
            if status == 0:
                assert answer.status in (200, 206, 416), what
            else:
                assert answer.status == status, what
            if answer.status == 416:
                assert f"Content-Range: bytes */{len(data)}".encode() in answer.head, what
            if method == "GET" and answer.status == 200:
                assert answer.body == data, what
            if method == "GET" and span is not None:
                assert answer.body == data[span[0] : span[1]], what
    assert env.mirror.deb_bytes_sent() == mirror_bytes
    check_batch(env, before, answers, seed=seed, refused=0)


def test_proxy_targets_that_escape_the_archive(env: Hostile) -> None:
    """URL-prefix and absolute-form targets with `..`, `%2e%2e`, `%2f`, `%5c`, NUL, bad hosts
    and ports, other schemes, credentials, and `CONNECT host:443`: each refused by dhtdeb (400,
    404, 405 or 414, counted once in requests.refused) or by the HTTP parser (400, not
    counted); the mirror never sees one of them."""
    host = env.mirror.host_port
    targets = [
        f"/{host}/debian/../../canary",
        f"/{host}/debian/%2e%2e/%2e%2e/etc/passwd",
        f"/{host}/debian/%2E%2E/%2E%2E/etc/passwd",
        f"/{host}/debian/.%2e/.%2e/etc/passwd",
        f"/{host}/debian/pool%2f..%2f..%2fcanary",
        f"/{host}/debian/pool%2F..%2F..%2Fcanary",
        f"/{host}/debian/pool%5c..%5c..%5ccanary",
        f"/{host}/debian/%252e%252e/%252e%252e/etc/passwd",  # double-encoded: stays literal
        f"/{host}/debian/a%00.deb",
        f"/{host}/debian/%c0%ae%c0%ae/etc/passwd",  # overlong UTF-8 dot
        f"/{host}%2f..%2fetc/passwd",
        f"/{host}/..",
        f"/{host}/.",
        f"/..%2f{host}/debian/x",
        "/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        f"http://{host}/debian/../../canary",
        f"http://{host}/debian/%2e%2e/%2e%2e/canary",
        f"http://{host}/debian/pool%2f..%2fcanary",
        f"http://user:pw@{host}/debian/dists/x/InRelease",
        f"http://{host}@evil.example/debian/x",
        f"https://{host}/debian/dists/x/InRelease",
        "file:///etc/passwd",
        f"ftp://{host}/debian/x",
        "gopher://127.0.0.1:25/x",
        "http://127.0.0.1:99999/x",
        "http://127.0.0.1:0/x",
        "http://127.0.0.1:-1/x",
        "http://[::1/x",
        "http://exa mple/x",
        "http:///etc/passwd",
        "http://-bad-.example/x",
        host,
        f"{host}/debian/x",
        "*",
        "/" + "a" * 5000,
    ]
    before = snapshot(env)
    mirror_requests = len(env.mirror.requests)
    answers = []
    for target in targets:
        answer = exchange(env.proxy, request(target))
        assert 400 <= answer.status < 500, (target, answer)
        answers.append(answer)
    connect = exchange(env.proxy, f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert connect.status == 405 and b"Allow: GET, HEAD" in connect.head, connect
    connect_443 = exchange(env.proxy, b"CONNECT example.org:443 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert connect_443.status == 405, connect_443
    answers += [connect, connect_443]
    assert len(env.mirror.requests) == mirror_requests, env.mirror.requests[mirror_requests:]
    check_batch(env, before, answers, seed=None, refused=refusals(answers))


def test_proxy_other_hosts_are_never_verified_nor_stored(env: Hostile) -> None:
    """An absolute-form URL to a host other than the mirror (a closed port on 127.0.0.1, an
    unresolvable name): answered 502, unverified (`X-Dhtdeb-Verified: no`), nothing stored, not
    a refusal (dhtdeb has no list of mirrors), at most two warning lines each (the mirror error;
    "cannot verify" once per directory)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        targets = [
            f"http://127.0.0.1:{port}/debian/dists/x/InRelease",
            f"http://127.0.0.1:{port}/debian/pool/main/a/a_1_amd64.deb",
            f"/127.0.0.1:{port}/etc/passwd",
            "http://unresolvable.invalid/debian/pool/a.deb",
        ]
        before = snapshot(env)
        answers = [exchange(env.proxy, request(t)) for t in targets]
    for target, answer in zip(targets, answers, strict=True):
        assert answer.status == 502 and b"X-Dhtdeb-Verified: no" in answer.head, (target, answer)
    check_batch(env, before, answers, seed=None, refused=0, lines_per_request=2)
    assert env.daemon.status()["cache"]["files"] == before.status["cache"]["files"]


def test_proxy_oversized_requests(env: Hostile) -> None:
    """A GET with a body, with a giant Content-Length it never sends, with a chunked body, and a
    POST with 1 MiB: the GETs of /health are answered 200 (the body is ignored) or 400/413 by
    the HTTP parser, the POST 405; each refusal counted once; the daemon stays up."""
    before = snapshot(env)
    answers = [
        exchange(env.proxy, request("/health", "Content-Length: 5\r\n", body=b"hello")),
        exchange(env.proxy, request("/health", "Content-Length: 99999999999999999999\r\n")),
        exchange(env.proxy, request("/health", f"Content-Length: {1 << 62}\r\n")),
        exchange(env.proxy, request("/health", "Content-Length: -1\r\n")),
        exchange(
            env.proxy,
            request("/health", "Transfer-Encoding: chunked\r\n", body=b"5\r\nhello\r\n0\r\n\r\n"),
        ),
        exchange(
            env.proxy,
            request(env.stored_url, f"Content-Length: {1 << 20}\r\n", "POST", b"x" * (1 << 20)),
        ),
    ]
    statuses = [a.status for a in answers]
    assert statuses[0] == 200 and statuses[4] == 200 and statuses[5] == 405, statuses
    assert all(s in (200, 400, 413) for s in statuses[1:4]), statuses
    check_batch(env, before, answers, seed=None, refused=refusals(answers))


# -- peer port ------------------------------------------------------------------------------------


def test_peer_fuzzed_requests(env: Hostile) -> None:
    """Seeded random request lines and headers, bad methods and versions, long lines, and paths
    that are not `/v1/{pieces,files}/<64 lowercase hex>` (traversal, encodings, uppercase, a
    hash plus a suffix): each answered 400/404/405/413/431 or closed; nothing is sent to peers
    (bytes.to_peers does not move); the proxy's requests.refused does not move either."""
    seed = 1304
    rng = random.Random(seed)
    sha = env.stored_sha256
    paths = [
        "/v1/files/../../canary",
        "/v1/files/%2e%2e%2f%2e%2e%2fcanary",
        f"/v1/files/{sha}/../../../canary",
        f"/v1/files/{sha}%2f..%2f..%2fcanary",
        f"/v1/files/{sha.upper()}",
        f"/v1/files/{sha[:-1]}",
        f"/v1/files/{sha}0",
        f"/v1/files/{sha[:-2]}%{sha[-2:]}",
        f"/v1/pieces/{sha}/x",
        f"/v1/pieces//{sha}",
        f"//v1/files/{sha}",
        f"/v1/files/{sha}\x00",
        "/v1/files/",
        "/v1/",
        "/",
        "/health",
        "/status.json",
        f"http://127.0.0.1/v1/files/{sha}/../../canary",
        "/" + "a" * 5000,
    ]
    wires = [request(p) for p in paths]
    wires += [request(f"/v1/files/{sha}", method=m) for m in ("PUT", "DELETE", "BREW", "get")]
    wires += [f"GET /v1/files/{sha} {v}\r\nHost: x\r\n\r\n".encode() for v in ("HTTP/1.10", "X")]
    wires += [rng.randbytes(rng.randrange(1, 300)) + b"\r\n\r\n" for _ in range(30)]
    wires += [
        request(f"/v1/pieces/{sha}")[:-2] + rng.randbytes(rng.randrange(1, 200)) + b"\r\n\r\n"
        for _ in range(30)
    ]
    wires += [request(f"/v1/files/{sha}", "X-Big: " + "a" * 100_000 + "\r\n")]
    wires += [request(f"/v1/files/{sha}", "".join(f"X-H{i}: v\r\n" for i in range(100)))]
    before = snapshot(env)
    answers = []
    for wire in wires:
        answer = exchange(env.peer, wire)
        if answer.status == 200:  # random bytes after a good head may still leave it valid
            assert wire.startswith(request(f"/v1/pieces/{sha}")[:-4]), (wire[:80], seed)
            continue
        assert answer.status in (0, 400, 404, 405, 413, 431), (wire[:80], answer.status, seed)
        answers.append(answer)
    check_batch(env, before, answers, seed=seed, refused=0)


RANGES_ON_A_PEER_FILE = [
    ("bytes=0-9", 206, (0, 10)),
    ("bytes=0-0,5-9", 200, None),
    ("bytes=-5", 206, (-5, None)),
    ("bytes=-0", 416, None),
    ("bytes=5-2", 200, None),
    ("bytes=0-99999999999999999999", 206, (0, None)),
    ("bytes=99999999999999999999-", 416, None),
    ("bytes=-99999999999999999999", 206, (0, None)),
    ("bytes=" + "9" * 3000 + "-", 416, None),  # a start far beyond the end
    ("bytes=1e3-", 200, None),
    ("items=0-9", 200, None),
    ("bytes=a-b", 200, None),
]


def test_peer_fuzzed_ranges(env: Hostile) -> None:
    """Range values on `/v1/files/<sha>` of a stored file: the whole file (200) for multi-range
    and unparseable ones, exactly the bytes asked (206), 416 with `bytes */size` beyond the end;
    seeded garbage gets 200, 206 or 416. bytes.to_peers grows by exactly the bodies sent."""
    seed = 1305
    rng = random.Random(seed)
    data = env.stored_data
    target = f"/v1/files/{env.stored_sha256}"
    cases = list(RANGES_ON_A_PEER_FILE)
    cases += [
        ("".join(rng.choice("bytes=0123456789-, ") for _ in range(rng.randrange(1, 30))), 0, None)
        for _ in range(40)
    ]
    before = snapshot(env)
    answers = []
    for value, status, span in cases:
        answer = exchange(env.peer, request(target, f"Range: {value}\r\n"))
        answers.append(answer)
        what = (value, answer.status, seed)
        assert answer.status == status if status else answer.status in (200, 206, 416), what
        if answer.status == 416:
            assert f"bytes */{len(data)}".encode() in answer.head, what
        if answer.status == 200:
            assert answer.body == data, what
        if span is not None:
            assert answer.body == data[span[0] : span[1]], what
    sent = sum(len(a.body) for a in answers if a.status in (200, 206))
    check_batch(env, before, answers, seed=seed, refused=0, to_peers=sent)


def test_peer_have_queries_hostile_bodies(env: Hostile) -> None:
    """`POST /v1/have` with no length (411), empty (400), a length not a multiple of 32 (400),
    too many hashes (413, MAX_HAVE_QUERY + 1), a huge declared body never sent (413), a body
    shorter than its length (400 once the client gives up), chunked with no length (411),
    GET (405), seeded garbage of valid size (200: one state byte per 32 bytes asked). A valid
    query for the stored file and an unknown one answers [3, 0]."""
    seed = 1306
    rng = random.Random(seed)
    have = "/v1/have"
    wires = [
        f"POST {have} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        request(have, "Content-Length: 0\r\n", "POST"),
        request(have, "Content-Length: 33\r\n", "POST", b"x" * 33),
        request(
            have,
            f"Content-Length: {(MAX_HAVE_QUERY + 1) * DIGEST_SIZE}\r\n",
            "POST",
            b"x" * ((MAX_HAVE_QUERY + 1) * DIGEST_SIZE),
        ),
        request(have, "Content-Length: 99999999999999999999\r\n", "POST"),
        request(have, f"Content-Length: {1 << 40}\r\n", "POST"),
        request(
            have, "Transfer-Encoding: chunked\r\n", "POST", b"20\r\n" + b"x" * 32 + b"\r\n0\r\n\r\n"
        ),
        request(have),
        request(have, "Content-Length: -32\r\n", "POST"),
    ]
    expected = [411, 400, 400, 413, (400, 413), 413, 411, 405, 400]
    before = snapshot(env)
    answers = []
    for wire, status in zip(wires, expected, strict=True):
        answer = exchange(env.peer, wire)
        assert answer.status in (status if isinstance(status, tuple) else (status,)), (
            wire[:80],
            answer.status,
        )
        answers.append(answer)
    with socket.create_connection(env.peer, timeout=ANSWER_TIMEOUT) as sock:
        sock.sendall(request(have, "Content-Length: 64\r\n", "POST", b"x" * 40))
        sock.shutdown(socket.SHUT_WR)  # the client gives up mid-body
        short = _read_answer(sock, False)
    assert short.status in (0, 400), short
    answers.append(short)
    garbage = [rng.randbytes(DIGEST_SIZE * rng.randrange(1, MAX_HAVE_QUERY + 1)) for _ in range(10)]
    for body in garbage:
        answer = exchange(env.peer, have_query(body))
        assert answer.status == 200 and len(answer.body) == len(body) // DIGEST_SIZE, seed
        assert set(answer.body) <= {0}, seed
        answers.append(answer)
    asked = bytes.fromhex(env.stored_sha256) + bytes(DIGEST_SIZE)
    valid = exchange(env.peer, have_query(asked))
    assert valid.status == 200 and valid.body == bytes([3, 0]), valid
    answers.append(valid)
    check_batch(env, before, answers, seed=seed, refused=0)


# -- slowloris, both ports ------------------------------------------------------------------------


def test_slowloris_is_cut_and_never_blocks_other_clients(env: Hostile) -> None:
    """SLOWLORIS_CONNECTIONS clients per port, started with the daemon, trickle a request head
    that never ends, one byte per SLOWLORIS_PACE s. While they are connected another client is
    served (proxy /health 200, peer piece list 200); each is cut by the daemon within its
    header timeout (proxy HEADER_TIMEOUT, peer DEFAULT_IDLE_TIMEOUT) plus CUT_MARGIN; no
    traceback, and none counts as a served request."""
    before = snapshot(env)
    for slow in env.slowloris:
        assert slow.thread is not None
        slow.thread.join(DEFAULT_IDLE_TIMEOUT + HEADER_TIMEOUT + CUT_MARGIN)
    for slow in env.slowloris:
        is_proxy = slow.address == env.proxy
        timeout = HEADER_TIMEOUT if is_proxy else DEFAULT_IDLE_TIMEOUT
        assert slow.probe_while_open and slow.probe_status == 200, slow
        assert slow.cut_after is not None and slow.cut_after <= timeout + CUT_MARGIN, slow
    check_batch(env, before, [], seed=None, refused=0)


@pytest.mark.parametrize(
    "raw",
    [
        "/m.example/debian/%252e%252e/%252e%252e/etc/passwd",
        "http://m.example/debian/%252e%252e/x",
        "/m.example/debian/pool%252f..%252fx",
        "/m.example/debian/a%3fb.deb",
        "/m.example/debian/a%23b.deb",
    ],
)
def test_targets_decoded_into_a_percent_or_a_query_are_refused(raw: str) -> None:
    """A path that still holds `%`, `?` or `#` once decoded is refused with 400: the upstream
    URL is built from the decoded path, and its parser would decode `%2e%2e` into `..` (the
    mirror was asked for /etc/passwd before)."""
    with pytest.raises(BadTarget) as caught:
        parse_target(raw)
    assert caught.value.status == 400
