"""Reading a Release file's verified payload: which index files exist, their SHA256 and size.

Owns: the parsed view of one Release. Trusts: nothing by itself; callers hand it only text that
gpgv has verified (see `signature.py`). Malformed input raises `IndexFormatError`.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass

from debian import deb822

from dhtdeb.errors import IndexFormatError

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class ReleaseEntry:
    path: str  # relative to dists/<suite>/, e.g. main/binary-amd64/Packages.xz
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class Release:
    suite: str
    codename: str
    date: float | None
    valid_until: float | None
    acquire_by_hash: bool
    files: dict[str, ReleaseEntry]


def _parse_date(value: str | None, field: str) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value.strip()).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError) as exc:
        raise IndexFormatError(f"Release: bad {field} {value!r}: {exc}") from None


def parse_release(text: bytes) -> Release:
    try:
        paragraphs = list(deb822.Release.iter_paragraphs(text.decode("utf-8"), use_apt_pkg=False))
    except (UnicodeDecodeError, ValueError) as exc:
        raise IndexFormatError(f"Release is not valid deb822: {exc}") from None
    if len(paragraphs) != 1:
        raise IndexFormatError(f"Release must have one paragraph, found {len(paragraphs)}")
    release = paragraphs[0]
    files: dict[str, ReleaseEntry] = {}
    try:
        entries = release.get("SHA256") or []
        for item in entries:
            name, sha256, size_text = item["name"], item["sha256"].lower(), item["size"]
            if not _HEX64.fullmatch(sha256):
                raise IndexFormatError(f"Release: bad SHA256 for {name!r}")
            if name.startswith("/") or ".." in name.split("/") or not name:
                raise IndexFormatError(f"Release: bad file name {name!r}")
            files[name] = ReleaseEntry(name, sha256, int(size_text))
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexFormatError(f"Release: malformed SHA256 list: {exc}") from None
    if not files:
        raise IndexFormatError("Release lists no SHA256 sums")
    return Release(
        suite=str(release.get("Suite", "")),
        codename=str(release.get("Codename", "")),
        date=_parse_date(release.get("Date"), "Date"),
        valid_until=_parse_date(release.get("Valid-Until"), "Valid-Until"),
        acquire_by_hash=str(release.get("Acquire-By-Hash", "no")).strip().lower() == "yes",
        files=files,
    )
