"""Sending one upload's body to a peer: a byte range of a local file, at the node's upload rate.

Owns: the steps the body is sent in (one `sendfile` each, or a read and a write where the loop
has no sendfile), pacing them through the node's shared `TokenBucket`, and how an upload ends
early: a peer that stops reading for `idle_timeout` is cut with a TCP reset, one that went away
is let go, and a file shorter than its size (a partial file not written that far) ends the
connection, since its Content-Length cannot be met. Trusts: its caller (peer_server.py), which
has checked that the range is held and answered the request's headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import IO

from aiohttp import web

from dhtdeb.swarm.ratelimit import TokenBucket, throttle

log = logging.getLogger(__name__)

# Body bytes handed to the kernel per step (each step one sendfile). Without a cap: large steps,
# few wakeups. With a cap: about 1/16 s of traffic (STEPS_PER_SECOND), at least 64 KiB, so the
# shared bucket paces every upload smoothly without per-step overhead limiting a high cap (each
# step costs the event loop a round of sendfile, pause and resume: in a flash crowd on few cores
# that CPU is taken from the downloads). A step that makes no progress for `idle_timeout` means
# the client stopped reading; with 1 MiB steps and the default 30 s that is a client slower than
# ~35 KB/s, which is no use as a peer anyway.
STEP_UNCAPPED = 1 << 20
STEP_CAPPED = 64 * 1024
STEPS_PER_SECOND = 16

_LINGER_RESET = struct.pack("ii", 1, 0)


class UploadEnd(enum.Enum):
    SENT = "sent"  # every byte of the range
    STALLED = "stalled"  # the peer stopped reading: cut with a reset
    GONE = "gone"  # the connection was lost
    SHORT_FILE = "short file"  # the file ended before its size: cut with a reset


async def send_range(
    request: web.BaseRequest,
    response: web.StreamResponse,
    handle: IO[bytes],
    start: int,
    end: int,
    *,
    bucket: TokenBucket | None,
    idle_timeout: float,
    sent: Callable[[int], None],
) -> UploadEnd:
    """Send bytes [start, end) of `handle` as the prepared `response`'s body; `sent` is told
    each step's bytes once they are handed to the kernel."""
    step = STEP_UNCAPPED
    if bucket is not None:
        step = int(min(STEP_UNCAPPED, max(STEP_CAPPED, bucket.rate / STEPS_PER_SECOND)))
    offset = start
    while offset < end:
        count = min(step, end - offset)
        await throttle(bucket, count)
        try:
            async with asyncio.timeout(idle_timeout):
                await _send_step(request, response, handle, offset, count)
        except TimeoutError:
            log.debug("peer %s stopped reading: upload cut", request.remote)
            _reset(request)
            response.force_close()
            return UploadEnd.STALLED
        except ConnectionError:
            log.debug("peer %s went away mid-upload", request.remote)
            response.force_close()
            return UploadEnd.GONE
        except _ShortFile:
            log.warning("%s shorter than its size: upload cut", handle.name)
            _reset(request)
            response.force_close()
            return UploadEnd.SHORT_FILE
        offset += count
        sent(count)
    return UploadEnd.SENT


async def _send_step(
    request: web.BaseRequest,
    response: web.StreamResponse,
    handle: IO[bytes],
    offset: int,
    count: int,
) -> None:
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("connection lost")
    try:
        sent = await asyncio.get_running_loop().sendfile(transport, handle, offset, count)
    except NotImplementedError:
        data = await asyncio.to_thread(os.pread, handle.fileno(), count, offset)
        await response.write(data)
        sent = len(data)
    if sent != count:
        raise _ShortFile


class _ShortFile(Exception):
    pass


def _reset(request: web.BaseRequest) -> None:
    """Drop a stalled connection now, with RST: its unsent bytes are of no use to anyone."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()
