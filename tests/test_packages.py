"""The Packages hot-path parser: right entries, one error type for every malformed input.

Covers dhtdeb.archive.packages and its decompression (dhtdeb.archive.decompress): realistic
stanzas, every compression, the format choices its module docstring documents, one error per
malformed case (with where it is), block and chunk boundaries, the .xz decoding thread (stopped
when the generator is abandoned or fails, errors raised where the sequential decoder raises them,
the same results without liblzma), agreement with python-debian's deb822 on a generated file, and
a fuzz test of the invariant "any bytes, compressed or not, parse or raise IndexFormatError".
No test may leave a decoding thread behind (checked after each one).
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import functools
import gzip
import hashlib
import io
import lzma
import random
import re
import threading
import zlib
from collections.abc import Callable, Iterator
from unittest import mock

import pytest
from debian import deb822
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dhtdeb.archive import decompress, packages
from dhtdeb.archive.packages import PackageFile, iter_package_files, open_index_stream
from dhtdeb.errors import IndexFormatError

SEED = 20260601
H1 = hashlib.sha256(b"one").hexdigest()
H2 = hashlib.sha256(b"two").hexdigest()
H3 = hashlib.sha256(b"three").hexdigest()

COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "": lambda data: data,
    ".xz": lzma.compress,
    ".lzma": lambda data: lzma.compress(data, format=lzma.FORMAT_ALONE),
    ".gz": lambda data: gzip.compress(data, mtime=0),
    ".bz2": bz2.compress,
}

REALISTIC = f"""\
Package: 0ad
Version: 0.0.26-3
Installed-Size: 28591
Maintainer: Debian Games Team <pkg-games-devel@lists.alioth.debian.org>
Architecture: amd64
Depends: 0ad-data (>= 0.0.26), libc6 (>= 2.34), libstdc++6 (>= 12)
Description: Real-time strategy game of ancient warfare
 0 A.D. (pronounced "zero ey-dee") is a free, open-source, cross-platform
 real-time strategy game.
 .
 Filename: this continuation line is part of the Description, not a field
Homepage: https://play0ad.com/
Description-md5: d943033bedada21853d2ae54a2578a7b
Tag: game::strategy, interface::graphical, interface::x11, role::program,
 uitoolkit::sdl, uitoolkit::wxwidgets, use::gameplaying,
 x11::application
Section: games
Priority: optional
Filename: pool/main/0/0ad/0ad_0.0.26-3_amd64.deb
Size: 7891488
MD5sum: 4d471183a39a3a11d00cd35bf9f6803d
SHA256: {H1}

Package: hello
Architecture: amd64
sha256: {H2.upper()}
SIZE:55036
Description: example package based on GNU hello
FILENAME:   pool/main/h/hello/hello_2.10-3_amd64.deb\t
Multi-Arch: foreign

Package: hello-src
Binary: hello
Checksums-Sha256:
 {H3} 1234 hello_2.10.orig.tar.gz
Files:
 d41d8cd98f00b204e9800998ecf8427e 1234 hello_2.10.orig.tar.gz

Package: zzz
Size: 0
SHA256: {H3}
Filename: pool/main/z/zzz/zzz_1_all.deb
"""

EXPECTED = [
    PackageFile("pool/main/0/0ad/0ad_0.0.26-3_amd64.deb", H1, 7891488),
    PackageFile("pool/main/h/hello/hello_2.10-3_amd64.deb", H2, 55036),
    PackageFile("pool/main/z/zzz/zzz_1_all.deb", H3, 0),
]


def decoding_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dhtdeb-xz-decoder"]


@pytest.fixture(autouse=True)
def no_decoding_thread_is_left_behind() -> Iterator[None]:
    assert decoding_threads() == []
    yield
    assert decoding_threads() == []


def without_liblzma() -> contextlib.AbstractContextManager[object]:
    """Decode .xz in the caller's thread with the standard library, as where liblzma is missing."""
    return mock.patch.object(decompress, "_liblzma", lambda: None)


def many(copies: int) -> bytes:
    return "\n".join([REALISTIC] * copies).encode()


def parse(data: bytes, name: str = "Packages", **kwargs: object) -> list[PackageFile]:
    stream = open_index_stream(io.BytesIO(data), name)
    return list(iter_package_files(stream, name=name, **kwargs))  # type: ignore[arg-type]


