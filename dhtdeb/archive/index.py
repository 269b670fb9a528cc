"""ArchiveIndex: what the signed chain says each file must be, persisted in SQLite.

Owns: the mapping URL → (sha256, size) for index files (from verified Releases) and pool files (from
Packages files whose hash matched a verified Release). Trusts: only callers that pass it verified
Releases (`learn_release`) and Packages files already checked against them (`learn_packages`).
Entries of a Release whose Valid-Until has passed are not returned (judged by `wall_clock` at each
lookup: nothing is deleted on expiry, so a wall clock that jumps ahead and back loses nothing).

A database found damaged when opened (not SQLite, or failing `PRAGMA quick_check`: a torn or
truncated file) is moved aside and an empty one made: everything in it is learned again from the
next `apt-get update`, and the store's files are still served once it is.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from dhtdeb.archive.release import Release

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS releases(
    suite_url TEXT PRIMARY KEY,
    root TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    date REAL,
    valid_until REAL,
    by_hash INTEGER NOT NULL,
    learned_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS release_files(
    suite_url TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY(suite_url, path)
);
CREATE INDEX IF NOT EXISTS release_files_by_sha256 ON release_files(suite_url, sha256);
CREATE TABLE IF NOT EXISTS pool_files(
    url TEXT NOT NULL,
    source TEXT NOT NULL,
    suite_url TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY(url, source)
);
CREATE INDEX IF NOT EXISTS pool_files_by_source ON pool_files(source);
CREATE TABLE IF NOT EXISTS learned_indices(
    source TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL
);
"""

POOL_CACHE_SIZE = 8192  # pool_file answers kept in memory
PACKAGES_NAMES = frozenset({"Packages", "Packages.gz", "Packages.xz", "Packages.bz2"})


@dataclass(frozen=True, slots=True)
class Expected:
    """What the signed chain says a file must be."""

    sha256: str
    size: int


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        verdict = db.execute("PRAGMA quick_check").fetchone()
        if verdict is None or verdict[0] != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {verdict[0] if verdict else 'no answer'}")
    except BaseException:
        db.close()
        raise
    return db


