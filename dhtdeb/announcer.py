"""The announcer: how the daemon follows its downloads' events (download_events.py).

Owns: the reactions, each in a task of its own so that a slow DHT round holds up no other:
- `DownloadStarted`: announce the file in the DHT now (with announcing on), so that nodes that
  start the same download find this one while it runs;
- `FileStored`: give the download's piece list to the peer server, so the file is never hashed
  again, then queue its announcement with the rest of apt's batch (with announcing on).
A reaction that fails is logged and forgotten: the download it follows is over or goes on without
it. Trusts: the events (downloads.py publishes `FileStored` only for a committed, verified file).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from dhtdeb.discovery import PeerDiscovery
from dhtdeb.download_events import DownloadEvents, DownloadStarted, FileStored
from dhtdeb.errors import DhtdebError
from dhtdeb.swarm.pieces import PieceList

log = logging.getLogger(__name__)


class PieceListCache(Protocol):
    """The peer server, as the announcer sees it."""

    async def adopt_piece_list(self, sha256: str, pieces: PieceList) -> None: ...


async def announce_downloads(
    events: DownloadEvents, peer_server: PieceListCache, discovery: PeerDiscovery, *, announce: bool
) -> None:
    """Consume `events` until cancelled; `announce`: tell the DHT about files (else the piece
    lists are still handed on)."""
    async with asyncio.TaskGroup() as reactions:
        while True:
            event = await events.next()
            if isinstance(event, DownloadStarted):
                if announce:
                    reactions.create_task(_started(discovery, event.sha256))
            else:
                reactions.create_task(_stored(peer_server, discovery, event, announce))


async def _started(discovery: PeerDiscovery, sha256: str) -> None:
    try:
        await discovery.announce(sha256)
    except DhtdebError as exc:
        log.info("announcing the download of %s failed: %s", sha256[:12], exc)
    except Exception:  # a bug, loud; it must not stop the announcer
        log.exception("announcing the download of %s", sha256[:12])


async def _stored(
    peer_server: PieceListCache, discovery: PeerDiscovery, event: FileStored, announce: bool
) -> None:
    sha256 = event.stored.sha256
    try:
        if event.pieces is not None:
            await peer_server.adopt_piece_list(sha256, event.pieces)
        if announce:
            discovery.announce_later(sha256)
    except Exception:
        log.exception("after storing %s", sha256)