def stanza(filename: str = "pool/main/a/a/a_1_all.deb", sha256: str = H1, size: str = "1") -> str:
    return f"Package: a\nFilename: {filename}\nSize: {size}\nSHA256: {sha256}\n"


class ShortReads(io.RawIOBase):
    """A stream that hands out at most `step` bytes per read, as a socket or decoder may."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._step, len(self._data))
        buffer[:n] = self._data[:n]
        self._data = self._data[n:]
        return n

    def read(self, size: int = -1) -> bytes:
        n = self._step if size < 0 else min(size, self._step)
        out = bytes(self._data[:n])
        self._data = self._data[n:]
        return out


# --- right answers --------------------------------------------------------------------------------


def test_realistic_stanzas_in_any_order_and_case() -> None:
    assert parse(REALISTIC.encode()) == EXPECTED


@pytest.mark.parametrize("suffix", list(COMPRESS))
def test_every_compression_gives_the_same_entries(suffix: str) -> None:
    name = "main/binary-amd64/Packages" + suffix
    assert parse(COMPRESS[suffix](REALISTIC.encode()), name) == EXPECTED


def test_concatenated_xz_streams_and_zero_padding_are_one_file() -> None:
    text = REALISTIC.encode()
    half = text.index(b"\n\nPackage: hello") + 2
    data = lzma.compress(text[:half]) + lzma.compress(text[half:]) + b"\0" * 8
    assert parse(data, "Packages.xz") == EXPECTED


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda t: t.replace("\n", "\r\n"), id="crlf"),
        pytest.param(lambda t: t.replace("\n\n", "\n \t\n"), id="blank-line-of-spaces"),
        pytest.param(lambda t: t.replace("\n\n", "\n\n\n\n"), id="several-empty-lines"),
        pytest.param(lambda t: "\n\n" + t, id="leading-empty-lines"),
        pytest.param(lambda t: t.rstrip("\n"), id="no-final-newline"),
        pytest.param(lambda t: t + "\n\n\n", id="trailing-empty-lines"),
        pytest.param(lambda t: t.replace("\n ", "\n\t"), id="tab-continuations"),
        pytest.param(lambda t: t.replace("Filename: ", "Filename:"), id="no-space-after-colon"),
    ],
)
def test_layout_variants_give_the_same_entries(transform: Callable[[str], str]) -> None:
    assert parse(transform(REALISTIC).encode()) == EXPECTED


def test_empty_and_blank_files_have_no_entries() -> None:
    for data in (b"", b"\n", b"\n\n\n", b"  \n\t\n", b"\r\n"):
        assert parse(data) == []


def test_stanza_without_filename_is_skipped_even_with_sha256_and_size() -> None:
    assert parse(f"Package: x\nSHA256: {H1}\nSize: 3\n\n{stanza()}".encode()) == [
        PackageFile("pool/main/a/a/a_1_all.deb", H1, 1)
    ]


def test_duplicate_filename_in_two_stanzas_is_yielded_twice_in_order() -> None:
    text = stanza(sha256=H1) + "\n" + stanza(sha256=H2)
    assert [entry.sha256 for entry in parse(text.encode())] == [H1, H2]


def test_filenames_with_dots_inside_segments_and_utf8_are_accepted() -> None:
    names = ["pool/main/.hidden/x.deb", "pool/main/a/a..b/a_1.deb", "pool/main/é/ü_1_all.deb"]
    text = "\n".join(stanza(filename=n) for n in names)
    assert [entry.filename for entry in parse(text.encode())] == names


def test_other_fields_may_have_any_content() -> None:
    text = "Description: \x00\xff binary \x7f junk\n continued \x01\nX-Empty:\n" + stanza()
    assert len(parse(text.encode("latin-1"))) == 1


# --- malformed input: always IndexFormatError, saying where ---------------------------------------


BAD_STANZAS = {
    "missing-sha256": ("Filename: pool/a.deb\nSize: 1\n", "without SHA256"),
    "missing-size": (f"Filename: pool/a.deb\nSHA256: {H1}\n", "without Size"),
    "short-sha256": (stanza(sha256=H1[:63]), "not 64 hex"),
    "long-sha256": (stanza(sha256=H1 + "0"), "not 64 hex"),
    "non-hex-sha256": (stanza(sha256="g" * 64), "not 64 hex"),
    "empty-sha256": (stanza(sha256=""), "not 64 hex"),
    "negative-size": (stanza(size="-1"), "not a decimal"),
    "plus-size": (stanza(size="+1"), "not a decimal"),
    "underscore-size": (stanza(size="1_000"), "not a decimal"),
    "hex-size": (stanza(size="0x10"), "not a decimal"),
    "empty-size": (stanza(size=""), "not a decimal"),
    "unicode-digit-size": (stanza(size="١٢"), "not a decimal"),
    "huge-size": (stanza(size="9" * 5000), "not a decimal"),
    "absolute-filename": (stanza(filename="/etc/passwd"), "absolute"),
    "dotdot-filename": (stanza(filename="pool/../../etc/passwd"), "segment"),
    "leading-dotdot": (stanza(filename="../x.deb"), "segment"),
    "trailing-dotdot": (stanza(filename="pool/main/.."), "segment"),
    "dot-segment": (stanza(filename="pool/./x.deb"), "segment"),
    "empty-segment": (stanza(filename="pool//x.deb"), "segment"),
    "trailing-slash": (stanza(filename="pool/x/"), "segment"),
    "empty-filename": (stanza(filename=""), "empty"),
    "nul-in-filename": (stanza(filename="pool/a\x00.deb"), "control"),
    "escape-in-filename": (stanza(filename="pool/\x1b[31ma.deb"), "control"),
    "del-in-filename": (stanza(filename="pool/a\x7f.deb"), "control"),
    "c1-in-filename": (stanza(filename="pool/a\x85.deb"), "control"),
    "lone-cr-in-filename": (stanza(filename="pool/a\r.deb"), "control"),
    "filename-continued": (stanza(filename="pool/a\n b.deb"), "Filename continues"),
    "size-continued": (stanza(size="1\n 2"), "Size continues"),
    "filename-twice": (stanza() + "Filename: pool/b.deb\n", "Filename given twice"),
    "sha256-twice-other-case": (stanza() + f"sha256: {H2}\n", "SHA256 given twice"),
    "size-twice-without-filename": ("Size: 1\nsize: 2\n", "Size given twice"),
    "line-without-colon": (stanza() + "garbage\n", "not a field"),
    "field-name-with-space": ("Some Field: x\n" + stanza(), "not a field"),
    "space-before-colon": ("Filename : pool/a.deb\n" + stanza(), "not a field"),
    "comment-line": ("# a comment\n" + stanza(), "not a field"),
    "field-starting-with-dash": ("-Field: x\n" + stanza(), "not a field"),
    "colon-only": (":\n" + stanza(), "not a field"),
    "nul-line": ("\x00\n" + stanza(), "not a field"),
    "continuation-starts-stanza": (" orphan continuation\n" + stanza(), "cannot start"),
}


@pytest.mark.parametrize(("text", "message"), BAD_STANZAS.values(), ids=BAD_STANZAS.keys())
def test_malformed_stanza_raises_index_format_error_with_stanza_and_line(
    text: str, message: str
) -> None:
    # The bad stanza is the third, after two good ones of 5 lines each (4 + separator).
    data = (stanza() + "\n" + stanza(sha256=H2) + "\n" + text + "\n" + stanza()).encode()
    with pytest.raises(IndexFormatError, match=re.escape(message)) as caught:
        parse(data, "main/binary-amd64/Packages")
    found = re.search(
        r"^main/binary-amd64/Packages: stanza (\d+) \(line (\d+)\)", str(caught.value)
    )
    assert found is not None, str(caught.value)
    assert found[1] == "3"
    assert 11 <= int(found[2]) <= 11 + text.count("\n")


def test_the_line_number_is_the_offending_line() -> None:
    data = stanza() + "\n" + "Package: b\nDescription: x\n y\nFilename: pool/b.deb\nSize: z\n"
    with pytest.raises(IndexFormatError, match=r"stanza 2 \(line 10\): Size b'z'"):
        parse(data.encode() + f"SHA256: {H1}\n".encode())


def test_error_location_survives_crlf_and_blank_lines_of_spaces() -> None:
    data = stanza() + " \n\n\t\n" + stanza() + "\n" + "bad line\n"
    with pytest.raises(IndexFormatError, match=r"stanza 3 \(line 13\)"):
        parse(data.replace("\n", "\r\n").encode())


def test_a_line_longer_than_one_mib_is_an_error_not_an_allocation() -> None:
    data = b"Description: " + b"x" * (2 << 20) + b"\n" + stanza().encode()
    with pytest.raises(IndexFormatError, match="stanza 1 \\(line 1\\): stanza longer than"):
        parse(data)
    with pytest.raises(IndexFormatError, match="longer than"):
        parse(lzma.compress(data), "Packages.xz")


def test_a_stanza_longer_than_the_limit_is_an_error_whatever_the_block_size() -> None:
    big = "Package: big\nDescription: x\n" + " y\n" * 400 + stanza()
    data = (stanza() + "\n" + big + "\n" + stanza()).encode()
    assert len(parse(data)) == 3
    for read_size in (64, 1000, 1 << 20):
        with (
            mock.patch.object(packages, "READ_SIZE", read_size),
            pytest.raises(IndexFormatError, match=r"stanza 2 \(line 6\): stanza longer than 1000"),
        ):
            parse(data, max_stanza_bytes=1000)


def test_stanzas_separated_only_by_lines_of_blanks_stream_within_the_limit() -> None:
    data = (" \n".join(stanza() for _ in range(100))).encode()
    with mock.patch.object(packages, "READ_SIZE", 256):
        assert len(parse(data, max_stanza_bytes=1000)) == 100


def corrupt_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


@pytest.mark.parametrize("suffix", [".xz", ".lzma", ".gz", ".bz2"])
@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: data[:-1], id="last-byte-missing"),
        pytest.param(corrupt_middle, id="flipped-byte"),
        pytest.param(lambda data: b"not compressed at all\n", id="not-compressed"),
        pytest.param(lambda data: b"", id="empty"),
    ],
)
def test_damaged_compressed_file_raises_index_format_error(
    suffix: str, damage: Callable[[bytes], bytes]
) -> None:
    body = many(20)
    data = damage(COMPRESS[suffix](body))
    try:
        result = parse(data, "Packages" + suffix)
    except IndexFormatError as exc:
        assert f"Packages{suffix}: " in str(exc)
    else:  # an empty .gz/.bz2 is a valid empty file; nothing else may pass
        assert data == b"" and suffix in (".gz", ".bz2") and result == []


def test_trailing_garbage_after_an_xz_stream_is_an_error() -> None:
    with pytest.raises(IndexFormatError, match="cannot decompress"):
        parse(lzma.compress(REALISTIC.encode()) + b"garbage!", "Packages.xz")


def test_unknown_compression_suffix_is_an_index_format_error() -> None:
    with pytest.raises(IndexFormatError, match=r"unsupported compression suffix \.zst"):
        open_index_stream(io.BytesIO(b""), "main/binary-amd64/Packages.zst")


def test_decompression_error_says_how_far_it_got() -> None:
    data = lzma.compress(many(2000))
    with pytest.raises(IndexFormatError, match=r"Packages\.xz: cannot decompress after \d+ bytes"):
        parse(data[: len(data) // 2], "Packages.xz")


class FailingDisk(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._data = data

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._data:
            n = 100 if size < 0 else min(size, 100)
            out, self._data = self._data[:n], self._data[n:]
            return out
        raise OSError(errno.EIO, "Input/output error")


@pytest.mark.parametrize("suffix", list(COMPRESS))
def test_an_error_of_the_callers_stream_passes_through_unchanged(suffix: str) -> None:
    data = COMPRESS[suffix](many(50))
    stream = open_index_stream(FailingDisk(data[: len(data) // 2]), "Packages" + suffix)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="Input/output error") as caught:
        list(iter_package_files(stream))
    assert not isinstance(caught.value, IndexFormatError)


# --- the .xz decoding thread ----------------------------------------------------------------------


@functools.cache
def big_xz(count: int = 3000) -> tuple[bytes, list[PackageFile]]:
    """An .xz of a few MB of text: several of the decoding thread's blocks."""
    text, entries = generated_packages(count, random.Random(SEED))
    return lzma.compress(text.encode(), preset=1), entries


