"""LazySession: the one way dhtdeb builds an outgoing aiohttp session.

Created on first use (inside the running loop), bytes passed on exactly as received (no transparent
decompression, no Accept-Encoding), dhtdeb's User-Agent, bounded connection pools.
"""

from __future__ import annotations

import contextlib

import aiohttp

from dhtdeb import __version__

USER_AGENT = f"dhtdeb/{__version__}"


class LazySession:
    def __init__(self, timeout: aiohttp.ClientTimeout, *, limit: int, limit_per_host: int) -> None:
        self._timeout = timeout
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                auto_decompress=False,
                connector=aiohttp.TCPConnector(
                    limit=self._limit, limit_per_host=self._limit_per_host
                ),
                headers={"User-Agent": USER_AGENT},
                skip_auto_headers=("Accept-Encoding",),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
            self._session = None
