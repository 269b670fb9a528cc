"""HTTP byte ranges as apt uses them (`Range: bytes=N-` with `If-Range` when resuming).

Owns: parsing one Range header against a known size. Multiple ranges are answered with the whole
file, which HTTP allows; an unsatisfiable range yields 416.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # exclusive


class Unsatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """None means: send the whole file with 200."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first:
            suffix = int(last)
            if suffix <= 0:
                raise Unsatisfiable
            return ByteRange(max(0, size - suffix), size)
        start = int(first)
        end = int(last) + 1 if last else max(size, start + 1)
    except ValueError:
        return None
    if 0 <= start < end and start >= size:
        raise Unsatisfiable
    if start < 0 or end <= start:
        return None
    return ByteRange(start, min(end, size))