def entries_and_error(
    data: bytes | io.RawIOBase, name: str = "Packages.xz"
) -> tuple[list[PackageFile], BaseException | None]:
    raw = io.BytesIO(data) if isinstance(data, bytes) else data
    got: list[PackageFile] = []
    try:
        for entry in iter_package_files(open_index_stream(raw, name)):  # type: ignore[arg-type]
            got.append(entry)
    except Exception as exc:
        return got, exc
    return got, None


def test_an_xz_index_is_decoded_in_a_thread_that_ends_with_the_generator() -> None:
    data, entries = big_xz()
    generator = iter_package_files(open_index_stream(io.BytesIO(data), "Packages.xz"))
    assert decoding_threads() == []  # nothing starts before the first entry is asked for
    assert next(generator) == entries[0]
    assert len(decoding_threads()) == 1
    assert [entries[0], *generator] == entries
    assert decoding_threads() == []


def test_closing_an_abandoned_generator_stops_and_joins_its_thread() -> None:
    data, entries = big_xz()
    generator = iter_package_files(open_index_stream(io.BytesIO(data), "Packages.xz"))
    assert next(generator) == entries[0]  # the thread now decodes ahead, until its outputs are full
    [thread] = decoding_threads()
    generator.close()
    assert not thread.is_alive()


