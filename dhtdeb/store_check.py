"""The offline check of the content store (`dhtdeb cache verify`): every stored file hashed against
its name, nothing changed. Safe beside a running daemon (a file it evicts meanwhile is skipped)
and on a stopped one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dhtdeb.store import stored_name


@dataclass(frozen=True, slots=True)
class BadFile:
    path: Path
    reason: str


@dataclass(frozen=True, slots=True)
class StoreReport:
    files: int
    bytes: int
    bad: tuple[BadFile, ...]
    partial: int  # files left in incoming/ (never served; cleared when the daemon starts)


def stored_paths(root: Path) -> Iterator[Path]:
    """Every file the store would serve: `<root>/<aa>/<sha256>`."""
    for path in sorted(root.glob("??/*")):
        if stored_name(path):
            yield path


def verify_store(root: Path, *, progress: Callable[[int, int], None] | None = None) -> StoreReport:
    """Hash every stored file against its name. Reads only: safe beside a running daemon (a file
    it evicts meanwhile is skipped) and on a stopped one. `progress(done, total)` is called
    after each file."""
    files = 0
    total = 0
    bad: list[BadFile] = []
    paths = list(stored_paths(root))
    for done, path in enumerate(paths, 1):
        if progress is not None:
            progress(done, len(paths))
        try:
            with open(path, "rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
                size = os.fstat(handle.fileno()).st_size
        except FileNotFoundError:
            continue
        except OSError as exc:
            files += 1
            bad.append(BadFile(path, f"unreadable: {exc.strerror}"))
            continue
        files += 1
        total += size
        if digest != path.name:
            bad.append(BadFile(path, f"content hashes to {digest}"))
    incoming = root / "incoming"
    partial = sum(1 for _ in incoming.iterdir()) if incoming.is_dir() else 0
    return StoreReport(files, total, tuple(bad), partial)
