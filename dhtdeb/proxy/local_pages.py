"""The proxy's local pages: what `http://127.0.0.1:9977/...` answers besides the archive.

Owns: the dashboard (`/`, proxy/dashboard.py), `/health`, `/status.json`, `/metrics`,
`/peers/<sha256>` (a DHT lookup), the cache listing (`/cache.json`) and the cache actions of
`dhtdeb cache` (`POST /cache/{pin,unpin,evict}/<sha256>`). Trusts: the proxy's access policy,
checked before a request comes here; nothing in the request itself (a cache action from a web
page is refused).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from dhtdeb.archive.chain import TrustChain
from dhtdeb.downloads import Downloads
from dhtdeb.metrics import StatusProvider
from dhtdeb.proxy.dashboard import CONTENT_SECURITY_POLICY, RECENT_FILES, RecentFile
from dhtdeb.proxy.dashboard import render as render_dashboard
from dhtdeb.proxy.target import CACHE_ACTION, LocalTarget
from dhtdeb.store import ContentStore, EvictionRefused, NotStored, StoreEntry, check_sha256

PeerLookup = Callable[[str], Awaitable[list[str]]]


class LocalPages:
    def __init__(
        self,
        *,
        chain: TrustChain,
        store: ContentStore,
        downloads: Downloads,
        status: StatusProvider,
        find_peers: PeerLookup,
        metrics: Callable[[], bytes],
    ) -> None:
        self._chain = chain
        self._store = store
        self._downloads = downloads
        self._status = status
        self._find_peers = find_peers
        self._metrics = metrics

    async def serve(self, request: web.BaseRequest, target: LocalTarget) -> web.StreamResponse:
        """The answer to a request for one of the local pages."""
        if target.path == "/health":
            return web.Response(text="ok\n")
        if target.path == "/status.json":
            return web.Response(
                text=json.dumps(self._status(), indent=2) + "\n", content_type="application/json"
            )
        if target.path == "/metrics":
            return web.Response(body=self._metrics(), content_type="text/plain", charset="utf-8")
        if target.path == "/cache.json":
            return await self._cache_listing()
        action = CACHE_ACTION.fullmatch(target.path)
        if action is not None:
            return await self._cache_action(request, action.group(1), action.group(2))
        if target.path.startswith("/peers/"):
            sha256 = target.path.removeprefix("/peers/")
            if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
                return web.Response(status=400, text="dhtdeb: expected /peers/<sha256 hex>\n")
            peers = await asyncio.wait_for(self._find_peers(sha256), timeout=30)
            return web.Response(
                text=json.dumps({"sha256": sha256, "peers": peers}) + "\n",
                content_type="application/json",
            )
        return await self._dashboard()

    async def _dashboard(self) -> web.Response:
        """`GET /`: the dashboard (proxy/dashboard.py), with the most recently used files."""
        status = self._status()
        entries, urls = await self._entries_with_urls(RECENT_FILES)
        recent = [
            RecentFile(e.sha256, e.size, e.last_used, e.pinned, e.readers, urls.get(e.sha256))
            for e in entries
        ]
        return web.Response(
            text=render_dashboard(status, recent, time.time()),
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": CONTENT_SECURITY_POLICY,
                "X-Content-Type-Options": "nosniff",
            },
        )

    async def _entries_with_urls(
        self, limit: int | None = None
    ) -> tuple[list[StoreEntry], dict[str, str]]:
        """Stored files, most recently used first (at most `limit`), and the URLs the archive
        index knows them by."""
        entries = self._store.entries()[:limit]
        urls = await asyncio.to_thread(self._chain.urls_of, [e.sha256 for e in entries])
        return entries, urls

    async def _cache_listing(self) -> web.Response:
        """`GET /cache.json`: every stored file, most recently used first, with the URL the
        archive index knows it by (null for none)."""
        entries, urls = await self._entries_with_urls()
        return _json(
            {
                "files": [
                    {
                        "sha256": entry.sha256,
                        "size": entry.size,
                        "last_used": round(entry.last_used, 3),
                        "pinned": entry.pinned,
                        "readers": entry.readers,
                        "url": urls.get(entry.sha256),
                    }
                    for entry in entries
                ],
                "count": len(entries),
                "bytes": sum(entry.size for entry in entries),
                "limit_bytes": self._store.limit_bytes,
                "pinned": sum(entry.pinned for entry in entries),
                "pinned_bytes": sum(entry.size for entry in entries if entry.pinned),
            }
        )

    async def _cache_action(self, request: web.BaseRequest, verb: str, sha256: str) -> web.Response:
        """`POST /cache/{pin,unpin,evict}/<sha256>`. 400 for a bad SHA256, 404 for a file not
        stored, 409 for evicting a pinned file or one being sent or downloaded."""
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"}, text="dhtdeb: POST\n")
        if "Origin" in request.headers:
            # A browser's request (a web page posting to 127.0.0.1, or DNS rebinding): never
            # the CLI's. Refused so that no web page can change the cache.
            return web.Response(status=403, text="dhtdeb: no cache actions from web pages\n")
        try:
            check_sha256(sha256)
        except ValueError:
            return web.Response(status=400, text="dhtdeb: expected a lowercase hex SHA256\n")
        answer: dict[str, object] = {"sha256": sha256, "action": verb}
        try:
            if verb == "pin":
                answer["changed"] = await asyncio.to_thread(self._store.pin, sha256)
            elif verb == "unpin":
                answer["changed"] = await asyncio.to_thread(self._store.unpin, sha256)
            else:
                if self._downloads.running(sha256) is not None:
                    raise EvictionRefused(f"{sha256} is being downloaded")
                answer["freed_bytes"] = self._store.evict(sha256)
                answer["changed"] = True
        except NotStored as exc:
            return _json({**answer, "error": str(exc)}, status=404)
        except EvictionRefused as exc:
            return _json({**answer, "error": str(exc)}, status=409)
        return _json(answer)


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data, indent=1) + "\n", content_type="application/json"
    )