def test_dropping_an_abandoned_generator_stops_and_joins_its_thread() -> None:
    data, entries = big_xz()
    generator = iter_package_files(open_index_stream(io.BytesIO(data), "Packages.xz"))
    assert next(generator) == entries[0]
    [thread] = decoding_threads()
    del generator  # the last reference: CPython closes the generator here
    assert not thread.is_alive()


def test_a_parse_error_stops_the_thread_before_it_is_raised() -> None:
    text, _ = generated_packages(3000, random.Random(SEED))
    bad = text.replace("\nSection: misc\n", "\nnot a field\n", 1)
    with pytest.raises(IndexFormatError, match=r"stanza 1 \(line \d+\): not a field"):
        parse(lzma.compress(bad.encode(), preset=1), "Packages.xz")
    # the autouse fixture checks that no thread is left


def test_a_corrupt_xz_stream_in_the_middle_raises_after_the_entries_before_it() -> None:
    text, entries = generated_packages(3000, random.Random(SEED))
    half = text.index("\n\nPackage: pkg1500-") + 2
    second = bytearray(lzma.compress(text[half:].encode(), preset=1))
    second[8] ^= 0x55  # its stream header's CRC32 no longer matches
    first = text[:half].encode()
    got, error = entries_and_error(lzma.compress(first, preset=1) + bytes(second))
    assert got == entries[:1500]
    assert isinstance(error, IndexFormatError)
    assert str(error) == f"Packages.xz: cannot decompress after {len(first)} bytes: " + (
        "compressed data is corrupt"
    )


