"""Where a requested URL sits in a Debian archive.

Owns: the split of an upstream URL into archive root, suite and the path below it, and the kind of
file (signed release, index, by-hash index, pool file). Trusts nothing: it only names things.
An archive root is everything before `/dists/`; Packages' `Filename:` is relative to it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FileKind(enum.Enum):
    IN_RELEASE = "InRelease"
    RELEASE = "Release"
    RELEASE_GPG = "Release.gpg"
    INDEX = "index"  # a file below dists/<suite>/ that the Release lists (Packages, Translation…)
    BY_HASH = "by-hash"  # dists/<suite>/…/by-hash/SHA256/<hex>
    POOL = "pool"  # anything outside dists/ (.deb, .dsc, …)


@dataclass(frozen=True, slots=True)
class ArchiveLocation:
    url: str  # canonical upstream URL, http://host[:port]/path
    kind: FileKind
    root: str  # archive root URL ending in "/", or the directory for a pool file
    suite_url: str | None  # root + dists/<suite>/ for files below a suite
    relative: str  # path below suite_url (index files) or below root (pool files)
    by_hash_sha256: str | None = None


_SIGNED = {
    "InRelease": FileKind.IN_RELEASE,
    "Release": FileKind.RELEASE,
    "Release.gpg": FileKind.RELEASE_GPG,
}


def locate(url: str) -> ArchiveLocation:
    """Classify a canonical upstream URL (already checked for traversal by the proxy)."""
    scheme_end = url.index("://") + 3
    path_start = url.find("/", scheme_end)
    origin, path = (url, "/") if path_start < 0 else (url[:path_start], url[path_start:])
    marker = path.rfind("/dists/")
    if marker >= 0:
        root = origin + path[: marker + 1]
        rest = path[marker + len("/dists/") :]
        suite, _, below = rest.partition("/")
        if suite and below:
            suite_url = f"{root}dists/{suite}/"
            if below in _SIGNED:
                return ArchiveLocation(url, _SIGNED[below], root, suite_url, below)
            parts = below.split("/")
            if len(parts) >= 3 and parts[-3:-1] == ["by-hash", "SHA256"]:
                digest = parts[-1].lower()
                if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
                    return ArchiveLocation(url, FileKind.BY_HASH, root, suite_url, below, digest)
            return ArchiveLocation(url, FileKind.INDEX, root, suite_url, below)
    directory = origin + path[: path.rfind("/") + 1]
    return ArchiveLocation(url, FileKind.POOL, directory, None, path.rsplit("/", 1)[-1])
