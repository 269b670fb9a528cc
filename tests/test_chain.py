"""The trust chain learns a Packages file's pool files off apt's path, and a pool file asked for
meanwhile waits for exactly the learnings that may list it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from support.archive import SignedArchive

from dhtdeb.archive.chain import IndexExpectation, TrustChain
from dhtdeb.archive.index import ArchiveIndex
from dhtdeb.archive.locations import ArchiveLocation, locate
from dhtdeb.archive.signature import TrustedKeys
from dhtdeb.stats import Counters
from dhtdeb.store import ContentStore, StoredFile

ROOT = "http://mirror.test/debian/"


def _store_file(store: ContentStore, data: bytes, sha256: str) -> StoredFile:
    partial = store.begin(sha256, len(data))
    partial.write(data)
    return store.commit(partial)


async def _chain_with_release(
    signed_archive: SignedArchive, tmp_path: Path
) -> tuple[TrustChain, ArchiveLocation, IndexExpectation]:
    """A chain that believes the archive's InRelease, and its Packages file's location and
    expectation."""
    keys = TrustedKeys.load([signed_archive.keyring], tmp_path / "keys")
    chain = TrustChain(keys, ArchiveIndex(tmp_path / "index.sqlite"), Counters())
    suite_url = f"{ROOT}dists/{signed_archive.suite}/"
    in_release = (signed_archive.dist_dir / "InRelease").read_bytes()
    assert await chain.accept_in_release(locate(suite_url + "InRelease"), in_release)
    listed = f"{signed_archive.component}/binary-{signed_archive.arch}/Packages"
    location = locate(suite_url + listed)
    expectation = chain.expected_index(location)
    assert expectation is not None
    return chain, location, expectation


async def test_a_pool_file_asked_for_while_its_index_is_learned_waits_for_it(
    signed_archive: SignedArchive, tmp_path: Path
) -> None:
    chain, location, expectation = await _chain_with_release(signed_archive, tmp_path)
    data = (signed_archive.dist_dir / expectation.listed_path).read_bytes()
    stored = _store_file(ContentStore(tmp_path / "store"), data, expectation.expected.sha256)

    released = asyncio.Event()

    async def stored_later() -> StoredFile:  # the download of the index, still running
        await released.wait()
        return stored

    package = signed_archive.small_packages[0]
    url = ROOT + package.filename
    chain.learn_index_file(location, expectation, stored_later())
    assert chain.learning == 1 and chain.pool_file(url) is None
    waiting = asyncio.create_task(chain.settled_pool_file(url))
    # Another archive, and another component of this one, do not wait for this index.
    assert await chain.settled_pool_file("http://other.test/debian/pool/main/a/a/a.deb") is None
    assert await chain.settled_pool_file(f"{ROOT}pool/contrib/a/a/a_1_all.deb") is None
    for _ in range(20):  # let the loop run: the learning cannot end before the index is stored
        await asyncio.sleep(0)
    assert not waiting.done()
    released.set()
    expected = await waiting
    assert expected is not None and (expected.sha256, expected.size) == (
        package.sha256,
        package.size,
    )
    assert chain.learning == 0


async def test_a_failed_index_download_ends_the_wait(
    signed_archive: SignedArchive, tmp_path: Path
) -> None:
    chain, location, expectation = await _chain_with_release(signed_archive, tmp_path)
    failed = asyncio.Event()

    async def download_fails() -> StoredFile:
        await failed.wait()
        raise OSError("mirror went away")

    chain.learn_index_file(location, expectation, download_fails())
    waiting = asyncio.create_task(
        chain.settled_pool_file(ROOT + signed_archive.small_packages[0].filename)
    )
    failed.set()
    assert await waiting is None  # not listed anywhere known: passed through unverified
    assert chain.learning == 0


async def test_the_packages_files_to_catch_up_for_an_unknown_pool_file(
    signed_archive: SignedArchive, tmp_path: Path
) -> None:
    """Which Packages files the daemon fetches on its own when apt asks for a .deb that nothing
    learned lists: those of the .deb's component and architecture (this machine's for `_all`),
    best compression first, none once learned or while being learned, none for other files."""
    chain, location, expectation = await _chain_with_release(signed_archive, tmp_path)
    package = signed_archive.small_packages[0]
    url = ROOT + package.filename
    suite_url = f"{ROOT}dists/{signed_archive.suite}/"
    directory = f"{signed_archive.component}/binary-{signed_archive.arch}/"
    wanted = chain.packages_to_catch_up(url)
    listed = [name for name in ("Packages.xz", "Packages.gz", "Packages") if
              chain.expected_index(locate(suite_url + directory + name)) is not None]  # fmt: skip
    assert [u for u, _ in wanted] == [suite_url + directory + listed[0]], wanted
    assert wanted[0][1].listed_path == directory + listed[0]

    elsewhere = url.replace(f"/pool/{signed_archive.component}/", "/pool/contrib/")
    assert chain.packages_to_catch_up(elsewhere) == []  # a component no Release lists
    other_arch = url.replace(f"_{signed_archive.arch}.deb", "_s390x.deb")
    assert chain.packages_to_catch_up(other_arch) == []
    assert chain.packages_to_catch_up("http://other.test/debian/" + package.filename) == []
    assert chain.packages_to_catch_up(url.replace(".deb", ".dsc")) == []

    data = (signed_archive.dist_dir / expectation.listed_path).read_bytes()
    stored = _store_file(ContentStore(tmp_path / "store"), data, expectation.expected.sha256)
    chain.learn_index_file(location, expectation, _ready(stored))
    assert chain.packages_to_catch_up(url) == []  # being learned
    while chain.learning:
        await chain.settled_pool_file(url)
    assert chain.pool_file(url) is not None
    assert chain.packages_to_catch_up(url) == []  # learned


async def _ready(stored: StoredFile) -> StoredFile:
    return stored