def test_a_flipped_byte_in_the_middle_of_an_xz_raises_index_format_error() -> None:
    data, entries = big_xz()
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0x55
    got, error = entries_and_error(bytes(damaged))
    assert isinstance(error, IndexFormatError), error
    assert 0 < len(got) < len(entries)


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9])
def test_truncated_xz_fails_at_the_same_place_with_and_without_the_thread(cut: float) -> None:
    data, entries = big_xz()
    damaged = data[: int(len(data) * cut)]
    threaded = entries_and_error(damaged)
    with without_liblzma():
        sequential = entries_and_error(damaged)
    assert threaded[0] == sequential[0] == entries[: len(threaded[0])]
    assert len(threaded[0]) > 0
    assert isinstance(threaded[1], IndexFormatError)
    assert str(threaded[1]) == str(sequential[1])
    assert re.match(
        r"Packages\.xz: cannot decompress after [1-9]\d* bytes: .*ends before", str(threaded[1])
    )


class BrokenAfter(io.RawIOBase):
    """A stream that delivers `data` in short reads, then raises `error` (the same object)."""

    def __init__(self, data: bytes, error: Exception) -> None:
        self._data = data
        self.error = error

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if not self._data:
            raise self.error
        n = 4096 if size < 0 else min(size, 4096)
        out, self._data = self._data[:n], self._data[n:]
        return out


