"""ProxyServer: the HTTP face apt talks to.

Owns: access control (loopback + --allow-cidr; GET/HEAD only, but POST for the cache actions of
`dhtdeb cache`), dispatch of each request to pass through, index verification, or verified file
serving, the `X-Dhtdeb-Verified` header; the local pages are `LocalPages`' (local_pages.py).
Trusts: the `TrustChain` for what a file must be and the `ContentStore`/`Transfer` rule that only
verified bytes complete a response. Everything from the client and the mirror is untrusted input.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import ipaddress
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from dhtdeb.archive.chain import IndexExpectation, TrustChain
from dhtdeb.archive.last_signed import LastSigned
from dhtdeb.archive.locations import ArchiveLocation, FileKind, locate
from dhtdeb.clock import Clock, MonotonicClock
from dhtdeb.downloads import Downloads
from dhtdeb.errors import ConfigError, DhtdebError, MirrorError, VerificationError
from dhtdeb.metrics import StatusProvider
from dhtdeb.mirror import MirrorClient, MirrorResponse
from dhtdeb.netaddr import HostPort, parse_host_port
from dhtdeb.proxy.files import VERIFIED, content_type, send_verified
from dhtdeb.proxy.local_pages import LocalPages, PeerLookup
from dhtdeb.proxy.target import (
    CACHE_ACTION,
    BadTarget,
    LocalTarget,
    UpstreamTarget,
    parse_target,
)
from dhtdeb.recent_transfers import RecentTransfers
from dhtdeb.stats import Counters
from dhtdeb.store import (
    ContentStore,
    StoredFile,
)
from dhtdeb.transfer import Transfer, UpstreamRefused

log = logging.getLogger(__name__)

MAX_RELEASE_BYTES = 64 * 1024 * 1024
# Headers apt sends that the mirror should see on pass-through and revalidation.
FORWARDED_REQUEST_HEADERS = (
    "Range",
    "If-Range",
    "If-Modified-Since",
    "If-None-Match",
    "Cache-Control",
    "Pragma",
    "Accept",
    "User-Agent",
)
FORWARDED_RESPONSE_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Content-Range",
    "Accept-Ranges",
    "Last-Modified",
    "ETag",
    "Cache-Control",
    "Expires",
    "Date",
)
READ_AHEAD_MEMORY = 512  # pipelined targets remembered as looked at
UNVERIFIABLE_MEMORY = 1024  # archive roots and directories remembered as logged unverifiable
CONDITIONAL = ("If-Modified-Since", "If-None-Match", "If-Range", "Range")
# Seconds a client connection may sit without a complete request head: idle between requests, or
# trickling its headers (slowloris). aiohttp's default is an hour. apt reconnects when a proxy
# closes an idle connection, as it does with servers' usual 5-15 s keep-alive.
HEADER_TIMEOUT = 15.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    allowed: Sequence[Network] = ()
    # The hosts upstream requests may go to ([access] mirrors); empty: any host apt names.
    mirrors: Sequence[HostPort] = ()

    def fetches_from(self, authority: str) -> bool:
        """Whether a request for `authority` (a target's `host[:port]`) may go upstream."""
        if not self.mirrors:
            return True
        try:
            wanted = parse_host_port(authority, default_port=80)
        except ConfigError:
            return False
        return HostPort(wanted.host.lower(), wanted.port) in self.mirrors

    def permits(self, remote: str | None) -> bool:
        if remote is None:
            return False
        try:
            address = ipaddress.ip_address(remote.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback or any(address in network for network in self.allowed)


def _http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


class ProxyServer:
    def __init__(
        self,
        *,
        chain: TrustChain,
        store: ContentStore,
        downloads: Downloads,
        mirror: MirrorClient,
        counters: Counters,
        access: AccessPolicy,
        status: StatusProvider,
        find_peers: PeerLookup,
        metrics: Callable[[], bytes],
        last_signed: LastSigned | None = None,
        recent: RecentTransfers | None = None,
        clock: Clock | None = None,
    ) -> None:
        """`recent`: where every answer from the store (a cache hit) is recorded."""
        self._chain = chain
        self._recent = recent
        self._clock = clock or MonotonicClock()
        self._last_signed = last_signed
        self._keeping: set[asyncio.Task[None]] = set()
        self._store = store
        self._downloads = downloads
        self._mirror = mirror
        self._counters = counters
        self._access = access
        self._pages = LocalPages(
            chain=chain,
            store=store,
            downloads=downloads,
            status=status,
            find_peers=find_peers,
            metrics=metrics,
        )
        self._unverifiable_logged: set[str] = set()
        # Targets already looked at for read-ahead: apt's queue of up to 10 requests is seen
        # again behind each request answered, and one look per target is enough.
        self._read_ahead_seen: collections.OrderedDict[str, None] = collections.OrderedDict()

    @property
    def counters(self) -> Counters:
        return self._counters

    # -- entry --------------------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if not self._access.permits(request.remote):
            self._counters.requests.refused += 1
            log.warning("refused client %s (not loopback, not in --allow-cidr)", request.remote)
            return web.Response(
                status=403, text="dhtdeb: clients outside --allow-cidr are refused\n"
            )
        if request.version.major != 1:
            # aiohttp's parser takes any HTTP/d.d; HTTP/0.9 and HTTP/2.0 heads are not HTTP/1.
            self._counters.requests.refused += 1
            return web.Response(status=505, text="dhtdeb: only HTTP/1.0 and HTTP/1.1\n")
        if request.method not in ("GET", "HEAD") and not (
            request.method == "POST" and CACHE_ACTION.fullmatch(request.raw_path)
        ):
            self._counters.requests.refused += 1
            return web.Response(
                status=405, headers={"Allow": "GET, HEAD"}, text="dhtdeb: only GET and HEAD\n"
            )
        try:
            target = parse_target(request.raw_path)
        except BadTarget as exc:
            self._counters.requests.refused += 1
            return web.Response(status=exc.status, text=f"dhtdeb: {exc}\n")
        if isinstance(target, LocalTarget):
            return await self._pages.serve(request, target)
        if not self._access.fetches_from(target.authority):
            self._counters.requests.refused += 1
            log.warning("refused %s: not one of [access] mirrors", target.url)
            return web.Response(
                status=403, text=f"dhtdeb: {target.authority} is not one of the allowed mirrors\n"
            )
        return await self._upstream(request, target)

    async def _upstream(
        self, request: web.BaseRequest, target: UpstreamTarget
    ) -> web.StreamResponse:
        location = locate(target.url)
        try:
            if location.kind is FileKind.IN_RELEASE:
                return await self._in_release(request, location)
            if location.kind is FileKind.RELEASE:
                return await self._release(request, location)
            if location.kind in (FileKind.INDEX, FileKind.BY_HASH):
                return await self._index_file(request, location)
            if location.kind is FileKind.POOL:
                return await self._pool_file(request, location)
            return await self._pass_through(request, location)
        except UpstreamRefused as exc:
            return web.Response(
                status=exc.status if exc.status >= 400 else 502, text=f"dhtdeb: {exc}\n"
            )
        except MirrorError as exc:
            log.warning("%s", exc)
            return web.Response(status=502, text=f"dhtdeb: {exc}\n", headers={VERIFIED: "no"})

    # -- signed release files -----------------------------------------------------------------

    def _forwarded(self, request: web.BaseRequest, *, conditional: bool = True) -> dict[str, str]:
        headers = {}
        for name in FORWARDED_REQUEST_HEADERS:
            if name in request.headers and (conditional or name not in CONDITIONAL):
                headers[name] = request.headers[name]
        return headers

    async def _fetch_signed(
        self, request: web.BaseRequest, location: ArchiveLocation, *, kept: bool = False
    ) -> tuple[bytes, Mapping[str, str]] | web.StreamResponse:
        """InRelease or Release, whole: its body and headers, or apt's answer when not a 200.
        With `kept` (a verified copy is kept), a 5xx raises MirrorError like a mirror that cannot
        be reached, so that the copy answers instead."""
        assert location.suite_url is not None
        # Without a verified Release for this suite we must see the whole file, even if apt has it.
        conditional = self._chain.has_release(location.suite_url)
        headers = self._forwarded(request, conditional=conditional)
        async with await self._mirror.request("GET", location.url, headers) as upstream:
            if kept and upstream.status >= 500:
                raise MirrorError(f"{location.url}: mirror answered HTTP {upstream.status}")
            if upstream.status != 200:
                return await self._relay(request, upstream, verified=False)
            body = await upstream.read(MAX_RELEASE_BYTES)
            self._counters.bytes.from_mirror += len(body)
            return body, upstream.headers

    async def _in_release(
        self, request: web.BaseRequest, location: ArchiveLocation
    ) -> web.StreamResponse:
        kept = self._last_signed is not None and self._last_signed.has(location.url)
        try:
            fetched = await self._fetch_signed(request, location, kept=kept)
        except MirrorError as exc:
            answer = await self._kept_in_release(request, location, exc) if kept else None
            if answer is None:
                raise
            return answer
        if isinstance(fetched, web.StreamResponse):
            return fetched
        body, headers = fetched
        verified = await self._chain.accept_in_release(location, body)
        if verified and self._last_signed is not None:
            task = asyncio.create_task(
                asyncio.to_thread(
                    self._last_signed.keep, location.url, body, headers.get("Last-Modified")
                )
            )
            self._keeping.add(task)
            task.add_done_callback(self._kept)
        return self._buffered(request, headers, body, verified)

    def _kept(self, task: asyncio.Task[None]) -> None:
        self._keeping.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.warning("could not keep a verified InRelease: %s", error)

    async def _kept_in_release(
        self, request: web.BaseRequest, location: ArchiveLocation, error: MirrorError
    ) -> web.StreamResponse | None:
        """The mirror cannot be reached: the last verified InRelease of the suite, verified
        again (signature, Valid-Until, Date), so that apt keeps its lists and a warm node goes
        on serving what they name. None when there is no such copy or it is no longer good."""
        assert self._last_signed is not None
        kept = await asyncio.to_thread(self._last_signed.get, location.url)
        if kept is None or not await self._chain.accept_in_release(location, kept.body):
            return None
        self._counters.requests.stale_releases += 1
        log.warning(
            "%s; serving the last verified InRelease (Last-Modified %s)",
            error,
            kept.last_modified or "unknown",
        )
        stale = {"Warning": '110 dhtdeb "Response is Stale"'}
        if kept.last_modified is not None:
            stale["Last-Modified"] = kept.last_modified
            if request.headers.get("If-Modified-Since") == kept.last_modified:
                return web.Response(status=304, headers={**stale, VERIFIED: "yes"})
        response = self._buffered(request, stale, kept.body, True)
        response.headers["Warning"] = stale["Warning"]
        return response

    async def _release(
        self, request: web.BaseRequest, location: ArchiveLocation
    ) -> web.StreamResponse:
        assert location.suite_url is not None
        fetched = await self._fetch_signed(request, location)
        if isinstance(fetched, web.StreamResponse):
            return fetched
        body, headers = fetched
        signature_url = location.suite_url + "Release.gpg"
        verified = False
        async with await self._mirror.request("GET", signature_url) as signature_response:
            if signature_response.status == 200:
                signature = await signature_response.read(1024 * 1024)
                self._counters.bytes.from_mirror += len(signature)
                verified = await self._chain.accept_release(location, body, signature)
            else:
                self._log_unverifiable(location.suite_url, "no InRelease and no Release.gpg")
        return self._buffered(request, headers, body, verified)

    def _buffered(
        self,
        request: web.BaseRequest,
        upstream_headers: Mapping[str, str],
        body: bytes,
        verified: bool,
    ) -> web.Response:
        response = web.Response(status=200, body=None if request.method == "HEAD" else body)
        for name in ("Last-Modified", "ETag", "Date", "Cache-Control", "Expires"):
            value = upstream_headers.get(name)
            if value:
                response.headers[name] = value
        response.headers["Content-Type"] = "application/octet-stream"
        if request.method == "HEAD":
            response.headers["Content-Length"] = str(len(body))
        else:
            self._counters.bytes.to_apt += len(body)
        response.headers[VERIFIED] = "yes" if verified else "no"
        return response

    # -- index files (Packages, Translation, by-hash) -----------------------------------------

    async def _index_file(
        self, request: web.BaseRequest, location: ArchiveLocation
    ) -> web.StreamResponse:
        expectation = self._chain.expected_index(location)
        if expectation is None:
            return await self._pass_through(request, location)
        self._learn_beside_pdiff(location, expectation)
        stored = self._store.lookup(expectation.expected.sha256)
        if stored is not None:
            self._counters.requests.cache_hits += 1
            self._chain.learn_index_file(location, expectation, _ready(stored))
            return await self._serve_stored(request, location, stored)
        # Streamed to apt as it comes (all but the held-back tail before the hash matched);
        # its pool files are learned once it is stored, while apt reads it.
        transfer = self._downloads.fetch(location.url, expectation.expected, announce=False)
        self._chain.learn_index_file(location, expectation, transfer.wait_stored())
        try:
            await transfer.wait_started()
        except UpstreamRefused:
            raise
        except (DhtdebError, OSError) as exc:
            return _not_started(location, exc, "the signed Release")
        return await self._serve_transfer(request, location, transfer)

    def _learn_beside_pdiff(self, location: ArchiveLocation, expectation: IndexExpectation) -> None:
        """apt updating by pdiff never asks for the new Packages file; fetch it (verified) and
        learn its pool files, so that the new packages are served verified too."""
        full = self._chain.packages_beside_pdiff(location, expectation)
        if full is None:
            return
        url, packages = full
        log.info("%s: apt patches its Packages file; fetching %s to learn it", location.url, url)
        self._learn_packages_file(url, packages)

    def _catch_up(self, location: ArchiveLocation) -> bool:
        """A pool file no learned Packages file lists, while apt's lists were current (apt
        asked for no Packages file through dhtdeb): fetch those that may list it (verified)
        and learn them. False: there are none to fetch."""
        missing = self._chain.packages_to_catch_up(location.url)
        for url, packages in missing:
            log.info("%s: not in any learned Packages file; fetching %s to learn it",
                     location.url, url)  # fmt: skip
            self._learn_packages_file(url, packages)
        return bool(missing)

    def _learn_packages_file(self, url: str, packages: IndexExpectation) -> None:
        stored = self._store.lookup(packages.expected.sha256)
        if stored is not None:
            self._chain.learn_index_file(locate(url), packages, _ready(stored))
            return
        transfer = self._downloads.fetch(url, packages.expected, announce=False)
        self._chain.learn_index_file(locate(url), packages, transfer.wait_stored())

    # -- pool files (.deb) --------------------------------------------------------------------

    async def _pool_file(
        self, request: web.BaseRequest, location: ArchiveLocation
    ) -> web.StreamResponse:
        expected = await self._chain.settled_pool_file(location.url)
        if expected is None and self._catch_up(location):
            expected = await self._chain.settled_pool_file(location.url)
        if expected is None:
            self._log_unverifiable(location.root, "not listed in any verified Packages file")
            return await self._pass_through(request, location)
        stored = self._store.lookup(expected.sha256)
        if stored is not None:
            self._counters.requests.cache_hits += 1
            return await self._serve_stored(request, location, stored)
        if request.method == "HEAD":
            return web.Response(
                status=200,
                headers={
                    "Content-Length": str(expected.size),
                    "Content-Type": content_type(location),
                    "Accept-Ranges": "bytes",
                    VERIFIED: "yes",
                },
            )
        transfer = self._downloads.fetch(location.url, expected, announce=True)
        self._read_ahead(request)
        try:
            await transfer.wait_started()
        except UpstreamRefused:
            raise
        except (DhtdebError, OSError) as exc:
            return _not_started(location, exc, "its signed Packages entry")
        return await self._serve_transfer(request, location, transfer)

    def _read_ahead(self, request: web.BaseRequest) -> None:
        """Start the downloads of the pool files apt has already asked for behind this one.

        apt pipelines up to 10 requests on its connection; they are answered in order, one at a
        time, so without this each file would start only once the previous one was sent, and
        apt's batch would cost a round trip (and a lookup) per file. A download runs to its end
        even if apt hangs up, so starting it early loses nothing."""
        seen = self._read_ahead_seen
        for target in pipelined_targets(request):
            if target in seen:
                continue
            seen[target] = None
            if len(seen) > READ_AHEAD_MEMORY:
                seen.popitem(last=False)
            try:
                parsed = parse_target(target)
            except BadTarget:
                continue
            if not isinstance(parsed, UpstreamTarget):
                continue
            location = locate(parsed.url)
            if location.kind is not FileKind.POOL:
                continue
            expected = self._chain.pool_file(location.url)
            if (
                expected is None
                or expected.sha256 in self._store
                or self._downloads.running(expected.sha256) is not None
            ):
                continue
            self._downloads.fetch(location.url, expected, announce=True)
            self._counters.requests.read_ahead += 1

    # -- responses ----------------------------------------------------------------------------

    async def _serve_stored(
        self, request: web.BaseRequest, location: ArchiveLocation, stored: StoredFile
    ) -> web.StreamResponse:
        started = self._clock.now()
        with self._store.reading(stored.sha256):  # no eviction while it is sent
            try:
                # Opening a local file costs microseconds; a thread hand-off would cost more.
                handle = open(stored.path, "rb")  # noqa: ASYNC230 - closed by send_verified
            except FileNotFoundError:
                # Evicted since the lookup: the next request downloads it again.
                return web.Response(status=503, headers={"Retry-After": "1", VERIFIED: "no"})
            response = await send_verified(
                request,
                location,
                handle,
                self._counters,
                size=stored.size,
                sha256=stored.sha256,
                last_modified=_http_date(stored.mtime),
                spans=None,
            )
        if self._recent is not None and request.method == "GET" and response.status in (200, 206):
            sent = response.content_length or 0
            self._recent.hit(
                location.url, stored.sha256, stored.size, sent, started, self._clock.now()
            )
        return response

    async def _serve_transfer(
        self, request: web.BaseRequest, location: ArchiveLocation, transfer: Transfer
    ) -> web.StreamResponse:
        # Once committed, the rest is read from the store: not evicted by the next commits.
        with self._store.reading(transfer.sha256):
            return await send_verified(
                request,
                location,
                transfer.open(self._store),
                self._counters,
                size=transfer.size,
                sha256=transfer.sha256,
                last_modified=transfer.last_modified,
                spans=transfer,
            )

    async def _pass_through(
        self, request: web.BaseRequest, location: ArchiveLocation
    ) -> web.StreamResponse:
        self._counters.requests.passed_through += 1
        async with await self._mirror.request(
            request.method, location.url, self._forwarded(request)
        ) as upstream:
            return await self._relay(request, upstream, verified=False)

    async def _relay(
        self, request: web.BaseRequest, upstream: MirrorResponse, *, verified: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status)
        for name in FORWARDED_RESPONSE_HEADERS:
            value = upstream.headers.get(name)
            if value is not None:
                response.headers[name] = value
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        response.headers[VERIFIED] = "yes" if verified else "no"
        await response.prepare(request)
        if request.method != "HEAD" and upstream.status not in (204, 304):
            try:
                async for chunk in upstream.chunks():
                    self._counters.bytes.from_mirror += len(chunk)
                    await response.write(chunk)
                    self._counters.bytes.to_apt += len(chunk)
            except MirrorError as exc:
                log.warning("pass-through cut: %s", exc)
                if request.transport is not None:
                    request.transport.abort()
                raise web.HTTPBadGateway() from None
        await response.write_eof()
        return response

    def _log_unverifiable(self, key: str, reason: str) -> None:
        if key not in self._unverifiable_logged:
            if len(self._unverifiable_logged) >= UNVERIFIABLE_MEMORY:
                self._unverifiable_logged.clear()  # any client can name new directories
            self._unverifiable_logged.add(key)
            log.warning(
                "%s: cannot verify (%s); passing through unverified, not caching", key, reason
            )


def _not_started(location: ArchiveLocation, error: BaseException, reference: str) -> web.Response:
    """apt's answer for a verified file whose download failed before its first byte."""
    if isinstance(error, MirrorError):
        reason = f"the mirror failed: {error}"
    elif isinstance(error, VerificationError):
        reason = f"the mirror's file does not match {reference}: {error}"
    else:
        reason = f"download failed: {error}"
    return web.Response(
        status=502, text=f"dhtdeb: {location.url}: {reason}\n", headers={VERIFIED: "no"}
    )


async def _ready(stored: StoredFile) -> StoredFile:
    return stored


def pipelined_targets(request: web.BaseRequest) -> list[str]:
    """The targets of the GET requests the client has sent behind `request` on its connection,
    as the HTTP server has already parsed them (it answers them one at a time).

    aiohttp keeps them in a private deque of its connection handler; if that ever changes,
    nothing is read ahead and nothing else changes."""
    queued = getattr(request.protocol, "_messages", None)
    if not isinstance(queued, collections.deque):
        return []
    targets = []
    for item in list(queued):
        message = item[0] if isinstance(item, tuple) and item else None
        method, path = getattr(message, "method", None), getattr(message, "path", None)
        if method == "GET" and isinstance(path, str):
            targets.append(path)
    return targets


class _BadRequestLog(logging.Logger):
    """aiohttp's logger for the proxy's connections. aiohttp reports a request its parser
    refused (bad request line, header too long, ...) with a traceback at ERROR, so any client
    could flood the log; such a request becomes one debug line and one `requests.refused`.
    Any other report (an exception in a handler: a bug) stays as loud as aiohttp makes it."""

    def __init__(self, counters: Counters) -> None:
        super().__init__(f"{__name__}.http")
        self.parent = log
        self._counters = counters

    def exception(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if isinstance(kwargs.get("exc_info"), HttpProcessingError):
            self._counters.requests.refused += 1
            super().debug(msg, *args)
        else:
            super().exception(msg, *args, **kwargs)

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if isinstance(kwargs.get("exc_info"), HttpProcessingError):
            self._counters.requests.refused += 1  # a non-HTTP first line (BadHttpMethod)
            kwargs.pop("exc_info")
        super().debug(msg, *args, **kwargs)


def build_server(proxy: ProxyServer) -> web.Server:
    return web.Server(
        proxy.handle,
        logger=_BadRequestLog(proxy.counters),
        keepalive_timeout=HEADER_TIMEOUT,  # also bounds the wait for complete headers
        max_line_size=8190,
        max_field_size=8190,
    )
