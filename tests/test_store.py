"""The store admits only bytes whose SHA256 matches, commits atomically, and evicts LRU."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from dhtdeb.errors import VerificationError
from dhtdeb.partial_file import IN_MEMORY_MAX
from dhtdeb.store import UNSYNCED_MARKER, ContentStore


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


def _commit(store: ContentStore, data: bytes) -> str:
    partial = store.begin(_digest(data), len(data))
    partial.write(data)
    return store.commit(partial).sha256


def test_commits_are_made_durable_together(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    names = [_commit(store, bytes([i]) * 5000) for i in range(5)]
    marker = tmp_path / UNSYNCED_MARKER
    assert marker.exists() and store.unsynced == 5  # renamed into place, not yet fsynced
    assert all(store.lookup(name) is not None for name in names)  # servable at once
    assert store.sync() == 5
    assert not marker.exists() and store.unsynced == 0
    reopened = ContentStore(tmp_path)
    assert reopened.rechecked == 0 and reopened.file_count == 5


_COMMIT_THEN_WAIT = """
import hashlib, sys, time
from pathlib import Path
from dhtdeb.store import ContentStore
store = ContentStore(Path(sys.argv[1]))
for i in range(20):
    data = bytes([i]) * (3000 + i)
    partial = store.begin(hashlib.sha256(data).hexdigest(), len(data))
    partial.write(data)
    store.commit(partial)
print("committed", flush=True)
time.sleep(600)  # killed here, before any sync
"""


def test_a_store_killed_before_its_sync_keeps_good_files_and_drops_damaged_ones(
    tmp_path: Path,
) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _COMMIT_THEN_WAIT, str(tmp_path)], stdout=subprocess.PIPE
    ) as child:
        try:
            assert child.stdout is not None and child.stdout.readline() == b"committed\n"
        finally:
            child.kill()
    assert (tmp_path / UNSYNCED_MARKER).exists()
    files = sorted(tmp_path.glob("??/*"))
    assert len(files) == 20
    # What a power loss can leave of an unsynced file: the right size, other bytes.
    damaged = files[3]
    damaged.write_bytes(b"\0" * damaged.stat().st_size)
    reopened = ContentStore(tmp_path)
    assert reopened.rechecked == 1
    assert damaged.name not in reopened and not damaged.exists()
    assert reopened.file_count == 19
    for path in tmp_path.glob("??/*"):
        assert _digest(path.read_bytes()) == path.name
    assert not (tmp_path / UNSYNCED_MARKER).exists()
    assert ContentStore(tmp_path).rechecked == 0