@pytest.mark.parametrize("cut", [0.0, 0.3, 0.999, 1.0])
def test_the_callers_stream_error_is_raised_unchanged_after_the_text_before_it(cut: float) -> None:
    data, entries = big_xz()
    data = data[: int(len(data) * cut)]
    disk = BrokenAfter(data, OSError(errno.EIO, "Input/output error"))
    got, error = entries_and_error(disk)
    assert error is disk.error
    with without_liblzma():
        expected, sequential_error = entries_and_error(BrokenAfter(data, OSError(errno.EIO, "x")))
    assert isinstance(sequential_error, OSError) and not isinstance(
        sequential_error, IndexFormatError
    )
    assert got == expected == entries[: len(got)]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda x: x + x, id="two-streams"),
        pytest.param(lambda x: x + b"\0" * 4 + x + b"\0" * 8, id="padding-of-fours"),
        pytest.param(lambda x: x + b"\0" * (1 << 20), id="a-mib-of-padding"),
        pytest.param(lambda x: x + b"\0" * 3, id="padding-of-three"),
        pytest.param(lambda x: x + b"\0" * 2 + x, id="padding-of-two-between"),
        pytest.param(lambda x: b"\0" * 4 + x, id="leading-padding"),
        pytest.param(lambda x: x + b"garbage!", id="trailing-garbage"),
        pytest.param(lambda x: x[:-1], id="last-byte-missing"),
        pytest.param(lambda x: b"", id="empty"),
        pytest.param(lambda x: b"\0" * 8, id="only-padding"),
        pytest.param(lambda x: lzma.compress(b"", format=lzma.FORMAT_ALONE), id="lzma-alone"),
        pytest.param(
            lambda x: lzma.compress(stanza().encode(), check=lzma.CHECK_SHA256), id="sha256-check"
        ),
    ],
)
def test_liblzma_and_the_standard_library_accept_the_same_xz_files(
    make: Callable[[bytes], bytes],
) -> None:
    data = make(lzma.compress(stanza().encode()))
    threaded = entries_and_error(data)
    with without_liblzma():
        sequential = entries_and_error(data)
    assert threaded[0] == sequential[0]
    assert type(threaded[1]) is type(sequential[1])
    if threaded[1] is not None:
        assert isinstance(threaded[1], IndexFormatError)
        prefix = str(threaded[1]).partition(" bytes: ")[0]
        assert prefix == str(sequential[1]).partition(" bytes: ")[0]  # "... after N"


def with_dictionary_of_256_mib(xz: bytes) -> bytes:
    """`xz` (one stream, one block) with the block header asking for a 256 MiB LZMA2 dictionary."""
    header_size = (xz[12] + 1) * 4
    header = bytearray(xz[12 : 12 + header_size])
    assert header[1:4] == b"\x00\x21\x01"  # one filter, no sizes; LZMA2 with 1 byte of properties
    header[4] = 32  # dictionary size code: 2 ** (32 // 2 + 12) bytes
    header[-4:] = zlib.crc32(header[:-4]).to_bytes(4, "little")
    return xz[:12] + bytes(header) + xz[12 + header_size :]


def test_decoder_memory_is_capped_in_the_thread_too() -> None:
    data = with_dictionary_of_256_mib(lzma.compress(stanza().encode()))
    with pytest.raises(IndexFormatError, match="cannot decompress after 0 bytes: needs more"):
        parse(data, "Packages.xz")
    with without_liblzma(), pytest.raises(IndexFormatError, match="cannot decompress after 0"):
        parse(data, "Packages.xz")


def _decoder_bug(thread: object) -> None:
    raise ZeroDivisionError("a bug in the decoding thread")


@pytest.mark.parametrize(
    ("decode", "raised", "message"),
    [
        pytest.param(_decoder_bug, ZeroDivisionError, "a bug", id="raises"),
        pytest.param(lambda thread: None, RuntimeError, "without a result", id="returns-nothing"),
    ],
)
def test_a_failing_decoding_thread_raises_in_the_consumer_instead_of_hanging_it(
    decode: Callable[[object], None], raised: type[Exception], message: str
) -> None:
    with (
        mock.patch.object(decompress._XzDecodingThread, "_decode", decode),
        pytest.raises(raised, match=message),
    ):
        parse(lzma.compress(REALISTIC.encode()), "Packages.xz")


def test_a_stream_already_read_from_is_decoded_in_the_callers_thread() -> None:
    data, entries = big_xz(200)
    stream = open_index_stream(io.BytesIO(data), "Packages.xz")
    assert stream.peek(1)
    seen_threads = [decoding_threads() for _ in iter_package_files(stream)]
    assert seen_threads == [[]] * len(entries)


