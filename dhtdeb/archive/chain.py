"""TrustChain: from a signed Release down to the SHA256 of every file apt may ask for.

Owns: the decisions "is this Release signed by a trusted key", "may this index file be believed",
and learning pool-file hashes from believed Packages files. Trusts: `TrustedKeys` (gpgv) and the
`ContentStore` (which only holds files whose hash matched). A Release older than the one already
known is refused (rollback), and a failed signature leaves what was learned before untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import posixpath
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from dhtdeb.archive.index import PACKAGES_NAMES, ArchiveIndex, Expected
from dhtdeb.archive.locations import ArchiveLocation, FileKind
from dhtdeb.archive.packages import iter_package_files, open_index_stream
from dhtdeb.archive.release import parse_release
from dhtdeb.archive.signature import TrustedKeys, VerifiedPayload
from dhtdeb.errors import DhtdebError, IndexFormatError
from dhtdeb.stats import Counters
from dhtdeb.store import StoredFile

log = logging.getLogger(__name__)

# The Packages files of one directory, best first (the one fetched when dhtdeb picks).
_PACKAGES_PREFERENCE = ("Packages.xz", "Packages.gz", "Packages.bz2", "Packages")


@dataclass(frozen=True, slots=True)
class IndexExpectation:
    expected: Expected
    listed_path: str  # the Release's name for it (tells Packages.xz from Translation-en …)


@dataclass(eq=False)
class _Learning:
    """A Packages file whose pool files are being learned."""

    root: str  # its archive root URL
    component: str  # the first segment of its path in the Release ("main"), or ""
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def may_list(self, url: str) -> bool:
        if not url.startswith(self.root):
            return False
        return not self.component or _in_component(url[len(self.root) :], self.component)


def _in_component(relative: str, component: str) -> bool:
    """Whether a pool file's path below its archive root is in `component`: pool/main/...,
    and pool/updates/main/... in the security archive."""
    return f"/{component}/" in "/" + "/".join(relative.split("/")[:4])


class TrustChain:
    def __init__(self, keys: TrustedKeys, index: ArchiveIndex, counters: Counters) -> None:
        self._keys = keys
        self._index = index
        self._counters = counters
        self._learning: dict[str, _Learning] = {}
        # One Packages file is learned at a time: memory stays that of one decoder and parser
        # however many suites apt updates (bookworm, -updates and -security at once: 82 MiB
        # peak), and apt's own work keeps a core.
        self._one_at_a_time = asyncio.Semaphore(1)

    async def accept_in_release(self, location: ArchiveLocation, document: bytes) -> bool:
        return await self._accept(location, lambda: self._keys.verify_clearsigned(document))

    async def accept_release(
        self, location: ArchiveLocation, release: bytes, signature: bytes
    ) -> bool:
        return await self._accept(location, lambda: self._keys.verify_detached(release, signature))

    async def _accept(
        self, location: ArchiveLocation, verify: Callable[[], VerifiedPayload]
    ) -> bool:
        assert location.suite_url is not None
        try:
            payload = await asyncio.to_thread(verify)
            release = parse_release(payload.text)
        except DhtdebError as exc:
            self._counters.verify_failures.signature += 1
            log.warning(
                "%s: not verified, its files pass through unverified: %s", location.url, exc
            )
            return False
        if release.valid_until is not None and release.valid_until <= time.time():
            self._counters.verify_failures.signature += 1
            log.warning(
                "%s: signed but expired (Valid-Until has passed); not believed", location.url
            )
            return False
        known = self._index.release_date(location.suite_url)
        if known is not None and release.date is not None and release.date < known:
            self._counters.verify_failures.signature += 1
            log.warning(
                "%s: signed but older than the Release already known; refused", location.url
            )
            return False
        self._index.learn_release(location.suite_url, location.root, release, payload.fingerprint)
        log.info(
            "%s: verified (good signatures by %s), %d index files listed",
            location.url,
            ", ".join(payload.fingerprints),
            len(release.files),
        )
        return True

    def expected_index(self, location: ArchiveLocation) -> IndexExpectation | None:
        """What an index or by-hash file must hash to, per the verified Release, if listed."""
        assert location.suite_url is not None
        if location.kind is FileKind.BY_HASH and location.by_hash_sha256 is not None:
            found = self._index.index_path_for_hash(location.suite_url, location.by_hash_sha256)
            if found is None:
                return None
            return IndexExpectation(found[1], found[0])
        if location.kind is FileKind.INDEX:
            expected = self._index.index_file(location.suite_url, location.relative)
            return None if expected is None else IndexExpectation(expected, location.relative)
        return None

    def packages_beside_pdiff(
        self, location: ArchiveLocation, expectation: IndexExpectation
    ) -> tuple[str, IndexExpectation] | None:
        """For a `<dir>/Packages.diff/Index` apt fetched (it will patch its old Packages file
        and never ask for the new one): the URL and expectation of the full Packages file of
        `<dir>` that the verified Release lists, if its pool files are not learned yet. Without
        it the packages new in this Release could not be verified."""
        parent = posixpath.dirname(expectation.listed_path)
        if (
            posixpath.basename(expectation.listed_path) != "Index"
            or posixpath.basename(parent) != "Packages.diff"
            or location.suite_url is None
        ):
            return None
        directory = posixpath.dirname(parent)
        prefix = directory + "/" if directory else ""
        source = location.suite_url + prefix
        if source in self._learning:
            return None
        listed = [
            (name, expected)
            for name in _PACKAGES_PREFERENCE
            if (expected := self._index.index_file(location.suite_url, prefix + name)) is not None
        ]
        # Learned from any of its compressions: the same content.
        if not listed or any(self._index.packages_learned(source, e.sha256) for _, e in listed):
            return None
        name, expected = listed[0]
        return source + name, IndexExpectation(expected, prefix + name)

    def packages_to_catch_up(self, url: str) -> list[tuple[str, IndexExpectation]]:
        """For a pool file that no learned Packages file lists: the Packages files that may list
        it (its component, its architecture or this machine's for `_all`, every verified suite of
        its archive) whose current content is neither learned nor being learned, as (URL,
        expectation). apt fetches no Packages file through dhtdeb while its lists are current
        (dhtdeb just installed, its index lost): without this its packages would pass through
        unverified until the archive changes."""
        name = url.rsplit("/", 1)[-1]
        if not name.endswith(".deb") or "_" not in name:
            return []
        arch = name[: -len(".deb")].rsplit("_", 1)[1]
        wanted = native_architecture() if arch == "all" else arch
        root, lists = self._archive_of(url)
        relative = url[len(root) :]
        best: dict[str, tuple[int, str, str, Expected]] = {}
        variants: dict[str, list[str]] = {}  # source -> the hashes of its listed compressions
        for suite_url, path, expected in lists:
            directory, file_name = posixpath.split(path)
            component = path.split("/", 1)[0]
            if (
                file_name not in _PACKAGES_PREFERENCE
                or posixpath.basename(directory) != f"binary-{wanted}"
                or "debian-installer" in directory
                or not _in_component(relative, component)
            ):
                continue
            source = f"{suite_url}{directory}/"
            variants.setdefault(source, []).append(expected.sha256)
            rank = _PACKAGES_PREFERENCE.index(file_name)
            if source not in best or rank < best[source][0]:
                best[source] = (rank, suite_url, path, expected)
        return [
            (suite_url + path, IndexExpectation(expected, path))
            for source, (_, suite_url, path, expected) in sorted(best.items())
            if source not in self._learning
            and not any(self._index.packages_learned(source, h) for h in variants[source])
        ]

    def _archive_of(self, url: str) -> tuple[str, list[tuple[str, str, Expected]]]:
        """The archive root of a pool file URL (before one of its `/pool/`, with verified
        Releases) and the Packages files those list; ("", []) for none."""
        start = url.index("://") + 3
        at = url.find("/pool/", start)
        while at >= 0:
            lists = self._index.packages_lists(url[: at + 1])
            if lists:
                return url[: at + 1], lists
            at = url.find("/pool/", at + 1)
        return "", []

    def learn_index_file(
        self,
        location: ArchiveLocation,
        expectation: IndexExpectation,
        stored: Coroutine[Any, Any, StoredFile],
    ) -> None:
        """If the file is a Packages file, learn its pool files (once per content) once `stored`
        gives the verified file, in the background: apt gets the file meanwhile, and a pool
        file asked for before the learning ends waits for it (`settled_pool_file`)."""
        name = posixpath.basename(expectation.listed_path)
        sha256 = expectation.expected.sha256
        if name not in PACKAGES_NAMES or location.suite_url is None:
            stored.close()
            return
        directory = posixpath.dirname(expectation.listed_path)
        source = location.suite_url + (directory + "/" if directory else "")
        if source in self._learning or self._index.packages_learned(source, sha256):
            stored.close()
            return
        component = expectation.listed_path.split("/", 1)[0] if directory else ""
        learning = _Learning(location.root, component)
        self._learning[source] = learning
        learning.task = asyncio.create_task(
            self._learn(learning, location.suite_url, source, location.root, stored, name),
            name=f"learn {source}{name}",
        )

    async def _learn(
        self,
        learning: _Learning,
        suite_url: str,
        source: str,
        root: str,
        stored: Coroutine[Any, Any, StoredFile],
        name: str,
    ) -> None:
        try:
            verified = await stored
            async with self._one_at_a_time:
                started = time.monotonic()
                count = await asyncio.to_thread(
                    self._learn_packages, suite_url, source, root, verified, name
                )
            log.info(
                "%s%s: learned %d pool files in %.2f s",
                source,
                name,
                count,
                time.monotonic() - started,
            )
        except IndexFormatError as exc:
            self._counters.verify_failures.index += 1
            log.error("%s%s: signed but unreadable: %s", source, name, exc)
        except (DhtdebError, OSError) as exc:
            # The download failed (apt was told so), or the stored file went away.
            log.info("%s%s: not learned: %s", source, name, exc)
        finally:
            del self._learning[source]
            learning.done.set()

    def urls_of(self, hashes: Iterable[str]) -> dict[str, str]:
        """What the index knows these files as (`ArchiveIndex.urls_of`); on a worker thread."""
        return self._index.urls_of(hashes)

    async def settled_pool_file(self, url: str) -> Expected | None:
        """`pool_file`, after the Packages files still being learned that may list `url`: those
        of its archive and component (`pool/main/...` waits for main's, not for contrib's)."""
        expected = self._index.pool_file(url)
        if expected is not None:
            return expected
        pending = [learning for learning in self._learning.values() if learning.may_list(url)]
        if not pending:
            return None
        for learning in pending:
            await learning.done.wait()
        return self._index.pool_file(url)

    @property
    def learning(self) -> int:
        """Packages files being learned now."""
        return len(self._learning)

    def _learn_packages(
        self, suite_url: str, source: str, root: str, stored: StoredFile, name: str
    ) -> int:
        with (
            open(stored.path, "rb") as raw,
            # Closed whatever happens: it stops the decoding thread (archive/decompress.py).
            contextlib.closing(iter_package_files(open_index_stream(raw, name))) as files,
        ):
            entries = ((p.filename, p.sha256, p.size) for p in files)
            return self._index.learn_packages(suite_url, source, root, stored.sha256, entries)

    def pool_file(self, url: str) -> Expected | None:
        return self._index.pool_file(url)

    def has_release(self, suite_url: str) -> bool:
        return self._index.has_release(suite_url)


@functools.cache
def native_architecture() -> str:
    """dpkg's architecture of this machine (which `binary-*` lists its `_all` packages)."""
    try:
        done = subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "amd64"
    return done.stdout.strip() or "amd64"
