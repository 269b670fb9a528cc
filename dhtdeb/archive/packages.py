"""Packages indices: from a (compressed) Packages file to `(Filename, SHA256, Size)` per package.

Owns the hot path of `apt-get update` through dhtdeb: a streaming parser that pulls exactly three
fields out of each stanza, fed by the decompression of `dhtdeb.archive.decompress` (chosen by the
index's name; for .xz in a thread of its own, so that decoding and parsing overlap; its
`open_index_stream` is part of this module's interface). Trusts nothing in the bytes:
the caller checked the compressed file against the GPG-verified Release before believing it, but
the parser still treats it as untrusted input. Malformed input either yields `PackageFile` values or
raises `IndexFormatError` (decompression errors included); only an exception raised by the caller's
own `raw` stream (a disk or network error) passes through unchanged.

Why not deb822: it builds a dict of every field of every stanza (3.3 s for bookworm main). Here the
decompressed text is read in 1 MiB blocks cut at stanza boundaries; each block is checked line by
line with one regex search and scanned with one `findall` that stops only at stanza ends and at the
three wanted fields, so Python runs a few steps per stanza instead of many per line, and the values
of a whole block are checked and converted at once.

Format rules (deb822, Debian Policy 5.1) and the choices made where the format leaves room:

- Field names are case-insensitive (`filename:` is `Filename:`). A line is a field (`Name:value`,
  the name printable US-ASCII without `:`, not starting with `#` or `-`), a continuation (starts
  with a space or tab) or empty. Anything else, a comment line included, is an error: Packages
  files have none. Continuation lines of other fields (Description, Tag, ...) are skipped unread;
  Filename, SHA256 and Size must be one line each. Values are stripped of spaces and tabs.
- Stanzas are separated by empty lines; a line of only spaces and tabs counts as empty (Policy),
  and a stanza may not start with a continuation line. CRLF line ends are read as LF.
- A stanza without Filename is skipped (Sources indices, stray paragraphs). A stanza with Filename
  must have a SHA256 of 64 hex digits (returned lowercase) and a decimal Size, or the file is
  rejected: a package apt may download but dhtdeb cannot verify is an index error, not a silent
  skip. One of the three fields twice in a stanza is an error; other fields are not inspected.
- Filename must be a relative, normalised path: not empty, no leading `/`, no empty, `.` or `..`
  segment, valid UTF-8 without control characters (C0, DEL, C1). It is where apt will ask for the
  file, so anything that could alias another path is refused.
- The same Filename in two stanzas is yielded twice, in file order: consumers keep the last (the
  index does). Refusing it here would cost memory proportional to the file, and both stanzas are
  vouched for by the same signature.
- Memory is bounded by two `READ_SIZE` blocks plus `max_stanza_bytes` (for .xz, plus three
  1 MiB blocks decoded ahead, 3 MiB of compressed input and the decoder's state, which
  `decompress.LZMA_MEMLIMIT` caps; 9 MiB for bookworm main): a stanza (so any line) longer than
  `max_stanza_bytes` (1 MiB; the largest in bookworm main is 76 kB) is an error, not an allocation.
- `iter_package_files` returns a generator; a caller may stop half way. Closing it (or dropping
  it) stops and joins the decoding thread; so does any exception it raises.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from dhtdeb.archive.decompress import decompressed_blocks, open_index_stream
from dhtdeb.errors import IndexFormatError

__all__ = [
    "MAX_STANZA_BYTES",
    "READ_SIZE",
    "PackageFile",
    "iter_package_files",
    "open_index_stream",
]

READ_SIZE = 1 << 20
"""Bytes of decompressed text the parser asks for at a time."""

MAX_STANZA_BYTES = 1 << 20
"""Default limit on one stanza (and so on one line) of a Packages file."""


@dataclass(frozen=True, slots=True)
class PackageFile:
    """One downloadable file named by a Packages index, as the signed chain describes it."""

    filename: str
    """The Filename field: a path relative to the archive root, e.g. `pool/main/h/hello/….deb`."""
    sha256: str
    """Lowercase hex, 64 characters."""
    size: int


# --- parsing --------------------------------------------------------------------------------------

# The parsed text is "\n\n" + the file, so that every line, the first included, follows a "\n" and
# every stanza ends at a "\n" that follows a non-empty line and precedes an empty one.

# One match per stanza end and per wanted field. findall gives (name, value, continued): all empty
# at a stanza end, `continued` non-empty when a continuation line follows the field (not allowed).
_STANZA_END_OR_FIELD = re.compile(
    rb"\n(?:([Ff][Ii][Ll][Ee][Nn][Aa][Mm][Ee]|[Ss](?:[Hh][Aa]256|[Ii][Zz][Ee])):[ \t]*([^\n]*)"
    rb"(\n[ \t])?|(?=\n)(?<=[^\n]\n))"
)
_FIELD_NAMES = ("Filename", "SHA256", "Size")
_FIELD_INDEX = {  # every spelling the regex accepts → index in _FIELD_NAMES
    bytes(spelling): i
    for i, field in enumerate(_FIELD_NAMES)
    for spelling in itertools.product(
        *({c, c ^ 0x20} if 0x41 <= c <= 0x5A else {c} for c in field.upper().encode())
    )
}
_FILENAME, _SHA256, _SIZE = range(3)

# The "\n" before a line that is none of: continuation, field, empty (or end of text); or before an
# empty line followed by a continuation line (a stanza cannot start with one).
_BAD_LINE = re.compile(
    rb'\n(?![A-Za-z][!-9;-~]*:|[ \t]+[^ \t\n]|\n(?![ \t])|\Z|[!"$-,.-9;-~][!-9;-~]*:)'
)
_BLANK_LINE = re.compile(rb"\n[ \t]+(?=\n)")
_EMPTY_LINES = re.compile(rb"\n\n+")  # a stanza end, except at the start of a block
_HEX64 = re.compile(rb"[0-9A-Fa-f]{64}")
# The common case of a safe Filename; a segment starting with "." is checked exactly.
_PLAIN_PATH = re.compile(
    rb"[^\x00-\x1f\x7f/.][^\x00-\x1f\x7f/]*(?:/[^\x00-\x1f\x7f/.][^\x00-\x1f\x7f/]*)*"
)
_PLAIN_PATHS = re.compile(rb"(?:%s\n)*%s" % (_PLAIN_PATH.pattern, _PLAIN_PATH.pattern))
_HEX64_LINES = re.compile(rb"(?:[0-9A-Fa-f]{64}\n)*[0-9A-Fa-f]{64}")
_DECIMAL_LINES = re.compile(rb"(?:[0-9]{1,19}\n)*[0-9]{1,19}")
_CONTROL_BYTE = re.compile(rb"[\x00-\x1f\x7f]")
_C1_CONTROL = re.compile("[\x80-\x9f]")


class _FieldError(Exception):
    """A field value is unusable; the parser adds where it was."""


def iter_package_files(
    stream: BinaryIO,
    *,
    name: str = "Packages",
    max_stanza_bytes: int = MAX_STANZA_BYTES,
) -> Generator[PackageFile, None, None]:
    """Yield one `PackageFile` per stanza of a decompressed Packages file that has a Filename.

    Streaming: reads `READ_SIZE` bytes at a time and holds at most one unfinished stanza besides.
    Raises `IndexFormatError` naming `name`, the stanza number and the line on malformed input;
    an exception of `stream` itself passes through.
    """
    return _parse(decompressed_blocks(stream, READ_SIZE), name, max_stanza_bytes)


def _parse(
    chunks: Generator[bytes, None, None], name: str, max_stanza_bytes: int
) -> Generator[PackageFile, None, None]:
    try:
        yield from _parse_blocks(chunks, name, max_stanza_bytes)
    finally:
        chunks.close()  # stops a decoding thread now, not when the generator is collected


def _parse_blocks(
    chunks: Iterator[bytes], name: str, max_stanza_bytes: int
) -> Generator[PackageFile, None, None]:
    buf = b"\n\n"
    lines = -1  # newlines before buf[0], minus the 2 added: line numbers of the file start at 1
    stanzas = 0  # stanzas that ended before buf[0]
    carry_cr = False
    eof = False
    while not eof:
        chunk = next(chunks, b"")
        if not chunk:
            eof = True
        if carry_cr or b"\r" in chunk:
            if carry_cr:
                chunk = b"\r" + chunk
            carry_cr = not eof and chunk.endswith(b"\r")
            if carry_cr:
                chunk = chunk[:-1]
            chunk = chunk.replace(b"\r\n", b"\n")
        buf += chunk
        if eof:
            buf = buf.rstrip(b"\n") + b"\n\n"
            cut = len(buf) - 2
        else:
            cut = buf.rfind(b"\n\n")
            if cut <= 0 and len(buf) > max_stanza_bytes:
                buf = _BLANK_LINE.sub(b"\n", buf)  # maybe stanzas end with lines of blanks only
                cut = buf.rfind(b"\n\n")
            if cut <= 0:
                if len(buf) - 2 > max_stanza_bytes:
                    raise _error(name, stanzas + 1, lines + 2, _too_long(max_stanza_bytes))
                continue
        block = buf[: cut + 2]
        buf = buf[cut:]
        stanzas = yield from _parse_block(block, name, stanzas, lines, max_stanza_bytes)
        lines += block.count(b"\n") - 2
        if len(buf) - 2 > max_stanza_bytes:
            raise _error(name, stanzas + 1, lines + 2, _too_long(max_stanza_bytes))


def _too_long(limit: int) -> str:
    return f"stanza longer than {limit} bytes"


def _error(name: str, stanza: int, line: int, what: str) -> IndexFormatError:
    return IndexFormatError(f"{name}: stanza {stanza} (line {line}): {what}")


def _parse_block(
    block: bytes, name: str, stanzas: int, lines: int, max_stanza_bytes: int
) -> Generator[PackageFile, None, int]:
    """Yield the entries of `block` ("\\n\\n", whole stanzas, "\\n"); return the new stanza count.

    `stanzas` ended and `lines` newlines (minus 2) came before the block. The loop is the hot path;
    when it meets anything wrong, `_locate_error` scans the block again, slowly, to say where.
    """
    if _BAD_LINE.search(block) is not None:
        block = _BLANK_LINE.sub(b"\n", block)  # lines of blanks separate stanzas too (Policy 5.1)
        if _BAD_LINE.search(block) is not None:
            raise _locate_error(block, name, stanzas, lines, max_stanza_bytes)
    if len(block) > max_stanza_bytes:
        start = 1
        for end in _EMPTY_LINES.finditer(block, 2):
            if end.start() - start > max_stanza_bytes:
                raise _locate_error(block, name, stanzas, lines, max_stanza_bytes)
            start = end.end() - 1

    ended = 0
    filenames: list[bytes] = []
    hashes: list[bytes] = []
    sizes: list[bytes] = []
    filename = sha256 = size = None
    for field, value, continued in _STANZA_END_OR_FIELD.findall(block):
        if not field:
            ended += 1
            if filename is not None:
                if sha256 is None or size is None:
                    raise _locate_error(block, name, stanzas, lines, max_stanza_bytes)
                filenames.append(filename)
                hashes.append(sha256)
                sizes.append(size)
                filename = None
            sha256 = size = None
            continue
        index = _FIELD_INDEX[field]
        if continued:
            raise _locate_error(block, name, stanzas, lines, max_stanza_bytes)
        if index == _FILENAME:
            if filename is not None:
                raise _locate_error(block, name, stanzas, lines, max_stanza_bytes)
            filename = value
        elif index == _SHA256:
            if sha256 is not None:
                raise _locate_error(block, name, stanzas, lines, max_stanza_bytes)
            sha256 = value
        else:
            if size is not None:
                raise _locate_error(block, name, stanzas, lines, max_stanza_bytes)
            size = value
    if filenames:
        # The values of the whole block are checked and converted at once, one line each.
        try:
            entries = map(PackageFile, _filenames(filenames), _sha256s(hashes), _sizes(sizes))
        except _FieldError:
            raise _locate_error(block, name, stanzas, lines, max_stanza_bytes) from None
        yield from entries
    return stanzas + ended


def _joined(values: list[bytes]) -> bytes:
    """`values`, stripped of trailing blanks (the regex skipped the leading ones), one per line."""
    text = b"\n".join(values)
    if text.endswith((b" ", b"\t")) or b" \n" in text or b"\t\n" in text:
        text = b"\n".join(value.rstrip(b" \t") for value in values)
    return text


def _filenames(values: list[bytes]) -> list[str]:
    text = _joined(values)
    if _PLAIN_PATHS.fullmatch(text) is None:
        for value in text.split(b"\n"):
            _filename(value)
    try:
        decoded = text.decode()
    except UnicodeDecodeError:
        raise _FieldError from None
    if not decoded.isascii() and _C1_CONTROL.search(decoded) is not None:
        raise _FieldError
    return decoded.split("\n")


def _sha256s(values: list[bytes]) -> list[str]:
    text = _joined(values)
    if _HEX64_LINES.fullmatch(text) is None:
        raise _FieldError
    return text.decode("ascii").lower().split("\n")


def _sizes(values: list[bytes]) -> list[int]:
    text = _joined(values)
    if _DECIMAL_LINES.fullmatch(text) is None:
        raise _FieldError
    return list(map(int, text.split(b"\n")))


def _locate_error(
    block: bytes, name: str, stanzas: int, lines: int, max_stanza_bytes: int
) -> IndexFormatError:
    """The first thing wrong in `block`, with its stanza and line (see `_parse_block`)."""

    def error(pos: int, what: str) -> IndexFormatError:
        """The error for the line that follows the "\\n" at block[pos]."""
        stanza = stanzas + 1 + sum(1 for _ in _EMPTY_LINES.finditer(block, 1, pos + 1))
        return _error(name, stanza, lines + block.count(b"\n", 0, pos + 1), what)

    bad = _BAD_LINE.search(block)
    if bad is not None:
        pos = bad.start()
        if block.startswith(b"\n\n", pos):
            return error(pos + 1, "a stanza cannot start with a continuation line")
        return error(pos, "not a field, a continuation line or an empty line")
    start = 1
    for end in _EMPTY_LINES.finditer(block, 2):
        if end.start() - start > max_stanza_bytes:
            return error(start, _too_long(max_stanza_bytes))
        start = end.end() - 1

    found: dict[int, re.Match[bytes]] = {}
    for m in _STANZA_END_OR_FIELD.finditer(block):
        if m[1] is None:
            if _FILENAME in found:
                at = found[_FILENAME]
                for index in (_SHA256, _SIZE):
                    if index not in found:
                        return error(at.start(), f"Filename without {_FIELD_NAMES[index]}")
                for index, check in enumerate((_filename, _sha256, _size)):
                    try:
                        check(found[index][2])
                    except _FieldError as exc:
                        return error(found[index].start(), str(exc))
            found.clear()
            continue
        index = _FIELD_INDEX[m[1]]
        if m[3] is not None:
            return error(m.start(), f"{_FIELD_NAMES[index]} continues on a second line")
        if index in found:
            return error(m.start(), f"{_FIELD_NAMES[index]} given twice")
        found[index] = m
    return error(0, "malformed")  # not reached: _parse_block only calls this on an error


def _filename(value: bytes) -> str:
    value = value.strip(b" \t")
    if _PLAIN_PATH.fullmatch(value) is None:
        _check_filename(value)
    try:
        text = value.decode()
    except UnicodeDecodeError:
        raise _FieldError(f"Filename {value!r} is not UTF-8") from None
    if not text.isascii() and _C1_CONTROL.search(text) is not None:
        raise _FieldError(f"Filename {text!r} contains a control character")
    return text


def _check_filename(value: bytes) -> None:
    """The slow, exact check of a Filename the fast test found suspicious."""
    if not value:
        raise _FieldError("Filename is empty")
    if _CONTROL_BYTE.search(value) is not None:
        raise _FieldError(f"Filename {value!r} contains a control character")
    if value.startswith(b"/"):
        raise _FieldError(f"Filename {value!r} is absolute")
    if any(segment in (b"", b".", b"..") for segment in value.split(b"/")):
        raise _FieldError(f"Filename {value!r} has an empty, . or .. segment")


def _sha256(value: bytes) -> str:
    value = value.strip(b" \t")
    if len(value) != 64 or _HEX64.fullmatch(value) is None:
        raise _FieldError(f"SHA256 {value[:80]!r} is not 64 hex digits")
    return value.decode("ascii").lower()


def _size(value: bytes) -> int:
    value = value.strip(b" \t")
    if not value.isdigit() or len(value) > 19:
        raise _FieldError(f"Size {value[:80]!r} is not a decimal number of bytes")
    return int(value)
