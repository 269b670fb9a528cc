"""The store admits only bytes whose SHA256 matches, commits atomically, and evicts LRU."""

import hashlib
from pathlib import Path

import pytest

from dhtdeb.errors import VerificationError
from dhtdeb.store import IN_MEMORY_MAX, ContentStore


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_commit_verified_file(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    data = b"hello" * 1000
    partial = store.begin(_digest(data), len(data))
    partial.write(data[:10])
    partial.write(data[10:])
    stored = store.commit(partial)
    assert stored.path.read_bytes() == data
    assert _digest(data) in store
    assert (store.file_count, store.total_bytes) == (1, len(data))
    assert list(store.incoming.iterdir()) == []


def test_wrong_bytes_never_enter_the_store(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    good = b"a" * 100
    partial = store.begin(_digest(good), len(good))
    partial.write(b"b" * 100)
    with pytest.raises(VerificationError):
        store.commit(partial)
    assert _digest(good) not in store
    assert not store.path_of(_digest(good)).exists()
    assert list(store.incoming.iterdir()) == []


def test_short_and_long_bodies_are_refused(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    good = b"a" * 100
    partial = store.begin(_digest(good), len(good))
    with pytest.raises(VerificationError):
        partial.write(b"a" * 101)
    partial.discard()
    short = store.begin(_digest(good), len(good))
    short.write(b"a" * 99)
    with pytest.raises(VerificationError):
        store.commit(short)


def test_small_files_stay_in_memory_until_committed(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    data = bytes(range(256)) * 200
    partial = store.begin(_digest(data), len(data))
    partial.write_at(1000, data[1000:])
    partial.write(data[:1000])
    partial.hash_through(len(data))
    assert partial.in_memory and partial.read(10, 5) == data[10:15]
    assert list(store.incoming.iterdir()) == []  # nothing on disk before the commit
    assert store.commit(partial).path.read_bytes() == data


def test_partial_files_from_a_crash_are_removed(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    size = IN_MEMORY_MAX + 10  # written to incoming/ as it comes
    data = b"x" * size
    partial = store.begin(_digest(data), size)
    partial.write(b"x" * 5)  # never committed: the process "dies" here
    assert list(store.incoming.iterdir())
    reopened = ContentStore(tmp_path)
    assert list(reopened.incoming.iterdir()) == []
    assert reopened.file_count == 0
    partial.discard()


def test_store_survives_restart_and_evicts_least_recently_used(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, limit_bytes=250)
    blobs = [bytes([i]) * 100 for i in range(3)]
    for blob in blobs[:2]:
        partial = store.begin(_digest(blob), len(blob))
        partial.write(blob)
        store.commit(partial)
    assert store.lookup(_digest(blobs[0])) is not None  # touch the first: the second is now oldest
    partial = store.begin(_digest(blobs[2]), 100)
    partial.write(blobs[2])
    store.commit(partial)
    assert _digest(blobs[1]) not in store
    assert _digest(blobs[0]) in store and _digest(blobs[2]) in store
    assert ContentStore(tmp_path, limit_bytes=250).total_bytes == 200
