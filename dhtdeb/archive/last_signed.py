"""The last verified InRelease of each suite, kept so that a warm node answers `apt-get update`
while the mirror is unreachable.

Owns: `<state-dir>/signed/`, one file per InRelease URL (named by the SHA256 of the URL), holding
the document exactly as the mirror sent it and its Last-Modified. Trusts nothing it reads back:
the proxy hands a kept document to the trust chain again (signature, Valid-Until, a Date not older
than the one known) before apt sees it, so a file changed on disk is refused like any other.
Written atomically (temporary file, fsync, rename); a file that cannot be read is ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MAX_DOCUMENT = 64 * 1024 * 1024  # as the proxy's limit for a Release file
_HEADER_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class KeptRelease:
    body: bytes
    last_modified: str | None


class LastSigned:
    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)

    def _path(self, url: str) -> Path:
        return self._dir / hashlib.sha256(url.encode()).hexdigest()

    def keep(self, url: str, body: bytes, last_modified: str | None) -> None:
        """Replace the kept document of `url` (call it on a worker thread: it fsyncs)."""
        header = json.dumps({"url": url, "last_modified": last_modified}).encode()
        if len(header) > _HEADER_LIMIT or len(body) > MAX_DOCUMENT:
            return
        path = self._path(url)
        temporary = path.with_suffix(".tmp")
        with open(temporary, "wb") as out:
            out.write(header + b"\n" + body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)

    def get(self, url: str) -> KeptRelease | None:
        """The kept document of `url`, or None (never kept, or unreadable)."""
        path = self._path(url)
        try:
            with open(path, "rb") as source:
                data = source.read(_HEADER_LIMIT + 1 + MAX_DOCUMENT + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("%s: kept InRelease unreadable: %s", path, exc)
            return None
        header, separator, body = data.partition(b"\n")
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            fields = json.loads(header)
            last_modified = fields.get("last_modified") if isinstance(fields, dict) else None
            if separator and isinstance(fields, dict) and fields.get("url") == url:
                if last_modified is None or isinstance(last_modified, str):
                    return KeptRelease(body, last_modified)
        log.warning("%s: kept InRelease malformed; ignored", path)
        return None

    def has(self, url: str) -> bool:
        return self._path(url).is_file()
