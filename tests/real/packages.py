"""Packages stanzas of the real archive, and the fixed rule that picks what `make check-real`
downloads.

Owns: reading the fields the check needs (name, version, architecture, Filename, Size, SHA256,
Priority) from a decompressed Packages file, and `choose_packages`: per size band, the packages
whose salted SHA256 of the name sorts first. The same index gives the same choice on every
machine, spread over the alphabet and over Debian's size distribution (a quarter of Debian's
.debs are under 18 KB, the median is 59 KB; a few multi-MiB files exercise the swarm's pieces).
Packages of priority required/important are left out: they are debootstrap's minbase, which the
check fetches next and measures on its own.
Trusts: the Packages text (apt verified it against the signed Release before the check reads it).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SALT = "dhtdeb check-real"
MINBASE_PRIORITIES = ("required", "important")
_FIELDS = ("Package", "Version", "Architecture", "Filename", "Size", "SHA256")


class PackagesFormatError(ValueError):
    """A stanza lacks a field the check needs, or its Size is not a number."""


@dataclass(frozen=True, slots=True)
class PackageRecord:
    name: str
    version: str
    architecture: str
    filename: str  # relative to the archive root, as in `Filename:`
    size: int
    sha256: str
    priority: str = "optional"

    @property
    def download_name(self) -> str:
        """The file name apt-get download and debootstrap write (':' -> %3a)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"

    @property
    def pin(self) -> str:
        """`name=version` for apt-get: this version, whatever other suites offer."""
        return f"{self.name}={self.version}"


@dataclass(frozen=True, slots=True)
class SizeBand:
    low: int  # bytes, inclusive
    high: int  # bytes, exclusive
    count: int


# 50 packages, about 40 MB: Debian's small files dominate the count, the big ones the bytes.
BANDS: tuple[SizeBand, ...] = (
    SizeBand(1_000, 20_000, 12),
    SizeBand(20_000, 100_000, 14),
    SizeBand(100_000, 1_000_000, 14),
    SizeBand(1_000_000, 4_000_000, 8),
    SizeBand(4_000_000, 12_000_000, 2),
)


def parse_packages(text: str) -> list[PackageRecord]:
    """Every stanza of a decompressed Packages file (PackagesFormatError if one lacks a field)."""
    records = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t", ""):
                continue
            key, sep, value = line.partition(":")
            if sep:
                fields[key] = value.strip()
        if not fields:
            continue
        missing = [f for f in _FIELDS if not fields.get(f)]
        if missing:
            name = fields.get("Package", "?")
            raise PackagesFormatError(f"stanza {name}: no {', '.join(missing)}")
        try:
            size = int(fields["Size"])
        except ValueError:
            raise PackagesFormatError(
                f"stanza {fields['Package']}: Size {fields['Size']!r}"
            ) from None
        records.append(
            PackageRecord(
                name=fields["Package"],
                version=fields["Version"],
                architecture=fields["Architecture"],
                filename=fields["Filename"],
                size=size,
                sha256=fields["SHA256"].lower(),
                priority=fields.get("Priority", "optional"),
            )
        )
    return records


def _rank(name: str) -> str:
    return hashlib.sha256(f"{SALT}:{name}".encode()).hexdigest()


def choose_packages(
    records: Iterable[PackageRecord], arch: str, bands: Sequence[SizeBand] = BANDS
) -> list[PackageRecord]:
    """Per band, the `count` candidates whose salted name hash sorts first (fewer if the band
    has fewer); sorted by name. Candidates: one version in the index, for `arch` or all, a .deb
    under pool/, not part of debootstrap's minbase priorities."""
    records = list(records)
    versions = Counter(r.name for r in records)
    candidates = [
        r
        for r in records
        if versions[r.name] == 1
        and r.architecture in (arch, "all")
        and r.filename.startswith("pool/")
        and r.filename.endswith(".deb")
        and r.priority not in MINBASE_PRIORITIES
    ]
    chosen: list[PackageRecord] = []
    for band in bands:
        in_band = [r for r in candidates if band.low <= r.size < band.high]
        chosen += sorted(in_band, key=lambda r: _rank(r.name))[: band.count]
    return sorted(chosen, key=lambda r: r.name)