def _move_aside(path: Path, stamp: float) -> Path:
    """Rename the database and its WAL and shared-memory files out of the way (a WAL left behind
    could be replayed into the new database)."""
    aside = path.with_name(f"{path.name}.damaged-{int(stamp)}")
    count = 0
    while aside.exists():  # damaged twice within a second: keep both
        count += 1
        aside = path.with_name(f"{path.name}.damaged-{int(stamp)}.{count}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            os.replace(source, aside.with_name(aside.name + suffix))
    return aside


class ArchiveIndex:
    def __init__(self, path: Path, *, wall_clock: Callable[[], float] = time.time) -> None:
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        try:
            self._db = _connect(path)
        except sqlite3.OperationalError:
            raise  # locked, read-only, disk full: not damage, and moving it would not help
        except sqlite3.DatabaseError as exc:
            aside = _move_aside(path, wall_clock())
            log.error(
                "archive index %s is damaged (%s): moved aside to %s; starting with an empty "
                "index, learned again at the next apt-get update",
                path,
                exc,
                aside,
            )
            self._db = _connect(path)
        # apt's batch asks for each pool file several times (read-ahead, then the request):
        # answers of pool_file, dropped whenever anything is learned.
        self._pool_cache: dict[str, tuple[str, int, float | None] | None] = {}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- learning -----------------------------------------------------------------------------

    def release_date(self, suite_url: str) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT date FROM releases WHERE suite_url=?", (suite_url,)
            ).fetchone()
        return None if row is None else row[0]

    def learn_release(self, suite_url: str, root: str, release: Release, fingerprint: str) -> None:
        with self._lock:
            self._pool_cache.clear()
            self._db.execute("BEGIN")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO releases VALUES (?,?,?,?,?,?,?)",
                    (
                        suite_url,
                        root,
                        fingerprint,
                        release.date,
                        release.valid_until,
                        int(release.acquire_by_hash),
                        self._wall_clock(),
                    ),
                )
                self._db.execute("DELETE FROM release_files WHERE suite_url=?", (suite_url,))
                self._db.executemany(
                    "INSERT INTO release_files VALUES (?,?,?,?)",
                    ((suite_url, e.path, e.sha256, e.size) for e in release.files.values()),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def packages_learned(self, source: str, sha256: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT sha256 FROM learned_indices WHERE source=?", (source,)
            ).fetchone()
        return row is not None and row[0] == sha256

    def learn_packages(
        self,
        suite_url: str,
        source: str,
        root: str,
        sha256: str,
        entries: Iterable[tuple[str, str, int]],
    ) -> int:
        """Replace the pool files learned from `source` (a Packages directory URL).

        `entries` yields (Filename, sha256, size); it may be a lazy parser, consumed in this call.
        """
        with self._lock:
            self._pool_cache.clear()
            self._db.execute("BEGIN")
            try:
                self._db.execute("DELETE FROM pool_files WHERE source=?", (source,))
                cursor = self._db.executemany(
                    "INSERT OR REPLACE INTO pool_files VALUES (?,?,?,?,?)",
                    (
                        (root + name, source, suite_url, digest, size)
                        for name, digest, size in entries
                    ),
                )
                count = cursor.rowcount
                self._db.execute(
                    "INSERT OR REPLACE INTO learned_indices VALUES (?,?)", (source, sha256)
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return count

    # -- lookups ------------------------------------------------------------------------------

    def _valid(self, valid_until: float | None) -> bool:
        return valid_until is None or valid_until > self._wall_clock()

    def has_release(self, suite_url: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT valid_until FROM releases WHERE suite_url=?", (suite_url,)
            ).fetchone()
        return row is not None and self._valid(row[0])

    def index_file(self, suite_url: str, path: str) -> Expected | None:
        with self._lock:
            row = self._db.execute(
                "SELECT f.sha256, f.size, r.valid_until FROM release_files f "
                "JOIN releases r ON r.suite_url = f.suite_url WHERE f.suite_url=? AND f.path=?",
                (suite_url, path),
            ).fetchone()
        if row is None or not self._valid(row[2]):
            return None
        return Expected(row[0], row[1])

    def index_path_for_hash(self, suite_url: str, sha256: str) -> tuple[str, Expected] | None:
        """For a by-hash request: which listed file has this hash (its name tells the format)."""
        with self._lock:
            row = self._db.execute(
                "SELECT f.path, f.size, r.valid_until FROM release_files f "
                "JOIN releases r ON r.suite_url = f.suite_url WHERE f.suite_url=? AND f.sha256=? "
                "ORDER BY length(f.path) DESC LIMIT 1",
                (suite_url, sha256),
            ).fetchone()
        if row is None or not self._valid(row[2]):
            return None
        return row[0], Expected(sha256, row[1])

    def packages_lists(self, root: str) -> list[tuple[str, str, Expected]]:
        """(suite_url, path, expected) of every `…/binary-<arch>/Packages*` the valid Releases
        under archive root `root` list."""
        with self._lock:
            rows = self._db.execute(
                "SELECT f.suite_url, f.path, f.sha256, f.size, r.valid_until FROM release_files f "
                "JOIN releases r ON r.suite_url = f.suite_url "
                "WHERE r.root=? AND f.path LIKE '%binary-%/Packages%' ORDER BY f.suite_url, f.path",
                (root,),
            ).fetchall()
        return [
            (suite_url, path, Expected(sha256, size))
            for suite_url, path, sha256, size, valid_until in rows
            if self._valid(valid_until)
        ]

    def pool_file_count(self) -> int:
        """Pool files known (an estimate: the largest row id, no table scan)."""
        with self._lock:
            row = self._db.execute("SELECT max(rowid) FROM pool_files").fetchone()
        return int(row[0] or 0)

    def urls_of(self, hashes: Iterable[str]) -> dict[str, str]:
        """A URL each of these files is known by (pool or index file), for `dhtdeb cache list`;
        files it does not know are left out. One scan of the tables (no index by hash: only
        this listing asks), run on a worker thread."""
        wanted = json.dumps(list(hashes))
        with self._lock:
            pool = self._db.execute(
                "SELECT sha256, url FROM pool_files "
                "WHERE sha256 IN (SELECT value FROM json_each(?)) ORDER BY rowid",
                (wanted,),
            ).fetchall()
            indices = self._db.execute(
                "SELECT sha256, suite_url || path FROM release_files "
                "WHERE sha256 IN (SELECT value FROM json_each(?))",
                (wanted,),
            ).fetchall()
        return {str(sha256): str(url) for sha256, url in [*indices, *pool]}

    def pool_file(self, url: str) -> Expected | None:
        with self._lock:
            try:
                row = self._pool_cache[url]
            except KeyError:
                row = self._db.execute(
                    "SELECT p.sha256, p.size, r.valid_until FROM pool_files p "
                    "JOIN releases r ON r.suite_url = p.suite_url WHERE p.url=? "
                    "ORDER BY p.rowid DESC LIMIT 1",
                    (url,),
                ).fetchone()
                if len(self._pool_cache) >= POOL_CACHE_SIZE:
                    self._pool_cache.clear()
                self._pool_cache[url] = row
        if row is None or not self._valid(row[2]):
            return None
        return Expected(row[0], row[1])
