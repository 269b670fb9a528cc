"""MirrorClient: HTTP requests to the upstream mirror apt asked for.

Owns: one aiohttp session (keep-alive, timeouts) and the translation of aiohttp/OSError/timeout
errors into `MirrorError` at this one boundary. Trusts: nothing it receives; callers verify.
Bodies are passed on byte for byte (no transparent decompression).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from types import TracebackType

import aiohttp
import yarl

from dhtdeb.errors import MirrorError
from dhtdeb.http_session import LazySession

CHUNK = 256 * 1024


class MirrorResponse:
    """An open upstream response; iterate `chunks()` and close it (it is a context manager)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers = response.headers

    @property
    def content_length(self) -> int | None:
        return self._response.content_length

    async def chunks(self, size: int = CHUNK) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(size):
                yield chunk
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise MirrorError(
                f"{self._response.url}: transfer failed: {exc or type(exc).__name__}"
            ) from exc

    async def read_exactly(self, count: int) -> bytes:
        try:
            return await self._response.content.readexactly(count)
        except asyncio.IncompleteReadError:
            raise MirrorError(f"{self._response.url}: body ended early") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise MirrorError(
                f"{self._response.url}: transfer failed: {exc or type(exc).__name__}"
            ) from exc

    async def read(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        async for chunk in self.chunks():
            total += len(chunk)
            if total > limit:
                raise MirrorError(f"{self._response.url}: body larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        self._response.close()

    async def __aenter__(self) -> MirrorResponse:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class MirrorClient:
    def __init__(self, *, connect_timeout: float = 15.0, read_timeout: float = 60.0) -> None:
        timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
        self._session = LazySession(timeout, limit=64, limit_per_host=16)

    async def request(
        self, method: str, url: str, headers: Mapping[str, str] | None = None
    ) -> MirrorResponse:
        session = self._session.get()
        try:
            response = await session.request(
                method,
                yarl.URL(url, encoded=False),
                headers=dict(headers or {}),
                allow_redirects=True,
            )
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise MirrorError(f"{url}: {exc or type(exc).__name__}") from exc
        return MirrorResponse(response)

    async def close(self) -> None:
        await self._session.close()
