"""Answering apt with a verified file: a stored one or one still downloading.

Owns: the response headers of verified files (ETag = the SHA256, Last-Modified, Cache-Control),
conditional GET/HEAD (304), Range and If-Range as apt uses them, and sending the bytes: sendfile
from the event loop for files on disk, writes from memory for small files still held there. A
response whose bytes stop being verifiable is cut, never completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
from typing import BinaryIO

from aiohttp import web

from dhtdeb.archive.locations import ArchiveLocation, FileKind
from dhtdeb.errors import DhtdebError
from dhtdeb.proxy.ranges import Unsatisfiable, parse_range
from dhtdeb.stats import Counters
from dhtdeb.transfer import Transfer

log = logging.getLogger(__name__)

VERIFIED = "X-Dhtdeb-Verified"
# Answers up to this size go out as one write of headers and body (read from the page cache or
# memory) instead of a header write and a sendfile.
ONE_WRITE_MAX = 256 * 1024


def content_type(location: ArchiveLocation) -> str:
    if location.relative.endswith(".deb") or location.relative.endswith(".udeb"):
        return "application/vnd.debian.binary-package"
    return "application/octet-stream"


def _not_modified(request: web.BaseRequest, etag: str, last_modified: str | None) -> bool:
    """Whether a conditional GET/HEAD may be answered 304 (RFC 9110 13.1.2, 13.1.3)."""
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or etag in tags
    if_modified_since = request.headers.get("If-Modified-Since")
    if if_modified_since is None or last_modified is None:
        return False
    try:
        since = email.utils.parsedate_to_datetime(if_modified_since)
        modified = email.utils.parsedate_to_datetime(last_modified)
    except (TypeError, ValueError, IndexError, OverflowError):
        return False
    if since.tzinfo is None or modified.tzinfo is None:
        return False
    return modified <= since


async def send_verified(
    request: web.BaseRequest,
    location: ArchiveLocation,
    handle: BinaryIO | None,
    counters: Counters,
    *,
    size: int,
    sha256: str,
    last_modified: str | None,
    spans: Transfer | None,
) -> web.StreamResponse:
    """Answer with the file's bytes from `handle` (closed here): a stored file (`spans` None:
    every byte is verified) or a running transfer, whose bytes are sent as they become
    servable (from memory when `handle` is None). HEAD, conditional requests, Range and
    If-Range as apt uses them; a file's body goes out by sendfile from the event loop,
    without a thread hand-off per file."""
    with handle if handle is not None else contextlib.nullcontext():
        etag = f'"{sha256}"'
        headers = {
            "Accept-Ranges": "bytes",
            "Content-Type": content_type(location),
            "ETag": etag,
            "Cache-Control": ("max-age=0" if location.kind is FileKind.INDEX else "max-age=86400"),
            VERIFIED: "yes",
        }
        if last_modified:
            headers["Last-Modified"] = last_modified
        if _not_modified(request, etag, last_modified):
            return web.Response(status=304, headers=headers)
        byte_range = None
        if_range = request.headers.get("If-Range")
        if if_range is None or if_range in (last_modified, etag):
            try:
                byte_range = parse_range(request.headers.get("Range"), size)
            except Unsatisfiable:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
        start, end = (byte_range.start, byte_range.end) if byte_range else (0, size)
        status = 206 if byte_range else 200
        if byte_range:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        if request.method != "HEAD" and end - start <= ONE_WRITE_MAX:
            # Most packages: the whole answer, headers and body, in one write once verified
            # (a small file is held back whole until its hash matched anyway).
            try:
                body = await _read_whole(handle, spans, start, end)
            except (DhtdebError, OSError) as exc:
                log.warning("%s: not served: %s", location.url, exc)
                return web.Response(
                    status=503,
                    headers={"Retry-After": "1", VERIFIED: "no"},
                    text=f"dhtdeb: {exc}\n",
                )
            counters.bytes.to_apt += len(body)
            return web.Response(status=status, headers=headers, body=body)
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = end - start
        await response.prepare(request)
        if request.method == "HEAD":
            await response.write_eof()
            return response
        try:
            if spans is None:
                assert handle is not None
                if end > start:
                    await _send_file_span(request, handle, start, end - start)
                counters.bytes.to_apt += end - start
            else:
                async for offset, length in spans.spans(start, end):
                    if handle is None:
                        await response.write(spans.read(offset, length))
                    else:
                        await _send_file_span(request, handle, offset, length)
                    counters.bytes.to_apt += length
        except (DhtdebError, OSError) as exc:
            # Never complete a response whose bytes were not verified: cut the connection.
            log.error("aborting response for %s: %s", location.url, exc)
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable() from None
        await response.write_eof()
        return response


async def _read_whole(
    handle: BinaryIO | None, spans: Transfer | None, start: int, end: int
) -> bytes:
    """Bytes [start, end) of a stored file, or of a transfer once they are servable."""
    if spans is None:
        assert handle is not None
        data = os.pread(handle.fileno(), end - start, start)
        if len(data) != end - start:
            raise OSError(f"{handle.name} ends before byte {end}")
        return data
    parts = []
    async for offset, length in spans.spans(start, end):
        if handle is None:
            parts.append(spans.read(offset, length))
        else:
            data = os.pread(handle.fileno(), length, offset)
            if len(data) != length:
                raise OSError(f"{handle.name} ends before byte {offset + length}")
            parts.append(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _send_file_span(
    request: web.BaseRequest, handle: BinaryIO, offset: int, length: int
) -> None:
    """Send bytes [offset, offset + length) of `handle` as body bytes of a prepared response.

    sendfile: the kernel copies from the page cache to the socket, one copy per byte fewer than
    read + write and no Python step per chunk, on the event loop the download feeding this
    file shares. The response has no compression or chunking, so its body is exactly these
    bytes. asyncio falls back to reads and writes by itself where sendfile is not available.
    """
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("client went away")
    sent = await asyncio.get_running_loop().sendfile(transport, handle, offset, length)
    if sent != length:
        raise OSError(f"{handle.name} ends before byte {offset + length}")