def test_a_stream_handed_to_the_thread_cannot_be_read_directly_afterwards() -> None:
    stream = open_index_stream(io.BytesIO(lzma.compress(REALISTIC.encode())), "Packages.xz")
    assert list(iter_package_files(stream)) == EXPECTED
    with pytest.raises(ValueError, match="handed to a decoding thread"):
        stream.read()


# --- streaming: block boundaries ------------------------------------------------------------------


def generated_packages(count: int, rng: random.Random) -> tuple[str, list[PackageFile]]:
    """A Packages file shaped like Debian's: fields in the usual order, continuation lines."""
    stanzas, entries = [], []
    for i in range(count):
        name = f"pkg{i}-" + "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789+.-", k=6))
        entry = PackageFile(
            f"pool/main/{name[0]}/{name}/{name}_{rng.randint(0, 9)}.{i}-1_amd64.deb",
            hashlib.sha256(name.encode()).hexdigest(),
            rng.randint(800, 50_000_000),
        )
        long_description = "".join(
            f" {' '.join(rng.choices(['lorem', 'ipsum', 'dolor', 'sit', 'amet'], k=12))}\n"
            if rng.random() > 0.15
            else " .\n"
            for _ in range(rng.randint(0, 6))
        )
        depends = ", ".join(
            f"lib{rng.randint(0, 999)} (>= {rng.randint(1, 9)}.0)" for _ in range(5)
        )
        stanzas.append(
            f"Package: {name}\nVersion: 1.{i}-1\nInstalled-Size: {rng.randint(1, 99999)}\n"
            f"Maintainer: Someone <someone@example.org>\nArchitecture: amd64\n"
            f"Depends: {depends}\nDescription: the {name} package\n{long_description}"
            f"Tag: role::program,\n use::whatever\nSection: misc\nPriority: optional\n"
            f"Filename: {entry.filename}\nSize: {entry.size}\n"
            f"MD5sum: {hashlib.md5(name.encode()).hexdigest()}\nSHA256: {entry.sha256}\n"
        )
        entries.append(entry)
    return "\n".join(stanzas), entries


@pytest.mark.parametrize("read_size", [1, 2, 3, 7, 64, 4093])
def test_block_boundaries_anywhere_give_the_same_entries(read_size: int) -> None:
    text, entries = generated_packages(20, random.Random(SEED))
    variants = [text, text.replace("\n", "\r\n"), text.replace("\n\n", "\n  \n\n")]
    with mock.patch.object(packages, "READ_SIZE", read_size):
        for variant in variants:
            stream = ShortReads(variant.encode(), step=997)
            got = list(iter_package_files(stream))  # type: ignore[arg-type]
            assert got == entries


# --- agreement with python-debian -----------------------------------------------------------------


def deb822_entries(text: bytes) -> list[PackageFile]:
    return [
        PackageFile(p["Filename"], p["SHA256"].lower(), int(p["Size"]))
        for p in deb822.Packages.iter_paragraphs(io.BytesIO(text), use_apt_pkg=False)
        if "Filename" in p
    ]


def test_agrees_with_deb822_on_a_generated_file() -> None:
    rng = random.Random(SEED)
    text, entries = generated_packages(3000, rng)
    # Vary what deb822 also accepts: field case, order, spacing, a few stanzas without Filename.
    stanzas = []
    for block in text.split("\n\n"):
        lines = block.split("\n")
        head, fields = lines[:1], lines[1:]
        if rng.random() < 0.3:
            fields = [
                line.replace("Filename:", "filename:").replace("SHA256:", "Sha256:")
                for line in fields
            ]
        if rng.random() < 0.3:
            fields = [
                line.replace(": ", ":  ", 1) if not line.startswith(" ") else line
                for line in fields
            ]
        stanzas.append("\n".join(head + fields))
        if rng.random() < 0.02:
            stanzas.append("Package: source-only\nChecksums-Sha256:\n " + H1 + " 12 x.tar.xz")
    data = "\n\n".join(stanzas).encode() + b"\n"
    ours = parse(lzma.compress(data), "Packages.xz")
    assert ours == deb822_entries(data)
    assert ours == entries


# --- fuzz: any bytes parse or raise IndexFormatError ----------------------------------------------

