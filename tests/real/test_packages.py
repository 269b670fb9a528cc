"""The Packages reader and the package choice of `make check-real`, on made-up stanzas (normal
suite, no network)."""

from __future__ import annotations

import hashlib
import random

import pytest

from .packages import (
    BANDS,
    PackageRecord,
    PackagesFormatError,
    SizeBand,
    choose_packages,
    parse_packages,
)

STANZAS = """\
Package: zlib1g
Source: zlib
Version: 1:1.2.13.dfsg-1
Installed-Size: 168
Maintainer: Someone <someone@example.org>
Architecture: amd64
Depends: libc6 (>= 2.14)
Description: compression library - runtime
Multi-Arch: same
Priority: required
Section: libs
Filename: pool/main/z/zlib/zlib1g_1.2.13.dfsg-1_amd64.deb
Size: 87908
SHA256: {h1}

Package: tzdata
Version: 2024a-0+deb12u1
Architecture: all
Description: time zone and daylight-saving time data
 A long description
 .
 in several lines.
Filename: pool/main/t/tzdata/tzdata_2024a-0+deb12u1_all.deb
Size: 255364
SHA256: {h2}
"""


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_parse_reads_the_fields_the_check_needs() -> None:
    records = parse_packages(STANZAS.format(h1=digest("a").upper(), h2=digest("b")))
    assert records == [
        PackageRecord(
            "zlib1g",
            "1:1.2.13.dfsg-1",
            "amd64",
            "pool/main/z/zlib/zlib1g_1.2.13.dfsg-1_amd64.deb",
            87908,
            digest("a"),
            "required",
        ),
        PackageRecord(
            "tzdata",
            "2024a-0+deb12u1",
            "all",
            "pool/main/t/tzdata/tzdata_2024a-0+deb12u1_all.deb",
            255364,
            digest("b"),
        ),
    ]
    assert records[0].download_name == "zlib1g_1%3a1.2.13.dfsg-1_amd64.deb"
    assert records[0].pin == "zlib1g=1:1.2.13.dfsg-1"


@pytest.mark.parametrize(
    ("replacement", "message"), [("", "stanza zlib1g: no Size"), ("Size: many\n", "Size 'many'")]
)
def test_parse_refuses_a_stanza_without_a_usable_field(replacement: str, message: str) -> None:
    text = STANZAS.format(h1=digest("a"), h2=digest("b")).replace("Size: 87908\n", replacement)
    with pytest.raises(PackagesFormatError, match=message):
        parse_packages(text)


def synthetic_index(count: int, seed: int) -> list[PackageRecord]:
    rng = random.Random(seed)
    records = []
    for n in range(count):
        size = int(10 ** rng.uniform(3, 7.2))
        arch = rng.choice(("amd64", "all", "amd64"))
        name = f"pkg{n}"
        records.append(
            PackageRecord(
                name,
                "1.0-1",
                arch,
                f"pool/main/p/{name}/{name}_1.0-1_{arch}.deb",
                size,
                digest(name),
                rng.choice(("optional", "optional", "required", "important", "standard")),
            )
        )
    return records


def test_the_choice_is_fixed_by_the_index_and_follows_the_bands() -> None:
    index = synthetic_index(5000, seed=1)
    chosen = choose_packages(index, "amd64")
    assert len(chosen) == sum(b.count for b in BANDS) == 50
    assert chosen == sorted(chosen, key=lambda r: r.name)
    shuffled = index[:]
    random.Random(2).shuffle(shuffled)
    assert choose_packages(shuffled, "amd64") == chosen
    for band in BANDS:
        assert sum(band.low <= r.size < band.high for r in chosen) == band.count
    assert all(r.priority not in ("required", "important") for r in chosen)
    assert sum(r.size for r in chosen) < 64_000_000


def test_the_choice_leaves_out_other_architectures_and_names_with_two_versions() -> None:
    base = PackageRecord("x", "1", "amd64", "pool/main/x/x_1_amd64.deb", 5000, digest("x"))
    twice = [base, PackageRecord("x", "2", "amd64", "pool/main/x/x_2_amd64.deb", 5000, "0" * 64)]
    other = PackageRecord("y", "1", "arm64", "pool/main/y/y_1_arm64.deb", 5000, digest("y"))
    kept = PackageRecord("z", "1", "all", "pool/main/z/z_1_all.deb", 5000, digest("z"))
    band = (SizeBand(1000, 10_000, 10),)
    assert choose_packages([*twice, other, kept], "amd64", band) == [kept]


def test_a_thin_band_gives_what_it_has() -> None:
    index = synthetic_index(300, seed=3)
    bands = (SizeBand(1_000, 2_000, 1000),)
    chosen = choose_packages(index, "amd64", bands)
    assert chosen and all(1_000 <= r.size < 2_000 for r in chosen)
