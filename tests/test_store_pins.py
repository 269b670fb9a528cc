"""What eviction may not touch: pinned files (listed in `<store>/pinned`) and files being read."""

from pathlib import Path

import pytest
from support.store import put

from dhtdeb.store import PINNED_LIST, ContentStore, EvictionRefused, NotStored


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 1.0  # every use is later than the one before: a strict LRU order
        return self.now


def _files(n: int, size: int = 100) -> list[bytes]:
    return [bytes([i]) * size for i in range(n)]


def test_lru_eviction_skips_pinned_files(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, limit_bytes=250, wall_clock=Clock())
    a, b, c, d = _files(4)
    first = put(store, a)
    assert store.pin(first) is True
    assert store.pin(first) is False  # already
    second = put(store, b)
    third = put(store, c)  # 300 > 250: the oldest unpinned one goes
    assert set(store.hashes()) == {first, third}
    assert second not in store
    assert store.unpin(first) is True
    put(store, d)  # now the first is the least recently used and may go
    assert first not in store
    assert store.pinned_count == 0


def test_pinned_files_may_keep_the_store_above_its_limit(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, limit_bytes=150, wall_clock=Clock())
    a, b, c = _files(3)
    pinned = [put(store, a)]
    store.pin(pinned[0])
    pinned.append(put(store, b))  # just committed: kept although above the limit
    store.pin(pinned[1])
    newest = put(store, c)
    assert set(store.hashes()) == {*pinned, newest}
    assert store.total_bytes == 300
    assert store.pinned_bytes == 200


def test_pins_survive_a_restart_and_are_dropped_with_their_file(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    a, b = _files(2)
    kept, gone = put(store, a), put(store, b)
    store.pin(kept)
    store.pin(gone)
    store.sync()
    store.path_of(gone).unlink()  # removed behind the store's back (an operator, a disk fault)
    reopened = ContentStore(tmp_path)
    assert reopened.is_pinned(kept)
    assert not reopened.is_pinned(gone)
    assert (tmp_path / PINNED_LIST).read_text().split() == [kept]
    reopened.remove(kept)  # a damaged file: removed whatever its pin
    assert not reopened.is_pinned(kept)
    assert ContentStore(tmp_path).pinned_count == 0
    assert list(reopened.incoming.iterdir()) == []


def test_unknown_files_cannot_be_pinned_or_evicted(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    unknown = "ab" * 32
    for action in (store.pin, store.unpin, store.evict):
        with pytest.raises(NotStored):
            action(unknown)
    for action in (store.pin, store.unpin, store.evict):
        with pytest.raises(ValueError):
            action("AB" * 32)


def test_a_file_being_read_is_neither_evicted_nor_removed_on_request(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, limit_bytes=250, wall_clock=Clock())
    a, b, c, d = _files(4)
    read = put(store, a)
    other = put(store, b)
    with store.reading(read), store.reading(read):
        assert store.in_use(read) and store.readers == 2
        put(store, c)  # above the limit: the oldest is being read, the next one goes
        assert read in store and other not in store
        with pytest.raises(EvictionRefused):
            store.evict(read)
    assert not store.in_use(read) and store.readers == 0
    assert store.evict(read) == 100
    assert read not in store and not store.path_of(read).exists()
    put(store, d)
    assert store.total_bytes == 200


def test_a_pinned_file_is_not_evicted_on_request(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    sha256 = put(store, b"x" * 10)
    store.pin(sha256)
    with pytest.raises(EvictionRefused):
        store.evict(sha256)
    store.unpin(sha256)
    assert store.evict(sha256) == 10
    assert store.entries() == []


def test_entries_list_most_recently_used_first(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, wall_clock=Clock())
    a, b = _files(2)
    older, newer = put(store, a), put(store, b)
    store.pin(older)
    assert store.lookup(older) is not None  # a use: now the most recent
    entries = store.entries()
    assert [e.sha256 for e in entries] == [older, newer]
    assert entries[0].pinned and not entries[1].pinned
    assert entries[0].last_used > entries[1].last_used