TOKENS = [
    b"Filename:", b"filename: ", b"SHA256:", b"sha256: ", b"Size:", b"SIZE: ", b"Package: x",
    b"Description: y", b" ", b"\t", b" .", b"\n", b"\n\n", b"\r\n", b"\r", b":", b"#", b"-", b"/",
    b"..", b".", b"pool/main/a/a.deb", H1.encode(), H1[:10].encode(), b"0", b"123", b"-5",
    b"\x00", b"\x7f", b"\xc2\x85", b"\xff", b"\xe2\x82",
]  # fmt: skip


@st.composite
def index_files(draw: st.DrawFn) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from(list(COMPRESS)))
    text = draw(
        st.one_of(
            st.binary(max_size=200),
            st.lists(st.sampled_from(TOKENS), max_size=60).map(b"".join),
            st.lists(st.sampled_from([stanza().encode(), b"\n", b"\r\n", b" \n"]), max_size=8).map(
                b"".join
            ),
        )
    )
    if suffix and draw(st.integers(0, 4)):  # mostly a real compressed file, maybe damaged
        data = COMPRESS[suffix](text)
        if data and draw(st.booleans()):
            position = draw(st.integers(0, len(data) - 1))
            damage = draw(st.sampled_from(["flip", "cut", "insert"]))
            if damage == "flip":
                data = (
                    data[:position]
                    + bytes([data[position] ^ draw(st.integers(1, 255))])
                    + data[position + 1 :]
                )
            elif damage == "cut":
                data = data[:position]
            else:
                data = data[:position] + draw(st.binary(min_size=1, max_size=8)) + data[position:]
    else:
        data = text
    return "Packages" + suffix, data


@settings(max_examples=600, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(index_files(), st.sampled_from([1, 3, 16, 1 << 20]))
def test_fuzz_any_bytes_parse_or_raise_index_format_error(
    named: tuple[str, bytes], read_size: int
) -> None:
    name, data = named
    with mock.patch.object(packages, "READ_SIZE", read_size):
        try:
            entries = parse(data, name)
        except IndexFormatError:
            return
    for entry in entries:
        assert re.fullmatch("[0-9a-f]{64}", entry.sha256)
        assert entry.size >= 0
        assert entry.filename and not entry.filename.startswith("/")
        assert not {"", ".", ".."} & set(entry.filename.split("/"))


@settings(max_examples=120, derandomize=True, database=None, deadline=None)
@given(st.data())
def test_fuzz_valid_files_in_any_layout_give_their_entries(data: st.DataObject) -> None:
    entries = data.draw(
        st.lists(
            st.builds(
                PackageFile,
                st.from_regex(
                    r"pool/([a-z0-9][a-z0-9+._-]{0,20}/)*[a-z0-9_+-]{1,20}\.deb", fullmatch=True
                ),
                st.binary(min_size=32, max_size=32).map(bytes.hex),
                st.integers(0, 2**63),
            ),
            max_size=6,
        )
    )

    def spelled(field: str) -> str:
        return "".join(c.upper() if data.draw(st.booleans()) else c.lower() for c in field)

    stanzas = []
    for entry in entries:
        space = data.draw(st.sampled_from(["", " ", "  ", "\t"]))
        sha256 = entry.sha256.upper() if data.draw(st.booleans()) else entry.sha256
        lines = [
            f"{spelled('Filename')}:{space}{entry.filename}",
            f"{spelled('SHA256')}: {sha256}",
            f"{spelled('Size')}: {entry.size}",
            "Description: x\n more\n .\n Filename: not a field",
            "Package: p",
        ]
        stanzas.append("\n".join(data.draw(st.permutations(lines))))
    separator = data.draw(st.sampled_from(["\n\n", "\n \n", "\n\n\n", "\n\t\n\n"]))
    text = separator.join(stanzas) + data.draw(st.sampled_from(["", "\n", "\n\n"]))
    if data.draw(st.booleans()):
        text = text.replace("\n", "\r\n")
    suffix = data.draw(st.sampled_from(list(COMPRESS)))
    read_size = data.draw(st.sampled_from([3, 17, 100, 1 << 20]))
    with mock.patch.object(packages, "READ_SIZE", read_size):
        assert parse(COMPRESS[suffix](text.encode()), "Packages" + suffix) == entries
